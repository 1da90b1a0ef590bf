"""Pieces every training stage shares: batches, RNG state, resources, progress.

The randomness handled here is the *non-private* kind (model initialisation,
diffusion timesteps and noise, label dropout, pre-training batch order). It is
seeded from the experiment seed and saved in checkpoints so a resumed
pre-training run continues the same stream. The randomness of the DP mechanism
(Poisson sampling, gradient noise) never passes through here: it comes from
fresh OS-entropy generators (`privimage.privacy.torch_noise_generator`) and is
never saved, because a checkpoint that held it would tell a reader which
examples the remaining batches contain and which noise they received.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

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


def stage_seed(seed: int, stage: str) -> int:
    """A per-stage seed derived from the experiment seed (different stages, different streams)."""
    digest = hashlib.sha256(f"{int(seed)}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_training_randomness(seed: int) -> None:
    """Seed the non-private randomness of training (torch, numpy and Python global streams)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """The global non-private RNG state, as tensors and plain data (``weights_only``-loadable)."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((
        "MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
        numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
