"""Sample grids: one row per class, one column per sample (paper Fig. 5 and Fig. 10).

The same grid serves a synthetic set (Fig. 5) and the public images selected for
pre-training (Fig. 10; they carry the sensitive class that selected them). The
pixel grid (`class_grid`) is separate from the figure (`save_class_grid`) so
that tests and notebooks can inspect exactly what is drawn.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from privimage.cache import atomic_write_bytes
from privimage.data.base import ImageDataset
from privimage.errors import DataError


def pick_per_class(*, dataset: ImageDataset, samples_per_class: int, seed: int) -> list[np.ndarray]:
    """Indices of up to ``samples_per_class`` images of each class, drawn without replacement."""
    if samples_per_class < 1:
        raise DataError(f"samples_per_class must be at least 1, got {samples_per_class}")
    rng = np.random.default_rng(seed)
    picks = []
    for label in range(dataset.num_classes):
        members = np.flatnonzero(dataset.labels == label)
        picks.append(np.sort(rng.choice(members, size=min(samples_per_class, len(members)), replace=False)))
    return picks


def class_grid(*, dataset: ImageDataset, samples_per_class: int = 8, seed: int = 0, padding: int = 2) -> np.ndarray:
    """Tile images into a uint8 H x W x C array: rows are classes, columns samples.

    A class with fewer images than ``samples_per_class`` leaves its remaining
    cells blank (white), so a missing class is visible rather than hidden.

    Args:
        dataset: the images to show.
        samples_per_class: columns of the grid.
        seed: which images are drawn (a display seed).
        padding: white pixels between cells.

    Returns:
        The grid as uint8 (C = 1 or 3).
    """
    channels, height, width = dataset.image_shape
    cell_h, cell_w = height + padding, width + padding
    grid = np.full((dataset.num_classes * cell_h + padding, samples_per_class * cell_w + padding, channels), 255, np.uint8)
    for row, indices in enumerate(pick_per_class(dataset=dataset, samples_per_class=samples_per_class, seed=seed)):
        for column, index in enumerate(indices):
            top, left = padding + row * cell_h, padding + column * cell_w
            grid[top:top + height, left:left + width] = dataset.images[index].transpose(1, 2, 0)
    return grid


def save_class_grid(*, dataset: ImageDataset, path: Path, samples_per_class: int = 8, seed: int = 0,
                    title: str | None = None) -> Path:
    """Draw `class_grid` with class names beside the rows and write a PNG atomically.

    Args:
        dataset: the images (synthetic set, or selected public images).
        path: the PNG to write.
        samples_per_class: columns of the grid.
        seed: which images are drawn.
        title: optional figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = class_grid(dataset=dataset, samples_per_class=samples_per_class, seed=seed)
    channels, height, _ = dataset.image_shape
    figure_height = max(2.0, 0.45 * dataset.num_classes)
    figure, axes = plt.subplots(figsize=(figure_height * grid.shape[1] / grid.shape[0] + 1.5, figure_height))
    axes.imshow(grid[..., 0] if channels == 1 else grid, cmap="gray" if channels == 1 else None, vmin=0, vmax=255,
                interpolation="nearest")
    # Class names at the centre of each row.
    cell_h = height + 2
    axes.set_yticks([2 + row * cell_h + height / 2 for row in range(dataset.num_classes)])
    axes.set_yticklabels(dataset.class_names, fontsize="small")
    axes.set_xticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)
    if title:
        axes.set_title(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
