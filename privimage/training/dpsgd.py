"""DP-SGD with opacus: one logical step, and the crash-safe loop of a fine-tuning run.

Paper Algorithm 1 and Appendix E, as DESIGN.md restores them:

- Poisson sampling with rate q = batch_size / N for T = ceil(epochs / q) logical
  steps (`poisson_sampler`; under torchrun each rank samples its own shard).
- One per-sample gradient per image (the loss averaged over K noise draws),
  clipped to C, summed over physical chunks, one Gaussian draw of std sigma * C
  per logical step, divided by the expected batch size (`dp_sgd_step`,
  `make_dp_optimizer`).
- sigma calibrated so that the whole ledger (the semantic query already in it
  plus the T planned steps) meets the target epsilon (`calibrate_to_ledger`,
  Theorem E.3).
- Each noisy update is journalled and charged *before* it is applied, and on
  resume the updates released after the last checkpoint are replayed, not drawn
  again (`privimage.training.journal`), so a resumed run ends with the
  uninterrupted run's steps and epsilon.

The mechanism's randomness (batch membership, gradient noise) comes from fresh
OS-entropy generators, never from the experiment seed, and is never
checkpointed; the non-private randomness is seeded per step (`_seed_step`).
Nothing else computed from the sensitive data is reported (no training loss,
no realised batch sizes): those would be releases the ledger does not hold.
`run_dp_sgd` is the loop: open the account, resume, replay, train, finish.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import Sampler

from privimage import distributed
from privimage.config import FinetuneConfig, config_hash, without_cost_only_settings
from privimage.data.base import ImageDataset
from privimage.dp import check_dp_compatible
from privimage.dp.per_sample import compute_per_sample_gradients
from privimage.errors import ConfigError, PrivacyError

# Through the module, so a calibration replaced there (the tests' cached one) is the one called.
from privimage.privacy import calibration
from privimage.privacy.ledger import PrivacyLedger
from privimage.privacy.noise import noise_generator_name, torch_noise_generator
from privimage.resource_usage import measure_stage
from privimage.seeding import seed_training_randomness, stage_seed
from privimage.training.checkpoint import checkpoint_steps, load_latest_checkpoint, save_checkpoint
from privimage.training.common import progress_bar, write_resources
from privimage.training.journal import (
    JOURNAL_NAME,
    DPStepJournal,
    JournalEntry,
    checkpoint_account_problem,
    checkpoint_position,
)
from privimage.training.plan import DIFFUSION_BETAS, finetune_schedule

# Per-example loss: (model call, *inputs) -> one loss per example (shape B), as
# `privimage.dp.compute_per_sample_gradients` takes it.
PerExampleLoss = Callable[..., torch.Tensor]
# Inputs of the per-example loss for given rows of the sensitive set.
LoadInputs = Callable[[np.ndarray], Sequence[torch.Tensor]]


def calibrate_to_ledger(*, ledger, target_epsilon: float, sample_rate: float, steps: int) -> float:
    """The DP-SGD noise multiplier that makes the ledger plus ``steps`` DP-SGD steps meet the target.

    Args:
        ledger: the run's `PrivacyLedger`, holding the semantic query when the
            method made one, and no DP-SGD steps yet.
        target_epsilon: epsilon of the whole run at the ledger's delta.
        sample_rate: Poisson rate q.
        steps: planned logical steps T.

    Returns:
        sigma (paper Theorem E.3).
    """

    entries = ledger.entries
    spent_steps = sum(e["steps"] for e in entries if e["mechanism"] == "dp_sgd")
    if spent_steps:
        raise PrivacyError(
            f"the ledger passed to fine-tuning already holds {spent_steps} DP-SGD steps; "
            "pass the run's ledger as it was before fine-tuning (resuming reads the run folder's journal)"
        )
    queries = [e for e in entries if e["mechanism"] == "semantic_query"]
    if len(queries) > 1:
        raise PrivacyError(f"the ledger holds {len(queries)} semantic queries; a run makes at most one")
    query = queries[0] if queries else None
    return calibration.calibrate_noise_multiplier(
        target_epsilon=target_epsilon,
        delta=ledger.delta,
        sample_rate=sample_rate,
        steps=steps,
        query_noise_multiplier=query["query_noise_multiplier"] if query else None,
        k=query["k"] if query else 1,
    )


def make_dp_optimizer(
    *,
    parameters,
    lr: float,
    weight_decay: float,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    secure_mode: bool,
    device: torch.device,
    betas: tuple[float, float] = (0.9, 0.999),
) -> DPOptimizer:
    """AdamW wrapped in opacus's ``DPOptimizer`` with a fresh, unseeded noise generator.

    In a distributed run it is opacus's ``DistributedDPOptimizer``: every rank
    clips and sums its own rows, rank 0 alone adds the noise, and the sums are
    all-reduced before the update, so the update equals the single-process one
    on the union of the ranks' rows.

    Args:
        parameters: the parameters DP-SGD updates.
        lr, weight_decay, betas: AdamW settings.
        noise_multiplier: sigma; the noise std on the clipped sum is sigma * max_grad_norm.
        max_grad_norm: C, the per-sample clipping norm.
        expected_batch_size: the divisor of the noisy sum (not the realised batch
            size): the *global* expected batch, over all ranks.
        secure_mode: opacus's floating-point-attack mitigation for the noise.
        device: where the parameters live (the noise generator must be there too).

    Returns:
        The ``DPOptimizer`` (a ``DistributedDPOptimizer`` under torchrun).
    """

    if not max_grad_norm > 0:
        raise ConfigError(f"finetune.max_grad_norm must be > 0, got {max_grad_norm}")
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, betas=betas)
    # Each rank divides by its share of the expected batch and the all-reduce averages
    # over ranks, so the update divides by the global one (as opacus's PrivacyEngine sets it).
    optimizer_class = DistributedDPOptimizer if distributed.is_distributed() else DPOptimizer
    per_rank = expected_batch_size / distributed.world_size() if distributed.is_distributed() else expected_batch_size
    return optimizer_class(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=per_rank,
        loss_reduction="mean",
        generator=torch_noise_generator(secure=secure_mode, device=str(device)),
        secure_mode=secure_mode,
    )


class ShardPoissonSampler(Sampler[np.ndarray]):
    """Poisson sampling of one rank's shard: opacus's sampler over rows ``rank::world``.

    Why not opacus's ``DistributedUniformWithReplacementSampler``: it skips a
    rank's empty batches, so ranks would disagree on the number of logical
    steps and the all-reduce would hang; it also shuffles the shards with a
    seeded generator, which buys nothing when every row is sampled
    independently anyway. Here every rank yields exactly ``steps`` batches,
    empty ones included, as the single-process sampler does.

    Args:
        shard: the sensitive rows this rank holds.
        sample_rate: q, the same on every rank.
        steps: logical batches to draw.
        generator: a fresh OS-entropy generator of this rank (never seeded by the experiment).
    """

    def __init__(self, *, shard: np.ndarray, sample_rate: float, steps: int, generator: torch.Generator) -> None:
        self.shard = np.asarray(shard, dtype=np.int64)
        self.local = UniformWithReplacementSampler(
            num_samples=len(self.shard), sample_rate=sample_rate, steps=steps, generator=generator
        )

    def __len__(self) -> int:
        return len(self.local)

    def __iter__(self):
        for local_rows in self.local:
            yield self.shard[np.asarray(local_rows, dtype=np.int64)]


def poisson_sampler(*, num_examples: int, sample_rate: float, steps: int) -> Sampler:
    """opacus's Poisson sampler over ``steps`` logical batches, from a fresh OS-entropy generator.

    Under torchrun each rank samples its shard (rows ``rank::world``) with the
    same rate: every row still joins a logical batch independently with
    probability q, so the union of the ranks' batches is the Poisson sample the
    accountant assumes, of expected size q * N.

    Args:
        num_examples: N, the size of the sensitive training set.
        sample_rate: q.
        steps: logical batches to draw.

    Returns:
        An iterable of ``steps`` lists (arrays under torchrun) of this rank's row indices.
    """

    if not distributed.is_distributed():
        return UniformWithReplacementSampler(
            num_samples=num_examples, sample_rate=sample_rate, steps=steps, generator=torch_noise_generator()
        )
    if num_examples < distributed.world_size():
        raise PrivacyError(f"{num_examples} sensitive examples cannot be shared among "
                           f"{distributed.world_size()} processes; use fewer processes")
    shard = np.arange(distributed.rank(), num_examples, distributed.world_size())
    return ShardPoissonSampler(shard=shard, sample_rate=sample_rate, steps=steps, generator=torch_noise_generator())


def dp_sgd_step(
    *,
    model: torch.nn.Module,
    optimizer: DPOptimizer,
    per_example_loss: PerExampleLoss,
    batch_indices: Sequence[int],
    load_inputs: LoadInputs,
    physical_batch_size: int,
    multiplicity_chunk: int | None = None,
    before_release: Callable[[list[torch.Tensor]], None] | None = None,
) -> None:
    """One logical DP-SGD step (Algorithm 1): clip per sample, sum over chunks, one noise draw, update.

    Args:
        model: the module whose per-sample gradients are taken (the parameters
            ``optimizer`` updates).
        optimizer: a ``DPOptimizer``.
        per_example_loss: ``(model call, *inputs) -> losses of shape (B,)``.
        batch_indices: rows of the logical batch (the Poisson-sampled sensitive rows,
            plus whatever rows the caller's ``load_inputs`` understands); may be empty.
        load_inputs: maps rows to the loss's input tensors.
        physical_batch_size: largest chunk that is run at once.
        multiplicity_chunk: noise draws of each image run at once (diffusion losses
            only; `privimage.dp.compute_per_sample_gradients`); None: all K.
        before_release: called once with the released update (the noisy gradient
            divided by the expected batch size, all ranks' sums included, one
            tensor per parameter in the optimizer's order) after the noise is
            drawn and before the update is applied; the journal and the ledger
            record the step here. If it raises, nothing is applied.
    """

    indices = np.asarray(batch_indices, dtype=np.int64)
    # An empty Poisson batch is still a noisy step: noise on a zero sum.
    chunks = np.array_split(indices, math.ceil(len(indices) / physical_batch_size)) if len(indices) else [indices]
    for position, chunk in enumerate(chunks):
        is_last = position == len(chunks) - 1
        if len(chunk):
            compute_per_sample_gradients(model, per_example_loss, *load_inputs(chunk),
                                         multiplicity_chunk=multiplicity_chunk)
        else:
            for parameter in optimizer.params:
                parameter.grad_sample = torch.zeros((0, *parameter.shape), device=parameter.device,
                                                    dtype=parameter.dtype)
        # Chunks before the last only clip and accumulate (opacus BatchMemoryManager protocol).
        optimizer.signal_skip_step(do_skip=not is_last)
        if not is_last:
            optimizer.step()
        else:
            _release_and_apply(optimizer, before_release)
        optimizer.zero_grad(set_to_none=True)


def _release_and_apply(optimizer: DPOptimizer, before_release: Callable[[list[torch.Tensor]], None] | None) -> None:
    """opacus's ``DPOptimizer.step`` opened up, so the noisy update can be recorded between noise and update."""
    # Clip and accumulate the last chunk, draw the noise once, divide by the expected batch size.
    if not optimizer.pre_step():
        return
    if isinstance(optimizer, DistributedDPOptimizer):
        # The noisy sum of every rank's rows: what every rank applies, and what the journal keeps.
        optimizer.reduce_gradients()
    if before_release is not None:
        before_release([parameter.grad for parameter in optimizer.params])
    optimizer.original_optimizer.step()


def apply_released_update(*, optimizer: DPOptimizer, update: Sequence[torch.Tensor]) -> None:
    """Apply a journalled noisy update exactly as the live step applied it: no data read, no noise drawn.

    Args:
        optimizer: the run's ``DPOptimizer``, in the state it had before the step
            (restored from the checkpoint, then earlier replayed steps).
        update: the released update of the step, one tensor per parameter in the
            optimizer's order (`privimage.training.journal.DPStepJournal.load_update`).
    """
    parameters = optimizer.params
    if len(update) != len(parameters) or any(u.shape != p.shape for u, p in zip(update, parameters)):
        raise PrivacyError(f"a released update of {len(update)} tensors does not fit this model's "
                           f"{len(parameters)} trained parameters; the journal belongs to another model")
    for parameter, released in zip(parameters, update):
        parameter.grad = released.to(device=parameter.device, dtype=parameter.dtype)
    # The same AdamW step, on the same gradient, from the same optimizer state: the same parameters.
    optimizer.original_optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _seed_step(*, seed: int, stage: str, step: int, phase: str) -> None:
    """Seed the non-private randomness of one phase of one step from (seed, stage, step, rank).

    The diffusion noise and timesteps and a GAN's latents are post-processing of
    nothing sensitive. Seeding them afresh at every step means a replayed step's
    post-processing draws what the live one drew, and no generator state that
    depends on the realised batch size reaches a later step or a checkpoint.
    """
    digest = hashlib.sha256(f"{stage_seed(seed, stage)}:{phase}:{int(step)}".encode()).digest()
    seed_training_randomness(distributed.rank_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)))


