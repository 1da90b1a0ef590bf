"""The non-private training loop: pre-training on public data, and NonPriv fine-tuning.

A fixed number of steps whatever the dataset size (the paper compares
pre-training data at equal budget), mini-batches drawn without replacement
from per-epoch permutations that are a pure function of the seed and the
epoch, so a run resumed from a checkpoint at step s continues with exactly the
batches an uninterrupted run would have used. Checkpoints, resume and the
resources record work as in the DP loop, without a ledger: nothing here is
private, and nothing here may be given the sensitive set except the NonPriv
baselines, which say that they have no privacy guarantee.

Under torchrun (`privimage.distributed`) the global batch of a step is the same
as with one process; rank r trains on its strided share ``rows[r::W]``, back-
propagates its rows' losses divided by the *global* batch size and the ranks
all-reduce the gradients (`privimage.distributed.sum_gradients_over_ranks`), so the update is the
single-process one whatever W is, and a run may resume with another W.

Why not DDP and ``DistributedSampler``: DDP's reducer fires on every backward
pass and needs every rank to run the same number of them, while our steps
accumulate over a varying number of physical chunks per rank and the GAN step
runs the discriminator twice per backward; one all-reduce of the accumulated
gradients per step is the same collective, issued once. ``DistributedSampler``
re-partitions (and pads) each epoch by W, so the batches would change with the
number of processes and a resume with another W would not continue the run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from privimage import distributed
from privimage.config import config_hash
from privimage.data.base import ImageDataset
from privimage.errors import ConfigError, DataError
from privimage.resource_usage import measure_stage
from privimage.seeding import seed_training_randomness, stage_seed
from privimage.training.checkpoint import load_latest_checkpoint, save_checkpoint
from privimage.training.common import progress_bar, write_resources

# One training step on this rank's share of the step's rows: (step number, row indices) -> losses to report.
TrainStep = Callable[[int, np.ndarray], Mapping[str, float]]


class EpochBatches:
    """Mini-batches of a fixed size from a fresh permutation each epoch, indexable by step.

    Args:
        num_examples: dataset size N.
        batch_size: rows per step (may exceed N; batches then span epochs).
        seed: permutation of epoch e is drawn from a generator seeded with (seed, e).
    """

    def __init__(self, *, num_examples: int, batch_size: int, seed: int) -> None:
        if num_examples < 1:
            raise DataError("cannot train on an empty dataset")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
            self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        return self._cache[epoch]

    def batch(self, step: int) -> np.ndarray:
        """Rows of step ``step`` (1-based), continuing across epoch boundaries."""
        start = (step - 1) * self.batch_size
        rows = []
        while len(rows) < self.batch_size:
            epoch, offset = divmod(start, self.num_examples)
            take = min(self.batch_size - len(rows), self.num_examples - offset)
            rows.extend(self._permutation(epoch)[offset:offset + take])
            start += take
        return np.asarray(rows, dtype=np.int64)


def run_plain_training(
    *,
    stage: str,
    dataset: ImageDataset,
    steps: int,
    batch_size: int,
    train_step: TrainStep,
    state: Mapping[str, Any],
    run_dir: Path,
    seed: int,
    identity: Mapping[str, Any],
    checkpoint_every: int,
    resource_stage: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Train for ``steps`` steps with checkpoints every ``checkpoint_every`` and resume.

    Args:
        stage: name of the stage (checkpoints of another stage are refused).
        dataset: the training data.
        steps: number of optimisation steps.
        batch_size: rows per step (over all ranks under torchrun).
        train_step: performs one step (forward, backward, optimizer, EMA) on this
            rank's share of the batch; it divides by ``batch_size`` and calls
            `sum_gradients_over_ranks` before its optimizer steps.
        state: objects with ``state_dict``/``load_state_dict`` that a checkpoint saves
            (models, EMA, optimizers).
        run_dir: where checkpoints and ``resources.json`` go.
        seed: experiment seed (initialisation is the caller's; batch order and
            training noise derive from it).
        identity: config that must match for a checkpoint to be resumed.
        checkpoint_every: steps between checkpoints.
        resource_stage: the stage's name in paper Table 4 (``pretraining``, ``finetuning``).
        progress: show a tqdm bar.

    Returns:
        Statistics: steps, last losses, time and memory.
    """
    if steps < 0:
        raise ConfigError(f"{stage}: steps must be >= 0, got {steps}")
    if checkpoint_every < 1:
        raise ConfigError(f"{stage}: checkpoint_every must be >= 1, got {checkpoint_every}")
    run_dir = Path(run_dir)
    run_hash = config_hash({"stage": stage, "seed": seed, **identity})
    expect = {"stage": stage, "run_hash": run_hash, "dataset_hash": dataset.content_hash()}
    batches = EpochBatches(num_examples=len(dataset), batch_size=batch_size, seed=stage_seed(seed, stage))

    records: list[dict] = []
    session_start = time.perf_counter()
    progress = progress and distributed.is_main_process()
    with measure_stage(resource_stage, log=records):
        # Restore the newest checkpoint, or start every rank from rank 0's weights.
        start_step, losses, earlier_wall_time = _start_or_resume(run_dir=run_dir, expect=expect, state=state,
                                                                 seed=seed, stage=stage)
        # The remaining steps, with a checkpoint every checkpoint_every steps and after the last.
        bar = progress_bar(total=steps, initial=start_step, desc=stage, enabled=progress)
        for step in range(start_step + 1, steps + 1):
            rows = distributed.rows_of_this_rank(batches.batch(step))
            losses = {key: float(value) for key, value in train_step(step, rows).items()}
            if step % checkpoint_every == 0 or step == steps:
                _write_checkpoint(run_dir=run_dir, step=step, expect=expect, total_steps=steps, state=state,
                                  losses=losses, earlier_wall_time=earlier_wall_time,
                                  session_start=session_start)
            bar.set_postfix({key: f"{value:.4f}" for key, value in losses.items()}, refresh=False)
            bar.update(1)
        bar.close()
    return _finish_stage(stage=stage, dataset=dataset, steps=steps, batch_size=batch_size, start_step=start_step,
                         losses=losses, run_dir=run_dir, usage=records[-1], earlier_wall_time=earlier_wall_time,
                         bar=bar, progress=progress)


