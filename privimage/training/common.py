"""Pieces every training stage shares: batches, resources, progress (seeds and RNG state: `privimage.seeding`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from privimage.cache import atomic_write_json
from privimage.data.base import ImageDataset


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (where batches are sent)."""
    return next(model.parameters()).device


def batch_tensors(
    dataset: ImageDataset, indices: np.ndarray | list[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] (float32) and int64 labels of the given rows, on ``device``.

    Converting per batch keeps a large public set (ImageNet32: 1.28M images) in uint8.
    """
    subset = dataset.subset(np.asarray(indices, dtype=np.int64))
    images = torch.from_numpy(subset.as_float()).to(device)
    labels = torch.from_numpy(subset.labels.astype(np.int64)).to(device)
    return images, labels


def write_resources(run_dir: Path, stage: str, record: Mapping[str, Any]) -> Path:
    """Write a stage's time and memory record (paper Table 4) to ``<run_dir>/resources-<stage>.json``.

    Named per stage so that it sits beside, and never overwrites, the run's own
    ``resources.json`` when a stage shares the run folder.
    """
    path = Path(run_dir) / f"resources-{stage}.json"
    atomic_write_json(path, {**record, "stage_name": stage})
    return path


def progress_bar(*, total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar over logical steps (starts at ``initial`` when resuming)."""

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
