"""What the result tables say about themselves, and the tables shaped from finished numbers.

Nothing here trains, samples or queries: every function takes runs already
summarised by `privimage.experiments` (or a run folder's ledger) and returns a
table or the header lines `privimage.tables.write_table` puts above it:

- `benchmark_note`, `describe_fid`, `table_notes`: datasets, FID backbone,
  reporting-only test split and seeds;
- `main_table`: paper Table 2 from the RQ1 runs;
- `resource_notes`: the header of paper Table 4;
- `ledger_table`: a run's privacy ledger, mechanism by mechanism.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch

from privimage.config import Config
from privimage.experiments import METRICS, summarize
from privimage.privacy import PrivacyLedger
from privimage.tables import paper_shape


def benchmark_note(config: Config) -> str:
    """One line naming the datasets behind a table (the embedded benchmark says it replaces the paper's)."""
    if config.data.sensitive == "mnist5k" and config.data.public == "glyphs1k":
        return ("Embedded benchmark: MNIST-5k sensitive, Glyphs-1k public; it replaces the paper's "
                "CIFAR-10/CelebA (sensitive) and ImageNet (public) columns.")
    return f"Sensitive: {config.data.sensitive}; public: {config.data.public}."


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


def table_notes(*, runs: pd.DataFrame, config: Config) -> list[str]:
    """The header lines every result table carries: datasets, FID backbone, test split use, seeds."""
    return [benchmark_note(config), describe_fid(runs),
             "CA: accuracy (fraction correct) of LR/MLP/CNN trained on synthetic data, tested on the "
             f"{config.data.sensitive} test split (reporting only; no selection or tuning used it).",
             f"Profile '{config.profile}', delta {config.finetune.delta:g}, seeds "
             f"{sorted(set(int(s) for s in runs['seed'].dropna()))} (mean ± std where several)."]


def main_table(*, runs: pd.DataFrame, config: Config) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Paper Table 2 from the RQ1 runs: the long form, the paper's shape (methods x epsilon) and its header notes.

    Args:
        runs: the output of `privimage.experiments.main_grid`.
        config: the notebook's config.

    Returns:
        ``(long, shaped, notes)``: ``long`` has ``dataset, method, epsilon, fid, ca_lr, ca_mlp, ca_cnn``
        (means over seeds, ``*_std`` beside each with several seeds), ``num_seeds``,
        ``epsilon_spent_max`` (the largest epsilon any seed's ledger spent), ``status`` and ``note``.
    """
    long = summarize(runs, by=["dataset", "method", "epsilon"])
    # The paper prints accuracy in percent; the CSV keeps fractions.
    percent = long.copy()
    for column in [c for c in long if c.startswith("ca_")]:
        percent[column] = 100 * long[column]
    shaped = paper_shape(percent, rows="method", columns="epsilon", metrics=METRICS,
                         labels={"fid": "FID", "ca_lr": "CA LR (%)", "ca_mlp": "CA MLP (%)", "ca_cnn": "CA CNN (%)"})
    return long, shaped, table_notes(runs=runs, config=config)


def resource_notes(*, config: Config, schedule, presets: Mapping[str, str], stages: pd.DataFrame,
                   public_images: int, measured: bool) -> list[str]:
    """The header lines of paper Table 4: datasets, model sizes, the schedule, and how time and memory were found.

    Args:
        config: the notebook's config.
        schedule: the `ResourceSchedule` both methods followed.
        presets: each method's UNet preset.
        stages: one row per method and stage, with ``num_parameters``.
        public_images: the size of the public training set.
        measured: whether the stages ran in full (else they were projected from timed steps).

    Returns:
        The lines, in the order the table shows them.
    """
    grid = config.experiment
    sizes = stages.groupby("method")["num_parameters"].max()
    notes = [
        benchmark_note(config),
        f"Model sizes: PDP-Diffusion {presets['pdp-diffusion']} ({sizes['pdp-diffusion']:,.0f} parameters), "
        f"Privimage+D {presets['privimage-d']} ({sizes['privimage-d']:,.0f}), "
        f"{sizes['pdp-diffusion'] / sizes['privimage-d']:.1f} : 1 (paper 80M : 6.1M = 13.1 : 1).",
        f"Schedule (paper Table 5, per pass over the data): pre-training {schedule.pretrain_epochs:.1f} epochs of "
        f"each method's own set (PDP-Diffusion all {public_images:,} public images, Privimage+D "
        f"{grid.resource_selection_ratio:.0%} of them); DP fine-tuning {schedule.finetune_epochs:g} epochs at "
        f"q = {schedule.finetune_sample_rate:.3f}, K = {schedule.noise_multiplicity}; sampling "
        f"{schedule.samples_per_image:g} images per sensitive image, {schedule.ddim_steps} DDIM steps; "
        f"the SQF: the profile's {config.semantics.sqf_epochs} epochs.",
        ("Measured: every stage ran in full; memory is the GPU's reserved peak where there is one, else the "
         "process's peak resident memory." if measured else
         "Projected: each stage's median timed step (random inputs, after warm-up) scaled by its image-passes; "
         "memory is tensor memory (weights, optimiser state, EMA, and one step's peak from torch.profiler, "
         "scaled to the physical batch where fewer images were timed), the CPU counterpart of the paper's GPU "
         "memory."),
        "Ratios are Privimage+D / PDP-Diffusion; total time sums the stages, total memory is the peak over stages "
        "(the paper's -48% time and -50% memory, Section 6.2).",
    ]
    # Other processes stretch every timed step alike: the load says how far the seconds are from an idle machine's.
    if not measured and hasattr(os, "getloadavg"):
        notes.append(f"Timed on {os.cpu_count()} CPU cores at a 1-minute load average of {os.getloadavg()[0]:.1f} "
                     f"(torch threads: {_torch_threads()}); compare ratios across machines, not seconds.")
    return notes


def _torch_threads() -> int:
    return torch.get_num_threads()


def ledger_table(run_dir: Path) -> pd.DataFrame:
    """A run's privacy ledger as a table: each mechanism, its parameters, and epsilon alone and cumulative.

    Epsilons are recomputed from the entries (RDP, at the ledger's delta), the
    way the run's own `PrivacyLedger.epsilon` composes them (paper Appendix E).

    Args:
        run_dir: a run folder with its ``ledger.json``.

    Returns:
        One row per ledger entry: ``mechanism``, ``noise``, ``l2_sensitivity``, ``sample_rate``, ``steps``,
        ``epsilon_alone``, ``epsilon_cumulative``.
    """

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
