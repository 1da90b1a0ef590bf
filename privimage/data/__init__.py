"""Datasets: the embedded benchmark and real datasets behind one registry.

Public entry points (the registry module implements them):

- ``load_dataset(name, split, *, data_root=None, config=None) -> ImageDataset``
- ``load_sensitive_train(config, data_root=None) -> ImageDataset`` (flagged sensitive)
- ``list_datasets()`` and ``dataset_info(name, split)``
"""

from privimage.data.base import ImageDataset, refuse_sensitive

__all__ = ["ImageDataset", "refuse_sensitive"]
