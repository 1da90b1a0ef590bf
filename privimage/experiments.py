"""The research-question grids behind the notebooks: grid points -> runs -> pandas DataFrames.

Each notebook (DESIGN.md, "Research questions -> notebooks") resolves its
parameters with `experiment_config`, runs its grid here and hands the rows to
`privimage.reporting`, `privimage.tables` and `privimage.plots`: 01 `main_grid`
(Table 2); 02 `pretrained_only_grid`, `sds_by_ratio`, `selection_report` (Fig. 6,
10); 03, 04 `selection_ratio_grid`, `model_size_grid` (Fig. 7); 05
`nonprivate_grid` (Table 3); 07 `overparameterization_grid` (Fig. 8); 00
`run_point`. Table 4 (06) is `privimage.resource_experiment`.

Every run goes through `privimage.pipeline.run_method`, single stages through
`privimage.stages`. Stages are cached (STYLE.md rule 4): two notebooks asking
for the same run share it, and a finished run is read back without touching a
model. Run folders live in ``cache_root()/runs/<profile>/``.

A row of a grid is one run (method, epsilon, seed and the swept parameter).
`summarize` turns rows into means over seeds with a ``*_std`` column beside
each metric; a group without a finished run (a stage row marked ``skipped``, such
as the FID before fine-tuning of a method that does not pre-train) keeps its note.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
from tqdm.auto import tqdm

# The pipeline through its module, so a run_method replaced there (a test's tripwire) is the one called.
from privimage import pipeline, stages
from privimage.config import Config, ExperimentConfig, config_from_dict, load_config
from privimage.data.registry import resolve_data_root
from privimage.errors import ConfigError
from privimage.evaluation.selection_similarity import SelectionSimilarity
from privimage.generators import count_generator_parameters
from privimage.methods import get_method
from privimage.pipeline import check_epsilon, default_run_dir
from privimage.semantics.stage import resolve_query_settings

# Metric columns of every grid row, in table order.
METRICS = ("fid", "ca_lr", "ca_mlp", "ca_cnn")
# The headline numbers of a run, beside the metrics.
RUN_COLUMNS = ("dataset", "public", "method", "epsilon", "seed", "status", "note", *METRICS,
               "epsilon_spent", "epsilon_prv", "delta", "fid_backbone", "fid_scale", "fid_unscaled",
               "fid_num_synthetic", "fid_num_real", "num_parameters", "run_dir")


def experiment_config(*, profile: str, seed: int | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Resolve a notebook's parameters into a `Config` (strict: unknown keys are errors).

    Args:
        profile: ``smoke``, ``quick``, ``paper`` or a YAML path.
        seed: the experiment seed of single-run notebooks (None: the profile's).
        overrides: dotted keys applied after the profile, e.g. ``{"sampling.num_samples": 500}``.

    Returns:
        The resolved config.
    """
    merged = dict(overrides or {})
    if seed is not None:
        merged["seed"] = seed
    return load_config(profile, merged)


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class GridPoint:
    """One run of a grid: a method at a budget and seed, with the swept settings.

    ``overrides`` are dotted config keys for swept parameters only (ratio, model
    size); ``labels`` become extra columns of the row (e.g. ``selection_ratio``).
    """

    method: str
    epsilon: float | None
    seed: int
    overrides: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, Any] = field(default_factory=dict)


def run_config(*, config: Config, point: GridPoint) -> Config:
    """The config of one grid point: the sweep's overrides and seed, and no grid section.

    The ``experiment`` section describes the grid, not a run: resetting it keeps a
    run's folder and its ``config.json`` identical whichever notebook asks for it.
    """
    resolved = config.to_dict()
    for dotted, value in {**point.overrides, "seed": point.seed}.items():
        *parents, leaf = dotted.split(".")
        section = resolved
        for parent in parents:
            if not isinstance(section.get(parent), dict):
                raise ConfigError(f"grid override '{dotted}': '{parent}' is not a config section")
            section = section[parent]
        section[leaf] = list(value) if isinstance(value, tuple) else value
    resolved["experiment"] = dataclasses.asdict(ExperimentConfig())
    # config_from_dict checks keys and types as strictly as a profile file.
    return config_from_dict(json.loads(json.dumps(resolved)), source="grid overrides")


