"""The selection stage as the pipeline and the CLI run it: SQF -> noisy query -> selection -> files.

Writes into an output folder:

- ``selection.json``: the selected public semantics per sensitive class, the
  requested and achieved selection ratio, a summary of the noisy histogram, the
  SQF's public-val accuracy, and the privacy ledger of the query;
- ``noisy_histogram.npz``: the released noisy histogram (rows x public semantics).

The selection is a DP release. When several runs reuse one cached selection
(methods share it), each run's ledger carries the query's entry, so the
release is accounted in every run that depends on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privimage.cache import atomic_save_npz, atomic_write_json
from privimage.config import Config
from privimage.data import dataset_info, load_dataset, load_sensitive_train
from privimage.data.base import ImageDataset
from privimage.data.registry import is_sensitive_name
from privimage.errors import PrivImageError
from privimage.privacy import PrivacyLedger
from privimage.semantics.query import (
    NoisySemanticDistribution,
    exact_semantic_distribution,
    query_semantic_distribution,
)
from privimage.semantics.query_function import QueryFunction, train_query_function
from privimage.semantics.selection import QuerySettings, Selection, build_selection, query_settings


@dataclass
class SelectionResult:
    selection: Selection
    query_function: QueryFunction
    ledger: PrivacyLedger
    summary: dict


def check_public_name(config: Config) -> None:
    """The public dataset is not the sensitive one: its class names are the semantics the query votes for."""

    if is_sensitive_name(config.data.public, config.data):
        raise PrivImageError(f"'{config.data.public}' is the sensitive dataset, not a public dataset with named "
                             "semantics (e.g. glyphs1k, imagenet32)")


def load_public(config: Config, *, data_root: Path | None = None) -> tuple[ImageDataset, ImageDataset]:
    """The public dataset's train and validation splits."""
    check_public_name(config)
    name = config.data.public
    val_split = "val"
    return (
        load_dataset(name, "train", data_root=data_root, config=config.data),
        load_dataset(name, val_split, data_root=data_root, config=config.data),
    )


def check_compatible(public: ImageDataset, sensitive: ImageDataset) -> None:
    """Public and sensitive images must share channels and size (the SQF sees both)."""
    check_image_shapes(public_name=public.name, public_shape=tuple(public.image_shape), sensitive=sensitive)


def check_image_shapes(*, public_name: str, public_shape: tuple[int, ...], sensitive: ImageDataset) -> None:
    """`check_compatible` from the public dataset's metadata, before its images are loaded."""
    if tuple(public_shape) != tuple(sensitive.image_shape):
        raise PrivImageError(
            f"public '{public_name}' images are {list(public_shape)} but sensitive '{sensitive.name}' "
            f"images are {list(sensitive.image_shape)}; they must match (grayscale vs RGB, size)"
        )


def trained_query_function(config: Config, *, data_root: Path | None = None, progress: bool = True) -> QueryFunction:
    """The SQF for this config's public dataset (trained once, then cached)."""
    public_train, public_val = load_public(config, data_root=data_root)
    return train_query_function(
        public_train=public_train, public_val=public_val, config=config.semantics, seed=config.semantics.sqf_seed,
        progress=progress
    )


def resolve_query_settings(config: Config, *, data_root: Path | None = None, private: bool = True) -> QuerySettings:
    """z, k and N of the config's query, from the datasets' metadata (no image is read).

    Args:
        config: the resolved config.
        data_root: folder of real datasets.
        private: False for the non-private ablation (z = 0).

    Returns:
        The `QuerySettings` (`privimage.semantics.selection.query_settings`).
    """
    public_info = dataset_info(config.data.public, "train", data_root=data_root, config=config.data)
    sensitive_info = dataset_info(config.data.sensitive, "train", data_root=data_root, config=config.data)
    return query_settings(config=config, num_public_classes=int(public_info["num_classes"]),
                          num_rows=int(sensitive_info["num_classes"]), private=private)


