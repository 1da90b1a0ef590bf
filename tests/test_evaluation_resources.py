"""Per-stage wall time and peak memory (paper Table 4)."""

import time

import numpy as np
import pytest

from privimage.errors import PrivImageError
from privimage.resource_usage import STAGES, measure_stage

MIB = 1 << 20


def test_wall_time_and_record_fields():
    records = []
    with measure_stage("selection", log=records) as usage:
        time.sleep(0.2)
    assert records == [usage.result]
    result = usage.result
    assert result["stage"] == "selection" and result["completed"]
    assert 0.19 < result["wall_time_s"] < 2.0
    assert result["peak_rss_bytes"] >= result["rss_start_bytes"] > 0
    assert result["peak_rss_method"]
    # No CUDA here: the GPU columns are empty, not zero.
    assert result["gpu_max_allocated_bytes"] is None or result["gpu_max_allocated_bytes"] >= 0


def test_peak_memory_sees_a_temporary_allocation_that_is_freed_before_the_end():
    with measure_stage("pretraining", sample_interval_s=0.005) as usage:
        block = np.ones(300 * MIB, dtype=np.uint8)  # touch every page
        time.sleep(0.05)
        del block
    result = usage.result
    # The 300 MiB block is gone at the end, but the peak still holds it.
    assert result["peak_rss_increase_bytes"] > 250 * MIB, result


def test_a_small_stage_after_a_big_one_is_not_charged_the_old_peak():
    with measure_stage("sqf_training"):
        block = np.ones(300 * MIB, dtype=np.uint8)
        del block
    with measure_stage("sampling", sample_interval_s=0.005) as usage:
        small = np.ones(10 * MIB, dtype=np.uint8)
        time.sleep(0.05)
        del small
    # The lifetime peak was set earlier, so sampling measures this stage.
    assert usage.result["peak_rss_method"].startswith("psutil-sampling")
    assert usage.result["peak_rss_increase_bytes"] < 100 * MIB


def test_decorator_records_every_call_and_failures_are_recorded_then_raised():
    records = []

    @measure_stage("finetuning", log=records)
    def step(fail=False):
        if fail:
            raise RuntimeError("boom")
        return 7

    assert step() == 7
    with pytest.raises(RuntimeError, match="boom"):
        step(fail=True)
    assert [record["completed"] for record in records] == [True, False]
    assert all(record["stage"] == "finetuning" for record in records)


def test_stage_names_are_checked():
    assert STAGES == ("sqf_training", "selection", "pretraining", "finetuning", "sampling")
    with pytest.raises(PrivImageError, match="lower_snake_case"):
        measure_stage("Pre training")
