"""Empirical audit of one DP-SGD step through opacus's DPOptimizer (paper Algorithm 1).

A linear model, background examples with zero gradient on one coordinate, and
a canary whose gradient on it is clipped to C; full batch (sample rate 1). The
noisy gradient's coordinate, rescaled, is N(0, 1) on D and N(1/sigma, 1) on
D + canary. The lower bound on mu must stay below 1/sigma and reach 0.8 of it;
an optimizer whose noise is sqrt(2) too small must fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from privimage.privacy.audit import audit_dpsgd_step, make_dp_optimizer

TRIALS = 5_000
CONFIDENCE = 0.99


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def under_noised_optimizer(params, *, noise_multiplier, **kwargs):
    """DPOptimizer whose noise is sqrt(2) smaller than the sigma it is audited against."""
    return make_dp_optimizer(params, noise_multiplier=noise_multiplier / math.sqrt(2), **kwargs)


def test_dp_optimizer_step_meets_its_guarantee_and_the_audit_has_power():
    result = audit_dpsgd_step(
        noise_multiplier=1.0, max_grad_norm=0.5, num_trials=TRIALS,
        generator=torch.Generator().manual_seed(0), confidence=CONFIDENCE,
    )
    assert result.consistent, result
    assert result.power >= 0.8, result


def test_under_noised_optimizer_fails_the_audit():
    result = audit_dpsgd_step(
        noise_multiplier=1.0, max_grad_norm=0.5, num_trials=TRIALS,
        generator=torch.Generator().manual_seed(1), confidence=CONFIDENCE, make_optimizer=under_noised_optimizer,
    )
    assert not result.consistent, result
