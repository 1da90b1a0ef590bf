"""The semantic histogram, its Gaussian mechanism, and where DP noise comes from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privimage.errors import PrivacyError
from privimage.privacy import (
    SecureNoiseGenerator,
    dp_noise_generator,
    generator_name,
    noisy_histogram,
    semantic_histogram,
    torch_noise_generator,
)


@st.composite
def datasets_and_canary(draw):
    """A random labelled dataset of top-k semantics, and one more image."""
    num_semantics = draw(st.integers(1, 12))
    k = draw(st.integers(1, num_semantics))
    num_rows = draw(st.integers(1, 4))
    num_images = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    topk = np.argsort(rng.random((num_images + 1, num_semantics)), axis=1)[:, :k]
    labels = rng.integers(0, num_rows, size=num_images + 1)
    return topk, labels, num_semantics, num_rows, k


@settings(max_examples=200, deadline=None)
@given(datasets_and_canary())
def test_adding_one_image_changes_k_cells_of_one_row_by_one(case):
    topk, labels, num_semantics, num_rows, k = case
    without = semantic_histogram(topk[:-1], labels[:-1], num_semantics=num_semantics, num_rows=num_rows)
    with_ = semantic_histogram(topk, labels, num_semantics=num_semantics, num_rows=num_rows)
    difference = with_ - without
    assert without.dtype == np.float64 and without.shape == (num_rows, num_semantics)
    assert sorted(np.unique(difference).tolist()) in ([0.0, 1.0], [1.0])
    assert difference.sum() == k
    assert np.flatnonzero(difference.any(axis=1)).tolist() == [labels[-1]]
    assert np.linalg.norm(difference) == pytest.approx(math.sqrt(k))
    # Counts add up: every image adds k, in its own row.
    np.testing.assert_array_equal(with_.sum(axis=1), k * np.bincount(labels, minlength=num_rows))


@settings(max_examples=50, deadline=None)
@given(datasets_and_canary())
def test_unlabelled_histogram_is_the_row_sum_of_the_labelled_one(case):
    topk, labels, num_semantics, num_rows, _ = case
    labelled = semantic_histogram(topk, labels, num_semantics=num_semantics, num_rows=num_rows)
    single = semantic_histogram(topk, None, num_semantics=num_semantics, num_rows=1)
    np.testing.assert_array_equal(single[0], labelled.sum(axis=0))


def test_histogram_counts_a_small_example_exactly():
    topk = np.array([[0, 2], [2, 1], [0, 1]])
    labels = np.array([1, 1, 0])
    expected = np.array([[1, 1, 0], [1, 1, 2]], dtype=np.float64)
    np.testing.assert_array_equal(semantic_histogram(topk, labels, num_semantics=3, num_rows=2), expected)


@pytest.mark.parametrize(
    ("topk", "labels", "num_semantics", "num_rows", "message"),
    [
        (np.array([[0, 0]]), None, 3, 1, "distinct"),
        (np.array([[0, 3]]), None, 3, 1, r"\[0, 3\)"),
        (np.array([[-1, 1]]), None, 3, 1, r"\[0, 3\)"),
        (np.zeros((0, 2), dtype=int), None, 3, 1, "empty"),
        (np.array([0, 1]), None, 3, 1, r"\(N, k\)"),
        (np.array([[0.0, 1.0]]), None, 3, 1, "integer"),
        (np.array([[0, 1]]), np.array([2]), 3, 2, "labels"),
        (np.array([[0, 1]]), np.array([0, 1]), 3, 2, "labels"),
        (np.array([[0, 1]]), None, 3, 2, "one row"),
    ],
)
def test_histogram_refuses_bad_input(topk, labels, num_semantics, num_rows, message):
    with pytest.raises(PrivacyError, match=message):
        semantic_histogram(topk, labels, num_semantics=num_semantics, num_rows=num_rows)


def test_noise_is_float64_with_std_z_sqrt_k():
    counts = np.zeros((4, 50_000), dtype=np.int64)
    released = noisy_histogram(counts, query_noise_multiplier=3.0, k=4, generator=np.random.default_rng(0))
    assert released.dtype == np.float64 and released.shape == counts.shape
    # 200k draws: the sample std is within 1% of z*sqrt(k) = 6 with overwhelming probability.
    assert released.std() == pytest.approx(6.0, rel=0.01)
    assert abs(released.mean()) < 0.05


def test_noise_is_added_to_the_counts():
    counts = np.full((2, 3), 1000.0)
    released = noisy_histogram(counts, query_noise_multiplier=0.01, k=1, generator=np.random.default_rng(1))
    np.testing.assert_allclose(released, counts, atol=0.1)
    assert not np.array_equal(released, counts)


def test_two_queries_on_the_same_data_draw_different_noise():
    counts = np.arange(12.0).reshape(3, 4)
    first = noisy_histogram(counts, query_noise_multiplier=1.0, k=2)
    second = noisy_histogram(counts, query_noise_multiplier=1.0, k=2)
    assert not np.array_equal(first, second)


def test_experiment_seeds_do_not_control_dp_noise():
    draws = []
    for _ in range(2):
        np.random.seed(0)
        torch.manual_seed(0)
        draws.append((
            dp_noise_generator().normal(size=4),
            dp_noise_generator(secure=True).normal(size=4),
            torch.randn(4, generator=torch_noise_generator()),
        ))
    for first, second in zip(*draws):
        assert not np.array_equal(np.asarray(first), np.asarray(second))


def test_secure_generator_is_marked_and_still_gaussian():
    generator = dp_noise_generator(secure=True)
    assert isinstance(generator, SecureNoiseGenerator) and generator_name(generator) == "secure"
    assert generator_name(dp_noise_generator()) == "os-entropy"
    released = noisy_histogram(np.zeros(100_000), query_noise_multiplier=2.0, k=1, generator=generator)
    # The four-sample mitigation keeps the distribution: std 2, normal tails.
    assert released.dtype == np.float64
    assert released.std() == pytest.approx(2.0, rel=0.015)
    assert np.mean(np.abs(released) > 2 * 1.96) == pytest.approx(0.05, abs=0.004)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(query_noise_multiplier=0.0, k=1), "query_noise_multiplier"),
        (dict(query_noise_multiplier=-1.0, k=1), "query_noise_multiplier"),
        (dict(query_noise_multiplier=float("inf"), k=1), "query_noise_multiplier"),
        (dict(query_noise_multiplier=1.0, k=0), "k"),
        (dict(query_noise_multiplier=1.0, k=1, generator=np.random.RandomState(0)), "Generator"),
    ],
)
def test_noisy_histogram_refuses_bad_parameters(kwargs, message):
    with pytest.raises(PrivacyError, match=message):
        noisy_histogram(np.zeros((2, 2)), **kwargs)


def test_noisy_histogram_refuses_non_finite_counts():
    with pytest.raises(PrivacyError, match="finite"):
        noisy_histogram(np.array([1.0, np.nan]), query_noise_multiplier=1.0, k=1)
