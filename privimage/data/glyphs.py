"""Glyphs-1k: the embedded public corpus, 1,000 Unicode glyph classes (DESIGN.md).

An ImageNet-shaped stand-in that installs with matplotlib: every class is one
Unicode character, named by ``unicodedata.name`` ("DIGIT SEVEN", "GREEK SMALL
LETTER ALPHA", ...), drawn from the TrueType faces matplotlib ships (DejaVu
Sans/Serif/Sans Mono and STIX General, four styles each).

Each image imitates a handwritten character the way NIST digits were written
and then normalised into MNIST (the ten digit classes are instead drawn from
the digits' handwritten forms, `privimage.data.handwriting`; fonts draw only
one form of each digit):

1. a random face draws the character large (anti-aliased, PIL);
2. a random affine map (rotation within +-15 degrees, slant, aspect ratio) and
   an elastic distortion (Simard et al., 2003) bend it like a hand would;
3. a pen of one random width retraces the glyph's skeleton (most images), which
   removes the fonts' thick-thin contrast and serifs; otherwise the face's own
   strokes are thinned or thickened to that width (MNIST strokes are 2-3 px in
   a 20 px digit). Filled shapes (hearts, squares) keep their area;
4. MNIST's own preprocessing: the bounding box is fitted into 20x20 keeping its
   aspect ratio, the result is centred by centre of mass in 28x28 and padded to
   32x32, white on black — so public and sensitive images share one format, as
   ImageNet32 and CIFAR-10 do in the paper.

Generation is deterministic by ``dataset_seed`` (each class draws from its own
seeded stream, so the worker count does not change a pixel), runs once, and is
cached atomically under ``cache_root()/glyphs1k/<hash of the settings>/``.
"""

from __future__ import annotations

import functools
import json
import time
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from tqdm.auto import tqdm

from privimage.cache import atomic_save_npz, atomic_write_json, cache_root
from privimage.config import DataConfig, config_hash
from privimage.data import confusables
from privimage.data.base import ImageDataset
from privimage.data.handwriting import DIGIT_FORMS, draw_handwritten_digit, trace_with_pen
from privimage.data.imagefiles import process_pool
from privimage.errors import DataError

NAME = "glyphs1k"
SPLITS = ("train", "val")
NUM_CLASSES = 1000
# Bump when the rendering changes, so that old caches are not reused.
GENERATOR_VERSION = 4
# Faces that cover Unicode text (the Display, NonUni, size-variant, Computer
# Modern and LastResort faces are symbol or placeholder fonts).
FACE_PREFIXES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral")
# A character must be drawn by a majority of the 16 faces. 9, not 12: once
# Unicode's confusables are one class, the characters that 12 or more faces
# draw are 915 distinct semantics, fewer than the 1,000 the corpus needs.
MIN_FACES = 9
# Two characters whose plain renderings agree this closely (mean cosine similarity over
# the faces drawing both, after MNIST's size normalisation) are homoglyphs: one class.
HOMOGLYPH_SIMILARITY = 0.95
DIGIT_NAMES = tuple(unicodedata.name(str(d)) for d in range(10))

# Rendering canvas: large enough that the 20x20 fit averages over many pixels
# (anti-aliasing, as the NIST scans were averaged down).
CANVAS = 64
FONT_SIZE = 34
# Geometry of the handwriting imitation, in canvas pixels and radians.
MAX_ROTATION = np.deg2rad(15.0)
MAX_SHEAR = 0.3
ASPECT_RANGE = (0.75, 1.3)
# Simard et al. use alpha=34, sigma=4 on 28x28. On a canvas s times larger the same
# distortion needs sigma * s and alpha * s^2 (smoothing over s^2 more pixels shrinks the field).
ELASTIC_ALPHA_RANGE = (0.0, 34.0 * (CANVAS / 28) ** 2)
ELASTIC_SIGMA = 4.0 * CANVAS / 28
# Pen width as a fraction of the glyph's longer side (MNIST: ~2.5 px of 20).
PEN_WIDTH_RANGE = (0.08, 0.2)
# Share of images retraced with a round pen; the rest keep the face's own strokes, thinned or thickened.
PEN_STROKE_PROBABILITY = 0.7
# Height of a handwritten digit on the canvas: about a face's digit height at FONT_SIZE.
HANDWRITTEN_HEIGHT = 26
# Above this half width (fraction of the longer side) a glyph is a filled shape, not strokes.
MAX_STROKE_HALF_WIDTH = 0.22


# ------------------------------------------------------------------ the 1,000 classes


