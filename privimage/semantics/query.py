"""The private semantic distribution query (paper Section 3.3, Theorem 3.1, Appendix D).

For each sensitive image the SQF gives its top-k public semantics; counting
them per sensitive class gives a class-conditional histogram (one row for
unlabelled data). Adding or removing one image changes exactly k cells of one
row by 1, so the L2 sensitivity is sqrt(k). Gaussian noise of std z*sqrt(k)
makes the release (alpha, alpha / (2 z^2))-RDP. The noise comes from a generator
no experiment seed controls, and the ledger records the query before the noisy
histogram leaves this function. The exact histogram is never returned or saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privimage.data.base import ImageDataset
from privimage.errors import PrivacyError
from privimage.privacy import PrivacyLedger, dp_noise_generator, noisy_histogram, semantic_histogram
from privimage.privacy.noise import noise_generator_name
from privimage.semantics.query_function import QueryFunction


@dataclass(frozen=True)
class NoisySemanticDistribution:
    """The DP release: a noisy (rows x public semantics) histogram and what produced it."""

    noisy_histogram: np.ndarray
    row_names: tuple[str, ...]
    semantic_names: tuple[str, ...]
    k: int
    query_noise_multiplier: float
    generator: str
    sensitive_hash: str


def query_semantic_distribution(
    *,
    query_function: QueryFunction,
    sensitive: ImageDataset,
    k: int,
    query_noise_multiplier: float,
    ledger: PrivacyLedger,
    class_conditional: bool = True,
    secure_mode: bool = False,
) -> NoisySemanticDistribution:
    """Query the sensitive dataset's semantic distribution under DP (paper Algorithm 2, lines 3-7).

    Args:
        query_function: the SQF, trained on public data only.
        sensitive: the sensitive training split.
        k: semantics taken per sensitive image (sensitivity sqrt(k)).
        query_noise_multiplier: z; the noise std is z * sqrt(k).
        ledger: the run's privacy ledger; the query is recorded in it.
        class_conditional: one histogram row per sensitive class (else a single row).
        secure_mode: draw the noise from a cryptographically seeded generator.

    Returns:
        The `NoisySemanticDistribution`.
    """
    num_semantics = len(query_function.public_class_names)
    if len(sensitive) == 0:
        raise PrivacyError(f"the sensitive dataset '{sensitive.name}/{sensitive.split}' is empty")
    if not 1 <= k <= num_semantics:
        raise PrivacyError(f"k must lie in [1, {num_semantics}] (the public semantics), got {k}")
    if ledger.dataset_hash != sensitive.content_hash():
        raise PrivacyError("the ledger belongs to another sensitive dataset (hash mismatch)")

    # Top-k semantics of every sensitive image (paper Section 3.2).
    probabilities = query_function.probabilities(sensitive)
    top_k = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    labels = sensitive.labels if class_conditional else None
    num_rows = sensitive.num_classes if class_conditional else 1
    counts = semantic_histogram(top_k, labels, num_semantics=num_semantics, num_rows=num_rows)

    # Record the mechanism first, then release: the ledger can never miss a release.
    generator_name = noise_generator_name(secure_mode=secure_mode)
    ledger.record_semantic_query(query_noise_multiplier=query_noise_multiplier, k=k, generator=generator_name)
    noisy = noisy_histogram(
        counts, query_noise_multiplier=query_noise_multiplier, k=k, generator=dp_noise_generator(secure=secure_mode)
    )
    del counts
    row_names = sensitive.class_names if class_conditional else ("all",)
    return NoisySemanticDistribution(
        noisy_histogram=noisy,
        row_names=tuple(row_names),
        semantic_names=tuple(query_function.public_class_names),
        k=k,
        query_noise_multiplier=query_noise_multiplier,
        generator=generator_name,
        sensitive_hash=sensitive.content_hash(),
    )


def exact_semantic_distribution(
    *, query_function: QueryFunction, sensitive: ImageDataset, k: int, class_conditional: bool = True
) -> NoisySemanticDistribution:
    """The histogram WITHOUT noise, for the NonPrivD/NonPrivG ablation (paper Section 6.1).

    This reads the sensitive data with no privacy protection at all. It exists
    only to measure what DP costs; results built on it carry no guarantee and
    their run folders say so (``generator`` is ``"none (non-private)"``).
    """
    num_semantics = len(query_function.public_class_names)
    if not 1 <= k <= num_semantics:
        raise PrivacyError(f"k must lie in [1, {num_semantics}] (the public semantics), got {k}")
    probabilities = query_function.probabilities(sensitive)
    top_k = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    labels = sensitive.labels if class_conditional else None
    num_rows = sensitive.num_classes if class_conditional else 1
    counts = semantic_histogram(top_k, labels, num_semantics=num_semantics, num_rows=num_rows)
    return NoisySemanticDistribution(
        noisy_histogram=counts,
        row_names=tuple(sensitive.class_names if class_conditional else ("all",)),
        semantic_names=tuple(query_function.public_class_names),
        k=k,
        query_noise_multiplier=0.0,
        generator="none (non-private)",
        sensitive_hash=sensitive.content_hash(),
    )
