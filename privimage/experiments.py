"""The research-question experiments behind the notebooks: grids of runs -> pandas DataFrames.

Each notebook (DESIGN.md, "Research questions -> notebooks") resolves its
parameters with `experiment_config`, calls one grid function here, and hands the
resulting DataFrame to `privimage.tables` and `privimage.plots`:

- 00 tour: `run_point`, `private_selection`, `selection_histogram`, `ledger_table`, `pretrained_only`;
- 01 Table 2, Fig. 4-5: `main_grid`, `main_table`, `tsne_points`, `load_run_synthetic`;
- 02 Fig. 6, 10: `pretrained_only_grid`, `sds_by_ratio`, `private_selection`;
- 03, 04 Fig. 7: `selection_ratio_grid`, `model_size_grid`;
- 05 Table 3: `nonprivate_grid`; 06 Table 4: `resource_table`; 07 Fig. 8: `overparameterization_grid`.

No training loop or metric lives here: every run goes through
`privimage.pipeline.run_method`, metrics through `privimage.evaluation`. Stages
are cached (STYLE.md rule 4), so two notebooks asking for the same run share it,
and a run that finished before is read back without touching a model. Results
go to `results_dir(profile)`: ``$PRIVIMAGE_RESULTS/<profile>``, else
``<repo>/results/<profile>``; run folders to ``cache_root()/runs/<profile>/``.

A row of a grid DataFrame is one run (method, epsilon, seed and the swept
parameter) with ``status`` "ok" or "skipped" and a ``note`` saying why a run was
skipped (a GAN method while `run_method` refuses to train GANs). `summarize` turns
rows into means over seeds with a ``*_std`` column beside each metric.

Privacy (DESIGN.md): FID and accuracy use the sensitive test split for reporting
only; no experiment selects or tunes anything on sensitive data. The NonPriv row
(`nonprivate_accuracy`) reads the sensitive training split outside any DP
mechanism, as the paper's Table 3 does, and is labelled so.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from privimage.cache import atomic_write_json, cache_root, stage_dir
from privimage.config import Config, ExperimentConfig, config_from_dict, config_hash, load_config
from privimage.errors import ConfigError, PrivImageError

RESULTS_ENV = "PRIVIMAGE_RESULTS"
# What `run_method` says when it refuses a generator family it cannot train yet.
UNTRAINABLE_MARK = "does not train"
_REPO_ROOT = Path(__file__).resolve().parent.parent

# Metric columns of every grid row, in table order.
METRICS = ("fid", "ca_lr", "ca_mlp", "ca_cnn")
# The headline numbers of a run, beside the metrics.
RUN_COLUMNS = ("dataset", "public", "method", "epsilon", "seed", "status", "note", *METRICS,
               "epsilon_spent", "epsilon_prv", "delta", "fid_backbone", "fid_scale", "fid_unscaled",
               "fid_num_synthetic", "fid_num_real", "num_parameters", "run_dir")


# --------------------------------------------------------------------------- where results go


def results_dir(profile: str) -> Path:
    """The results folder of a profile: ``$PRIVIMAGE_RESULTS/<profile>``, else ``<repo>/results/<profile>``.

    Args:
        profile: a profile name, or a YAML path (its file stem names the folder).

    Returns:
        The folder (created, with ``tables/`` and ``figures/`` inside).
    """
    name = Path(profile).stem if Path(profile).suffix in (".yaml", ".yml") else profile
    root = Path(os.environ[RESULTS_ENV]) if os.environ.get(RESULTS_ENV) else _REPO_ROOT / "results"
    folder = root / name
    for sub in ("tables", "figures"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


def tables_dir(profile: str) -> Path:
    """``results_dir(profile)/tables``."""
    return results_dir(profile) / "tables"


def figures_dir(profile: str) -> Path:
    """``results_dir(profile)/figures``."""
    return results_dir(profile) / "figures"


def resolve_data_root(data_root: Path | None = None) -> Path:
    """Where real datasets live: ``data_root``, else ``$PRIVIMAGE_DATA``, else ``<repo>/data``.

    Notebooks run with ``notebooks/`` as working directory, where the CLI's
    ``./data`` default would point to the wrong folder.
    """
    if data_root is not None:
        return Path(data_root)
    return Path(os.environ["PRIVIMAGE_DATA"]) if os.environ.get("PRIVIMAGE_DATA") else _REPO_ROOT / "data"


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


def benchmark_note(config: Config) -> str:
    """One line naming the datasets behind a table (the embedded benchmark says it replaces the paper's)."""
    if config.data.sensitive == "mnist5k" and config.data.public == "glyphs1k":
        return ("Embedded benchmark: MNIST-5k sensitive, Glyphs-1k public; it replaces the paper's "
                "CIFAR-10/CelebA (sensitive) and ImageNet (public) columns.")
    return f"Sensitive: {config.data.sensitive}; public: {config.data.public}."


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
    from privimage.methods import get_method
    from privimage.pipeline import check_epsilon, default_run_dir

    recipe = get_method(method)
    name = default_run_dir(method=recipe, config=config, epsilon=check_epsilon(recipe, epsilon)).name
    return cache_root() / "runs" / config.profile / name


def _finished(run_dir: Path) -> bool:
    # run_method writes resources.json last; its presence means every artifact is complete.
    return (run_dir / "resources.json").is_file() and (run_dir / "metrics.json").is_file()


def run_point(*, config: Config, point: GridPoint, data_root: Path | None = None, progress: bool = True) -> dict:
    """Run (or read back) one grid point and flatten its outcome into a table row.

    A finished run is read from its folder without calling the pipeline, so
    re-plotting never retrains and per-stage timings keep their first measurement.
    A GAN method that `run_method` cannot train yet gives a row with status
    "skipped" and the pipeline's reason in ``note``; any other error propagates.

    Args:
        config: the notebook's resolved config.
        point: the run.
        data_root: folder of real datasets.
        progress: show progress bars.

    Returns:
        A dict with the keys of `RUN_COLUMNS` plus ``point.labels``.
    """
    data_root = resolve_data_root(data_root)
    from privimage.methods import get_method
    from privimage.pipeline import run_method

    recipe = get_method(point.method)
    resolved = run_config(config=config, point=point)
    row: dict[str, Any] = {column: None for column in RUN_COLUMNS}
    # Missing numbers are NaN, so that a column of a skipped run stays numeric.
    row.update({column: math.nan for column in (*METRICS, "epsilon_spent", "epsilon_prv", "fid_unscaled")})
    row.update(dataset=resolved.data.sensitive, public=resolved.data.public, method=recipe.name,
               epsilon=point.epsilon if recipe.private else None, seed=point.seed, status="ok", note="")
    row.update(point.labels)
    run_dir = run_folder(method=recipe.name, config=resolved, epsilon=point.epsilon)
    if not _finished(run_dir):
        try:
            run_method(method=recipe.name, config=resolved, epsilon=point.epsilon, out_dir=run_dir,
                       data_root=data_root, evaluate=True, progress=progress)
        except PrivImageError as exc:
            # Only the pipeline's refusal of a generator family it cannot train is a
            # skipped row (with its reason); every other error is a failure.
            if recipe.generator == "diffusion" or UNTRAINABLE_MARK not in str(exc):
                raise
            row.update(status="skipped", note=f"not run: {exc}")
            return row
    row.update(read_run(run_dir))
    row["num_parameters"] = count_generator_parameters(method=recipe.name, config=resolved, data_root=data_root)
    return row


def count_generator_parameters(*, method: str, config: Config, data_root: Path | None = None) -> int:
    """Parameters of a method's generator (the UNet, or the GAN's generator) for the config's sensitive data.

    ``data_root`` is where the user's own sensitive dataset lies (the embedded and
    known datasets need no files).
    """
    from privimage.data import dataset_info
    from privimage.generators import generator_family
    from privimage.methods import get_method

    info = dataset_info(config.data.sensitive, "train", data_root=data_root, config=config.data)
    channels, _, size = (int(v) for v in info["image_shape"])
    return generator_family(get_method(method).generator).sampler_parameters(
        config, image_channels=channels, image_size=size, num_classes=int(info["num_classes"]))


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
    from tqdm.auto import tqdm

    points = list(points)
    rows = []
    for point in tqdm(points, desc="runs", disable=not progress or len(points) < 2):
        rows.append(run_point(config=config, point=point, data_root=data_root, progress=progress))
    frame = pd.DataFrame(rows)
    skipped = frame[frame["status"] == "skipped"]
    if len(skipped):
        warnings.warn(f"{len(skipped)} run(s) skipped: {sorted(set(skipped['method']))} (see the 'note' column)",
                      stacklevel=2)
    return frame


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


def describe_fid(runs: pd.DataFrame) -> str:
    """The FID backbone, feature scale and sample counts of the finished runs, for a table header."""
    done = runs[runs["status"] == "ok"]
    if not len(done):
        return "FID: no finished run"
    backbones = sorted(set(str(b) for b in done["fid_backbone"].dropna()))
    # Runs evaluated before the scale was recorded measured raw offline features.
    scales = done["fid_scale"] if "fid_scale" in done else pd.Series([None] * len(done), dtype=object)
    scales = sorted(set("scale not recorded (raw)" if s is None or s != s else str(s) for s in scales))
    synthetic = sorted(set(int(n) for n in done["fid_num_synthetic"].dropna()))
    real = sorted(set(int(n) for n in done["fid_num_real"].dropna()))
    return (f"FID backbone: {', '.join(backbones)}, features {'; '.join(scales)}; {'/'.join(map(str, synthetic))} "
            f"synthetic vs {'/'.join(map(str, real))} real test images (reporting only)")


# --------------------------------------------------------------------------- RQ1 (Table 2, Fig. 4, 5)


def main_grid(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Every method x epsilon x seed of ``config.experiment`` (paper Table 2).

    Returns:
        The runs (`run_grid`).
    """
    grid = config.experiment
    points = [GridPoint(method=m, epsilon=e, seed=s) for m in grid.methods for e in grid.epsilons for s in grid.seeds]
    return run_grid(config=config, points=points, data_root=data_root, progress=progress)


def load_run_synthetic(run_dir: Path, *, data_root: Path | None = None):
    """The synthetic set of a run folder (``synthetic.npz``) as an `ImageDataset` named by the sensitive classes.

    The class names come from the folder's ``config.json`` (its sensitive dataset,
    looked up under ``data_root`` when it is the user's own).
    """
    from privimage.data import dataset_info
    from privimage.data.base import ImageDataset

    resolved = config_from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    names = tuple(dataset_info(resolved.data.sensitive, "test", data_root=data_root,
                               config=resolved.data)["class_names"])
    with np.load(Path(run_dir) / "synthetic.npz") as archive:
        return ImageDataset("synthetic", "all", archive["x"], archive["y"], names)


def tsne_points(*, run_dir: Path, config: Config, data_root: Path | None = None, progress: bool = False) -> dict:
    """t-SNE of the sensitive test images embedded by a CNN trained on a run's synthetic set (paper Fig. 4).

    The CNN is selected on held-out synthetic images only; the test split is
    embedded for the figure (reporting only). Cached beside the run as ``tsne.npz``.

    Returns:
        ``{"points": N x 2, "labels": N, "class_names": tuple}``.
    """
    data_root = resolve_data_root(data_root)
    from privimage.cache import atomic_save_npz
    from privimage.evaluation import cnn_embeddings, train_classifiers, tsne_embedding
    from privimage.evaluation.datasets import load_test_split

    path = Path(run_dir) / "tsne.npz"
    test = load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data)
    if not path.is_file():
        synthetic = load_run_synthetic(run_dir, data_root=data_root)
        trained = train_classifiers(train=synthetic, config=config.evaluation, seed=config.seed,
                                    num_classes=test.num_classes, kinds=("cnn",), progress=progress)
        embeddings = cnn_embeddings(model=trained.cnn, dataset=test)
        perplexity = min(config.evaluation.tsne_perplexity, (len(test) - 1) / 3)
        atomic_save_npz(path, points=tsne_embedding(embeddings=embeddings, seed=config.seed, perplexity=perplexity),
                        labels=test.labels)
    with np.load(path) as archive:
        return {"points": archive["points"], "labels": archive["labels"], "class_names": test.class_names}


# --------------------------------------------------------------------------- RQ2 (Fig. 6, Fig. 10)


def sensitive_test_frequencies(*, config: Config, data_root: Path | None = None) -> dict[str, float]:
    """{class name: count} of the sensitive test split: its semantic distribution for SDS (reporting only).

    The training split's class counts would be read outside any DP mechanism.
    """
    data_root = resolve_data_root(data_root)
    from privimage.evaluation.datasets import load_test_split
    from privimage.semantics import dataset_frequencies

    return dataset_frequencies(load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data))


def private_selection(*, config: Config, data_root: Path | None = None, progress: bool = True):
    """The selected public subset and the query's summary for ``config`` (cached DP release).

    The release is the one every Privimage run of this seed and ratio reuses; its
    ledger (the query alone) is in ``summary["ledger"]``.

    Returns:
        ``(selected ImageDataset, summary dict)``.
    """
    data_root = resolve_data_root(data_root)
    from privimage.data import load_sensitive_train
    from privimage.methods import get_method
    from privimage.pipeline import selection_stage
    from privimage.privacy import PrivacyLedger

    # The sensitive set is read by the noisy query only (accounted in the ledger).
    sensitive = load_sensitive_train(config, data_root=data_root)
    ledger = PrivacyLedger(delta=config.finetune.delta, dataset_hash=sensitive.content_hash(),
                           num_examples=len(sensitive))
    return selection_stage(method=get_method("privimage-d"), config=config, sensitive=sensitive, ledger=ledger,
                           data_root=data_root, progress=progress)


def own_glyph_name(sensitive: str, public: str, class_name: str) -> str | None:
    """The public class that is this sensitive class's own glyph (MNIST-5k's "seven": Glyphs-1k's "DIGIT SEVEN")."""
    from privimage.data.glyphs import DIGIT_NAMES
    from privimage.data.mnist5k import CLASS_NAMES as DIGIT_CLASS_NAMES

    if sensitive != "mnist5k" or public != "glyphs1k" or class_name not in DIGIT_CLASS_NAMES:
        return None
    return DIGIT_NAMES[DIGIT_CLASS_NAMES.index(class_name)]


def selection_report(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """What the main query selected for each sensitive class, per Table 2 seed (paper Fig. 10, Table 8).

    One row per seed and sensitive class: the public classes selected, how many
    of them are the class's own glyph (on the embedded benchmark; empty elsewhere),
    and the epsilon of the query alone. The releases are the cached ones the
    Privimage runs of each seed reuse, so this reads no sensitive data anew.
    """
    rows = []
    for seed in config.experiment.seeds:
        seeded = run_config(config=config, point=GridPoint(method="privimage-d", epsilon=None, seed=seed))
        _, summary = private_selection(config=seeded, data_root=data_root, progress=progress)
        query_epsilon = ledger_epsilon(summary["ledger"]) if summary.get("ledger") else 0.0
        for sensitive_class, chosen in summary["selected"].items():
            own = own_glyph_name(summary["sensitive"], summary["public"], sensitive_class)
            rows.append({"seed": seed, "sensitive_class": sensitive_class, "selected": ", ".join(chosen),
                         "num_selected": len(chosen), "own_glyph": own,
                         "num_own_glyph": None if own is None else int(own in chosen),
                         "k": summary["k"], "semantics_per_class": summary["semantics_per_class"],
                         "query_noise_multiplier": summary["query_noise_multiplier"],
                         "query_epsilon": query_epsilon})
    return pd.DataFrame(rows)


def ledger_epsilon(ledger: Mapping) -> float:
    """The epsilon of a serialised ledger (e.g. a selection's query alone)."""
    from privimage.privacy import PrivacyLedger

    return PrivacyLedger.from_dict(dict(ledger)).epsilon()


def sds_by_ratio(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """SDS between the sensitive data and each selected pre-training set, and the whole public set (Fig. 6 right).

    One row per seed and selection ratio of ``config.experiment``; the row with
    ``subset == "all public"`` is the whole public training set (no query).

    Beside SDS, ``frechet_sqf`` is the Fréchet distance between the SQF's
    penultimate features of the subset and of the sensitive data: does the
    selection look more like the sensitive images than the whole corpus does?
    It is measured against the sensitive *test* split (reporting only, outside
    the guarantee, like FID), so that no code path reads the training split
    outside the ledger.

    Returns:
        Columns ``dataset, public, seed, selection_ratio, subset, num_images, sds, frechet_sqf,
        query_epsilon, status, note``.
    """
    data_root = resolve_data_root(data_root)
    from privimage.data import load_dataset
    from privimage.privacy import PrivacyLedger
    from privimage.semantics import dataset_frequencies, semantic_distribution_similarity

    sensitive_frequencies = sensitive_test_frequencies(config=config, data_root=data_root)
    public = load_dataset(config.data.public, "train", data_root=data_root, config=config.data)
    frechet_to_sensitive = _sqf_frechet_distances(config=config, public=public, data_root=data_root,
                                                  progress=progress)
    # The whole public set needs no query: its SDS is the baseline every selection should beat.
    public_sds = semantic_distribution_similarity(sensitive_frequencies, dataset_frequencies(public))
    public_frechet = frechet_to_sensitive(public.class_names)
    rows = []
    for seed in config.experiment.seeds:
        rows.append({"dataset": config.data.sensitive, "public": config.data.public, "seed": seed,
                     "selection_ratio": 1.0, "subset": "all public", "num_images": len(public), "sds": public_sds,
                     "frechet_sqf": public_frechet, "query_epsilon": 0.0, "status": "ok", "note": "no query"})
        for ratio in config.experiment.selection_ratios:
            point = GridPoint(method="privimage-d", epsilon=None, seed=seed,
                              overrides={"semantics.selection_ratio": ratio})
            selected, summary = private_selection(config=run_config(config=config, point=point),
                                                  data_root=data_root, progress=progress)
            rows.append({
                "dataset": config.data.sensitive, "public": config.data.public, "seed": seed,
                "selection_ratio": ratio, "subset": "selected", "num_images": len(selected),
                "sds": semantic_distribution_similarity(sensitive_frequencies, summary["selected_counts"]),
                "frechet_sqf": frechet_to_sensitive([name for names in summary["selected"].values() for name in names]),
                "query_epsilon": PrivacyLedger.from_dict(summary["ledger"]).epsilon(), "status": "ok", "note": "",
            })
    return pd.DataFrame(rows)


def _sqf_frechet_distances(*, config: Config, public, data_root: Path, progress: bool):
    """A function: public class names -> Fréchet distance (SQF features) of their images to the sensitive test split."""
    import numpy as np
    from pytorch_fid.fid_score import calculate_frechet_distance

    from privimage.evaluation.datasets import load_test_split
    from privimage.evaluation.fid import feature_statistics
    from privimage.semantics.stage import trained_query_function

    query_function = trained_query_function(config, data_root=data_root, progress=progress)
    test = load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data)
    reference = feature_statistics(query_function.features(test))
    # Features of the whole corpus once; a subset is a mask over its classes.
    public_features = query_function.features(public)
    class_index = {name: index for index, name in enumerate(public.class_names)}

    def frechet_to_sensitive(class_names) -> float:
        mask = np.isin(public.labels, [class_index[name] for name in class_names])
        return float(calculate_frechet_distance(*feature_statistics(public_features[mask]), *reference))

    return frechet_to_sensitive


def pretrained_only(*, config: Config, method: str, data_root: Path | None = None, progress: bool = True) -> dict:
    """Samples and FID of a method's generator after pre-training, before any fine-tuning (Fig. 6 left).

    The pre-trained model comes from the same cached stage the method's runs use.
    PDP-Diffusion's model is pre-trained unconditionally on all public data, so it
    is sampled with the null class (a GAN has none and is sampled per class). Samples go to
    ``cache_root()/pretrained_samples/<key>/`` (``synthetic.npz``, ``samples.png``).

    Returns:
        ``{"method", "seed", "status", "note", "fid", "fid_backbone", "fid_scale", "fid_num_synthetic", "samples_dir"}``.
    """
    data_root = resolve_data_root(data_root)
    import torch

    from privimage.data import load_sensitive_train
    from privimage.generators import generator_family
    from privimage.methods import get_method
    from privimage.pipeline import pretrain_stage, pretraining_data, sample_stage
    from privimage.privacy import PrivacyLedger

    recipe = get_method(method)
    row = {"method": recipe.name, "seed": config.seed, "status": "ok", "note": "", "fid": math.nan,
           "fid_backbone": None, "fid_scale": None, "fid_num_synthetic": None, "fid_num_real": None,
           "samples_dir": None}
    if recipe.pretrain_data == "none":
        return {**row, "status": "skipped", "note": f"{recipe.name} has no pre-training stage"}
    # The sensitive set is read by the noisy query only (selected pre-training data); the ledger records it.
    sensitive = load_sensitive_train(config, data_root=data_root)
    ledger = PrivacyLedger(delta=config.finetune.delta, dataset_hash=sensitive.content_hash(),
                           num_examples=len(sensitive))
    public, data_key, _ = pretraining_data(method=recipe, config=config, sensitive=sensitive, ledger=ledger,
                                           data_root=data_root, progress=progress)
    channels, _, size = sensitive.image_shape
    identity = {**config.to_dict(), "experiment": None}
    folder = stage_dir("pretrained_samples", config_hash({"run": identity, "data": data_key,
                                                          "generator": recipe.generator}))
    # config.json is written last: a folder without it (a crash after sampling) is redone, not read.
    if not (folder / "config.json").is_file():
        networks, _ = pretrain_stage(method=recipe, config=config, public=public, data_key=data_key,
                                     image_channels=channels, image_size=size, num_classes=sensitive.num_classes,
                                     progress=progress)
        networks = generator_family(recipe.generator).pretrained_for_sampling(
            networks, unconditional=data_key.startswith("all:"), num_classes=sensitive.num_classes)
        with torch.no_grad():
            sample_stage(method=recipe, networks=networks, config=config, class_names=sensitive.class_names,
                         image_shape=sensitive.image_shape, run_dir=folder, progress=progress)
        # The samples derive from the noisy query: the ledger and config go beside them.
        atomic_write_json(folder / "ledger.json", ledger.to_dict())
        atomic_write_json(folder / "config.json", config.to_dict())
    return {**_samples_fid(folder=folder, config=config, data_root=data_root, progress=progress, row=row),
            "query_epsilon": ledger.epsilon()}


def _samples_fid(*, folder: Path, config: Config, data_root: Path, progress: bool, row: dict) -> dict:
    """``row`` with the FID of the synthetic set in ``folder`` against the sensitive test split (reporting only)."""
    from privimage.evaluation import frechet_distance, load_fid_backbone
    from privimage.evaluation.datasets import load_test_split

    synthetic = load_run_synthetic(folder, data_root=data_root)
    test = load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data)
    extractor = load_fid_backbone(config=config, data_root=data_root, progress=progress)
    fid = frechet_distance(synthetic=synthetic, real=test, extractor=extractor,
                           allow_singular_covariance=config.evaluation.fid_allow_singular_covariance)
    return {**row, "fid": float(fid["fid"]), "fid_backbone": fid["fid_backbone"], "fid_scale": fid["fid_scale"],
            "fid_unscaled": fid.get("fid_unscaled", math.nan),
            "fid_num_synthetic": fid["fid_num_synthetic"], "fid_num_real": fid["fid_num_real"],
            "samples_dir": str(folder)}


def pretrained_only_grid(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """`pretrained_only` for every method of ``config.experiment.pretrained_methods`` and Table 2 seed.

    Table 2's seeds, whose pre-trained models the main grid has already cached, so
    the FID before fine-tuning has a seed spread at the cost of sampling alone.
    On the embedded benchmark each seed also gets the `matched_glyph_pretraining` reference row.
    """
    rows = []
    for seed in config.experiment.seeds:
        for method in config.experiment.pretrained_methods:
            seeded = run_config(config=config, point=GridPoint(method=method, epsilon=None, seed=seed))
            rows.append({"dataset": config.data.sensitive,
                         **pretrained_only(config=seeded, method=method, data_root=data_root, progress=progress)})
        seeded = run_config(config=config, point=GridPoint(method="privimage-d", epsilon=None, seed=seed))
        reference = matched_glyph_pretraining(config=seeded, data_root=data_root, progress=progress)
        if reference["status"] != "skipped":
            rows.append({"dataset": config.data.sensitive, **reference})
    return pd.DataFrame(rows)


def matched_glyph_pretraining(*, config: Config, data_root: Path | None = None, progress: bool = True) -> dict:
    """Samples and FID of Privimage+D's model pre-trained on each digit's own glyph class: a reference for RQ2.

    On the embedded benchmark a perfect semantic query would select, for MNIST's
    class "seven", the glyph class "DIGIT SEVEN". This pre-trains the profile's
    UNet, with the same budget and sampler as the methods, on exactly those ten
    public classes, relabelled to the digits. The classes are matched by name,
    not chosen by a query of the sensitive data: no privacy cost and no ledger.
    It tells apart two reasons for weak results: the query's choice (compare
    with Privimage+D's pre-trained-only row) and the model's capacity.

    Returns:
        A `pretrained_only` row with method ``"matched-glyphs"`` (status ``skipped``
        unless the public data is Glyphs-1k and the sensitive classes are the ten digits).
    """
    data_root = resolve_data_root(data_root)
    from privimage.data import dataset_info, load_dataset
    from privimage.data.glyphs import DIGIT_NAMES
    from privimage.data.mnist5k import CLASS_NAMES as DIGIT_CLASS_NAMES
    from privimage.methods import get_method
    from privimage.pipeline import pretrain_stage, sample_stage
    from privimage.semantics.selection import relabel_selected

    row = {"method": "matched-glyphs", "seed": config.seed, "status": "ok", "note": "", "fid": math.nan,
           "fid_backbone": None, "fid_scale": None, "fid_num_synthetic": None, "fid_num_real": None,
           "samples_dir": None}
    # Class names and image shape from the test split's metadata: the training split is never opened here.
    info = dataset_info(config.data.sensitive, "test", data_root=data_root, config=config.data)
    if config.data.public != "glyphs1k" or tuple(info["class_names"]) != DIGIT_CLASS_NAMES:
        return {**row, "status": "skipped", "note": "needs glyphs1k public data and the ten digit classes"}
    public = load_dataset(config.data.public, "train", data_root=data_root, config=config.data)
    matched = relabel_selected(public=public, selected=dict(zip(DIGIT_CLASS_NAMES, ([name] for name in DIGIT_NAMES))),
                               class_names=DIGIT_CLASS_NAMES)
    data_key = f"matched:{matched.content_hash()}"
    image_shape = tuple(info["image_shape"])
    recipe = get_method("privimage-d")
    identity = {**config.to_dict(), "experiment": None}
    folder = stage_dir("pretrained_samples", config_hash({"run": identity, "data": data_key,
                                                          "generator": recipe.generator}))
    # config.json is written last: a folder without it (a crash after sampling) is redone, not read.
    if not (folder / "config.json").is_file():
        networks, _ = pretrain_stage(method=recipe, config=config, public=matched, data_key=data_key,
                                     image_channels=image_shape[0], image_size=image_shape[-1],
                                     num_classes=len(DIGIT_CLASS_NAMES), progress=progress)
        sample_stage(method=recipe, networks=networks, config=config, class_names=DIGIT_CLASS_NAMES,
                     image_shape=image_shape, run_dir=folder, progress=progress)
        atomic_write_json(folder / "config.json", config.to_dict())
    return {**_samples_fid(folder=folder, config=config, data_root=data_root, progress=progress, row=row),
            "query_epsilon": 0.0}


# --------------------------------------------------------------------------- RQ3 (Fig. 7)


def selection_ratio_grid(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Privimage+D at ``experiment.sweep_epsilon`` for each selection ratio and seed (Fig. 7, ratio).

    Each ratio queries with its own k: k = N, the semantics it selects per class,
    unless the profile sets k (paper Appendix A, Table 8). The rows carry both.
    """
    from privimage.semantics.stage import resolve_query_settings

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


# --------------------------------------------------------------------------- Table 3 (non-private variants)


def nonprivate_accuracy(*, config: Config, data_root: Path | None = None, progress: bool = True) -> dict:
    """The NonPriv row of Table 3: LR/MLP/CNN trained on the real sensitive training split.

    This reads the sensitive training set outside any DP mechanism: it is the
    paper's non-private reference, has no privacy guarantee, and says so.
    Cached under ``cache_root()/nonpriv_classifiers/<key>/``.

    Returns:
        ``{"ca_lr", "ca_mlp", "ca_cnn", "note"}``.
    """
    data_root = resolve_data_root(data_root)
    from privimage.data import load_sensitive_train
    from privimage.evaluation import classification_accuracy
    from privimage.evaluation.datasets import load_test_split

    key = config_hash({"data": dataclasses.asdict(config.data), "evaluation": dataclasses.asdict(config.evaluation),
                       "seed": config.seed})
    path = stage_dir("nonpriv_classifiers", key) / "accuracy.json"
    if not path.is_file():
        train = load_sensitive_train(config, data_root=data_root)
        test = load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data)
        result = classification_accuracy(train=train, test=test, config=config.evaluation, seed=config.seed,
                                         non_private=True, progress=progress)
        atomic_write_json(path, {"ca": result["ca"], "training_data": result["ca_training_data"]})
    result = json.loads(path.read_text())
    return {"ca_lr": result["ca"]["lr"], "ca_mlp": result["ca"]["mlp"], "ca_cnn": result["ca"]["cnn"],
            "note": "classifiers on the real training split: no privacy guarantee"}


def nonprivate_grid(*, config: Config, data_root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 3: ``experiment.nonprivate_methods`` (non-private ablations and Privimage at
    ``sweep_epsilon``) per seed, plus the NonPriv row (method ``nonpriv``, classifiers on real data)."""
    from privimage.methods import get_method

    grid = config.experiment
    points = [GridPoint(method=m, epsilon=grid.sweep_epsilon if get_method(m).private else None, seed=s)
              for m in grid.nonprivate_methods for s in grid.sweep_seeds]
    runs = run_grid(config=config, points=points, data_root=data_root, progress=progress)
    rows = []
    for seed in grid.sweep_seeds:
        seeded = run_config(config=config, point=GridPoint(method="nonpriv-d", epsilon=None, seed=seed))
        rows.append({"dataset": config.data.sensitive, "public": config.data.public, "method": "nonpriv",
                     "epsilon": None, "seed": seed, "status": "ok", "fid": math.nan,
                     **nonprivate_accuracy(config=seeded, data_root=data_root, progress=progress)})
    return pd.concat([runs, pd.DataFrame(rows)], ignore_index=True)


# --------------------------------------------------------------------------- Table 4 (resources)


def resource_table(
    *, config: Config, schedule=None, data_root: Path | None = None, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, list[str]]:
    """Paper Table 4: time and memory per stage of PDP-Diffusion and Privimage+D, and their ratios beside the paper's.

    Each method has its Table 4 model size (``experiment.resource_*_preset``) and
    follows ``schedule``: pre-training for the same epochs over its own
    pre-training set (all public data; a ``resource_selection_ratio`` share of
    it), the same DP fine-tuning and sampling. ``experiment.resource_mode``
    chooses how: ``measured`` runs both methods in full through the pipeline
    (GPUs; stages keep the time and memory of the session that computed them);
    ``projected`` times a few steps of every stage on random inputs and scales
    them to the schedule (`privimage.evaluation.resource_comparison`), reading no
    sensitive data and training nothing.

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
    from tqdm.auto import tqdm

    from privimage.data import dataset_info
    from privimage.evaluation import resource_comparison as rc

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
        rows = []
        jobs = [(method, work) for method in rc.METHODS for work in plans[method]]
        for method, work in tqdm(jobs, desc="timing stages", disable=not progress):
            row = {"method": method, "preset": presets[method], "stage": work.stage, "work": work.description}
            if work.steps == 0:
                rows.append({**row, "num_parameters": math.nan, "wall_time_s": 0.0, "peak_memory_mb": 0.0,
                             "how": "no such stage"})
                continue
            timed = rc.time_stage_step(
                stage=work.stage, preset=presets[method], work=work, config=config,
                image_shape=tuple(sensitive["image_shape"]), num_classes=sensitive["num_classes"],
                num_public_classes=public["num_classes"], max_rows=grid.resource_timing_rows,
                warmup=grid.resource_warmup_steps, timed=grid.resource_timed_steps)
            rows.append({**row, "num_parameters": timed["num_parameters"], "wall_time_s": timed["wall_time_s"],
                         "peak_memory_mb": timed["peak_memory_mb"], "how": timed["how"]})
        stages = pd.DataFrame(rows)
    table = rc.compare_methods(stages)
    sizes = stages.groupby("method")["num_parameters"].max()
    notes = [
        benchmark_note(config),
        f"Model sizes: PDP-Diffusion {presets['pdp-diffusion']} ({sizes['pdp-diffusion']:,.0f} parameters), "
        f"Privimage+D {presets['privimage-d']} ({sizes['privimage-d']:,.0f}), "
        f"{sizes['pdp-diffusion'] / sizes['privimage-d']:.1f} : 1 (paper 80M : 6.1M = 13.1 : 1).",
        f"Schedule (paper Table 5, per pass over the data): pre-training {schedule.pretrain_epochs:.1f} epochs of "
        f"each method's own set (PDP-Diffusion all {public['num_images']:,} public images, Privimage+D "
        f"{grid.resource_selection_ratio:.0%} of them); DP fine-tuning {schedule.finetune_epochs:g} epochs at "
        f"q = {schedule.finetune_sample_rate:.3f}, K = {schedule.noise_multiplicity}; sampling "
        f"{schedule.samples_per_image:g} images per sensitive image, {schedule.ddim_steps} DDIM steps; "
        f"the SQF: the profile's {config.semantics.sqf_epochs} epochs.",
        ("Measured: every stage ran in full; memory is the GPU's reserved peak where there is one, else the "
         "process's peak resident memory." if runs is not None else
         "Projected: each stage's median timed step (random inputs, after warm-up) scaled by its image-passes; "
         "memory is tensor memory (weights, optimiser state, EMA, and one step's peak from torch.profiler, "
         "scaled to the physical batch where fewer images were timed), the CPU counterpart of the paper's GPU "
         "memory."),
        "Ratios are Privimage+D / PDP-Diffusion; total time sums the stages, total memory is the peak over stages "
        "(the paper's -48% time and -50% memory, Section 6.2).",
    ]
    # Other processes stretch every timed step alike: the load says how far the seconds are from an idle machine's.
    if runs is None and hasattr(os, "getloadavg"):
        notes.append(f"Timed on {os.cpu_count()} CPU cores at a 1-minute load average of {os.getloadavg()[0]:.1f} "
                     f"(torch threads: {_torch_threads()}); compare ratios across machines, not seconds.")
    return table, stages, runs, notes


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _measured_stages(*, config: Config, schedule, presets: Mapping[str, str], plans: Mapping[str, list],
                     public_images: int, sensitive_images: int, data_root: Path,
                     progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both methods run in full under ``schedule`` (Table 4's measured mode); their runs and per-stage costs."""
    from privimage.evaluation import resource_comparison as rc

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
        points += [GridPoint(method=method, epsilon=grid.sweep_epsilon, seed=seed, overrides=overrides,
                             labels={"model_size": presets[method]}) for seed in grid.sweep_seeds]
    runs = run_grid(config=config, points=points, data_root=data_root, progress=progress)
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


def stage_costs(run_dir: Path) -> list[dict]:
    """Time and peak memory of SQF training, pre-training, fine-tuning and sampling of one run (paper Table 4).

    Pre-training and fine-tuning report the session that trained them (the
    stage caches keep it); the SQF's training time comes from the selection
    stage; a method without an SQF or pre-training reports zero time.
    """
    resources = json.loads((Path(run_dir) / "resources.json").read_text())
    measured = {record["stage"]: record for record in resources.get("stages", [])}

    def row(stage: str, record: Mapping | None, wall_time: float | None = None) -> dict:
        record = record or {}
        rss, gpu = record.get("peak_rss_bytes"), record.get("gpu_max_reserved_bytes")
        return {"stage": stage,
                "wall_time_s": float(wall_time if wall_time is not None else record.get("wall_time_s", math.nan)),
                "peak_rss_mb": rss / 2**20 if rss else math.nan, "gpu_reserved_mb": gpu / 2**20 if gpu else math.nan}

    sqf = resources.get("selection", {}).get("sqf")
    pretraining = resources.get("pretraining", {})
    finetuning = resources.get("finetuning", {})
    return [
        row("sqf_training", None, wall_time=sqf["train_seconds"] if sqf else 0.0),
        row("pretraining", pretraining.get("resources"),
            wall_time=0.0 if pretraining.get("skipped") else pretraining.get("wall_time_s_all_sessions")),
        row("finetuning", finetuning.get("resources") or measured.get("finetuning"),
            wall_time=finetuning.get("wall_time_s_all_sessions")),
        row("sampling", measured.get("sampling")),
    ]


# --------------------------------------------------------------------------- tables of the notebooks


def main_table(*, runs: pd.DataFrame, config: Config) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Paper Table 2 from the RQ1 runs: the long form, the paper's shape (methods x epsilon) and its header notes.

    Returns:
        ``(long, shaped, notes)``: ``long`` has ``dataset, method, epsilon, fid, ca_lr, ca_mlp, ca_cnn``
        (means over seeds, ``*_std`` beside each with several seeds), ``num_seeds``,
        ``epsilon_spent_max`` (the largest epsilon any seed's ledger spent), ``status`` and ``note``.
    """
    from privimage.tables import paper_shape

    long = summarize(runs, by=["dataset", "method", "epsilon"])
    # The paper prints accuracy in percent; the CSV keeps fractions.
    percent = long.copy()
    for column in [c for c in long if c.startswith("ca_")]:
        percent[column] = 100 * long[column]
    shaped = paper_shape(percent, rows="method", columns="epsilon", metrics=METRICS,
                         labels={"fid": "FID", "ca_lr": "CA LR (%)", "ca_mlp": "CA MLP (%)", "ca_cnn": "CA CNN (%)"})
    return long, shaped, table_notes(runs=runs, config=config)


def table_notes(*, runs: pd.DataFrame, config: Config) -> list[str]:
    """The header lines every result table carries: datasets, FID backbone, test split use, seeds, skipped runs."""
    notes = [benchmark_note(config), describe_fid(runs),
             "CA: accuracy (fraction correct) of LR/MLP/CNN trained on synthetic data, tested on the "
             f"{config.data.sensitive} test split (reporting only; no selection or tuning used it).",
             f"Profile '{config.profile}', delta {config.finetune.delta:g}, seeds "
             f"{sorted(set(int(s) for s in runs['seed'].dropna()))} (mean ± std where several)."]
    skipped = runs[runs["status"] == "skipped"]
    for method, note in dict(zip(skipped["method"], skipped["note"])).items():
        notes.append(f"{method} skipped: {note}")
    return notes


# --------------------------------------------------------------------------- the tour (notebook 00)


def public_preview(*, config: Config, class_names: Sequence[str] | None = None, num_classes: int = 10,
                   data_root: Path | None = None):
    """A few classes of the public training split, as an `ImageDataset` for a sample grid.

    Args:
        config: the resolved config.
        class_names: which public classes (default: ``num_classes`` drawn with ``config.seed``).
        num_classes: how many classes to draw when none are named.
        data_root: folder of real datasets.

    Returns:
        The images of those classes, labelled 0..len-1 in the given order.
    """
    data_root = resolve_data_root(data_root)
    from privimage.data import load_dataset
    from privimage.semantics.selection import relabel_selected

    public = load_dataset(config.data.public, "train", data_root=data_root, config=config.data)
    if class_names is None:
        rng = np.random.default_rng(config.seed)
        drawn = sorted(rng.choice(public.num_classes, num_classes, replace=False))
        class_names = [public.class_names[i] for i in drawn]
    return relabel_selected(public=public, selected={name: [name] for name in class_names}, class_names=class_names)


def selection_histogram(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The released noisy histogram behind a selection summary (its ``noisy_histogram.npz``).

    The selection stage's folder is found by its ``selection.json``, which is the summary itself.

    Returns:
        ``{"histogram", "row_names", "semantic_names", "folder"}``.
    """
    for path in sorted((cache_root() / "selection").glob("*/selection.json")):
        if json.loads(path.read_text()) == json.loads(json.dumps(summary)):
            with np.load(path.parent / "noisy_histogram.npz") as archive:
                return {"histogram": archive["noisy_histogram"], "row_names": [str(n) for n in archive["row_names"]],
                        "semantic_names": [str(n) for n in archive["semantic_names"]], "folder": path.parent}
    raise PrivImageError("no cached selection stage matches this summary (run the selection first)")


def ledger_table(run_dir: Path) -> pd.DataFrame:
    """A run's privacy ledger as a table: each mechanism, its parameters, and epsilon alone and cumulative.

    Epsilons are recomputed from the entries (RDP, at the ledger's delta), the
    way the run's own `PrivacyLedger.epsilon` composes them (paper Appendix E).
    """
    from privimage.privacy import PrivacyLedger

    ledger = PrivacyLedger.load(Path(run_dir) / "ledger.json")
    entries = ledger.entries
    rows = []
    for position, entry in enumerate(entries):
        alone = PrivacyLedger.from_dict({**ledger.to_dict(), "entries": [entry]}).epsilon()
        upto = PrivacyLedger.from_dict({**ledger.to_dict(), "entries": entries[: position + 1]}).epsilon()
        rows.append({
            "mechanism": entry["mechanism"],
            "noise": entry.get("query_noise_multiplier", entry.get("noise_multiplier")),
            "l2_sensitivity": entry.get("l2_sensitivity", entry.get("max_grad_norm", "C (clipping)")),
            "sample_rate": entry.get("sample_rate", 1.0),
            "steps": entry.get("steps", 1),
            "epsilon_alone": alone,
            "epsilon_cumulative": upto,
        })
    return pd.DataFrame(rows)
