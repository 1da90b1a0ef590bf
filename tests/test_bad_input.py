"""Bad input through the real command line: one clear line on stderr, a non-zero exit, nothing that looks done.

Every row calls ``privimage.cli.main`` as a user would, on the smoke profile.
Functions that train a model or query the sensitive data are replaced by a
tripwire: the refusals must fire before any of that work (or privacy budget)
is spent. Afterwards the output folder must hold nothing derived from the
sensitive data, and ``privimage audit`` must not call what is left a run.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from privimage.cli import main
from privimage.run_audit import DERIVED_FILES, audit_run


class TrainingStarted(AssertionError):
    """Raised by the tripwire: a refused input reached training or the sensitive-data query."""


@pytest.fixture
def tripwire(monkeypatch):
    """Make every stage that trains or queries the sensitive data fail the test if it starts."""
    import privimage.semantics.stage as stage
    import privimage.training.diffusion_training as diffusion_training
    import privimage.training.dpsgd as dpsgd

    def tripped(*args, **kwargs):
        raise TrainingStarted("training or the semantic query started before the input was refused")

    monkeypatch.setattr(stage, "train_query_function", tripped)
    monkeypatch.setattr(stage, "query_semantic_distribution", tripped)
    monkeypatch.setattr(diffusion_training, "pretrain_diffusion", tripped)
    monkeypatch.setattr(diffusion_training, "finetune_nonprivate_diffusion", tripped)
    monkeypatch.setattr(dpsgd, "dp_sgd_step", tripped)


def refused(capsys, argv: list[str], *, mentions: str) -> str:
    """Run the command; it must exit 2 with exactly one ``error:`` line on stderr that names the problem."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert mentions.lower() in lines[0].lower(), lines[0]
    return lines[0]


def assert_nothing_looks_complete(out: Path) -> None:
    """No artifact derived from the sensitive data, and the audit does not call the folder a run."""
    if not out.exists():
        return
    assert not [name for name in DERIVED_FILES if (out / name).exists()]
    assert not (out / "ledger.json").exists() and not list(out.glob("finetune/ckpt-*.pt"))
    if (out / "run.json").exists():
        assert audit_run(run_dir=out).status in ("incomplete", "fail")


def run_argv(out: Path, *extra: str, method: str = "dpdm", epsilon: str = "1") -> list[str]:
    return ["run", "--profile", "smoke", "--method", method, "--epsilon", epsilon, "--out", str(out), *extra]


def save_npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def digits(count: int, *, channels: int = 1, classes: int = 2, side: int = 32) -> dict[str, np.ndarray]:
    """A small labelled npz payload (NHWC, as most exports are)."""
    rng = np.random.default_rng(0)
    return {"x": rng.integers(0, 256, (count, side, side, channels), dtype=np.uint8),
            "y": np.arange(count) % classes}


def write_png(path: Path, *, size: tuple[int, int], mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=128).save(path)
    return path


# --------------------------------------------------------------------------- privacy parameters


@pytest.mark.parametrize("epsilon", ["0", "-1", "nan", "inf"])
def test_a_non_positive_epsilon_is_refused(capsys, tmp_path, tripwire, epsilon):
    out = tmp_path / "run"
    refused(capsys, run_argv(out, epsilon=epsilon), mentions="epsilon must be a positive")
    assert not out.exists()


@pytest.mark.parametrize("delta", ["2.5e-4", "1e-3", "1"])
def test_delta_at_or_above_one_over_n_is_refused(capsys, tmp_path, tripwire, delta):
    # MNIST-5k's sensitive split has N = 4000 images: 1/N = 2.5e-4.
    out = tmp_path / "run"
    refused(capsys, run_argv(out, "--delta", delta), mentions="delta")
    assert_nothing_looks_complete(out)


def test_delta_at_or_above_one_over_n_is_refused_by_select(capsys, tmp_path, tripwire):
    out = tmp_path / "select"
    refused(capsys, ["select", "--profile", "smoke", "--delta", "1e-3", "--out", str(out)], mentions="below 1/N")
    assert not (out / "selection.json").exists()


@pytest.mark.parametrize("ratio", ["0", "1.5"])
def test_a_selection_ratio_outside_0_1_is_refused_before_the_query(capsys, tmp_path, tripwire, ratio):
    out = tmp_path / "select"
    refused(capsys, ["select", "--profile", "smoke", "--selection-ratio", ratio, "--out", str(out)],
            mentions="selection_ratio")
    assert not (out / "selection.json").exists()