def font_dir() -> Path:
    """matplotlib's folder of shipped TrueType fonts."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=1)
def font_files() -> tuple[Path, ...]:
    """The text faces used for rendering, in a fixed order."""
    files = tuple(
        sorted(
            path for path in font_dir().glob("*.ttf")
            if path.stem.startswith(FACE_PREFIXES) and "Display" not in path.stem
        )
    )
    if not files:
        raise DataError(f"glyphs1k: no DejaVu/STIX .ttf fonts found in matplotlib's folder {font_dir()}")
    return files


def is_eligible(character: str) -> bool:
    """A character that is a semantic of its own: named, visible, not a variant of another.

    Refused: marks, controls, spaces and private use (categories M, C, Z);
    Braille and box drawing/block elements (patterns rather than semantics);
    compatibility and precomposed characters, whose NFKD form differs
    (superscript digits, circled digits, accented letters: each would be a
    near copy of another class after the 20x20 normalisation); the
    replacement character.
    """
    codepoint = ord(character)
    if unicodedata.category(character)[0] in "MCZ":
        return False
    if 0x2800 <= codepoint <= 0x28FF or 0x2500 <= codepoint <= 0x259F or codepoint == 0xFFFD:
        return False
    if unicodedata.normalize("NFKD", character) != character:
        return False
    return bool(unicodedata.name(character, ""))


def _faces_drawing_each_character() -> dict[str, list[int]]:
    """For every eligible character, the faces whose outline for it is non-empty."""
    from matplotlib import ft2font

    faces_of: dict[str, list[int]] = {}
    for face_index, path in enumerate(font_files()):
        font = _font(face_index)
        for codepoint in ft2font.FT2Font(str(path)).get_charmap():
            character = chr(codepoint)
            if not is_eligible(character):
                continue
            # A mapped code point can still have an empty outline.
            left, top, right, bottom = font.getbbox(character)
            if right > left and bottom > top:
                faces_of.setdefault(character, []).append(face_index)
    return faces_of


def _homoglyph_similarity(candidates: list[str], faces_of: dict[str, list[int]]) -> np.ndarray:
    """Mean cosine similarity of plain MNIST-format renderings, over the faces drawing both characters."""
    num_faces = len(font_files())
    vectors = np.zeros((num_faces, len(candidates), 32 * 32), dtype=np.float32)
    for index, character in enumerate(candidates):
        for face_index in faces_of[character]:
            pixels = mnist_format(_draw(character, face_index)).astype(np.float32).ravel()
            vectors[face_index, index] = pixels / max(np.linalg.norm(pixels), 1e-6)
    drawn = (vectors != 0).any(axis=2).astype(np.float32)
    total = sum(vectors[f] @ vectors[f].T for f in range(num_faces))
    shared = drawn.T @ drawn
    return total / np.maximum(shared, 1.0)


def _table_cache_path() -> Path:
    fonts = [(path.name, path.stat().st_size) for path in font_files()]
    key = config_hash({"version": GENERATOR_VERSION, "fonts": fonts, "min_faces": MIN_FACES,
                       "homoglyph": HOMOGLYPH_SIMILARITY, "unicode": unicodedata.unidata_version,
                       "confusables": confusables.data_version()})
    return cache_root() / NAME / f"classes-{key}.json"


@functools.lru_cache(maxsize=1)
def glyph_table() -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """The 1,000 characters (in code point order) and, for each, the faces that draw it.

    The ten digits come first; then characters are ranked by how many faces
    draw them with a non-empty bitmap (at least `MIN_FACES`), ties broken by
    code point, and taken in that order unless they are a homoglyph of a
    character already taken (Greek Alpha and Cyrillic A of Latin A: after
    MNIST's normalisation no classifier could tell such classes apart).
    Homoglyphs are characters that Unicode's confusables list (UTS #39,
    `privimage.data.confusables`) gives the same skeleton (Latin O and
    Ezh of the digits zero and three), or whose plain renderings agree to a
    mean cosine similarity of `HOMOGLYPH_SIMILARITY` (pairs the list
    misses). The result depends on the font files and that list only; it
    is computed once (seconds) and cached.
    """
    cached = _table_cache_path()
    if cached.is_file():
        try:
            table = json.loads(cached.read_text())
            return tuple(table["characters"]), tuple(tuple(faces) for faces in table["faces"])
        except (OSError, ValueError, KeyError):
            pass  # recomputed below and rewritten
    faces_of = _faces_drawing_each_character()
    digits = [str(d) for d in range(10)]
    candidates = digits + sorted(
        (c for c, faces in faces_of.items() if len(faces) >= MIN_FACES and c not in digits),
        key=lambda c: (-len(faces_of[c]), ord(c)),
    )
    similarity = _homoglyph_similarity(candidates, faces_of)
    taken: list[int] = []
    taken_skeletons: set[str] = set()
    for index, character in enumerate(candidates):
        if len(taken) == NUM_CLASSES:
            break
        shape = confusables.skeleton(character)
        if shape in taken_skeletons:
            continue
        if not taken or similarity[index, taken].max() < HOMOGLYPH_SIMILARITY:
            taken.append(index)
            taken_skeletons.add(shape)
    if len(taken) < NUM_CLASSES:
        raise DataError(
            f"glyphs1k: matplotlib's fonts in {font_dir()} draw only {len(taken)} distinct eligible characters, "
            f"{NUM_CLASSES} needed (is the matplotlib installation complete?)"
        )
    chosen = sorted((candidates[i] for i in taken), key=ord)
    faces = [faces_of[c] for c in chosen]
    atomic_write_json(cached, {"characters": chosen, "faces": faces})
    return tuple(chosen), tuple(tuple(f) for f in faces)


def class_names() -> tuple[str, ...]:
    """The 1,000 class names, ``unicodedata.name`` of each character, in label order."""
    characters, _ = glyph_table()
    return tuple(unicodedata.name(c) for c in characters)


# ------------------------------------------------------------------ one image


@functools.lru_cache(maxsize=None)
def _font(face_index: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_files()[face_index]), FONT_SIZE)


def _draw(character: str, face_index: int) -> np.ndarray:
    """The character as float coverage in [0, 1], centred on the canvas."""
    image = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(image).text((CANVAS / 2, CANVAS / 2), character, font=_font(face_index), fill=255, anchor="mm")
    return np.asarray(image, dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=2)
def _gaussian_transfer(size: int) -> np.ndarray:
    """Fourier transform of a unit-sum Gaussian of std ELASTIC_SIGMA on a size x size grid."""
    rows = np.fft.fftfreq(size)[:, None]
    cols = np.fft.rfftfreq(size)[None, :]
    return np.exp(-2 * np.pi**2 * ELASTIC_SIGMA**2 * (rows**2 + cols**2))


def _warp(coverage: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rotation, slant, aspect ratio and elastic distortion, in one resampling."""
    size = coverage.shape[0]
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    shear = rng.uniform(-MAX_SHEAR, MAX_SHEAR)
    aspect = rng.uniform(*ASPECT_RANGE)
    # Output pixel (row, col) samples input pixel matrix @ (row, col) about the centre.
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    slant = np.array([[1.0, 0.0], [shear, 1.0]])
    stretch = np.diag([1.0, 1.0 / aspect])
    matrix = rotation @ slant @ stretch
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    source = np.einsum("ij,jhw->ihw", matrix, np.stack([rows, cols])) + (size - 1) / 2
    # Elastic distortion: a Gaussian-smoothed random displacement field (Simard et al., 2003),
    # smoothed by multiplication in Fourier space (a 75-tap filter is the slowest step otherwise).
    alpha = rng.uniform(*ELASTIC_ALPHA_RANGE)
    noise = rng.uniform(-1, 1, (2, size, size))
    source += alpha * np.fft.irfft2(np.fft.rfft2(noise) * _gaussian_transfer(size), s=(size, size))
    return ndimage.map_coordinates(coverage, source, order=1, mode="constant", cval=0.0)


