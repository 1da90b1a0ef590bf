"""What the DP-step benchmark reports beyond the measurements: its targets, ratio rows and the machine.

`privimage.evaluation.step_cost` measures each step (`benchmark_configuration`);
`benchmarks.dp_step` turns its results into rows with `ratio_row`, marks them
against `TARGETS` with `targets_met`, and records `environment` beside them
(as do `benchmarks.throughput` and `benchmarks.busy_machine`).
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Mapping

import torch

from privimage.threads import thread_settings

# The targets every row is marked against: the DP step beside the non-private step and the DPDM baseline.
TARGETS = {
    "time_ratio_dp_vs_nonprivate_at_k1": 2.0,
    "time_ratio_dp_vs_nonprivate_at_k8": 1.5,
    "memory_ratio_dp_vs_nonprivate": 1.5,
    "speedup_vs_dpdm_baseline_at_k8": 3.0,
    "memory_reduction_vs_dpdm_baseline_at_k8": 4.0,
    # At K=8, the DP step's peak at most 2x the non-private step's at K=1 (independent of K).
    "memory_ratio_dp_at_k8_vs_nonprivate_at_k1": 2.0,
}


def ratio_row(measured: Mapping) -> dict:
    """The compared ratios from one `benchmark_configuration` result (None where a method did not run)."""
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
    """Which of `TARGETS` one row meets (None: not applicable or not measured)."""
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
