"""Epsilon of a composition: the semantic query plus DP-SGD (paper Appendix E, Theorem E.2).

Two mechanisms touch the sensitive data:

- the semantic query (Section 3.3, Theorem 3.1): a Gaussian mechanism with L2
  sensitivity sqrt(k) and noise std z * sqrt(k), run once, no subsampling. Its
  effective noise multiplier is z, so its RDP is alpha / (2 z^2) at every order
  alpha -- *not* multiplied by k;
- DP-SGD (Algorithm 1): T steps of the Poisson-subsampled Gaussian mechanism
  with noise multiplier sigma and sample rate q.

RDP composes by adding the curves order by order; we use opacus's RDP analysis
(``compute_rdp`` / ``get_privacy_spent``) on opacus's default order grid, so a
DP-SGD-only composition gives exactly the number opacus's ``RDPAccountant``
reports. The PRV accountant (Gopi et al. 2021, opacus's ``PRVAccountant``) is
the cross-check: it composes the query as a Gaussian mechanism with sample
rate 1 and noise multiplier z, and reports the upper end of its error interval.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

from privimage.errors import PrivacyError
from privimage.privacy.validation import check_delta, check_k, check_positive, check_sample_rate, check_steps

ACCOUNTANTS = ("rdp", "prv")
# opacus's default RDP orders, so our numbers match its RDPAccountant.
RDP_ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)
# PRV accountant's additive error on epsilon (opacus's default); we report the upper bound.
PRV_EPS_ERROR = 0.01
# opacus's default delta error of the PRV accountant (delta / 1000).
PRV_DELTA_ERROR_SHARE = 1e-3
# Most grid points the PRV accountant may discretise on (about 5 s and 0.5 GB on one core); see `prv_domain_points`.
MAX_PRV_DOMAIN_POINTS = 2**22
# opacus's warning that the best RDP order is at an end of the grid: the bound holds, only looser.
GRID_EDGE_WARNING = "Optimal order is the (largest|smallest) alpha"


def check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    return accountant


def query_rdp(*, query_noise_multiplier: float, orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
    """RDP curve of one semantic query (paper Theorem 3.1).

    Args:
        query_noise_multiplier: z; the noise std is z * sqrt(k) for sensitivity sqrt(k),
            so k cancels and the curve depends on z only.
        orders: RDP orders alpha.

    Returns:
        ``alpha / (2 z^2)`` for each order.
    """
    z = check_positive(query_noise_multiplier, "query_noise_multiplier")
    return np.asarray(orders, dtype=np.float64) / (2.0 * z * z)


def composition_epsilon(
    *,
    dpsgd_runs: Iterable[tuple[float, float, int]],
    query_noise_multipliers: Iterable[float],
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon at ``delta`` of several DP-SGD runs and semantic queries composed.

    Args:
        dpsgd_runs: ``(noise_multiplier, sample_rate, steps)`` triples, one per run of
            identical DP-SGD steps.
        query_noise_multipliers: z of each semantic query.
        delta: target delta.
        accountant: ``"rdp"`` (opacus RDP analysis) or ``"prv"`` (opacus PRV accountant).

    Returns:
        Epsilon; 0.0 when nothing touched the sensitive data.
    """
    check_accountant(accountant)
    delta = check_delta(delta)
    runs = [
        (check_positive(sigma, "noise_multiplier"), check_sample_rate(q), check_steps(steps))
        for sigma, q, steps in dpsgd_runs
    ]
    runs = [run for run in runs if run[2] > 0]
    queries = [check_positive(z, "query_noise_multiplier") for z in query_noise_multipliers]
    if not runs and not queries:
        return 0.0
    # Extreme parameters overflow inside the accountants' float arithmetic; the outcome is checked below.
    try:
        with np.errstate(all="ignore"):
            epsilon = _rdp_epsilon(runs, queries, delta) if accountant == "rdp" else _prv_epsilon(runs, queries, delta)
    except ArithmeticError:
        # opacus divides by sigma^2, which is 0 for a subnormal sigma such as 5e-324.
        epsilon = math.inf
    if not epsilon < math.inf:
        raise PrivacyError(f"the {accountant.upper()} accountant finds no finite epsilon at delta {delta:g}: "
                           "the noise is too small for any guarantee")
    # A bound below 0 (a large delta) still means (0, delta)-DP: epsilon is never negative.
    return max(0.0, epsilon)


