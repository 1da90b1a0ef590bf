"""Time and peak memory of one training step: DP-SGD, non-private, and the DPDM-style opacus baseline.

Paper Table 4's projections (`privimage.evaluation.resource_comparison`) and
the DP-step benchmark (``python -m benchmarks``) measure steps here, by these rules:

- one process, the same model initialisation, the same B images with the same
  K noise draws, the same thread count for every method;
- every method is warmed up, then the methods run interleaved (one step of each
  per round, the order rotated every round) so that load from other processes
  hits all of them alike; the median over rounds is reported, and ratios of
  medians are what to compare across machines;
- every step is a whole training step: gradients, clipping, noise (DP methods)
  and the AdamW update.

Methods (all over the same B*K noisy rows): ``dp_sgd``, the training stage's own
`privimage.training.dpsgd.dp_sgd_step` with its `make_dp_optimizer`;
``non_private``, the mean loss, one backward, AdamW; ``non_private_k1``, the same
on the first draw of each image, for memory only; ``dpdm_baseline``, opacus'
per-row gradients over the expanded B*K rows, averaged in groups of K, then the
same clipping, noise and update; ``engine:<name>``, one per-sample gradient engine.

Peak memory is the most tensor memory alive during one untimed step above what
was alive when it began: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the
same quantity replayed from ``torch.profiler``'s memory events (every tensor of
torch's CPU allocator, oneDNN's included), without allocator caching.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from privimage.config import DiffusionModelConfig, load_config
from privimage.diffusion import diffusion_loss_from_noise, draw_diffusion_noise
from privimage.dp.per_sample import compute_per_sample_gradients, compute_per_sample_gradients_opacus
from privimage.errors import ConfigError
from privimage.models import build_unet, count_parameters

# Through the module, so a DP-SGD step replaced there (a test's tripwire) is the one timed.
from privimage.training import dpsgd

STEP_METHODS = ("dp_sgd", "non_private", "dpdm_baseline")
# Per-sample gradient engines (``engine:<name>``): ours over B images, opacus' modes over B*K rows.
ENGINES = ("grouped", "vmap", "opacus_hooks", "opacus_functorch", "opacus_ew")
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
    batch, multiplicity = times.shape
    inputs = (images, noise, times, conditioning)
    # The DPDM baseline's expanded batch: K rows per image, each with one draw, rows of an image together.
    rows = (images.repeat_interleave(multiplicity, dim=0), noise.flatten(0, 1)[:, None],
            times.flatten()[:, None], conditioning.flatten()[:, None])

    def engine_step(engine: str) -> Callable[[], None]:
        gradients = _engine_gradients(engine, inputs=inputs, rows=rows, rows_per_example=multiplicity)
        return _per_sample_step(model, gradients, batch=batch, device=device)

    builders: dict[str, Callable[[], Callable[[], None]]] = {
        "dp_sgd": lambda: _training_stage_step(model, inputs, device=device, multiplicity_chunk=multiplicity_chunk),
        "non_private": lambda: _non_private_step(model, inputs),
        "non_private_k1": lambda: _non_private_step(model, (images, noise[:, :1], times[:, :1], conditioning[:, :1])),
        "dpdm_baseline": lambda: engine_step("opacus_hooks"),
        **{f"engine:{engine}": (lambda engine=engine: engine_step(engine)) for engine in ENGINES},
    }
    unknown = [m for m in methods if m not in builders]
    if unknown:
        raise ConfigError(f"unknown benchmark methods {unknown} (choose from {', '.join(builders)})")
    return {method: builders[method]() for method in methods}


def _dp_optimizer(network: torch.nn.Module, *, batch: int, device: torch.device):
    """The fine-tuning stage's DP optimiser, at the stand-in settings, for a logical batch of ``batch`` images."""

    return dpsgd.make_dp_optimizer(parameters=list(network.parameters()), lr=LEARNING_RATE, weight_decay=0.0,
                             noise_multiplier=NOISE_MULTIPLIER, max_grad_norm=MAX_GRAD_NORM,
                             expected_batch_size=batch, secure_mode=False, device=device)