@dataclass(frozen=True)
class DPAccount:
    """The mechanism of one fine-tuning run, fixed before its first step (paper Appendix E).

    Args:
        stage, seed: the stage's name and the experiment seed of its non-private randomness.
        num_examples: N, the size of the sensitive training set.
        sample_rate, total_steps: q and T (`privimage.training.plan.finetune_schedule`).
        noise_multiplier: sigma, calibrated so that the ledger plus T steps meet the target.
        noise_generator: the ledger's name for the source of the noise (`noise_generator_name`).
        ledger_before: the run's ledger as it was before fine-tuning (``PrivacyLedger.to_dict``).
        expect: what a checkpoint of this run must hold: ``stage``, ``run_hash``, ``dataset_hash``.
    """

    stage: str
    seed: int
    num_examples: int
    sample_rate: float
    total_steps: int
    noise_multiplier: float
    noise_generator: str
    ledger_before: Mapping[str, Any]
    expect: Mapping[str, str]

    def charge(self, ledger, *, steps: int) -> None:
        """Record ``steps`` released DP-SGD steps of this run in ``ledger``."""
        ledger.record_dpsgd_steps(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                                  steps=steps, generator=self.noise_generator)


@dataclass
class DPRunState:
    """What the steps of one session of a DP-SGD run share, and what its checkpoints save.

    The counters follow the journal: every released step is charged to
    ``ledger`` once, and ``position`` names the journal line whose update the
    model's weights end with (the checkpoint's, then each replayed or live step's).
    """

    account: DPAccount
    settings: FinetuneConfig
    run_dir: Path
    model: torch.nn.Module
    ema: Any | None
    extra_state: dict[str, Any]
    ledger: Any
    after_step: Callable[[int], None] | None
    progress: bool
    # Taken when the session starts: inside `distributed.main_only` rank 0 counts as one process.
    world_size: int = field(default_factory=lambda: distributed.world_size())
    session_start: float = field(default_factory=lambda: time.perf_counter())
    optimizer: DPOptimizer | None = None
    # Rank 0's journal; None on the other ranks.
    journal: DPStepJournal | None = None
    bar: Any = None
    # Steps the model holds: the checkpoint's, then one more per replayed and per live step.
    start_step: int = 0
    resumed_from_step: int = 0
    # The checkpoint's statistics of earlier sessions (their number and wall time).
    previous: dict[str, Any] = field(default_factory=dict)
    # Journal lines written after the checkpoint, to apply again on top of it.
    replay: list[dict[str, Any]] = field(default_factory=list)
    released_steps: int = 0
    position: int = 0


