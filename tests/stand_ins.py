"""Public data for tests that need a real-looking corpus without the embedded benchmark's cost."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from privimage.data.base import ImageDataset

# The first 1,500 of scikit-learn's 1,797 digits train; the rest are the validation split.
TRAIN_IMAGES = 1500


def stand_in_split(split: str) -> ImageDataset:
    """scikit-learn's 8x8 digits (not MNIST), upscaled and padded to 32x32: ``train`` or any other split."""
    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3))) * (255 / 16)
    images = np.pad(images, ((0, 0), (4, 4), (4, 4))).round().astype(np.uint8)[:, None]
    public = ImageDataset("sklearn-digits", "all", images, digits.target.astype(np.int64), tuple(f"d{i}" for i in range(10)))
    rows = np.arange(TRAIN_IMAGES) if split == "train" else np.arange(TRAIN_IMAGES, len(public))
    return public.subset(rows, split)


def stand_in_public() -> tuple[ImageDataset, ImageDataset]:
    """The stand-in's train and validation splits."""
    return stand_in_split("train"), stand_in_split("val")
