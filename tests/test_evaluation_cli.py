"""`privimage evaluate`: one JSON object on the last line; bad input is `error: ...` and exit 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from privimage.cli import main
from privimage.data.mnist5k import load_mnist5k
from privimage.evaluation import datasets
from stand_ins import stand_in_split

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def offline_setup(isolated_cache, monkeypatch):
    original = datasets.load_split
    # The public corpus of the smoke profile is replaced by a small stand-in.
    monkeypatch.setattr(datasets, "load_split", lambda *, name, split, data_root=None, config=None:
                        stand_in_split(split) if name == "glyphs1k" else original(name=name, split=split,
                                                                                   data_root=data_root, config=config))


def synthetic_file(tmp_path, n=200, **override):
    train = load_mnist5k("train")
    rows = np.random.default_rng(0).choice(len(train), n, replace=False)
    arrays = {"x": train.images[rows], "y": train.labels[rows]}
    arrays.update(override)
    path = tmp_path / "synthetic.npz"
    np.savez(path, **arrays)
    return path


def test_evaluate_prints_one_json_object(tmp_path, capsys):
    path = synthetic_file(tmp_path)
    code = main(["evaluate", "--synthetic", str(path), "--sensitive", "mnist5k", "--profile", "smoke", "--json"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert {"fid", "fid_backbone", "fid_num_synthetic", "fid_num_real", "ca"} <= set(result)
    assert result["fid_backbone"] == "offline-smallcnn-sklearn-digits"
    assert (result["fid_num_synthetic"], result["fid_num_real"]) == (200, 1000)
    assert set(result["ca"]) == {"lr", "mlp", "cnn"}


def test_nhwc_file_gives_the_same_fid_as_nchw(tmp_path, capsys):
    nchw = synthetic_file(tmp_path)
    main(["evaluate", "--synthetic", str(nchw), "--profile", "smoke", "--json"])
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with np.load(nchw) as archive:
        x, y = archive["x"], archive["y"]
    nhwc = tmp_path / "nhwc.npz"
    np.savez(nhwc, x=x.transpose(0, 2, 3, 1), y=y)
    main(["evaluate", "--synthetic", str(nhwc), "--profile", "smoke", "--json"])
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Same pixels, so the same FID up to float32 rounding in the backbone.
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"x": np.zeros((200, 3, 32, 32), np.uint8)}, "3x32x32 but mnist5k images are 1x32x32"),
        ({"y": np.full(200, 10)}, "labels must lie in [0, 10)"),
        ({"x": np.full((200, 1, 32, 32), np.nan, np.float32)}, "NaN"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, override, message):
    path = synthetic_file(tmp_path, **override)
    code = main(["evaluate", "--synthetic", str(path), "--profile", "smoke", "--json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err and captured.err.count("\n") == 1


def test_too_few_samples_names_how_many(tmp_path, capsys):
    path = synthetic_file(tmp_path, n=50)
    assert main(["evaluate", "--synthetic", str(path), "--profile", "smoke"]) == 2
    assert "needs at least 129 synthetic images" in capsys.readouterr().err


def test_exit_code_from_the_console(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"corrupt")
    process = subprocess.run([sys.executable, "-m", "privimage", "evaluate", "--synthetic", str(bad), "--profile", "smoke"],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable npz archive")
