"""MNIST and FashionMNIST in torchvision's on-disk format (the DPDM benchmarks).

Expected under the data root, as ``torchvision.datasets.MNIST`` /
``FashionMNIST`` download them::

    MNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte,
              t10k-images-idx3-ubyte,  t10k-labels-idx1-ubyte
    FashionMNIST/raw/...              (the same four names)

torchvision reads them. The 28x28 digits are padded with zeros to 32x32, the
format of MNIST-5k and Glyphs-1k, so the embedded public corpus fits them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privimage.data.base import ImageDataset
from privimage.errors import DataError

SPLIT_SIZES = {"train": 60_000, "test": 10_000}
IMAGE_SHAPE = (1, 32, 32)
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
# Readable names (GloVe finds them), in label order.
CLASS_NAMES = {
    "mnist": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "fashionmnist": ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                     "ankle boot"),
}
FOLDERS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}


def expected_files(name: str, split: str) -> list[str]:
    prefix = SPLIT_PREFIX[split]
    return [f"{FOLDERS[name]}/raw/{prefix}-images-idx3-ubyte", f"{FOLDERS[name]}/raw/{prefix}-labels-idx1-ubyte"]


def _torchvision_class(name: str):
    from torchvision import datasets

    return {"mnist": datasets.MNIST, "fashionmnist": datasets.FashionMNIST}[name]


def download(name: str, data_root: Path) -> None:
    """Fetch both splits with torchvision (needs a network)."""
    try:
        _torchvision_class(name)(root=str(data_root), train=True, download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"{name}: download into {data_root} failed ({exc})") from None


def load_mnist_like(name: str, data_root: Path, split: str, *, download: bool = False) -> ImageDataset:
    """Load MNIST or FashionMNIST through torchvision, padded to 1x32x32.

    Args:
        name: ``mnist`` or ``fashionmnist``.
        data_root: folder holding ``MNIST/raw`` or ``FashionMNIST/raw``.
        split: ``train`` (60,000) or ``test`` (10,000).
        download: let torchvision fetch missing files (needs a network).

    Returns:
        The dataset.
    """
    missing = [path for path in expected_files(name, split) if not (Path(data_root) / path).is_file()]
    if missing and not download:
        raise DataError(
            f"{name} not found under {data_root}: missing {', '.join(missing)} "
            "(torchvision's extracted idx files; fetch them with --download)"
        )
    try:
        dataset = _torchvision_class(name)(root=str(data_root), train=split == "train", download=download)
        images = dataset.data.numpy()
        labels = dataset.targets.numpy().astype(np.int64)
    except (RuntimeError, OSError, ValueError, TypeError, IndexError) as exc:
        # torchvision raises plain errors for truncated or malformed idx files.
        raise DataError(
            f"{name}: cannot read {', '.join(expected_files(name, split))} under {data_root} "
            f"({exc.__class__.__name__}: {exc})"
        ) from None
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8 or len(labels) != len(images):
        raise DataError(f"{name}: {split} images have shape {images.shape} ({images.dtype}), "
                        f"{len(labels)} labels; expected N x 28 x 28 uint8 and N labels")
    padded = np.zeros((len(images), *IMAGE_SHAPE), dtype=np.uint8)
    padded[:, 0, 2:30, 2:30] = images
    return ImageDataset(name=name, split=split, images=padded, labels=labels, class_names=CLASS_NAMES[name])