def _rdp_epsilon(runs: list[tuple[float, float, int]], queries: list[float], delta: float) -> float:
    # RDP of a composition is the sum of the curves (Mironov 2017, Prop. 1; paper Theorem E.2).
    total = np.zeros(len(RDP_ORDERS))
    for sigma, q, steps in runs:
        total += rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(RDP_ORDERS))
    for z in queries:
        total += query_rdp(query_noise_multiplier=z)
    # Where the best order is the grid's largest (a lone query with large z, or a tiny
    # DP-SGD spend) or smallest (a huge spend), opacus warns that a wider grid would give a
    # tighter bound. The bound is still valid, only conservative, and the grid is opacus's
    # default on purpose (the numbers match its RDPAccountant); the warning would print on
    # every query-only ledger.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=GRID_EDGE_WARNING)
        epsilon, _best_order = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=total, delta=delta)
    return float(epsilon)


def prv_domain_points(*, history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Grid points of the PRV accountant's discretisation of a composition (Gopi et al. 2021, Remark 5.6).

    opacus truncates the privacy loss to [-L, L], with L an RDP bound on epsilon at
    delta_error / 4, and discretises it with a mesh of
    ``eps_error / sqrt(T log(12 / delta_error) / 2)`` for T steps in all. The
    number of points, 2 L / mesh, grows with epsilon and with sqrt(T): a
    sigma of 0.01 over 13 steps needs 1.7e8 points (many GB), a ledger of 1e9
    steps far more. Sizing it first costs only RDP evaluations.

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` triples, as opacus's PRVAccountant keeps them.
        delta: target delta.

    Returns:
        The number of grid points ``PRVAccountant.get_epsilon`` would allocate.
    """
    delta_error = delta * PRV_DELTA_ERROR_SHARE
    prvs = [PoissonSubsampledGaussianPRV(sample_rate, sigma) for sigma, sample_rate, _ in history]
    steps = [count for _, _, count in history]
    with np.errstate(divide="ignore", over="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=GRID_EDGE_WARNING)
        half_width = compute_safe_domain_size(prvs=prvs, max_self_compositions=steps, eps_error=PRV_EPS_ERROR,
                                              delta_error=delta_error)
    mesh = PRV_EPS_ERROR / np.sqrt(sum(steps) * np.log(12.0 / delta_error) / 2.0)
    return float(2.0 * half_width / mesh)


def _prv_epsilon(runs: list[tuple[float, float, int]], queries: list[float], delta: float) -> float:
    # A query is a Gaussian mechanism: a "subsampled" Gaussian with sample rate 1 and noise z.
    history = [(sigma, q, steps) for sigma, q, steps in runs]
    history += [(z, 1.0, count) for z, count in Counter(queries).items()]
    # Refuse in fixed time what would exhaust memory: the domain, not epsilon, is what explodes.
    points = prv_domain_points(history=history, delta=delta)
    if not points <= MAX_PRV_DOMAIN_POINTS:
        raise PrivacyError(
            f"the PRV accountant would need {points:.3g} grid points for this composition (at most "
            f"{MAX_PRV_DOMAIN_POINTS:.3g}): its privacy loss is too large or has too many steps (the RDP accountant still bounds it)"
        )
    prv = PRVAccountant()
    # opacus's accountants keep (noise_multiplier, sample_rate, steps) in `history`;
    # filling it directly avoids one Python call per step.
    prv.history = history
    try:
        # Sample rate 1 makes opacus evaluate log(1 - q) = log(0) = -inf, which is the right limit.
        # opacus sizes the PRV domain with an RDP bound at a tiny delta, whose "largest alpha"
        # warning only concerns that (conservative) domain size, not the epsilon we report.
        with np.errstate(divide="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=GRID_EDGE_WARNING)
            return float(prv.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
    except (RuntimeError, ValueError) as exc:
        raise PrivacyError(f"the PRV accountant cannot bound this composition ({exc})") from None


def compute_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    query_noise_multiplier: float | None = None,
    k: int = 1,
    accountant: str = "rdp",
) -> float:
    """Epsilon of DP-SGD, optionally composed with one semantic query (paper Theorem E.2).

    Args:
        noise_multiplier: DP-SGD sigma (noise std sigma * C on the clipped sum).
        sample_rate: Poisson sampling rate q.
        steps: DP-SGD steps T.
        delta: target delta.
        query_noise_multiplier: z of the semantic query, or None for DP-SGD alone.
        k: semantics per image of the query; validated, but it does not change the
            cost because the noise std z * sqrt(k) scales with the sensitivity sqrt(k).
        accountant: ``"rdp"`` or ``"prv"``.

    Returns:
        Epsilon at ``delta`` under add/remove-one neighbouring.
    """
    check_k(k)
    queries = [] if query_noise_multiplier is None else [query_noise_multiplier]
    return composition_epsilon(
        dpsgd_runs=[(noise_multiplier, sample_rate, steps)],
        query_noise_multipliers=queries,
        delta=delta,
        accountant=accountant,
    )
