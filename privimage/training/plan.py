"""The fine-tuning plan of a run: one definition for training, the dry run and the run audit.

A run's fine-tuning schedule (Poisson rate q, logical steps T, learning rate,
noise multiplicity) depends on the generator family: a diffusion model is
fine-tuned for ``finetune.epochs`` at ``finetune.lr`` with K noise draws per
image, a GAN's discriminator for ``finetune.gan_epochs`` at ``finetune.gan_lr``
(paper Appendix C, Tables 6-7). The calibrated sigma depends on q and T, so the
training loop, ``privimage run --dry-run`` and ``privimage audit`` must all
read them from here; a second copy of this choice once let the audit of a GAN
run recompute the diffusion schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from privimage.config import FinetuneConfig
from privimage.errors import ConfigError, PrivacyError

GENERATORS = ("diffusion", "gan")
# Adam betas of DCGAN (Radford et al., 2016), the usual choice for GANs; AdamW's defaults otherwise.
GAN_BETAS = (0.5, 0.999)
DIFFUSION_BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class FinetunePlan:
    """What fine-tuning on the sensitive data runs, private or not (the same budget either way)."""

    generator: str
    sample_rate: float
    steps: int
    epochs: float
    expected_batch_size: int
    lr: float
    betas: tuple[float, float]
    # K diffusion noise draws averaged per image before clipping; a GAN's discriminator sees each image once.
    noise_multiplicity: int


def finetune_schedule(*, num_examples: int, batch_size: int, epochs: float) -> tuple[float, int]:
    """Poisson sample rate and number of logical steps of a fine-tuning run.

    Args:
        num_examples: N, the size of the sensitive training set.
        batch_size: expected logical batch size.
        epochs: passes over the data.

    Returns:
        ``(q, T)`` with q = batch_size / N and T = ceil(epochs / q).
    """
    if num_examples < 1:
        raise PrivacyError("the sensitive dataset is empty")
    if batch_size < 1 or batch_size > num_examples:
        raise ConfigError(f"finetune.batch_size must lie in [1, N={num_examples}], got {batch_size}")
    if not epochs > 0:
        raise ConfigError(f"finetune epochs must be > 0, got {epochs}")
    sample_rate = batch_size / num_examples
    # Rounding guards against 0.2 / 0.016 = 12.500000000000002 becoming 13 steps.
    return sample_rate, max(1, math.ceil(round(epochs / sample_rate, 9)))


def finetune_plan(*, generator: str, settings: FinetuneConfig, num_examples: int) -> FinetunePlan:
    """The fine-tuning plan of a generator family on a sensitive set of ``num_examples`` images.

    Args:
        generator: ``"diffusion"`` or ``"gan"`` (a method's ``generator``).
        settings: the config's ``finetune`` section.
        num_examples: N, the size of the sensitive training set.

    Returns:
        The `FinetunePlan`.
    """
    if generator not in GENERATORS:
        raise ConfigError(f"unknown generator family {generator!r} (choose from {', '.join(GENERATORS)})")
    gan = generator == "gan"
    epochs = settings.gan_epochs if gan else settings.epochs
    sample_rate, steps = finetune_schedule(num_examples=num_examples, batch_size=settings.batch_size, epochs=epochs)
    return FinetunePlan(
        generator=generator,
        sample_rate=sample_rate,
        steps=steps,
        epochs=epochs,
        expected_batch_size=settings.batch_size,
        lr=settings.gan_lr if gan else settings.lr,
        betas=GAN_BETAS if gan else DIFFUSION_BETAS,
        noise_multiplicity=1 if gan else settings.noise_multiplicity,
    )
