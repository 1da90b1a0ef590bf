"""CelebA32 and CelebA64 (paper Section 4.1: center-cropped, then resized).

Expected under the data root, as torchvision downloads it::

    celeba/img_align_celeba/000001.jpg ... 202599.jpg
    celeba/list_eval_partition.txt   (file, 0 = train, 1 = val, 2 = test)
    celeba/list_attr_celeba.txt      (count; 40 attribute names; file and 40 values of -1/1)

Each 178x218 aligned face is cropped to its central 178x178 square and resized
(bicubic, anti-aliased) to 32x32 or 64x64. The two text files are parsed here:
``torchvision.datasets.CelebA`` insists on MD5-exact copies of all six
annotation files (identities, boxes, landmarks), none of which this pipeline
reads.

Labels. CelebA has no classes, only 40 binary attributes. By default the
class-conditional pipeline sees one class, ``face``; with
``DataConfig.celeba_attribute`` set (e.g. ``Male``, ``Smiling``) it sees two,
``not <attribute>`` (label 0) and ``<attribute>`` (label 1). For SDS the
paper describes CelebA by its 40 attribute names (`ATTRIBUTE_NAMES`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privimage.data.base import ImageDataset
from privimage.data.imagefiles import check_inside_data_root, decode_images
from privimage.errors import DataError

FOLDER = "celeba"
IMAGE_FOLDER = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SPLIT_SIZES = {"train": 162_770, "val": 19_867, "test": 19_962}
SINGLE_CLASS = "face"
ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)


def expected_files() -> list[str]:
    return [f"{FOLDER}/{IMAGE_FOLDER}/", f"{FOLDER}/{PARTITION_FILE}", f"{FOLDER}/{ATTRIBUTE_FILE}"]


def class_names(attribute: str) -> tuple[str, ...]:
    """``("face",)``, or ``("not <attribute>", "<attribute>")`` for a chosen attribute."""
    if not attribute:
        return (SINGLE_CLASS,)
    if attribute not in ATTRIBUTE_NAMES:
        raise DataError(f"celeba: unknown attribute '{attribute}' (choose from {', '.join(ATTRIBUTE_NAMES)})")
    words = attribute.replace("_", " ").lower()
    return (f"not {words}", words)


def download(data_root: Path) -> None:
    """Fetch CelebA with torchvision (Google Drive; often rate-limited)."""
    from torchvision.datasets import CelebA

    try:
        CelebA(root=str(data_root), split="all", download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"celeba: download into {data_root} failed ({exc})") from None


def _read_partition(path: Path, split: str) -> list[str]:
    """File names of one split, in file order."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"celeba: cannot read {path} ({exc.__class__.__name__})") from None
    files = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"celeba: {path} line {number} is not '<file> <0|1|2>'")
        if int(fields[1]) == SPLIT_CODES[split]:
            files.append(fields[0])
    return files


def _read_attribute(path: Path, attribute: str, files: list[str]) -> np.ndarray:
    """0/1 values of one attribute for the given files."""
    try:
        lines = path.read_text().splitlines()
        header = lines[1].split()
        column = header.index(attribute)
        values = {}
        for line in lines[2:]:
            fields = line.split()
            if fields:
                values[fields[0]] = int(fields[1 + column])
        return np.array([values[name] == 1 for name in files], dtype=np.int64)
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise DataError(f"celeba: {path} is not a CelebA attribute file with column '{attribute}' "
                        f"({exc.__class__.__name__})") from None
    except KeyError as exc:
        raise DataError(f"celeba: {path} has no attributes for image {exc}") from None


def split_files(data_root: Path, split: str) -> list[str]:
    """Image file names of a split (raises when the partition file is missing)."""
    folder = Path(data_root) / FOLDER
    partition = folder / PARTITION_FILE
    if not partition.is_file() or not (folder / IMAGE_FOLDER).is_dir():
        raise DataError(
            f"celeba not found under {data_root}: expected {', '.join(expected_files())} "
            "(torchvision's layout; fetch it with --download or from the CelebA site)"
        )
    return _read_partition(partition, split)


def load_celeba(data_root: Path, split: str, *, resolution: int, attribute: str = "",
                progress: bool = True) -> ImageDataset:
    """Load a split of CelebA at 32x32 or 64x64.

    Args:
        data_root: folder holding ``celeba/``.
        split: ``train``, ``val`` or ``test`` (the official partition).
        resolution: 32 or 64.
        attribute: empty for one class, or a CelebA attribute name for two.
        progress: progress bar while decoding.

    Returns:
        3 x resolution x resolution images.
    """
    names = class_names(attribute)
    folder = Path(data_root) / FOLDER
    files = split_files(data_root, split)
    if not files:
        raise DataError(f"celeba: {folder / PARTITION_FILE} lists no image of split '{split}'")
    paths = [folder / IMAGE_FOLDER / name for name in files]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise DataError(f"celeba: {len(missing)} images of split '{split}' are missing, e.g. {missing[0]}")
    for path in paths:
        check_inside_data_root(path, data_root, "celeba")
    images = decode_images([str(p) for p in paths], what=f"celeba{resolution}/{split}", mode="RGB",
                           side=resolution, policy="center_crop", progress=progress)
    if attribute:
        labels = _read_attribute(folder / ATTRIBUTE_FILE, attribute, files)
    else:
        labels = np.zeros(len(files), dtype=np.int64)
    return ImageDataset(name=f"celeba{resolution}", split=split, images=images, labels=labels, class_names=names)
