"""Experiment helpers, tables and figures: fast tests on small hand-made inputs (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privimage import (
    evaluation, experiments, generators, paths, plots, reporting, resource_experiment, resource_usage, stages, tables,
)
from privimage.config import load_config
from privimage.errors import ConfigError, PrivImageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- folders and configs


def test_results_dir_honours_the_environment_and_creates_the_layout(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path / "res"))
    folder = paths.results_dir("smoke")
    assert folder == tmp_path / "res" / "smoke"
    assert (folder / "tables").is_dir() and (folder / "figures").is_dir()
    # A profile given as a YAML path is named by its stem.
    assert paths.results_dir(str(tmp_path / "mine.yaml")) == tmp_path / "res" / "mine"


def test_results_dir_defaults_to_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.RESULTS_ENV, raising=False)
    assert paths._REPO_ROOT == Path(paths.__file__).resolve().parent.parent
    # A stand-in repository root, so the test writes nothing into the checkout.
    monkeypatch.setattr(paths, "_REPO_ROOT", tmp_path)
    assert paths.results_dir("smoke") == tmp_path / "results" / "smoke"


def test_experiment_config_is_strict_and_sets_the_seed():
    config = experiments.experiment_config(profile="smoke", seed=7, overrides={"sampling.num_samples": 120})
    assert config.seed == 7 and config.sampling.num_samples == 120
    with pytest.raises(ConfigError, match="sampling.num_sample"):
        experiments.experiment_config(profile="smoke", overrides={"sampling.num_sample": 120})


def test_run_config_applies_the_sweep_and_drops_the_grid_section():
    config = load_config("smoke")
    point = experiments.GridPoint(method="privimage-d", epsilon=10.0, seed=3,
                                  overrides={"semantics.selection_ratio": 0.2, "diffusion.preset": "1.8M"})
    resolved = experiments.run_config(config=config, point=point)
    assert (resolved.seed, resolved.semantics.selection_ratio, resolved.diffusion.preset) == (3, 0.2, "1.8M")
    assert resolved.experiment == type(config.experiment)()
    # The grid section of the notebook does not change where a run lives.
    other_grid = load_config("smoke", {"experiment.seeds": [5, 6], "experiment.epsilons": [1.0]})
    same = experiments.run_config(config=other_grid, point=point)
    assert experiments.run_folder(method="privimage-d", config=same, epsilon=10.0) == \
        experiments.run_folder(method="privimage-d", config=resolved, epsilon=10.0)
    # ... but a swept setting does.
    ratio = experiments.run_config(config=config, point=experiments.GridPoint(
        method="privimage-d", epsilon=10.0, seed=3, overrides={"semantics.selection_ratio": 0.5}))
    assert experiments.run_folder(method="privimage-d", config=ratio, epsilon=10.0) != \
        experiments.run_folder(method="privimage-d", config=resolved, epsilon=10.0)


@pytest.mark.parametrize("key", ["semantics.selection_rate", "nosuchsection.x", "seed.x"])
def test_run_config_rejects_unknown_override_keys(key):
    point = experiments.GridPoint(method="privimage-d", epsilon=1.0, seed=0, overrides={key: 1})
    with pytest.raises(ConfigError):
        experiments.run_config(config=load_config("smoke"), point=point)


def test_benchmark_note_names_the_embedded_replacement():
    assert "replaces" in reporting.benchmark_note(load_config("quick"))
    paper = load_config("paper")
    assert "cifar10" in reporting.benchmark_note(paper) and "replaces" not in reporting.benchmark_note(paper)


# --------------------------------------------------------------------------- runs


def _finished_run(folder: Path, *, fid=12.5, ca=(0.5, 0.6, 0.7), epsilon=9.9) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "fid": fid, "fid_backbone": "offline-smallcnn-glyphs1k", "fid_num_synthetic": 200, "fid_num_real": 1000,
        "ca": {"lr": ca[0], "mlp": ca[1], "cnn": ca[2]}}))
    (folder / "privacy.json").write_text(json.dumps({"epsilon": epsilon, "epsilon_prv": epsilon - 0.1, "delta": 1e-5}))
    (folder / "resources.json").write_text(json.dumps({
        "stages": [{"stage": "sampling", "wall_time_s": 3.0, "peak_rss_bytes": 2**30, "gpu_max_reserved_bytes": None}],
        "pretraining": {"skipped": False, "wall_time_s_all_sessions": 40.0,
                        "resources": {"wall_time_s": 1.0, "peak_rss_bytes": 2**29}},
        "finetuning": {"wall_time_s_all_sessions": 20.0, "resources": {"wall_time_s": 20.0, "peak_rss_bytes": 2**31}},
        "selection": {"sqf": {"train_seconds": 7.0}}}))
    return folder


def test_a_finished_run_is_read_back_without_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVIMAGE_CACHE", str(tmp_path / "cache"))
    config = load_config("smoke")
    point = experiments.GridPoint(method="privimage-d", epsilon=10.0, seed=0)
    folder = experiments.run_folder(method="privimage-d", config=experiments.run_config(config=config, point=point),
                                    epsilon=10.0)
    _finished_run(folder)

    def must_not_run(**kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("privimage.pipeline.run_method", must_not_run)
    row = experiments.run_point(config=config, point=point)
    assert row["status"] == "ok" and row["fid"] == 12.5 and row["ca_cnn"] == 0.7 and row["epsilon_spent"] == 9.9
    assert row["run_dir"] == str(folder) and row["num_parameters"] > 0


def test_generator_parameters_follow_the_preset_and_the_family():
    config = load_config("smoke")
    sizes = {preset: generators.count_generator_parameters(
        method="privimage-d", config=load_config("smoke", {"diffusion.preset": preset})) for preset in ("tiny", "1.8M")}
    assert sizes["tiny"] < 100_000 < 1_000_000 < sizes["1.8M"] < 2_500_000
    gan = generators.count_generator_parameters(method="dpgan", config=config)
    assert gan > 0 and gan != sizes["tiny"]


def test_stage_costs_report_the_first_measurement_of_each_stage(tmp_path):
    folder = _finished_run(tmp_path / "run")
    costs = {row["stage"]: row for row in resource_usage.stage_costs(folder)}
    assert list(costs) == ["sqf_training", "pretraining", "finetuning", "sampling"]
    assert costs["sqf_training"]["wall_time_s"] == 7.0
    # Pre-training reports all sessions of the cached stage, not this run's cache read.
    assert costs["pretraining"]["wall_time_s"] == 40.0 and costs["pretraining"]["peak_rss_mb"] == 512
    assert costs["finetuning"]["peak_rss_mb"] == 2048 and costs["sampling"]["wall_time_s"] == 3.0
    assert math.isnan(costs["sampling"]["gpu_reserved_mb"])


# --------------------------------------------------------------------------- aggregation and tables


def _runs() -> pd.DataFrame:
    rows = [
        {"dataset": "mnist5k", "method": "privimage-d", "epsilon": 10.0, "seed": 0, "fid": 10.0, "ca_lr": 0.5,
         "ca_mlp": 0.6, "ca_cnn": 0.8, "status": "ok", "note": "", "epsilon_spent": 9.9,
         "fid_backbone": "offline-smallcnn-glyphs1k", "fid_num_synthetic": 200, "fid_num_real": 1000},
        {"dataset": "mnist5k", "method": "privimage-d", "epsilon": 10.0, "seed": 1, "fid": 14.0, "ca_lr": 0.7,
         "ca_mlp": 0.6, "ca_cnn": 0.6, "status": "ok", "note": "", "epsilon_spent": 9.95,
         "fid_backbone": "offline-smallcnn-glyphs1k", "fid_num_synthetic": 200, "fid_num_real": 1000},
        {"dataset": "mnist5k", "method": "dpgan", "epsilon": 10.0, "seed": 0, "fid": math.nan, "ca_lr": math.nan,
         "ca_mlp": math.nan, "ca_cnn": math.nan, "status": "skipped", "note": "no finished run", "epsilon_spent": math.nan,
         "fid_backbone": None, "fid_num_synthetic": None, "fid_num_real": None},
        {"dataset": "mnist5k", "method": "dpgan", "epsilon": 10.0, "seed": 1, "fid": math.nan, "ca_lr": math.nan,
         "ca_mlp": math.nan, "ca_cnn": math.nan, "status": "skipped", "note": "no finished run", "epsilon_spent": math.nan,
         "fid_backbone": None, "fid_num_synthetic": None, "fid_num_real": None},
    ]
    return pd.DataFrame(rows)


def test_summarize_averages_seeds_and_keeps_skipped_methods():
    summary = experiments.summarize(_runs(), by=["dataset", "method", "epsilon"]).set_index("method")
    assert summary.loc["privimage-d", "fid"] == 12.0
    assert summary.loc["privimage-d", "fid_std"] == pytest.approx(np.std([10.0, 14.0], ddof=1))
    assert summary.loc["privimage-d", "ca_mlp_std"] == 0.0 and summary.loc["privimage-d", "num_seeds"] == 2
    assert summary.loc["dpgan", "status"] == "skipped" and summary.loc["dpgan", "note"] == "no finished run"
    assert math.isnan(summary.loc["dpgan", "fid"]) and summary.loc["dpgan", "num_seeds"] == 0
    # The guarantee of a row is its worst seed's ledger.
    assert summary.loc["privimage-d", "epsilon_spent_max"] == 9.95
    assert math.isnan(summary.loc["dpgan", "epsilon_spent_max"])


def test_fid_note_names_backbone_scale_and_sample_counts():
    runs = _runs().assign(fid_scale="standardised on public glyphs1k/val")
    note = reporting.describe_fid(runs)
    assert note.startswith("FID backbone: offline-smallcnn-glyphs1k, features standardised on public glyphs1k/val;")
    assert "200 synthetic vs 1000 real" in note
    # Runs on two scales are both named (their FIDs do not compare); runs from before the scale was recorded say so.
    mixed = runs.copy()
    mixed.loc[1, "fid_scale"] = "unscaled (raw offline features)"
    assert "glyphs1k/val; unscaled (raw offline features)" in reporting.describe_fid(mixed)
    assert "scale not recorded (raw)" in reporting.describe_fid(_runs())


def test_summarize_has_no_std_column_with_one_seed():
    one_seed = _runs()[lambda f: f["seed"] == 0]
    summary = experiments.summarize(one_seed, by=["method"])
    assert "fid_std" not in summary and summary.loc[0, "fid"] == 10.0


def test_main_table_long_form_and_paper_shape():
    config = load_config("quick")
    long, shaped, notes = reporting.main_table(runs=_runs(), config=config)
    for column in ("dataset", "method", "epsilon", "fid", "ca_lr", "ca_mlp", "ca_cnn", "fid_std", "ca_cnn_std"):
        assert column in long
    assert long.set_index("method").loc["privimage-d", "epsilon_spent_max"] == 9.95
    assert list(shaped["method"]) == ["privimage-d", "dpgan"]
    assert shaped.loc[0, "epsilon 10 FID"].startswith("12 ± 2.8")
    assert shaped.loc[0, "epsilon 10 CA LR (%)"].startswith("60 ± 14")
    assert shaped.loc[1, "epsilon 10 FID"] == tables.MISSING
    assert any("offline-smallcnn-glyphs1k" in n for n in notes) and any("replaces" in n for n in notes)
    assert any("reporting only" in n for n in notes)


def test_paper_shape_has_one_column_group_per_epsilon():
    runs = pd.concat([_runs(), _runs().assign(epsilon=1.0, fid=lambda f: f["fid"] * 2)], ignore_index=True)
    summary = experiments.summarize(runs, by=["method", "epsilon"])
    shaped = tables.paper_shape(summary, rows="method", columns="epsilon", metrics=("fid",))
    assert list(shaped.columns) == ["method", "epsilon 10 fid", "epsilon 1 fid"]
    assert shaped.loc[0, "epsilon 1 fid"].startswith("24 ±")


def test_write_table_writes_csv_and_annotated_markdown(tmp_path):
    frame = pd.DataFrame({"method": ["a|b", "c"], "fid": [1.23456, math.nan]})
    csv_path, md_path = tables.write_table(frame=frame, name="tab_test", directory=tmp_path, title="Title",
                                           notes=["FID backbone: x"])
    assert pd.read_csv(csv_path)["fid"].iloc[0] == 1.23456
    text = md_path.read_text()
    assert text.startswith("# Title") and "- FID backbone: x" in text
    assert "| a\\|b | 1.23 |" in text and "| c | - |" in text
    assert tables.format_value(4000.0) == "4000" and tables.format_value(0.12345) == "0.123"
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("name", ["", "tab.csv", "sub/tab"])
def test_write_table_refuses_names_that_are_not_bare_stems(tmp_path, name):
    with pytest.raises(PrivImageError):
        tables.write_table(frame=pd.DataFrame({"a": [1]}), name=name, directory=tmp_path, title="t")


# --------------------------------------------------------------------------- figures


def test_metric_sweep_plot_writes_a_png_and_refuses_an_empty_sweep(tmp_path):
    summary = pd.DataFrame({"selection_ratio": [0.01, 0.05, 1.0], "fid": [3.0, 2.0, 4.0], "fid_std": [0.1, 0.2, 0.3],
                            "ca_lr": [0.2, 0.3, 0.1], "ca_mlp": [0.3, 0.3, 0.2], "ca_cnn": [0.5, 0.6, 0.4]})
    path = plots.plot_metric_sweep(summary=summary, x="selection_ratio", path=tmp_path / "f.png", title="t",
                                   xlabel="ratio", log_x=True)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(PrivImageError, match="no finished run"):
        plots.plot_metric_sweep(summary=summary.assign(fid=math.nan), x="selection_ratio", path=tmp_path / "g.png",
                                title="t", xlabel="ratio")
    assert not (tmp_path / "g.png").exists()


def test_noisy_histogram_plot_refuses_a_selection_naming_unknown_semantics(tmp_path):
    histogram = np.arange(12, dtype=float).reshape(2, 6)
    names = [f"S{i}" for i in range(6)]
    path = plots.plot_noisy_histogram(histogram=histogram, row_names=["a", "b"], semantic_names=names,
                                      selected={"a": ["S5"], "b": ["S1", "S2"]}, path=tmp_path / "h.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(KeyError):
        plots.plot_noisy_histogram(histogram=histogram, row_names=["a"], semantic_names=names,
                                   selected={"a": ["nope"]}, path=tmp_path / "i.png")


def test_null_label_model_always_asks_for_the_null_class():
    import torch

    from privimage.models import NullLabelModel

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, times, labels):
            seen.append(labels.clone())
            return x

    wrapped = NullLabelModel(Recorder(), num_classes=10)
    wrapped(torch.zeros(3, 1, 2, 2), torch.zeros(3), torch.tensor([0, 4, 9]))
    assert seen[0].tolist() == [10, 10, 10]


class _StopBeforeTraining(Exception):
    pass


def test_matched_glyph_reference_pretrains_on_each_digits_own_glyph_class(tmp_path, monkeypatch):
    from privimage import pipeline
    from privimage.data import load_dataset
    from privimage.data.glyphs import DIGIT_NAMES
    from privimage.data.mnist5k import CLASS_NAMES

    monkeypatch.setenv("PRIVIMAGE_CACHE", str(tmp_path))
    seen = {}

    def record_and_stop(*, public, data_key, num_classes, **_):
        seen.update(public=public, data_key=data_key, num_classes=num_classes)
        raise _StopBeforeTraining

    monkeypatch.setattr(pipeline, "pretrain_stage", record_and_stop)
    config = load_config("smoke")
    with pytest.raises(_StopBeforeTraining):
        stages.matched_glyph_pretraining(config=config, progress=False)
    matched, glyphs = seen["public"], load_dataset("glyphs1k", "train", config=config.data)
    assert matched.class_names == CLASS_NAMES and seen["num_classes"] == 10 and not matched.sensitive
    assert seen["data_key"] == f"matched:{matched.content_hash()}"
    # Label d holds exactly the public images of the glyph class that names digit d.
    for digit, name in enumerate(DIGIT_NAMES):
        expected = glyphs.images[glyphs.labels == glyphs.class_names.index(name)]
        assert np.array_equal(matched.images[matched.labels == digit], expected) and len(expected) > 0
    assert len(matched) == sum((glyphs.labels == glyphs.class_names.index(n)).sum() for n in DIGIT_NAMES)


def test_a_samples_folder_left_without_its_config_by_a_crash_is_redone(tmp_path, monkeypatch):
    # synthetic.npz comes first and config.json last: a crash between them must not count as done.
    from privimage import pipeline

    monkeypatch.setenv("PRIVIMAGE_CACHE", str(tmp_path))
    folder = tmp_path / "pretrained_samples"
    folder.mkdir()
    np.savez(folder / "synthetic.npz", x=np.zeros((1, 1, 32, 32), np.uint8), y=np.zeros(1, np.int64))
    monkeypatch.setattr(stages, "stage_dir", lambda *_: folder)

    def stop(**_):
        raise _StopBeforeTraining

    monkeypatch.setattr(pipeline, "pretrain_stage", stop)
    with pytest.raises(_StopBeforeTraining):
        stages.matched_glyph_pretraining(config=load_config("smoke"), progress=False)


def test_matched_glyph_reference_is_skipped_off_the_embedded_benchmark(monkeypatch):
    from privimage import pipeline

    monkeypatch.setattr(pipeline, "pretrain_stage", lambda **_: pytest.fail("nothing should be trained"))
    row = stages.matched_glyph_pretraining(config=load_config("smoke", {"data.sensitive": "cifar10"}),
                                           progress=False)
    assert row["status"] == "skipped" and "digit" in row["note"] and math.isnan(row["fid"])


# --------------------------------------------------------------------------- privacy ledger view


def test_ledger_table_composes_to_the_ledger_epsilon(tmp_path):
    from privimage.privacy import PrivacyLedger

    ledger = PrivacyLedger(delta=1e-5, dataset_hash="a" * 64, num_examples=4000)
    ledger.record_semantic_query(query_noise_multiplier=50.0, k=1, generator="os-entropy")
    ledger.record_dpsgd_steps(noise_multiplier=1.0, sample_rate=0.016, steps=100)
    ledger.save(tmp_path / "ledger.json")
    table = reporting.ledger_table(tmp_path)
    assert list(table["mechanism"]) == ["semantic_query", "dp_sgd"]
    assert table["epsilon_cumulative"].iloc[-1] == pytest.approx(ledger.epsilon())
    # The query's noise is large: it costs far less than DP-SGD, and composition is not free.
    assert table["epsilon_alone"].iloc[0] < table["epsilon_alone"].iloc[1] < table["epsilon_cumulative"].iloc[1]


def test_selection_histogram_is_the_release_whose_summary_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVIMAGE_CACHE", str(tmp_path))
    summary = {"selected": {"a": ["S1"]}, "k": 1}
    for key, content, value in (("aaa", {**summary, "k": 2}, 1.0), ("bbb", summary, 2.0)):
        folder = tmp_path / "selection" / key
        folder.mkdir(parents=True)
        (folder / "selection.json").write_text(json.dumps(content))
        np.savez(folder / "noisy_histogram.npz", noisy_histogram=np.full((1, 2), value), row_names=np.array(["a"]),
                 semantic_names=np.array(["S0", "S1"]))
    # Compared as JSON: a tuple in the summary matches the list the file holds.
    found = stages.selection_histogram({"selected": {"a": ("S1",)}, "k": 1})
    assert found["folder"] == tmp_path / "selection" / "bbb" and found["histogram"].tolist() == [[2.0, 2.0]]
    assert found["row_names"] == ["a"] and found["semantic_names"] == ["S0", "S1"]
    with pytest.raises(PrivImageError, match="no cached selection"):
        stages.selection_histogram({**summary, "k": 3})


def test_one_data_root_default_for_the_cli_and_the_notebooks(monkeypatch, tmp_path):
    from privimage.data.registry import default_data_root, resolve_data_root

    monkeypatch.delenv("PRIVIMAGE_DATA", raising=False)
    assert default_data_root() == Path("data") and resolve_data_root() == Path("data")
    monkeypatch.setenv("PRIVIMAGE_DATA", str(tmp_path / "d"))
    assert resolve_data_root() == tmp_path / "d"
    assert resolve_data_root(tmp_path / "x") == tmp_path / "x"


def test_main_grid_averages_seeds_and_one_setting_sweeps_average_sweep_seeds(monkeypatch):
    config = load_config("smoke", {"experiment.seeds": [0, 1, 2], "experiment.sweep_seeds": [7],
                                   "experiment.selection_ratios": [0.01, 0.05],
                                   "experiment.model_sizes": ["tiny"], "experiment.overparameterization_sizes": ["tiny"]})
    captured = {}

    def record(*, config, points, data_root=None, progress=True):
        captured.setdefault("seeds", []).append(sorted({point.seed for point in points}))
        return pd.DataFrame()

    monkeypatch.setattr(experiments, "run_grid", record)
    experiments.main_grid(config=config)
    for sweep in (experiments.selection_ratio_grid, experiments.model_size_grid,
                  experiments.overparameterization_grid):
        sweep(config=config)
    assert captured["seeds"] == [[0, 1, 2], [7], [7], [7]]


# --------------------------------------------------------------------------- Table 4


def test_table4_measured_mode_runs_each_method_at_its_size_and_schedule(tmp_path, monkeypatch):
    # The paper profile's path on the smoke profile: runs are stubbed with finished folders, GPU memory recorded.
    from privimage.evaluation import resource_comparison as rc

    config = load_config("smoke", {"experiment.resource_mode": "measured"})
    schedule = rc.ResourceSchedule(pretrain_epochs=2.0, finetune_epochs=1.0, finetune_sample_rate=0.25,
                                   noise_multiplicity=4, ddim_steps=10, samples_per_image=0.5)
    captured = []

    def finished_runs(*, config, points, data_root=None, progress=True):
        rows = []
        for index, point in enumerate(points):
            captured.append(point)
            folder = _finished_run(tmp_path / f"run{index}")
            resources = json.loads((folder / "resources.json").read_text())
            resources["stages"][0]["gpu_max_reserved_bytes"] = (index + 1) * 2**30
            (folder / "resources.json").write_text(json.dumps(resources))
            rows.append({"method": point.method, "seed": point.seed, "status": "ok", "run_dir": str(folder),
                         "num_parameters": 1000 * (index + 1), "epsilon": point.epsilon, **point.labels})
        return pd.DataFrame(rows)

    monkeypatch.setattr(experiments, "run_grid", finished_runs)
    table, stages, runs, notes = resource_experiment.resource_table(config=config, schedule=schedule, progress=False)
    overrides = {point.method: point.overrides for point in captured}
    assert overrides["pdp-diffusion"]["diffusion.preset"] == config.experiment.resource_pdp_preset
    assert overrides["privimage-d"]["diffusion.preset"] == config.experiment.resource_privimage_preset
    # Two epochs of all 4,000 public glyphs at batch 32, against two epochs of the 1% selection (40 images).
    assert overrides["pdp-diffusion"]["pretrain.steps"] == 250 and overrides["privimage-d"]["pretrain.steps"] == 3
    assert overrides["privimage-d"]["semantics.selection_ratio"] == 0.01
    assert "semantics.selection_ratio" not in overrides["pdp-diffusion"]
    for key in ("finetune.batch_size", "finetune.noise_multiplicity", "sampling.num_samples", "sampling.ddim_steps"):
        assert overrides["pdp-diffusion"][key] == overrides["privimage-d"][key]
    assert overrides["privimage-d"]["finetune.batch_size"] == 1000
    assert overrides["privimage-d"]["sampling.num_samples"] == 2000
    assert runs is not None and len(runs) == 2
    # Every row is measured, none projected; sampling's memory is the GPU's reserved peak.
    assert stages["how"].str.startswith("measured").all()
    sampling = table.set_index("stage").loc["sampling"]
    assert sampling["pdp-diffusion_memory_mb"] == 1024 and sampling["privimage-d_memory_mb"] == 2048
    assert sampling["memory_ratio"] == pytest.approx(2.0)
    assert any("Measured" in note for note in notes)


def test_table4_projected_mode_times_every_stage_and_labels_it(monkeypatch):
    from privimage.evaluation import resource_comparison as rc

    config = load_config("smoke")
    assert config.experiment.resource_mode == "projected"
    timed = []

    def fake_timing(*, stage, preset, work, **kwargs):
        timed.append((stage, preset))
        return {"wall_time_s": float(work.image_steps), "peak_memory_mb": 1.0, "num_parameters": 10,
                "how": "projected from a stub"}

    monkeypatch.setattr(rc, "time_stage_step", fake_timing)
    monkeypatch.setattr(experiments, "run_grid", lambda **kwargs: pytest.fail("projected mode must not train"))
    table, stages, runs, _ = resource_experiment.resource_table(config=config, progress=False)
    assert runs is None
    # PDP-Diffusion has no SQF to time: seven stages timed, not eight.
    assert len(timed) == 7 and ("sqf_training", config.experiment.resource_pdp_preset) not in timed
    assert stages.set_index(["method", "stage"]).loc[("pdp-diffusion", "sqf_training"), "how"] == "no such stage"
    # Time follows the image-passes: pre-training is 100x cheaper on the 1% selection.
    pretraining = table.set_index("stage").loc["pretraining"]
    assert pretraining["time_ratio"] == pytest.approx(0.01, rel=0.02)
    # The profile's custom UNet has no preset name to build from.
    custom = load_config("smoke", {"experiment.resource_pdp_preset": "", "diffusion.preset": "custom"})
    with pytest.raises(ConfigError, match="resource_pdp_preset"):
        resource_experiment.resource_table(config=custom, progress=False)


@pytest.mark.parametrize("k, expected_k", [(None, [1, 5, 100]), (3, [3, 3, 3])])
def test_the_selection_ratio_sweep_queries_k_equal_to_n_unless_the_profile_sets_k(monkeypatch, k, expected_k):
    config = load_config("smoke", {"experiment.selection_ratios": [0.01, 0.05, 1.0], "semantics.k": k})
    captured = []

    def record(*, config, points, data_root=None, progress=True):
        captured.extend(points)
        return pd.DataFrame()

    monkeypatch.setattr(experiments, "run_grid", record)
    experiments.selection_ratio_grid(config=config)
    # 10 digits among 1,000 public glyph classes: N = 1, 5, 100 (paper Table 8); the run's config keeps k as set.
    assert [point.labels["semantics_per_class"] for point in captured] == [1, 5, 100]
    assert [point.labels["k"] for point in captured] == expected_k
    assert all(experiments.run_config(config=config, point=point).semantics.k == k for point in captured)


def test_pretrained_only_grid_covers_table_2_seeds(monkeypatch):
    # The FID before fine-tuning gets a seed spread from the models Table 2 already pre-trained.
    config = load_config("smoke", {"experiment.seeds": [0, 1], "experiment.sweep_seeds": [7]})
    seen = []
    monkeypatch.setattr(stages, "pretrained_only",
                        lambda *, config, method, data_root=None, progress=True: seen.append(config.seed) or
                        {"method": method, "seed": config.seed, "status": "ok"})
    monkeypatch.setattr(stages, "matched_glyph_pretraining",
                        lambda *, config, data_root=None, progress=True: {"method": "matched-glyphs",
                                                                           "seed": config.seed, "status": "ok"})
    grid = experiments.pretrained_only_grid(config=config, progress=False)
    assert sorted(set(seen)) == [0, 1]
    assert sorted(set(grid["seed"])) == [0, 1]
