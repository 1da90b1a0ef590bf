"""The fine-tuning learning-rate benchmark on a public stand-in: its data, its command, its refusals."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from privimage.data import load_dataset
from privimage.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import finetune_proxy  # noqa: E402


def test_stand_in_has_mnist5k_shape_and_loads_as_npz_dataset(tmp_path, isolated_cache):
    folder = finetune_proxy.write_proxy(tmp_path, train_per_class=3, test_per_class=2)
    train = load_dataset(f"npz:{finetune_proxy.PROXY_NAME}", "train", data_root=tmp_path)
    test = load_dataset(f"npz:{finetune_proxy.PROXY_NAME}", "test", data_root=tmp_path)
    assert folder == tmp_path / finetune_proxy.PROXY_NAME
    assert train.images.shape == (30, 1, 32, 32) and test.images.shape == (20, 1, 32, 32)
    assert train.class_names == finetune_proxy.DIGIT_NAMES
    assert np.bincount(train.labels).tolist() == [3] * 10
    # Ink on every image, and the splits come from different streams.
    assert (train.images.reshape(30, -1).max(axis=1) > 128).all()
    assert not any(np.array_equal(a, b) for a in train.images for b in test.images)
    # Deterministic: written again, the same pixels.
    again = finetune_proxy.write_proxy(tmp_path / "again", train_per_class=3, test_per_class=2)
    assert np.array_equal(np.load(again / "train.npz")["x"], np.load(folder / "train.npz")["x"])


def test_stand_in_repeats_no_corpus_image(tmp_path, monkeypatch):
    """Glyphs-1k's own digit images are not in the stand-in (different random streams)."""
    from privimage.config import DataConfig
    from privimage.data.glyphs import _render_class, class_names

    monkeypatch.setenv("PRIVIMAGE_CACHE", str(tmp_path / "cache"))
    label = class_names().index("DIGIT SEVEN")
    corpus = _render_class((DataConfig().dataset_seed, 0, label, 20))
    folder = finetune_proxy.write_proxy(tmp_path, train_per_class=20, test_per_class=1)
    sevens = np.load(folder / "train.npz")["x"][7 * 20:8 * 20]
    assert not any(np.array_equal(a, b) for a in corpus for b in sevens)


def test_command_writes_rows_for_every_method_and_rate(tmp_path, isolated_cache):
    code = finetune_proxy.main(["--out", str(tmp_path / "out"), "--profile", "smoke", "--data-root", str(tmp_path),
                                "--methods", "pdp-diffusion", "nonpriv-d", "--lrs", "1e-3", "1e-4"])
    assert code == 0
    document = json.loads((tmp_path / "out" / "finetune_proxy.json").read_text())
    stages = [(row["method"], row["stage"], row["lr"]) for row in document["rows"]]
    assert stages == [("pdp-diffusion", "pretrained", None), ("pdp-diffusion", "fine-tuned", 1e-3),
                      ("pdp-diffusion", "fine-tuned", 1e-4), ("nonpriv-d", "pretrained", None),
                      ("nonpriv-d", "fine-tuned", 1e-3), ("nonpriv-d", "fine-tuned", 1e-4)]
    assert all(np.isfinite(row["fid"]) and row["fid"] > 0 for row in document["rows"])
    # Different learning rates give different models, so different FIDs.
    assert document["rows"][1]["fid"] != document["rows"][2]["fid"]
    table = (tmp_path / "out" / "finetune_proxy.md").read_text()
    assert table.count("\n| pdp-diffusion |") == 3 and table.count("\n| nonpriv-d |") == 3


@pytest.mark.parametrize("arguments, message", [
    (["--methods", "privimage-g"], "not a diffusion method"),
    (["--lrs", "0"], "--lrs must be positive"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, arguments, message):
    code = finetune_proxy.main(["--out", str(tmp_path), "--data-root", str(tmp_path), *arguments])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]
    assert not (tmp_path / "finetune_proxy.json").exists()
