"""The SQF digit benchmark: its public handwriting, its simulation of the query, its command and refusals."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from privimage.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import sqf_digits  # noqa: E402


def test_uci_digits_are_in_mnist_format():
    images, labels = sqf_digits.uci_digits()
    assert images.shape == (1797, 1, 32, 32) and images.dtype == np.uint8
    assert sorted(set(labels.tolist())) == list(range(10))
    # White ink on black, inside MNIST's 28x28 frame (the 2 px padding of 32x32 stays background).
    assert (images.reshape(len(images), -1).max(axis=1) > 128).all()
    assert images[:, :, :2].max() == 0 and images[:, :, -2:].max() == 0


def test_own_digit_classes_name_the_glyph_of_each_digit():
    public = ("LATIN SMALL LETTER Q", "DIGIT ONE", "DIGIT ZERO")
    assert sqf_digits.own_digit_classes(public, ("zero", "one")) == [2, 1]
    with pytest.raises(ConfigError, match="DIGIT TWO"):
        sqf_digits.own_digit_classes(public, ("zero", "two"))


def test_histogram_counts_each_image_once_per_semantic_of_its_top_k_in_its_row():
    top1 = np.array([[0], [2], [2], [1]])
    histogram = sqf_digits.top_k_histogram(top1, np.array([0, 0, 1, 1]), num_rows=2, num_semantics=3)
    assert histogram.tolist() == [[1, 0, 1], [0, 1, 1]]
    # k = 2: each image adds one to each of its two semantics (the query's sensitivity is sqrt(k)).
    top2 = np.array([[0, 1], [2, 0]])
    histogram = sqf_digits.top_k_histogram(top2, np.array([0, 1]), num_rows=2, num_semantics=3)
    assert histogram.tolist() == [[1, 1, 0], [1, 0, 1]]


def test_simulated_query_finds_a_dominant_own_digit_and_misses_an_absent_one():
    rng = np.random.default_rng(0)
    histogram = np.zeros((2, 200))
    histogram[0, 7] = 400.0          # row 0: all its votes on its own semantic 7
    histogram[1, 50:55] = 400.0      # row 1: its votes on five others, none on its own semantic 9
    hits = sqf_digits.simulate_selection(histogram, [7, 9], noise_std=50.0, per_row=5, trials=200, rng=rng)
    assert hits.shape == (200, 2)
    assert hits[:, 0].all() and not hits[:, 1].any()


def test_simulated_query_picks_a_bin_at_the_noise_floor_only_sometimes():
    # 150 votes against noise of std 50 over 1,000 bins: the "about 150 votes" floor.
    histogram = np.zeros((1, 1000))
    histogram[0, 3] = 150.0
    hits = sqf_digits.simulate_selection(histogram, [3], noise_std=50.0, per_row=5, trials=400,
                                         rng=np.random.default_rng(1))
    assert 0.3 < hits.mean() < 0.99


def test_command_writes_a_row_per_digit_at_the_smoke_profile(tmp_path, monkeypatch):
    from privimage.data import registry

    monkeypatch.setenv("PRIVIMAGE_CACHE", str(tmp_path / "cache"))
    # The benchmark may read MNIST-5k's test split, never its training split.
    load_split = registry._mnist5k

    def test_split_only(split):
        assert split != "train", "the benchmark read the sensitive training split"
        return load_split(split)

    monkeypatch.setattr(registry, "_mnist5k", test_split_only)
    code = sqf_digits.main(["--out", str(tmp_path / "out"), "--profile", "smoke", "--data-root", str(tmp_path),
                            "--trials", "20", "--augmentation", "affine", "--query-noise-multipliers", "10", "50"])
    assert code == 0
    document = json.loads((tmp_path / "out" / "sqf_digits.json").read_text())
    assert [row["digit"] for row in document["rows"]][:3] == ["zero", "one", "two"]
    assert len(document["rows"]) == 10 and document["sqf_augmentation"] == "affine"
    for row in document["rows"]:
        for key in ("uci_share", "mnist_test_share", "mnist_test_rival_share", "simulated_own_selected"):
            assert 0.0 <= row[key] <= 1.0
        assert row["mnist_test_rival"] != f"DIGIT {row['digit'].upper()}"
    assert document["query"]["train_size"] == 4000 and document["query"]["trials"] == 20
    assert 0.0 <= document["simulated_p_at_least_checked"] <= 1.0
    sweep = document["query_noise_sweep"]
    assert [row["query_noise_multiplier"] for row in sweep] == [10.0, 50.0]
    for row in sweep:
        assert len(row["simulated_own_selected"]) == 10
        assert 0.0 <= row["simulated_p_at_least_checked"] <= 1.0
    table = (tmp_path / "out" / "sqf_digits.md").read_text()
    assert "| seven |" in table and "reporting only" in table
    assert "| 10 |" in table and "| 50 |" in table


def test_query_noise_costs_trade_the_query_against_dp_sgd():
    from privimage.config import load_config

    config = load_config("quick")
    costs = {z: sqf_digits.query_noise_costs(config, query_noise_multiplier=z, train_size=4000)
             for z in (2.0, 10.0, 50.0)}
    # q = 1000 / 4000 and 3 epochs: the quick profile's fine-tuning schedule.
    assert costs[50.0]["sample_rate"] == 0.25 and costs[50.0]["steps"] == 12
    # Less query noise spends more of the budget on the query, leaving DP-SGD more noise to add.
    assert costs[2.0]["query_epsilon"] > costs[10.0]["query_epsilon"] > costs[50.0]["query_epsilon"] > 0
    assert costs[10.0]["dpsgd_noise_multiplier"]["10"] > costs[50.0]["dpsgd_noise_multiplier"]["10"] > 0
    # At z = 2 the query alone spends more than epsilon 1: no DP-SGD noise can meet it.
    assert costs[2.0]["query_epsilon"] > 1.0 and costs[2.0]["dpsgd_noise_multiplier"]["1"] is None


@pytest.mark.parametrize("options, message", [
    (["--trials", "0"], "--trials"),
    (["--sqf-epochs", "0"], "--sqf-epochs"),
    (["--query-noise-multipliers", "50", "0"], "--query-noise-multipliers"),
    (["--profile", "no-such-profile"], "no-such-profile"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, options, message, isolated_cache):
    code = sqf_digits.main(["--out", str(tmp_path / "out"), *options])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error:") and message in error[0]
    assert not (tmp_path / "out" / "sqf_digits.json").exists()