def run_dp_sgd(
    *, stage: str, model: torch.nn.Module, ema: Any | None, per_example_loss: PerExampleLoss,
    load_inputs: LoadInputs, sensitive: ImageDataset, ledger, settings: FinetuneConfig, lr: float,
    epochs: float, target_epsilon: float, run_dir: Path, seed: int, identity: Mapping[str, Any],
    extra_state: Mapping[str, Any] | None = None, after_step: Callable[[int], None] | None = None,
    batch_rows: Callable[[list[int]], np.ndarray] | None = None, betas: tuple[float, float] = DIFFUSION_BETAS,
    multiplicity_chunk: int | None = None, progress: bool = True,
) -> dict[str, Any]:
    """The DP-SGD fine-tuning loop with journal, ledger, checkpoints and resume.

    Re-running the same call with the same ``run_dir`` resumes from the newest
    readable checkpoint and replays the updates the journal released after it
    (no sensitive data read, no new noise); the ledger is charged once for every
    step in the journal, so a resumed run spends what an uninterrupted one does.
    Only a step whose update cannot be replayed (`privimage.training.journal`) is
    taken again, and stays charged twice. Under torchrun every rank calls it with
    the same arguments and ends with the same weights and ledger (the caller
    writes it from rank 0); the number of processes may change on resume.

    Args:
        stage: name of the stage (checkpoints of another stage are refused).
        model: the module trained with DP-SGD (the diffusion model, or a GAN's discriminator).
        ema: a moving average of ``model`` with ``update(model)``, ``state_dict()``
            and ``load_state_dict()``, or None.
        per_example_loss: ``(model call, *inputs) -> (B,)`` losses.
        load_inputs: rows of ``sensitive`` -> the loss's inputs.
        sensitive: the sensitive training set.
        ledger: the run's `PrivacyLedger`, before fine-tuning; it is charged in place.
        settings: fine-tuning settings (batch sizes, clipping, secure mode, ...).
        lr, betas: AdamW's learning rate and betas.
        epochs: passes over the sensitive data.
        target_epsilon: epsilon of the whole run (query plus DP-SGD).
        run_dir: where checkpoints, the journal and ``resources.json`` go.
        seed: experiment seed of the non-private randomness (never of DP noise).
        identity: config that must match for a checkpoint to be resumed.
        extra_state: other objects with ``state_dict``/``load_state_dict`` to checkpoint
            (a GAN's generator and its optimizer).
        after_step: called with the number of completed steps after each logical step,
            replayed ones included (a GAN's generator step), its non-private
            randomness seeded from the step so that a replay draws what the live step did.
        batch_rows: maps the Poisson-sampled rows to the rows ``load_inputs`` receives
            (the GAN adds a fixed number of generated rows); identity if None.
        multiplicity_chunk: noise draws of each image run at once (`dp_sgd_step`); None: all K.
        progress: show a tqdm bar.

    Returns:
        Statistics of the run (steps, sigma, q, epsilon, released, replayed and
        lost steps, time, memory, ...).
    """
    # Check the ledger, the model and the settings; calibrate sigma to the target (Appendix E).
    _check_run_inputs(model=model, sensitive=sensitive, ledger=ledger, settings=settings)
    account = open_dp_account(stage=stage, seed=seed, sensitive=sensitive, ledger=ledger, settings=settings,
                              epochs=epochs, target_epsilon=target_epsilon, identity=identity)
    run = DPRunState(account=account, settings=settings, run_dir=Path(run_dir), model=model, ema=ema,
                     extra_state=dict(extra_state or {}), ledger=ledger, after_step=after_step,
                     progress=progress and distributed.is_main_process())
    records: list[dict] = []
    with measure_stage("finetuning", log=records):
        try:
            # Open the journal, restore the newest checkpoint, charge every step released so far.
            resume_dp_run(run, lr=lr, betas=betas)
            # Replay the updates released after the checkpoint, then take the remaining steps.
            model.train()
            run.bar = progress_bar(total=account.total_steps, initial=run.start_step, desc=stage,
                                   enabled=run.progress)
            replay_released_steps(run)
            train_dp_steps(run, per_example_loss=per_example_loss, load_inputs=load_inputs,
                           batch_rows=batch_rows or _sampled_rows, multiplicity_chunk=multiplicity_chunk)
            run.bar.close()
        finally:
            if run.journal is not None:
                run.journal.close()
    # Report what the run spent, with the time of every session.
    return finish_dp_run(run, usage=records[-1], target_epsilon=target_epsilon)


