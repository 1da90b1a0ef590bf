"""Where generated data and trained stages live, and how files are written safely.

Every expensive stage (rendering Glyphs-1k, training the semantic query function,
pre-training, fine-tuning, sampling, reference FID statistics) is stored under
``cache_root()/<stage>/<hash>/``, where the hash covers exactly the config the
stage depends on (STYLE.md rule 4). Plotting never triggers training because
notebooks read finished stages from here.

All writes are atomic (temporary file in the same folder, fsync, rename), so a
crash never leaves a half-written file that looks complete. A write that the
operating system refuses (full disk, quota, read-only folder) raises
`WriteFailed`, a one-line user-facing error, and leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from privimage.errors import PrivImageError

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


def find_stage(stage: str, *, record: str, content: Any) -> Path | None:
    """The folder of a cached ``stage`` whose JSON file ``record`` holds ``content``, found without its key.

    Args:
        stage: the stage's folder name under `cache_root` (e.g. ``"selection"``).
        record: the JSON file every finished folder of the stage holds (e.g. ``"selection.json"``).
        content: what that file must hold, compared as JSON (tuples and lists alike).

    Returns:
        The first matching folder in name order, or None.
    """
    wanted = json.loads(json.dumps(content))
    for path in sorted((cache_root() / stage).glob(f"*/{record}")):
        if json.loads(path.read_text()) == wanted:
            return path.parent
    return None


class WriteFailed(PrivImageError, OSError):
    """The operating system refused a write (full disk, quota, permissions); the file it would replace is intact.

    A `PrivImageError`, so the CLI prints one line instead of a traceback; an
    ``OSError`` too (with the original ``errno``), so callers that handle I/O
    errors still catch it.
    """

    def __str__(self) -> str:
        # OSError prints "[Errno 28] None: 'path'" once errno is set; keep the one-line message.
        return str(self.args[0]) if self.args else super().__str__()


def write_failed(path: Path, error: OSError) -> WriteFailed:
    """The one-line `WriteFailed` for an ``OSError`` raised while writing ``path``."""
    failure = WriteFailed(f"cannot write {path}: {error.strerror or error} (nothing there was replaced)")
    failure.errno, failure.filename = error.errno, str(path)
    return failure


def check_output_folder(path: Path) -> Path:
    """Refuse, before any work, an output folder that could never be created or written.

    Args:
        path: the folder a command will write into (it may not exist yet).

    Returns:
        ``path`` as a `Path`.

    Raises:
        PrivImageError: ``path`` or a folder above it is a file, or the nearest
            existing folder above it is not writable.
    """
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                what = "it is" if folder == path else f"{folder} is"
                raise PrivImageError(f"cannot use {path} as an output folder: {what} a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PrivImageError(f"cannot use {path} as an output folder: {folder} is not writable")
            return path
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename.

    Raises:
        WriteFailed: the folder, the temporary file or the rename could not be
            written; ``path`` still holds its previous content (or does not exist).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_failed(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # No temporary file outlives a failed write (a full disk needs its space back).
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailed):
            raise write_failed(path, exc) from exc
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


def file_sha256(path: Path) -> str:
    """First 16 hex digits of a file's SHA-256 (read in 4 MiB chunks)."""

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
