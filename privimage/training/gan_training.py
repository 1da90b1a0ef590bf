"""Training a conditional GAN: pre-training, DP fine-tuning of the discriminator, NonPrivG.

Paper Section 3.4 and Table 6, DPGAN as in opacus's DCGAN example:

- only the discriminator touches the sensitive data, so only it is trained
  with DP-SGD; the generator learns through the (already private)
  discriminator and is a post-processing of it, free of privacy cost;
- the generator is updated once every ``gan.update_ratio`` discriminator steps;
- a discriminator step's logical batch is the Poisson-sampled real rows plus a
  *fixed* number (the expected batch size) of generated rows, each row's
  gradient clipped on its own and one noise draw on the sum. The number of
  generated rows must not follow the realised Poisson batch size: if it did,
  removing one real image would also remove a generated row and the sum could
  change by 2C instead of C.

Under torchrun each rank generates its share of those rows (the shares add up to
the fixed number), and of the generator's batch; the generator's gradients are
all-reduced like every non-private gradient (`privimage.training.plain`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privimage import distributed
from privimage.config import Config, FinetuneConfig
from privimage.data.base import ImageDataset, refuse_sensitive
from privimage.distributed import sum_gradients_over_ranks
from privimage.errors import DataError
from privimage.models import (
    discriminator_loss_fake_per_example,
    discriminator_loss_per_row,
    discriminator_loss_real_per_example,
    generator_loss_per_example,
)
from privimage.training.common import batch_tensors, model_device
from privimage.training.diffusion_training import NONPRIVATE_MARK
from privimage.training.dpsgd import run_dp_sgd
from privimage.training.plain import chunked, run_plain_training
from privimage.training.plan import GAN_BETAS, finetune_plan

PRETRAIN_STAGE = "pretrain_gan"
DP_FINETUNE_STAGE = "dp_finetune_gan"
NONPRIVATE_FINETUNE_STAGE = "nonprivate_finetune_gan"
# Row index that stands for "a generated image" in a discriminator batch.
GENERATED_ROW = -1


def _check_gan_labels(dataset: ImageDataset, generator: torch.nn.Module, *, role: str) -> int:
    num_classes = int(generator.num_classes)
    if len(dataset) and int(dataset.labels.max()) >= num_classes:
        raise DataError(
            f"{role} data {dataset.name}/{dataset.split} has labels up to {int(dataset.labels.max())} but the GAN "
            f"has {num_classes} classes; relabel it to the sensitive classes"
        )
    return num_classes


def _generate(generator: torch.nn.Module, count: int, num_classes: int, device: torch.device, *, grad: bool):
    """``count`` generated images with uniformly drawn classes."""
    latent = torch.randn(count, generator.latent_dim, device=device)
    labels = torch.randint(num_classes, (count,), device=device)
    with torch.set_grad_enabled(grad):
        return generator(latent, labels), labels


def _generator_step(*, generator, discriminator, optimizer, batch_size: int, physical_batch_size: int,
                    num_classes: int) -> float:
    """One non-saturating generator update through the discriminator (no sensitive data read).

    ``batch_size`` counts the generated images of all ranks; this rank makes its share.
    """

    device = model_device(generator)
    optimizer.zero_grad(set_to_none=True)
    # The discriminator is only a function here; its parameters must not collect gradients.
    discriminator.requires_grad_(False)
    total = 0.0
    try:
        for chunk in chunked(np.arange(distributed.share_of_count(batch_size)), physical_batch_size):
            if len(chunk) == 0:
                continue
            fake, labels = _generate(generator, len(chunk), num_classes, device, grad=True)
            loss = generator_loss_per_example(discriminator, fake, labels).sum() / batch_size
            loss.backward()
            total += float(loss.detach())
    finally:
        discriminator.requires_grad_(True)
    total = sum_gradients_over_ranks(generator.parameters(), total)
    optimizer.step()
    return total


def _plain_gan_step(*, dataset: ImageDataset, generator, discriminator, d_optimizer, g_optimizer,
                    update_ratio: int, batch_size: int, generator_batch_size: int, physical_batch_size: int,
                    num_classes: int):
    """A non-private training step: discriminator on real + as many generated rows, then maybe the generator.

    ``batch_size`` is the step's real rows over all ranks (the mean's divisor); ``rows`` this rank's share.
    """

    device = model_device(discriminator)

    def train_step(step: int, rows: np.ndarray) -> dict[str, float]:
        d_optimizer.zero_grad(set_to_none=True)
        d_loss = 0.0
        for chunk in chunked(rows, physical_batch_size):
            if len(chunk) == 0:
                continue
            images, labels = batch_tensors(dataset, chunk, device)
            fake, fake_labels = _generate(generator, len(chunk), num_classes, device, grad=False)
            loss = (discriminator_loss_real_per_example(discriminator, images, labels).sum()
                    + discriminator_loss_fake_per_example(discriminator, fake, fake_labels).sum()) / batch_size
            loss.backward()
            d_loss += float(loss.detach())
        d_loss = sum_gradients_over_ranks(discriminator.parameters(), d_loss)
        d_optimizer.step()
        losses = {"d_loss": d_loss}
        # Table 6: one generator update per `update_ratio` discriminator updates.
        if step % update_ratio == 0:
            losses["g_loss"] = _generator_step(
                generator=generator, discriminator=discriminator, optimizer=g_optimizer,
                batch_size=generator_batch_size, physical_batch_size=physical_batch_size, num_classes=num_classes,
            )
        return losses

    return train_step


def _train_gan_without_noise(
    *, stage: str, dataset: ImageDataset, generator: torch.nn.Module, discriminator: torch.nn.Module,
    config: Config, num_classes: int, steps: int, batch_size: int, lr: float, betas: tuple[float, float],
    settings: Any, identity: dict[str, Any], resource_stage: str, run_dir: Path, progress: bool,
) -> dict[str, Any]:
    """Plain (no clipping, no noise) GAN training: pre-training, and NonPrivG's fine-tuning.

    ``settings`` is the config section the stage reads (``pretrain`` or ``finetune``) for weight
    decay, physical batch and checkpoint interval; ``identity`` is what the checkpoints are of.
    """
    d_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=lr, weight_decay=settings.weight_decay,
                                    betas=betas)
    g_optimizer = torch.optim.AdamW(generator.parameters(), lr=lr, weight_decay=settings.weight_decay,
                                    betas=betas)
    train_step = _plain_gan_step(
        dataset=dataset, generator=generator, discriminator=discriminator, d_optimizer=d_optimizer,
        g_optimizer=g_optimizer, update_ratio=config.gan.update_ratio, batch_size=batch_size,
        generator_batch_size=batch_size, physical_batch_size=settings.physical_batch_size,
        num_classes=num_classes,
    )
    generator.train()
    discriminator.train()
    return run_plain_training(
        stage=stage, dataset=dataset, steps=steps, batch_size=batch_size, train_step=train_step,
        state={"generator": generator, "discriminator": discriminator,
               "generator_optimizer": g_optimizer, "discriminator_optimizer": d_optimizer},
        run_dir=run_dir, seed=config.seed, checkpoint_every=settings.checkpoint_every,
        identity=identity,
        resource_stage=resource_stage, progress=progress,
    )


def pretrain_gan(
    *,
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    public: ImageDataset | None,
    config: Config,
    run_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Non-private GAN pre-training on public data for ``config.pretrain.gan_steps`` discriminator steps.

    Args:
        generator: the class-conditional generator (trained in place).
        discriminator: the class-conditional discriminator (trained in place).
        public: the pre-training data relabelled to the GAN's classes; None or empty: skip (DPGAN).
        config: the resolved config (``pretrain`` and ``gan`` sections).
        run_dir: the stage's folder (checkpoints, ``resources.json``); a re-run resumes.
        progress: show a tqdm bar.

    Returns:
        Statistics (``skipped`` when there was nothing to pre-train on).
    """
    if public is None or len(public) == 0:
        return {"stage": PRETRAIN_STAGE, "skipped": True, "steps": 0}
    refuse_sensitive(public, "pre-training")
    settings = config.pretrain
    num_classes = _check_gan_labels(public, generator, role="pre-training")
    stats = _train_gan_without_noise(
        stage=PRETRAIN_STAGE, dataset=public, generator=generator, discriminator=discriminator, config=config,
        num_classes=num_classes, steps=settings.gan_steps, batch_size=settings.gan_batch_size, lr=settings.gan_lr,
        betas=GAN_BETAS, settings=settings,
        identity={"pretrain": dataclasses.asdict(settings), "model": dataclasses.asdict(config.gan)},
        resource_stage="pretraining", run_dir=run_dir, progress=progress,
    )
    return {**stats, "skipped": False}