def _sampled_rows(rows: list[int]) -> np.ndarray:
    """The rows ``load_inputs`` receives when the caller adds none: the Poisson-sampled ones."""
    return np.asarray(rows, dtype=np.int64)


def _check_run_inputs(*, model: torch.nn.Module, sensitive: ImageDataset, ledger, settings: FinetuneConfig) -> None:
    """Refuse a ledger of another run, a model that mixes samples, or settings that cannot run."""
    _check_ledger_matches(ledger, sensitive=sensitive, delta=settings.delta)
    check_dp_compatible(model)
    if settings.physical_batch_size < 1:
        raise ConfigError(f"finetune.physical_batch_size must be >= 1, got {settings.physical_batch_size}")
    if settings.checkpoint_every < 1:
        raise ConfigError(f"finetune.checkpoint_every must be >= 1, got {settings.checkpoint_every}")


def open_dp_account(
    *,
    stage: str,
    seed: int,
    sensitive: ImageDataset,
    ledger,
    settings: FinetuneConfig,
    epochs: float,
    target_epsilon: float,
    identity: Mapping[str, Any],
) -> DPAccount:
    """q, T and sigma of a fine-tuning run, and what its checkpoints must match (paper Appendix E).

    Args:
        stage, seed, sensitive, ledger, settings, epochs, target_epsilon, identity: as `run_dp_sgd` takes them;
            the ledger is read, not charged.

    Returns:
        The run's `DPAccount`.
    """
    num_examples = len(sensitive)
    sample_rate, total_steps = finetune_schedule(
        num_examples=num_examples, batch_size=settings.batch_size, epochs=epochs
    )
    # sigma from the target, given the query already in the ledger.
    noise_multiplier = calibrate_to_ledger(
        ledger=ledger, target_epsilon=target_epsilon, sample_rate=sample_rate, steps=total_steps
    )
    # A checkpoint resumes across memory-only settings (`without_cost_only_settings`).
    identity = {**identity, **({"finetune": without_cost_only_settings(identity["finetune"])}
                               if "finetune" in identity else {})}
    run_hash = config_hash({"stage": stage, "seed": seed, "target_epsilon": target_epsilon, **identity})
    return DPAccount(
        stage=stage, seed=seed, num_examples=num_examples, sample_rate=sample_rate, total_steps=total_steps,
        noise_multiplier=noise_multiplier, noise_generator=noise_generator_name(secure_mode=settings.secure_mode),
        ledger_before=ledger.to_dict(),
        expect={"stage": stage, "run_hash": run_hash, "dataset_hash": sensitive.content_hash()},
    )


