"""Where generated data and trained stages live, and how files are written safely.

Every expensive stage (rendering Glyphs-1k, training the semantic query function,
pre-training, fine-tuning, sampling, reference FID statistics) is stored under
``cache_root()/<stage>/<hash>/``, where the hash covers exactly the config the
stage depends on (STYLE.md rule 4). Plotting never triggers training because
notebooks read finished stages from here.

All writes are atomic (temporary file in the same folder, fsync, rename), so a
crash never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """``$PRIVIMAGE_CACHE`` if set; else ``cache/`` in a source checkout; else ``~/.cache/privimage``."""
    env = os.environ.get("PRIVIMAGE_CACHE")
    if env:
        return Path(env)
    if (_REPO_ROOT / "pyproject.toml").is_file():
        return _REPO_ROOT / "cache"
    return Path.home() / ".cache" / "privimage"


def stage_dir(stage: str, key: str) -> Path:
    """The folder of one cached stage result (not created)."""
    return cache_root() / stage / key


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())
