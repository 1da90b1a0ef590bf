"""The datasets evaluation reads: the sensitive test split and the public corpus.

Evaluation never reads the sensitive training split except for the NonPriv
row, which callers request explicitly (`privimage.evaluation.classifiers`).
Datasets come from the data registry (``privimage.data.load_dataset``).
"""

from __future__ import annotations

from pathlib import Path

from privimage.config import DataConfig
from privimage.data import load_dataset
from privimage.data.base import ImageDataset
from privimage.errors import DataError

# The split of the sensitive dataset that FID references and classifier tests use.
TEST_SPLIT = "test"
# The splits of the public dataset the offline FID backbone trains and is selected on.
PUBLIC_TRAIN_SPLIT = "train"
PUBLIC_VALIDATION_SPLIT = "val"


def load_split(*, name: str, split: str, data_root: Path | None = None, config: DataConfig | None = None) -> ImageDataset:
    """Load one split of a named dataset through the data registry.

    Args:
        name: dataset name (``mnist5k``, ``glyphs1k``, ``cifar10``, ...).
        split: split name (``train``, ``test``, ``val``).
        data_root: folder of real datasets (registry default when None).
        config: the data section, for datasets generated from settings.

    Returns:
        The `ImageDataset`.
    """
    return load_dataset(name, split, data_root=data_root, config=config)


def load_test_split(*, name: str, data_root: Path | None = None, config: DataConfig | None = None) -> ImageDataset:
    """The sensitive dataset's test split, which evaluation uses for reporting only."""
    test = load_split(name=name, split=TEST_SPLIT, data_root=data_root, config=config)
    if test.sensitive:
        raise DataError(f"{name}/{TEST_SPLIT} is flagged as the sensitive training set; evaluation reads the test split only")
    return test
