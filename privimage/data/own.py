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
one must already share a size and channels. `import_images` (``privimage data
import SOURCE DEST``) writes a converted copy: every split of SOURCE brought to
a side length and channel count, each image on its own (nothing is computed
across images), into a new ``folder:`` or ``npz:`` dataset; SOURCE is never changed.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from privimage.data.base import ImageDataset
from privimage.cache import atomic_save_npz
from privimage.data.imagefiles import check_inside_data_root, decode_images, fit_arrays, scan_image_folder
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


def import_images(
    *, source: str, destination: str, data_root: Path, channels: int, side: int, fit: str = "resize"
) -> dict:
    """Write a copy of a user's dataset with every image brought to ``channels`` x ``side`` x ``side``.

    Each image is converted on its own (`privimage.data.imagefiles.fit_image`):
    a fixed per-image map, so one image in gives one image out and the converted
    set has the same add/remove-one neighbours as the original. The copy is
    written under a temporary name and renamed when complete.

    Args:
        source: ``folder:PATH`` or ``npz:PATH`` (images of any size, grayscale or RGB).
        destination: ``folder:PATH`` (PNG files) or ``npz:PATH`` (``<split>.npz``, or one ``.npz`` file
            when the source has only ``train``); it must not exist yet.
        data_root: the folder both paths are relative to.
        channels: 1 (grayscale) or 3 (RGB).
        side: the side length of the square images written.
        fit: ``"resize"``, ``"center_crop"`` or ``"pad"`` (see `fit_image`).

    Returns:
        ``source``, ``destination``, ``path`` (where the copy went), ``image_shape`` [C, H, W],
        ``fit`` and ``splits`` (images per split).

    Raises:
        DataError: a name that is not ``folder:``/``npz:``, a destination that exists,
            a source without images, an image that the fit cannot bring to ``side``.
    """
    data_root = Path(data_root)
    for name, role in ((source, "source"), (destination, "destination")):
        if not is_own(name):
            raise DataError(f"{role} '{name}' must be folder:PATH or npz:PATH (relative to the data root)")
    if channels not in (1, 3) or side < 1:
        raise DataError(f"cannot import to {channels} channel(s) of side {side}: channels must be 1 or 3, side >= 1")
    source_kind, source_path = resolve(source, data_root)
    kind, path = resolve(destination, data_root)
    split_names = splits(source, data_root)
    if not split_names:
        raise DataError(f"{source}: no splits found at {source_path} (expected {', '.join(expected_files(source, 'train'))})")
    if path.exists():
        raise DataError(f"{destination}: {path} exists already; choose a new name (an import never overwrites)")
    single_file = kind == "npz" and path.suffix == ".npz"
    if single_file and split_names != ("train",):
        raise DataError(f"{destination}: one .npz file holds only 'train', but {source} has splits "
                        f"{', '.join(split_names)}; name a folder, e.g. npz:{path.stem}")
    mode = "L" if channels == 1 else "RGB"
    # Written beside the destination under a hidden name, renamed once every split is done.
    staging = path.with_name(f".{path.name}.importing")
    _remove(staging)
    counts = {}
    try:
        for split in split_names:
            if source_kind == "folder":
                # Decoded straight to the target geometry, so images of mixed sizes are fine here.
                class_names, samples = scan_image_folder(source_path / split, data_root=data_root, what=source)
                images = decode_images([file for file, _ in samples], what=f"{source}/{split}", mode=mode,
                                       side=side, policy=fit)
                labels = np.array([label for _, label in samples], dtype=np.int64)
                stems = [Path(file).stem for file, _ in samples]
            else:
                dataset = load_own(source, data_root, split)
                images = fit_arrays(dataset.images, channels=channels, side=side, policy=fit)
                labels, class_names = dataset.labels, list(dataset.class_names)
                stems = [f"{index:06d}" for index in range(len(labels))]
            imported = ImageDataset(name=destination, split=split, images=images, labels=labels,
                                    class_names=tuple(class_names))
            if kind == "folder":
                _write_image_folder(imported, staging / split, stems=stems)
            else:
                # NHWC, the common export, with the class names in label order.
                atomic_save_npz(staging if single_file else staging / f"{split}.npz",
                                x=imported.images.transpose(0, 2, 3, 1), y=imported.labels,
                                class_names=np.array(imported.class_names))
            counts[split] = len(imported)
        staging.rename(path)
    finally:
        # A failed import leaves nothing that looks like a dataset.
        _remove(staging)
    return {"source": source, "destination": destination, "path": str(path), "image_shape": [channels, side, side],
            "fit": fit, "splits": counts}


def _write_image_folder(dataset: ImageDataset, folder: Path, *, stems: list[str]) -> None:
    """``folder/<class name>/<stem>.png`` for every image (PNG: lossless, so the copy hashes as written)."""
    from PIL import Image

    for name in dataset.class_names:
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise DataError(f"{dataset.name}: class name {name!r} cannot be a folder name; import to npz: instead")
    written = set()
    for image, label, stem in zip(dataset.images, dataset.labels, stems):
        path = folder / dataset.class_names[label] / f"{stem}.png"
        if path in written:
            raise DataError(f"{dataset.name}/{dataset.split}: two images would both be written to {path} "
                            "(same name in one class, different extensions); rename one")
        written.add(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
