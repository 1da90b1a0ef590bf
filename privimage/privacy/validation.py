"""Checks of privacy parameters: a bad value is a `PrivacyError`, never a wrong number.

Every public function of the privacy package validates its inputs here first,
so the accountant, the calibration and the mechanisms refuse the same things
with the same one-line messages (DESIGN.md, Privacy).
"""

from __future__ import annotations

import math
import numbers

from privimage.errors import PrivacyError


def _finite_number(value: object, name: str) -> float:
    """``value`` as a float, refusing bools, non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise PrivacyError(f"{name} must be finite, got {value!r}")
    return value


def check_positive(value: object, name: str) -> float:
    """A finite number > 0 (noise multipliers, epsilon)."""
    value = _finite_number(value, name)
    if value <= 0:
        raise PrivacyError(f"{name} must be > 0, got {value!r}")
    return value


def check_sample_rate(value: object, name: str = "sample_rate") -> float:
    """Poisson sampling probability q in (0, 1]."""
    value = _finite_number(value, name)
    if not 0.0 < value <= 1.0:
        raise PrivacyError(f"{name} must lie in (0, 1], got {value!r}")
    return value


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PrivacyError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_steps(value: object, name: str = "steps") -> int:
    """A step count >= 0."""
    value = _integer(value, name)
    if value < 0:
        raise PrivacyError(f"{name} must be >= 0, got {value!r}")
    return value


def check_k(value: object) -> int:
    """Semantics per sensitive image, k >= 1 (paper Theorem 3.1)."""
    value = _integer(value, "k")
    if value < 1:
        raise PrivacyError(f"k must be >= 1, got {value!r}")
    return value


def check_num_examples(value: object) -> int:
    """Size N of the sensitive dataset; an empty one has nothing to protect or learn from."""
    value = _integer(value, "num_examples")
    if value < 1:
        raise PrivacyError(f"the sensitive dataset is empty (num_examples={value!r})")
    return value


def check_delta(value: object, *, num_examples: int | None = None) -> float:
    """delta in (0, 1), and below 1/N when the sensitive set's size N is known.

    A delta of 1/N or more allows a mechanism that publishes one whole record
    (DESIGN.md: "delta must be below 1/N").
    """
    value = _finite_number(value, "delta")
    if not 0.0 < value < 1.0:
        raise PrivacyError(f"delta must lie in (0, 1), got {value!r}")
    if num_examples is not None and value >= 1.0 / num_examples:
        raise PrivacyError(
            f"delta={value!r} must be below 1/N = {1.0 / num_examples:.3g} for N={num_examples} sensitive examples"
        )
    return value
