"""Reading folders of image files safely: ImageFolder scanning, decoding, caching.

Three datasets are folders of JPEG/PNG files: a user's own ImageFolder, an
ImageNet ImageFolder and CelebA. Here they are scanned and decoded into the
uint8 NCHW arrays of `ImageDataset`, with the checks a shared data root needs:

- every file must stay inside the data root once symlinks are resolved (a link
  or ``..`` pointing elsewhere is refused, not followed);
- every file must be an image (hidden files such as ``.DS_Store`` are skipped;
  anything else is an error naming the file);
- images are used at their own size only when all sizes agree; datasets with
  a target resolution (CelebA, ImageNet) are cropped/resized explicitly.

Decoding a large folder (CelebA: 200k files, ImageNet: 1.3M) takes minutes, so
its result is cached under ``cache_root()/decoded/<hash>/`` keyed by the file
list (names, sizes, modification times) and the resize settings.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from privimage.cache import atomic_save_npz, cache_root
from privimage.errors import DataError

# Bump when decoding changes, so old decoded caches are not reused.
DECODER_VERSION = 1
# Folders with at least this many files are decoded in parallel and cached.
CACHE_MIN_FILES = 5000
# PIL modes that hold one grey channel.
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside ``root`` (symlinks resolved)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def check_inside_data_root(path: Path, data_root: Path, what: str) -> None:
    """Refuse a path that escapes the data root (by ``..`` or by a symlink)."""
    if not inside(path, data_root):
        raise DataError(
            f"{what}: {path} resolves to {Path(path).resolve()}, outside the data root {Path(data_root).resolve()}; "
            "refusing to read it (move the data under the data root or point --data-root at its parent)"
        )


def is_hidden(path: str) -> bool:
    return any(part.startswith(".") for part in Path(path).parts[-1:])


def scan_image_folder(root: Path, *, data_root: Path, what: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes and (file, label) pairs of an ImageFolder (``root/<class>/<image>``).

    Uses torchvision's `ImageFolder` to find classes (sorted folder names) and
    files, with a validity check that refuses non-image files and files that
    resolve outside the data root.

    Args:
        root: the folder whose subfolders are the classes.
        data_root: the folder nothing may escape.
        what: the dataset's name, for messages.

    Returns:
        (class names in label order, [(path, label), ...] sorted by class then path).
    """
    from torchvision.datasets import ImageFolder

    # torchvision's list of image extensions (ImageFolder's own filter).
    from torchvision.datasets.folder import IMG_EXTENSIONS

    check_inside_data_root(root, data_root, what)
    if not root.is_dir():
        raise DataError(f"{what}: folder not found: {root} (expected {root}/<class name>/<image files>)")
    _check_linked_folders(root, data_root, what)
    stray = sorted(p.name for p in root.iterdir() if p.is_file() and not is_hidden(p.name))
    if stray:
        raise DataError(f"{what}: {root} holds files outside class folders ({', '.join(stray[:3])}); "
                        f"expected {root}/<class name>/<image files>")

    def valid(path: str) -> bool:
        # Hidden files are operating-system metadata, not samples.
        if is_hidden(path):
            return False
        check_inside_data_root(Path(path), data_root, what)
        if not path.lower().endswith(IMG_EXTENSIONS):
            raise DataError(f"{what}: {path} is not an image file (expected one of {', '.join(IMG_EXTENSIONS)})")
        return True

    try:
        folder = ImageFolder(str(root), is_valid_file=valid)
    except FileNotFoundError as exc:
        raise DataError(f"{what}: {exc} (expected {root}/<class name>/<image files>)") from None
    return list(folder.classes), [(path, int(label)) for path, label in folder.samples]


def _check_linked_folders(root: Path, data_root: Path, what: str) -> None:
    """Refuse linked folders that leave the data root or loop back to an ancestor."""
    for folder, subfolders, _files in os.walk(root):
        for name in subfolders:
            link = Path(folder) / name
            if link.is_symlink():
                check_inside_data_root(link, data_root, what)
                if inside(link.parent, link):
                    raise DataError(f"{what}: {link} links back to its own ancestor {link.resolve()}; refusing a loop")


# How an image is brought to a side length: `fit_image`'s policies.
FIT_POLICIES = ("resize", "center_crop", "pad", "box")


