"""Side-by-side cost of a DP-SGD step, a non-private step and the DPDM-style opacus baseline.

`benchmarks/dp_step.py` (and ``python -m benchmarks``) drives this module; the
timing rules are those of the fast-DP-SGD issue:

- one process, the same model initialisation, the same B images with the same
  K noise draws, the same thread count for every method;
- every method is warmed up, then the methods run interleaved (one step of each
  per round, the order rotated every round) so that load from other processes
  hits all of them alike; the median over rounds is reported, and ratios of
  medians are what to compare across machines;
- every step is a whole training step: gradients, clipping, noise (DP methods)
  and the AdamW update.

Methods (all over the same B*K noisy rows):

- ``dp_sgd``: the training stage's own step, `privimage.training.dpsgd.dp_sgd_step`
  with its `make_dp_optimizer` (B per-sample gradients, each the mean over the
  image's K draws; clip; Gaussian noise; update);
- ``non_private``: the mean loss over the rows, one backward, AdamW;
- ``non_private_k1``: the same with only the first draw of each image (B rows),
  measured for memory only: the DP step's peak should not grow with K;
- ``dpdm_baseline``: DPDM's recipe, opacus' per-row gradients (``hooks`` by
  default) over the expanded batch of B*K rows, averaged in groups of K, then the
  same clipping, noise and update.

Peak memory is the largest amount of tensor memory alive during one step above
what was alive when the step began: on CUDA ``torch.cuda.max_memory_allocated``;
on CPU the same quantity replayed from the allocation and free events that
``torch.profiler`` records with ``profile_memory=True`` (every tensor of torch's
CPU allocator, oneDNN's included). It excludes allocator caching and
fragmentation, which process RSS would include but which depend on what ran
earlier in the process. The step that is measured for memory is not timed.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from privimage.config import DiffusionModelConfig
from privimage.diffusion import diffusion_loss_from_noise, draw_diffusion_noise
from privimage.dp.per_sample import compute_per_sample_gradients, compute_per_sample_gradients_opacus
from privimage.errors import ConfigError
from privimage.models import build_unet, count_parameters
from privimage.threads import thread_settings

STEP_METHODS = ("dp_sgd", "non_private", "dpdm_baseline")
# Per-sample gradient engines compared once, at the quick UNet (the issue: opacus where it wins).
ENGINES = ("grouped", "vmap", "opacus_hooks", "opacus_functorch", "opacus_ew")
# The targets, against which every row is marked.
TARGETS = {
    "time_ratio_dp_vs_nonprivate_at_k1": 2.0,
    "time_ratio_dp_vs_nonprivate_at_k8": 1.5,
    "memory_ratio_dp_vs_nonprivate": 1.5,
    "speedup_vs_dpdm_baseline_at_k8": 3.0,
    "memory_reduction_vs_dpdm_baseline_at_k8": 4.0,
    # Issue #22: at K=8, the DP step's peak at most 2x the non-private step's at K=1 (independent of K).
    "memory_ratio_dp_at_k8_vs_nonprivate_at_k1": 2.0,
}
# Measured for memory only, beside the timed methods.
MEMORY_ONLY_METHODS = ("non_private_k1",)
# Stand-in optimiser and privacy settings: they change nothing in the cost of a step.
LEARNING_RATE = 1e-4
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
LABEL_DROPOUT = 0.1


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_step_memory(step: Callable[[], None], *, device: torch.device) -> int:
    """Peak bytes of tensor memory that ``step`` allocates above what was alive when it began.

    Args:
        step: one training step.
        device: ``cuda`` reads the allocator's peak statistics; ``cpu`` replays the
            profiler's memory events.

    Returns:
        The peak, in bytes (0 if the step only frees memory).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cpu_kinds = (DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    # torch's own parser folds memory events into operator totals; the peak needs them in time order.
    events = profiler.profiler.kineto_results.events()
    changes = sorted((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == "[memory]" and e.device_type() in cpu_kinds)
    if not changes:
        return 0
    alive = np.cumsum([nbytes for _, nbytes in changes])
    return int(max(0, alive.max()))


def time_interleaved(
    steps: Mapping[str, Callable[[], None]],
    *,
    rounds: int,
    warmup: int,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each step, measured in interleaved rounds after warm-up rounds.

    Args:
        steps: name -> one step.
        rounds: timed rounds (one step of every method per round).
        warmup: untimed rounds first (allocator, oneDNN kernel choice, lazy state).
        device: where the steps run (CUDA work is synchronised before each reading).
        progress: called with a short note after every round.

    Returns:
        name -> the ``rounds`` durations.
    """
    if rounds < 1 or warmup < 0:
        raise ConfigError(f"need at least one timed round and no negative warm-up, got {rounds} and {warmup}")
    names = list(steps)
    durations: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        # Rotating the order stops one method from always following the most expensive one.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            if round_index >= warmup:
                durations[name].append(time.perf_counter() - start)
        if progress is not None:
            progress(f"round {round_index + 1}/{warmup + rounds}")
    return durations


def unet_config(model: str) -> DiffusionModelConfig:
    """The UNet a benchmark row names: ``quick`` (the quick profile's) or a preset such as ``6.1M``."""
    if model == "quick":
        from privimage.config import load_config

        return load_config("quick").diffusion
    return DiffusionModelConfig(preset=model)


def make_steps(
    *,
    model: torch.nn.Module,
    images: torch.Tensor,
    noise: torch.Tensor,
    times: torch.Tensor,
    conditioning: torch.Tensor,
    methods: Sequence[str],
    device: torch.device,
    multiplicity_chunk: int | None = None,
) -> dict[str, Callable[[], None]]:
    """One training step per method, each with its own copy of ``model`` and its own optimiser.

    Args:
        model: the initialised network (copied, never trained itself).
        images: B clean images.
        noise, times, conditioning: the K draws of every image (`draw_diffusion_noise`).
        methods: names from `STEP_METHODS`, `MEMORY_ONLY_METHODS` and, as ``engine:<name>``, from `ENGINES`.
        device: where the models live.
        multiplicity_chunk: the DP step's draws per pass (``finetune.multiplicity_chunk``; None: all K).

    Returns:
        name -> a callable that performs one step.
    """
    from privimage.training.dpsgd import dp_sgd_step, make_dp_optimizer

    batch, multiplicity = times.shape
    inputs = (images, noise, times, conditioning)
    # The DPDM baseline's expanded batch: K rows per image, each with one draw, rows of an image together.
    rows = (images.repeat_interleave(multiplicity, dim=0), noise.flatten(0, 1)[:, None],
            times.flatten()[:, None], conditioning.flatten()[:, None])

    def dp_optimizer(network):
        return make_dp_optimizer(parameters=list(network.parameters()), lr=LEARNING_RATE, weight_decay=0.0,
                                 noise_multiplier=NOISE_MULTIPLIER, max_grad_norm=MAX_GRAD_NORM,
                                 expected_batch_size=batch, secure_mode=False, device=device)

    def dp_step(per_sample: Callable[[torch.nn.Module], None]) -> Callable[[], None]:
        network = copy.deepcopy(model)
        optimizer = dp_optimizer(network)

        def step() -> None:
            per_sample(network)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def training_stage_step() -> Callable[[], None]:
        network = copy.deepcopy(model)
        optimizer = dp_optimizer(network)
        # Exactly what the fine-tuning loop runs for one logical batch of B images.
        return lambda: dp_sgd_step(model=network, optimizer=optimizer, per_example_loss=diffusion_loss_from_noise,
                                   batch_indices=range(batch), load_inputs=lambda chunk: inputs,
                                   physical_batch_size=batch, multiplicity_chunk=multiplicity_chunk)

    def non_private_step(step_inputs: tuple[torch.Tensor, ...] = inputs) -> Callable[[], None]:
        network = copy.deepcopy(model)
        optimizer = torch.optim.AdamW(network.parameters(), lr=LEARNING_RATE, weight_decay=0.0)

        def step() -> None:
            diffusion_loss_from_noise(network, *step_inputs).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def opacus_rows(mode: str) -> Callable[[torch.nn.Module], None]:
        return lambda network: compute_per_sample_gradients_opacus(
            network, diffusion_loss_from_noise, *rows, rows_per_example=multiplicity, grad_sample_mode=mode)

    def ours(strategy: str) -> Callable[[torch.nn.Module], None]:
        return lambda network: compute_per_sample_gradients(network, diffusion_loss_from_noise, *inputs,
                                                            strategy=strategy)

    builders: dict[str, Callable[[], Callable[[], None]]] = {
        "dp_sgd": training_stage_step,
        "non_private": non_private_step,
        "non_private_k1": lambda: non_private_step((images, noise[:, :1], times[:, :1], conditioning[:, :1])),
        "dpdm_baseline": lambda: dp_step(opacus_rows("hooks")),
        "engine:grouped": lambda: dp_step(ours("grouped")),
        "engine:vmap": lambda: dp_step(ours("vmap")),
        "engine:opacus_hooks": lambda: dp_step(opacus_rows("hooks")),
        "engine:opacus_functorch": lambda: dp_step(opacus_rows("functorch")),
        "engine:opacus_ew": lambda: dp_step(opacus_rows("ew")),
    }
    unknown = [m for m in methods if m not in builders]
    if unknown:
        raise ConfigError(f"unknown benchmark methods {unknown} (choose from {', '.join(builders)})")
    return {method: builders[method]() for method in methods}


def benchmark_configuration(
    *,
    model: str,
    batch_size: int,
    noise_multiplicity: int,
    image_channels: int,
    image_size: int = 32,
    num_classes: int = 10,
    methods: Sequence[str] = STEP_METHODS,
    memory_only: Sequence[str] = (),
    multiplicity_chunk: int | None = None,
    rounds: int = 20,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] | None = None,
    profile_if: Callable[[dict], bool] | None = None,
) -> dict:
    """Median time and peak memory of each method's step for one (model, K, B).

    Args:
        model: ``quick`` or a UNet preset name.
        batch_size: B images per step.
        noise_multiplicity: K draws per image.
        image_channels, image_size, num_classes: the data shape (MNIST: 1, CIFAR-10: 3).
        methods: which steps to compare (see `make_steps`).
        memory_only: steps whose peak memory is measured but which are not timed.
        multiplicity_chunk: the DP step's draws per pass (None: all K at once).
        rounds, warmup: timed and untimed interleaved rounds.
        device: ``cpu`` or ``cuda``.
        progress: called with short notes.
        profile_if: called with the result; when it returns True, one more step of
            every method runs under ``torch.profiler`` and its top operators are
            added as ``profile_top_operators`` (why a target was missed).

    Returns:
        ``{"model", "num_parameters", "k", "batch_size", "image_shape", "median_seconds",
        "peak_memory_bytes", "errors"}``; a method that ran out of GPU memory (or an
        ``engine:`` that fails on the UNet) has None for both and its error under ``errors``.
    """
    device = torch.device(device)
    if batch_size < 1 or noise_multiplicity < 1:
        raise ConfigError(f"batch size and K must be positive, got {batch_size} and {noise_multiplicity}")
    # The same initial weights and the same draws for every method.
    torch.manual_seed(0)
    network = build_unet(unet_config(model), image_channels=image_channels, image_size=image_size,
                         num_classes=num_classes).to(device)
    generator = torch.Generator(device=device).manual_seed(1)
    images = torch.rand((batch_size, image_channels, image_size, image_size), generator=generator,
                        device=device) * 2 - 1
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator, device=device)
    noise, times, conditioning = draw_diffusion_noise(images, labels, noise_multiplicity=noise_multiplicity,
                                                      label_dropout=LABEL_DROPOUT, num_classes=num_classes,
                                                      generator=generator)
    steps = make_steps(model=network, images=images, noise=noise, times=times, conditioning=conditioning,
                       methods=[*methods, *memory_only], device=device, multiplicity_chunk=multiplicity_chunk)
    errors: dict[str, str] = {}
    peaks: dict[str, int | None] = {}
    # Memory first, one method at a time, after one step that creates the optimiser state;
    # a method that does not fit is dropped from the timing.
    for name in list(steps):
        try:
            steps[name]()
            peaks[name] = peak_step_memory(steps[name], device=device)
        except Exception as exc:  # noqa: BLE001 - recorded, not hidden: see below
            # Running out of GPU memory is a result (the DPDM baseline at paper batch sizes);
            # so is an engine that cannot handle the UNet (opacus' expanded weights). Others are bugs.
            if not (isinstance(exc, torch.OutOfMemoryError) or name.startswith("engine:")):
                raise
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            peaks[name] = None
            del steps[name]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for name in memory_only:
        steps.pop(name, None)
    durations = time_interleaved(steps, rounds=rounds, warmup=warmup, device=device, progress=progress)
    measured = {
        "model": model,
        "num_parameters": count_parameters(network),
        "k": noise_multiplicity,
        "batch_size": batch_size,
        "rows_per_step": batch_size * noise_multiplicity,
        "multiplicity_chunk": multiplicity_chunk,
        "image_shape": [image_channels, image_size, image_size],
        "median_seconds": {name: (statistics.median(durations[name]) if name in durations else None)
                           for name in methods},
        "peak_memory_bytes": {name: peaks[name] for name in [*methods, *memory_only]},
        "errors": errors,
    }
    if profile_if is not None and profile_if(measured):
        measured["profile_top_operators"] = {name: profile_top_operators(step, device=device)
                                             for name, step in steps.items()}
    return measured


def ratio_row(measured: Mapping) -> dict:
    """The issue's ratios from one `benchmark_configuration` result (None where a method did not run)."""
    seconds, memory = measured["median_seconds"], measured["peak_memory_bytes"]

    def ratio(numerator, denominator):
        return None if numerator is None or denominator is None or denominator <= 0 else numerator / denominator

    row = {
        "model": measured["model"],
        "num_parameters": measured["num_parameters"],
        "k": measured["k"],
        "batch_size": measured["batch_size"],
        "rows_per_step": measured["rows_per_step"],
        "image_shape": measured["image_shape"],
        "time_ratio_dp_vs_nonprivate": ratio(seconds["dp_sgd"], seconds["non_private"]),
        "memory_ratio_dp_vs_nonprivate": ratio(memory["dp_sgd"], memory["non_private"]),
        "speedup_vs_dpdm_baseline": ratio(seconds["dpdm_baseline"], seconds["dp_sgd"]),
        "memory_reduction_vs_dpdm_baseline": ratio(memory["dpdm_baseline"], memory["dp_sgd"]),
        "multiplicity_chunk": measured.get("multiplicity_chunk"),
        "memory_ratio_dp_vs_nonprivate_k1": ratio(memory["dp_sgd"], memory.get("non_private_k1")),
        "median_seconds": dict(seconds),
        "peak_memory_bytes": dict(memory),
        # What the per-sample gradients alone occupy (float32): B of them for ours, B*K for DPDM's.
        "per_sample_gradient_bytes": {
            "dp_sgd": 4 * measured["batch_size"] * measured["num_parameters"],
            "dpdm_baseline": 4 * measured["rows_per_step"] * measured["num_parameters"],
        },
        "errors": dict(measured["errors"]),
    }
    if "profile_top_operators" in measured:
        row["profile_top_operators"] = measured["profile_top_operators"]
    row["meets_targets"] = targets_met(row)
    return row


def targets_met(row: Mapping) -> dict[str, bool | None]:
    """Which of the issue's targets one row meets (None: not applicable or not measured)."""
    def at_most(value, limit):
        return None if value is None else bool(value <= limit)

    def at_least(value, limit):
        return None if value is None else bool(value >= limit)

    at_k8 = row["k"] == 8
    time_limit = {1: TARGETS["time_ratio_dp_vs_nonprivate_at_k1"],
                  8: TARGETS["time_ratio_dp_vs_nonprivate_at_k8"]}.get(row["k"])
    return {
        "time_ratio_dp_vs_nonprivate": (at_most(row["time_ratio_dp_vs_nonprivate"], time_limit)
                                        if time_limit is not None else None),
        "memory_ratio_dp_vs_nonprivate": at_most(row["memory_ratio_dp_vs_nonprivate"],
                                                 TARGETS["memory_ratio_dp_vs_nonprivate"]),
        "speedup_vs_dpdm_baseline": at_least(row["speedup_vs_dpdm_baseline"],
                                             TARGETS["speedup_vs_dpdm_baseline_at_k8"]) if at_k8 else None,
        "memory_reduction_vs_dpdm_baseline": at_least(row["memory_reduction_vs_dpdm_baseline"],
                                                      TARGETS["memory_reduction_vs_dpdm_baseline_at_k8"])
        if at_k8 else None,
        "memory_ratio_dp_vs_nonprivate_k1": at_most(row.get("memory_ratio_dp_vs_nonprivate_k1"),
                                                    TARGETS["memory_ratio_dp_at_k8_vs_nonprivate_at_k1"])
        if at_k8 else None,
    }


def profile_top_operators(step: Callable[[], None], *, device: torch.device, rows: int = 12) -> list[dict]:
    """The operators that take the most self time in one step (why a target is missed).

    Args:
        step: one training step (run once, untimed, under ``torch.profiler``).
        device: where it runs.
        rows: how many operators to keep.

    Returns:
        ``[{"name", "self_seconds", "calls"}]``, most expensive first.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        step()
        synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = sorted(profiler.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:rows]
    return [{"name": e.key, "self_seconds": getattr(e, key) / 1e6, "calls": e.count} for e in averages]


def environment(*, device: torch.device | str) -> dict:
    """What the numbers depend on: versions, threads, machine and its load when measuring began."""
    import opacus

    device = torch.device(device)
    info = {
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "opacus_version": opacus.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or platform.uname().system}".strip(),
        "load_average_at_start": list(os.getloadavg()),
        "nice": os.nice(0),
        **thread_settings(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
