"""SDS (paper Eq. 5): frequency-weighted mean cosine similarity of GloVe vectors."""

import numpy as np
import pytest
from gensim.models import KeyedVectors

from privimage.semantics.sds import semantic_distribution_similarity


@pytest.fixture()
def toy_vectors():
    vectors = KeyedVectors(vector_size=2)
    vectors.add_vectors(["cat", "dog", "car"], np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    return vectors


def test_sds_of_identical_single_semantics_is_one(toy_vectors):
    assert semantic_distribution_similarity({"cat": 3}, {"cat": 7}, vectors=toy_vectors) == pytest.approx(1.0)


def test_sds_is_the_frequency_weighted_mean_cosine(toy_vectors):
    # A = {cat: 1/4, car: 3/4}, B = {dog: 1}: 1/4 * cos(cat, dog) + 3/4 * cos(car, dog) = 0.25*0.6 + 0.75*0.8
    value = semantic_distribution_similarity({"cat": 1, "car": 3}, {"dog": 2}, vectors=toy_vectors)
    assert value == pytest.approx(0.25 * 0.6 + 0.75 * 0.8)


def test_sds_favours_closer_distribution(toy_vectors):
    close = semantic_distribution_similarity({"cat": 1}, {"cat": 9, "car": 1}, vectors=toy_vectors)
    far = semantic_distribution_similarity({"cat": 1}, {"cat": 1, "car": 9}, vectors=toy_vectors)
    assert close > far


def test_sds_on_glove_ranks_digit_glyphs_above_unrelated_glyphs():
    from privimage.data import glove_vectors

    vectors = glove_vectors()
    digits = {name: 1.0 for name in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")}
    digit_glyphs = {f"DIGIT {name.upper()}": 1.0 for name in digits}
    letters = {"GREEK SMALL LETTER ALPHA": 1.0, "BLACK STAR": 1.0, "SNOWMAN": 1.0}
    assert semantic_distribution_similarity(digits, digit_glyphs, vectors=vectors) > semantic_distribution_similarity(
        digits, letters, vectors=vectors
    )
