"""The semantic query function (SQF): a ResNet trained on public labels only (paper Section 3.2).

The SQF maps an image to a probability over the public dataset's semantics
(its class labels). It is trained with cross-entropy (paper Eq. 4) on the public
training split and the checkpoint is chosen on the public validation split
(paper Appendix C.2); the sensitive data never reaches it during training
(`refuse_sensitive`). The paper uses ResNet50 at 32x32; the quick and smoke
profiles use a width/depth-scaled CIFAR-style ResNet so that training fits a CPU.

It trains on this process's GPU when there is one. Under torchrun every rank
takes its strided share of each batch and the gradients are all-reduced
(`privimage.distributed.sum_gradients_over_ranks`); the shuffling and the
augmentation come from one seeded generator every rank advances alike, so the
batches are those of a single process. BatchNorm statistics are each rank's
own during an epoch (as under DDP without SyncBatchNorm, which needs GPUs) and
rank 0's after it; rank 0 alone scores the validation split and writes the cache.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from tqdm.auto import tqdm

from privimage import distributed
from privimage.cache import atomic_torch_save, atomic_write_json, stage_dir
from privimage.config import SemanticQueryConfig, config_hash
from privimage.data.base import ImageDataset, refuse_sensitive
from privimage.errors import ConfigError


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs and a shortcut)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet: 3x3 stem, stages of basic blocks doubling width, global pooling.

    BatchNorm is fine here: the SQF trains on public data only and is queried on
    sensitive images in eval mode, where no statistic mixes samples.
    """

    def __init__(self, *, in_channels: int, num_classes: int, width: int, blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers = []
        channels = width
        for stage, num_blocks in enumerate(blocks):
            out_channels = width * (2**stage)
            for block in range(num_blocks):
                stride = 2 if (stage > 0 and block == 0) else 1
                layers.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.feature_dim = channels
        self.head = nn.Linear(channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (used for Fréchet distances and as an FID backbone)."""
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ResNet50At32(nn.Module):
    """torchvision's ResNet50 with a 3x3 stride-1 stem and no max-pool, for 32x32 inputs (paper C.2)."""

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__()

        net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        self.feature_dim = net.fc.in_features
        self.head = net.fc
        net.fc = nn.Identity()
        self.trunk = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_query_function(config: SemanticQueryConfig, *, in_channels: int, num_classes: int) -> nn.Module:
    """The SQF architecture named by ``config.sqf_arch``."""
    if config.sqf_arch == "resnet50":
        return ResNet50At32(in_channels=in_channels, num_classes=num_classes)
    if config.sqf_arch == "resnet_small":
        return SmallResNet(in_channels=in_channels, num_classes=num_classes, width=config.sqf_width, blocks=config.sqf_blocks)
    raise ConfigError(f"semantics.sqf_arch must be 'resnet50' or 'resnet_small', got '{config.sqf_arch}'")


@dataclass
class QueryFunction:
    """A trained SQF with what it was trained on."""

    model: nn.Module
    public_name: str
    public_class_names: tuple[str, ...]
    public_val_accuracy: float
    train_seconds: float
    cache_dir: str

    @torch.no_grad()
    def probabilities(self, dataset: ImageDataset, batch_size: int = 512) -> np.ndarray:
        """P(semantic | image) for every image (N x num_public_classes), in eval mode."""
        if dataset.sensitive:
            # The semantic query reads the sensitive set: under torchrun, rank 0 alone (one noisy release).
            distributed.refuse_on_other_ranks(what="the semantic query of the sensitive data")
        self.model.eval()
        device = _device_of(self.model)
        outputs = []
        for start in range(0, len(dataset), batch_size):
            batch = torch.from_numpy(dataset.images[start : start + batch_size]).to(device).float() / 127.5 - 1.0
            outputs.append(F.softmax(self.model(batch), dim=1).cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.public_class_names)))

    @torch.no_grad()
    def features(self, dataset: ImageDataset, batch_size: int = 512) -> np.ndarray:
        """Penultimate features for every image (float64, N x feature_dim)."""
        self.model.eval()
        device = _device_of(self.model)
        outputs = []
        for start in range(0, len(dataset), batch_size):
            batch = torch.from_numpy(dataset.images[start : start + batch_size]).to(device).float() / 127.5 - 1.0
            outputs.append(self.model.features(batch).double().cpu().numpy())
        return np.concatenate(outputs)


def _device_of(model: nn.Module) -> torch.device:
    """Where a model's parameters live (the CPU for a parameter-free stand-in)."""
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _accuracy(model: nn.Module, dataset: ImageDataset, batch_size: int = 512) -> float:
    model.eval()
    device = _device_of(model)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = torch.from_numpy(dataset.images[start : start + batch_size]).to(device).float() / 127.5 - 1.0
            labels = torch.from_numpy(dataset.labels[start : start + batch_size]).to(device)
            correct += int((model(batch).argmax(1) == labels).sum())
    return correct / max(len(dataset), 1)


# Training-time augmentations of the SQF (`SemanticQueryConfig.sqf_augmentation`).
SQF_AUGMENTATIONS = ("shift", "affine")