def run_selection(
    config: Config,
    *,
    ledger: PrivacyLedger | None,
    out_dir: Path,
    private: bool = True,
    data_root: Path | None = None,
    sensitive: ImageDataset | None = None,
    progress: bool = True,
) -> SelectionResult:
    """Train/load the SQF, query the sensitive data under DP, select, and save.

    ``private=False`` (the NonPriv ablation only) uses the exact histogram, has no
    ledger and no guarantee; ``selection.json`` then says so.
    """
    semantics = config.semantics
    # Every parameter is checked before the public images load (from their
    # metadata), before the SQF trains or the sensitive data is queried.
    public_info = dataset_info(config.data.public, "train", data_root=data_root, config=config.data)
    sensitive = sensitive if sensitive is not None else load_sensitive_train(config, data_root=data_root)
    if len(sensitive) == 0:
        raise PrivImageError(f"the sensitive dataset '{sensitive.name}/{sensitive.split}' is empty")
    # z, k and N (k = N unless the config sets k): one histogram row per sensitive class.
    settings = query_settings(config=config, num_public_classes=int(public_info["num_classes"]),
                              num_rows=sensitive.num_classes, private=private)
    check_image_shapes(public_name=config.data.public, public_shape=tuple(public_info["image_shape"]),
                       sensitive=sensitive)
    public_train, public_val = load_public(config, data_root=data_root)
    check_compatible(public_train, sensitive)
    query_function = train_query_function(
        public_train=public_train, public_val=public_val, config=semantics, seed=semantics.sqf_seed, progress=progress
    )

    start = time.perf_counter()
    distribution = _query_distribution(config, query_function=query_function, sensitive=sensitive, settings=settings,
                                       ledger=ledger, private=private)
    selection = build_selection(distribution=distribution, public=public_train, selection_ratio=semantics.selection_ratio)
    seconds = time.perf_counter() - start

    summary = _selection_summary(config, public_train=public_train, sensitive=sensitive, settings=settings,
                                 private=private, distribution=distribution, selection=selection,
                                 query_function=query_function, query_seconds=seconds, ledger=ledger)
    out_dir = Path(out_dir)
    atomic_save_npz(out_dir / "noisy_histogram.npz", noisy_histogram=distribution.noisy_histogram,
                    row_names=np.array(distribution.row_names), semantic_names=np.array(distribution.semantic_names))
    atomic_write_json(out_dir / "selection.json", summary)
    return SelectionResult(selection=selection, query_function=query_function, ledger=ledger, summary=summary)


def _query_distribution(
    config: Config, *, query_function: QueryFunction, sensitive: ImageDataset, settings: QuerySettings,
    ledger: PrivacyLedger | None, private: bool,
) -> NoisySemanticDistribution:
    """The noisy semantic histogram, charged to ``ledger`` (paper Section 3.2), or the exact one without privacy."""
    if not private:
        return exact_semantic_distribution(query_function=query_function, sensitive=sensitive, k=settings.k)
    if ledger is None:
        raise PrivImageError("a private selection needs the run's privacy ledger")
    return query_semantic_distribution(
        query_function=query_function,
        sensitive=sensitive,
        k=settings.k,
        query_noise_multiplier=settings.query_noise_multiplier,
        ledger=ledger,
        secure_mode=config.finetune.secure_mode,
    )


def _selection_summary(config: Config, *, public_train: ImageDataset, sensitive: ImageDataset,
                       settings: QuerySettings, private: bool, distribution: NoisySemanticDistribution,
                       selection: Selection, query_function: QueryFunction, query_seconds: float,
                       ledger: PrivacyLedger | None) -> dict:
    """What ``selection.json`` holds: the selection, a summary of the noisy histogram, the SQF and the ledger."""
    semantics = config.semantics
    # Frequencies of the selected public semantics, for SDS (paper Eq. 5).
    public_counts = np.bincount(public_train.labels, minlength=public_train.num_classes)
    name_to_index = {name: i for i, name in enumerate(public_train.class_names)}
    selected_counts = {
        name: int(public_counts[name_to_index[name]]) for names in selection.selected.values() for name in names
    }
    noisy = distribution.noisy_histogram
    return {
        "public": public_train.name,
        "sensitive": sensitive.name,
        "k": settings.k,
        "k_follows_semantics_per_class": settings.k_follows_semantics_per_class,
        "private": private,
        # The non-private ablation adds no noise: z is 0 there whatever the config says.
        "query_noise_multiplier": distribution.query_noise_multiplier,
        "noise_std": distribution.query_noise_multiplier * float(np.sqrt(settings.k)),
        "semantics_per_class": selection.per_row,
        "selection_ratio_requested": selection.selection_ratio_requested,
        "selection_ratio": selection.selection_ratio_achieved,
        "num_selected_images": len(selection.dataset),
        "num_public_images": len(public_train),
        "selected": selection.selected,
        "selected_counts": selected_counts,
        "noisy_histogram_summary": {
            "shape": list(noisy.shape),
            "row_totals": {name: float(total) for name, total in zip(distribution.row_names, noisy.sum(axis=1))},
            "top_values": {
                name: [float(v) for v in np.sort(noisy[row])[::-1][: selection.per_row]]
                for row, name in enumerate(distribution.row_names)
            },
        },
        "noise_generator": distribution.generator,
        "sqf": {
            "arch": semantics.sqf_arch,
            "public_val_accuracy": query_function.public_val_accuracy,
            "train_seconds": query_function.train_seconds,
        },
        "query_seconds": query_seconds,
        "ledger": ledger.to_dict() if private else None,
    }
