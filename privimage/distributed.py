"""Several processes, one run: torchrun's process group, rank 0's writes, and the collectives we use.

``torchrun --nproc_per_node N [--nnodes M ...] -m privimage run ...`` starts
N x M copies of the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set. `setup` joins that process group
(NCCL when CUDA is available, else gloo) and is a no-op for a plain
``python -m privimage`` run, so every function below also works with one
process, where it does nothing or returns its input.

Who does what in a distributed run:

- every rank trains: non-private stages each take a strided share of the same
  global batch and all-reduce their gradients; DP-SGD each Poisson-samples its
  shard and opacus's ``DistributedDPOptimizer`` adds the noise on rank 0 only;
- rank 0 alone reads and writes run folders, caches, checkpoints, the DP-SGD
  journal and the ledger file, and makes every decision that depends on the
  disk (is this stage cached? which checkpoint resumes?); the outcome is
  broadcast (`main_only`), so nodes need not share a filesystem;
- rank 0 alone draws the semantic query's noisy histogram (other ranks receive
  the release, never a second noisy copy), samples and evaluates.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from privimage import errors
from privimage.errors import ConfigError, DataError, PrivImageError
from privimage.seeding import restore_rng_state, rng_state, seed_training_randomness

T = TypeVar("T")

# torchrun's variables; all must be present once WORLD_SIZE says there are several processes.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Rank-0-only phases (the semantic query, a checkpoint write) keep the others waiting: be patient.
DEFAULT_TIMEOUT = timedelta(hours=2)
# Gradients are all-reduced in buckets of at most this many elements (bounded extra memory).
BUCKET_ELEMENTS = 1 << 24
# Depth of `main_only` sections running on rank 0: inside one, this process acts alone.
_alone_depth = 0


# --------------------------------------------------------------------------- the process group


def launched_world_size() -> int:
    """``WORLD_SIZE`` as the launcher set it (1 when not launched by torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be a positive integer, got {value!r}") from None
    if size < 1:
        raise ConfigError(f"WORLD_SIZE must be a positive integer, got {value!r}")
    return size


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process, outside a `main_only` section."""
    return _alone_depth == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes taking part in this run (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's rank on its node: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0, the only process that writes files and draws rank-0-only noise."""
    return rank() == 0


def device() -> torch.device:
    """Where this process trains: its own GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() if is_distributed() else torch.cuda.current_device())
    return torch.device("cpu")


def setup(*, backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the process group torchrun describes in the environment; nothing to do for one process.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else gloo.
        timeout: how long a collective waits for the slowest rank.

    Returns:
        True if this call created the process group (the caller then calls `teardown`).
    """
    if dist.is_available() and dist.is_initialized():
        return False
    if launched_world_size() == 1:
        return False
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is {launched_world_size()} but {', '.join(missing)} are not set; "
                          "launch with torchrun")
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run with one process")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        # One GPU per process: the collectives of this rank run on its own device.
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    return True


def teardown() -> None:
    """Leave the process group (after `setup` created it)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(*, backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> Iterator[None]:
    """`setup` on entry and, if it created the group, `teardown` on exit."""
    created = setup(backend=backend, timeout=timeout)
    try:
        yield
    finally:
        if created:
            teardown()


def barrier() -> None:
    """Wait until every rank arrives here (no-op for one process)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first, then the others: rank 0 fills a cache (renders a dataset) that they read.

    Inside the block every rank acts as a single process, so nothing in it issues a collective.
    """
    global _alone_depth
    if not is_distributed():
        yield
        return
    if not is_main_process():
        dist.barrier()
    _alone_depth += 1
    try:
        yield
    finally:
        _alone_depth -= 1
        if is_main_process():
            dist.barrier()


def refuse_on_other_ranks(*, what: str) -> None:
    """Refuse ``what`` on every process torchrun started but rank 0: a DP release must be drawn once.

    Checked from the launcher's ``RANK``, so it also holds for a command that
    never joined the process group (each copy would otherwise draw its own
    noisy release of the same data, and the ledger would count one).
    """
    if launched_world_size() > 1 and int(os.environ.get("RANK", "0")) != 0:
        raise errors.PrivacyError(f"{what} runs on rank 0 only; this is rank {os.environ['RANK']} "
                                  "(run the query once, then share its release)")


# --------------------------------------------------------------------------- sharing decisions and data


def broadcast_object(obj: T = None, *, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` is ignored elsewhere)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def main_only(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give its result to every rank.

    For everything that reads or writes the disk: checking a cache, loading a
    checkpoint, writing a run folder; and for the semantic query, whose noisy
    histogram must be drawn once. If ``fn`` fails on rank 0 the other ranks
    raise a `PrivImageError` of the same kind instead of waiting forever.
    Inside ``fn`` rank 0 acts as a single process (`is_distributed` is False),
    so library code it calls issues no collective the other ranks would miss.

    Args:
        fn: a function of no arguments whose result can be pickled.

    Returns:
        ``fn()``'s result, on every rank.
    """
    global _alone_depth
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any] | None = None
    failure: BaseException | None = None
    if is_main_process():
        _alone_depth += 1
        try:
            outcome = ("ok", fn())
        except BaseException as exc:  # every failure must reach the waiting ranks
            failure = exc
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            outcome = ("error", (type(exc).__name__, message))
        finally:
            _alone_depth -= 1
    outcome = broadcast_object(outcome)
    if failure is not None:
        raise failure
    status, value = outcome
    if status == "error":
        name, message = value
        error_type = getattr(errors, name, PrivImageError)
        if not (isinstance(error_type, type) and issubclass(error_type, PrivImageError)):
            error_type = PrivImageError
        raise error_type(f"rank 0 failed: {message}")
    return value


