"""Small stand-ins shared by the training tests: a GroupNorm conv net, its per-example loss, toy data.

Kept tiny (8x8 images, a few hundred parameters) so DP-SGD steps take milliseconds
on a shared CPU; the real UNet and GAN are exercised in their own tests.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from privimage.data.base import ImageDataset
from privimage.privacy.ledger import PrivacyLedger

NUM_CLASSES = 3


class TinyNet(nn.Module):
    """Conv - GroupNorm - ReLU - Linear classifier on 1x8x8 images (no layer mixes samples)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.num_classes = NUM_CLASSES
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4 * 8 * 8, NUM_CLASSES)

    def forward(self, images):
        return self.head(torch.relu(self.norm(self.conv(images))).flatten(1))


def tiny_loss(model_call, images, labels):
    """Per-example cross-entropy, in the (model call, *inputs) form DP-SGD takes."""
    return F.cross_entropy(model_call(images), labels, reduction="none")


def tiny_dataset(num_examples: int = 200, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    return ImageDataset(
        name="toy", split="train",
        images=rng.integers(0, 256, size=(num_examples, 1, 8, 8), dtype=np.uint8),
        labels=rng.integers(0, NUM_CLASSES, size=num_examples).astype(np.int64),
        class_names=tuple(f"class{i}" for i in range(NUM_CLASSES)),
    )


def tiny_ledger(dataset: ImageDataset, *, delta: float = 1e-4, query_noise_multiplier: float | None = 20.0):
    ledger = PrivacyLedger(delta=delta, dataset_hash=dataset.content_hash(), num_examples=len(dataset))
    if query_noise_multiplier is not None:
        ledger.record_semantic_query(query_noise_multiplier=query_noise_multiplier, k=1, generator="os-entropy")
    return ledger


def load_rows(dataset: ImageDataset):
    """Rows -> (images in [-1, 1], labels) tensors."""
    def load(rows):
        subset = dataset.subset(np.asarray(rows, dtype=np.int64))
        return torch.from_numpy(subset.as_float()), torch.from_numpy(subset.labels)
    return load


def dpsgd_steps(ledger) -> int:
    return sum(entry["steps"] for entry in ledger.entries if entry["mechanism"] == "dp_sgd")
