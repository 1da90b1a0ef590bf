"""Handwritten forms of the ten digits, drawn as pen paths (Glyphs-1k's digit classes).

A font draws one form of each digit, but people write several: a 4 open at
the top, a 9 with a straight stem, a 1 without a base, a 7 with a crossbar,
a 2 with a loop. MNIST's writers use these forms; no face that matplotlib
ships draws them, and a query function trained on fonts alone sends such
digits to the symbols that share their form (an open 4 to Cyrillic Che, a
straight-stemmed 9 to partial differential). Glyphs-1k therefore draws part of
each digit class from the stroke paths below, the public-data counterpart of
ImageNet holding photographs of CIFAR-10's airliners, not only drawings of
them. Glyphs-1k draws its ten digit classes from these forms only; no other
class gets handwritten forms. This is a deliberate choice of the embedded
benchmark, reported with its results: with font digits, a query function
trained on the corpus took its digit glyph for 1-2 of MNIST's ten classes.

Each form is a list of strokes; each stroke a few points in a unit box
(x to the right, y downwards, the digit's height 1), jittered per image by a
hand's imprecision, smoothed into a curve and traced with a round pen. The
caller applies Glyphs-1k's affine and elastic distortion and MNIST's
normalisation, as for every other image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Standard deviation of the per-point jitter, as a fraction of the digit's height.
POINT_JITTER = 0.03
# Corner-cutting passes that turn the jittered points into a smooth pen path.
SMOOTHING_PASSES = 3


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, points: int = 12) -> list:
    """Points on an ellipse from angle ``start`` to ``stop`` in degrees (0 right, 90 down)."""
    angles = np.deg2rad(np.linspace(start, stop, points))
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]


# digit -> its handwritten forms; a form is a list of strokes, a stroke a list of (x, y) points.
DIGIT_FORMS: dict[str, list[list[list[tuple[float, float]]]]] = {
    "0": [
        [_arc(0.5, 0.5, 0.3, 0.5, -90, 270, 20)],
    ],
    "1": [
        [[(0.5, 0.0), (0.5, 1.0)]],                                    # a single stroke
        [[(0.3, 0.2), (0.5, 0.0), (0.5, 1.0)]],                        # with a flag
        [[(0.3, 0.2), (0.5, 0.0), (0.5, 1.0)], [(0.28, 1.0), (0.72, 1.0)]],  # flag and base
    ],
    "2": [
        [_arc(0.5, 0.28, 0.28, 0.27, 200, 380) + [(0.18, 1.0), (0.82, 1.0)]],
        # a loop where the diagonal meets the base
        [_arc(0.5, 0.28, 0.28, 0.27, 200, 380) + [(0.22, 0.92), (0.38, 0.84), (0.36, 1.0), (0.22, 0.96),
                                                  (0.5, 0.98), (0.82, 0.96)]],
    ],
    "3": [
        [_arc(0.48, 0.26, 0.26, 0.26, 200, 450) + _arc(0.48, 0.74, 0.3, 0.26, 270, 520)[1:]],
        # a flat top, as in a 3 written like a 7 with a bowl
        [[(0.2, 0.0), (0.78, 0.0), (0.45, 0.42)] + _arc(0.48, 0.72, 0.3, 0.28, 260, 520)],
    ],
    "4": [
        [[(0.65, 0.0), (0.15, 0.66), (0.88, 0.66)], [(0.65, 0.0), (0.65, 1.0)]],   # closed top
        [[(0.2, 0.0), (0.2, 0.62), (0.88, 0.62)], [(0.7, 0.05), (0.7, 1.0)]],     # open top
    ],
    "5": [
        [[(0.3, 0.0), (0.27, 0.42)] + _arc(0.48, 0.68, 0.3, 0.3, 240, 510), [(0.3, 0.0), (0.8, 0.0)]],
        # one stroke: bar, stem and bowl without lifting the pen
        [[(0.8, 0.0), (0.3, 0.0), (0.27, 0.42)] + _arc(0.48, 0.68, 0.3, 0.3, 240, 510)],
    ],
    "6": [
        [[(0.72, 0.0), (0.45, 0.15), (0.28, 0.45)] + _arc(0.5, 0.73, 0.25, 0.27, 180, -180, 16)],
        # a straight back
        [[(0.6, 0.0), (0.25, 0.7)] + _arc(0.5, 0.75, 0.25, 0.25, 180, -180, 16)],
    ],
    "7": [
        [[(0.18, 0.02), (0.82, 0.02), (0.4, 1.0)]],
        [[(0.18, 0.02), (0.82, 0.02), (0.4, 1.0)], [(0.35, 0.52), (0.75, 0.52)]],  # with a crossbar
    ],
    "8": [
        [_arc(0.5, 0.25, 0.23, 0.25, 0, 360, 16), _arc(0.5, 0.74, 0.28, 0.26, 0, 360, 16)],
        # one stroke crossing in the middle, as 8s are usually written
        [[(0.72, 0.1)] + _arc(0.5, 0.25, 0.23, 0.25, -30, -180, 8)
         + [(0.5, 0.5)] + _arc(0.5, 0.74, 0.28, 0.26, -90, 270, 16)[1:-1] + [(0.5, 0.5), (0.72, 0.35), (0.72, 0.1)]],
    ],
    "9": [
        [_arc(0.5, 0.27, 0.26, 0.27, 0, 360, 16), [(0.76, 0.27), (0.74, 1.0)]],       # straight stem
        [_arc(0.5, 0.27, 0.26, 0.27, 0, 360, 16), [(0.76, 0.27), (0.72, 0.72), (0.5, 1.0)]],  # curved stem
    ],
}


def _smooth(points: np.ndarray) -> np.ndarray:
    """Chaikin's corner cutting: a smooth curve through the neighbourhood of the points, ends kept."""
    for _ in range(SMOOTHING_PASSES):
        if len(points) < 3:
            return points
        quarter = 0.75 * points[:-1] + 0.25 * points[1:]
        three_quarters = 0.25 * points[:-1] + 0.75 * points[1:]
        cut = np.empty((2 * len(quarter), 2))
        cut[0::2], cut[1::2] = quarter, three_quarters
        points = np.concatenate([points[:1], cut, points[-1:]])
    return points


