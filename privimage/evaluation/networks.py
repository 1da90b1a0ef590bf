"""The small CNN used twice in evaluation, and its one training loop.

One architecture serves two roles (STYLE.md rule 10, one way to do each thing):

- the CNN classifier of the downstream task (paper Section 4.3), trained on
  synthetic data and tested on the sensitive test split;
- the offline FID backbone (`privimage.evaluation.fid`), trained on the public
  dataset only, the analogue of Inception trained on ImageNet.

Neither is trained under DP, so BatchNorm is allowed (DESIGN.md forbids it only
in DP-SGD): with GroupNorm the backbone stalled at chance on Glyphs-1k's 1,000
classes (loss still ln 1000 after 300 Adam steps, where BatchNorm reached 5.3 in
200). In eval mode BatchNorm uses running statistics, so no sample affects
another's features or prediction. The penultimate layer (``embed``) gives
the features of FID and the embeddings of the t-SNE plot (paper Fig. 4).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from privimage.data.base import ImageDataset
from privimage.errors import PrivImageError


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class SmallCNN(nn.Module):
    """Three conv blocks (width, 2 width, 2 width) with max-pooling, a dense embedding, a linear head.

    The feature map is pooled to 4x4 and flattened rather than globally averaged:
    digit-like images are told apart by where strokes are, and global pooling
    throws that away (measured: about 80% vs 97% on MNIST-5k after 8 epochs).
    """

    def __init__(self, *, in_channels: int, num_classes: int, width: int = 32, embedding_dim: int = 128) -> None:
        super().__init__()
        self.arch = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "embedding_dim": embedding_dim}
        self.features = nn.Sequential(
            _conv_block(in_channels, width), nn.MaxPool2d(2),
            _conv_block(width, 2 * width), nn.MaxPool2d(2),
            _conv_block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, embedding_dim),
        )
        self.head = nn.Linear(embedding_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (the input of the linear head; t-SNE, paper Fig. 4)."""
        return F.relu(self.features(x))

    def embed_pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding before its ReLU: the offline FID features.

        Units that a ReLU keeps at zero on every image would make the feature
        covariance singular whatever the sample count; before the ReLU every
        unit varies.
        """
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@dataclass
class FitResult:
    """A trained network and how it was selected."""

    model: SmallCNN
    best_epoch: int
    validation_accuracy: float
    history: list[float]


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 in [-1, 1] (the same quantisation for every set)."""
    return torch.from_numpy(images).float().div_(127.5).sub_(1.0)


@torch.no_grad()
def predict_batches(model: nn.Module, images: np.ndarray, *, fn: str = "forward", batch_size: int = 500,
                    device: torch.device | None = None) -> np.ndarray:
    """Run ``model.<fn>`` over uint8 images in batches, in eval mode; returns a float32 array."""
    device = device or next(model.parameters()).device
    model.eval()
    method = getattr(model, fn)
    outputs = [
        method(images_to_tensor(images[start:start + batch_size]).to(device)).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs).numpy()


def accuracy(model: nn.Module, dataset: ImageDataset, *, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``."""
    logits = predict_batches(model, dataset.images, batch_size=batch_size)
    return float((logits.argmax(axis=1) == dataset.labels).mean())


def fit_cnn(
    *,
    train: ImageDataset,
    validation: ImageDataset,
    num_classes: int,
    epochs: int,
    seed: int,
    width: int = 32,
    embedding_dim: int = 128,
    batch_size: int = 128,
    lr: float = 1e-3,
    device: torch.device | None = None,
    progress: bool = False,
    desc: str = "CNN",
) -> FitResult:
    """Train a `SmallCNN` with Adam and keep the epoch with the best validation accuracy.

    Args:
        train: images to fit.
        validation: held-out images that choose the epoch (never the test split).
        num_classes: size of the output layer.
        epochs: passes over ``train``.
        seed: seeds initialisation and batch order (a training seed, not DP noise),
            so that a run is reproducible on the same device and thread count.
        width, embedding_dim: `SmallCNN` size.
        batch_size, lr: Adam settings.
        device: where to train (default: CUDA when present).
        progress: show a tqdm bar over epochs.
        desc: label of the progress bar.

    Returns:
        A `FitResult` with the selected model (in eval mode, on CPU).
    """
    if epochs < 1:
        raise PrivImageError(f"{desc}: epochs must be at least 1, got {epochs}")
    if len(train) == 0 or len(validation) == 0:
        raise PrivImageError(f"{desc}: needs non-empty training and validation sets, got {len(train)} and {len(validation)}")
    device = device or default_device()
    # Initialise from the seed without touching the global generator of the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(in_channels=train.images.shape[1], num_classes=num_classes,
                         width=width, embedding_dim=embedding_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    inputs = images_to_tensor(train.images)
    targets = torch.from_numpy(train.labels.astype(np.int64))

    best_state, best_accuracy, best_epoch, history = None, -1.0, 0, []
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        model.train()
        permutation = torch.randperm(len(inputs), generator=order)
        for start in range(0, len(inputs), batch_size):
            batch = permutation[start:start + batch_size]
            loss = F.cross_entropy(model(inputs[batch].to(device)), targets[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        # Early stopping by checkpoint selection on the held-out validation set.
        validation_accuracy = accuracy(model, validation)
        history.append(validation_accuracy)
        if validation_accuracy > best_accuracy:
            best_accuracy, best_epoch = validation_accuracy, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    return FitResult(model=model, best_epoch=best_epoch, validation_accuracy=best_accuracy, history=history)