def resume_dp_run(run: DPRunState, *, lr: float, betas: tuple[float, float]) -> None:
    """Start or resume a session: the journal, the optimizer, the newest checkpoint and the charge so far.

    Sets ``run``'s journal (rank 0), optimizer, start step, earlier sessions'
    statistics and the updates to replay, and charges ``run.ledger`` once for
    every step the journal lists, replayable or not.

    Args:
        run: the session, with its account and nothing trained yet.
        lr, betas: AdamW's learning rate and betas.
    """
    settings, account = run.settings, run.account
    journal_steps, checkpoint, run.replay = distributed.main_only(lambda: _open_journal(run))
    device = next(run.model.parameters()).device
    run.optimizer = make_dp_optimizer(
        parameters=[p for p in run.model.parameters() if p.requires_grad], lr=lr,
        weight_decay=settings.weight_decay,
        noise_multiplier=account.noise_multiplier, max_grad_norm=settings.max_grad_norm,
        expected_batch_size=settings.batch_size, secure_mode=settings.secure_mode, device=device, betas=betas,
    )
    if checkpoint is None:
        # Every rank starts from rank 0's weights (what opacus's DPDDP wrapper does).
        _share_rank0_weights(run.model, run.ema, run.extra_state)
    else:
        _restore_checkpoint(run, checkpoint)
    # Every released step is charged once, those about to be replayed and any that cannot be.
    if journal_steps:
        account.charge(run.ledger, steps=journal_steps)
    run.released_steps = journal_steps
    run.position = checkpoint_position(checkpoint)
    run.resumed_from_step = run.start_step


