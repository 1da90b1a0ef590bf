"""Downsampled ImageNet 32x32 / 64x64 (paper: the public dataset), and ImageNet ImageFolders.

Official npz batches (Chrabaszcz et al., 2017), expected under the data root in
``imagenet32/`` or ``imagenet64/``, directly or inside the folders the official
zips extract to (``Imagenet32_train_npz/``, ``Imagenet64_train_part1_npz/``, ...)::

    train_data_batch_1.npz ... train_data_batch_10.npz, val_data.npz

Each holds ``data`` (N x 3*R*R uint8, channel-planar: all red, then green, then
blue) and ``labels`` (1-based, 1..1000).

An ImageNet ImageFolder (``imagenet/train/<wnid>/*.JPEG`` and
``imagenet/val/<wnid>/*.JPEG``) is read by the ``imagenet32-folder`` and
``imagenet64-folder`` datasets: each image is box-resized to R x R, as the
downsampled ImageNet was made; the decoded arrays are cached.

Class names. The 1,000 WordNet names are not shipped offline. A
``map_clsloc.txt`` (``<wnid> <1-based label> <name>`` per line, the ILSVRC
devkit file that the npz labels follow) or a ``class_names.txt`` (one name per
line, in label order) found in the dataset folder supplies them; otherwise the
classes are ``class_0001`` ... ``class_1000`` (npz) or their WordNet ids
(folders). The names matter for GloVe (SDS), not for training.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from privimage.data.base import ImageDataset
from privimage.data.imagefiles import check_inside_data_root, decode_images, scan_image_folder
from privimage.errors import DataError

NUM_CLASSES = 1000
SPLIT_SIZES = {"train": 1_281_167, "val": 50_000}
SPLIT_FILES = {
    "train": tuple(f"train_data_batch_{i}.npz" for i in range(1, 11)),
    "val": ("val_data.npz",),
}
FOLDER_ROOT = "imagenet"
CLASS_MAP_FILE = "map_clsloc.txt"
CLASS_LIST_FILE = "class_names.txt"


def npz_folder(resolution: int) -> str:
    return f"imagenet{resolution}"


def expected_files(resolution: int, split: str) -> list[str]:
    return [f"{npz_folder(resolution)}/{name}" for name in SPLIT_FILES[split]]


def find_batch(folder: Path, name: str) -> Path | None:
    """A batch file directly in ``folder`` or one level below (the official zips' folders)."""
    direct = folder / name
    if direct.is_file():
        return direct
    if folder.is_dir():
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if (sub / name).is_file():
                return sub / name
    return None


def batch_paths(data_root: Path, resolution: int, split: str) -> list[Path]:
    """The npz batches of a split; a clear error naming the missing ones."""
    folder = Path(data_root) / npz_folder(resolution)
    found = {name: find_batch(folder, name) for name in SPLIT_FILES[split]}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"imagenet{resolution} not found: {folder} lacks {', '.join(missing)} (expected the official "
            f"downsampled ImageNet npz batches {', '.join(SPLIT_FILES[split])} in {folder} or a subfolder; "
            "download them from https://image-net.org/download-images)"
        )
    for path in found.values():
        check_inside_data_root(path, data_root, f"imagenet{resolution}")
    return list(found.values())


def read_class_names(folder: Path, wnids: list[str] | None = None) -> tuple[str, ...] | None:
    """Class names from ``map_clsloc.txt`` or ``class_names.txt`` in ``folder``, else None.

    Args:
        folder: where to look.
        wnids: for an ImageFolder, its class folders (WordNet ids) in label order;
            None for the npz batches, whose labels follow ``map_clsloc.txt``'s numbering.
    """
    map_file, list_file = folder / CLASS_MAP_FILE, folder / CLASS_LIST_FILE
    if map_file.is_file():
        by_label, by_wnid = {}, {}
        try:
            for line in map_file.read_text().splitlines():
                if line.strip():
                    wnid, label, name = line.split()
                    by_label[int(label)] = by_wnid[wnid] = name.replace("_", " ")
        except (OSError, UnicodeDecodeError, ValueError):
            raise DataError(f"{map_file}: expected lines '<wnid> <label> <name>'") from None
        if wnids is not None:
            return tuple(by_wnid.get(wnid, wnid) for wnid in wnids)
        if sorted(by_label) != list(range(1, NUM_CLASSES + 1)):
            raise DataError(f"{map_file}: expected labels 1..{NUM_CLASSES}, got {len(by_label)} labels")
        return tuple(by_label[label] for label in range(1, NUM_CLASSES + 1))
    if list_file.is_file():
        names = tuple(line.strip() for line in list_file.read_text().splitlines() if line.strip())
        expected = len(wnids) if wnids is not None else NUM_CLASSES
        if len(names) != expected:
            raise DataError(f"{list_file}: {len(names)} class names, expected {expected}")
        return names
    return None