def _thinning_tables() -> np.ndarray:
    """Zhang-Suen deletion rule for each of the 256 neighbourhoods, for both sub-iterations."""
    tables = np.zeros((2, 256), dtype=bool)
    for code in range(256):
        # Neighbours P2..P9, clockwise from north, as bits 0..7 of the code.
        p2, p3, p4, p5, p6, p7, p8, p9 = ((code >> bit) & 1 for bit in range(8))
        ring = [p2, p3, p4, p5, p6, p7, p8, p9, p2]
        neighbours = sum(ring[:8])
        transitions = sum(1 for a, b in zip(ring[:8], ring[1:]) if a == 0 and b == 1)
        if 2 <= neighbours <= 6 and transitions == 1:
            tables[0, code] = not (p2 and p4 and p6) and not (p4 and p6 and p8)
            tables[1, code] = not (p2 and p4 and p8) and not (p2 and p6 and p8)
    return tables


THINNING_TABLES = _thinning_tables()


def thin(ink: np.ndarray) -> np.ndarray:
    """One-pixel-wide skeleton of a binary image (Zhang & Suen, 1984), by table look-up.

    Written here because scikit-image is not a dependency; a glyph thins in a
    handful of passes, well under a millisecond on the 64x64 canvas.
    """
    skeleton = ink.copy()
    height, width = skeleton.shape
    # (row, col) offsets of P2..P9.
    offsets = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
    while True:
        removed = False
        for table in THINNING_TABLES:
            padded = np.pad(skeleton, 1)
            code = np.zeros(skeleton.shape, dtype=np.uint8)
            for bit, (dr, dc) in enumerate(offsets):
                code |= padded[1 + dr:1 + dr + height, 1 + dc:1 + dc + width].astype(np.uint8) << bit
            delete = skeleton & table[code]
            if delete.any():
                skeleton &= ~delete
                removed = True
        if not removed:
            return skeleton