def _training_stage_step(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], *, device: torch.device,
                         multiplicity_chunk: int | None) -> Callable[[], None]:
    """Exactly what the fine-tuning loop runs for one logical batch of B images, on a copy of ``model``."""

    batch = inputs[2].shape[0]
    network = copy.deepcopy(model)
    optimizer = _dp_optimizer(network, batch=batch, device=device)
    return lambda: dpsgd.dp_sgd_step(model=network, optimizer=optimizer, per_example_loss=diffusion_loss_from_noise,
                               batch_indices=range(batch), load_inputs=lambda chunk: inputs,
                               physical_batch_size=batch, multiplicity_chunk=multiplicity_chunk)


def _per_sample_step(model: torch.nn.Module, per_sample: Callable[[torch.nn.Module], None], *, batch: int,
                     device: torch.device) -> Callable[[], None]:
    """A DP step on a copy of ``model`` whose per-sample gradients ``per_sample`` computes (clip, noise, AdamW)."""
    network = copy.deepcopy(model)
    optimizer = _dp_optimizer(network, batch=batch, device=device)

    def step() -> None:
        per_sample(network)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _non_private_step(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    """The mean diffusion loss over ``inputs``' rows, one backward and AdamW, on a copy of ``model``."""
    network = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(network.parameters(), lr=LEARNING_RATE, weight_decay=0.0)

    def step() -> None:
        diffusion_loss_from_noise(network, *inputs).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _engine_gradients(engine: str, *, inputs: tuple[torch.Tensor, ...], rows: tuple[torch.Tensor, ...],
                      rows_per_example: int) -> Callable[[torch.nn.Module], None]:
    """Per-sample gradients by one of `ENGINES`: ours over the B images, opacus' over the B*K expanded rows."""
    if engine.startswith("opacus_"):
        mode = engine.removeprefix("opacus_")
        return lambda network: compute_per_sample_gradients_opacus(
            network, diffusion_loss_from_noise, *rows, rows_per_example=rows_per_example, grad_sample_mode=mode)
    return lambda network: compute_per_sample_gradients(network, diffusion_loss_from_noise, *inputs,
                                                        strategy=engine)


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
    network, images, noise, times, conditioning = _random_batch(
        model=model, batch_size=batch_size, noise_multiplicity=noise_multiplicity, image_channels=image_channels,
        image_size=image_size, num_classes=num_classes, device=device)
    steps = make_steps(model=network, images=images, noise=noise, times=times, conditioning=conditioning,
                       methods=[*methods, *memory_only], device=device, multiplicity_chunk=multiplicity_chunk)
    peaks, errors = _measure_peaks(steps, device=device)
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


def _random_batch(*, model: str, batch_size: int, noise_multiplicity: int, image_channels: int, image_size: int,
                  num_classes: int, device: torch.device):
    """The UNet ``model`` names, B random images and their K draws: the same for every method (fixed seeds)."""
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
    return network, images, noise, times, conditioning


def _measure_peaks(steps: dict[str, Callable[[], None]], *, device: torch.device
                   ) -> tuple[dict[str, int | None], dict[str, str]]:
    """Each step's peak memory, one method at a time after one step that creates the optimiser state.

    A method that does not fit is dropped from ``steps`` (so from the timing), with
    None as its peak and its error recorded.

    Returns:
        ``(peaks, errors)``: name -> peak bytes or None; name -> error line.
    """
    errors: dict[str, str] = {}
    peaks: dict[str, int | None] = {}
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
    return peaks, errors


def profile_top_operators(step: Callable[[], None], *, device: torch.device, rows: int = 12) -> list[dict]:
    """The operators that take the most self time in one step (why a target is missed).

    Args:
        step: one training step (run once, untimed, under ``torch.profiler``).
        device: where it runs.
        rows: how many operators to keep.

    Returns:
        ``[{"name", "self_seconds", "calls"}]``, most expensive first.
    """

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        step()
        synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = sorted(profiler.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:rows]
    return [{"name": e.key, "self_seconds": getattr(e, key) / 1e6, "calls": e.count} for e in averages]