def run_folder(*, method: str, config: Config, epsilon: float | None) -> Path:
    """Where a grid run lives: ``cache_root()/runs/<profile>/<pipeline's run name>``.

    Run folders hold checkpoints and synthetic sets; keeping them in the cache
    (not in ``results/``) lets every notebook and a later ``run_all.sh`` reuse them.
    """

    recipe = get_method(method)
    return default_run_dir(method=recipe, config=config, epsilon=check_epsilon(recipe, epsilon))


def _finished(run_dir: Path) -> bool:
    # run_method writes resources.json last; its presence means every artifact is complete.
    return (run_dir / "resources.json").is_file() and (run_dir / "metrics.json").is_file()


def run_point(*, config: Config, point: GridPoint, data_root: Path | None = None, progress: bool = True) -> dict:
    """Run (or read back) one grid point and flatten its outcome into a table row.

    A finished run is read from its folder without calling the pipeline, so
    re-plotting never retrains and per-stage timings keep their first measurement.
    Any error of the pipeline propagates: a grid has no row for a run that failed.

    Args:
        config: the notebook's resolved config.
        point: the run.
        data_root: folder of real datasets.
        progress: show progress bars.

    Returns:
        A dict with the keys of `RUN_COLUMNS` plus ``point.labels``.
    """

    data_root = resolve_data_root(data_root)

    recipe = get_method(point.method)
    resolved = run_config(config=config, point=point)
    row: dict[str, Any] = {column: None for column in RUN_COLUMNS}
    # Missing numbers are NaN, so that a column stays numeric when a run has no such metric.
    row.update({column: math.nan for column in (*METRICS, "epsilon_spent", "epsilon_prv", "fid_unscaled")})
    row.update(dataset=resolved.data.sensitive, public=resolved.data.public, method=recipe.name,
               epsilon=point.epsilon if recipe.private else None, seed=point.seed, status="ok", note="")
    row.update(point.labels)
    run_dir = run_folder(method=recipe.name, config=resolved, epsilon=point.epsilon)
    if not _finished(run_dir):
        pipeline.run_method(method=recipe.name, config=resolved, epsilon=point.epsilon, out_dir=run_dir,
                            data_root=data_root, evaluate=True, progress=progress)
    row.update(read_run(run_dir))
    row["num_parameters"] = count_generator_parameters(method=recipe.name, config=resolved, data_root=data_root)
    return row


