"""Empirical privacy audits: measure the distinguishability a mechanism actually gives.

Both mechanisms here are Gaussian, so under add/remove-one they are mu-GDP
(Dong, Roth & Su 2019) with mu = sensitivity / noise std: mu = 1/z for the
semantic query (sensitivity sqrt(k), std z sqrt(k); paper Theorem 3.1) and
mu = 1/sigma for one DP-SGD step without subsampling (a canary whose clipped
gradient is shorter than C gets the smaller mu = its norm / (sigma C)). An
audit runs the real mechanism many times on neighbouring datasets D and
D + canary, thresholds a score, and turns Clopper-Pearson bounds on the test's
error rates into a lower confidence bound on mu (any threshold test against a
mu-GDP mechanism has FNR >= Phi(Phi^-1(1 - FPR) - mu)). A correct mechanism
never lets the bound exceed the theoretical mu; a powerful audit brings it
close to it.

`audit_noisy_histogram` audits `noisy_histogram`; `audit_dpsgd_release` audits
the DP-SGD step private runs take (`privimage.training.dpsgd.dp_sgd_step`, its
optimizer and journal), reading each released update back from disk.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import stats

from privimage.errors import PrivacyError
from privimage.privacy.mechanisms import noisy_histogram, semantic_histogram
from privimage.privacy.validation import check_k, check_positive
from privimage.training import dpsgd
from privimage.training.journal import JOURNAL_NAME, UPDATES_DIR, DPStepJournal, load_update, read_journal_entries

# Candidate thresholds: quantiles of the pooled selection-half scores. The
# central range avoids the tails, where few errors make the bound noisy and
# picking the best of many noisy bounds would over-fit the selection half.
_THRESHOLD_QUANTILES = np.linspace(0.05, 0.95, 37)


def clopper_pearson(*, successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for a binomial proportion.

    Args:
        successes: observed successes.
        trials: number of trials (> 0).
        confidence: coverage of the interval, e.g. 0.95.

    Returns:
        (lower, upper) bounds on the success probability.
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise PrivacyError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    if not 0.0 < confidence < 1.0:
        raise PrivacyError(f"confidence must lie in (0, 1), got {confidence!r}")
    alpha = 1.0 - confidence
    lower = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return lower, upper


def gaussian_dp_mu(*, false_positive_rate: float, false_negative_rate: float) -> float:
    """The mu of the Gaussian trade-off curve through (FPR, FNR): Phi^-1(1 - FPR) - Phi^-1(FNR)."""
    return float(stats.norm.ppf(1.0 - false_positive_rate) - stats.norm.ppf(false_negative_rate))


def gaussian_dp_lower_bound(
    *, false_positives: int, negatives: int, false_negatives: int, positives: int, confidence: float = 0.95
) -> float:
    """Lower confidence bound on mu from one threshold test's error counts.

    Each error rate is replaced by its Clopper-Pearson upper bound at
    (1 + confidence) / 2, so by a union bound the result holds with probability
    >= ``confidence``.

    Args:
        false_positives: trials on D that the test called "D + canary".
        negatives: trials on D.
        false_negatives: trials on D + canary that the test called "D".
        positives: trials on D + canary.
        confidence: joint confidence of the bound.

    Returns:
        A lower bound on mu (may be negative when the test has no power).
    """
    side = (1.0 + confidence) / 2.0
    _, fpr_upper = clopper_pearson(successes=false_positives, trials=negatives, confidence=2 * side - 1)
    _, fnr_upper = clopper_pearson(successes=false_negatives, trials=positives, confidence=2 * side - 1)
    return gaussian_dp_mu(false_positive_rate=fpr_upper, false_negative_rate=fnr_upper)


@dataclass(frozen=True)
class AuditResult:
    """What an audit measured, next to what the theory allows."""

    mu_theory: float
    mu_lower_bound: float
    mu_estimate: float
    threshold: float
    false_positive_rate: float
    false_negative_rate: float
    trials_per_world: int
    confidence: float

    @property
    def consistent(self) -> bool:
        """True when the measured lower bound does not exceed the theoretical mu."""
        return self.mu_lower_bound <= self.mu_theory

    @property
    def power(self) -> float:
        """Lower bound as a fraction of the theoretical mu (how much of it the audit certifies)."""
        return self.mu_lower_bound / self.mu_theory

    def to_dict(self) -> dict:
        return {**asdict(self), "consistent": self.consistent, "power": self.power}


def threshold_audit(
    scores_without: np.ndarray,
    scores_with: np.ndarray,
    *,
    mu_theory: float,
    confidence: float = 0.95,
    threshold: float | None = None,
) -> AuditResult:
    """Threshold test "score > t means the canary is in" and its mu lower bound.

    Args:
        scores_without: scores of trials on D.
        scores_with: scores of trials on D + canary (larger means "canary in").
        mu_theory: the mechanism's claimed mu, reported beside the measurement.
        confidence: confidence of the lower bound.
        threshold: t fixed before seeing the scores; then every score counts
            towards the bound. None: the first half of each array picks t (the
            best bound there) and only the unseen second half gives the bound.

    Returns:
        An `AuditResult`.
    """
    without = np.asarray(scores_without, dtype=np.float64).ravel()
    with_ = np.asarray(scores_with, dtype=np.float64).ravel()
    if min(len(without), len(with_)) < 4:
        raise PrivacyError("an audit needs at least 4 trials per world")
    if threshold is not None:
        return _audit_at(without, with_, float(threshold), mu_theory=mu_theory, confidence=confidence)
    half_without, half_with = len(without) // 2, len(with_) // 2
    select_without, eval_without = np.sort(without[:half_without]), without[half_without:]
    select_with, eval_with = np.sort(with_[:half_with]), with_[half_with:]

    # Pick the threshold on the selection half only, so the bound below stays valid.
    candidates = np.quantile(np.concatenate([select_without, select_with]), _THRESHOLD_QUANTILES)
    best_threshold, best_bound = float(candidates[0]), -math.inf
    for threshold in candidates:
        false_positives = len(select_without) - np.searchsorted(select_without, threshold, side="right")
        false_negatives = np.searchsorted(select_with, threshold, side="right")
        bound = gaussian_dp_lower_bound(
            false_positives=int(false_positives), negatives=len(select_without),
            false_negatives=int(false_negatives), positives=len(select_with), confidence=confidence,
        )
        if bound > best_bound:
            best_threshold, best_bound = float(threshold), bound

    return _audit_at(eval_without, eval_with, best_threshold, mu_theory=mu_theory, confidence=confidence)


def _audit_at(
    without: np.ndarray, with_: np.ndarray, threshold: float, *, mu_theory: float, confidence: float
) -> AuditResult:
    """Error counts of the test at ``threshold`` and the resulting bound."""
    false_positives = int((without > threshold).sum())
    false_negatives = int((with_ <= threshold).sum())
    fpr, fnr = false_positives / len(without), false_negatives / len(with_)
    # Clip the point estimate's rates away from 0 so a perfect test reports a large, finite mu.
    rate_floor = 0.5 / max(len(without), len(with_))
    return AuditResult(
        mu_theory=float(mu_theory),
        mu_lower_bound=gaussian_dp_lower_bound(
            false_positives=false_positives, negatives=len(without),
            false_negatives=false_negatives, positives=len(with_), confidence=confidence,
        ),
        mu_estimate=gaussian_dp_mu(false_positive_rate=max(fpr, rate_floor), false_negative_rate=max(fnr, rate_floor)),
        threshold=threshold,
        false_positive_rate=fpr,
        false_negative_rate=fnr,
        trials_per_world=min(len(without), len(with_)),
        confidence=confidence,
    )


def audit_noisy_histogram(
    *,
    query_noise_multiplier: float,
    k: int,
    num_trials: int,
    generator: np.random.Generator,
    mechanism: Callable[..., np.ndarray] = noisy_histogram,
    num_images: int = 64,
    num_rows: int = 3,
    num_semantics: int = 16,
    confidence: float = 0.95,
    batch_size: int = 50_000,
) -> AuditResult:
    """Audit the semantic query's Gaussian mechanism (paper Theorem 3.1) on a random dataset.

    The score of one release is the canary's k cells summed, minus their exact
    sum on D, divided by z * k: it is N(0, 1) on D and N(1/z, 1) on D + canary,
    so the optimal threshold test attains exactly the theoretical mu = 1/z.

    Args:
        query_noise_multiplier: z the mechanism claims.
        k: semantics per image.
        num_trials: releases per world (D and D + canary).
        generator: drives the audit's dataset and is passed to ``mechanism``
            (an explicit generator; production noise is never seeded).
        mechanism: the function under audit, with `noisy_histogram`'s signature.
        num_images, num_rows, num_semantics: size of the random dataset D.
        confidence: confidence of the lower bound.
        batch_size: releases drawn per call, to bound memory.

    Returns:
        An `AuditResult` with mu_theory = 1/z.
    """
    z = check_positive(query_noise_multiplier, "query_noise_multiplier")
    k = check_k(k)
    # A random dataset D and a canary: each image's k distinct semantics in its class row.
    topk = np.argsort(generator.random((num_images + 1, num_semantics)), axis=1)[:, :k]
    labels = generator.integers(0, num_rows, size=num_images + 1)
    hist_without = semantic_histogram(topk[:-1], labels[:-1], num_semantics=num_semantics, num_rows=num_rows)
    hist_with = semantic_histogram(topk, labels, num_semantics=num_semantics, num_rows=num_rows)
    canary_row, canary_cells = int(labels[-1]), topk[-1]
    exact_sum = hist_without[canary_row, canary_cells].sum()

    def scores(hist: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, num_trials, batch_size):
            count = min(batch_size, num_trials - start)
            stack = np.broadcast_to(hist, (count,) + hist.shape)
            released = mechanism(stack, query_noise_multiplier=z, k=k, generator=generator)
            out.append((released[:, canary_row, canary_cells].sum(axis=1) - exact_sum) / (z * k))
        return np.concatenate(out)

    # Threshold fixed in advance at the midpoint of the claimed N(0, 1) and N(1/z, 1).
    return threshold_audit(
        scores(hist_without), scores(hist_with), mu_theory=1.0 / z, confidence=confidence, threshold=0.5 / z
    )


def audit_dpsgd_release(
    *,
    noise_multiplier: float,
    canary_gradient_norm: float,
    noise_multiplicity: int,
    num_trials: int,
    workdir: Path,
    data_generator,
    max_grad_norm: float = 1.0,
    num_background: int = 4,
    num_features: int = 6,
    physical_batch_size: int = 3,
    confidence: float = 0.999,
) -> AuditResult:
    """Canary audit of one logical DP-SGD step as private runs take it (paper Algorithm 1).

    Each trial is one real `privimage.training.dpsgd.dp_sgd_step` with the
    project's optimizer (`privimage.training.dpsgd.make_dp_optimizer`, fresh
    OS-entropy noise), the per-sample gradients of `compute_per_sample_gradients`
    (grouped over K draws), the Poisson sampler at rate q = 1 (every example is
    in the batch), several physical chunks and one released update, which goes
    through the run journal (`DPStepJournal.record_step`) before it is applied.
    The score is read back from the update file on disk.

    The model is a bias-free ``nn.Linear`` with a per-example loss linear in its
    output (the mean over the example's K rows, as the diffusion loss averages
    its draws), so an example's gradient is the mean of its rows and does not
    depend on the weights the trials keep updating. Background rows are zero on
    the first input coordinate u; the canary's K rows lie along u with distinct
    sizes whose mean is ``canary_gradient_norm``. The released update's u
    coordinate, times the expected batch size over sigma * C, is then N(0, 1) on
    D and N(mu, 1) on D + canary, with mu = min(canary_gradient_norm, C) / (sigma * C),
    at most the step's 1/sigma (q = 1: no amplification by subsampling).

    Args:
        noise_multiplier: sigma the step claims.
        canary_gradient_norm: norm of the canary's gradient averaged over its K
            draws, before clipping (above C: clipped to C, so mu = 1/sigma).
        noise_multiplicity: K, rows (diffusion noise draws) per example.
        num_trials: steps per world.
        workdir: an empty folder for the two worlds' journals and released updates.
        data_generator: ``torch.Generator`` for the background rows only; the DP
            noise comes from the optimizer's own unseeded generator.
        max_grad_norm: clipping norm C.
        num_background: examples in D, also the expected batch size.
        num_features: inputs of the linear model (u is the first).
        physical_batch_size: largest chunk run at once (smaller than the batch, so
            the step accumulates chunks before its one noise draw).
        confidence: confidence of the lower bound.

    Returns:
        An `AuditResult` whose mu_theory is this canary's exact mu.
    """

    sigma = check_positive(noise_multiplier, "noise_multiplier")
    clip = check_positive(max_grad_norm, "max_grad_norm")
    norm = check_positive(canary_gradient_norm, "canary_gradient_norm")
    multiplicity = int(noise_multiplicity)
    if multiplicity < 1:
        raise PrivacyError(f"noise_multiplicity must be >= 1, got {noise_multiplicity!r}")
    background, canary = _canary_rows(norm=norm, clip=clip, multiplicity=multiplicity, num_background=num_background,
                                      num_features=num_features, data_generator=data_generator)

    def scores(rows: torch.Tensor, world: str) -> np.ndarray:
        released = _released_canary_coordinate(
            rows, workdir=Path(workdir) / world, world=world, sigma=sigma, clip=clip, num_trials=num_trials,
            expected_batch_size=num_background, physical_batch_size=physical_batch_size)
        return released * num_background / (sigma * clip)

    mu_exact = min(norm, clip) / (sigma * clip)
    # Threshold fixed in advance at the midpoint of the claimed N(0, 1) and N(mu, 1): every trial counts.
    return threshold_audit(
        scores(background, "without-canary"), scores(torch.cat([background, canary]), "with-canary"),
        mu_theory=mu_exact, confidence=confidence, threshold=mu_exact / 2.0,
    )


def _canary_rows(*, norm: float, clip: float, multiplicity: int, num_background: int, num_features: int,
                 data_generator):
    """The background examples' K rows (zero along u) and the canary's K rows (along u, mean norm ``norm``)."""

    # Background rows: zero along u, example norms from C/2 to 3C so that clipping acts on them too.
    background = torch.randn(num_background, multiplicity, num_features, generator=data_generator)
    background[..., 0] = 0.0
    mean_rows = background.mean(dim=1, keepdim=True)
    scale = torch.linspace(0.5, 3.0, num_background).view(-1, 1, 1) * clip / mean_rows.norm(dim=2, keepdim=True)
    background *= scale
    # Canary rows along u, sizes 2k/(K+1) times the mean: a sum, or a single draw, would differ from it.
    canary = torch.zeros(1, multiplicity, num_features)
    canary[0, :, 0] = norm * 2.0 * torch.arange(1, multiplicity + 1) / (multiplicity + 1)
    return background, canary


def _released_canary_coordinate(rows, *, workdir: Path, world: str, sigma: float, clip: float, num_trials: int,
                                expected_batch_size: int, physical_batch_size: int) -> np.ndarray:
    """The u coordinate of each of ``num_trials`` DP-SGD updates over ``rows``, read back from the journal on disk."""


    model = torch.nn.Linear(rows.shape[-1], 1, bias=False)
    optimizer = dpsgd.make_dp_optimizer(
        parameters=model.parameters(), lr=1e-3, weight_decay=0.0, noise_multiplier=sigma,
        max_grad_norm=clip, expected_batch_size=expected_batch_size, secure_mode=False, device=torch.device("cpu"),
    )
    sampler = iter(dpsgd.poisson_sampler(num_examples=len(rows), sample_rate=1.0, steps=num_trials))
    path = workdir / JOURNAL_NAME
    header = {"audit": "dp-sgd canary", "world": world, "noise_multiplier": sigma, "max_grad_norm": clip}
    with DPStepJournal(path, header=header) as journal:
        for trial in range(1, num_trials + 1):
            dpsgd.dp_sgd_step(
                model=model, optimizer=optimizer, per_example_loss=_mean_over_draws_loss,
                batch_indices=next(sampler), load_inputs=lambda indices: (rows[indices],),
                physical_batch_size=physical_batch_size,
                before_release=lambda update, trial=trial: journal.record_step(step=trial, update=update),
            )
    # What was released is what the journal holds on disk: read every update back, hash-checked.
    _, entries = read_journal_entries(path)
    if len(entries) != num_trials:
        raise PrivacyError(f"the audit journal lists {len(entries)} releases, expected {num_trials}")
    return np.asarray([load_update(path.parent / UPDATES_DIR, entry)[0].flatten()[0].item() for entry in entries])


def _mean_over_draws_loss(model, rows):
    """Per-example loss linear in the output: the mean of the model's outputs over an example's K rows."""
    return model(rows.flatten(0, 1)).view(rows.shape[0], rows.shape[1]).mean(dim=1)
