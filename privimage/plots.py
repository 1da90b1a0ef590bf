"""Figures of the research-question notebooks, each written atomically as a PNG.

Every function takes finished numbers (a DataFrame from `privimage.experiments`
or arrays) and a path, draws one figure and returns the path; none of them
computes a metric or trains anything, so a figure can be redrawn without
touching a model (STYLE.md rule 4). Single-purpose figures that the evaluation
package already draws (t-SNE: `privimage.evaluation.plot_tsne`; one sample grid:
`privimage.evaluation.save_class_grid`) are used from there.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from privimage.cache import atomic_write_bytes
from privimage.errors import PrivImageError
from privimage.evaluation import class_grid

# Display names of metric columns.
METRIC_LABELS = {"fid": "FID (lower is better)", "ca_lr": "LR", "ca_mlp": "MLP", "ca_cnn": "CNN"}
CA_METRICS = ("ca_lr", "ca_mlp", "ca_cnn")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    """Write a matplotlib figure to ``path`` as PNG (atomic) and close it."""
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _errors(summary: pd.DataFrame, metric: str) -> np.ndarray | None:
    column = f"{metric}_std"
    if column not in summary:
        return None
    values = pd.to_numeric(summary[column], errors="coerce").to_numpy(dtype=float)
    return None if np.isnan(values).all() else np.nan_to_num(values)


def plot_metric_sweep(
    *, summary: pd.DataFrame, x: str, path: Path, title: str, xlabel: str, log_x: bool = False,
    reference: Mapping[str, float] | None = None, reference_label: str = "",
) -> Path:
    """FID (left) and classification accuracy of LR/MLP/CNN (right) against a swept setting (paper Fig. 7, 8).

    Args:
        summary: one row per value of ``x`` with ``fid``, ``ca_lr``, ``ca_mlp``, ``ca_cnn`` and
            optional ``*_std`` columns (error bars); rows without numbers (skipped) are left out.
        x: the swept column; numeric values are plotted on a numeric axis, others as categories in row order.
        path: the PNG to write.
        title: the figure title.
        xlabel: the x-axis label.
        log_x: logarithmic x axis (numeric sweeps such as the selection ratio).
        reference: optional horizontal lines, metric -> value (e.g. PDP-Diffusion's numbers).
        reference_label: the legend entry of the reference lines.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    done = summary[pd.to_numeric(summary["fid"], errors="coerce").notna()]
    if not len(done):
        raise PrivImageError(f"nothing to plot for '{title}': no finished run has a FID")
    numeric = pd.api.types.is_numeric_dtype(done[x])
    positions = done[x].to_numpy(dtype=float) if numeric else np.arange(len(done))
    figure, (fid_axes, ca_axes) = plt.subplots(1, 2, figsize=(9, 3.4))
    fid_axes.errorbar(positions, done["fid"].to_numpy(dtype=float), yerr=_errors(done, "fid"), marker="o",
                      capsize=3, color="black")
    fid_axes.set(ylabel=METRIC_LABELS["fid"], xlabel=xlabel)
    for metric in CA_METRICS:
        ca_axes.errorbar(positions, 100 * done[metric].to_numpy(dtype=float),
                         yerr=None if _errors(done, metric) is None else 100 * _errors(done, metric),
                         marker="o", capsize=3, label=METRIC_LABELS[metric])
    ca_axes.set(ylabel="accuracy on the test split (%)", xlabel=xlabel)
    for metric, value in (reference or {}).items():
        axes = fid_axes if metric == "fid" else ca_axes
        if value is not None and not math.isnan(value):
            axes.axhline(value if metric == "fid" else 100 * value, linestyle="--", linewidth=1, color="grey",
                         label=reference_label if metric in ("fid", "ca_cnn") else None)
    for axes in (fid_axes, ca_axes):
        if log_x and numeric:
            axes.set_xscale("log")
            axes.minorticks_off()
        # Ticks at the swept values themselves, written as given.
        axes.set_xticks(positions, [f"{v:g}" if isinstance(v, float) else str(v) for v in done[x]])
        axes.grid(alpha=0.3)
    ca_axes.legend(fontsize="small", frameon=False)
    if reference and reference_label:
        fid_axes.legend(fontsize="small", frameon=False)
    figure.suptitle(title, y=1.02)
    return save_figure(figure, path)


def plot_pretrained_and_sds(*, pretrained: pd.DataFrame, sds: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Paper Fig. 6: FID of generators that were only pre-trained (left); SDS against the selection ratio (right).

    Args:
        pretrained: rows with ``method`` and ``fid`` (means over seeds; skipped methods have no FID).
        sds: rows with ``subset`` ("selected" or "all public"), ``selection_ratio`` and ``sds``
            (means over seeds), as from `privimage.experiments.sds_by_ratio`.
        path: the PNG to write.
        title: the figure title.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    figure, (fid_axes, sds_axes) = plt.subplots(1, 2, figsize=(9, 3.4))
    shown = pretrained[pd.to_numeric(pretrained["fid"], errors="coerce").notna()]
    fid_axes.bar(shown["method"].astype(str), shown["fid"].to_numpy(dtype=float), color="tab:blue",
                 yerr=_errors(shown, "fid"), capsize=3)
    fid_axes.set(ylabel="FID before fine-tuning", title="pre-trained only")
    fid_axes.tick_params(axis="x", rotation=20)
    selected = sds[sds["subset"] == "selected"].sort_values("selection_ratio")
    percent = 100 * selected["selection_ratio"].to_numpy(dtype=float)
    sds_axes.errorbar(percent, selected["sds"].to_numpy(dtype=float),
                      yerr=_errors(selected, "sds"), marker="o", capsize=3, label="selected by the noisy query")
    for value in sds.loc[sds["subset"] == "all public", "sds"]:
        sds_axes.axhline(float(value), linestyle="--", color="grey", label="all public data")
    sds_axes.set(xscale="log", xlabel="selection ratio (%)", ylabel="SDS with the sensitive data", title="semantics")
    sds_axes.minorticks_off()
    sds_axes.set_xticks(percent, [f"{v:g}" for v in percent])
    sds_axes.legend(fontsize="small", frameon=False)
    for axes in (fid_axes, sds_axes):
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title, y=1.04)
    return save_figure(figure, path)


def plot_sample_panels(*, datasets: Mapping[str, object], path: Path, samples_per_class: int = 6, seed: int = 0,
                       title: str = "") -> Path:
    """Sample grids of several synthetic sets side by side, one panel per name (paper Fig. 5).

    Args:
        datasets: panel title -> `ImageDataset` (rows: classes, columns: samples).
        path: the PNG to write.
        samples_per_class: columns per panel.
        seed: which images are drawn (a display seed).
        title: the figure title.

    Returns:
        ``path``.
    """


    if not datasets:
        raise PrivImageError("plot_sample_panels needs at least one dataset")
    plt = _pyplot()
    figure, axes_list = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets) + 1.0, 4.6), squeeze=False)
    for column, (axes, (name, dataset)) in enumerate(zip(axes_list[0], datasets.items())):
        grid = class_grid(dataset=dataset, samples_per_class=samples_per_class, seed=seed)
        gray = grid.shape[-1] == 1
        axes.imshow(grid[..., 0] if gray else grid, cmap="gray" if gray else None, vmin=0, vmax=255,
                    interpolation="nearest")
        axes.set_title("\n".join(textwrap.wrap(name, 28)), fontsize="medium")
        axes.set_xticks([])
        # Class names once, beside the first panel's rows.
        cell = dataset.image_shape[1] + 2
        axes.set_yticks([2 + row * cell + dataset.image_shape[1] / 2 for row in range(dataset.num_classes)]
                        if column == 0 else [])
        if column == 0:
            axes.set_yticklabels(dataset.class_names, fontsize="small")
    if title:
        figure.suptitle(title, y=1.04)
    return save_figure(figure, path)


