"""Reading and checking a synthetic dataset before it is evaluated.

A synthetic set is an ``.npz`` archive with ``x`` (uint8 images, N x C x H x W or
N x H x W x C) and ``y`` (integer labels), matching the sensitive dataset's image
shape and classes. Every problem is reported as one line before any work starts.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from privimage.config import config_from_dict
from privimage.data import dataset_info
from privimage.data.base import ImageDataset
from privimage.errors import DataError, PrivacyError


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def images_to_nchw(images: np.ndarray, *, source: str) -> np.ndarray:
    """Check an image array and return it as uint8 N x C x H x W (NHWC is transposed).

    Args:
        images: the array to check.
        source: name used in error messages (e.g. the file).

    Returns:
        The images in NCHW layout.
    """
    if np.issubdtype(images.dtype, np.floating) and np.isnan(images).any():
        raise DataError(f"{source}: images contain NaN values")
    if images.dtype != np.uint8:
        raise DataError(
            f"{source}: images must be uint8 in 0..255, got {images.dtype} "
            "(quantise first: np.clip(np.rint(x), 0, 255).astype(np.uint8))"
        )
    if images.ndim != 4:
        raise DataError(f"{source}: images must be 4-D (N x C x H x W or N x H x W x C), got shape {images.shape}")
    if images.shape[1] in (1, 3):
        return images
    if images.shape[3] in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise DataError(f"{source}: images must have 1 or 3 channels (NCHW or NHWC), got shape {images.shape}")


def check_synthetic(*, synthetic: ImageDataset, reference: ImageDataset) -> None:
    """Refuse a synthetic set that cannot stand in for the sensitive dataset.

    Args:
        synthetic: the generated set.
        reference: the sensitive dataset's test split (shape and classes to match).
    """
    if synthetic.sensitive:
        raise PrivacyError(f"'{synthetic.name}/{synthetic.split}' is the sensitive training set, not a synthetic set")
    if synthetic.image_shape != reference.image_shape:
        raise DataError(
            f"{synthetic.name}: synthetic images are {_shape(synthetic.image_shape)} but "
            f"{reference.name} images are {_shape(reference.image_shape)}"
        )
    if synthetic.num_classes != reference.num_classes:
        raise DataError(
            f"{synthetic.name}: synthetic set has {synthetic.num_classes} classes but {reference.name} has {reference.num_classes}"
        )
    present = np.unique(synthetic.labels)
    if len(present) < 2:
        raise DataError(f"{synthetic.name}: classifiers need images of at least 2 classes, got labels {present.tolist()}")


def load_synthetic_npz(*, path: Path, reference: ImageDataset) -> ImageDataset:
    """Load and check a synthetic ``.npz`` against the sensitive dataset.

    Args:
        path: the archive, with arrays ``x`` (uint8 images) and ``y`` (integer labels).
        reference: the sensitive dataset's test split (image shape and class names).

    Returns:
        An `ImageDataset` named after the file, with the reference's class names.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"synthetic file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable npz archive ({exc.__class__.__name__})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an npz archive (a single array; save with np.savez(path, x=..., y=...))")
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)} (found: {', '.join(archive.files) or 'none'})")
        try:
            images, labels = archive["x"], archive["y"]
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            # A truncated member, or an object array that would need pickle.
            raise DataError(f"{path}: not a readable npz archive ({exc.__class__.__name__})") from None

    images = images_to_nchw(images, source=str(path))
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels y must be integers, got {labels.dtype}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{path}: {images.shape[0]} images but labels y of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= reference.num_classes):
        raise DataError(
            f"{path}: labels must lie in [0, {reference.num_classes}) for {reference.name}, "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    synthetic = ImageDataset(name=path.stem, split="synthetic", images=images, labels=labels.astype(np.int64),
                             class_names=reference.class_names)
    check_synthetic(synthetic=synthetic, reference=reference)
    return synthetic


def load_run_synthetic(run_dir: Path, *, data_root: Path | None = None) -> ImageDataset:
    """The synthetic set of a run folder (``synthetic.npz``) as an `ImageDataset` named by the sensitive classes.

    The class names come from the folder's ``config.json`` (its sensitive dataset,
    looked up under ``data_root`` when it is the user's own).

    Args:
        run_dir: a run folder, or a folder of samples with the same two files.
        data_root: folder of real datasets.

    Returns:
        The images and labels, as sampled.
    """

    resolved = config_from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    names = tuple(dataset_info(resolved.data.sensitive, "test", data_root=data_root,
                               config=resolved.data)["class_names"])
    with np.load(Path(run_dir) / "synthetic.npz") as archive:
        return ImageDataset("synthetic", "all", archive["x"], archive["y"], names)
