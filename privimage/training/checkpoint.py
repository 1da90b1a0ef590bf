"""Crash-safe checkpoints of a training stage: atomic writes, safe loads, the latest two kept.

A checkpoint is one ``ckpt-<step>.pt`` file in the stage's run folder holding
only tensors, numbers, strings, lists and dicts: model, EMA and optimizer state,
the step, and for a DP stage the privacy ledger (as its JSON dict) and the
journal line its model ends with (a non-private stage keeps its RNG state; a DP
stage seeds its non-private randomness per step instead, see
`privimage.training.dpsgd`).
It is written with `privimage.cache.atomic_torch_save` (temporary file, fsync,
rename), so a crash leaves either the old file set or the new one, never a
half-written file under a final name. It is read back with
``torch.load(..., weights_only=True)``: a file that would need to run code to
unpickle is refused, never executed.

The two newest checkpoints are kept. If the newest cannot be read (truncated
by a full disk or a copy, say), loading warns and falls back to the one before;
a DP stage keeps the released updates after that older checkpoint, so it can
replay them from either.
A checkpoint that belongs to another run (different stage, config hash or
sensitive dataset) is refused with a `PrivacyError`: resuming from it would
mix two runs' privacy accounts.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from privimage.cache import atomic_torch_save
from privimage.errors import PrivacyError

CHECKPOINT_FORMAT = "privimage-checkpoint/1"
KEEP_CHECKPOINTS = 2
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointUnreadable(Exception):
    """A checkpoint file is truncated or corrupt (an older one may still be good)."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where the checkpoint taken after ``step`` logical steps lives."""
    return Path(run_dir) / f"ckpt-{int(step)}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files of a run folder, newest (highest step) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in run_dir.iterdir() if (match := _NAME.match(path.name))]
    return [path for _step, path in sorted(found, reverse=True)]


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of a run folder's checkpoint files, newest first."""
    return [int(_NAME.match(path.name).group(1)) for path in list_checkpoints(run_dir)]


def save_checkpoint(*, run_dir: Path, step: int, payload: Mapping[str, Any], keep: int = KEEP_CHECKPOINTS) -> Path:
    """Write ``payload`` as ``ckpt-<step>.pt`` atomically and delete all but the newest ``keep``.

    Args:
        run_dir: the stage's run folder (created if missing).
        step: logical steps completed when the payload was taken.
        payload: tensors, numbers, strings, lists and dicts only (what
            ``weights_only`` loading accepts); ``format`` and ``step`` are added.
        keep: how many checkpoints to keep (at least 2, so a damaged newest one
            always has a predecessor).

    Returns:
        The path written.
    """
    if keep < 2:
        raise PrivacyError(f"keep must be >= 2 so a damaged checkpoint has a fallback, got {keep}")
    path = checkpoint_path(run_dir, step)
    atomic_torch_save(path, {**payload, "format": CHECKPOINT_FORMAT, "step": int(step)})
    # Prune only after the new file is durable, so two good checkpoints always exist.
    for old in list_checkpoints(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read one checkpoint with ``weights_only=True``.

    Args:
        path: a ``ckpt-<step>.pt`` file.

    Returns:
        The payload dict.

    Raises:
        PrivacyError: the file holds pickled code (classes, functions) rather than
            plain data: refused without running it.
        CheckpointUnreadable: the file is truncated, empty or not a checkpoint.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler stops at the first global it does not allow: nothing ran.
        if "Weights only load failed" in str(exc):
            raise PrivacyError(
                f"refusing checkpoint {path}: it contains pickled code, not only tensors and plain data"
            ) from None
        raise CheckpointUnreadable(f"{path}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointUnreadable(f"{path}: {exc.__class__.__name__} {first_line}".rstrip()) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointUnreadable(f"{path}: not a {CHECKPOINT_FORMAT} file")
    return payload


def load_latest_checkpoint(*, run_dir: Path, expect: Mapping[str, Any]) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run, checked against the run it resumes.

    Args:
        run_dir: the stage's run folder.
        expect: fields the checkpoint must carry with exactly these values (the
            stage name, config hash, sensitive dataset hash, ...).

    Returns:
        The payload, or None when the folder holds no readable checkpoint.

    Raises:
        PrivacyError: a checkpoint holds code, or it belongs to another run.
    """
    # Temporary files of a write that a crash interrupted are never checkpoints.
    if Path(run_dir).is_dir():
        for stale in Path(run_dir).glob(".ckpt-*.pt.*.tmp"):
            stale.unlink(missing_ok=True)
    for path in list_checkpoints(run_dir):
        try:
            payload = load_checkpoint(path)
        except CheckpointUnreadable as exc:
            warnings.warn(f"skipping unreadable checkpoint ({exc}); trying the previous one", stacklevel=2)
            continue
        for key, wanted in expect.items():
            if payload.get(key) != wanted:
                raise PrivacyError(
                    f"checkpoint {path} belongs to another run: its {key} is {payload.get(key)!r}, "
                    f"this run's is {wanted!r} (use a fresh run folder)"
                )
        return payload
    return None