def _open_journal(run: DPRunState) -> tuple[int, dict[str, Any] | None, list[dict[str, Any]]]:
    """Rank 0: the journal, the newest checkpoint checked against it, and the updates to replay on top.

    The journal comes first: it is the durable count of released steps, and the
    run folder's lock. It is kept in ``run`` as soon as it is open, so that the
    caller closes it whatever fails after.

    Returns:
        ``(steps the journal lists, the checkpoint or None, the replay plan's entries as dicts)``.
    """
    account = run.account
    run.journal = DPStepJournal(run.run_dir / JOURNAL_NAME, header={
        **account.expect, "noise_multiplier": account.noise_multiplier, "sample_rate": account.sample_rate,
        "total_steps": account.total_steps,
    })
    found = load_latest_checkpoint(run_dir=run.run_dir, expect=account.expect)
    if found is not None:
        _check_checkpoint_account(found, journal=run.journal, account=account)
    plan = run.journal.replay_plan(checkpoint_step=int(found["step"]) if found else 0,
                                   position=checkpoint_position(found))
    return run.journal.steps, found, [entry.to_dict() for entry in plan]


def _restore_checkpoint(run: DPRunState, checkpoint: Mapping[str, Any]) -> None:
    """Load a checkpoint's weights, optimizer state and extra objects into ``run``."""
    run.start_step, run.previous = int(checkpoint["step"]), dict(checkpoint["stats"])
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    if run.ema is not None:
        run.ema.load_state_dict(checkpoint["ema"])
    for name, obj in run.extra_state.items():
        obj.load_state_dict(checkpoint["extra"][name])


def replay_released_steps(run: DPRunState) -> None:
    """Apply again the updates released after the checkpoint: no sensitive data read, no noise drawn, nothing charged.

    Args:
        run: the session as `resume_dp_run` left it; its start step and journal
            position advance with every replayed update.
    """
    for entry in run.replay:
        update = distributed.main_only(lambda entry=entry: run.journal.load_update(JournalEntry(**entry)))
        apply_released_update(optimizer=run.optimizer, update=update)
        run.start_step, run.position = run.start_step + 1, int(entry["release"])
        finish_dp_step(run, run.start_step)


