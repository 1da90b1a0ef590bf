"""The semantic query's histogram and its Gaussian mechanism (paper Section 3.3, Theorem 3.1).

For each sensitive image the semantic query function names its top-k public
semantics; the histogram adds 1 to each of them in the row of the image's class
(one row for unlabelled data). Adding or removing one image changes exactly k
distinct cells of one row by 1, so the L2 sensitivity is sqrt(k). The noisy
histogram adds N(0, (z sqrt(k))^2) to every cell, which is (alpha, alpha/(2 z^2))-RDP
for every order alpha (Appendix D). The caller records the release in the run's
`PrivacyLedger` before it leaves the caller.
"""

from __future__ import annotations

import math

import numpy as np

from privimage.errors import PrivacyError
from privimage.privacy.noise import dp_noise_generator, gaussian_noise
from privimage.privacy.validation import check_k, check_positive


def semantic_histogram(
    topk_indices: np.ndarray,
    labels: np.ndarray | None,
    *,
    num_semantics: int,
    num_rows: int,
) -> np.ndarray:
    """Class-conditional histogram of the sensitive images' top-k semantics (exact, not private).

    Args:
        topk_indices: (N, k) int array; row i lists image i's k distinct semantics.
        labels: (N,) int array of the images' classes, or None for a single row.
        num_semantics: number of public semantics (columns).
        num_rows: number of rows (sensitive classes; 1 when ``labels`` is None).

    Returns:
        A float64 (num_rows, num_semantics) array of counts; one image adds exactly
        k ones in one row, which is what makes the sensitivity sqrt(k).
    """
    topk = np.asarray(topk_indices)
    if topk.ndim != 2 or not np.issubdtype(topk.dtype, np.integer):
        raise PrivacyError(f"topk_indices must be an (N, k) integer array, got {topk.dtype} with shape {topk.shape}")
    num_images, k = topk.shape
    if num_images == 0:
        raise PrivacyError("the sensitive dataset is empty (topk_indices has no rows)")
    check_k(k)
    if num_semantics < k or num_rows < 1:
        raise PrivacyError(f"need num_semantics >= k={k} and num_rows >= 1, got {num_semantics} and {num_rows}")
    if topk.min() < 0 or topk.max() >= num_semantics:
        raise PrivacyError(f"topk_indices must lie in [0, {num_semantics}), got [{topk.min()}, {topk.max()}]")
    # A repeated semantic would put 2 in one cell: L2 change 2 > sqrt(2), breaking Theorem 3.1.
    if k > 1 and (np.diff(np.sort(topk, axis=1), axis=1) == 0).any():
        raise PrivacyError("each image's top-k semantics must be distinct (a repeat breaks the sqrt(k) sensitivity)")
    if labels is None:
        if num_rows != 1:
            raise PrivacyError(f"without labels the histogram has one row, got num_rows={num_rows}")
        rows = np.zeros(num_images, dtype=np.int64)
    else:
        rows = np.asarray(labels)
        if rows.shape != (num_images,) or not np.issubdtype(rows.dtype, np.integer):
            raise PrivacyError(f"labels must be an ({num_images},) integer array, got {rows.dtype} {rows.shape}")
        if rows.min() < 0 or rows.max() >= num_rows:
            raise PrivacyError(f"labels must lie in [0, {num_rows}), got [{rows.min()}, {rows.max()}]")

    # One +1 per (image, semantic) in the image's row; bincount over flat cell ids.
    cells = rows.astype(np.int64)[:, None] * num_semantics + topk.astype(np.int64)
    counts = np.bincount(cells.ravel(), minlength=num_rows * num_semantics)
    return counts.reshape(num_rows, num_semantics).astype(np.float64)


def noisy_histogram(
    counts: np.ndarray,
    *,
    query_noise_multiplier: float,
    k: int,
    generator: np.random.Generator | None = None,
) -> np.ndarray:
    """The Gaussian mechanism of Theorem 3.1: counts + N(0, (z sqrt(k))^2) per cell, in float64.

    Args:
        counts: the exact histogram from `semantic_histogram` (any shape; every cell
            gets independent noise, so a stack of histograms gets independent draws).
        query_noise_multiplier: z; the noise std is z * sqrt(k), matched to the L2
            sensitivity sqrt(k), so the release is (alpha, alpha / (2 z^2))-RDP.
        k: semantics per image used to build ``counts``.
        generator: source of the noise; None (production) makes a fresh
            `dp_noise_generator`. Pass one only to audit the mechanism.

    Returns:
        The noisy float64 histogram, same shape as ``counts``.
    """
    z = check_positive(query_noise_multiplier, "query_noise_multiplier")
    k = check_k(k)
    counts = np.asarray(counts)
    if not np.issubdtype(counts.dtype, np.number) or not np.isfinite(counts).all():
        raise PrivacyError("counts must be a finite numeric array")
    if generator is None:
        generator = dp_noise_generator()
    elif not isinstance(generator, np.random.Generator):
        raise PrivacyError(f"generator must be a numpy Generator, got {type(generator).__name__}")
    noise = gaussian_noise(std=z * math.sqrt(k), shape=counts.shape, generator=generator)
    return counts.astype(np.float64) + noise
