"""DP-SGD step vs non-private step vs the DPDM-style opacus baseline, side by side.

``python -m benchmarks.dp_step --out results/benchmarks`` writes ``dp_step.json``
(one row per model and K with the issue's ratios, the raw medians and peaks, and
the machine it ran on) and ``dp_step.md`` (the same as a table).
``python -m benchmarks`` runs this and `benchmarks.throughput` in one process.
How each number is measured: `privimage.evaluation.step_cost`; targets and ratios: `benchmarks.dp_benchmark`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmarks.cli import run_command, write_report
from benchmarks.dp_benchmark import TARGETS, environment, ratio_row, targets_met
from privimage.config import FinetuneConfig
from privimage.errors import ConfigError
from privimage.evaluation.step_cost import ENGINES, MEMORY_ONLY_METHODS, STEP_METHODS, benchmark_configuration

DP_STEP_FILE = "dp_step.json"
DP_STEP_TABLE = "dp_step.md"
# model:image channels:batch size. The quick UNet sees MNIST-shaped images, the paper's
# presets CIFAR-10-shaped ones; B is what fits in a few minutes on 2 CPU cores.
DEFAULT_CONFIGURATIONS = ["quick:1:16", "1.8M:3:8", "6.1M:3:8"]
# The engine comparison: every per-sample gradient engine beside the non-private step.
ENGINE_METHODS = ("non_private",) + tuple(f"engine:{name}" for name in ENGINES)
ROW_ENVIRONMENT = ("device", "threads", "torch_version", "opacus_version", "machine", "cpu_count",
                   "load_average_at_start")


def parse_configuration(text: str) -> tuple[str, int, int]:
    """``model:channels:batch`` -> (model, channels, batch)."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise ConfigError(f"configuration must read model:channels:batch_size (e.g. 6.1M:3:8), got {text!r}")
    return parts[0], int(parts[1]), int(parts[2])


def run_dp_step(
    *,
    out: Path,
    configurations: list[tuple[str, int, int]],
    multiplicities: list[int],
    steps: int,
    warmup: int,
    device: torch.device,
    engine_configuration: tuple[str, int, int] | None,
    engine_steps: int,
    profile_misses: bool = True,
    suffix: str = "",
    progress: bool = True,
    multiplicity_chunk: int | None = FinetuneConfig().multiplicity_chunk or None,
) -> dict:
    """Measure every (configuration, K) and write ``dp_step<suffix>.json`` and ``.md`` into ``out``.

    Args:
        out: output folder.
        configurations: (model, image channels, batch size) triples.
        multiplicities: the K values.
        steps: timed interleaved rounds per configuration (the issue asks for >= 20).
        warmup: untimed rounds before them.
        device: where to run.
        engine_configuration: where to compare the per-sample gradient engines
            (ours and opacus' modes), or None to skip that table.
        engine_steps: timed rounds of the engine comparison.
        profile_misses: profile the steps of every row that misses a target.
        suffix: appended to the file names (``_gpu``).
        progress: show a progress bar.
        multiplicity_chunk: the DP step's noise draws per pass (default: the
            training stage's, ``finetune.multiplicity_chunk``; None: all K at once).

    Returns:
        The JSON document written.
    """
    info = environment(device=device)
    started = time.perf_counter()
    jobs = [(config, k) for config in configurations for k in multiplicities]
    engine_jobs = [(engine_configuration, k) for k in multiplicities] if engine_configuration else []
    bar = tqdm(total=len(jobs) + len(engine_jobs), desc="DP step benchmark", disable=not progress)

    def missed(measured: dict) -> bool:
        return profile_misses and any(value is False for value in targets_met(ratio_row(measured)).values())

    rows = []
    for (model, channels, batch), k in jobs:
        bar.set_postfix_str(f"{model} K={k} B={batch}")
        load_at_row_start = list(os.getloadavg())
        measured = benchmark_configuration(model=model, batch_size=batch, noise_multiplicity=k,
                                           image_channels=channels, methods=STEP_METHODS,
                                           memory_only=MEMORY_ONLY_METHODS, multiplicity_chunk=multiplicity_chunk,
                                           rounds=steps, warmup=warmup, device=device, profile_if=missed)
        # Each row carries what its numbers depend on, so a row quoted alone is still interpretable.
        rows.append({**ratio_row(measured), **{key: info[key] for key in ROW_ENVIRONMENT},
                     "load_average_at_row_start": load_at_row_start})
        bar.update(1)
    engines = []
    for (model, channels, batch), k in engine_jobs:
        bar.set_postfix_str(f"engines {model} K={k}")
        measured = benchmark_configuration(model=model, batch_size=batch, noise_multiplicity=k,
                                           image_channels=channels, methods=ENGINE_METHODS, rounds=engine_steps,
                                           warmup=warmup, device=device)
        engines.append(engine_row(measured))
        bar.update(1)
    bar.close()
    info["load_average_at_end"] = list(os.getloadavg())
    info["wall_seconds"] = time.perf_counter() - started
    document = {
        "environment": info,
        "timing": {"rounds": steps, "warmup_rounds": warmup, "statistic": "median over interleaved rounds",
                   "memory": "peak tensor bytes allocated during one step above its start "
                             "(CUDA: max_memory_allocated; CPU: torch.profiler memory events)"},
        "targets": TARGETS,
        "rows": rows,
        "engines": engines,
        "engine_timing": {"rounds": engine_steps, "warmup_rounds": warmup},
    }
    write_report(out, f"{Path(DP_STEP_FILE).stem}{suffix}", document, markdown(document))
    return document


