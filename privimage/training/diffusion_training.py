"""Training a diffusion model: pre-training, DP fine-tuning, NonPrivD fine-tuning (Section 3.4).

Thin recipes over the shared loops: they choose the loss (the denoising loss
of `privimage.diffusion`, averaged over K noise draws per image), the
optimiser settings of the paper's Table 5 and the EMA, and hand the rest to
`privimage.training.plain` (non-private) or `privimage.training.dpsgd` (DP-SGD).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privimage.config import Config
from privimage.data.base import ImageDataset, refuse_sensitive
from privimage.diffusion import diffusion_loss_from_noise, diffusion_loss_per_example, draw_diffusion_noise
from privimage.distributed import sum_gradients_over_ranks
from privimage.errors import DataError
from privimage.training.common import batch_tensors, model_device
from privimage.training.dpsgd import run_dp_sgd
from privimage.training.plain import accumulate_mean_loss, run_plain_training
from privimage.training.plan import finetune_plan

PRETRAIN_STAGE = "pretrain_diffusion"
DP_FINETUNE_STAGE = "dp_finetune_diffusion"
NONPRIVATE_FINETUNE_STAGE = "nonprivate_finetune_diffusion"


def _num_classes(model: torch.nn.Module) -> int:
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise DataError("the diffusion model must expose num_classes (its real classes; that index is the null class)")
    return num_classes


def _check_labels(dataset: ImageDataset, num_classes: int, *, role: str) -> None:
    if len(dataset) and int(dataset.labels.max()) >= num_classes:
        raise DataError(
            f"{role} data {dataset.name}/{dataset.split} has labels up to {int(dataset.labels.max())} but the model "
            f"has {num_classes} classes; relabel it to the sensitive classes or pre-train unconditionally"
        )


def _diffusion_loss(*, noise_multiplicity: int, label_dropout: float, num_classes: int, sigma_data: float):
    """Per-example denoising loss (Eq. 2), K noise draws averaged per image (DPDM's noise multiplicity)."""

    def per_example_loss(model, images, labels):
        return diffusion_loss_per_example(
            model, images, labels,
            noise_multiplicity=noise_multiplicity, label_dropout=label_dropout, num_classes=num_classes,
            sigma_data=sigma_data,
        )

    return per_example_loss


def _dp_inputs(dataset: ImageDataset, device: torch.device, *, noise_multiplicity: int, label_dropout: float,
               num_classes: int):
    """Rows -> (images, noise, times, labels): the K draws are made outside the per-sample map."""

    def load_inputs(rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        images, labels = batch_tensors(dataset, rows, device)
        noise, times, conditioning_labels = draw_diffusion_noise(
            images, labels, noise_multiplicity=noise_multiplicity, label_dropout=label_dropout,
            num_classes=num_classes,
        )
        return images, noise, times, conditioning_labels

    return load_inputs


def _train_diffusion_without_noise(
    *, stage: str, model: torch.nn.Module, ema: Any, optimizer: torch.optim.Optimizer, dataset: ImageDataset,
    rows_loss: Callable[[np.ndarray], torch.Tensor], settings: Any, steps: int, config: Config,
    identity: dict[str, Any], resource_stage: str, run_dir: Path, progress: bool,
) -> dict[str, Any]:
    """Plain (no clipping, no noise) UNet training: pre-training, and NonPrivD's fine-tuning.

    ``settings`` is the config section the stage reads (``pretrain`` or ``finetune``) for the
    batch, physical batch and checkpoint interval.
    """

    def train_step(step: int, rows: np.ndarray) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        # `rows` is this process's share of the batch; the ranks' gradients add up to the batch mean's.
        loss = accumulate_mean_loss(rows_loss, rows, settings.physical_batch_size, batch_size=settings.batch_size)
        loss = sum_gradients_over_ranks(model.parameters(), loss)
        optimizer.step()
        ema.update(model)
        return {"loss": loss}

    model.train()
    return run_plain_training(
        stage=stage, dataset=dataset, steps=steps, batch_size=settings.batch_size,
        train_step=train_step, state={"model": model, "ema": ema, "optimizer": optimizer},
        run_dir=run_dir, seed=config.seed, checkpoint_every=settings.checkpoint_every,
        identity=identity, resource_stage=resource_stage, progress=progress,
    )


def pretrain_diffusion(
    *,
    model: torch.nn.Module,
    ema: Any,
    public: ImageDataset | None,
    config: Config,
    run_dir: Path,
    unconditional: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Non-private pre-training on public data for ``config.pretrain.steps`` AdamW steps.

    Args:
        model: the class-conditional UNet (trained in place).
        ema: its exponential moving average (``update(model)``, ``state_dict``), updated every step.
        public: the pre-training data (selected subset or all public data), relabelled
            to the model's classes; None or empty: no pre-training (DPDM).
        config: the resolved config (``pretrain`` and ``diffusion`` sections).
        run_dir: the stage's folder (checkpoints, ``resources.json``); a re-run resumes.
        unconditional: train on the null class only (public labels that do not
            name the sensitive classes).
        progress: show a tqdm bar.

    Returns:
        Statistics (``skipped`` when there was nothing to pre-train on).
    """
    if public is None or len(public) == 0:
        return {"stage": PRETRAIN_STAGE, "skipped": True, "steps": 0}
    refuse_sensitive(public, "pre-training")
    settings = config.pretrain
    num_classes = _num_classes(model)
    if not unconditional:
        _check_labels(public, num_classes, role="pre-training")
    device = model_device(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    # Pre-training takes one noise draw per image: K only matters for DP-SGD's signal-to-noise.
    loss_fn = _diffusion_loss(noise_multiplicity=1, label_dropout=settings.label_dropout, num_classes=num_classes,
                              sigma_data=config.diffusion.sigma_data)

    def rows_loss(rows: np.ndarray) -> torch.Tensor:
        images, labels = batch_tensors(public, rows, device)
        if unconditional:
            labels = torch.full_like(labels, num_classes)
        return loss_fn(model, images, labels)

    stats = _train_diffusion_without_noise(
        stage=PRETRAIN_STAGE, model=model, ema=ema, optimizer=optimizer, dataset=public, rows_loss=rows_loss,
        settings=settings, steps=settings.steps, config=config,
        identity={"pretrain": dataclasses.asdict(settings), "model": dataclasses.asdict(config.diffusion),
                  "unconditional": unconditional},
        resource_stage="pretraining", run_dir=run_dir, progress=progress,
    )
    return {**stats, "skipped": False, "unconditional": unconditional}


def dp_finetune_diffusion(
    *,
    model: torch.nn.Module,
    ema: Any,
    sensitive: ImageDataset,
    ledger,
    config: Config,
    run_dir: Path,
    target_epsilon: float,
    progress: bool = True,
) -> dict[str, Any]:
    """DP-SGD fine-tuning on the sensitive data (Algorithm 1) to a target epsilon for the whole run.

    Args:
        model: the (pre-trained) UNet, fine-tuned in place.
        ema: its exponential moving average, updated after every logical step.
        sensitive: the sensitive training set.
        ledger: the run's `PrivacyLedger` as it stands before fine-tuning (with the
            semantic query if the method made one); charged in place, step by step.
        config: the resolved config (``finetune`` and ``diffusion`` sections).
        run_dir: the stage's folder (checkpoints, DP-SGD journal, ``resources.json``).
        target_epsilon: epsilon of the whole run at ``config.finetune.delta``.
        progress: show a tqdm bar.

    Returns:
        Statistics: steps, sample rate, noise multiplier, epsilon spent, time, memory.
    """
    settings = config.finetune
    num_classes = _num_classes(model)
    _check_labels(sensitive, num_classes, role="sensitive")

    plan = finetune_plan(generator="diffusion", settings=settings, num_examples=len(sensitive))
    load_inputs = _dp_inputs(
        sensitive, model_device(model), noise_multiplicity=plan.noise_multiplicity,
        label_dropout=settings.label_dropout, num_classes=num_classes,
    )
    return run_dp_sgd(
        stage=DP_FINETUNE_STAGE, model=model, ema=ema,
        per_example_loss=functools.partial(diffusion_loss_from_noise, sigma_data=config.diffusion.sigma_data),
        load_inputs=load_inputs,
        sensitive=sensitive, ledger=ledger, settings=settings, lr=plan.lr, epochs=plan.epochs, betas=plan.betas,
        target_epsilon=target_epsilon, run_dir=run_dir, seed=config.seed,
        identity={"finetune": dataclasses.asdict(settings), "model": dataclasses.asdict(config.diffusion)},
        # 0: all K draws in one pass; otherwise activation memory follows the chunk, not K.
        multiplicity_chunk=settings.multiplicity_chunk or None,
        progress=progress,
    )


def finetune_nonprivate_diffusion(
    *,
    model: torch.nn.Module,
    ema: Any,
    sensitive: ImageDataset,
    config: Config,
    run_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """NonPrivD: the same fine-tuning budget as DP-SGD, without clipping or noise. NO privacy guarantee.

    Takes `dp_finetune_diffusion`'s arguments less ``ledger`` and ``target_epsilon``; returns the
    training statistics marked with `NONPRIVATE_MARK` (``private: False``, ``epsilon: None``).
    """
    settings = config.finetune
    num_classes = _num_classes(model)
    _check_labels(sensitive, num_classes, role="sensitive")
    plan = finetune_plan(generator="diffusion", settings=settings, num_examples=len(sensitive))
    device = model_device(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=settings.weight_decay,
                                  betas=plan.betas)
    loss_fn = _diffusion_loss(
        noise_multiplicity=plan.noise_multiplicity, label_dropout=settings.label_dropout, num_classes=num_classes,
        sigma_data=config.diffusion.sigma_data,
    )

    stats = _train_diffusion_without_noise(
        stage=NONPRIVATE_FINETUNE_STAGE, model=model, ema=ema, optimizer=optimizer, dataset=sensitive,
        rows_loss=lambda rows: loss_fn(model, *batch_tensors(sensitive, rows, device)),
        settings=settings, steps=plan.steps, config=config,
        identity={"finetune": dataclasses.asdict(settings), "model": dataclasses.asdict(config.diffusion)},
        resource_stage="finetuning", run_dir=run_dir, progress=progress,
    )
    return {**stats, **NONPRIVATE_MARK}


# What every non-private fine-tuning result says about itself.
NONPRIVATE_MARK = {
    "private": False,
    "epsilon": None,
    "privacy": "none: fine-tuned on the sensitive data without clipping or noise (NonPriv baseline)",
}
