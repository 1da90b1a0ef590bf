"""An append-only, fsynced journal of the DP-SGD steps a run has released.

Why a journal and not only the ledger inside each checkpoint: a run killed
between two checkpoints has already applied noisy updates computed from the
sensitive data, and on resume it re-runs those steps from the last checkpoint
with fresh batches. Restoring the checkpoint's ledger would forget the lost
steps and under-count the budget. So every logical DP-SGD step is written here
(and fsynced) *before* its noisy update is applied, and on resume the run is
charged for every step the journal lists: the lost steps are paid for twice
(once lost, once re-done) rather than forgotten. The epsilon of a resumed run
is therefore never below that of an uninterrupted one, and equal when the kill
came right after a checkpoint.

A partial last line (a crash during the write) still counts as a step: the
journal errs towards charging too much, never too little. A file without one
complete line is a header write that was cut short, before any step could be
released, and is started again. While a run holds
its journal open it holds an exclusive lock on it, so two processes cannot
fine-tune in the same folder at once and spend the budget side by side.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from privimage.cache import write_failed
from privimage.errors import PrivacyError

JOURNAL_NAME = "dpsgd_journal.jsonl"


class DPStepJournal:
    """The DP-SGD steps released in one run folder.

    Args:
        path: the journal file (created with ``header`` as its first line if missing).
        header: what identifies the run and its mechanism (stage, config and
            dataset hashes, noise multiplier, sample rate); an existing journal
            with another header is refused.
    """

    def __init__(self, path: Path, *, header: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(dict(header)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_exclusively(self.path.with_name(self.path.name + ".lock"))
        try:
            if self.path.exists() and b"\n" in self.path.read_bytes():
                self._steps = self._read_existing()
            else:
                # No complete line: the header write was cut short (full disk, kill). Steps are
                # appended only once the header is durable, so none was released: start afresh.
                self.path.unlink(missing_ok=True)
                self._append_line({"header": self.header})
                self._steps = 0
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder for another process (the journal itself stays)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "DPStepJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_existing(self) -> int:
        stored, steps = read_journal(self.path)
        for key, wanted in self.header.items():
            if not _same(stored.get(key), wanted):
                raise PrivacyError(
                    f"{self.path} belongs to another run: its {key} is {stored.get(key)!r}, "
                    f"this run's is {wanted!r} (use a fresh run folder)"
                )
        return steps

    def _append_line(self, record: Mapping[str, Any]) -> None:
        try:
            with open(self.path, "ab") as handle:
                # A torn previous write must not glue onto this record.
                if handle.tell() > 0 and not self._ends_with_newline():
                    handle.write(b"\n")
                handle.write((json.dumps(record, sort_keys=True) + "\n").encode())
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            # A full disk stops the run before the step is released; a torn line left behind still counts.
            raise write_failed(self.path, exc) from exc

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    @property
    def steps(self) -> int:
        """Logical DP-SGD steps released so far, re-done ones included."""
        return self._steps

    def record_step(self, *, step: int) -> None:
        """Durably note that the noisy update of logical step ``step`` is about to be applied."""
        self._append_line({"step": int(step)})
        self._steps += 1


def read_journal(path: Path) -> tuple[dict[str, Any], int]:
    """A journal's header and its count of released steps, read without taking the run's lock (for audits).

    Args:
        path: a ``dpsgd_journal.jsonl`` file.

    Returns:
        ``(header, steps)``; a torn last line counts as a step.
    """
    lines = Path(path).read_text().splitlines()
    try:
        header = json.loads(lines[0])["header"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError):
        header = None
    if not isinstance(header, dict):
        raise PrivacyError(f"{path}: not a DP-SGD journal (no header line); refusing to guess the budget spent")
    # Every non-empty line after the header is one released step, a torn last line included.
    return header, sum(1 for line in lines[1:] if line.strip())


def _lock_exclusively(path: Path):
    """An open handle holding an exclusive, non-blocking lock on ``path`` (released when closed or on exit)."""
    handle = open(path, "a+b")
    if sys.platform == "win32":  # no fcntl: rely on the user not to run one folder twice
        return handle
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise PrivacyError(
            f"another process is fine-tuning in {path.parent}; two runs in one folder would spend the budget twice"
        ) from None
    return handle


def _same(stored: Any, wanted: Any) -> bool:
    # Floats survive JSON exactly, but compare with a tolerance in case of re-derivation.
    if isinstance(stored, float) and isinstance(wanted, float):
        return math.isclose(stored, wanted, rel_tol=1e-9, abs_tol=0.0)
    return stored == wanted
