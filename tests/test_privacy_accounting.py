"""Accounting and calibration: reference vectors, the query's cost, and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from privimage.errors import PrivacyError
from privimage.privacy import calibrate_noise_multiplier, composition_epsilon, compute_epsilon, query_rdp

DELTA = 1e-5


def exact_gaussian_epsilon(*, noise_multiplier: float, delta: float) -> float:
    """Tight epsilon of one Gaussian mechanism (Balle & Wang 2018, Thm. 8), independent of opacus."""
    mu = 1.0 / noise_multiplier

    def delta_at(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta

    return optimize.brentq(delta_at, 0.0, 100.0)


# Reference vectors (delta 1e-5, add/remove, opacus's default orders).
@pytest.mark.parametrize(
    ("sigma", "q", "steps", "expected"),
    [(1.5, 0.04, 2250, 7.3291), (1.3, 0.0025, 6000, 0.7242)],
)
def test_rdp_reference_vectors(sigma, q, steps, expected):
    epsilon = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=DELTA)
    assert epsilon == pytest.approx(expected, abs=1e-3)


def test_prv_reference_vector():
    epsilon = compute_epsilon(noise_multiplier=1.5, sample_rate=0.04, steps=2249, delta=DELTA, accountant="prv")
    assert epsilon == pytest.approx(6.7774, abs=0.01)


def test_query_composes_onto_dpsgd():
    epsilon = compute_epsilon(
        noise_multiplier=1.5, sample_rate=0.04, steps=2250, delta=DELTA, query_noise_multiplier=5.0, k=4
    )
    assert epsilon == pytest.approx(7.4073, abs=2e-3)


def test_query_cost_does_not_grow_with_k():
    # Noise std z*sqrt(k) against sensitivity sqrt(k): k cancels (paper Theorem 3.1).
    costs = {
        k: compute_epsilon(noise_multiplier=1.5, sample_rate=0.04, steps=100, delta=DELTA, query_noise_multiplier=2.0, k=k)
        for k in (1, 3, 10)
    }
    assert costs[1] == costs[3] == costs[10]
    np.testing.assert_allclose(query_rdp(query_noise_multiplier=2.0, orders=[2.0, 10.0]), [0.25, 1.25])


def test_query_alone_brackets_the_exact_gaussian_epsilon():
    # RDP is an upper bound on the tight epsilon; PRV is within its error of it.
    exact = exact_gaussian_epsilon(noise_multiplier=1.0, delta=DELTA)
    rdp = composition_epsilon(dpsgd_runs=[], query_noise_multipliers=[1.0], delta=DELTA)
    prv = composition_epsilon(dpsgd_runs=[], query_noise_multipliers=[1.0], delta=DELTA, accountant="prv")
    assert exact <= rdp < exact + 0.6
    assert exact - 1e-9 <= prv <= exact + 0.021


def test_a_large_query_noise_is_bounded_at_the_grid_edge_without_a_warning(recwarn):
    # z = 50 alone: the best of opacus's default orders is the largest (63), so the bound is
    # conservative, not wrong; opacus's "largest alpha" warning is expected there and not shown.
    z, largest = 50.0, 63.0
    rdp = composition_epsilon(dpsgd_runs=[], query_noise_multipliers=[z], delta=DELTA)
    at_largest = (largest / (2 * z * z) + (math.log(1 / DELTA) - math.log(largest)) / (largest - 1)
                  + math.log((largest - 1) / largest))
    assert rdp == pytest.approx(at_largest, rel=1e-9)
    assert exact_gaussian_epsilon(noise_multiplier=z, delta=DELTA) < rdp
    assert not [w for w in recwarn if "largest alpha" in str(w.message)]


def test_prv_cross_checks_rdp_with_a_query():
    kwargs = dict(noise_multiplier=1.5, sample_rate=0.04, steps=2249, delta=DELTA, query_noise_multiplier=5.0)
    rdp = compute_epsilon(**kwargs)
    prv = compute_epsilon(**kwargs, accountant="prv")
    without_query = compute_epsilon(**{**kwargs, "query_noise_multiplier": None}, accountant="prv")
    # PRV is tighter than RDP, and the query adds a little but not nothing.
    assert without_query < prv < rdp
    assert prv - without_query == pytest.approx(0.074, abs=0.03)


def test_nothing_recorded_spends_nothing():
    assert compute_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=DELTA) == 0.0
    assert composition_epsilon(dpsgd_runs=[], query_noise_multipliers=[], delta=DELTA, accountant="prv") == 0.0


@pytest.mark.parametrize(
    ("target", "q", "steps", "z"),
    [(1.0, 0.04, 2250, None), (1.0, 0.04, 2250, 50.0), (5.0, 0.01, 500, 5.0), (10.0, 1.0, 3, 2.0)],
)
def test_calibration_meets_target_without_exceeding(target, q, steps, z):
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps, query_noise_multiplier=z, k=3
    )
    spent = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=DELTA, query_noise_multiplier=z)
    assert 0.99 * target <= spent <= target
    # A slightly smaller sigma would exceed the target: the result is not needlessly noisy.
    assert compute_epsilon(noise_multiplier=0.98 * sigma, sample_rate=q, steps=steps, delta=DELTA,
                           query_noise_multiplier=z) > 0.99 * target


def test_calibration_recovers_a_known_sigma():
    target = compute_epsilon(noise_multiplier=1.5, sample_rate=0.04, steps=2250, delta=DELTA)
    sigma = calibrate_noise_multiplier(target_epsilon=target, delta=DELTA, sample_rate=0.04, steps=2250)
    assert sigma == pytest.approx(1.5, rel=2e-3)


def test_calibration_refuses_when_the_query_alone_exceeds_the_target():
    with pytest.raises(PrivacyError, match="query alone"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=0.04, steps=100,
                                   query_noise_multiplier=0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": -1e-5}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"delta": float("nan")}, "delta"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": float("inf")}, "noise_multiplier"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.01}, "sample_rate"),
        ({"steps": -1}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"query_noise_multiplier": 0.0}, "query_noise_multiplier"),
        ({"query_noise_multiplier": float("nan")}, "query_noise_multiplier"),
        ({"k": 0}, "k"),
        ({"accountant": "moments"}, "accountant"),
    ],
)
def test_invalid_parameters_are_privacy_errors(overrides, message):
    kwargs = dict(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=DELTA, query_noise_multiplier=5.0, k=1)
    kwargs.update(overrides)
    with pytest.raises(PrivacyError, match=message):
        compute_epsilon(**kwargs)


@pytest.mark.parametrize(
    "overrides", [{"target_epsilon": 0.0}, {"target_epsilon": -1.0}, {"target_epsilon": float("inf")}, {"steps": 0}]
)
def test_invalid_calibration_inputs_are_privacy_errors(overrides):
    kwargs = dict(target_epsilon=1.0, delta=DELTA, sample_rate=0.1, steps=10)
    kwargs.update(overrides)
    with pytest.raises(PrivacyError):
        calibrate_noise_multiplier(**kwargs)


def test_privacy_error_is_a_value_error():
    with pytest.raises(ValueError):
        compute_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=0.0)