def check_same_everywhere(value: Any, *, what: str) -> None:
    """Refuse to go on when ranks disagree about ``value`` (e.g. they loaded different data).

    Args:
        value: a small picklable value every rank computed on its own.
        what: what it is, for the message.
    """
    values = all_gather_object(value)
    if any(other != values[0] for other in values[1:]):
        raise DataError(f"{what} differs between processes ({', '.join(map(str, values))}); "
                        "every node must hold the same data")


# --------------------------------------------------------------------------- shares of a batch


def rows_of_this_rank(rows: np.ndarray | Iterable[int]) -> np.ndarray:
    """This rank's strided share ``rows[rank::world]`` of a global batch (all of it for one process).

    Strided shares differ in length by at most one, so per-rank memory stays even.
    """
    rows = np.asarray(rows, dtype=np.int64) if not isinstance(rows, np.ndarray) else rows
    return rows[rank()::world_size()]


def share_of_count(count: int) -> int:
    """How many of ``count`` interchangeable items (generated images, say) this rank makes.

    ``len(range(rank, count, world))``: the shares add up to ``count``.
    """
    return len(range(rank(), int(count), world_size()))


# --------------------------------------------------------------------------- gradients and parameters


def _collective_device() -> torch.device:
    """Small bookkeeping tensors travel on the backend's device (NCCL: this rank's GPU)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum ``p.grad`` over all ranks, in place (no-op for one process).

    Each rank back-propagates its share of the global batch's mean loss (its
    rows' losses summed, divided by the *global* batch size), so the sum over
    ranks is the gradient one process would get from the whole batch, whatever
    the shares' sizes. A parameter without a gradient on every rank keeps none,
    as it would in one process (AdamW skips it); one with a gradient on some
    rank only gets zeros elsewhere before the sum.

    Args:
        parameters: the parameters an optimizer is about to update (same order on every rank).
    """
    if not is_distributed():
        return
    trainable = [p for p in parameters if p.requires_grad]
    if not trainable:
        return
    has_grad = torch.tensor([p.grad is not None for p in trainable], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    active = [p for p, flag in zip(trainable, has_grad.tolist()) if flag]
    for parameter in active:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    # One collective per bucket of same-dtype, same-device gradients, as DDP's reducer buckets them.
    for bucket in _buckets([p.grad for p in active]):
        flat = torch._utils._flatten_dense_tensors(bucket)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for grad, reduced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            grad.copy_(reduced)


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for tensor in tensors:
        if (not buckets or size + tensor.numel() > BUCKET_ELEMENTS
                or (tensor.dtype, tensor.device) != (buckets[-1][0].dtype, buckets[-1][0].device)):
            buckets.append([])
            size = 0
        buckets[-1].append(tensor)
        size += tensor.numel()
    return buckets


def all_reduce_sum(value: float) -> float:
    """The sum of a number over all ranks (e.g. the shares of a batch's mean loss)."""
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, *, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank (what DPDDP does at start)."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)


# --------------------------------------------------------------------------- non-private randomness per rank


def rank_seed(seed: int) -> int:
    """The seed of this rank's non-private randomness: ``seed`` itself on rank 0, a distinct one elsewhere.

    Rank 0 keeps the single-process stream, so a one-process run is unchanged;
    other ranks draw different diffusion noise and timesteps for their rows.
    """
    if rank() == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}:rank{rank()}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def rng_states_of_all_ranks() -> list[dict[str, Any]]:
    """Every rank's non-private RNG state, in rank order (for a checkpoint; a collective)."""
    return all_gather_object(rng_state())


def restore_rank_rng(*, saved: list[dict[str, Any]], seed: int, step: int) -> None:
    """Put back this rank's non-private RNG state from a checkpoint taken with any number of processes.

    With as many processes as when it was saved, each rank continues its own
    stream exactly. With another number, rank 0 continues the saved rank 0
    stream and every other rank starts a fresh stream derived from the seed and
    the step: the non-private randomness differs from an uninterrupted run's
    (so would the batches' shares), the training is as valid.

    Args:
        saved: the checkpoint's RNG states, one per rank that wrote it (rank 0 first).
        seed: the stage's seed.
        step: the step the checkpoint was taken after.
    """
    if len(saved) == world_size():
        restore_rng_state(saved[rank()])
    elif rank() == 0:
        restore_rng_state(saved[0])
    else:
        digest = hashlib.sha256(f"{int(seed)}:resume{int(step)}:rank{rank()}".encode()).digest()
        seed_training_randomness(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sum_gradients_over_ranks(parameters, loss_share: float) -> float:
    """All-reduce the gradients and the loss shares of one step; a no-op with one process.

    Args:
        parameters: the parameters the optimizer is about to update.
        loss_share: this rank's share of the batch-mean loss (`accumulate_mean_loss`).

    Returns:
        The batch-mean loss over all ranks (the same number on every rank).
    """
    all_reduce_gradients(parameters)
    return all_reduce_sum(loss_share)