def _random_translate(batch: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift the batch by up to ``max_shift`` pixels (one draw per batch), against over-fitting the renderer."""
    # Pad with the background (-1), not 0: a grey margin is something no queried image has.
    padded = F.pad(batch, (max_shift,) * 4, value=-1.0)
    size = batch.shape[-1]
    shifts = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[..., shifts[0] : shifts[0] + size, shifts[1] : shifts[1] + size]


def _random_affine(batch: torch.Tensor, generator: torch.Generator, *, batch_size: int,
                   positions: torch.Tensor) -> torch.Tensor:
    """Distort every image on its own: rotation, scale, aspect, slant, shift, and its strokes' width.

    Ranges: rotation within +-15 degrees, scale 0.85-1.1, aspect 0.85-1.15,
    shear +-0.25, shift +-2 px; then the strokes move towards a 3x3 dilation
    (thicker, by up to a whole step) or erosion (thinner, by up to half a step).
    The draws are made for the whole global batch of ``batch_size`` images, in
    one order every rank shares, and ``positions`` picks this rank's rows.
    """
    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(batch_size, generator=generator))[positions]

    angle = torch.deg2rad(uniform(-15.0, 15.0))
    scale, aspect, shear = uniform(0.85, 1.1), uniform(0.85, 1.15), uniform(-0.25, 0.25)
    # 2 px of 32 in affine_grid's [-1, 1] coordinates.
    shift_x, shift_y = uniform(-0.125, 0.125), uniform(-0.125, 0.125)
    width_change = uniform(-1.0, 1.0).view(-1, 1, 1, 1)
    scale_x, scale_y = scale * aspect.sqrt(), scale / aspect.sqrt()
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output coordinates to input ones: rotation and shear, then the inverse scale.
    theta = torch.stack([
        torch.stack([cos / scale_x, (shear * cos - sin) / scale_x, shift_x], dim=1),
        torch.stack([sin / scale_y, (cos + shear * sin) / scale_y, shift_y], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    # Sample ink above the background (-1) so that what comes in from outside the image is background.
    moved = F.grid_sample(batch + 1.0, grid, align_corners=False, padding_mode="zeros") - 1.0
    thicker = F.max_pool2d(moved, 3, stride=1, padding=1)
    thinner = -F.max_pool2d(-moved, 3, stride=1, padding=1)
    return torch.where(width_change > 0, moved + width_change * (thicker - moved),
                       moved - 0.5 * width_change * (thinner - moved))


def augment(batch: torch.Tensor, generator: torch.Generator, *, kind: str, batch_size: int | None = None,
            positions: torch.Tensor | None = None) -> torch.Tensor:
    """The SQF's training augmentation ``kind`` (`SQF_AUGMENTATIONS`) of a batch scaled to [-1, 1].

    Args:
        batch: this rank's images, N x C x H x W, background -1.
        generator: the seeded generator every rank advances alike.
        kind: "shift" or "affine".
        batch_size: the global batch's size (default: this batch's).
        positions: this rank's rows of the global batch (default: all of them).
    """
    if kind == "shift":
        return _random_translate(batch, generator)
    if kind == "affine":
        batch_size = len(batch) if batch_size is None else batch_size
        positions = torch.arange(batch_size) if positions is None else positions
        return _random_affine(batch, generator, batch_size=batch_size, positions=positions)
    raise ConfigError(f"semantics.sqf_augmentation must be one of {', '.join(SQF_AUGMENTATIONS)}, got {kind!r}")


def _training_keys(*, public_train: ImageDataset, public_val: ImageDataset, config: SemanticQueryConfig,
                   seed: int) -> dict:
    """Everything the trained SQF depends on: its cache key."""
    return {
        "arch": config.sqf_arch, "width": config.sqf_width, "blocks": list(config.sqf_blocks),
        "epochs": config.sqf_epochs, "batch_size": config.sqf_batch_size, "lr": config.sqf_lr, "seed": seed,
        "train": public_train.content_hash(), "val": public_val.content_hash(),
        # The shift's margin: SQFs cached before it was the background had grey margins.
        "shift_margin": "background",
        # Named only when not the original shift, so SQFs cached before the option stay valid.
        **({} if config.sqf_augmentation == "shift" else {"augmentation": config.sqf_augmentation}),
    }


def query_function_key(*, public_train: ImageDataset, public_val: ImageDataset, config: SemanticQueryConfig,
                       seed: int = 0) -> str:
    """The hash naming the SQF these arguments train, for the caches of the stages that use it."""
    return config_hash(_training_keys(public_train=public_train, public_val=public_val, config=config, seed=seed))


def train_query_function(
    *,
    public_train: ImageDataset,
    public_val: ImageDataset,
    config: SemanticQueryConfig,
    seed: int = 0,
    progress: bool = True,
) -> QueryFunction:
    """Train (or load from the cache) the SQF on public data (paper Eq. 4, Appendix C.2).

    Args:
        public_train: public training split; the sensitive set is refused.
        public_val: public validation split, used to choose the checkpoint.
        config: the ``semantics`` section (architecture, epochs, batch size, lr).
        seed: seed of initialisation and shuffling (public data only; not DP noise).
        progress: show a tqdm bar per epoch.

    Returns:
        The trained `QueryFunction` (best public-val checkpoint).
    """
    refuse_sensitive(public_train, "the semantic query function")
    refuse_sensitive(public_val, "the semantic query function")
    training_keys = _training_keys(public_train=public_train, public_val=public_val, config=config, seed=seed)
    directory = stage_dir("sqf", config_hash(training_keys))
    # The seed fixes the initialisation too (it is in the cache key): without it two trainings of one
    # configuration started from whatever state the global generator was left in. Forked, so that
    # loading a cached SQF leaves the caller's random state as it was. (Built on the CPU: its generator
    # is the one to fork.)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_query_function(config, in_channels=public_train.image_shape[0],
                                     num_classes=public_train.num_classes)
    model.to(distributed.device())

    # Load the cached stage when this exact configuration was trained before (rank 0 reads, all get it).
    checkpoint_path, report_path = directory / "sqf.pt", directory / "report.json"
    cached = distributed.main_only(lambda: _read_cache(checkpoint_path, report_path))
    if cached is not None:
        state, report = cached
        model.load_state_dict(state)
        model.eval()
        return QueryFunction(
            model, public_train.name, public_train.class_names, report["public_val_accuracy"],
            report["train_seconds"], str(directory),
        )

    # Train on the public labels, keeping the best public-val checkpoint; rank 0 writes the cache.
    best_accuracy, best_state, train_seconds = _fit_query_function(
        model, public_train=public_train, public_val=public_val, config=config, seed=seed, progress=progress
    )
    model.load_state_dict(best_state)
    model.eval()

    def write_cache() -> None:
        atomic_torch_save(checkpoint_path, best_state)
        atomic_write_json(report_path, {
            "public_val_accuracy": best_accuracy, "train_seconds": train_seconds, "config": training_keys,
            "public": public_train.name, "num_public_classes": public_train.num_classes,
        })

    distributed.main_only(write_cache)
    return QueryFunction(model, public_train.name, public_train.class_names, best_accuracy, train_seconds, str(directory))


def _read_cache(checkpoint_path: Path, report_path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """A cached SQF's weights and report, or None when this configuration was not trained before."""
    if not (checkpoint_path.is_file() and report_path.is_file()):
        return None
    return torch.load(checkpoint_path, map_location="cpu", weights_only=True), json.loads(report_path.read_text())


