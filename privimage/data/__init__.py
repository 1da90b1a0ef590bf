"""Datasets: the embedded benchmark and real datasets behind one registry.

- ``load_dataset(name, split, *, data_root=None, config=None) -> ImageDataset``
- ``load_sensitive_train(config, *, data_root=None) -> ImageDataset`` (flagged sensitive)
- ``list_datasets(data_root=None)`` and ``dataset_info(name, split, *, data_root=None, config=None)``
- ``glove_vectors(path=None)`` and ``class_name_vector(name, vectors=None)`` (GloVe, for SDS)

See `privimage.data.registry` for the table of datasets and their files.
"""

from privimage.data.base import ImageDataset, refuse_sensitive
from privimage.data.glove import class_name_vector, glove_vectors
from privimage.data.registry import (
    REGISTRY,
    dataset_info,
    default_data_root,
    resolve_data_root,
    list_datasets,
    load_dataset,
    load_sensitive_train,
)

__all__ = [
    "ImageDataset",
    "REGISTRY",
    "class_name_vector",
    "dataset_info",
    "default_data_root",
    "resolve_data_root",
    "glove_vectors",
    "list_datasets",
    "load_dataset",
    "load_sensitive_train",
    "refuse_sensitive",
]