def test_k_above_the_number_of_public_classes_is_refused_before_training(capsys, tmp_path, tripwire):
    out = tmp_path / "select"
    refused(capsys, ["select", "--profile", "smoke", "--k", "1001", "--out", str(out)], mentions="k must")
    assert not (out / "selection.json").exists()


# --------------------------------------------------------------------------- the sensitive set itself


def _empty_npz(root):
    save_npz(root / "empty.npz", x=np.zeros((0, 32, 32, 1), np.uint8), y=np.zeros(0, np.int64))
    return "npz:empty.npz"


def _single_class_npz(root):
    save_npz(root / "one.npz", **digits(200, classes=1))
    return "npz:one.npz"


def _mixed_size_folder(root):
    write_png(root / "mine" / "train" / "cat" / "a.png", size=(32, 32))
    write_png(root / "mine" / "train" / "dog" / "b.png", size=(28, 28))
    return "folder:mine"


@pytest.mark.parametrize(("write_sensitive", "mentions"), [
    pytest.param(_empty_npz, "empty", id="empty"),
    # Refused before training because the run evaluates (a classifier needs two classes).
    pytest.param(_single_class_npz, "class", id="single-class"),
    pytest.param(_mixed_size_folder, "differ in size", id="images-of-mixed-sizes"),
])
def test_an_unusable_sensitive_set_is_refused(capsys, tmp_path, tripwire, write_sensitive, mentions):
    root = tmp_path / "data"
    out = tmp_path / "run"
    refused(capsys, run_argv(out, "--sensitive", write_sensitive(root), "--data-root", str(root)), mentions=mentions)
    assert_nothing_looks_complete(out)


def test_rgb_sensitive_against_grayscale_public_is_refused_by_select(capsys, tmp_path, tripwire):
    root = tmp_path / "data"
    # Enough images for the profile's batch, so the shape is the only thing wrong.
    save_npz(root / "rgb.npz", **digits(80, channels=3))
    out = tmp_path / "select"
    refused(capsys, ["select", "--profile", "smoke", "--sensitive", "npz:rgb.npz", "--data-root", str(root),
                     "--out", str(out)], mentions="grayscale vs RGB")
    assert not (out / "selection.json").exists()


def test_rgb_sensitive_against_grayscale_public_is_refused_before_pretraining_on_all(capsys, tmp_path, tripwire):
    root = tmp_path / "data"
    # Enough images for the profile's batch, so the shape is the only thing wrong.
    save_npz(root / "rgb.npz", **digits(80, channels=3))
    out = tmp_path / "run"
    refused(capsys, run_argv(out, "--sensitive", "npz:rgb.npz", "--data-root", str(root), method="pdp-diffusion"),
            mentions="grayscale vs RGB")
    assert_nothing_looks_complete(out)


def _truncated_npz(path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **digits(40))
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _pickled_npz(path: Path) -> None:
    # An object array is a pickle inside the npz; loading it would run whatever it names.
    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(path.parent / "code-ran"),))

    np.savez(path, x=np.array([Payload()], dtype=object), y=np.zeros(1, np.int64))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickled objects"])
def test_a_corrupt_npz_is_refused(capsys, tmp_path, tripwire, damage):
    root = tmp_path / "data"
    root.mkdir()
    path = root / "bad.npz"
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 this is not an archive")
    elif damage == "truncated":
        _truncated_npz(path)
    else:
        _pickled_npz(path)
    out = tmp_path / "run"
    refused(capsys, run_argv(out, "--sensitive", "npz:bad.npz", "--data-root", str(root)), mentions="bad.npz")
    assert not (root / "code-ran").exists()
    assert_nothing_looks_complete(out)


# --------------------------------------------------------------------------- paths that leave the data root


@pytest.mark.parametrize("escape", ["dotdot", "linked class folder", "linked image"])
def test_an_imagefolder_escaping_the_data_root_is_refused(capsys, tmp_path, tripwire, escape):
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    write_png(outside / "train" / "cat" / "secret.png", size=(32, 32))
    write_png(root / "mine" / "train" / "dog" / "a.png", size=(32, 32))
    if escape == "dotdot":
        name = "folder:../elsewhere"
    else:
        name = "folder:mine"
        if escape == "linked class folder":
            (root / "mine" / "train" / "cat").symlink_to(outside / "train" / "cat", target_is_directory=True)
        else:
            (root / "mine" / "train" / "dog" / "b.png").symlink_to(outside / "train" / "cat" / "secret.png")
    out = tmp_path / "run"
    refused(capsys, run_argv(out, "--sensitive", name, "--data-root", str(root)), mentions="outside the data root")
    assert_nothing_looks_complete(out)


