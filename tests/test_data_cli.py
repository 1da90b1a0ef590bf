"""``privimage data list|info|show``: one JSON object on the last line, clear errors, readable PNGs."""

import json

import numpy as np
import pytest
from PIL import Image

from privimage.cli import main


def run_json(capsys, argv):
    code = main(argv + ["--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_info_mnist5k_splits_cover_the_5000_digits(capsys):
    total = 0
    for split in ("train", "test"):
        code, info = run_json(capsys, ["data", "info", "mnist5k", "--split", split])
        assert code == 0 and info["name"] == "mnist5k" and info["split"] == split
        assert info["num_classes"] == 10 and info["image_shape"] == [1, 32, 32]
        assert info["class_names"] == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        total += info["num_images"]
    assert total == 5000


def test_info_glyphs1k_has_1000_classes_with_digits(capsys):
    code, info = run_json(capsys, ["data", "info", "glyphs1k", "--split", "val", "--profile", "smoke"])
    assert code == 0 and info["num_classes"] == len(info["class_names"]) == 1000
    assert {"DIGIT ZERO", "DIGIT FIVE", "DIGIT NINE"} <= set(info["class_names"])
    assert info["num_images"] == 1000  # smoke: one validation image per class


def test_list_reports_availability_and_paths(capsys, tmp_path):
    code, result = run_json(capsys, ["data", "list", "--data-root", str(tmp_path)])
    rows = {row["name"]: row for row in result["datasets"]}
    assert code == 0 and rows["mnist5k"]["available"] and not rows["imagenet32"]["available"]
    assert rows["imagenet32"]["expected_path"] == str(tmp_path / "imagenet32")


def test_data_root_from_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVIMAGE_DATA", str(tmp_path / "env-root"))
    _, info = run_json(capsys, ["data", "info", "cifar10"])
    assert info["expected_path"] == str(tmp_path / "env-root" / "cifar-10-batches-py")


def test_missing_cifar10_is_one_clear_line(capsys, tmp_path):
    code = main(["data", "show", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: cifar10 not found") and "data_batch_1" in err[0] and str(tmp_path) in err[0]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "info", "nosuchset"], "unknown dataset 'nosuchset'"),
        (["data", "info", "mnist5k", "--split", "val"], "mnist5k has no split 'val'"),
    ],
)
def test_bad_input_exit_code_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_data_key_in_profile(capsys, tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("data:\n  glyphs_per_class: 3\n")
    assert main(["data", "info", "glyphs1k", "--profile", str(profile)]) == 2
    assert "unknown key 'data.glyphs_per_class'" in capsys.readouterr().err


def test_show_writes_a_labelled_png(capsys, tmp_path):
    out = tmp_path / "grid.png"
    code, result = run_json(capsys, ["data", "show", "mnist5k", "--split", "test", "--n", "16", "--out", str(out)])
    assert code == 0 and result["out"] == str(out) and result["num_shown"] == 16
    image = np.asarray(Image.open(out).convert("L"))
    # A 4x4 grid of white-on-black digits on a white page: both extremes are present.
    assert image.shape[0] > 300 and image.min() == 0 and image.max() == 255
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_show_match_filters_classes(tmp_path, capsys):
    from privimage.data import load_dataset
    from privimage.data.preview import pick_images

    dataset = load_dataset("mnist5k", "test")
    chosen = pick_images(dataset=dataset, n=30, match="seven")
    assert len(chosen) == 30 and set(dataset.labels[chosen]) == {7}
    assert main(["data", "show", "mnist5k", "--split", "test", "--match", "eleven", "--out", str(tmp_path / "x.png")]) == 2
    assert "no class name contains 'eleven'" in capsys.readouterr().err


def test_show_counts_what_a_match_leaves(capsys, tmp_path):
    # MNIST-5k's test split holds 100 sevens: asking for 200 draws 100.
    out = tmp_path / "sevens.png"
    code, result = run_json(capsys, ["data", "show", "mnist5k", "--split", "test", "--match", "seven",
                                     "--n", "200", "--out", str(out)])
    assert code == 0 and result["num_shown"] == 100 and out.is_file()


def test_show_refuses_the_sensitive_training_split_unless_asked(capsys, tmp_path, monkeypatch):
    from privimage.data import registry

    monkeypatch.setattr(registry, "_mnist5k", lambda split: pytest.fail(f"read MNIST-5k's {split} split"))
    out = tmp_path / "x.png"
    assert main(["data", "show", "MNIST5K", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "sensitive training split" in error[0] and "--allow-sensitive" in error[0]
    assert not out.exists()


def test_show_draws_the_sensitive_training_split_when_asked(capsys, tmp_path):
    out = tmp_path / "x.png"
    code, result = run_json(capsys, ["data", "show", "mnist5k", "--allow-sensitive", "--n", "4", "--out", str(out)])
    assert code == 0 and result["split"] == "train" and result["num_shown"] == 4 and out.is_file()
