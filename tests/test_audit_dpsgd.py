"""Canary audit of the DP-SGD step private runs take (paper Algorithm 1), and of four ways to break it.

`audit_dpsgd_release` runs the real `dp_sgd_step` (grouped per-sample
gradients over K rows, opacus clipping and chunk accumulation, one noise draw
from the project's unseeded generator) at sample rate 1 on D and on
D + canary, journals every released update and reads it back from disk. One
step is then mu-GDP with mu = (canary's clipped gradient norm) / (sigma C),
which is 1/sigma, the step's theory, when the canary's gradient averaged over
its K rows is at least C.

Canaries, chosen per check:

- "clipped" (averaged norm 2C, so clipped to C; exact mu = 1/sigma = 3.33 at
  sigma 0.3), for K = 1 and K = 4. Skipping clipping lets 2C through (mu
  doubles, the bound exceeds the exact mu); noise std sigma C / sqrt(2) raises
  mu by sqrt(2) (exceeds too); noise per physical chunk (two chunks here)
  lowers mu by sqrt(2), which the power check (>= 0.8 of the exact mu) catches.
  Summing the K draws would not show here: 4 x 2C is clipped to C as well.
- "below C" (averaged norm C/2, K = 4; exact mu = 0.5/sigma = 3.33 at sigma
  0.15): the only kind of canary where summing the K draws instead of averaging
  them changes the release (4 x C/2 = 2C, clipped to C: mu doubles). Clipping
  never acts on it, so it cannot catch a skipped clipping.

Statistics: 1500 trials per world, threshold fixed in advance at mu/2,
confidence 0.999. For a correct step the exact binomial error counts give a
chance of about 2e-6 per audit that the bound exceeds mu (1.2e-6) or falls
below 0.8 mu (0.8e-6), so about 6e-6 for the three passing audits together
(one false failure in ~160,000 runs of this file); each mutation escapes its
audit with probability below 1e-12. The DP noise is never seeded (DESIGN.md):
only the background rows come from a seeded generator.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _generate_noise

from privimage.dp import grouped
from privimage.mechanism_audit import audit_dpsgd_release
from privimage.training import dpsgd

TRIALS = 1_500
CONFIDENCE = 0.999
MIN_POWER = 0.8
CLIP = 1.0
# (K, canary's averaged gradient norm, sigma): both canaries give an exact mu of 10/3.
CLIPPED_K1 = (1, 2.0 * CLIP, 0.3)
CLIPPED_K4 = (4, 2.0 * CLIP, 0.3)
BELOW_CLIP_K4 = (4, 0.5 * CLIP, 0.15)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def journal_dir(tmp_path):
    """Where the audit journals its releases: tmpfs when there is one (three fsyncs per step cost nothing there)."""
    shared_memory = Path("/dev/shm")
    if shared_memory.is_dir() and os.access(shared_memory, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shared_memory) as folder:
            yield Path(folder)
    else:
        yield tmp_path


def run_audit(setting, workdir):
    multiplicity, canary_norm, sigma = setting
    return audit_dpsgd_release(
        noise_multiplier=sigma, canary_gradient_norm=canary_norm, noise_multiplicity=multiplicity,
        num_trials=TRIALS, workdir=workdir, data_generator=torch.Generator().manual_seed(0),
        max_grad_norm=CLIP, confidence=CONFIDENCE,
    )


@pytest.mark.parametrize("setting", [CLIPPED_K1, CLIPPED_K4, BELOW_CLIP_K4], ids=["K1-clipped", "K4-clipped",
                                                                                   "K4-below-C"])
def test_released_step_meets_its_guarantee_and_the_audit_has_power(setting, journal_dir):
    multiplicity, canary_norm, sigma = setting
    result = run_audit(setting, journal_dir)
    # The exact mu of this canary, never above the step's 1/sigma.
    assert result.mu_theory == pytest.approx(min(canary_norm, CLIP) / (sigma * CLIP))
    assert result.mu_theory <= 1.0 / sigma + 1e-12
    assert result.consistent, result
    assert result.power >= MIN_POWER, result
    # Every trial's release went through the journal on disk.
    for world in ("without-canary", "with-canary"):
        assert len(list((journal_dir / world / "dpsgd_updates").glob("step-*.pt"))) == TRIALS


def test_noise_std_sigma_c_over_sqrt2_fails_the_audit(journal_dir, monkeypatch):
    real_make = dpsgd.make_dp_optimizer

    def under_noised(*, noise_multiplier, **kwargs):
        return real_make(noise_multiplier=noise_multiplier / math.sqrt(2), **kwargs)

    monkeypatch.setattr(dpsgd, "make_dp_optimizer", under_noised)
    result = run_audit(CLIPPED_K4, journal_dir)
    assert not result.consistent, result


def test_skipped_clipping_fails_the_audit(journal_dir, monkeypatch):
    real_clip = DPOptimizer.clip_and_accumulate

    def unclipped(self):
        # An infinite bound makes every per-sample clip factor 1 (the noise is drawn later, from the real C).
        bound, self.max_grad_norm = self.max_grad_norm, math.inf
        try:
            real_clip(self)
        finally:
            self.max_grad_norm = bound

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", unclipped)
    result = run_audit(CLIPPED_K4, journal_dir)
    assert not result.consistent, result


def test_k_draws_summed_instead_of_averaged_fails_the_audit(journal_dir, monkeypatch):
    real_rule = grouped._layer_gradients

    def summed(module, layer_input, output_gradient, examples, wanted):
        # Each example's gradient becomes the sum over its K rows, not their mean (before clipping).
        draws = layer_input.shape[0] // examples
        gradients = real_rule(module, layer_input, output_gradient, examples, wanted)
        return {name: gradient * draws for name, gradient in gradients.items()}

    monkeypatch.setattr(grouped, "_layer_gradients", summed)
    result = run_audit(BELOW_CLIP_K4, journal_dir)
    assert not result.consistent, result


def test_noise_per_physical_chunk_fails_the_audit(journal_dir, monkeypatch):
    real_skip = DPOptimizer._check_skip_next_step

    def noise_every_chunk(self, pop_next=True):
        skip = real_skip(self, pop_next)
        if skip and pop_next:
            # A chunk that is only accumulated gets a noise draw of its own; the last chunk its usual one.
            for parameter in self.params:
                parameter.summed_grad = parameter.summed_grad + _generate_noise(
                    std=self.noise_multiplier * self.max_grad_norm, reference=parameter.summed_grad,
                    generator=self.generator, secure_mode=self.secure_mode,
                )
        return skip

    monkeypatch.setattr(DPOptimizer, "_check_skip_next_step", noise_every_chunk)
    result = run_audit(CLIPPED_K4, journal_dir)
    assert result.consistent, result
    assert result.power < MIN_POWER, result


def test_audit_refuses_a_zero_noise_multiplicity(journal_dir):
    from privimage.errors import PrivacyError

    with pytest.raises(PrivacyError, match="noise_multiplicity"):
        run_audit((0, 2.0, 0.3), journal_dir)
