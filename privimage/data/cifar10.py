"""CIFAR-10 from its official Python pickle batches (paper: the sensitive dataset).

Expected under the data root, as torchvision downloads and extracts it::

    cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta

The batches are read here rather than through ``torchvision.datasets.CIFAR10``
because torchvision refuses any copy whose MD5 differs from the published
archive, which would also refuse the tiny fixtures the tests build in the same
format. The published checksums are still compared (torchvision's own list):
a copy that parses but differs is loaded with a warning. torchvision does the
downloading, when the user asks for it.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np

from privimage.data.base import ImageDataset
from privimage.errors import DataError

NAME = "cifar10"
FOLDER = "cifar-10-batches-py"
SPLIT_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
META_FILE = "batches.meta"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLIT_SIZES = {"train": 50_000, "test": 10_000}
IMAGE_SHAPE = (3, 32, 32)


def expected_files(split: str) -> list[str]:
    return [f"{FOLDER}/{name}" for name in SPLIT_FILES[split]] + [f"{FOLDER}/{META_FILE}"]


def download(data_root: Path) -> None:
    """Fetch and extract the official archive with torchvision (needs a network)."""
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(root=str(data_root), train=True, download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"cifar10: download into {data_root} failed ({exc})") from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch: ``data`` (N x 3072, channel-planar) and ``labels``."""
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"cifar10: {path} is not a CIFAR-10 pickle batch ({exc.__class__.__name__}: {exc})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DataError(
            f"cifar10: {path} has data of shape {data.shape} and {labels.shape[0]} labels; "
            "expected N x 3072 and N labels"
        )
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _checksums_match(folder: Path, split: str) -> bool:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    published = dict(CIFAR10.train_list + CIFAR10.test_list)
    return all(check_integrity(str(folder / name), published[name]) for name in SPLIT_FILES[split])


def load_cifar10(data_root: Path, split: str) -> ImageDataset:
    """Load a split of CIFAR-10 (3x32x32).

    Args:
        data_root: folder holding ``cifar-10-batches-py/``.
        split: ``train`` (50,000) or ``test`` (10,000).

    Returns:
        The dataset, class names from ``batches.meta``.
    """
    folder = Path(data_root) / FOLDER
    missing = [name for name in (*SPLIT_FILES[split], META_FILE) if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"cifar10 not found: {folder} lacks {', '.join(missing)} (the extracted cifar-10-python.tar.gz; "
            "fetch it with --download or from https://www.cs.toronto.edu/~kriz/cifar.html)"
        )
    batches = [_read_batch(folder / name) for name in SPLIT_FILES[split]]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    class_names = read_class_names(folder / META_FILE)
    if not _checksums_match(folder, split):
        warnings.warn(f"cifar10: the files in {folder} differ from the published CIFAR-10 checksums; "
                      "loading them as a modified copy", stacklevel=2)
    return ImageDataset(name=NAME, split=split, images=images, labels=labels, class_names=class_names)


def read_class_names(path: Path) -> tuple[str, ...]:
    """``label_names`` of ``batches.meta``."""
    try:
        with open(path, "rb") as handle:
            names = tuple(str(name) for name in pickle.load(handle, encoding="latin1")["label_names"])
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"cifar10: {path} is not CIFAR-10's batches.meta ({exc.__class__.__name__})") from None
    if not names:
        raise DataError(f"cifar10: {path} names no classes")
    return names