def read_run(run_dir: Path) -> dict[str, Any]:
    """The headline numbers of a finished run folder (``metrics.json``, ``privacy.json``, ``resources.json``)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    privacy = json.loads((run_dir / "privacy.json").read_text())
    ca = metrics.get("ca", {})
    return {
        "fid": _number(metrics.get("fid")), "ca_lr": _number(ca.get("lr")), "ca_mlp": _number(ca.get("mlp")),
        "ca_cnn": _number(ca.get("cnn")), "epsilon_spent": _number(privacy.get("epsilon")),
        "epsilon_prv": _number(privacy.get("epsilon_prv")), "delta": privacy.get("delta"),
        "fid_backbone": metrics.get("fid_backbone"), "fid_scale": metrics.get("fid_scale"),
        "fid_unscaled": _number(metrics.get("fid_unscaled")),
        "fid_num_synthetic": metrics.get("fid_num_synthetic"),
        "fid_num_real": metrics.get("fid_num_real"), "run_dir": str(run_dir),
    }


def _number(value: Any) -> float:
    return float(value) if value is not None else math.nan


def run_grid(*, config: Config, points: Iterable[GridPoint], data_root: Path | None = None,
             progress: bool = True) -> pd.DataFrame:
    """Run every grid point in order; one row per run.

    Args:
        config: the notebook's resolved config.
        points: the runs (`GridPoint`).
        data_root: folder of real datasets.
        progress: show progress bars.

    Returns:
        A DataFrame with the columns of `RUN_COLUMNS` and the points' labels.
    """

    points = list(points)
    rows = []
    for point in tqdm(points, desc="runs", disable=not progress or len(points) < 2):
        rows.append(run_point(config=config, point=point, data_root=data_root, progress=progress))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- aggregation


def summarize(runs: pd.DataFrame, *, by: Iterable[str], metrics: Iterable[str] = METRICS) -> pd.DataFrame:
    """Means over seeds of each metric, with a ``<metric>_std`` column beside it when there are several seeds.

    Skipped runs are kept as rows with empty metrics and their note, so a table
    shows that a method was not run rather than leaving it out.

    Args:
        runs: the output of `run_grid`.
        by: the grouping columns (e.g. ``["dataset", "method", "epsilon"]``).
        metrics: the metric columns to average.

    Returns:
        One row per group: the keys, ``num_seeds``, each metric and (several seeds) its std,
        ``epsilon_spent_max`` (when the runs have ``epsilon_spent``), ``status``, ``note``.
    """
    by, metrics = list(by), list(metrics)
    several = runs.groupby(by, dropna=False, sort=False)["seed"].nunique().max() > 1 if len(runs) else False
    rows = []
    for keys, group in runs.groupby(by, dropna=False, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(by, keys))
        done = group[group["status"] == "ok"]
        row["num_seeds"] = int(done["seed"].nunique())
        for metric in metrics:
            values = pd.to_numeric(done[metric], errors="coerce").dropna()
            row[metric] = float(values.mean()) if len(values) else math.nan
            if several:
                row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        if "epsilon_spent" in group:
            # The largest epsilon any seed's ledger spent: the guarantee the row can claim.
            spent = pd.to_numeric(done["epsilon_spent"], errors="coerce").dropna()
            row["epsilon_spent_max"] = float(spent.max()) if len(spent) else math.nan
        row["status"] = "ok" if len(done) == len(group) else ("skipped" if not len(done) else "partial")
        row["note"] = "; ".join(sorted(set(n for n in group["note"] if n)))
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the research questions' grids


def main_grid(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Every method x epsilon x seed of ``config.experiment`` (paper Table 2).

    Returns:
        The runs (`run_grid`).
    """
    grid = config.experiment
    points = [GridPoint(method=m, epsilon=e, seed=s) for m in grid.methods for e in grid.epsilons for s in grid.seeds]
    return run_grid(config=config, points=points, data_root=data_root, progress=progress)


