"""GloVe: the embedded 6B 50d vectors, class-name vectors, and a replacement text file."""

import numpy as np
import pytest

from privimage.data import class_name_vector, glove_vectors
from privimage.data.glove import name_words
from privimage.errors import DataError


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_embedded_vectors_are_real_glove():
    vectors = glove_vectors()
    assert vectors.vector_size == 50 and len(vectors) == 400_000
    seven, eight, umbrella = (class_name_vector(word) for word in ("seven", "eight", "umbrella"))
    assert seven.shape == (50,) and seven.dtype == np.float32
    assert cosine(seven, eight) > 0.9 > cosine(seven, umbrella)
    # Loaded once per process.
    assert glove_vectors() is vectors and glove_vectors(None) is vectors


def test_class_name_vector_is_the_mean_of_known_words():
    vectors = glove_vectors()
    expected = (vectors["digit"] + vectors["seven"]) / 2
    np.testing.assert_allclose(class_name_vector("DIGIT SEVEN"), expected, rtol=1e-6)
    # Unknown words are skipped, not zeros.
    np.testing.assert_allclose(class_name_vector("seven qqxqzv"), vectors["seven"], rtol=1e-6)
    assert class_name_vector("qqxqzv zzkqw") is None


def test_name_words_splits_dataset_style_names():
    assert name_words("kit_fox") == ["kit", "fox"]
    assert name_words("T-shirt/top") == ["t", "shirt", "top"]
    assert name_words("LATIN SMALL LETTER A") == ["latin", "small", "letter", "a"]


def test_text_file_replaces_embedded_vectors(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("seven 1 0 0\neight 0.9 0.1 0\numbrella 0 0 1\n")
    vectors = glove_vectors(str(path))
    assert vectors.vector_size == 3 and len(vectors) == 3
    np.testing.assert_allclose(class_name_vector("Seven Eight", vectors), [0.95, 0.05, 0])


def test_missing_or_malformed_text_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        glove_vectors(str(tmp_path / "absent.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("seven 1 0 0\neight 0.9 zero\n")
    with pytest.raises(DataError, match="not a GloVe text file"):
        glove_vectors(str(bad))
