"""Empirical audit of the semantic query's Gaussian mechanism (paper Theorem 3.1).

Many releases on D and D + one canary image; the score is the canary's k cells,
minus their exact sum on D, over z*k: N(0, 1) without the canary and N(1/z, 1)
with it. The Clopper-Pearson lower bound on mu must not exceed 1/z (privacy
holds) and must reach 0.8 of it (the audit has power); a mechanism that adds
std z instead of z*sqrt(k) must fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from privimage.mechanism_audit import audit_noisy_histogram

TRIALS = 400_000
CONFIDENCE = 0.99


def noise_without_sqrt_k(counts, *, query_noise_multiplier, k, generator):
    """A mis-scaled mechanism: std z, ignoring the sqrt(k) sensitivity."""
    return counts + generator.normal(0.0, query_noise_multiplier, size=np.shape(counts))


@pytest.mark.parametrize(("z", "k", "seed"), [(1.0, 1, 0), (1.0, 4, 1), (2.0, 3, 2)])
def test_noisy_histogram_meets_its_guarantee_and_the_audit_has_power(z, k, seed):
    result = audit_noisy_histogram(
        query_noise_multiplier=z, k=k, num_trials=TRIALS, generator=np.random.default_rng(seed), confidence=CONFIDENCE
    )
    assert result.mu_theory == pytest.approx(1.0 / z)
    assert result.consistent, result
    assert result.power >= 0.8, result


def test_mis_scaled_noise_fails_the_audit():
    result = audit_noisy_histogram(
        query_noise_multiplier=1.0, k=4, num_trials=TRIALS, generator=np.random.default_rng(5),
        mechanism=noise_without_sqrt_k, confidence=CONFIDENCE,
    )
    # std z on a sensitivity-sqrt(4) query is 2/z-GDP: the bound clears 1/z.
    assert not result.consistent, result
    assert result.mu_lower_bound > 1.8