def train_dp_steps(
    run: DPRunState,
    *,
    per_example_loss: PerExampleLoss,
    load_inputs: LoadInputs,
    batch_rows: Callable[[list[int]], np.ndarray],
    multiplicity_chunk: int | None,
) -> None:
    """The live DP-SGD steps from ``run.start_step + 1`` to T (Algorithm 1), each released before it is applied.

    Args:
        run: the session after its replay.
        per_example_loss, load_inputs, batch_rows, multiplicity_chunk: as `run_dp_sgd` takes them.
    """
    account, settings = run.account, run.settings
    remaining = account.total_steps - run.start_step
    if remaining <= 0:
        return
    sampler = iter(poisson_sampler(num_examples=account.num_examples, sample_rate=account.sample_rate,
                                   steps=remaining))
    for step in range(run.start_step + 1, account.total_steps + 1):
        _seed_step(seed=account.seed, stage=account.stage, step=step, phase="dp_step")
        dp_sgd_step(
            model=run.model, optimizer=run.optimizer, per_example_loss=per_example_loss,
            batch_indices=batch_rows(next(sampler)), load_inputs=load_inputs,
            physical_batch_size=settings.physical_batch_size, multiplicity_chunk=multiplicity_chunk,
            before_release=lambda update, step=step: release_dp_step(run, step=step, update=update),
        )
        finish_dp_step(run, step)


def release_dp_step(run: DPRunState, *, step: int, update: list[torch.Tensor]) -> None:
    """Journal and charge the noisy update of live step ``step``, before any rank applies it.

    Args:
        run: the session.
        step: the logical step (1-based).
        update: the released update (`dp_sgd_step`'s ``before_release``).
    """
    # Rank 0 writes the update and its journal line; its failure reaches all.
    def record() -> None:
        run.journal.record_step(step=step, update=update)

    distributed.main_only(record)
    run.account.charge(run.ledger, steps=1)
    run.released_steps += 1
    run.position = run.released_steps


def finish_dp_step(run: DPRunState, step: int) -> None:
    """Post-processing of a released update, the same for a live and a replayed step: EMA, after_step, checkpoint."""
    if run.ema is not None:
        run.ema.update(run.model)
    if run.after_step is not None:
        _seed_step(seed=run.account.seed, stage=run.account.stage, step=step, phase="after_step")
        run.after_step(step)
    if step % run.settings.checkpoint_every == 0 or step == run.account.total_steps:
        write_dp_checkpoint(run, step)
        if run.progress:
            # Epsilon so far costs an RDP evaluation; only worth it when someone watches.
            run.bar.set_postfix(epsilon=f"{run.ledger.epsilon():.3f}")
    run.bar.update(1)


def write_dp_checkpoint(run: DPRunState, step: int) -> None:
    """Checkpoint the session after ``step``: weights, optimizer, ledger and journal position.

    Rank 0 writes; the others wait for it (and learn if it failed).
    """
    account, previous = run.account, run.previous

    def save() -> None:
        save_checkpoint(run_dir=run.run_dir, step=step, payload={
            **account.expect,
            "total_steps": account.total_steps,
            "noise_multiplier": account.noise_multiplier,
            "sample_rate": account.sample_rate,
            "journal_steps": run.released_steps,
            "journal_position": run.position,
            "ledger": run.ledger.to_dict(),
            "model": run.model.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else {},
            "optimizer": run.optimizer.state_dict(),
            "extra": {name: obj.state_dict() for name, obj in run.extra_state.items()},
            "world_size": run.world_size,
            "stats": {
                "sessions": previous.get("sessions", 0) + 1,
                "wall_time_s": previous.get("wall_time_s", 0.0) + time.perf_counter() - run.session_start,
            },
        })
        # Updates the checkpoint a resume may fall back to already holds are redundant.
        fallback = checkpoint_steps(run.run_dir)[1:2]
        run.journal.prune_updates(through_step=fallback[0] if fallback else 0)

    distributed.main_only(save)