def _finish_stage(*, stage: str, dataset: ImageDataset, steps: int, batch_size: int, start_step: int,
                  losses: Mapping[str, float], run_dir: Path, usage: Mapping[str, Any], earlier_wall_time: float,
                  bar, progress: bool) -> dict[str, Any]:
    """The stage's statistics; rank 0 writes its resources record, and the bar says where the outputs went."""
    # Table 4 counts the whole stage: earlier sessions up to their last checkpoint, plus this one.
    all_sessions = earlier_wall_time + usage["wall_time_s"]
    if distributed.is_main_process():
        write_resources(run_dir, stage, {**usage, "wall_time_s_all_sessions": all_sessions})
    if progress:
        bar.write(f"{stage}: {steps} steps on {dataset.name}/{dataset.split} ({len(dataset)} images); "
                  f"checkpoints in {run_dir}", file=sys.stderr)
    return {
        "stage": stage,
        "steps": steps,
        "resumed_from_step": start_step,
        "batch_size": batch_size,
        "world_size": distributed.world_size(),
        "dataset": f"{dataset.name}/{dataset.split}",
        "num_examples": len(dataset),
        "final_losses": losses,
        "run_dir": str(run_dir),
        "resources": usage,
        "wall_time_s_all_sessions": all_sessions,
    }