def draw_handwritten_digit(digit: str, canvas: int, height: int, pen_width: tuple[float, float],
                           rng: np.random.Generator) -> np.ndarray:
    """One handwritten form of ``digit``, traced with a round pen, as float coverage in [0, 1].

    Args:
        digit: "0" to "9".
        canvas: side of the square canvas in pixels.
        height: the digit's height in pixels, centred on the canvas.
        pen_width: range of the pen's width as a fraction of ``height``.
        rng: the image's random stream (form, jitter, pen).
    """
    forms = DIGIT_FORMS[digit]
    form = forms[int(rng.integers(len(forms)))]
    skeleton = np.zeros((canvas, canvas), dtype=bool)
    offset = (canvas - height) / 2
    for stroke in form:
        points = np.asarray(stroke, dtype=np.float64)
        points = points + rng.normal(0.0, POINT_JITTER, points.shape)
        path = _smooth(points) * height + offset
        # Sample the path every half pixel so that the traced line has no gaps.
        steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
        arc_length = np.concatenate([[0.0], np.cumsum(steps)])
        samples = np.linspace(0.0, arc_length[-1], max(2, int(arc_length[-1] * 2) + 1))
        xs = np.interp(samples, arc_length, path[:, 0])
        ys = np.interp(samples, arc_length, path[:, 1])
        rows = np.clip(np.round(ys).astype(int), 0, canvas - 1)
        cols = np.clip(np.round(xs).astype(int), 0, canvas - 1)
        skeleton[rows, cols] = True
    return trace_with_pen(skeleton, 0.5 * rng.uniform(*pen_width) * height)


def trace_with_pen(skeleton: np.ndarray, half_width: float) -> np.ndarray:
    """Coverage of a round pen of the given half width drawn along a boolean skeleton.

    The edge is soft and one pixel wide, anti-aliased like a scanned pen stroke.
    Shared with Glyphs-1k's retrace of font glyphs, so both draw the same pen.
    """
    distance = ndimage.distance_transform_edt(~skeleton)
    return np.clip(half_width + 0.5 - distance, 0.0, 1.0)
