"""The experiment's seeded, non-private randomness: per-stage seeds and the RNG state checkpoints carry.

This is the *non-private* kind (model initialisation, diffusion timesteps and
noise, label dropout, pre-training batch order). It is seeded from the
experiment seed and saved in checkpoints so a resumed pre-training run
continues the same stream. The randomness of the DP mechanism (Poisson
sampling, gradient noise) never passes through here: it comes from fresh
OS-entropy generators (`privimage.privacy.torch_noise_generator`) and is never
saved, because a checkpoint that held it would tell a reader which examples the
remaining batches contain and which noise they received.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Mapping

import numpy as np
import torch


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