def plot_noisy_histogram(
    *, histogram: np.ndarray, row_names: Sequence[str], semantic_names: Sequence[str],
    selected: Mapping[str, Sequence[str]], path: Path, title: str = "",
) -> Path:
    """The released noisy semantic histogram at the selected semantics (paper Section 3.3).

    One heat-map row per sensitive class, one column per public semantic that a
    class selected; a cell is the noisy count, outlined where that row took it.

    Args:
        histogram: rows x public semantics, the released noisy counts.
        row_names: the sensitive classes.
        semantic_names: the public semantics.
        selected: sensitive class -> the semantics it selected.
        path: the PNG to write.
        title: the figure title.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    index = {name: i for i, name in enumerate(semantic_names)}
    columns = [name for row in row_names for name in selected.get(row, [])]
    if not columns:
        raise PrivImageError("no selected semantic to show")
    values = histogram[:, [index[name] for name in columns]]
    figure, axes = plt.subplots(figsize=(max(5, 0.35 * len(columns) + 2), 0.35 * len(row_names) + 1.5))
    image = axes.imshow(values, cmap="viridis", aspect="auto")
    for row, name in enumerate(row_names):
        for semantic in selected.get(name, []):
            column = columns.index(semantic)
            axes.add_patch(plt.Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    axes.set_yticks(range(len(row_names)), list(row_names), fontsize="small")
    axes.set_xticks(range(len(columns)), [c.lower() for c in columns], rotation=90, fontsize="x-small")
    figure.colorbar(image, ax=axes, label="noisy count")
    axes.set(title=title or "noisy semantic histogram (red: selected)")
    return save_figure(figure, path)


def plot_stage_costs(*, stages: pd.DataFrame, path: Path, title: str = "", memory_column: str = "peak_rss_mb",
                     memory_label: str = "peak resident memory (MiB)", log_time: bool = False) -> Path:
    """Time (left) and peak memory (right) per stage and method (paper Table 4 as a figure).

    Args:
        stages: rows with ``method``, ``stage``, ``wall_time_s`` and ``memory_column`` (means over seeds).
        path: the PNG to write.
        title: the figure title.
        memory_column, memory_label: the memory column and its axis label.
        log_time: a logarithmic time axis (stages that differ by orders of magnitude).

    Returns:
        ``path``.
    """
    plt = _pyplot()
    methods = list(dict.fromkeys(stages["method"]))
    stage_names = list(dict.fromkeys(stages["stage"]))
    width = 0.8 / max(len(methods), 1)
    figure, (time_axes, memory_axes) = plt.subplots(1, 2, figsize=(10, 3.4))
    for offset, method in enumerate(methods):
        part = stages[stages["method"] == method].set_index("stage").reindex(stage_names)
        positions = np.arange(len(stage_names)) + offset * width
        time_axes.bar(positions, part["wall_time_s"].to_numpy(dtype=float), width, label=method)
        memory_axes.bar(positions, part[memory_column].to_numpy(dtype=float), width, label=method)
    if log_time:
        time_axes.set_yscale("log")
    for axes, label in ((time_axes, "wall time (s)"), (memory_axes, memory_label)):
        axes.set_xticks(np.arange(len(stage_names)) + width * (len(methods) - 1) / 2, stage_names, rotation=15)
        axes.set(ylabel=label)
        axes.grid(alpha=0.3, axis="y")
    time_axes.legend(fontsize="small", frameon=False)
    if title:
        figure.suptitle(title, y=1.04)
    return save_figure(figure, path)
