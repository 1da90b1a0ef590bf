"""How close a selected pre-training set is to the sensitive data (paper Fig. 6 right), for reporting only.

Two measures, both against the sensitive *test* split, so that no code path
reads the training split outside the privacy ledger:

- `sensitive_test_frequencies`: the test split's class counts, the sensitive
  semantic distribution that SDS (paper Eq. 5) compares a selection with;
- `sqf_frechet_distances`: the Fréchet distance between the semantic query
  function's penultimate features of a set of public classes and of the test
  split: does a selection look more like the sensitive images than the whole
  corpus does?

`SelectionSimilarity` measures both for the whole public set and for each
selection of one config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

from privimage.config import Config
from privimage.data import load_dataset
from privimage.data.base import ImageDataset
from privimage.data.registry import resolve_data_root
from privimage.evaluation.datasets import load_test_split
from privimage.evaluation.fid import feature_statistics
from privimage.semantics import dataset_frequencies, semantic_distribution_similarity
from privimage.semantics.stage import trained_query_function


def sensitive_test_frequencies(*, config: Config, data_root: Path | None = None) -> dict[str, float]:
    """{class name: count} of the sensitive test split: its semantic distribution for SDS (reporting only).

    The training split's class counts would be read outside any DP mechanism.

    Args:
        config: the resolved config (``data.sensitive``).
        data_root: folder of real datasets (default: `privimage.data.registry.resolve_data_root`).

    Returns:
        The class counts by name.
    """

    data_root = resolve_data_root(data_root)
    return dataset_frequencies(load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data))


def sqf_frechet_distances(*, config: Config, public: ImageDataset, data_root: Path,
                          progress: bool) -> Callable[[Iterable[str]], float]:
    """A function: public class names -> Fréchet distance (SQF features) of their images to the sensitive test split.

    Args:
        config: the resolved config (its semantic query function and sensitive dataset).
        public: the public training split whose classes are measured.
        data_root: folder of real datasets.
        progress: show progress bars while the query function trains (cached after).

    Returns:
        The distance function; the features of ``public`` are computed once.
    """


    query_function = trained_query_function(config, data_root=data_root, progress=progress)
    test = load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data)
    reference = feature_statistics(query_function.features(test))
    # Features of the whole corpus once; a subset is a mask over its classes.
    public_features = query_function.features(public)
    class_index = {name: index for index, name in enumerate(public.class_names)}

    def frechet_to_sensitive(class_names: Iterable[str]) -> float:
        mask = np.isin(public.labels, [class_index[name] for name in class_names])
        return float(calculate_frechet_distance(*feature_statistics(public_features[mask]), *reference))

    return frechet_to_sensitive


class SelectionSimilarity:
    """SDS and SQF Fréchet distance of public subsets to the sensitive test split, measured on one config.

    The sensitive frequencies, the public corpus and its features are read once;
    the whole public set (no query) is measured once too: it is the baseline
    every selection should beat.

    Args:
        config: the resolved config.
        data_root: folder of real datasets.
        progress: show progress bars.
    """

    def __init__(self, *, config: Config, data_root: Path, progress: bool) -> None:
        self._similarity = semantic_distribution_similarity
        self._sensitive_frequencies = sensitive_test_frequencies(config=config, data_root=data_root)
        self._public = load_dataset(config.data.public, "train", data_root=data_root, config=config.data)
        self._frechet_to_sensitive = sqf_frechet_distances(config=config, public=self._public, data_root=data_root,
                                                           progress=progress)
        self._public_sds = semantic_distribution_similarity(self._sensitive_frequencies,
                                                            dataset_frequencies(self._public))
        self._public_frechet = self._frechet_to_sensitive(self._public.class_names)

    def of_public(self) -> dict[str, float]:
        """``num_images``, ``sds`` and ``frechet_sqf`` of the whole public training set."""
        return {"num_images": len(self._public), "sds": self._public_sds, "frechet_sqf": self._public_frechet}

    def of_selection(self, *, selected: ImageDataset, summary: dict) -> dict[str, float]:
        """``num_images``, ``sds`` and ``frechet_sqf`` of a selection (its subset and its summary)."""
        chosen = [name for names in summary["selected"].values() for name in names]
        return {"num_images": len(selected),
                "sds": self._similarity(self._sensitive_frequencies, summary["selected_counts"]),
                "frechet_sqf": self._frechet_to_sensitive(chosen)}