def _fit_query_function(model: nn.Module, *, public_train: ImageDataset, public_val: ImageDataset,
                        config: SemanticQueryConfig, seed: int,
                        progress: bool) -> tuple[float, dict[str, torch.Tensor], float]:
    """Train the SQF with cross-entropy on public labels (paper Eq. 4), scoring each epoch on public val.

    Returns:
        ``(best public-val accuracy, the weights that reached it, training seconds)``.
    """

    # Cross-entropy on public labels, SGD with momentum and a cosine schedule (paper Table 7).
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.sqf_lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = max(1, len(public_train) // config.sqf_batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.sqf_lr, total_steps=steps_per_epoch * config.sqf_epochs, pct_start=0.15
    )
    device = _device_of(model)
    # Every rank starts from rank 0's initialisation.
    distributed.broadcast_module(model)
    images = torch.from_numpy(public_train.images)
    labels = torch.from_numpy(public_train.labels)
    best_accuracy, best_state = -1.0, None
    start_time = time.perf_counter()
    progress = progress and distributed.is_main_process()
    for epoch in range(config.sqf_epochs):
        model.train()
        order = torch.randperm(len(public_train), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"SQF epoch {epoch + 1}/{config.sqf_epochs}", disable=not progress, leave=False)
        for step in bar:
            index = order[step * config.sqf_batch_size : (step + 1) * config.sqf_batch_size]
            # This rank's share of the batch; the augmentation's draws are the same on every rank.
            positions = torch.from_numpy(distributed.rows_of_this_rank(np.arange(len(index))))
            local = index[positions]
            batch = augment(images[local].float() / 127.5 - 1.0, generator, kind=config.sqf_augmentation,
                            batch_size=len(index), positions=positions).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss_share = 0.0
            if len(local):
                # The share's mean weighted by its size (exactly the mean with one process).
                loss = F.cross_entropy(model(batch), labels[local].to(device)) * (len(local) / len(index))
                loss.backward()
                loss_share = loss.item()
            loss_value = distributed.sum_gradients_over_ranks(model.parameters(), loss_share)
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss_value:.3f}")
        # Rank 0's BatchNorm statistics for all, then checkpoint selection on the
        # public validation split only (Appendix C.2), scored once by rank 0.
        distributed.broadcast_module(model)
        accuracy = distributed.main_only(lambda: _accuracy(model, public_val))
        if accuracy > best_accuracy:
            best_accuracy, best_state = accuracy, {key: value.detach().cpu().clone()
                                                   for key, value in model.state_dict().items()}
    return best_accuracy, best_state, time.perf_counter() - start_time
