"""A user's own labelled images: an ImageFolder or npz files under the data root.

Two dataset names reach them (paths are relative to the data root, and must
stay inside it):

- ``folder:PATH`` — ``PATH/<split>/<class name>/<image>`` (PNG, JPEG, ...), one
  size for all images; grayscale stays 1 channel when every file is grayscale,
  otherwise RGB. Class names are the folder names, sorted (torchvision's order).
- ``npz:PATH`` — ``PATH/<split>.npz``, or ``PATH`` itself if it is an ``.npz``
  file (then its only split is ``train``). Keys: ``x`` uint8 images, N x H x W x C
  (C = 1 or 3) or N x C x H x W; ``y`` integer labels 0..K-1; optionally
  ``class_names`` (K strings, in label order; default ``class_0`` ...).

Images are used as they are (no resizing), so a public dataset and a sensitive
one must already share a size.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from privimage.data.base import ImageDataset
from privimage.data.imagefiles import check_inside_data_root, decode_images, scan_image_folder
from privimage.errors import DataError

PREFIXES = ("folder:", "npz:")


def is_own(name: str) -> bool:
    return name.startswith(PREFIXES)


def resolve(name: str, data_root: Path) -> tuple[str, Path]:
    """(kind, path) of ``folder:PATH`` / ``npz:PATH``, refusing paths outside the data root."""
    kind, _, relative = name.partition(":")
    if not relative:
        raise DataError(f"dataset '{name}': give a path after '{kind}:', e.g. {kind}:my_images")
    path = Path(relative) if Path(relative).is_absolute() else Path(data_root) / relative
    check_inside_data_root(path, data_root, f"dataset '{name}'")
    return kind, path


def splits(name: str, data_root: Path) -> tuple[str, ...]:
    """The splits present on disk."""
    kind, path = resolve(name, data_root)
    if kind == "folder":
        return tuple(sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))) \
            if path.is_dir() else ()
    if path.is_file():
        return ("train",)
    return tuple(sorted(p.stem for p in path.glob("*.npz"))) if path.is_dir() else ()


def expected_path(name: str, data_root: Path, split: str) -> Path:
    kind, path = resolve(name, data_root)
    if kind == "folder":
        return path / split
    return path if path.suffix == ".npz" else path / f"{split}.npz"


def expected_files(name: str, split: str) -> list[str]:
    kind, _, relative = name.partition(":")
    if kind == "folder":
        return [f"{relative}/{split}/<class name>/<image>"]
    return [relative] if relative.endswith(".npz") else [f"{relative}/{split}.npz"]


def load_own(name: str, data_root: Path, split: str) -> ImageDataset:
    """Load a split of ``folder:PATH`` or ``npz:PATH`` (see the module docstring)."""
    kind, path = resolve(name, data_root)
    if kind == "folder":
        class_names, samples = scan_image_folder(path / split, data_root=Path(data_root), what=name)
        images = decode_images([file for file, _ in samples], what=f"{name}/{split}", mode="auto", side=None)
        labels = np.array([label for _, label in samples], dtype=np.int64)
        return ImageDataset(name=name, split=split, images=images, labels=labels, class_names=tuple(class_names))
    if path.suffix == ".npz" and split != "train":
        raise DataError(f"{name}: a single npz file has only the split 'train', not '{split}' "
                        f"(use a folder of <split>.npz files for more splits)")
    return _load_npz(name, expected_path(name, data_root, split), split)


def _load_npz(name: str, path: Path, split: str) -> ImageDataset:
    if not path.is_file():
        raise DataError(f"{name}: {path} not found (expected an npz with 'x' uint8 images and 'y' labels)")
    # numpy takes any file without a zip or .npy header for a pickle: say what it really is.
    with path.open("rb") as handle:
        if not zipfile.is_zipfile(handle):
            raise DataError(f"{name}: {path} is not a readable npz file (not a zip archive; write one with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise DataError(f"{name}: {path} lacks key(s) {', '.join(missing)} (has {', '.join(archive.files)})")
            images, labels = archive["x"], archive["y"]
            names = archive["class_names"] if "class_names" in archive.files else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{name}: {path} is not a readable npz file ({exc.__class__.__name__}: {exc})") from None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"{name}: {path} 'x' is {images.dtype} of shape {images.shape}; expected uint8 N x H x W x C "
                        "or N x C x H x W with C = 1 or 3")
    # NHWC (the common export) or NCHW; the channel axis is the one of size 1 or 3.
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    elif images.shape[1] not in (1, 3):
        raise DataError(f"{name}: {path} 'x' has shape {images.shape}; neither axis 1 nor axis 3 is a channel axis "
                        "of size 1 or 3")
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
        raise DataError(f"{name}: {path} 'y' is {labels.dtype} of shape {labels.shape}; expected {len(images)} integers")
    labels = labels.astype(np.int64)
    if names is None:
        # Without class_names, K is read off the labels: they must be dense 0..K-1, or one
        # stray label (30,000,000) would claim that many classes, and as many rows of memory.
        # (Negative labels, and labels beyond class_names, are refused by ImageDataset.)
        present = np.unique(labels)
        if len(present) and present[0] >= 0 and not np.array_equal(present, np.arange(len(present))):
            raise DataError(f"{name}: {path} 'y' labels must be 0..K-1 with every class present, got "
                            f"{len(present)} distinct labels from {present[0]} to {present[-1]}; relabel them, or "
                            "add 'class_names' (K names in label order)")
        class_names = tuple(f"class_{label}" for label in range(len(present)))
    else:
        class_names = tuple(str(n) for n in np.asarray(names).reshape(-1))
    return ImageDataset(name=name, split=split, images=images, labels=labels, class_names=class_names)
