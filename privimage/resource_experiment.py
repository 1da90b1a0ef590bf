"""Paper Table 4 (Section 6.2, notebook 06): time and memory per stage of PDP-Diffusion and Privimage+D.

Each method has its Table 4 model size (``experiment.resource_*_preset``) and
follows one schedule (`privimage.evaluation.resource_comparison`). How the
stages are costed is ``experiment.resource_mode``: ``measured`` runs both
methods in full as a grid of `privimage.experiments` and reads each run's
``resources.json``; ``projected`` times a few steps of every stage on random
inputs and scales them to the schedule, reading no sensitive data and training
nothing. The header lines come from `privimage.reporting.resource_notes`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from privimage import experiments
from privimage.config import Config
from privimage.data import dataset_info
from privimage.data.registry import resolve_data_root
from privimage.errors import ConfigError
from privimage.evaluation import resource_comparison as rc
from privimage.reporting import resource_notes
from privimage.resource_usage import stage_costs


def resource_table(
    *, config: Config, schedule=None, data_root: Path | None = None, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, list[str]]:
    """Paper Table 4: time and memory per stage of PDP-Diffusion and Privimage+D, and their ratios beside the paper's.

    Each method pre-trains for the same epochs over its own pre-training set
    (all public data; a ``resource_selection_ratio`` share of it), then runs the
    same DP fine-tuning and sampling. Measured stages keep the time and memory of
    the session that computed them (GPUs); projected ones say so.

    Args:
        config: the notebook's config.
        schedule: a `ResourceSchedule` (default: the paper's, `paper_schedule`).
        data_root: folder of real datasets.
        progress: show progress bars.

    Returns:
        ``(table, stages, runs, notes)``: the paper-shaped comparison
        (`compare_methods`), one row per method and stage (``preset``,
        ``num_parameters``, ``work``, ``wall_time_s``, ``peak_memory_mb``, ``how``),
        the runs of measured mode (None when projected), and the table's header lines.
    """

    grid = config.experiment
    data_root = resolve_data_root(data_root)
    schedule = schedule or rc.paper_schedule(data_root=data_root)
    public = dataset_info(config.data.public, "train", data_root=data_root, config=config.data)
    # Its size, shape and classes only: the sensitive images are not read here.
    sensitive = dataset_info(config.data.sensitive, "train", data_root=data_root, config=config.data)
    presets = {"pdp-diffusion": grid.resource_pdp_preset or config.diffusion.preset,
               "privimage-d": grid.resource_privimage_preset or config.diffusion.preset}
    plans = {method: rc.stage_plan(config=config, schedule=schedule, method=method,
                                   public_images=public["num_images"], sensitive_images=sensitive["num_images"],
                                   selection_ratio=grid.resource_selection_ratio) for method in rc.METHODS}
    # A projection builds each UNet from its preset name alone; the profile's custom shape is not a preset.
    if grid.resource_mode == "projected" and "custom" in presets.values():
        raise ConfigError("projected Table 4 needs UNet presets: set experiment.resource_privimage_preset and "
                          "experiment.resource_pdp_preset (e.g. 0.44M and 5.6M)")
    runs = None
    if grid.resource_mode == "measured":
        runs, stages = _measured_stages(config=config, schedule=schedule, presets=presets, plans=plans,
                                        public_images=public["num_images"], sensitive_images=sensitive["num_images"],
                                        data_root=data_root, progress=progress)
    else:
        stages = rc.project_stages(config=config, presets=presets, plans=plans, sensitive_info=sensitive,
                                   public_info=public, progress=progress)
    table = rc.compare_methods(stages)
    notes = resource_notes(config=config, schedule=schedule, presets=presets, stages=stages,
                           public_images=public["num_images"], measured=runs is not None)
    return table, stages, runs, notes


def _measured_stages(*, config: Config, schedule, presets: Mapping[str, str], plans: Mapping[str, Sequence],
                     public_images: int, sensitive_images: int, data_root: Path,
                     progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both methods run in full under ``schedule`` (Table 4's measured mode); their runs and per-stage costs."""

    grid = config.experiment
    points = []
    for method in rc.METHODS:
        own_set = rc.pretraining_images(method=method, public_images=public_images,
                                        selection_ratio=grid.resource_selection_ratio)
        # Only Privimage selects: PDP-Diffusion's run keeps the profile's (unused) selection setting.
        selection = {"semantics.selection_ratio": grid.resource_selection_ratio} if method == "privimage-d" else {}
        overrides = {"diffusion.preset": presets[method], **selection,
                     **rc.schedule_overrides(config=config, schedule=schedule, pretraining_images=own_set,
                                             sensitive_images=sensitive_images)}
        points += [experiments.GridPoint(method=method, epsilon=grid.sweep_epsilon, seed=seed, overrides=overrides,
                                         labels={"model_size": presets[method]}) for seed in grid.sweep_seeds]
    runs = experiments.run_grid(config=config, points=points, data_root=data_root, progress=progress)
    rows = []
    for _, run in runs[runs["status"] == "ok"].iterrows():
        work = {w.stage: w.description for w in plans[run["method"]]}
        for cost in stage_costs(Path(run["run_dir"])):
            on_gpu = math.isfinite(cost["gpu_reserved_mb"])
            rows.append({"method": run["method"], "preset": run["model_size"], "stage": cost["stage"],
                         "work": work[cost["stage"]], "num_parameters": run["num_parameters"],
                         "wall_time_s": cost["wall_time_s"],
                         "peak_memory_mb": cost["gpu_reserved_mb"] if on_gpu else cost["peak_rss_mb"],
                         "how": "measured (GPU reserved peak)" if on_gpu else "measured (process RSS peak)"})
    # Means over seeds.
    stages = (pd.DataFrame(rows).groupby(["method", "preset", "stage", "work", "how"], as_index=False, sort=False)
              [["num_parameters", "wall_time_s", "peak_memory_mb"]].mean())
    return runs, stages
