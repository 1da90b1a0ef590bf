"""Where DP noise comes from: generators that no experiment seed controls.

DESIGN.md, Privacy: DP noise is drawn in float64 from a generator no experiment
seed controls, and it is never reused. Every call below makes a fresh generator
from operating-system entropy, so two runs on the same data draw different noise
even when ``Config.seed`` is the same, and seeding numpy's or torch's global
state changes nothing here.

Strength of each choice, stated plainly:

- ``dp_noise_generator(secure=False)`` ("os-entropy"): numpy's PCG64 seeded by
  ``SeedSequence()``, which draws 128 bits from the OS CSPRNG (``secrets``). The
  seed is unpredictable, but PCG64 is not a cryptographic generator: its state
  can be recovered from enough raw outputs (Bouillaguet et al. 2020).
- ``dp_noise_generator(secure=True)`` ("secure"): numpy's Philox4x64-10, a
  counter-mode keyed bijection, keyed with 128 bits from ``secrets``. No
  practical key recovery is known, but Philox was designed for statistical
  quality, not vetted as a cipher, so it is *not* a certified CSPRNG. Gaussian
  samples from it are drawn as the sum of four normals divided by two, the
  floating-point-attack mitigation opacus's secure mode uses (Holohan & Braghin
  2021, Sec. 5.1, n = 2).
- ``torch_noise_generator``: a ``torch.Generator`` seeded with 63 bits from
  ``secrets`` (mt19937 on CPU, Philox on CUDA); neither is cryptographic.
  opacus's own secure mode expects torchcsprng, which is not published for this
  torch version; with ``secure=True`` pass ``secure_mode=True`` to opacus's
  ``DPOptimizer`` too, which adds the same floating-point mitigation.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from privimage.privacy.validation import check_positive

GENERATOR_NAMES = ("secure", "os-entropy")


class SecureNoiseGenerator(np.random.Generator):
    """A numpy Generator on a secretly keyed Philox stream; marks noise drawn in secure mode."""


def dp_noise_generator(*, secure: bool = False) -> np.random.Generator:
    """A fresh numpy generator for DP noise, seeded from OS entropy (never from a config seed).

    Args:
        secure: key a Philox stream with 128 bits from ``secrets`` and use the
            floating-point-attack mitigation in `gaussian_noise` (see module docstring
            for what this does and does not guarantee).

    Returns:
        A new ``np.random.Generator``; `generator_name` tells which kind it is.
    """
    if secure:
        return SecureNoiseGenerator(np.random.Philox(key=secrets.randbits(128)))
    # SeedSequence() with no entropy argument reads 128 fresh bits from `secrets`.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence()))


def noise_generator_name(*, secure_mode: bool) -> str:
    """What ledgers record as the source of DP noise: ``"secure"`` in secure mode, else ``"os-entropy"``."""
    return GENERATOR_NAMES[0] if secure_mode else GENERATOR_NAMES[1]


def generator_name(generator: np.random.Generator) -> str:
    """The ledger's name for ``generator`` (`noise_generator_name`)."""
    return noise_generator_name(secure_mode=isinstance(generator, SecureNoiseGenerator))


def gaussian_noise(*, std: float, shape: tuple[int, ...], generator: np.random.Generator) -> np.ndarray:
    """Gaussian noise N(0, std^2) in float64.

    Args:
        std: noise standard deviation.
        shape: output shape.
        generator: where the randomness comes from; a `SecureNoiseGenerator` draws
            each value as (g1 + g2 + g3 + g4) / 2 of four N(0, std^2) samples, which has
            the same distribution but hides the floating-point gaps of one sample.

    Returns:
        A float64 array of ``shape``.
    """
    std = check_positive(std, "noise std")
    if isinstance(generator, SecureNoiseGenerator):
        # Holohan & Braghin 2021, Sec. 5.1 with n = 2, as in opacus's secure mode.
        total = np.zeros(shape, dtype=np.float64)
        for _ in range(4):
            total += generator.normal(0.0, std, size=shape)
        return total / 2.0
    return generator.normal(0.0, std, size=shape).astype(np.float64, copy=False)


def torch_noise_generator(*, secure: bool = False, device: str = "cpu"):
    """A fresh ``torch.Generator`` for DP-SGD noise, seeded from ``secrets.randbits(63)``.

    It never reads or touches ``torch.manual_seed`` state, so experiment seeds
    (model init, data order) leave DP noise unpredictable.

    Args:
        secure: accepted for symmetry with `dp_noise_generator`; the torch stream is
            the same kind either way (not cryptographic, see the module docstring). Pass
            ``secure_mode=True`` to opacus's ``DPOptimizer`` for its floating-point mitigation.
        device: device of the generator (must match the parameters' device).

    Returns:
        A seeded ``torch.Generator``.
    """

    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63))
    return generator
