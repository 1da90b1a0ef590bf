"""Paper Table 4: the schedule of each method, the projection of timed steps, and the ratios beside the paper's."""

import math

import pandas as pd
import pytest

from privimage.config import load_config
from privimage.errors import ConfigError
from privimage.evaluation import resource_comparison as rc

# The paper's schedule rounded to simple numbers, so that every count below can be checked by hand.
SCHEDULE = rc.ResourceSchedule(pretrain_epochs=100.0, finetune_epochs=50.0, finetune_sample_rate=0.25,
                               noise_multiplicity=32, ddim_steps=50, samples_per_image=1.2)
QUICK = load_config("quick")


def plan(method):
    works = rc.stage_plan(config=QUICK, schedule=SCHEDULE, method=method, public_images=64_000,
                          sensitive_images=4_000, selection_ratio=0.01)
    return {work.stage: work for work in works}


def test_paper_schedule_is_the_paper_profile_per_pass_over_its_data():
    schedule = rc.paper_schedule()
    # 62,500 steps of 2,048 over ImageNet32's 1,281,167 images; 16,384 of CIFAR-10's 50,000 per step.
    assert schedule.pretrain_epochs == pytest.approx(62_500 * 2_048 / 1_281_167)
    assert schedule.finetune_sample_rate == pytest.approx(16_384 / 50_000)
    assert schedule.samples_per_image == pytest.approx(60_000 / 50_000)
    assert (schedule.finetune_epochs, schedule.noise_multiplicity, schedule.ddim_steps) == (49.8, 32, 50)


def test_the_paper_profile_schedule_reproduces_the_paper_profile_settings():
    # Applied to the paper's own data, the overrides are the paper profile's values (measured mode = the paper).
    paper = load_config("paper")
    overrides = rc.schedule_overrides(config=paper, schedule=rc.paper_schedule(), pretraining_images=1_281_167,
                                      sensitive_images=50_000)
    assert overrides["pretrain.steps"] == paper.pretrain.steps
    assert overrides["finetune.batch_size"] == paper.finetune.batch_size
    assert overrides["sampling.num_samples"] == paper.sampling.num_samples


def test_each_method_pretrains_the_same_epochs_over_its_own_set():
    pdp, privimage = plan("pdp-diffusion"), plan("privimage-d")
    # 100 epochs of 64,000 images at batch 64, against 100 epochs of the 1% selection (640 images).
    assert pdp["pretraining"].steps == 100_000
    assert privimage["pretraining"].steps == 1_000
    assert pdp["pretraining"].image_steps == 100 * privimage["pretraining"].image_steps


def test_finetuning_and_sampling_are_the_same_for_both_methods():
    pdp, privimage = plan("pdp-diffusion"), plan("privimage-d")
    for stage in ("finetuning", "sampling"):
        assert pdp[stage] == privimage[stage]
    finetuning = pdp["finetuning"]
    # q = 0.25 of 4,000: 1,000 images per step, 50 epochs in 200 steps, K = 32 draws each.
    assert (finetuning.steps, finetuning.images_per_step, finetuning.noise_multiplicity) == (200, 1_000, 32)
    assert finetuning.physical_images == QUICK.finetune.physical_batch_size
    assert finetuning.description == "200 steps x 1,000 images (K=32)"
    # 4,800 images (1.2 per sensitive image) x 50 DDIM steps, in batches of the profile's 500.
    sampling = pdp["sampling"]
    assert sampling.image_steps == 4_800 * 50
    assert sampling.steps == 50 * 10
    assert sampling.description == "4,800 images x 50 DDIM steps"


def test_only_privimage_trains_a_query_function():
    assert plan("pdp-diffusion")["sqf_training"].steps == 0
    # The profile's SQF: 15 epochs of 64,000 // 256 = 250 batches.
    assert plan("privimage-d")["sqf_training"].steps == 250 * QUICK.semantics.sqf_epochs
    with pytest.raises(ConfigError, match="Table 4 compares"):
        rc.stage_plan(config=QUICK, schedule=SCHEDULE, method="dpdm", public_images=10, sensitive_images=10,
                      selection_ratio=0.5)


def test_a_timed_step_runs_the_physical_batch_unless_that_exceeds_the_row_cap():
    works = plan("pdp-diffusion")
    # Pre-training: 64 images, K = 1: all of them. Fine-tuning: K = 32, so 256 rows are 8 images.
    assert rc.timing_images(works["pretraining"], max_rows=256) == 64
    assert rc.timing_images(works["finetuning"], max_rows=256) == 8
    assert rc.timing_images(works["finetuning"], max_rows=10) == 1