def default_class_names() -> tuple[str, ...]:
    return tuple(f"class_{label:04d}" for label in range(1, NUM_CLASSES + 1))


def _read_batch(path: Path, resolution: int, *, labels_only: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
    """``data`` as N x 3 x R x R and 0-based labels of one npz batch."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            labels = np.asarray(archive["labels"]).astype(np.int64).reshape(-1) - 1
            data = None if labels_only else archive["data"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a downsampled ImageNet npz batch with 'data' and 'labels' "
                        f"({exc.__class__.__name__}: {exc})") from None
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in 1..{NUM_CLASSES} (1-based), got "
                        f"{labels.min() + 1}..{labels.max() + 1}")
    if data is None:
        return None, labels
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape != (len(labels), 3 * resolution * resolution):
        raise DataError(f"{path}: 'data' is {data.dtype} of shape {data.shape}; expected uint8 "
                        f"{len(labels)} x {3 * resolution * resolution} for {resolution}x{resolution} images")
    # Channel-planar rows reshape directly into C x H x W.
    return data.reshape(-1, 3, resolution, resolution), labels


def count_npz(data_root: Path, resolution: int, split: str) -> int:
    """Number of images of a split, from the labels alone."""
    return sum(len(_read_batch(path, resolution, labels_only=True)[1])
               for path in batch_paths(data_root, resolution, split))


def load_imagenet_npz(data_root: Path, split: str, *, resolution: int) -> ImageDataset:
    """Load a split of downsampled ImageNet from its npz batches.

    Args:
        data_root: folder holding ``imagenet32/`` or ``imagenet64/``.
        split: ``train`` (1,281,167) or ``val`` (50,000).
        resolution: 32 or 64.

    Returns:
        3 x R x R images, 1,000 classes.
    """
    paths = batch_paths(data_root, resolution, split)
    batches = [_read_batch(path, resolution) for path in paths]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    folder = Path(data_root) / npz_folder(resolution)
    names = read_class_names(folder) or default_class_names()
    return ImageDataset(name=f"imagenet{resolution}", split=split, images=images, labels=labels, class_names=names)


def folder_expected_files(split: str) -> list[str]:
    return [f"{FOLDER_ROOT}/{split}/<wnid>/<image>.JPEG"]


def scan_folder(data_root: Path, split: str, resolution: int) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """(class names, samples) of an ImageNet ImageFolder split, without decoding."""
    name = f"imagenet{resolution}-folder"
    root = Path(data_root) / FOLDER_ROOT / split
    if not root.is_dir():
        raise DataError(f"{name} not found: {root} does not exist (expected {root}/<wnid>/<image>.JPEG)")
    wnids, samples = scan_image_folder(root, data_root=Path(data_root), what=name)
    return read_class_names(Path(data_root) / FOLDER_ROOT, wnids) or tuple(wnids), samples


def load_imagenet_folder(data_root: Path, split: str, *, resolution: int, progress: bool = True) -> ImageDataset:
    """Load an ImageNet ImageFolder split, box-resized to R x R (decoded once, then cached).

    Args:
        data_root: folder holding ``imagenet/train`` and ``imagenet/val``.
        split: ``train`` or ``val`` (val sorted into class folders).
        resolution: 32 or 64.
        progress: progress bar while decoding.

    Returns:
        3 x R x R images; classes named from ``map_clsloc.txt`` when present, else their WordNet ids.
    """
    name = f"imagenet{resolution}-folder"
    names, samples = scan_folder(data_root, split, resolution)
    images = decode_images([path for path, _ in samples], what=f"{name}/{split}", mode="RGB", side=resolution,
                           policy="box", progress=progress)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    return ImageDataset(name=name, split=split, images=images, labels=labels, class_names=names)