def engine_row(measured: dict) -> dict:
    """Time and memory of each per-sample gradient engine, and its ratios to the non-private step."""
    seconds, memory = measured["median_seconds"], measured["peak_memory_bytes"]
    reference_seconds, reference_memory = seconds["non_private"], memory["non_private"]
    engines = {}
    for name in ENGINES:
        key = f"engine:{name}"
        engines[name] = {
            "median_seconds": seconds[key],
            "peak_memory_bytes": memory[key],
            "time_ratio_vs_nonprivate": None if seconds[key] is None else seconds[key] / reference_seconds,
            "memory_ratio_vs_nonprivate": None if memory[key] is None else memory[key] / reference_memory,
            "error": measured["errors"].get(key),
        }
    return {"model": measured["model"], "num_parameters": measured["num_parameters"], "k": measured["k"],
            "batch_size": measured["batch_size"], "image_shape": measured["image_shape"],
            "non_private_median_seconds": reference_seconds, "non_private_peak_memory_bytes": reference_memory,
            "engines": engines}


def markdown(document: dict) -> str:
    """The measured ratios as Markdown tables, with the machine and the targets."""
    def number(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    def mark(row, key, value):
        met = row["meets_targets"].get(key)
        return number(value) + ("" if met is None else (" ✓" if met else " ✗"))

    info = document["environment"]
    lines = [
        "# DP-SGD step cost",
        "",
        f"Measured {info['started_utc']} on {info['device']} ({info['machine']}, {info['cpu_count']} CPUs, "
        f"{info['threads']} torch thread(s), load average {info['load_average_at_start'][0]:.2f} at start), "
        f"torch {info['torch_version']}, opacus {info['opacus_version']}; median of "
        f"{document['timing']['rounds']} interleaved steps after warm-up. Peak memory: "
        f"{document['timing']['memory']}.",
        "",
        "Targets (issue #6): time DP/non-private <= 1.5 (K=8), <= 2.0 (K=1); memory DP/non-private <= 1.5; "
        "against the DPDM baseline at K=8: >= 3x faster, >= 4x less memory; issue #22: memory of the DP step at "
        "K=8 <= 2x the non-private step at K=1 on the same B images. ✓ met, ✗ missed. Draws per pass of the DP "
        "step (`finetune.multiplicity_chunk`): "
        f"{document['rows'][0].get('multiplicity_chunk') or 'all K' if document['rows'] else 'n/a'}.",
        "",
        "| model | parameters | image | B | K | DP step s | non-private s | DPDM s | time DP/non-private "
        "| memory DP/non-private | memory DP/non-private K=1 | speed-up vs DPDM | memory reduction vs DPDM |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in document["rows"]:
        seconds = row["median_seconds"]
        lines.append(
            f"| {row['model']} | {row['num_parameters'] / 1e6:.2f}M | {'x'.join(map(str, row['image_shape']))} "
            f"| {row['batch_size']} | {row['k']} | {number(seconds['dp_sgd'], 3)} | "
            f"{number(seconds['non_private'], 3)} | {number(seconds['dpdm_baseline'], 3)} | "
            f"{mark(row, 'time_ratio_dp_vs_nonprivate', row['time_ratio_dp_vs_nonprivate'])} | "
            f"{mark(row, 'memory_ratio_dp_vs_nonprivate', row['memory_ratio_dp_vs_nonprivate'])} | "
            f"{mark(row, 'memory_ratio_dp_vs_nonprivate_k1', row.get('memory_ratio_dp_vs_nonprivate_k1'))} | "
            f"{mark(row, 'speedup_vs_dpdm_baseline', row['speedup_vs_dpdm_baseline'])} | "
            f"{mark(row, 'memory_reduction_vs_dpdm_baseline', row['memory_reduction_vs_dpdm_baseline'])} |"
        )
    if document["engines"]:
        lines += [
            "",
            "## Per-sample gradient engines",
            "",
            f"One DP-SGD step (per-sample gradients, clipping, noise, AdamW) with each engine, as a multiple of "
            f"the non-private step (time / peak memory; median of {document['engine_timing']['rounds']} rounds). "
            "`grouped` is the default of the training stage; `vmap` is torch.func over images; the opacus "
            "modes compute B*K per-row gradients and average each image's K.",
            "",
            "| model | B | K | " + " | ".join(ENGINES) + " |",
            "|---|---:|---:|" + "---:|" * len(ENGINES),
        ]
        for row in document["engines"]:
            cells = []
            for name in ENGINES:
                engine = row["engines"][name]
                cells.append("fails" if engine["error"] else
                             f"{number(engine['time_ratio_vs_nonprivate'])} / "
                             f"{number(engine['memory_ratio_vs_nonprivate'])}")
            lines.append(f"| {row['model']} | {row['batch_size']} | {row['k']} | " + " | ".join(cells) + " |")
        failures = {name: row["engines"][name]["error"] for row in document["engines"] for name in ENGINES
                    if row["engines"][name]["error"]}
        for name, error in failures.items():
            lines.append(f"\n`{name}` fails on the UNet: {error}")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the DP-step measurement (shared with ``python -m benchmarks``)."""
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGURATIONS,
                        help="model:channels:batch_size triples (model: quick or a UNet preset)")
    parser.add_argument("--multiplicities", type=int, nargs="+", default=[1, 8], help="noise multiplicities K")
    parser.add_argument("--steps", type=int, default=20, help="timed interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before them")
    parser.add_argument("--engines", default="quick:1:16",
                        help="model:channels:batch_size of the engine comparison, or 'none'")
    parser.add_argument("--engine-steps", type=int, default=5, help="timed rounds of the engine comparison")
    parser.add_argument("--no-profile", action="store_true", help="do not profile rows that miss a target")
    parser.add_argument("--multiplicity-chunk", type=int, default=FinetuneConfig().multiplicity_chunk,
                        help="noise draws per pass of the DP step (finetune.multiplicity_chunk; 0: all K)")


def dp_step_from_args(args: argparse.Namespace, *, device: torch.device) -> dict:
    """Run `run_dp_step` with parsed command-line options."""
    return run_dp_step(
        out=args.out, configurations=[parse_configuration(text) for text in args.configs],
        multiplicities=args.multiplicities, steps=args.steps, warmup=args.warmup, device=device,
        engine_configuration=None if args.engines == "none" else parse_configuration(args.engines),
        engine_steps=args.engine_steps, profile_misses=not args.no_profile, suffix=args.suffix,
        multiplicity_chunk=args.multiplicity_chunk or None,
    )


def main(argv: list[str] | None = None) -> int:
    def run(args: argparse.Namespace, device: torch.device) -> str:
        dp_step_from_args(args, device=device)
        return f"dp_step: wrote {args.out / (Path(DP_STEP_FILE).stem + args.suffix + '.json')} and .md"

    return run_command(argv, prog=None, description=__doc__.splitlines()[0], add_arguments=add_arguments, run=run)


if __name__ == "__main__":
    sys.exit(main())
