"""Handwritten digit forms in Glyphs-1k: every digit has them, they are traced by a pen, only digits use them."""

import numpy as np
import pytest
from scipy import ndimage

from privimage.data import glyphs, handwriting
from privimage.data.glyphs import glyph_table, render_glyph
from privimage.data.handwriting import DIGIT_FORMS, draw_handwritten_digit


def test_every_digit_has_forms_inside_the_unit_box():
    assert sorted(DIGIT_FORMS) == list("0123456789")
    for digit, forms in DIGIT_FORMS.items():
        assert forms, digit
        for form in forms:
            points = np.concatenate([np.asarray(stroke) for stroke in form])
            assert points.shape[1] == 2 and all(len(stroke) >= 2 for stroke in form)
            assert points.min() > -0.05 and points.max() < 1.05, digit
            # Digits are taller than wide: the height fills the box.
            assert np.ptp(points[:, 1]) > 0.9 and np.ptp(points[:, 0]) < 0.8, digit


def test_open_and_closed_four_are_both_drawn():
    """The forms fonts lack (an open-top 4) are there beside the font-like ones."""
    tops = []
    for form in DIGIT_FORMS["4"]:
        first_stroke = np.asarray(form[0])
        tops.append(tuple(first_stroke[0]))
    # The closed 4 starts at its apex on the stem's side; the open 4 at the top of a left stroke.
    assert any(x > 0.5 for x, _ in tops) and any(x < 0.3 for x, _ in tops)


@pytest.mark.parametrize("digit", list("0123456789"))
def test_traced_digit_is_one_connected_pen_line_of_the_drawn_width(digit):
    rng = np.random.default_rng(int(digit))
    for _ in range(5):
        coverage = draw_handwritten_digit(digit, 64, 26, (0.08, 0.2), rng)
        ink = coverage > 0.5
        assert coverage.shape == (64, 64) and 0.0 <= coverage.min() and coverage.max() <= 1.0
        rows, cols = np.nonzero(ink)
        assert 20 <= np.ptp(rows) + 1 <= 40  # about the requested height, plus jitter and pen
        # Strokes touch or cross in every form except the 1 with a separate base, the 4, 5 and 7 with a bar.
        _, pieces = ndimage.label(ink)
        assert pieces <= 2, (digit, pieces)
        # Stroke width: twice the distance transform's ridge, within the pen's range (26 * 0.08..0.2 = 2..5 px).
        ridge = np.percentile(ndimage.distance_transform_edt(ink)[ink], 95)
        assert 0.5 <= ridge <= 4.0, (digit, ridge)


def test_same_stream_same_digit_other_stream_other_digit():
    first = draw_handwritten_digit("9", 64, 26, (0.08, 0.2), np.random.default_rng(7))
    again = draw_handwritten_digit("9", 64, 26, (0.08, 0.2), np.random.default_rng(7))
    other = draw_handwritten_digit("9", 64, 26, (0.08, 0.2), np.random.default_rng(8))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_digits_and_only_digits_are_drawn_from_handwritten_forms(monkeypatch):
    calls = []
    original = handwriting.draw_handwritten_digit

    def counting(digit, *args, **kwargs):
        calls.append(digit)
        return original(digit, *args, **kwargs)

    monkeypatch.setattr(glyphs, "draw_handwritten_digit", counting)
    characters, faces = glyph_table()
    rng = np.random.default_rng(0)
    # Characters a handwritten digit could be mistaken for (and a non-ASCII digit) keep their faces.
    # (Latin O and small l are Unicode confusables of 0 and 1, so not classes: a large circle and a
    # turned sans-serif L stand in.)
    look_alikes = [c for c in ["\u25ef", "/", "\u0427", "\u2202", "\u0292", "\u2142", "\u0663"] if c in characters]
    assert len(look_alikes) >= 5
    for character in look_alikes:
        for _ in range(5):
            render_glyph(character, faces[characters.index(character)][0], rng)
    assert calls == []
    for digit in "0123456789":
        render_glyph(digit, faces[characters.index(digit)][0], rng)
    assert calls == list("0123456789")