def dp_finetune_gan(
    *,
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    sensitive: ImageDataset,
    ledger,
    config: Config,
    run_dir: Path,
    target_epsilon: float,
    progress: bool = True,
) -> dict[str, Any]:
    """DP fine-tuning of a GAN: DP-SGD on the discriminator, the generator updated through it.

    Args:
        generator: the (pre-trained) generator, fine-tuned in place.
        discriminator: the (pre-trained) discriminator, fine-tuned in place with DP-SGD.
        sensitive: the sensitive training set.
        ledger: the run's `PrivacyLedger` before fine-tuning; charged in place for
            every discriminator step (the only steps that read sensitive data).
        config, run_dir, target_epsilon, progress: as in `dp_finetune_diffusion` (the
            ``gan`` section in place of ``diffusion``).

    Returns:
        Statistics: discriminator steps, generator steps, sigma, q, epsilon, time, memory.
    """

    settings: FinetuneConfig = config.finetune
    num_classes = _check_gan_labels(sensitive, generator, role="sensitive")
    device = model_device(discriminator)
    plan = finetune_plan(generator="gan", settings=settings, num_examples=len(sensitive))
    g_optimizer = torch.optim.AdamW(generator.parameters(), lr=plan.lr,
                                    weight_decay=settings.weight_decay, betas=plan.betas)

    def batch_rows(real_rows: list[int]) -> np.ndarray:
        # A fixed number of generated rows keeps the sum's sensitivity at C (module docstring);
        # under torchrun each rank adds its share of that number.
        generated = np.full(distributed.share_of_count(settings.batch_size), GENERATED_ROW, dtype=np.int64)
        return np.concatenate([np.asarray(real_rows, dtype=np.int64), generated])

    def load_inputs(rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        real = rows[rows != GENERATED_ROW]
        images, labels = batch_tensors(sensitive, real, device)
        fake, fake_labels = _generate(generator, int((rows == GENERATED_ROW).sum()), num_classes, device, grad=False)
        is_real = torch.cat([torch.ones(len(real), device=device), torch.zeros(len(fake), device=device)])
        return torch.cat([images, fake]), torch.cat([labels, fake_labels]), is_real

    def after_step(step: int) -> None:
        if step % config.gan.update_ratio == 0:
            _generator_step(generator=generator, discriminator=discriminator, optimizer=g_optimizer,
                            batch_size=settings.batch_size, physical_batch_size=settings.physical_batch_size,
                            num_classes=num_classes)

    generator.train()
    stats = run_dp_sgd(
        stage=DP_FINETUNE_STAGE, model=discriminator, ema=None, per_example_loss=discriminator_loss_per_row,
        load_inputs=load_inputs, batch_rows=batch_rows, after_step=after_step, betas=plan.betas,
        extra_state={"generator": generator, "generator_optimizer": g_optimizer},
        sensitive=sensitive, ledger=ledger, settings=settings, lr=plan.lr, epochs=plan.epochs,
        target_epsilon=target_epsilon, run_dir=run_dir, seed=config.seed,
        identity={"finetune": dataclasses.asdict(settings), "model": dataclasses.asdict(config.gan)},
        progress=progress,
    )
    return {**stats, "update_ratio": config.gan.update_ratio,
            "generator_steps": stats["steps"] // config.gan.update_ratio}


def finetune_nonprivate_gan(
    *,
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    sensitive: ImageDataset,
    config: Config,
    run_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """NonPrivG: the DP GAN fine-tuning budget without clipping or noise. NO privacy guarantee.

    Takes `dp_finetune_gan`'s arguments less ``ledger`` and ``target_epsilon``; returns what
    `finetune_nonprivate_diffusion` returns, for the GAN.
    """
    settings = config.finetune
    num_classes = _check_gan_labels(sensitive, generator, role="sensitive")
    plan = finetune_plan(generator="gan", settings=settings, num_examples=len(sensitive))
    stats = _train_gan_without_noise(
        stage=NONPRIVATE_FINETUNE_STAGE, dataset=sensitive, generator=generator, discriminator=discriminator,
        config=config, num_classes=num_classes, steps=plan.steps, batch_size=settings.batch_size, lr=plan.lr,
        betas=plan.betas, settings=settings,
        identity={"finetune": dataclasses.asdict(settings), "model": dataclasses.asdict(config.gan)},
        resource_stage="finetuning", run_dir=run_dir, progress=progress,
    )
    return {**stats, **NONPRIVATE_MARK}
