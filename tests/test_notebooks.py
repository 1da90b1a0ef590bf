"""The research-question notebooks: their committed form, and a smoke run of each through papermill.

The structure tests are fast and always run. The smoke tests (marker
``notebook``) execute every notebook with ``profile="smoke"`` in order, sharing
one temporary stage cache (so the notebooks share runs, as ``run_all.sh`` does)
and one temporary results folder, then check the files each wrote and the
ranges of their numbers.
"""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from privimage.config import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
# DESIGN.md, "Research questions -> notebooks": one notebook per row.
EXPECTED = (
    "00_tour.ipynb", "01_main_results.ipynb", "02_semantic_query.ipynb", "03_selection_ratio.ipynb",
    "04_model_size.ipynb", "05_nonprivate.ipynb", "06_resources.ipynb", "07_mnist_overparameterization.ipynb",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _code_cells(name: str) -> list:
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


# --------------------------------------------------------------------------- committed form


def test_every_research_question_has_its_notebook():
    assert tuple(sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_committed_without_outputs(name):
    for cell in _code_cells(name):
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: a code cell has outputs"


@pytest.mark.parametrize("name", EXPECTED)
def test_first_code_cell_is_tagged_parameters_and_holds_literals_only(name):
    first = _code_cells(name)[0]
    assert "parameters" in first.metadata.get("tags", [])
    tree = ast.parse(first.source)
    names = set()
    for statement in tree.body:
        assert isinstance(statement, ast.Assign), f"{name}: the parameters cell may only assign literals"
        ast.literal_eval(statement.value)  # raises on anything but a literal
        names.update(target.id for target in statement.targets)
    assert "profile" in names and "overrides" in names


@pytest.mark.parametrize("name", EXPECTED)
def test_parameters_are_resolved_through_the_strict_loader(name):
    second = _code_cells(name)[1].source
    assert "experiments.experiment_config(profile=profile" in second and "overrides=overrides" in second


# What a notebook may import: the library's notebook-facing modules and display helpers.
NOTEBOOK_IMPORTS = {"privimage", "IPython", "pandas", "shutil", "pathlib", "json", "math"}
LIBRARY_FOR_NOTEBOOKS = {"evaluation", "experiments", "paths", "plots", "reporting", "resource_experiment", "stages",
                         "tables"}
# Calls that train, step an optimiser or compute a metric: the library's job, never a notebook's.
TRAINING_OR_METRIC_CALLS = {"run_method", "run_dp_sgd", "fit", "backward", "step", "zero_grad", "make_private",
                            "frechet_distance", "calculate_frechet_distance", "train_classifier"}


def training_or_metric_code(source: str) -> list[str]:
    """What in a notebook's code would train or measure by itself: forbidden imports and calls, by the syntax tree.

    Comments, strings and Markdown never count; a call counts however it is spelled
    (``run_method(...)``, ``pipeline.run_method(...)``, ``model.fit(...)``).
    """
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
            if node.module == "privimage":
                modules += [f"privimage.{alias.name}" for alias in node.names]
        else:
            modules = []
        for module in modules:
            parts = module.split(".")
            if parts[0] not in NOTEBOOK_IMPORTS or (parts[0] == "privimage" and len(parts) > 1
                                                     and parts[1] not in LIBRARY_FOR_NOTEBOOKS):
                problems.append(f"imports {module}")
        if isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called in TRAINING_OR_METRIC_CALLS:
                problems.append(f"calls {called}()")
    return problems


def test_the_notebook_guard_reads_calls_not_text():
    assert training_or_metric_code("# run_method( is the library's\nnote = 'model.fit(x)'") == []
    assert training_or_metric_code("from privimage import pipeline\npipeline.run_method(method='dpdm')") == [
        "imports privimage.pipeline", "calls run_method()"]
    assert training_or_metric_code("import torch\nclf.fit(x, y)") == ["imports torch", "calls fit()"]
    assert training_or_metric_code("from privimage.training.dpsgd import run_dp_sgd") == [
        "imports privimage.training.dpsgd"]


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_holds_no_training_or_metric_code(name):
    for cell in _code_cells(name):
        problems = training_or_metric_code(cell.source)
        assert not problems, f"{name}: {problems}; such logic belongs in the library"


# --------------------------------------------------------------------------- smoke runs


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A stage cache and results folder shared by every notebook of the session."""
    root = tmp_path_factory.mktemp("notebook-smoke")
    saved = {key: os.environ.get(key) for key in ("PRIVIMAGE_CACHE", "PRIVIMAGE_RESULTS", "OMP_NUM_THREADS")}
    os.environ["PRIVIMAGE_CACHE"] = str(root / "cache")
    os.environ["PRIVIMAGE_RESULTS"] = str(root / "results")
    # One thread per kernel unless the caller chose: on a shared machine, two spinning
    # OpenMP threads per process made a smoke fine-tuning 10x slower (262 s vs 26 s).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield {"root": root, "results": root / "results" / "smoke", "config": load_config("smoke"), "timings": {}}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def execute(name: str, smoke_run: dict) -> Path:
    """Run one notebook on the smoke profile the way run_all.sh does; return the results folder."""
    from privimage.notebook_runner import KERNEL_NAME, run_notebook

    smoke_run["timings"][name] = run_notebook(NOTEBOOK_DIR / name, "smoke", smoke_run["results"])
    assert KERNEL_NAME == "privimage"
    executed = nbformat.read(smoke_run["results"] / "notebooks" / name, as_version=4)
    assert executed.metadata["papermill"]["parameters"] == {"profile": "smoke"}
    return smoke_run["results"]


def read_table(results: Path, name: str) -> pd.DataFrame:
    markdown = results / "tables" / f"{name}.md"
    assert markdown.is_file() and markdown.read_text().startswith("# ")
    return pd.read_csv(results / "tables" / f"{name}.csv")


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


def assert_metric_ranges(frame: pd.DataFrame, *, fid: bool = True) -> None:
    done = frame[frame["status"] == "ok"]
    assert len(done), "no finished run"
    if fid:
        assert all(math.isfinite(v) and v >= 0 for v in done["fid"]), done["fid"].tolist()
    for column in ("ca_lr", "ca_mlp", "ca_cnn"):
        assert done[column].between(0.0, 1.0).all(), (column, done[column].tolist())
    # Every private row's ledgers stay within its target budget; non-private rows claim none.
    if "epsilon_spent_max" in done:
        private = done[done["epsilon"].notna()]
        assert (private["epsilon_spent_max"] > 0).all()
        assert (private["epsilon_spent_max"] <= private["epsilon"] * (1 + 1e-6)).all()
        assert done.loc[done["epsilon"].isna(), "epsilon_spent_max"].isna().all()


def read_sweep(results: Path, name: str, column: str, swept) -> pd.DataFrame:
    """A sweep's table: one row per swept value, in order, its metrics in range, and its figure."""
    table = read_table(results, f"tab_{name}")
    assert list(table[column]) == list(swept)
    assert_metric_ranges(table)
    assert_png(results / "figures" / f"fig_{name}.png")
    return table


@pytest.mark.notebook
def test_00_tour(smoke_run):
    results = execute("00_tour.ipynb", smoke_run)
    for figure in ("public_corpus", "noisy_histogram", "selected", "before_after"):
        assert_png(results / "figures" / f"fig_tour_{figure}.png")


@pytest.mark.notebook
def test_01_main_results(smoke_run):
    results = execute("01_main_results.ipynb", smoke_run)
    config = smoke_run["config"]
    main = read_table(results, "tab_rq1_main")
    for column in ("dataset", "method", "epsilon", "fid", "ca_lr", "ca_mlp", "ca_cnn"):
        assert column in main
    assert set(main["method"]) == set(config.experiment.methods)
    assert set(main["epsilon"]) == set(config.experiment.epsilons)
    assert "epsilon_spent_max" in main
    assert_metric_ranges(main)
    header = (results / "tables" / "tab_rq1_main.md").read_text().split("|")[0]
    assert "FID backbone: offline-smallcnn-glyphs1k, features divided by one common std of public glyphs1k/val" in header
    assert "replaces the paper's" in header
    assert_png(results / "figures" / "fig_rq1_samples.png")
    for method in config.experiment.methods:
        assert_png(results / "figures" / f"fig_rq1_tsne_{method}.png")


@pytest.mark.notebook
def test_02_semantic_query(smoke_run):
    results = execute("02_semantic_query.ipynb", smoke_run)
    pretrained = read_table(results, "tab_rq2_pretrained_fid")
    # The embedded benchmark adds the reference pre-trained on each digit's own glyph class.
    assert set(pretrained["method"]) == {*smoke_run["config"].experiment.pretrained_methods, "matched-glyphs"}
    assert all(math.isfinite(v) and v >= 0 for v in pretrained["fid"])
    # Every seed's model as its own row, and the summary is their mean.
    per_seed = read_table(results, "tab_rq2_pretrained_runs")
    assert len(per_seed) == len(pretrained) * len(smoke_run["config"].experiment.seeds)
    means = per_seed.groupby("method")["fid"].mean()
    assert all(means[row.method] == pytest.approx(row.fid) for row in pretrained.itertuples())
    sds = read_table(results, "tab_rq2_sds")
    assert sds["sds"].between(-1.0, 1.0).all()
    # A Fréchet distance of every subset (and of the whole corpus) to the sensitive test split.
    assert set(sds["subset"]) == {"all public", "selected"}
    assert all(math.isfinite(v) and v >= 0 for v in sds["frechet_sqf"])
    selected = sds[sds["subset"] == "selected"]
    assert sorted(selected["selection_ratio"]) == sorted(smoke_run["config"].experiment.selection_ratios)
    # More selected semantics, more public images; each selection is a DP release with a positive epsilon.
    assert selected.sort_values("selection_ratio")["num_images"].is_monotonic_increasing
    assert (selected["query_epsilon"] > 0).all()
    # What each query selected: every Table 2 seed and sensitive class, own-glyph counts and the query's epsilon.
    report = read_table(results, "tab_rq2_selection")
    assert len(report) == len(smoke_run["config"].experiment.seeds) * 10
    assert report["num_own_glyph"].isin([0, 1]).all() and (report["query_epsilon"] > 0).all()
    assert (report["k"] == report["semantics_per_class"]).all()
    assert "Own glyphs selected per seed" in (results / "tables" / "tab_rq2_selection.md").read_text()
    assert_png(results / "figures" / "fig_rq2_pretrained_fid_sds.png")
    assert_png(results / "figures" / "fig_rq2_selected_samples.png")
    for method in ("privimage-d", "matched-glyphs"):
        assert_png(results / "figures" / f"fig_rq2_pretrained_samples_{method}.png")


@pytest.mark.notebook
def test_03_selection_ratio(smoke_run):
    results = execute("03_selection_ratio.ipynb", smoke_run)
    table = read_table(results, "tab_rq3_selection_ratio")
    assert sorted(table["selection_ratio"]) == sorted(smoke_run["config"].experiment.selection_ratios)
    # Smoke sweeps 1% and 5% of 1,000 glyph classes for 10 digits: N = 1 and 5, each queried with k = N.
    ordered = table.sort_values("selection_ratio")
    assert ordered["semantics_per_class"].tolist() == ordered["k"].tolist() == [1, 5]
    assert_metric_ranges(table)
    assert_png(results / "figures" / "fig_rq3_selection_ratio.png")


@pytest.mark.notebook
def test_04_model_size(smoke_run):
    results = execute("04_model_size.ipynb", smoke_run)
    table = read_sweep(results, "rq3_model_size", "model_size", smoke_run["config"].experiment.model_sizes)
    assert (table["num_parameters"] > 0).all()


@pytest.mark.notebook
def test_05_nonprivate(smoke_run):
    results = execute("05_nonprivate.ipynb", smoke_run)
    table = read_table(results, "tab_sec61_nonprivate").set_index("method")
    assert set(table.index) == set(smoke_run["config"].experiment.nonprivate_methods) | {"nonpriv"}
    assert_metric_ranges(table.drop(index="nonpriv").reset_index())
    assert_metric_ranges(table.loc[["nonpriv"]].reset_index(), fid=False)
    # The real-data classifiers have no FID; the non-private methods no epsilon.
    assert math.isnan(table.loc["nonpriv", "fid"]) and math.isnan(table.loc["nonpriv-d", "epsilon"])


@pytest.mark.notebook
def test_06_resources(smoke_run):
    results = execute("06_resources.ipynb", smoke_run)
    config = smoke_run["config"].experiment
    table = read_table(results, "tab_sec62_resources").set_index("stage")
    assert list(table.index) == ["sqf_training", "pretraining", "finetuning", "sampling", "total"]
    for method in ("privimage-d", "pdp-diffusion"):
        for stage in ("pretraining", "finetuning", "sampling"):
            assert table.loc[stage, f"{method}_time_s"] > 0 and table.loc[stage, f"{method}_memory_mb"] > 0
    # PDP-Diffusion has no semantic query function to train.
    assert table.loc["sqf_training", "pdp-diffusion_time_s"] == 0
    assert table.loc["sqf_training", "privimage-d_time_s"] > 0
    # The smoke profile projects, and says so; a smaller model on a 1% selection pre-trains for less.
    assert config.resource_mode == "projected" and table.loc["pretraining", "how"].startswith("projected from")
    assert table.loc["pretraining", "time_ratio"] < 0.1
    # The paper's ratios beside ours (Section 6.2: -48% time, -50% memory).
    assert table.loc["total", "paper_time_ratio"] == pytest.approx(0.52, abs=0.005)
    assert table.loc["total", "paper_memory_ratio"] == pytest.approx(0.50, abs=0.005)
    assert table.loc["total", "time_ratio"] == pytest.approx(
        table.loc["total", "privimage-d_time_s"] / table.loc["total", "pdp-diffusion_time_s"])
    stages = read_table(results, "tab_sec62_stages")
    assert set(stages["preset"]) == {config.resource_privimage_preset, config.resource_pdp_preset}
    assert_png(results / "figures" / "fig_sec62_resources.png")


@pytest.mark.notebook
def test_07_overparameterization(smoke_run):
    results = execute("07_mnist_overparameterization.ipynb", smoke_run)
    config = smoke_run["config"].experiment
    table = read_sweep(results, "appb_overparameterization", "model_size", config.overparameterization_sizes)
    assert set(table["method"]) == {config.overparameterization_method}


@pytest.mark.notebook
def test_a_second_run_reads_the_cache_and_writes_the_same_table(smoke_run):
    results = smoke_run["results"]
    if not (results / "tables" / "tab_rq1_main.csv").is_file():
        pytest.skip("needs the smoke run of 01 in this session")
    before = (results / "tables" / "tab_rq1_main.csv").read_text()
    cache = smoke_run["root"] / "cache"

    def stage_files():
        # Every file of a run folder or a pre-training stage, with its modification time.
        return {path: path.stat().st_mtime_ns for folder in ("runs", "pretrain") for path in (cache / folder).rglob("*")
                if path.is_file()}

    files_before = stage_files()
    execute("01_main_results.ipynb", smoke_run)
    assert (results / "tables" / "tab_rq1_main.csv").read_text() == before
    # Nothing was trained or rewritten: the finished runs were only read.
    assert stage_files() == files_before


# --------------------------------------------------------------------------- the runner's preflight


def test_paper_profile_without_gpu_or_data_stops_at_once_listing_what_is_missing(tmp_path, monkeypatch, capsys):
    from privimage import notebook_runner

    monkeypatch.setenv("PRIVIMAGE_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("PRIVIMAGE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("privimage.evaluation.fid.find_inception_weights", lambda **_: None)
    monkeypatch.setattr(notebook_runner, "run_notebook", lambda *a, **k: pytest.fail("a notebook ran"))
    assert notebook_runner.main(["--profile", "paper"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: the paper profile")
    for needed in ("CUDA GPU", "cifar10/train", "imagenet32/train", "mnist/train", "Inception weights"):
        assert needed in error


def test_embedded_profiles_need_nothing_more():
    from privimage.notebook_runner import missing_requirements

    assert missing_requirements("smoke") == [] and missing_requirements("quick") == []


# --------------------------------------------------------------------------- the runner's writes and errors


def _fake_papermill(monkeypatch, *, raises: BaseException | None = None):
    """papermill.execute_notebook replaced by one that writes a marker to its output, then maybe raises."""
    import papermill

    calls = []

    def execute(source, output, **kwargs):
        calls.append({"output": Path(output), **kwargs})
        Path(output).write_text("partial" if raises else "complete")
        if raises is not None:
            raise raises

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return calls


def test_an_executed_notebook_replaces_the_previous_copy_only_once_finished(tmp_path, monkeypatch):
    import papermill

    from privimage.notebook_runner import failed_copy, run_notebook

    output = tmp_path / "notebooks" / "01_x.ipynb"
    output.parent.mkdir()
    output.write_text("previous run")
    # A failure keeps the previous complete copy under the final name and the partial one aside.
    failure = papermill.PapermillExecutionError(0, 3, "x = 1 / 0", "ZeroDivisionError", "bad", [])
    calls = _fake_papermill(monkeypatch, raises=failure)
    with pytest.raises(papermill.PapermillExecutionError):
        run_notebook(Path("01_x.ipynb"), "smoke", tmp_path)
    assert calls[0]["output"] != output and calls[0]["output"].parent == output.parent
    assert output.read_text() == "previous run" and failed_copy(output).read_text() == "partial"
    # Success replaces it and clears the failed copy; nothing hidden is left behind.
    _fake_papermill(monkeypatch)
    run_notebook(Path("01_x.ipynb"), "smoke", tmp_path)
    assert output.read_text() == "complete" and not failed_copy(output).exists()
    assert sorted(p.name for p in output.parent.iterdir()) == ["01_x.ipynb"]


@pytest.mark.parametrize("error, code, message", [
    ("dead", 1, "the kernel died"),
    ("kernel", 1, "no Jupyter kernel named 'privimage'"),
    ("interrupt", 130, "interrupted during 00_tour.ipynb"),
])
def test_the_runner_turns_kernel_failures_and_interrupts_into_one_line(tmp_path, monkeypatch, capsys, error, code,
                                                                       message):
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import DeadKernelError

    from privimage import notebook_runner

    monkeypatch.setenv("PRIVIMAGE_RESULTS", str(tmp_path / "results"))
    exception = {"dead": DeadKernelError("Kernel died"), "kernel": NoSuchKernel("privimage"),
                 "interrupt": KeyboardInterrupt()}[error]
    _fake_papermill(monkeypatch, raises=exception)
    assert notebook_runner.main(["--profile", "smoke", "--only", "00"]) == code
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "results" / "smoke" / "notebooks" / "00_tour.ipynb").exists()


def test_relative_folders_in_the_environment_reach_the_kernels_as_absolute_paths(tmp_path, monkeypatch):
    from privimage import notebook_runner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRIVIMAGE_RESULTS", "out")
    monkeypatch.setenv("PRIVIMAGE_DATA", "data")
    monkeypatch.delenv("PRIVIMAGE_CACHE", raising=False)
    notebook_runner.absolute_path_variables()
    assert os.environ["PRIVIMAGE_RESULTS"] == str(tmp_path / "out")
    assert os.environ["PRIVIMAGE_DATA"] == str(tmp_path / "data")
    assert "PRIVIMAGE_CACHE" not in os.environ


def test_the_runner_records_commit_times_memory_and_machine_in_run_info(tmp_path, monkeypatch):
    import json
    import resource
    import subprocess
    import sys
    import time

    import papermill
    import torch

    from privimage import notebook_runner

    stubs = tmp_path / "notebooks"
    stubs.mkdir()
    for name in ("01_first.ipynb", "02_second.ipynb"):
        (stubs / name).write_text("{}")
    monkeypatch.setattr(notebook_runner, "NOTEBOOK_DIR", stubs)
    monkeypatch.setenv("PRIVIMAGE_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("PRIVIMAGE_DATA", raising=False)
    # A kernel-like child that holds 200 MB more than this process ever did: the peak must come from it.
    # (Above every earlier peak, this process's and its children's: other tests may have run kernels here.)
    earlier = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    child_bytes = earlier * 1024 + 200_000_000
    touch_every_page = f"x = bytearray({child_bytes}); x[::4096] = b'1' * len(x[::4096])"

    def execute(source, output, **kwargs):
        if Path(source).name.startswith("02"):
            subprocess.run([sys.executable, "-c", touch_every_page], check=True)
        time.sleep(0.2)
        Path(output).write_text("complete")

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    assert notebook_runner.main(["--profile", "smoke"]) == 0
    info = json.loads((tmp_path / "results" / "smoke" / "run_info.json").read_text())
    head = subprocess.run(["git", "-C", str(notebook_runner.REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert info["commit"] == head and isinstance(info["tree_clean"], bool) and info["status"] == "finished"
    # The kernels run in notebooks/: the runner points them at the repository's data folder.
    assert os.environ["PRIVIMAGE_DATA"] == str(notebook_runner.REPO_ROOT / "data")
    assert [entry["name"] for entry in info["notebooks"]] == ["01_first.ipynb", "02_second.ipynb"]
    assert all(entry["wall_seconds"] >= 0.2 for entry in info["notebooks"])
    assert info["start"] <= info["end"] and info["wall_seconds"] >= 0.4
    assert info["peak_rss_mb"] >= 0.95 * child_bytes / 1e6
    assert info["notebooks"][1]["peak_rss_mb_so_far"] > info["notebooks"][0]["peak_rss_mb_so_far"]
    assert info["torch_threads"] == torch.get_num_threads() and info["cpu_count"] == os.cpu_count()
    assert len(info["load_average_start"]) == len(info["load_average_end"]) == 3
    # The last step checks the paper's claims against whatever tables the notebooks wrote (none here).
    claims = pd.read_csv(tmp_path / "results" / "smoke" / "tables" / "tab_claims.csv")
    assert set(claims["verdict"]) == {"not exercised"}

    # An interrupted run leaves its record too, naming where it stopped.
    def interrupted(source, output, **kwargs):
        if Path(source).name.startswith("02"):
            raise KeyboardInterrupt
        Path(output).write_text("complete")

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    assert notebook_runner.main(["--profile", "smoke"]) == 130
    info = json.loads((tmp_path / "results" / "smoke" / "run_info.json").read_text())
    assert info["status"] == "interrupted in 02_second.ipynb" and info["end"] is not None
    assert [entry["name"] for entry in info["notebooks"]] == ["01_first.ipynb"]