def _pen_stroke(coverage: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Retrace the glyph's skeleton with a round pen of one random width, as a hand writes.

    Removes the fonts' stroke contrast (thick and thin parts) and shrinks serifs
    to short spurs: handwriting has neither.
    """
    ink = coverage > 0.5
    if not ink.any():
        return coverage
    rows, cols = np.nonzero(ink)
    longer_side = max(np.ptp(rows), np.ptp(cols)) + 1
    # Filled shapes (hearts, squares, bullets) are areas, not pen strokes: keep them.
    if ndimage.distance_transform_edt(ink).max() > MAX_STROKE_HALF_WIDTH * longer_side:
        return _set_pen_width(coverage, rng)
    skeleton = thin(ink)
    return trace_with_pen(skeleton, 0.5 * rng.uniform(*PEN_WIDTH_RANGE) * longer_side)


def _set_pen_width(coverage: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Thin or thicken the strokes to a random pen width (fraction of the longer side)."""
    ink = coverage > 0.5
    if not ink.any():
        return coverage
    rows, cols = np.nonzero(ink)
    longer_side = max(np.ptp(rows), np.ptp(cols)) + 1
    # Half the stroke width now: the distance transform's typical ridge height.
    inside = ndimage.distance_transform_edt(ink)
    half_width = float(np.percentile(inside[ink], 90))
    target_half_width = 0.5 * rng.uniform(*PEN_WIDTH_RANGE) * longer_side
    if target_half_width >= half_width:
        # Thicken: everything within the extra radius of the ink (soft edge).
        outside = ndimage.distance_transform_edt(~ink)
        grown = np.clip(target_half_width - half_width + 0.5 - outside, 0.0, 1.0)
        return np.maximum(coverage, grown)
    # Thin, but never by more than half a stroke, so hairlines survive.
    erosion = min(half_width - target_half_width, 0.5 * half_width)
    return np.clip(inside - erosion + 0.5, 0.0, 1.0) * (inside > 0)


def mnist_format(coverage: np.ndarray) -> np.ndarray:
    """MNIST's normalisation: fit into 20x20 keeping aspect, centre of mass in 28x28, pad to 32x32.

    Args:
        coverage: a white-on-black image, float in [0, 1], any size.

    Returns:
        32x32 uint8.
    """
    ink = coverage > 0.05
    out = np.zeros((32, 32), dtype=np.uint8)
    if not ink.any():
        return out
    rows, cols = np.nonzero(ink)
    crop = coverage[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    # Fit the longer side to 20 px; the anti-aliased resize produces MNIST's grey levels.
    scale = 20.0 / max(crop.shape)
    height, width = (max(1, round(s * scale)) for s in crop.shape)
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize((width, height), Image.Resampling.LANCZOS)
    small = np.asarray(small)
    # Centre by centre of mass in 28x28 (LeCun et al.), then pad by 2 to 32x32.
    centre_row, centre_col = ndimage.center_of_mass(small.astype(np.float64))
    top = int(round(14 - centre_row))
    left = int(round(14 - centre_col))
    top = min(max(top, 0), 28 - height)
    left = min(max(left, 0), 28 - width)
    out[2 + top: 2 + top + height, 2 + left: 2 + left + width] = small
    return out


def render_glyph(character: str, face_index: int, rng: np.random.Generator) -> np.ndarray:
    """One handwriting-like 32x32 uint8 image of ``character`` in the given face.

    The ten ASCII digits are drawn from their handwritten forms instead
    (`privimage.data.handwriting`; ``face_index`` is then unused): a font draws
    one form of each digit, and handwriting uses several.
    """
    if character in DIGIT_FORMS:
        coverage = draw_handwritten_digit(character, CANVAS, HANDWRITTEN_HEIGHT, PEN_WIDTH_RANGE, rng)
        return mnist_format(_warp(coverage, rng))
    coverage = _warp(_draw(character, face_index), rng)
    if rng.random() < PEN_STROKE_PROBABILITY:
        coverage = _pen_stroke(coverage, rng)
    else:
        coverage = _set_pen_width(coverage, rng)
    return mnist_format(coverage)


# ------------------------------------------------------------------ the dataset


def generation_settings(config: DataConfig) -> dict:
    """Everything the rendered pixels depend on (the cache key)."""
    characters, faces = glyph_table()
    return {
        "generator_version": GENERATOR_VERSION,
        "dataset_seed": config.dataset_seed,
        "train_per_class": config.glyphs_train_per_class,
        "val_per_class": config.glyphs_val_per_class,
        "characters": "".join(characters),
        "faces": [font_files()[i].name for i in range(len(font_files()))],
    }


def cache_dir(config: DataConfig) -> Path:
    """Where this config's Glyphs-1k lives: ``cache_root()/glyphs1k/<settings hash>/``."""
    return cache_root() / NAME / config_hash(generation_settings(config))


def _render_class(task: tuple[int, int, int, int]) -> np.ndarray:
    """All images of one class in one split; a seeded stream per (seed, split, class)."""
    seed, split_index, label, count = task
    characters, faces = glyph_table()
    rng = np.random.default_rng([seed, split_index, label])
    images = np.empty((count, 1, 32, 32), dtype=np.uint8)
    for i in range(count):
        images[i, 0] = render_glyph(characters[label], int(rng.choice(faces[label])), rng)
    return images


def generate(config: DataConfig, *, workers: int = 2, progress: bool = True) -> Path:
    """Render both splits of Glyphs-1k into the cache (once) and return the folder.

    Args:
        config: sizes (``glyphs_train_per_class``, ``glyphs_val_per_class``) and ``dataset_seed``.
        workers: processes rendering classes in parallel.
        progress: show a progress bar.

    Returns:
        The cache folder holding ``train.npz``, ``val.npz`` and ``settings.json``.
    """
    per_class = {"train": config.glyphs_train_per_class, "val": config.glyphs_val_per_class}
    if min(per_class.values()) < 1:
        raise DataError(f"glyphs1k needs at least one image per class in each split, got {per_class}")
    folder = cache_dir(config)
    if all((folder / f"{split}.npz").is_file() for split in SPLITS):
        return folder

    started = time.perf_counter()
    names = class_names()
    tasks = [
        (config.dataset_seed, split_index, label, per_class[split])
        for split_index, split in enumerate(SPLITS)
        for label in range(NUM_CLASSES)
    ]
    # Processes, not threads: rendering is Python- and numpy-bound per small image.
    with process_pool(workers) if workers > 1 else _Serial() as pool:
        chunks = list(tqdm(pool.imap(_render_class, tasks, chunksize=8), total=len(tasks),
                           desc="rendering glyphs1k", unit="class", disable=not progress))
    for split_index, split in enumerate(SPLITS):
        images = np.concatenate(chunks[split_index * NUM_CLASSES:(split_index + 1) * NUM_CLASSES])
        labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class[split])
        atomic_save_npz(folder / f"{split}.npz", images=images, labels=labels, class_names=np.array(names))
    atomic_write_json(folder / "settings.json", {**generation_settings(config),
                                                 "seconds": round(time.perf_counter() - started, 1)})
    if progress:
        print(f"glyphs1k rendered in {time.perf_counter() - started:.0f} s -> {folder}")
    return folder


class _Serial:
    """A stand-in for a one-worker pool (no process start-up)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap(function, items, chunksize=1):
        return map(function, items)


def load_glyphs1k(split: str, config: DataConfig | None = None, *, progress: bool = True) -> ImageDataset:
    """Load a split of Glyphs-1k, rendering and caching it on first use.

    Args:
        split: ``train`` or ``val``.
        config: sizes and seed (default: `DataConfig()`, the quick size).
        progress: show a progress bar while rendering.

    Returns:
        1x32x32 uint8 images, 1,000 classes.
    """
    if split not in SPLITS:
        raise DataError(f"glyphs1k has no split '{split}' (splits: {', '.join(SPLITS)})")
    config = config or DataConfig()
    path = generate(config, progress=progress) / f"{split}.npz"
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
            names = tuple(str(n) for n in archive["class_names"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"glyphs1k: cached file {path} is unreadable ({exc}); delete {path.parent} to re-render it") from None
    return ImageDataset(name=NAME, split=split, images=images, labels=labels, class_names=names)