# --------------------------------------------------------------------------- files that would run code


def test_a_checkpoint_holding_code_is_refused_and_never_run(capsys, tmp_path, tripwire):
    out = tmp_path / "run"
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    # A planted "checkpoint" in the folder a resumed run reads.
    (out / "finetune").mkdir(parents=True)
    torch.save({"format": "privimage-checkpoint/1", "step": 5, "model": Payload()}, out / "finetune" / "ckpt-5.pt")
    refused(capsys, run_argv(out), mentions="pickled code")
    assert not marker.exists()
    assert not [name for name in DERIVED_FILES if (out / name).exists()] and not (out / "ledger.json").exists()
    # What is left is a planted file with no ledger: the audit flags it rather than passing the folder.
    assert audit_run(run_dir=out).status == "fail"



# --------------------------------------------------------------------------- releases, names and the file system


def test_select_never_overwrites_an_earlier_release(capsys, tmp_path, tripwire):
    out = tmp_path / "select"
    out.mkdir()
    (out / "selection.json").write_text('{"earlier": "release"}')
    refused(capsys, ["select", "--profile", "smoke", "--out", str(out)], mentions="already holds an earlier release")
    assert (out / "selection.json").read_text() == '{"earlier": "release"}'


def test_a_non_private_method_refuses_an_epsilon_it_would_not_spend(capsys, tmp_path, tripwire):
    out = tmp_path / "run"
    refused(capsys, run_argv(out, method="nonpriv-d", epsilon="1"), mentions="not private")
    assert not out.exists()


def test_sds_never_counts_the_sensitive_labels_whatever_the_spelling(capsys, monkeypatch):
    import json

    from privimage.data import registry

    def no_sensitive_train(split):
        raise AssertionError(f"sds read MNIST-5k's {split} split")

    monkeypatch.setattr(registry, "_mnist5k", no_sensitive_train)
    values = []
    for spelling in ("MNIST5K", "mnist5k"):
        assert main(["sds", "--profile", "smoke", "--a", spelling, "--b", "mnist5k", "--json"]) == 0
        values.append(json.loads(capsys.readouterr().out)["sds"])
    # Both spellings describe the sensitive set by its label set alone.
    assert values[0] == values[1]


def test_sds_takes_a_users_own_dataset_and_a_selection_beside_it(capsys, tmp_path, monkeypatch):
    from privimage.cli import semantics
    from privimage.config import load_config

    root = tmp_path / "data"
    save_npz(root / "mine.npz", **digits(20))
    (tmp_path / "sel.json").write_text('{"public": "npz:mine.npz", "selected_counts": {"class 0": 3}}')
    seen = []
    monkeypatch.setattr("privimage.semantics.dataset_frequencies",
                        lambda dataset: seen.append(dataset.name) or {"class 0": 1.0})
    args = type("Args", (), {"split": "train", "data_root": root})()
    config = load_config("smoke")
    assert semantics._frequencies("npz:mine.npz", args, config) == {"class 0": 1.0}
    assert seen == ["npz:mine.npz"]
    # NAME:SELECTION_JSON still splits at the last colon, NAME itself holding one.
    assert semantics._frequencies(f"npz:mine.npz:{tmp_path / 'sel.json'}", args, config) == {"class 0": 3.0}


def test_a_selection_file_of_the_wrong_shape_is_one_line(capsys, tmp_path):
    bad = tmp_path / "sel.json"
    bad.write_text('{"public": "glyphs1k", "selected_counts": [1, 2]}')
    refused(capsys, ["sds", "--profile", "smoke", "--a", f"glyphs1k:{bad}", "--b", "mnist5k"],
            mentions="is not a selection.json")


def test_an_output_path_that_is_a_file_is_one_line_not_a_traceback(capsys, tmp_path, tripwire):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(run_argv(blocker / "run"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), lines


def test_a_run_folder_whose_ledger_lost_its_journal_is_refused(capsys, tmp_path, tripwire):
    # finetune/ deleted after a run: resuming would restart DP-SGD at step 0 over a spent budget.
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"method": "dpdm", "epsilon": 1.0, "seed": 0}')
    (out / "ledger.json").write_text('{"entries": ["spent"]}')
    refused(capsys, run_argv(out), mentions="DP-SGD journal")
    assert (out / "ledger.json").read_text() == '{"entries": ["spent"]}'
