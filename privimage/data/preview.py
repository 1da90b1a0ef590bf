"""Looking at what a dataset holds: a labelled grid (``privimage data show``), a few public classes (the tour)."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np

from privimage.cache import atomic_write_bytes
from privimage.data.base import ImageDataset
from privimage.errors import DataError


def pick_images(*, dataset: ImageDataset, n: int, seed: int = 0, match: str | None = None) -> np.ndarray:
    """Indices of ``n`` random images (of classes whose name contains ``match``), in label order.

    Args:
        dataset: the images.
        n: how many to show.
        seed: which ones (a display seed; it touches nothing else).
        match: case-insensitive substring of the class names to keep, e.g. "digit".

    Returns:
        Sorted by label, then index.
    """
    if n < 1:
        raise DataError(f"--n must be at least 1, got {n}")
    candidates = np.arange(len(dataset))
    if match:
        classes = [label for label, name in enumerate(dataset.class_names) if match.lower() in name.lower()]
        if not classes:
            raise DataError(f"{dataset.name}: no class name contains '{match}'")
        candidates = np.flatnonzero(np.isin(dataset.labels, classes))
    if not len(candidates):
        raise DataError(f"{dataset.name}/{dataset.split} has no images to show")
    chosen = np.random.default_rng(seed).choice(candidates, size=min(n, len(candidates)), replace=False)
    return chosen[np.lexsort((chosen, dataset.labels[chosen]))]


def save_labelled_grid(*, dataset: ImageDataset, path: Path, n: int = 64, seed: int = 0,
                       match: str | None = None) -> int:
    """Draw ``n`` images with their class names under each and write a PNG atomically.

    Args:
        dataset: the images.
        path: the PNG to write.
        n: how many images.
        seed: which images (display only).
        match: keep classes whose name contains this text.

    Returns:
        How many images the grid shows (fewer than ``n`` when ``match`` leaves fewer).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    indices = pick_images(dataset=dataset, n=n, seed=seed, match=match)
    columns = math.ceil(math.sqrt(len(indices)))
    rows = math.ceil(len(indices) / columns)
    figure = Figure(figsize=(1.2 * columns, 1.45 * rows + 0.4), dpi=110)
    FigureCanvasAgg(figure)
    figure.suptitle(f"{dataset.name} / {dataset.split}: {len(indices)} of {len(dataset)} images, "
                    f"{dataset.num_classes} classes", fontsize=9)
    for cell, index in enumerate(indices):
        axis = figure.add_subplot(rows, columns, cell + 1)
        image = dataset.images[index]
        if image.shape[0] == 1:
            axis.imshow(image[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            axis.imshow(image.transpose(1, 2, 0), interpolation="nearest")
        label = dataset.class_names[dataset.labels[index]]
        # Long Unicode names ("LATIN SMALL LETTER ...") wrap onto two short lines.
        caption = "\n".join(textwrap.wrap(label, 18)[:2])
        axis.set_title(caption, fontsize=5.5, pad=2)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout(rect=(0, 0, 1, 0.97), pad=0.3, h_pad=0.4, w_pad=0.2)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return len(indices)
