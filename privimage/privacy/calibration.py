"""Calibrating the DP-SGD noise multiplier to a target budget (paper Appendix E, Theorem E.3).

Given (epsilon, delta), the sample rate q, the number of steps T and the
semantic query's z, find the smallest DP-SGD sigma whose composition with the
query stays within the target. opacus's ``get_noise_multiplier`` cannot include
the query in the composition, so we bisect on sigma ourselves with the same
accountants (epsilon falls monotonically as sigma grows).
"""

from __future__ import annotations


from privimage.errors import PrivacyError
from privimage.privacy.accounting import check_accountant, compute_epsilon, composition_epsilon
from privimage.privacy.validation import check_delta, check_k, check_positive, check_sample_rate, check_steps

# Largest sigma tried before giving up; beyond it the query's cost alone is (numerically) the target.
MAX_NOISE_MULTIPLIER = 1e4
# Smallest sigma calibration returns: below it DP-SGD's noise is negligible and the accountants' series
# converge ever more slowly (a target of 1e300 would halve sigma 200 times, minutes of work, for no guarantee).
MIN_NOISE_MULTIPLIER = 1e-3


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    query_noise_multiplier: float | None = None,
    k: int = 1,
    accountant: str = "rdp",
    epsilon_tolerance: float = 1e-3,
) -> float:
    """The DP-SGD noise multiplier that meets (target_epsilon, delta) without exceeding it.

    Args:
        target_epsilon: the whole run's epsilon (query plus DP-SGD).
        delta: target delta.
        sample_rate: Poisson sampling rate q.
        steps: DP-SGD steps T (>= 1).
        query_noise_multiplier: z of the semantic query, or None when there is none.
        k: semantics per image of the query (validated; does not change its cost).
        accountant: ``"rdp"`` or ``"prv"``.
        epsilon_tolerance: relative slack; the result spends epsilon in
            [(1 - epsilon_tolerance) * target, target].

    Returns:
        sigma such that `compute_epsilon` with it is <= target_epsilon and within
        the tolerance of it.
    """
    target = check_positive(target_epsilon, "target_epsilon")
    delta = check_delta(delta)
    sample_rate = check_sample_rate(sample_rate)
    steps = check_steps(steps)
    check_k(k)
    check_accountant(accountant)
    tolerance = check_positive(epsilon_tolerance, "epsilon_tolerance")
    if tolerance >= 1:
        raise PrivacyError(f"epsilon_tolerance must be < 1, got {epsilon_tolerance!r}")
    if steps == 0:
        raise PrivacyError("steps must be >= 1 to calibrate DP-SGD (with 0 steps sigma spends nothing)")

    # The query's cost is a floor no sigma can remove (Theorem E.2).
    _check_query_below_target(query_noise_multiplier=query_noise_multiplier, delta=delta, accountant=accountant,
                              target=target)

    def spent(sigma: float) -> float:
        return compute_epsilon(
            noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta,
            query_noise_multiplier=query_noise_multiplier, k=k, accountant=accountant,
        )

    # Bracket: epsilon(low) > target >= epsilon(high), growing geometrically.
    low, high = 0.0, 1.0
    while spent(high) > target:
        low, high = high, high * 2.0
        if high > MAX_NOISE_MULTIPLIER:
            raise PrivacyError(
                f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} meets epsilon {target:g}; "
                "the query leaves too little budget for DP-SGD"
            )
    # Bisection keeps the invariant epsilon(high) <= target; stop once it is close enough.
    for _ in range(200):
        if spent(high) >= (1.0 - tolerance) * target or high - low <= 1e-12 * high:
            return high
        if low == 0 and high < MIN_NOISE_MULTIPLIER:
            raise PrivacyError(
                f"epsilon {target:g} is met only by a noise multiplier below {MIN_NOISE_MULTIPLIER:g}, "
                "which protects nothing: lower the target"
            )
        middle = 0.5 * (low + high) if low > 0 else high / 2.0
        if spent(middle) > target:
            low = middle
        else:
            high = middle
    raise PrivacyError(f"calibration did not reach epsilon within {tolerance:g} of {target:g}")


def _check_query_below_target(*, query_noise_multiplier: float | None, delta: float, accountant: str,
                              target: float) -> None:
    """Refuse a target the semantic query alone already spends (paper Theorem E.2); no query passes."""
    if query_noise_multiplier is None:
        return
    query_only = composition_epsilon(
        dpsgd_runs=[], query_noise_multipliers=[query_noise_multiplier], delta=delta, accountant=accountant
    )
    if query_only >= target:
        raise PrivacyError(
            f"the semantic query alone spends epsilon {query_only:.4g} >= target {target:g}; "
            "raise query_noise_multiplier or the target"
        )
