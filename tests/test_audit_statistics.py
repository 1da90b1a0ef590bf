"""Audit statistics: Clopper-Pearson intervals and the Gaussian-DP bound from a threshold test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privimage.errors import PrivacyError
from privimage.mechanism_audit import clopper_pearson, gaussian_dp_lower_bound, gaussian_dp_mu, threshold_audit


def test_clopper_pearson_known_values():
    # Closed forms at the edges: (alpha/2)^(1/n) and its mirror.
    low, high = clopper_pearson(successes=0, trials=10, confidence=0.95)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10))
    low, high = clopper_pearson(successes=10, trials=10, confidence=0.95)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 10))
    low, high = clopper_pearson(successes=5, trials=10, confidence=0.95)
    assert low == pytest.approx(0.18709, abs=1e-5) and high == pytest.approx(0.81291, abs=1e-5)


def test_clopper_pearson_covers_the_true_rate():
    rng = np.random.default_rng(0)
    successes = rng.binomial(200, 0.3, size=2000)
    covered = [
        lo <= 0.3 <= hi for lo, hi in (clopper_pearson(successes=int(s), trials=200, confidence=0.9) for s in successes)
    ]
    # Exact intervals are conservative: coverage at least the nominal 90%.
    assert np.mean(covered) >= 0.9


@pytest.mark.parametrize("kwargs", [dict(successes=3, trials=0), dict(successes=5, trials=4), dict(successes=1, trials=4, confidence=1.0)])
def test_clopper_pearson_refuses_bad_input(kwargs):
    with pytest.raises(PrivacyError):
        clopper_pearson(**kwargs)


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("threshold", [-0.3, 0.4, 1.1])
def test_gaussian_mu_from_exact_error_rates(mu, threshold):
    fpr = 1 - stats.norm.cdf(threshold)
    fnr = stats.norm.cdf(threshold - mu)
    assert gaussian_dp_mu(false_positive_rate=fpr, false_negative_rate=fnr) == pytest.approx(mu)


def test_lower_bound_sits_below_the_point_estimate_and_tightens_with_trials():
    bounds = []
    for n in (1_000, 100_000):
        fp, fn = round(0.3085 * n), round(0.3085 * n)
        bounds.append(gaussian_dp_lower_bound(false_positives=fp, negatives=n, false_negatives=fn, positives=n))
    assert bounds[0] < bounds[1] < gaussian_dp_mu(false_positive_rate=0.3085, false_negative_rate=0.3085)
    assert bounds[1] == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_threshold_audit_on_exact_gaussians(threshold):
    rng = np.random.default_rng(3)
    result = threshold_audit(rng.normal(0, 1, 100_000), rng.normal(1, 1, 100_000), mu_theory=1.0,
                             confidence=0.99, threshold=threshold)
    assert result.consistent and 0.9 <= result.power <= 1.0
    assert result.mu_estimate == pytest.approx(1.0, abs=0.05)
    # A mechanism leaking twice as much is caught.
    leaky = threshold_audit(rng.normal(0, 1, 100_000), rng.normal(2, 1, 100_000), mu_theory=1.0,
                            confidence=0.99, threshold=threshold)
    assert not leaky.consistent


def test_identical_worlds_certify_nothing():
    rng = np.random.default_rng(4)
    result = threshold_audit(rng.normal(size=20_000), rng.normal(size=20_000), mu_theory=1.0, confidence=0.95)
    assert result.mu_lower_bound < 0.05
