"""Time and peak memory per stage (paper Table 4).

``measure_stage`` is a context manager and a decorator. It records, for one
stage (SQF training, selection, pre-training, fine-tuning, sampling):

- ``wall_time_s``: ``time.perf_counter`` difference;
- ``peak_rss_bytes``: peak resident memory of this process (children such as
  data-loader workers are not included). Two sources, and the record says which:
  ``getrusage`` when the stage raised the process's lifetime peak
  (``ru_maxrss``), which is then exact; otherwise ``psutil-sampling``, the
  largest RSS seen by a background thread every ``sample_interval_s``, which can
  miss spikes shorter than the interval;
- ``gpu_max_allocated_bytes`` / ``gpu_max_reserved_bytes``: torch's CUDA peak
  counters over the stage (reset on entry), or None without CUDA. The paper's
  GPU memory column corresponds best to the reserved figure (what the process
  holds), the allocated one is what tensors used.

Records are plain dicts, so stages can write them beside their outputs and the
Table 4 notebook can read them back (`stage_costs`: one run's four Table 4 stages).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import threading
import time
from pathlib import Path
from typing import Mapping

import psutil

from privimage.errors import PrivImageError

# The stages of paper Table 4, in pipeline order.
STAGES = ("sqf_training", "selection", "pretraining", "finetuning", "sampling")

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _ru_maxrss_bytes() -> int | None:
    """The process's lifetime peak RSS from getrusage, in bytes (None where unavailable)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _cuda():
    """torch.cuda if torch is already imported and CUDA is usable; importing torch here would cost seconds."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda


class measure_stage(contextlib.ContextDecorator):  # noqa: N801 - used like a function: `with measure_stage(...)`
    """Measure wall time and peak memory of a block or a function.

    Args:
        stage: the stage's name (one of `STAGES` for Table 4; any lower_snake_case name).
        log: a list that receives the record when the stage ends.
        sample_interval_s: how often the RSS sampler thread looks.

    Usage::

        records = []
        with measure_stage("pretraining", log=records) as usage:
            train()
        usage.result["wall_time_s"]

        @measure_stage("sampling", log=records)
        def sample(): ...
    """

    def __init__(self, stage: str, *, log: list | None = None, sample_interval_s: float = 0.01) -> None:
        if not _STAGE_NAME.match(stage):
            raise PrivImageError(f"stage name must be lower_snake_case, got '{stage}'")
        if sample_interval_s <= 0:
            raise PrivImageError(f"sample_interval_s must be positive, got {sample_interval_s}")
        self.stage = stage
        self.log = log
        self.sample_interval_s = sample_interval_s
        self.result: dict | None = None
        self._active = False

    def _sample(self) -> None:
        # Poll RSS until told to stop; the peak is kept in self._sampled_peak.
        while not self._stop.is_set():
            try:
                self._sampled_peak = max(self._sampled_peak, self._process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.sample_interval_s)

    def __enter__(self) -> "measure_stage":
        if self._active:
            raise RuntimeError(f"measure_stage('{self.stage}') is already running; use one instance per block")
        self._active = True
        self._process = psutil.Process()
        self._rss_start = self._process.memory_info().rss
        self._sampled_peak = self._rss_start
        self._ru_before = _ru_maxrss_bytes()
        cuda = _cuda()
        self._gpu_tracked = cuda is not None
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name=f"rss-{self.stage}", daemon=True)
        self._thread.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        wall_time = time.perf_counter() - self._start
        self._stop.set()
        self._thread.join()
        rss_end = self._process.memory_info().rss
        sampled_peak = max(self._sampled_peak, rss_end)
        ru_after = _ru_maxrss_bytes()
        # A new lifetime peak during the stage is exact; otherwise only sampling can tell.
        if ru_after is not None and self._ru_before is not None and ru_after > self._ru_before:
            peak, method = max(ru_after, sampled_peak), "getrusage"
        else:
            peak, method = sampled_peak, f"psutil-sampling every {self.sample_interval_s * 1000:g} ms"

        gpu_allocated = gpu_reserved = gpu_name = None
        cuda = _cuda()
        # Torch imported during the stage: its counters started within the stage too.
        if cuda is not None and (self._gpu_tracked or cuda.is_initialized()):
            gpu_allocated = int(cuda.max_memory_allocated())
            gpu_reserved = int(cuda.max_memory_reserved())
            gpu_name = cuda.get_device_name()

        self.result = {
            "stage": self.stage,
            "completed": exc_type is None,
            "wall_time_s": wall_time,
            "rss_start_bytes": int(self._rss_start),
            "peak_rss_bytes": int(peak),
            "peak_rss_increase_bytes": int(peak - self._rss_start),
            "peak_rss_method": method,
            "gpu_max_allocated_bytes": gpu_allocated,
            "gpu_max_reserved_bytes": gpu_reserved,
            "gpu_device": gpu_name,
        }
        if self.log is not None:
            self.log.append(self.result)
        self._active = False
        return False


def stage_costs(run_dir: Path) -> list[dict]:
    """Time and peak memory of SQF training, pre-training, fine-tuning and sampling of one run (paper Table 4).

    Pre-training and fine-tuning report the session that trained them (the
    stage caches keep it); the SQF's training time comes from the selection
    stage; a method without an SQF or pre-training reports zero time.

    Args:
        run_dir: a finished run folder (its ``resources.json``).

    Returns:
        One row per stage: ``stage``, ``wall_time_s``, ``peak_rss_mb`` and ``gpu_reserved_mb`` (NaN when unknown).
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