def _start_or_resume(*, run_dir: Path, expect: Mapping[str, Any], state: Mapping[str, Any], seed: int,
                     stage: str) -> tuple[int, dict[str, float], float]:
    """Restore the newest checkpoint into ``state`` and every rank's RNG, or seed a fresh start.

    Returns:
        ``(steps done, the losses of the last of them, wall time of the earlier sessions)``.
    """
    # Rank 0 reads the folder and hands the checkpoint to every rank (nodes need not share a disk).
    checkpoint = distributed.main_only(lambda: load_latest_checkpoint(run_dir=run_dir, expect=expect))
    if checkpoint is None:
        seed_training_randomness(distributed.rank_seed(stage_seed(seed, stage)))
        # Every rank starts from rank 0's weights.
        for obj in state.values():
            module = obj if isinstance(obj, torch.nn.Module) else getattr(obj, "model", None)
            if isinstance(module, torch.nn.Module):
                distributed.broadcast_module(module)
        return 0, {}, 0.0
    start_step = int(checkpoint["step"])
    for name, obj in state.items():
        obj.load_state_dict(checkpoint["state"][name])
    distributed.restore_rank_rng(saved=checkpoint.get("rng_by_rank") or [checkpoint["rng"]],
                                 seed=stage_seed(seed, stage), step=start_step)
    return start_step, dict(checkpoint["losses"]), float(checkpoint["wall_time_s"])


def _write_checkpoint(*, run_dir: Path, step: int, expect: Mapping[str, Any], total_steps: int,
                      state: Mapping[str, Any], losses: Mapping[str, float], earlier_wall_time: float,
                      session_start: float) -> None:
    """Checkpoint ``state``, every rank's RNG stream, the step's losses and the stage's wall time so far."""
    # A collective (every rank's RNG stream), then rank 0 writes while the others wait.
    rng_states = distributed.rng_states_of_all_ranks()
    payload = {
        **expect,
        "total_steps": total_steps,
        "state": {name: obj.state_dict() for name, obj in state.items()},
        "rng": rng_states[0],
        "rng_by_rank": rng_states,
        "world_size": distributed.world_size(),
        "losses": losses,
        "wall_time_s": earlier_wall_time + time.perf_counter() - session_start,
    }
    distributed.main_only(lambda: _save(run_dir, step, payload))


def _save(run_dir: Path, step: int, payload: Mapping[str, Any]) -> None:
    save_checkpoint(run_dir=run_dir, step=step, payload=payload)


def chunked(indices: np.ndarray, physical_batch_size: int) -> list[np.ndarray]:
    """Split a batch into chunks of at most ``physical_batch_size`` rows (all rows if it is 0)."""
    if physical_batch_size <= 0 or len(indices) <= physical_batch_size:
        return [indices]
    return np.array_split(indices, -(-len(indices) // physical_batch_size))


def accumulate_mean_loss(
    loss_fn: Callable[[np.ndarray], torch.Tensor],
    indices: np.ndarray,
    physical_batch_size: int,
    *,
    batch_size: int | None = None,
) -> float:
    """Backpropagate the batch-mean loss (this rank's share of it) chunk by chunk; return that share.

    Args:
        loss_fn: rows -> per-example losses (shape B).
        indices: the rows this process trains on (its share of the step's batch).
        physical_batch_size: chunk size (0: the whole batch at once).
        batch_size: the step's batch size over all ranks, the mean's divisor
            (default: ``len(indices)``, the whole batch of a single process).

    Returns:
        This process's share of the mean loss (the mean itself with one process).
    """
    divisor = batch_size if batch_size is not None else len(indices)
    total = 0.0
    for chunk in chunked(indices, physical_batch_size):
        if len(chunk) == 0:
            # A rank whose share is empty contributes no gradient (zeros in the all-reduce).
            continue
        # Weight each chunk by its share so the gradients add up to the batch mean's.
        chunk_loss = loss_fn(chunk).sum() / divisor
        chunk_loss.backward()
        total += float(chunk_loss.detach())
    return total