def finish_dp_run(run: DPRunState, *, usage: Mapping[str, Any], target_epsilon: float) -> dict[str, Any]:
    """The run's statistics; rank 0 writes its resources record.

    Args:
        run: the session after its last step.
        usage: this session's time and memory (`privimage.resource_usage.measure_stage`).
        target_epsilon: epsilon of the whole run.

    Returns:
        The statistics `run_dp_sgd` returns.
    """
    account, ledger, stage = run.account, run.ledger, run.account.stage
    epsilon = ledger.epsilon()
    stats = {
        "stage": stage,
        "private": True,
        "steps": account.total_steps,
        "resumed_from_step": run.resumed_from_step,
        "replayed_steps": len(run.replay),
        "released_steps": run.released_steps,
        # Charged but not part of the trained model: released, then neither kept nor replayable.
        "lost_steps_charged": run.released_steps - account.total_steps,
        "sample_rate": account.sample_rate,
        "expected_batch_size": run.settings.batch_size,
        "world_size": run.world_size,
        "noise_multiplier": account.noise_multiplier,
        "max_grad_norm": run.settings.max_grad_norm,
        "noise_generator": account.noise_generator,
        "target_epsilon": target_epsilon,
        "epsilon": epsilon,
        "delta": ledger.delta,
        "run_dir": str(run.run_dir),
        "resources": usage,
        # Table 4 counts the whole stage: earlier sessions up to their last checkpoint, plus this one.
        "wall_time_s_all_sessions": run.previous.get("wall_time_s", 0.0) + usage["wall_time_s"],
    }
    if distributed.is_main_process():
        write_resources(run.run_dir, stage, {**usage, "wall_time_s_all_sessions": stats["wall_time_s_all_sessions"]})
    if run.progress:
        run.bar.write(f"{stage}: {account.total_steps} DP-SGD steps, epsilon {epsilon:.3f} (delta {ledger.delta:g}); "
                      f"checkpoints in {run.run_dir}", file=sys.stderr)
    return stats


def _share_rank0_weights(model: torch.nn.Module, ema: Any | None, extra_state: Mapping[str, Any]) -> None:
    """Give every rank rank 0's starting weights: the model, its EMA copy and any extra networks."""
    distributed.broadcast_module(model)
    if isinstance(getattr(ema, "model", None), torch.nn.Module):
        distributed.broadcast_module(ema.model)
    for obj in extra_state.values():
        if isinstance(obj, torch.nn.Module):
            distributed.broadcast_module(obj)


def _check_ledger_matches(ledger, *, sensitive: ImageDataset, delta: float) -> None:
    """The ledger must describe this sensitive set and this run's delta."""
    if ledger.dataset_hash != sensitive.content_hash():
        raise PrivacyError(
            f"the ledger is for sensitive dataset {ledger.dataset_hash[:12]}, not "
            f"{sensitive.name}/{sensitive.split} ({sensitive.content_hash()[:12]})"
        )
    if ledger.num_examples != len(sensitive):
        raise PrivacyError(
            f"the ledger counts {ledger.num_examples} sensitive examples, the dataset has {len(sensitive)}"
        )
    if not math.isclose(ledger.delta, delta, rel_tol=1e-12):
        raise PrivacyError(f"the ledger's delta {ledger.delta:g} differs from finetune.delta {delta:g}")


def _check_checkpoint_account(checkpoint: Mapping[str, Any], *, journal: DPStepJournal, account: DPAccount) -> None:
    """A resumed checkpoint's ledger must be this run's ledger plus the steps its journal listed then."""

    steps_then = int(checkpoint["journal_steps"])
    # The journal's rule, shared with `privimage audit`; the ledger comparison below then checks the charges.
    problem = checkpoint_account_problem(checkpoint, charged_steps=steps_then, journal_steps=journal.steps)
    if problem is not None:
        raise PrivacyError(f"checkpoint step {checkpoint['step']}: {problem}; the journal was replaced or "
                           "truncated, or the folder mixes two runs, so use a fresh run folder")
    expected = PrivacyLedger.from_dict(account.ledger_before)
    account.charge(expected, steps=steps_then)
    stored = PrivacyLedger.from_dict(checkpoint["ledger"])
    if _ledger_without_timestamps(stored) != _ledger_without_timestamps(expected):
        raise PrivacyError(
            f"checkpoint step {checkpoint['step']}: its privacy ledger disagrees with this run's "
            "(another query, delta or dataset); use a fresh run folder"
        )


def _ledger_without_timestamps(ledger) -> dict[str, Any]:
    """A whole ledger's account of the run without its timestamps, for comparing two accounts of it."""
    return {
        "delta": ledger.delta,
        "dataset_hash": ledger.dataset_hash,
        "num_examples": ledger.num_examples,
        "config_hash": ledger.config_hash,
        "entries": [{k: v for k, v in entry.items() if "time" not in k} for entry in ledger.entries],
    }
