"""An append-only, fsynced journal of the DP-SGD steps a run has released, with the released updates.

What a DP-SGD step releases is its noisy update (paper Algorithm 1); what the
run does with it afterwards (optimizer step, EMA, a GAN's generator step) is
post-processing. So each update is written to
``dpsgd_updates/step-<t>-release-<i>.pt`` (atomic, fsynced) and *then* a journal
line naming the file and its SHA-256 is appended (fsynced), all *before* the
update is applied. The file reveals nothing beyond what the accountant charges.

Why a journal and not only the ledger in each checkpoint: a run killed between
two checkpoints has already released updates. On resume every journalled step
is charged, and the steps after the resumed checkpoint are *replayed* from their
files (`replay_plan`) without reading sensitive data or drawing new noise, so a
resumed run has the uninterrupted run's steps and epsilon at every crash point.
`DPStepJournal` says how each interrupted write is settled, including the two
conservative cases that charge a step twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from privimage.cache import atomic_write_bytes, write_failed
from privimage.errors import PrivacyError

JOURNAL_NAME = "dpsgd_journal.jsonl"
UPDATES_DIR = "dpsgd_updates"
UPDATE_FORMAT = "privimage-dp-update/1"
_UPDATE_NAME = re.compile(r"^step-(\d+)-release-(\d+)\.pt$")
# What the atomic writer leaves behind when killed mid-write: ".<final name>.<random>.tmp".
_PARTIAL_UPDATE = re.compile(r"^\.step-(\d+)-release-(\d+)\.pt\..+\.tmp$")
# A torn line keeps its step when the cut came after it ("step" is the first key of every line).
_TORN_STEP = re.compile(r'^\{"step": (\d+),')


@dataclass(frozen=True)
class JournalEntry:
    """One released DP-SGD step as the journal records it.

    ``release`` is the line's position (1 for the first step line): every line
    is one charged step, re-done ones included. ``step`` is the logical step it
    was released for (None when a torn line does not show it). ``update`` and
    ``sha256`` name the file holding the released update; ``unapplied`` marks a
    step charged for a partial update file that was never applied; ``torn`` a
    line cut short whose update could not be found.
    """

    release: int
    step: int | None
    update: str | None = None
    sha256: str | None = None
    unapplied: bool = False
    torn: bool = False

    @property
    def replayable(self) -> bool:
        """Whether the line names an update that can be verified and applied again."""
        return self.update is not None and self.sha256 is not None and not self.unapplied

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def update_file_name(*, step: int, release: int) -> str:
    """The file name of the update released as journal line ``release`` for logical step ``step``."""
    return f"step-{int(step):06d}-release-{int(release):06d}.pt"


class DPStepJournal:
    """The DP-SGD steps released in one run folder, and the files of their noisy updates.

    Opening a journal settles what an interrupted write left behind, so that
    every crash point resumes exactly:

    - killed between steps or inside a checkpoint write: the steps after the
      checkpoint are replayed;
    - an update written but its journal line not (killed, or a full disk): the
      file is adopted (a line is appended, so it is charged) and replayed;
    - a journal line cut short (full disk mid-line): it still counts as a step,
      and is completed from its update file (an atomic rewrite);
    - an update write that a full disk stopped: the temporary file is removed,
      nothing was released or charged, and the step is taken again;
    - a file without one complete line is a header write cut short, before any
      release, and is started again.

    Two cases stay conservative rather than exact, and only they add steps to
    the account (``lost_steps_charged``): a temporary update file left by a kill
    mid-write held part of a noisy gradient, so it is charged (a line marked
    ``unapplied``) and the step is taken again with fresh noise; and an update
    file that is missing (deleted, or pruned with a checkpoint that later became
    unreadable) cannot be replayed, so its step stays charged and is taken
    again. An update whose file disagrees with its journal hash is refused
    outright: replaying it would apply something never released. While open,
    the journal holds an exclusive lock, so two processes cannot fine-tune in
    the same folder and spend the budget side by side.

    Args:
        path: the journal file (created with ``header`` as its first line if missing);
            the updates live in ``dpsgd_updates/`` beside it.
        header: what identifies the run and its mechanism (stage, config and
            dataset hashes, noise multiplier, sample rate); an existing journal
            with another header is refused.
    """

    def __init__(self, path: Path, *, header: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.updates_dir = self.path.parent / UPDATES_DIR
        self.header = json.loads(json.dumps(dict(header)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_exclusively(self.path.with_name(self.path.name + ".lock"))
        try:
            # A rewrite of the journal (completing a torn line) that was interrupted left only a temporary file.
            for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
            if self.path.exists() and b"\n" in self.path.read_bytes():
                self._entries = self._read_existing()
                self._settle_interrupted_release()
            else:
                # No complete line: the header write was cut short (full disk, kill). Steps are
                # appended only once the header is durable, so none was released: start afresh.
                if update_files(self.updates_dir) or partial_update_files(self.updates_dir):
                    raise PrivacyError(
                        f"{self.updates_dir} holds released DP-SGD updates but {self.path.name} is missing or "
                        "empty: the budget already spent cannot be established (use a fresh run folder)"
                    )
                self.path.unlink(missing_ok=True)
                self._append_line({"header": self.header})
                self._entries = []
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

    def _read_existing(self) -> list[JournalEntry]:
        stored, entries = read_journal_entries(self.path)
        for key, wanted in self.header.items():
            if not _same(stored.get(key), wanted):
                raise PrivacyError(
                    f"{self.path} belongs to another run: its {key} is {stored.get(key)!r}, "
                    f"this run's is {wanted!r} (use a fresh run folder)"
                )
        return entries

    def _settle_interrupted_release(self) -> None:
        """Account for an update whose release the last process did not finish recording."""
        files = update_files(self.updates_dir)
        # A line cut short: its update file was durable before the line was begun; complete the line.
        if self._entries and self._entries[-1].torn and self._entries[-1].release in files:
            self._complete_torn_line(files[self._entries[-1].release])
        # An update written but not journalled was released all the same: charge it now.
        beyond = sorted(release for release in files if release > self.steps)
        if beyond and beyond != list(range(self.steps + 1, self.steps + 1 + len(beyond))):
            raise PrivacyError(
                f"{self.updates_dir} holds updates of releases {beyond}, but the journal lists {self.steps}: "
                "the folder was altered, so the budget spent cannot be established"
            )
        for release in beyond:
            step, path = files[release]
            self._append_entry(step=step, release=release, name=path.name, sha256=_sha256(path.read_bytes()))
        # A partial update file: part of a noisy gradient reached the disk, so the step is charged (not replayable).
        for partial in partial_update_files(self.updates_dir):
            match = _PARTIAL_UPDATE.match(partial.name)
            if int(match.group(2)) == self.steps + 1:
                self._append_line({"step": int(match.group(1)), "release": self.steps + 1,
                                   "unapplied": "partial update file"})
                self._entries.append(JournalEntry(release=self.steps + 1, step=int(match.group(1)), unapplied=True))
            partial.unlink(missing_ok=True)

    def _complete_torn_line(self, found: tuple[int, Path]) -> None:
        """Rewrite the journal with its torn last line completed (atomic: either form counts the step once)."""
        step, path = found
        torn = self._entries[-1]
        data = self.path.read_bytes()
        start = data.rstrip(b"\n").rfind(b"\n") + 1
        record = {"step": step, "release": torn.release, "update": path.name, "sha256": _sha256(path.read_bytes())}
        atomic_write_bytes(self.path, data[:start] + (json.dumps(record) + "\n").encode())
        self._entries[-1] = JournalEntry(release=torn.release, step=step, update=path.name, sha256=record["sha256"])

    def _append_line(self, record: Mapping[str, Any]) -> None:
        try:
            with open(self.path, "ab") as handle:
                # A torn previous write must not glue onto this record.
                if handle.tell() > 0 and not self._ends_with_newline():
                    handle.write(b"\n")
                handle.write((json.dumps(record) + "\n").encode())
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            # A full disk stops the run before the update is applied; a torn line left behind still counts.
            raise write_failed(self.path, exc) from exc

    def _append_entry(self, *, step: int, release: int, name: str, sha256: str) -> JournalEntry:
        self._append_line({"step": int(step), "release": int(release), "update": name, "sha256": sha256})
        entry = JournalEntry(release=release, step=int(step), update=name, sha256=sha256)
        self._entries.append(entry)
        return entry

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    @property
    def steps(self) -> int:
        """Logical DP-SGD steps released (and charged) so far, re-done ones included."""
        return len(self._entries)

    @property
    def entries(self) -> list[JournalEntry]:
        """Every released step, in the order it was journalled."""
        return list(self._entries)

    def record_step(self, *, step: int, update: Sequence[torch.Tensor]) -> JournalEntry:
        """Durably release the noisy update of logical step ``step``, before it is applied.

        The update file is written (and fsynced) first, the journal line naming it
        and its SHA-256 second: a line never exists without its update, and an
        update without its line is adopted when the journal is next opened.

        Args:
            step: the logical step (1-based) the update belongs to.
            update: the noisy, scaled gradient of every parameter the optimizer
                updates, in its order (post-processing of the DP release only).

        Returns:
            The journal entry written.
        """
        release = self.steps + 1
        name = update_file_name(step=step, release=release)
        buffer = io.BytesIO()
        torch.save({"format": UPDATE_FORMAT, "step": int(step), "release": release,
                    "update": [tensor.detach().cpu().clone() for tensor in update]}, buffer)
        data = buffer.getvalue()
        atomic_write_bytes(self.updates_dir / name, data)
        return self._append_entry(step=step, release=release, name=name, sha256=_sha256(data))

    def replay_plan(self, *, checkpoint_step: int, position: int) -> list[JournalEntry]:
        """The released updates to apply again on top of a checkpoint, in order.

        The steps journalled after the checkpoint are followed as the process
        that released them applied them (a step released again after an earlier
        resume replaces the later steps of the first attempt). The plan is the
        longest prefix of consecutive steps ``checkpoint_step + 1, ...`` whose
        update files are present; every other step after the checkpoint stays
        charged and its file is deleted (it will be taken again with fresh noise).

        Args:
            checkpoint_step: the logical step the checkpoint was taken after (0: none).
            position: the journal line whose update the checkpoint ends with
                (0: none; the checkpoint's ``journal_position``).

        Returns:
            The entries to replay, for steps ``checkpoint_step + 1`` onwards.
        """
        lineage: list[JournalEntry] = []
        for entry in self._entries[position:]:
            if entry.unapplied:
                continue
            offset = entry.step - checkpoint_step - 1 if entry.step is not None else len(lineage)
            if not 0 <= offset <= len(lineage):
                break  # a step that cannot follow the checkpoint: nothing after it is trusted
            del lineage[offset:]
            lineage.append(entry)
        plan: list[JournalEntry] = []
        for entry in lineage:
            if not entry.replayable or not (self.updates_dir / entry.update).is_file():
                break
            plan.append(entry)
        kept = {entry.release for entry in plan}
        for release, (_step, path) in update_files(self.updates_dir).items():
            if release > position and release not in kept:
                path.unlink(missing_ok=True)
        return plan

    def load_update(self, entry: JournalEntry) -> list[torch.Tensor]:
        """The released update of a journal entry, its SHA-256 checked against the journal line.

        Raises:
            PrivacyError: the file is missing, differs from what was released, or is unreadable.
        """
        return load_update(self.updates_dir, entry)

    def prune_updates(self, *, through_step: int) -> None:
        """Delete the update files of steps up to ``through_step`` (a durable checkpoint holds them applied)."""
        for step, path in update_files(self.updates_dir).values():
            if step <= through_step:
                path.unlink(missing_ok=True)


def load_update(updates_dir: Path, entry: JournalEntry | Mapping[str, Any]) -> list[torch.Tensor]:
    """Read one released update and check it against its journal entry.

    Args:
        updates_dir: the run's ``dpsgd_updates`` folder.
        entry: a `JournalEntry` (or its ``to_dict()``) naming the file and its SHA-256.

    Returns:
        The update tensors, in the optimizer's parameter order.

    Raises:
        PrivacyError: the file is missing, its hash differs from the journal's, or it is not an update file.
    """
    if isinstance(entry, Mapping):
        entry = JournalEntry(**entry)
    if not entry.replayable:
        raise PrivacyError(f"journal line {entry.release} names no released update to replay")
    path = Path(updates_dir) / entry.update
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PrivacyError(f"cannot read the released update of step {entry.step} ({path}): "
                           f"{exc.strerror or exc}") from None
    if _sha256(data) != entry.sha256:
        raise PrivacyError(f"{path}: SHA-256 differs from journal line {entry.release}; the released update of "
                           f"step {entry.step} was altered, refusing to replay it")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; the hash already matched
        raise PrivacyError(f"{path}: not a released update ({exc.__class__.__name__})") from None
    if (not isinstance(payload, dict) or payload.get("format") != UPDATE_FORMAT
            or payload.get("step") != entry.step or payload.get("release") != entry.release
            or not all(isinstance(t, torch.Tensor) for t in payload.get("update") or [None])):
        raise PrivacyError(f"{path}: not the released update of step {entry.step} (journal line {entry.release})")
    return list(payload["update"])


def read_journal(path: Path) -> tuple[dict[str, Any], int]:
    """A journal's header and its count of released steps, read without taking the run's lock (for audits).

    Args:
        path: a ``dpsgd_journal.jsonl`` file.

    Returns:
        ``(header, steps)``; a torn last line counts as a step.
    """
    header, entries = read_journal_entries(path)
    return header, len(entries)


def read_journal_entries(path: Path) -> tuple[dict[str, Any], list[JournalEntry]]:
    """A journal's header and every released step it lists, read-only and without the run's lock.

    Args:
        path: a ``dpsgd_journal.jsonl`` file.

    Returns:
        ``(header, entries)``; every non-empty line after the header is one
        entry, a torn line included (``torn=True`` until its update is found).
    """
    lines = Path(path).read_text().splitlines()
    try:
        header = json.loads(lines[0])["header"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError):
        header = None
    if not isinstance(header, dict):
        raise PrivacyError(f"{path}: not a DP-SGD journal (no header line); refusing to guess the budget spent")
    # Every non-empty line after the header is one released step, a torn line included.
    step_lines = [line for line in lines[1:] if line.strip()]
    entries = [_parse_line(line, release) for release, line in enumerate(step_lines, 1)]
    return header, entries


def _parse_line(line: str, release: int) -> JournalEntry:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        match = _TORN_STEP.match(line)
        return JournalEntry(release=release, step=int(match.group(1)) if match else None, torn=True)
    update, sha256 = record.get("update"), record.get("sha256")
    return JournalEntry(release=release, step=record["step"],
                        update=update if isinstance(update, str) else None,
                        sha256=sha256 if isinstance(sha256, str) else None,
                        unapplied=bool(record.get("unapplied")))


def checkpoint_position(checkpoint: Mapping[str, Any] | None) -> int:
    """The journal line whose update a checkpoint's model ends with (0 without a checkpoint).

    Checkpoints written before updates were journalled lack ``journal_position``;
    theirs is the journal's length when they were taken (``journal_steps``), as the
    live loop writes it.

    Raises:
        PrivacyError: the checkpoint names something other than a line number.
    """
    if checkpoint is None:
        return 0
    position = checkpoint.get("journal_position", checkpoint.get("journal_steps", 0))
    if not isinstance(position, int) or isinstance(position, bool):
        raise PrivacyError(f"its journal_position {position!r} is not a journal line number")
    return position


def checkpoint_account_problem(checkpoint: Mapping[str, Any], *, charged_steps: int,
                               journal_steps: int) -> str | None:
    """Why a checkpoint's account of the released DP-SGD steps cannot be right, or None when it can.

    A checkpoint taken when the journal listed ``journal_steps`` lines (its own
    field of that name) charges exactly those steps in its ledger; the journal,
    being append-only, lists at least as many now; and the model ends with a line
    the checkpoint charges (`checkpoint_position`).

    Args:
        checkpoint: the checkpoint's payload.
        charged_steps: the DP-SGD steps the checkpoint's ledger charges.
        journal_steps: the lines the journal lists now.

    Returns:
        The disagreement in words, or None.
    """
    then = checkpoint.get("journal_steps")
    if charged_steps != then or then > journal_steps:
        return f"its ledger charges {charged_steps} steps, the journal listed {then} then and {journal_steps} now"
    try:
        position = checkpoint_position(checkpoint)
    except PrivacyError as exc:
        return str(exc)
    if not 0 <= position <= then:
        return f"its model ends with journal line {position}, after the {then} steps its ledger charges"
    return None


def update_files(updates_dir: Path) -> dict[int, tuple[int, Path]]:
    """The complete update files of a ``dpsgd_updates`` folder: release -> (step, path)."""
    if not updates_dir.is_dir():
        return {}
    found = {}
    for path in updates_dir.iterdir():
        if match := _UPDATE_NAME.match(path.name):
            found[int(match.group(2))] = (int(match.group(1)), path)
    return found


def partial_update_files(updates_dir: Path) -> list[Path]:
    """Temporary update files a kill left in the middle of their write."""
    if not updates_dir.is_dir():
        return []
    return sorted(path for path in updates_dir.iterdir() if _PARTIAL_UPDATE.match(path.name))


def sha256_of(path: Path) -> str:
    """The SHA-256 (hex) of a file, as the journal records it for an update."""
    return _sha256(Path(path).read_bytes())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _lock_exclusively(path: Path):
    """An open handle holding an exclusive, non-blocking lock on ``path`` (released when closed or on exit)."""
    handle = open(path, "a+b")
    if sys.platform == "win32":  # no fcntl: rely on the user not to run one folder twice
        return handle

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
