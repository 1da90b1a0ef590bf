"""Semantic distribution similarity (SDS, paper Eq. 5).

Each dataset is described by its semantics (class names) and their frequencies.
With E(s) the GloVe vector of semantic s (mean of its in-vocabulary words) and
p_A(s) the relative frequency of s in dataset A,

    SDS(A, B) = sum_{s in A} sum_{t in B} p_A(s) * p_B(t) * cos(E(s), E(t)),

the frequency-weighted mean cosine similarity between the two semantic
vocabularies: higher means closer semantic distributions. Semantics with no word
in the vocabulary are dropped (and reported), and the frequencies renormalised.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from privimage.data import class_name_vector, glove_vectors
from privimage.data.base import refuse_sensitive
from privimage.errors import PrivImageError


def semantic_vectors(frequencies: Mapping[str, float], vectors) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Unit GloVe vectors and normalised weights of the semantics that have a vector."""

    rows, weights, missing = [], [], []
    for name, frequency in frequencies.items():
        if frequency <= 0:
            continue
        vector = class_name_vector(name, vectors)
        if vector is None:
            missing.append(name)
            continue
        rows.append(vector / np.linalg.norm(vector))
        weights.append(float(frequency))
    if not rows:
        raise PrivImageError("no semantic of the dataset has a word vector")
    weights_array = np.asarray(weights, dtype=np.float64)
    return np.asarray(rows, dtype=np.float64), weights_array / weights_array.sum(), missing


def semantic_distribution_similarity(
    frequencies_a: Mapping[str, float], frequencies_b: Mapping[str, float], *, vectors=None
) -> float:
    """SDS of two datasets given as {semantic name: frequency} (paper Eq. 5).

    Args:
        frequencies_a: semantic -> count (or weight) in dataset A.
        frequencies_b: the same for dataset B.
        vectors: gensim KeyedVectors; default: the embedded GloVe 6B 50d.

    Returns:
        The SDS, in [-1, 1].
    """

    vectors = vectors if vectors is not None else glove_vectors()
    unit_a, weight_a, _ = semantic_vectors(frequencies_a, vectors)
    unit_b, weight_b, _ = semantic_vectors(frequencies_b, vectors)
    return float(weight_a @ (unit_a @ unit_b.T) @ weight_b)


def dataset_frequencies(dataset) -> dict[str, float]:
    """{class name: number of images} of a public ImageDataset (its label counts are data)."""

    refuse_sensitive(dataset, "SDS frequencies")
    counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
    return {name: float(count) for name, count in zip(dataset.class_names, counts) if count > 0}
