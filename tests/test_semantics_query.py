"""The private semantic query: public-only SQF, ledger-first release, fresh noise (paper Section 3.3)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from privimage.config import SemanticQueryConfig, load_config
from privimage.data.base import ImageDataset
from privimage.errors import ConfigError, DataError, PrivacyError
from privimage.privacy import PrivacyLedger
from privimage.semantics.query import query_semantic_distribution
from privimage.semantics.query_function import (
    QueryFunction,
    _random_translate,
    augment,
    query_function_key,
    train_query_function,
)


def _dataset(n=40, num_classes=2, sensitive=False, seed=0, name="toy"):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)
    labels = np.arange(n) % num_classes
    return ImageDataset(name, "train", images, labels, tuple(f"c{i}" for i in range(num_classes)), sensitive=sensitive)


class _ConstantSemantics(nn.Module):
    """Puts every image of brightness above 127 on semantic 0, else on semantic 1 (of 4)."""

    def forward(self, x):
        bright = (x.mean(dim=(1, 2, 3)) > 0).float()
        logits = torch.stack([bright, 1 - bright, torch.zeros_like(bright), torch.zeros_like(bright)], dim=1)
        return logits * 20


def _query_function():
    return QueryFunction(_ConstantSemantics(), "public", ("p0", "p1", "p2", "p3"), 1.0, 0.0, "")


def test_sqf_training_refuses_the_sensitive_training_set():
    sensitive = _dataset(sensitive=True)
    with pytest.raises(DataError, match="must not read the sensitive training set"):
        train_query_function(public_train=sensitive, public_val=_dataset(), config=SemanticQueryConfig(sqf_epochs=1))
    with pytest.raises(DataError, match="must not read the sensitive training set"):
        train_query_function(public_train=_dataset(), public_val=sensitive, config=SemanticQueryConfig(sqf_epochs=1))


def test_sqf_shift_augmentation_opens_background_margins_not_grey_ones():
    white = torch.ones(4, 1, 32, 32)
    generator = torch.Generator().manual_seed(0)
    shifted = [_random_translate(white, generator) for _ in range(25)]
    # Every pixel is ink (+1) or background (-1): no queried image has a grey (0) margin.
    assert all(set(batch.unique().tolist()) <= {-1.0, 1.0} for batch in shifted)
    # The draws do shift (some batches lose ink to a margin).
    assert any((batch == -1.0).any() for batch in shifted)


def _strokes(n=6, seed=0):
    """Images of one random bar each, ink +1 on background -1."""
    rng = np.random.default_rng(seed)
    images = -torch.ones(n, 1, 32, 32)
    for image in images:
        row, col = rng.integers(6, 20, size=2)
        image[0, row : row + 10, col : col + 3] = 1.0
    return images


def test_sqf_affine_augmentation_moves_each_image_and_keeps_the_background():
    images = _strokes()
    moved = augment(images, torch.Generator().manual_seed(0), kind="affine")
    assert moved.shape == images.shape
    assert moved.min() >= -1.0 - 1e-6 and moved.max() <= 1.0 + 1e-6
    # Every image is changed, each in its own way (per-image draws, not one per batch).
    changes = (moved - images).abs().flatten(1).sum(1)
    assert (changes > 1.0).all()
    # A blank image stays blank: what comes in from outside the frame is background, not grey.
    blank = augment(-torch.ones(3, 1, 32, 32), torch.Generator().manual_seed(1), kind="affine")
    assert torch.allclose(blank, torch.full_like(blank, -1.0))


def test_sqf_affine_augmentation_changes_the_strokes_width_both_ways():
    images = _strokes(n=64)
    moved = augment(images, torch.Generator().manual_seed(2), kind="affine")
    ink_before = (images > 0).flatten(1).sum(1).float()
    ink_after = (moved > 0).flatten(1).sum(1).float()
    ratio = ink_after / ink_before
    assert (ratio > 1.3).any() and (ratio < 0.9).any()


def test_sqf_affine_augmentation_gives_each_rank_its_rows_of_one_global_draw():
    # Under torchrun each rank augments its strided share; together they must equal one process's batch.
    images = _strokes(n=7)
    whole = augment(images, torch.Generator().manual_seed(3), kind="affine")
    for rank in range(2):
        positions = torch.arange(rank, 7, 2)
        share = augment(images[positions], torch.Generator().manual_seed(3), kind="affine",
                        batch_size=7, positions=positions)
        assert torch.allclose(share, whole[positions], atol=1e-6)


def test_sqf_augmentation_is_part_of_the_cache_key_and_checked():
    public = _dataset()
    shift = query_function_key(public_train=public, public_val=public, config=SemanticQueryConfig())
    affine = query_function_key(public_train=public, public_val=public,
                                config=SemanticQueryConfig(sqf_augmentation="affine"))
    assert shift != affine
    with pytest.raises(ConfigError, match="semantics.sqf_augmentation"):
        load_config("smoke", {"semantics.sqf_augmentation": "flip"})
    with pytest.raises(ConfigError, match="sqf_augmentation"):
        augment(_strokes(), torch.Generator(), kind="flip")


def test_sqf_trains_with_the_affine_augmentation(isolated_cache):
    public = _dataset(n=32, seed=4)
    query_function = train_query_function(
        public_train=public, public_val=public, config=SemanticQueryConfig(sqf_epochs=1, sqf_batch_size=16,
                                                                            sqf_width=4, sqf_augmentation="affine"),
        progress=False,
    )
    assert 0.0 <= query_function.public_val_accuracy <= 1.0
    assert "affine" in Path(query_function.cache_dir, "report.json").read_text()


def test_query_records_itself_and_gives_fresh_float64_noise():
    sensitive = _dataset(sensitive=True)
    ledger = PrivacyLedger(delta=1e-3, dataset_hash=sensitive.content_hash(), num_examples=len(sensitive))
    first = query_semantic_distribution(
        query_function=_query_function(), sensitive=sensitive, k=1, query_noise_multiplier=2.0, ledger=ledger
    )
    second = query_semantic_distribution(
        query_function=_query_function(), sensitive=sensitive, k=1, query_noise_multiplier=2.0, ledger=ledger
    )
    assert first.noisy_histogram.dtype == np.float64
    assert first.noisy_histogram.shape == (2, 4)
    # Same data, same parameters: the noise differs because no seed controls it.
    assert not np.array_equal(first.noisy_histogram, second.noisy_histogram)
    # Both releases are in the ledger, so the composition is charged twice.
    queries = [e for e in ledger.entries if e["mechanism"] == "semantic_query"]
    assert len(queries) == 2 and queries[0]["noise_std"] == pytest.approx(2.0)


def test_query_noise_is_independent_of_torch_and_numpy_seeds():
    sensitive = _dataset(sensitive=True)
    releases = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        ledger = PrivacyLedger(delta=1e-3, dataset_hash=sensitive.content_hash(), num_examples=len(sensitive))
        releases.append(query_semantic_distribution(
            query_function=_query_function(), sensitive=sensitive, k=2, query_noise_multiplier=1.0, ledger=ledger
        ).noisy_histogram)
    assert not np.array_equal(releases[0], releases[1])


def test_query_histogram_is_centred_on_the_true_counts():
    # With tiny noise the release is the class-conditional top-k histogram itself.
    sensitive = _dataset(n=60, num_classes=3, sensitive=True)
    ledger = PrivacyLedger(delta=1e-3, dataset_hash=sensitive.content_hash(), num_examples=len(sensitive))
    release = query_semantic_distribution(
        query_function=_query_function(), sensitive=sensitive, k=2, query_noise_multiplier=1e-6, ledger=ledger
    )
    # k=2: every image counts its top-2 semantics {p0, p1} in its class row: 20 images per row.
    np.testing.assert_allclose(release.noisy_histogram, [[20, 20, 0, 0]] * 3, atol=1e-3)


def test_query_refuses_a_ledger_of_another_dataset_and_bad_k():
    sensitive = _dataset(sensitive=True)
    other = PrivacyLedger(delta=1e-3, dataset_hash="0" * 64, num_examples=len(sensitive))
    with pytest.raises(PrivacyError, match="another sensitive dataset"):
        query_semantic_distribution(query_function=_query_function(), sensitive=sensitive, k=1,
                                    query_noise_multiplier=1.0, ledger=other)
    ledger = PrivacyLedger(delta=1e-3, dataset_hash=sensitive.content_hash(), num_examples=len(sensitive))
    with pytest.raises(PrivacyError, match="k must lie"):
        query_semantic_distribution(query_function=_query_function(), sensitive=sensitive, k=5,
                                    query_noise_multiplier=1.0, ledger=ledger)
    assert ledger.entries == []


def test_select_without_k_queries_k_equal_to_n_and_records_z_k_and_n(capsys, tmp_path, monkeypatch):
    import json

    import privimage.semantics.stage as stage
    from privimage.cli import main

    def untrained_query_function(*, public_train, **kwargs):
        # Public data only, and no training: the test is about what the query records.
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, public_train.num_classes))
        return QueryFunction(model=model, public_name=public_train.name, public_class_names=public_train.class_names,
                             public_val_accuracy=0.0, train_seconds=0.0, cache_dir="")

    monkeypatch.setattr(stage, "train_query_function", untrained_query_function)

    def select(out, *extra):
        assert main(["select", "--profile", "smoke", "--selection-ratio", "0.05", "--out", str(out), "--json",
                     *extra]) == 0
        printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        return printed, json.loads((out / "selection.json").read_text())

    # 5% of 1,000 public classes for 10 digits: N = 5, and k follows it.
    printed, summary = select(tmp_path / "follows")
    assert (summary["k"], summary["semantics_per_class"], summary["query_noise_multiplier"]) == (5, 5, 39.0)
    assert summary["k_follows_semantics_per_class"] is True
    assert all(len(chosen) == 5 for chosen in summary["selected"].values())
    [query] = summary["ledger"]["entries"]
    assert (query["mechanism"], query["query_noise_multiplier"], query["k"]) == ("semantic_query", 39.0, 5)
    assert (printed["k"], printed["semantics_per_class"], printed["query_noise_multiplier"]) == (5, 5, 39.0)
    # An explicit --k is kept; N still follows the ratio.
    _, summary = select(tmp_path / "explicit", "--k", "2", "--query-noise-multiplier", "60")
    assert (summary["k"], summary["semantics_per_class"], summary["query_noise_multiplier"]) == (2, 5, 60.0)
    assert summary["k_follows_semantics_per_class"] is False
    assert (summary["ledger"]["entries"][0]["k"], summary["ledger"]["entries"][0]["query_noise_multiplier"]) == (2, 60.0)


def test_sqf_training_is_reproducible_whatever_the_global_random_state(tmp_path, monkeypatch):
    """The seed fixes initialisation as well as shuffling: two trainings from scratch give the same weights."""
    public = _dataset(n=32, seed=4)
    config = SemanticQueryConfig(sqf_epochs=1, sqf_batch_size=16, sqf_width=4)
    weights = []
    for attempt, global_seed in enumerate((1, 2)):
        # A fresh cache each time, and a different global random state before each training.
        monkeypatch.setenv("PRIVIMAGE_CACHE", str(tmp_path / f"cache-{attempt}"))
        torch.manual_seed(global_seed)
        query_function = train_query_function(public_train=public, public_val=public, config=config, seed=3,
                                              progress=False)
        weights.append(torch.load(Path(query_function.cache_dir) / "sqf.pt", weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
