"""The private semantic query: public-only SQF, ledger-first release, fresh noise (paper Section 3.3)."""

import numpy as np
import pytest
import torch
from torch import nn

from privimage.config import SemanticQueryConfig
from privimage.data.base import ImageDataset
from privimage.errors import DataError, PrivacyError
from privimage.privacy import PrivacyLedger
from privimage.semantics.query import query_semantic_distribution
from privimage.semantics.query_function import QueryFunction, _random_translate, train_query_function


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