def pretrained_only_grid(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """`privimage.stages.pretrained_only` for every method of ``experiment.pretrained_methods`` and Table 2 seed.

    Table 2's seeds, whose pre-trained models the main grid has already cached, so
    the FID before fine-tuning has a seed spread at the cost of sampling alone.
    On the embedded benchmark each seed also gets the `matched_glyph_pretraining` reference row.
    """
    rows = []
    for seed in config.experiment.seeds:
        for method in config.experiment.pretrained_methods:
            seeded = run_config(config=config, point=GridPoint(method=method, epsilon=None, seed=seed))
            rows.append({"dataset": config.data.sensitive,
                         **stages.pretrained_only(config=seeded, method=method, data_root=data_root,
                                                  progress=progress)})
        seeded = run_config(config=config, point=GridPoint(method="privimage-d", epsilon=None, seed=seed))
        reference = stages.matched_glyph_pretraining(config=seeded, data_root=data_root, progress=progress)
        if reference["status"] != "skipped":
            rows.append({"dataset": config.data.sensitive, **reference})
    return pd.DataFrame(rows)


def selection_report(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """What the main query selected for each sensitive class, per Table 2 seed (paper Fig. 10, Table 8).

    The releases are the cached ones the Privimage runs of each seed reuse, so
    this reads no sensitive data anew. Rows: `privimage.stages.selection_rows`.
    """
    rows = []
    for seed in config.experiment.seeds:
        seeded = run_config(config=config, point=GridPoint(method="privimage-d", epsilon=None, seed=seed))
        rows += stages.selection_rows(config=seeded, data_root=data_root, progress=progress)
    return pd.DataFrame(rows)


def sds_by_ratio(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """SDS between the sensitive data and each selected pre-training set, and the whole public set (Fig. 6 right).

    One row per seed and selection ratio of ``config.experiment``; the row with
    ``subset == "all public"`` is the whole public training set (no query).
    Beside SDS, ``frechet_sqf`` (`privimage.evaluation.selection_similarity`),
    both against the sensitive test split (reporting only).

    Returns:
        Columns ``dataset, public, seed, selection_ratio, subset, num_images, sds, frechet_sqf,
        query_epsilon, status, note``.
    """

    data_root = resolve_data_root(data_root)
    similarity = SelectionSimilarity(config=config, data_root=data_root, progress=progress)
    dataset = {"dataset": config.data.sensitive, "public": config.data.public}
    rows = []
    for seed in config.experiment.seeds:
        # The whole public set needs no query: its SDS is the baseline every selection should beat.
        rows.append({**dataset, "seed": seed, "selection_ratio": 1.0, "subset": "all public",
                     **similarity.of_public(), "query_epsilon": 0.0, "status": "ok", "note": "no query"})
        for ratio in config.experiment.selection_ratios:
            point = GridPoint(method="privimage-d", epsilon=None, seed=seed,
                              overrides={"semantics.selection_ratio": ratio})
            selected, summary = stages.private_selection(config=run_config(config=config, point=point),
                                                         data_root=data_root, progress=progress)
            rows.append({**dataset, "seed": seed, "selection_ratio": ratio, "subset": "selected",
                         **similarity.of_selection(selected=selected, summary=summary),
                         "query_epsilon": stages.ledger_epsilon(summary["ledger"]), "status": "ok", "note": ""})
    return pd.DataFrame(rows)


def selection_ratio_grid(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Privimage+D at ``experiment.sweep_epsilon`` for each selection ratio and seed (Fig. 7, ratio).

    Each ratio queries with its own k: k = N, the semantics it selects per class,
    unless the profile sets k (paper Appendix A, Table 8). The rows carry both.
    """

    data_root = resolve_data_root(data_root)
    grid = config.experiment
    points = []
    for ratio in grid.selection_ratios:
        for seed in grid.sweep_seeds:
            point = GridPoint(method="privimage-d", epsilon=grid.sweep_epsilon, seed=seed,
                              overrides={"semantics.selection_ratio": ratio})
            query = resolve_query_settings(run_config(config=config, point=point), data_root=data_root)
            points.append(dataclasses.replace(point, labels={
                "selection_ratio": ratio, "semantics_per_class": query.semantics_per_class, "k": query.k}))
    return run_grid(config=config, points=points, data_root=data_root, progress=progress)


def model_size_grid(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Privimage+D at ``experiment.sweep_epsilon`` for each diffusion size preset and seed (Fig. 7, size)."""
    grid = config.experiment
    points = [GridPoint(method="privimage-d", epsilon=grid.sweep_epsilon, seed=s,
                        overrides={"diffusion.preset": size}, labels={"model_size": size})
              for size in grid.model_sizes for s in grid.sweep_seeds]
    return run_grid(config=config, points=points, data_root=data_root, progress=progress)


def overparameterization_grid(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """``experiment.overparameterization_method`` on ``experiment.overparameterization_dataset``
    for each size preset and seed (paper Appendix B, Fig. 8)."""
    grid = config.experiment
    points = [GridPoint(method=grid.overparameterization_method, epsilon=grid.sweep_epsilon, seed=s,
                        overrides={"diffusion.preset": size, "data.sensitive": grid.overparameterization_dataset},
                        labels={"model_size": size})
              for size in grid.overparameterization_sizes for s in grid.sweep_seeds]
    return run_grid(config=config, points=points, data_root=data_root, progress=progress)


def nonprivate_grid(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 3: ``experiment.nonprivate_methods`` (non-private ablations and Privimage at
    ``sweep_epsilon``) per seed, plus the NonPriv row (method ``nonpriv``, classifiers on real data)."""

    grid = config.experiment
    points = [GridPoint(method=m, epsilon=grid.sweep_epsilon if get_method(m).private else None, seed=s)
              for m in grid.nonprivate_methods for s in grid.sweep_seeds]
    runs = run_grid(config=config, points=points, data_root=data_root, progress=progress)
    rows = []
    for seed in grid.sweep_seeds:
        seeded = run_config(config=config, point=GridPoint(method="nonpriv-d", epsilon=None, seed=seed))
        rows.append({"dataset": config.data.sensitive, "public": config.data.public, "method": "nonpriv",
                     "epsilon": None, "seed": seed, "status": "ok", "fid": math.nan,
                     **stages.nonprivate_accuracy(config=seeded, data_root=data_root, progress=progress)})
    return pd.concat([runs, pd.DataFrame(rows)], ignore_index=True)
