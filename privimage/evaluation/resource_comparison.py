"""Paper Table 4 (Section 6.2): the two methods' schedules, step timings projected to them, and the ratios.

The paper trains PDP-Diffusion (80M parameters, pre-trained on all of ImageNet)
and Privimage+D (6.1M, pre-trained on its selection) and reports, per stage,
GPU memory and time; Privimage uses 0.50 of the memory and 0.52 of the time.
This module rebuilds that comparison at any scale:

- `paper_schedule`: the paper's schedule in data-relative terms (pre-training
  epochs, fine-tuning epochs, sample rate and noise multiplicity, DDIM steps,
  synthetic images per sensitive image), read from the ``paper`` profile, so it
  applies to any pair of datasets;
- `stage_plan`: what each stage of one method costs under that schedule: how
  many steps of how many images (each method pre-trains for the same epochs over
  its own pre-training set, so a 1% selection costs 1% of the steps);
- `time_stage_step`: a fixed number of steps of each stage, after warm-up,
  timed on random inputs (no sensitive data is read) with peak tensor memory;
- `project_stage`: those timings scaled to the stage's full schedule (`project_stages`:
  every stage of both methods);
- `compare_methods`: per stage and in total (time summed, memory the peak over
  stages, as the paper's totals are), Privimage / PDP-Diffusion beside the paper.

Where a machine can run the stages in full (the paper profile on GPUs),
`privimage.resource_experiment.resource_table` runs them for real instead and labels
the rows "measured"; projected rows say so and say from what.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from privimage.config import Config, DiffusionModelConfig, load_config
from privimage.data import dataset_info
from privimage.diffusion import ddim_sample
from privimage.errors import ConfigError
from privimage.evaluation.step_cost import benchmark_configuration, peak_step_memory, time_interleaved
from privimage.models import build_unet, count_parameters
from privimage.semantics.query_function import build_query_function
from privimage.training.dpsgd import finetune_schedule

METHODS = ("pdp-diffusion", "privimage-d")
# Paper Table 4 stages, in pipeline order; the SQF is Privimage's alone.
TABLE4_STAGES = ("sqf_training", "pretraining", "finetuning", "sampling")
MIB = 2**20
# Paper Table 4, CIFAR-10: GPU memory (GB) and time (hours) per stage, PDP-Diffusion (80M) vs Privimage+D (6.1M).
PAPER_TABLE4 = {
    "memory_gb": {"pretraining": (107, 55), "finetuning": (158, 89), "sqf_training": (0, 22), "sampling": (177, 83)},
    "time_h": {"pretraining": (87, 46), "finetuning": (24, 3), "sqf_training": (0, 9), "sampling": (22 / 60, 9 / 60)},
}
PAPER_PARAMETERS = {"pdp-diffusion": 80e6, "privimage-d": 6.1e6}


@dataclass(frozen=True)
class ResourceSchedule:
    """The paper's training and sampling schedule, relative to the data it runs on (paper Appendix C, Table 5).

    ``pretrain_epochs`` passes over each method's own pre-training set;
    ``finetune_sample_rate`` is the Poisson rate q of DP-SGD and
    ``finetune_epochs`` its passes over the sensitive set; ``samples_per_image``
    synthetic images per sensitive training image.
    """

    pretrain_epochs: float
    finetune_epochs: float
    finetune_sample_rate: float
    noise_multiplicity: int
    ddim_steps: int
    samples_per_image: float


@dataclass(frozen=True)
class StageWork:
    """One stage of one method under a schedule: ``steps`` steps of ``images_per_step`` images each.

    ``physical_images`` are processed at once (what sets memory), each with
    ``noise_multiplicity`` diffusion noise draws; ``image_steps`` is the total
    number of image-passes the stage makes, what its time scales with;
    ``description`` says it in words ("152 steps x 1,311 images (K=32)").
    """

    stage: str
    steps: int
    images_per_step: int
    physical_images: int
    image_steps: int
    noise_multiplicity: int = 1
    description: str = ""


def paper_schedule(*, data_root=None) -> ResourceSchedule:
    """The ``paper`` profile's schedule, per pass over the data it names (CIFAR-10 sensitive, ImageNet32 public).

    Pre-training: 62,500 steps of 2,048 over ImageNet32's 1,281,167 images, 99.9
    epochs; fine-tuning: 49.8 epochs at q = 16384/50000 with K = 32; sampling:
    60,000 images for 50,000 sensitive ones, 50 DDIM steps (paper Table 5).

    Args:
        data_root: folder of real datasets (sizes come from the registry when absent).

    Returns:
        The schedule.
    """

    paper = load_config("paper")
    public = dataset_info(paper.data.public, "train", data_root=data_root, config=paper.data)["num_images"]
    sensitive = dataset_info(paper.data.sensitive, "train", data_root=data_root, config=paper.data)["num_images"]
    return ResourceSchedule(
        pretrain_epochs=paper.pretrain.steps * paper.pretrain.batch_size / public,
        finetune_epochs=paper.finetune.epochs,
        finetune_sample_rate=paper.finetune.batch_size / sensitive,
        noise_multiplicity=paper.finetune.noise_multiplicity,
        ddim_steps=paper.sampling.ddim_steps,
        samples_per_image=paper.sampling.num_samples / sensitive,
    )


def schedule_overrides(*, config: Config, schedule: ResourceSchedule, pretraining_images: int,
                       sensitive_images: int) -> dict:
    """The dotted config overrides that make a real run follow ``schedule`` (measured mode).

    Args:
        config: the profile.
        schedule: the schedule to follow.
        pretraining_images: the size of the method's pre-training set.
        sensitive_images: the size of the sensitive training split (its length, nothing else).

    Returns:
        ``{"pretrain.steps", "finetune.batch_size", "finetune.epochs", "finetune.noise_multiplicity",
        "sampling.ddim_steps", "sampling.num_samples"}``.
    """
    return {
        "pretrain.steps": math.ceil(round(schedule.pretrain_epochs * pretraining_images / config.pretrain.batch_size,
                                          9)),
        "finetune.batch_size": max(1, round(schedule.finetune_sample_rate * sensitive_images)),
        "finetune.epochs": schedule.finetune_epochs,
        "finetune.noise_multiplicity": schedule.noise_multiplicity,
        "sampling.ddim_steps": schedule.ddim_steps,
        "sampling.num_samples": max(1, round(schedule.samples_per_image * sensitive_images)),
    }


def pretraining_images(*, method: str, public_images: int, selection_ratio: float) -> int:
    """The size of a method's pre-training set: all public images (PDP-Diffusion) or its selection's share."""
    if method not in METHODS:
        raise ConfigError(f"Table 4 compares {', '.join(METHODS)}, got '{method}'")
    return public_images if method == "pdp-diffusion" else round(selection_ratio * public_images)


def stage_plan(*, config: Config, schedule: ResourceSchedule, method: str, public_images: int,
               sensitive_images: int, selection_ratio: float) -> list[StageWork]:
    """The work of each Table 4 stage of one method (paper Section 6.2, Appendix C).

    Args:
        config: the profile (batch sizes, the SQF's epochs).
        schedule: epochs, sample rate, K, DDIM steps (`paper_schedule`).
        method: ``pdp-diffusion`` (pre-trains on all public data, no SQF) or ``privimage-d``.
        public_images: size of the public training split.
        sensitive_images: size of the sensitive training split.
        selection_ratio: Privimage's share of the public data.

    Returns:
        One `StageWork` per stage of `TABLE4_STAGES`; a stage the method lacks has zero steps.
    """

    own_set = pretraining_images(method=method, public_images=public_images, selection_ratio=selection_ratio)
    overrides = schedule_overrides(config=config, schedule=schedule, pretraining_images=own_set,
                                   sensitive_images=sensitive_images)
    semantics, pretrain, finetune, sampling = config.semantics, config.pretrain, config.finetune, config.sampling
    # The SQF trains once over all public data (Privimage only); epochs are the profile's.
    sqf_steps = (max(1, public_images // semantics.sqf_batch_size) * semantics.sqf_epochs
                 if method == "privimage-d" else 0)
    _, finetune_steps = finetune_schedule(num_examples=sensitive_images, batch_size=overrides["finetune.batch_size"],
                                          epochs=schedule.finetune_epochs)
    logical = overrides["finetune.batch_size"]
    num_samples = overrides["sampling.num_samples"]
    sampling_batch = min(sampling.batch_size, num_samples)
    logical_steps = "{:,} steps x {:,} images".format
    return [
        StageWork("sqf_training", sqf_steps, semantics.sqf_batch_size, semantics.sqf_batch_size,
                  sqf_steps * semantics.sqf_batch_size,
                  description=logical_steps(sqf_steps, semantics.sqf_batch_size) if sqf_steps else "none"),
        StageWork("pretraining", overrides["pretrain.steps"], pretrain.batch_size,
                  pretrain.physical_batch_size or pretrain.batch_size,
                  overrides["pretrain.steps"] * pretrain.batch_size,
                  description=logical_steps(overrides["pretrain.steps"], pretrain.batch_size)),
        StageWork("finetuning", finetune_steps, logical, min(finetune.physical_batch_size, logical),
                  finetune_steps * logical, schedule.noise_multiplicity,
                  description=f"{logical_steps(finetune_steps, logical)} (K={schedule.noise_multiplicity})"),
        # One step is one DDIM network evaluation of one batch.
        StageWork("sampling", schedule.ddim_steps * math.ceil(num_samples / sampling_batch), sampling_batch,
                  sampling_batch, schedule.ddim_steps * num_samples,
                  description=f"{num_samples:,} images x {schedule.ddim_steps} DDIM steps"),
    ]


def timing_images(work: StageWork, *, max_rows: int) -> int:
    """How many images a timed step of ``work`` runs: the physical batch, capped at ``max_rows`` rows (images x K)."""
    if max_rows < 1:
        raise ConfigError(f"experiment.resource_timing_rows must be positive, got {max_rows}")
    return max(1, min(work.physical_images, max_rows // work.noise_multiplicity))


def project_stage(*, work: StageWork, step_seconds: Sequence[float], timed_images: int, step_peak_bytes: int,
                  state_bytes: int) -> dict:
    """Scale timed steps to the stage's full schedule.

    Time is linear in image-passes: the median timed step, per image, times
    ``work.image_steps``. Memory is what lives across steps (``state_bytes``:
    weights, optimiser state, EMA) plus the step's peak, scaled from
    ``timed_images`` to the images processed at once (activations are linear in
    them); it is exact when the timed step ran the full physical batch.

    Args:
        work: the stage's schedule.
        step_seconds: durations of the timed steps (after warm-up).
        timed_images: images per timed step.
        step_peak_bytes: peak tensor memory one timed step allocated above what was alive before it.
        state_bytes: tensor memory alive between steps.

    Returns:
        ``{"wall_time_s", "peak_memory_mb", "seconds_per_step", "timed_images"}``.
    """
    if not step_seconds or timed_images < 1:
        raise ConfigError("a projection needs at least one timed step of at least one image")
    per_image = statistics.median(step_seconds) / timed_images
    peak = state_bytes + step_peak_bytes * work.physical_images / timed_images
    return {"wall_time_s": per_image * work.image_steps, "peak_memory_mb": peak / MIB,
            "seconds_per_step": per_image * work.images_per_step, "timed_images": timed_images}


def time_stage_step(*, stage: str, preset: str, work: StageWork, config: Config, image_shape: tuple[int, int, int],
                    num_classes: int, num_public_classes: int, max_rows: int, warmup: int, timed: int) -> dict:
    """Time ``timed`` steps of a stage after ``warmup``, and one step's peak tensor memory, on random inputs.

    Diffusion steps are measured as the DP-step benchmark measures them (`privimage.evaluation.step_cost`):
    ``non_private`` is a pre-training step, ``dp_sgd`` the fine-tuning stage's own
    DP-SGD step; sampling is one DDIM step (`privimage.diffusion.ddim_sample`);
    the SQF step is one SGD step of the profile's query function.

    Args:
        stage: one of `TABLE4_STAGES`.
        preset: the UNet preset (`privimage.models.presets`); the SQF ignores it.
        work: the stage's schedule (`stage_plan`).
        config: the profile (the SQF's shape, the sampler's guidance).
        image_shape: (C, H, W) of the sensitive images.
        num_classes: the sensitive classes (the UNet's labels).
        num_public_classes: the public classes (the SQF's outputs).
        max_rows: the most rows (images x K) a timed step runs (`timing_images`).
        warmup: untimed steps first (allocator, kernel choice).
        timed: timed steps; their median is projected.

    Returns:
        `project_stage`'s record plus ``num_parameters`` and ``how`` (what was timed).
    """


    images = timing_images(work, max_rows=max_rows)
    channels, size = image_shape[0], image_shape[-1]
    if stage in ("pretraining", "finetuning"):
        method = "non_private" if stage == "pretraining" else "dp_sgd"
        multiplicity = work.noise_multiplicity if stage == "finetuning" else 1
        measured = benchmark_configuration(model=preset, batch_size=images, noise_multiplicity=multiplicity,
                                           image_channels=channels, image_size=size, num_classes=num_classes,
                                           methods=(method,), rounds=timed, warmup=warmup)
        parameters = measured["num_parameters"]
        seconds = [measured["median_seconds"][method]]
        step_peak = measured["peak_memory_bytes"][method]
        # Weights, AdamW's two moments and the EMA copy live across steps.
        state = 4 * 4 * parameters
    else:
        step, network = _inference_or_sqf_step(stage=stage, preset=preset, config=config, images=images,
                                               image_shape=image_shape, num_classes=num_classes,
                                               num_public_classes=num_public_classes)
        parameters = count_parameters(network)
        step()
        step_peak = peak_step_memory(step, device=torch.device("cpu"))
        seconds = time_interleaved({stage: step}, rounds=timed, warmup=warmup, device=torch.device("cpu"))[stage]
        # Sampling holds the weights; the SQF also SGD's momentum.
        state = 4 * parameters * (1 if stage == "sampling" else 2)
    projected = project_stage(work=work, step_seconds=seconds, timed_images=images, step_peak_bytes=step_peak,
                              state_bytes=state)
    unit = "DDIM steps" if stage == "sampling" else "steps"
    how = f"projected from {timed} timed {unit} of {images} images after {warmup} warm-up"
    return {**projected, "num_parameters": parameters, "how": how}


def _inference_or_sqf_step(*, stage: str, preset: str, config: Config, images: int, image_shape, num_classes: int,
                           num_public_classes: int) -> tuple[Callable[[], None], "torch.nn.Module"]:
    """One DDIM step of the UNet, or one SGD step of the SQF, on random inputs."""


    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    if stage == "sampling":
        network = build_unet(DiffusionModelConfig(preset=preset), image_channels=image_shape[0],
                             image_size=image_shape[-1], num_classes=num_classes)
        labels = torch.randint(0, num_classes, (images,), generator=generator)
        return (lambda: ddim_sample(network, labels=labels, image_shape=image_shape, num_classes=num_classes,
                                    steps=1, guidance_scale=config.sampling.guidance_scale)), network
    if stage != "sqf_training":
        raise ConfigError(f"unknown Table 4 stage '{stage}' (choose from {', '.join(TABLE4_STAGES)})")
    network = build_query_function(config.semantics, in_channels=image_shape[0], num_classes=num_public_classes)
    # The optimiser of `train_query_function` (paper Table 7); the learning rate does not change the cost.
    optimizer = torch.optim.SGD(network.parameters(), lr=config.semantics.sqf_lr, momentum=0.9, nesterov=True)
    batch = torch.rand((images, *image_shape), generator=generator) * 2 - 1
    targets = torch.randint(0, num_public_classes, (images,), generator=generator)

    def step() -> None:
        F.cross_entropy(network(batch), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, network


def project_stages(*, config: Config, presets: Mapping[str, str], plans: Mapping[str, Sequence[StageWork]],
                   sensitive_info: Mapping, public_info: Mapping, progress: bool) -> pd.DataFrame:
    """Every stage of both methods, timed on random inputs and projected to its plan (Table 4's projected mode).

    Args:
        config: the notebook's config (``experiment.resource_timing_rows``, ``_warmup_steps``, ``_timed_steps``).
        presets: each method's UNet preset.
        plans: each method's `stage_plan`.
        sensitive_info, public_info: the datasets' registry entries (image shape, classes); no image is read.
        progress: show a progress bar.

    Returns:
        One row per method and stage: ``method``, ``preset``, ``stage``, ``work``, ``num_parameters``,
        ``wall_time_s``, ``peak_memory_mb`` and ``how``; a stage a method lacks costs nothing.
    """

    grid = config.experiment
    rows = []
    jobs = [(method, work) for method in METHODS for work in plans[method]]
    for method, work in tqdm(jobs, desc="timing stages", disable=not progress):
        row = {"method": method, "preset": presets[method], "stage": work.stage, "work": work.description}
        if work.steps == 0:
            rows.append({**row, "num_parameters": math.nan, "wall_time_s": 0.0, "peak_memory_mb": 0.0,
                         "how": "no such stage"})
            continue
        timed = time_stage_step(
            stage=work.stage, preset=presets[method], work=work, config=config,
            image_shape=tuple(sensitive_info["image_shape"]), num_classes=sensitive_info["num_classes"],
            num_public_classes=public_info["num_classes"], max_rows=grid.resource_timing_rows,
            warmup=grid.resource_warmup_steps, timed=grid.resource_timed_steps)
        rows.append({**row, "num_parameters": timed["num_parameters"], "wall_time_s": timed["wall_time_s"],
                     "peak_memory_mb": timed["peak_memory_mb"], "how": timed["how"]})
    return pd.DataFrame(rows)


def compare_methods(stages: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 4's layout: per stage and in total, each method's time and memory, and Privimage / PDP-Diffusion.

    Args:
        stages: one row per method and stage with ``method``, ``stage``, ``wall_time_s``,
            ``peak_memory_mb`` and ``how`` (measured or projected, and from what).

    Returns:
        One row per stage of `TABLE4_STAGES` and a ``total`` row (time summed, memory
        the peak over stages, as the paper's -48% and -50% are), with both methods'
        time and memory, the two ratios, the paper's ratios beside them, and ``how``.
    """
    missing = set(METHODS) - set(stages["method"])
    if missing:
        raise ConfigError(f"Table 4 needs both methods; missing {sorted(missing)}")
    by = stages.set_index(["method", "stage"])

    def value(method: str, stage: str, column: str) -> float:
        return float(by.loc[(method, stage), column]) if (method, stage) in by.index else 0.0

    def ratio(numerator: float, denominator: float) -> float:
        return numerator / denominator if denominator > 0 else math.nan

    rows = []
    for stage in TABLE4_STAGES:
        cells = {"stage": stage}
        for method in METHODS:
            cells[f"{method}_time_s"] = value(method, stage, "wall_time_s")
            cells[f"{method}_memory_mb"] = value(method, stage, "peak_memory_mb")
        paper_memory, paper_time = PAPER_TABLE4["memory_gb"][stage], PAPER_TABLE4["time_h"][stage]
        rows.append({**cells,
                     "time_ratio": ratio(cells["privimage-d_time_s"], cells["pdp-diffusion_time_s"]),
                     "paper_time_ratio": ratio(paper_time[1], paper_time[0]),
                     "memory_ratio": ratio(cells["privimage-d_memory_mb"], cells["pdp-diffusion_memory_mb"]),
                     "paper_memory_ratio": ratio(paper_memory[1], paper_memory[0]),
                     "how": _how(stages[stages["stage"] == stage])})
    table = pd.DataFrame(rows)
    total = {"stage": "total", "how": "time: sum over stages; memory: peak over stages"}
    for method in METHODS:
        total[f"{method}_time_s"] = table[f"{method}_time_s"].sum()
        total[f"{method}_memory_mb"] = table[f"{method}_memory_mb"].max()
    paper_time = [sum(times[i] for times in PAPER_TABLE4["time_h"].values()) for i in (0, 1)]
    paper_memory = [max(memory[i] for memory in PAPER_TABLE4["memory_gb"].values()) for i in (0, 1)]
    total.update({"time_ratio": ratio(total["privimage-d_time_s"], total["pdp-diffusion_time_s"]),
                  "paper_time_ratio": ratio(paper_time[1], paper_time[0]),
                  "memory_ratio": ratio(total["privimage-d_memory_mb"], total["pdp-diffusion_memory_mb"]),
                  "paper_memory_ratio": ratio(paper_memory[1], paper_memory[0])})
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)[list(rows[0])]


def _how(rows: pd.DataFrame) -> str:
    """How a stage was costed: one phrase when both methods agree, else each method's."""
    phrases = dict(zip(rows["method"], rows["how"].astype(str)))
    if len(set(phrases.values())) == 1:
        return next(iter(phrases.values()))
    return "; ".join(f"{method}: {phrase}" for method, phrase in phrases.items())