def fit_image(image: Image.Image, *, mode: str, side: int | None, policy: str) -> np.ndarray:
    """One PIL image -> uint8 C x H x W in ``mode``, brought to ``side`` x ``side`` by ``policy``.

    Args:
        image: the decoded image.
        mode: PIL mode, ``"L"`` (1 channel, ITU-R 601 luma) or ``"RGB"`` (grey replicated).
        side: target side length, or None to keep the size.
        policy: ``"resize"`` (the whole image; box filter when shrinking, bicubic when enlarging),
            ``"center_crop"`` (the central square of the shorter side, then bicubic), ``"pad"``
            (centred on a black square, as MNIST's 28x28 digits are padded to 32x32; never shrinks)
            or ``"box"`` (the whole image, box filter: how the downsampled ImageNet was made).

    Returns:
        The image as an array.
    """
    image = image.convert(mode)
    width, height = image.size
    if side is not None and (width, height) != (side, side):
        if policy == "center_crop":
            # Central square of the shorter side, then resize (CelebA32/64, paper Section 4.1).
            crop = min(width, height)
            left, top = (width - crop) // 2, (height - crop) // 2
            image = image.crop((left, top, left + crop, top + crop)).resize((side, side), Image.Resampling.BICUBIC)
        elif policy == "box":
            # Box resize of the whole image, as the downsampled ImageNet was made.
            image = image.resize((side, side), Image.Resampling.BOX)
        elif policy == "resize":
            # A box filter averages when shrinking; it would only repeat pixels when enlarging.
            shrinking = width >= side and height >= side
            image = image.resize((side, side), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
        elif policy == "pad":
            if width > side or height > side:
                raise DataError(f"a {width}x{height} image cannot be padded to {side}x{side}; "
                                "use the fit 'resize' or 'center_crop'")
            canvas = Image.new(mode, (side, side), 0)
            canvas.paste(image, ((side - width) // 2, (side - height) // 2))
            image = canvas
        else:
            raise DataError(f"unknown fit '{policy}' (choose {', '.join(FIT_POLICIES)})")
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def fit_arrays(images: np.ndarray, *, channels: int, side: int, policy: str) -> np.ndarray:
    """Bring uint8 N x C x H x W images (C = 1 or 3) to ``channels`` x ``side`` x ``side`` with `fit_image`.

    Args:
        images: the images.
        channels: 1 (grayscale) or 3 (RGB).
        side: target side length.
        policy: see `fit_image`.

    Returns:
        uint8 N x channels x side x side.
    """
    mode = "L" if channels == 1 else "RGB"
    fitted = [fit_image(Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)),
                        mode=mode, side=side, policy=policy) for image in images]
    return np.stack(fitted) if fitted else np.zeros((0, channels, side, side), np.uint8)


def _decode(task: tuple[str, str, int | None, str]) -> np.ndarray:
    """One file -> uint8 C x H x W; ``side`` is None (keep), or a side length."""
    path, mode, side, policy = task
    try:
        with Image.open(path) as image:
            return fit_image(image, mode=mode, side=side, policy=policy)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path} ({exc.__class__.__name__}: {exc})") from None


def header_info(paths: Sequence[str], what: str) -> tuple[list[tuple[int, int]], list[str]]:
    """Sizes and modes from the file headers (no pixel decoding)."""
    sizes, modes = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
                modes.append(image.mode)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataError(f"{what}: cannot read image {path} ({exc.__class__.__name__})") from None
    return sizes, modes


def process_pool(workers: int):
    """A pool of worker processes: forked where possible (no re-import of the caller's script)."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method).Pool(workers)


def _manifest_hash(paths: Sequence[str], settings: dict) -> str:
    """Hash of the file list (name, size, mtime) and the decode settings."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def decode_images(
    paths: Sequence[str],
    *,
    what: str,
    mode: str = "auto",
    side: int | None = None,
    policy: str = "box",
    workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Decode image files into one uint8 N x C x H x W array (cached when large).

    Args:
        paths: image files, in dataset order.
        what: the dataset's name, for messages and the progress bar.
        mode: PIL mode, ``"L"`` (1 channel), ``"RGB"``, or ``"auto"`` (``"L"`` when every file is grayscale).
        side: target side length, or None to keep sizes (which must then agree).
        policy: how images reach ``side`` (`fit_image`: ``"resize"``, ``"center_crop"``, ``"pad"``, ``"box"``).
        workers: decoding processes (default: all CPUs for large folders).
        progress: show a progress bar.

    Returns:
        The images.
    """
    if not paths:
        raise DataError(f"{what}: no image files found")
    if side is None or mode == "auto":
        sizes, modes = header_info(paths, what)
    if mode == "auto":
        # Grayscale stays one channel only when every file is grayscale.
        mode = "L" if set(modes) <= GRAYSCALE_MODES else "RGB"
    if side is None:
        distinct = sorted(set(sizes))
        if len(distinct) > 1:
            first = paths[sizes.index(distinct[0])]
            other = paths[sizes.index(distinct[1])]
            raise DataError(
                f"{what}: images differ in size ({first} is {distinct[0][0]}x{distinct[0][1]}, "
                f"{other} is {distinct[1][0]}x{distinct[1][1]}); all images of a dataset must share one size"
            )
    tasks = [(str(path), mode, side, policy) for path in paths]
    large = len(paths) >= CACHE_MIN_FILES
    cached = None
    if large:
        key = _manifest_hash([str(p) for p in paths], {"mode": mode, "side": side, "policy": policy,
                                                       "version": DECODER_VERSION})
        cached = cache_root() / "decoded" / key / "images.npz"
        if cached.is_file():
            try:
                with np.load(cached, allow_pickle=False) as archive:
                    return archive["images"]
            except (OSError, KeyError, ValueError, zipfile.BadZipFile):
                pass  # an unreadable cache entry is decoded again and replaced

    workers = workers or ((os.cpu_count() or 1) if large else 1)
    bar = dict(total=len(tasks), desc=f"decoding {what}", unit="img", disable=not progress or not large)
    if workers > 1:
        with process_pool(workers) as pool:
            arrays = list(tqdm(pool.imap(_decode, tasks, chunksize=256), **bar))
    else:
        arrays = [_decode(task) for task in tqdm(tasks, **bar)]
    images = np.stack(arrays)
    if cached is not None:
        atomic_save_npz(cached, images=images)
    return images