def test_projection_scales_the_median_timed_step_to_the_schedule():
    work = rc.StageWork("finetuning", steps=200, images_per_step=1_000, physical_images=100, image_steps=200_000,
                        noise_multiplicity=32)
    # Median 2 s for 8 images: 0.25 s per image, 200,000 image-passes.
    projected = rc.project_stage(work=work, step_seconds=[1.0, 2.0, 9.0], timed_images=8,
                                 step_peak_bytes=8 * rc.MIB, state_bytes=10 * rc.MIB)
    assert projected["wall_time_s"] == pytest.approx(50_000.0)
    assert projected["seconds_per_step"] == pytest.approx(250.0)
    # The step's activations scale from 8 to 100 images; the state does not.
    assert projected["peak_memory_mb"] == pytest.approx(10 + 8 * 100 / 8)


def test_projection_of_a_full_physical_batch_keeps_the_measured_memory():
    work = rc.StageWork("pretraining", steps=1_000, images_per_step=64, physical_images=64, image_steps=64_000)
    projected = rc.project_stage(work=work, step_seconds=[0.5], timed_images=64, step_peak_bytes=3 * rc.MIB,
                                 state_bytes=1 * rc.MIB)
    assert projected["wall_time_s"] == pytest.approx(500.0)
    assert projected["peak_memory_mb"] == pytest.approx(4.0)
    with pytest.raises(ConfigError):
        rc.project_stage(work=work, step_seconds=[], timed_images=64, step_peak_bytes=0, state_bytes=0)


def stage_rows(times, memory):
    """Rows for both methods from {stage: (pdp, privimage)} dicts of seconds and MiB."""
    rows = []
    for index, method in enumerate(("pdp-diffusion", "privimage-d")):
        for stage in rc.TABLE4_STAGES:
            rows.append({"method": method, "stage": stage, "wall_time_s": times[stage][index],
                         "peak_memory_mb": memory[stage][index], "how": f"{stage} how"})
    return pd.DataFrame(rows)


def test_the_paper_table_gives_the_papers_headline_ratios():
    # Fed the paper's own numbers, the comparison must reproduce Section 6.2's -48% time and -50% memory.
    table = rc.compare_methods(stage_rows(rc.PAPER_TABLE4["time_h"], rc.PAPER_TABLE4["memory_gb"])).set_index("stage")
    assert table.loc["total", "time_ratio"] == pytest.approx(0.52, abs=0.005)
    assert table.loc["total", "memory_ratio"] == pytest.approx(0.50, abs=0.005)
    assert (table["time_ratio"].dropna() == table["paper_time_ratio"].dropna()).all()
    assert math.isnan(table.loc["sqf_training", "time_ratio"])


def test_totals_sum_time_and_take_the_peak_memory():
    times = {"sqf_training": (0, 5), "pretraining": (100, 10), "finetuning": (50, 20), "sampling": (10, 5)}
    memory = {"sqf_training": (0, 30), "pretraining": (400, 40), "finetuning": (800, 100), "sampling": (200, 20)}
    table = rc.compare_methods(stage_rows(times, memory)).set_index("stage")
    assert table.loc["total", "pdp-diffusion_time_s"] == 160
    assert table.loc["total", "privimage-d_time_s"] == 40
    assert table.loc["total", "time_ratio"] == pytest.approx(0.25)
    assert table.loc["total", "memory_ratio"] == pytest.approx(100 / 800)
    assert table.loc["pretraining", "time_ratio"] == pytest.approx(0.1)
    assert table.loc["pretraining", "how"] == "pretraining how"
    # Where the methods were costed differently, each says how.
    rows = stage_rows(times, memory)
    rows.loc[rows["method"] == "pdp-diffusion", "how"] = "no such stage"
    assert rc.compare_methods(rows).set_index("stage").loc["sqf_training", "how"] == \
        "pdp-diffusion: no such stage; privimage-d: sqf_training how"
    assert list(table.index) == [*rc.TABLE4_STAGES, "total"]


def test_comparison_refuses_a_missing_method():
    rows = stage_rows({s: (1, 1) for s in rc.TABLE4_STAGES}, {s: (1, 1) for s in rc.TABLE4_STAGES})
    with pytest.raises(ConfigError, match="privimage-d"):
        rc.compare_methods(rows[rows["method"] == "pdp-diffusion"])


def test_timed_steps_run_the_library_steps_on_random_inputs():
    # The smallest real case: one timed step of each kind on the tiny UNet and the smoke SQF.
    smoke = load_config("smoke")
    works = {w.stage: w for w in rc.stage_plan(config=smoke, schedule=SCHEDULE, method="privimage-d",
                                                 public_images=4_000, sensitive_images=4_000, selection_ratio=0.01)}
    for stage, work in works.items():
        timed = rc.time_stage_step(stage=stage, preset="tiny", work=work, config=smoke, image_shape=(1, 32, 32),
                                   num_classes=10, num_public_classes=1_000, max_rows=64, warmup=0, timed=1)
        assert timed["wall_time_s"] > 0 and timed["peak_memory_mb"] > 0, stage
        assert "projected from 1 timed" in timed["how"]
        # The tiny UNet's 45k parameters; the SQF is another network.
        assert (timed["num_parameters"] == 45_393) == (stage != "sqf_training")
