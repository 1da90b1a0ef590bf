"""CPU threads and OpenMP wait policy, decided once at start-up so that a shared machine stays fast.

PyTorch's Linux CPU wheels run their parallel regions (and MKL's) on GNU
OpenMP (``libgomp.so.1`` in ``torch/lib``). By default libgomp's idle workers
spin for up to 300,000 iterations at each barrier before sleeping. Beside
another CPU-bound job that spinning takes the core the busy worker needs, and
every parallel region waits for its slowest thread: measured here, a DP-SGD
step ran 75x and a pre-training 26x slower than idle (`benchmarks.busy_machine`
measures it again). ``OMP_WAIT_POLICY=PASSIVE`` makes the workers sleep at
once, which costs a wake-up per region on an idle machine and saves the core
on a busy one.

libgomp reads its environment when it is loaded, that is when ``torch`` is
first imported, so `configure_cpu_threads` runs on ``import privimage`` (before
any module imports torch) and on ``import benchmarks``. It only fills in what
the user's environment leaves unset; children (papermill's notebook kernels,
torchrun workers) inherit the same values through the environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import MutableMapping

# The user's own settings win; these are only defaults.
WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
THREADS_VARIABLE = "OMP_NUM_THREADS"
DEFAULT_WAIT_POLICY = "PASSIVE"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which taskset and container limits narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Intra-op threads when the user sets none: one per physical core this process may use.

    Hyper-threads share a core's arithmetic units, so torch's own default also
    counts cores, not logical CPUs. With passive waiting, two threads beside one
    CPU-bound job on two cores share them instead of spinning
    (`benchmarks.busy_machine`), so an idle machine keeps its speed and a busy
    one costs about its fair share.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        return available_cpus()
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        # One entry per core: the core's first logical CPU names it.
        cores.add(siblings.read_text().strip() if siblings.exists() else str(cpu))
    return max(1, len(cores))


def configure_cpu_threads(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Fill in the OpenMP thread count and wait policy the user left unset, and apply them to torch.

    Args:
        environ: the environment to complete (default ``os.environ``, so child
            processes inherit the decision).

    Returns:
        The values in force under their variable names, and under ``source_<name>``
        whether each came from the ``user`` or is the ``default``.
    """
    environ = os.environ if environ is None else environ
    decided: dict[str, str] = {}
    for name, default in ((THREADS_VARIABLE, str(default_threads())), (WAIT_POLICY_VARIABLE, DEFAULT_WAIT_POLICY)):
        # An empty value counts as unset (libgomp rejects it with a warning).
        if environ.get(name, "").strip():
            decided[f"source_{name}"] = "user"
        else:
            environ[name] = default
            decided[f"source_{name}"] = "default"
        decided[name] = environ[name]
    # torch read the environment when it was imported; if that already happened, set its pool now
    # (the wait policy cannot change after libgomp has started).
    torch = sys.modules.get("torch")
    if environ is os.environ and torch is not None and hasattr(torch, "set_num_threads"):
        threads = _positive_int(environ[THREADS_VARIABLE])
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return decided


def thread_settings() -> dict:
    """What the running process uses, for reports: torch's threads, the OpenMP variables, the CPUs."""
    import torch

    return {"threads": torch.get_num_threads(), "available_cpus": available_cpus(),
            "omp_num_threads_env": os.environ.get(THREADS_VARIABLE),
            "omp_wait_policy_env": os.environ.get(WAIT_POLICY_VARIABLE),
            "gomp_spincount_env": os.environ.get("GOMP_SPINCOUNT")}


def _positive_int(text: str) -> int | None:
    """``OMP_NUM_THREADS`` may be a list (``4,2``); its first entry is the outer level's count."""
    head = text.split(",")[0].strip()
    return int(head) if head.isdigit() and int(head) > 0 else None
