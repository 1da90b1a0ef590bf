"""Selecting the pre-training subset from the noisy semantic distribution (paper Section 3.3, Table 8).

Each histogram row (a sensitive class) takes its N most frequent semantics,
skipping semantics an earlier row already took, so every selected public class
belongs to exactly one sensitive class. The public images of a row's semantics
are relabelled to that sensitive class: the pre-trained generator is then
conditioned on the sensitive labels it will be fine-tuned on. Selection only
post-processes the DP release, so it costs no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from privimage.config import Config, query_noise_multiplier
from privimage.data.base import ImageDataset
from privimage.errors import ConfigError, PrivImageError
from privimage.semantics.query import NoisySemanticDistribution


def semantics_per_row(*, selection_ratio: float, num_public_classes: int, num_rows: int) -> int:
    """N, the semantics each row selects, from the selection ratio (paper Table 8).

    CIFAR-10 against ImageNet's 1,000 classes: 1% -> N=1, 5% -> 5, 50% -> 50, i.e.
    N = ratio * (public classes) / (rows), rounded, at least 1.
    """
    if not (0.0 < selection_ratio <= 1.0) or math.isnan(selection_ratio):
        raise PrivImageError(f"selection_ratio must lie in (0, 1], got {selection_ratio}")
    per_row = max(1, round(selection_ratio * num_public_classes / num_rows))
    if per_row * num_rows > num_public_classes:
        raise PrivImageError(
            f"selecting {per_row} semantics for each of {num_rows} classes needs {per_row * num_rows} "
            f"public classes, but the public dataset has {num_public_classes}"
        )
    return per_row


@dataclass(frozen=True)
class QuerySettings:
    """What one semantic query uses (paper Section 3.3, Appendix A)."""

    query_noise_multiplier: float  # z: the noise std is z * sqrt(k); 0 for the non-private ablation
    k: int  # semantics queried per sensitive image
    semantics_per_class: int  # N: semantics each class selects
    k_follows_semantics_per_class: bool  # True when the config leaves k to N (k: null)


def query_settings(*, config: Config, num_public_classes: int, num_rows: int, private: bool = True) -> QuerySettings:
    """z, k and N of a config's semantic query, for a public set and a number of histogram rows.

    k follows N unless the config sets it (paper Appendix A: "we set k = N"), so a
    1% selection of 1,000 classes for 10 classes queries k = 1, and 5% queries k = 5.

    Args:
        config: the resolved config.
        num_public_classes: the public dataset's classes (the semantics to choose from).
        num_rows: histogram rows, the sensitive classes (1 for unlabelled data).
        private: False for the non-private ablation, whose exact histogram has no noise (z = 0).

    Returns:
        The `QuerySettings`.

    Raises:
        ConfigError: a k outside [1, public classes], or no z for the sensitive dataset.
        PrivImageError: a selection ratio the public classes cannot meet.
    """
    explicit_k = config.semantics.k
    # An explicit k is checked first: it needs only the public dataset's size.
    if explicit_k is not None and not 1 <= explicit_k <= num_public_classes:
        raise ConfigError(f"semantics.k must lie in [1, {num_public_classes}] (the public classes of "
                          f"'{config.data.public}'), got {explicit_k}")
    per_row = semantics_per_row(selection_ratio=config.semantics.selection_ratio,
                                num_public_classes=num_public_classes, num_rows=num_rows)
    return QuerySettings(
        query_noise_multiplier=query_noise_multiplier(config) if private else 0.0,
        k=per_row if explicit_k is None else explicit_k,
        semantics_per_class=per_row,
        k_follows_semantics_per_class=explicit_k is None,
    )


def select_semantics(noisy_histogram: np.ndarray, *, per_row: int) -> list[list[int]]:
    """Top-N semantics of each row, in row order, never reusing one an earlier row took."""
    num_rows, num_semantics = noisy_histogram.shape
    if per_row * num_rows > num_semantics:
        raise PrivImageError(f"cannot select {per_row} semantics for {num_rows} rows from {num_semantics}")
    taken = np.zeros(num_semantics, dtype=bool)
    selected = []
    for row in range(num_rows):
        order = np.argsort(-noisy_histogram[row], kind="stable")
        chosen = [int(s) for s in order if not taken[s]][:per_row]
        taken[chosen] = True
        selected.append(chosen)
    return selected


@dataclass(frozen=True)
class Selection:
    """The selected semantics per sensitive class and the relabelled public subset."""

    selected: dict[str, list[str]]
    dataset: ImageDataset
    selection_ratio_requested: float
    selection_ratio_achieved: float
    per_row: int


def build_selection(
    *, distribution: NoisySemanticDistribution, public: ImageDataset, selection_ratio: float
) -> Selection:
    """Pick semantics from the noisy histogram and gather their public images, relabelled."""
    if tuple(public.class_names) != distribution.semantic_names:
        raise PrivImageError(f"the public dataset '{public.name}' is not the one the semantic query function knows")
    num_rows = len(distribution.row_names)
    per_row = semantics_per_row(
        selection_ratio=selection_ratio, num_public_classes=public.num_classes, num_rows=num_rows
    )
    chosen = select_semantics(distribution.noisy_histogram, per_row=per_row)

    selected = {distribution.row_names[row]: [public.class_names[s] for s in sem] for row, sem in enumerate(chosen)}
    dataset = relabel_selected(public=public, selected=selected, class_names=distribution.row_names)
    return Selection(
        selected=selected,
        dataset=dataset,
        selection_ratio_requested=selection_ratio,
        selection_ratio_achieved=len(dataset) / max(len(public), 1),
        per_row=per_row,
    )


def relabel_selected(*, public: ImageDataset, selected: dict[str, list[str]],
                     class_names: Sequence[str]) -> ImageDataset:
    """The public images of the selected semantics, labelled by the sensitive class that chose them.

    Args:
        public: the public training split.
        selected: sensitive class name -> public class names.
        class_names: the sensitive classes in label order; label i goes to the images
            ``class_names[i]`` selected. Explicit because a mapping's order does not
            survive JSON (the cache writes keys sorted: "eight" before "zero").

    Returns:
        An `ImageDataset` whose class names are ``class_names``.
    """
    class_names = tuple(class_names)
    if sorted(selected) != sorted(class_names):
        raise PrivImageError(f"the selection names the classes {sorted(selected)}, "
                             f"but the sensitive classes are {list(class_names)}")
    index_of = {name: i for i, name in enumerate(public.class_names)}
    new_label = np.full(public.num_classes, -1, dtype=np.int64)
    for row, class_name in enumerate(class_names):
        for name in selected[class_name]:
            if name not in index_of:
                raise PrivImageError(f"selected semantic '{name}' is not a class of '{public.name}'")
            if new_label[index_of[name]] >= 0:
                raise PrivImageError(f"semantic '{name}' is selected by two classes")
            new_label[index_of[name]] = row
    keep = np.flatnonzero(new_label[public.labels] >= 0)
    return ImageDataset(
        name=f"{public.name}-selected",
        split=public.split,
        images=public.images[keep],
        labels=new_label[public.labels[keep]],
        class_names=class_names,
    )
