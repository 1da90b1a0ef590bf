"""The DP-SGD journal: released updates before their lines, torn or missing writes settled, foreign runs refused."""

import json

import pytest
import torch

from disk_faults import fill_the_disk_in_journal_line
from privimage.errors import PrivacyError
from privimage.training.journal import (
    UPDATES_DIR,
    DPStepJournal,
    JournalEntry,
    checkpoint_account_problem,
    checkpoint_position,
    read_journal,
    read_journal_entries,
    update_file_name,
)

HEADER = {"stage": "demo", "run_hash": "abc", "noise_multiplier": 1.25, "sample_rate": 0.1}


def update_of(step: int) -> list[torch.Tensor]:
    """A stand-in released update whose values say which step it belongs to."""
    return [torch.full((2, 3), float(step)), torch.arange(4.0) * step]


def record(journal: DPStepJournal, *steps: int) -> None:
    for step in steps:
        journal.record_step(step=step, update=update_of(step))


def test_steps_and_their_updates_survive_reopening(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        record(journal, 1, 2, 3)
    with DPStepJournal(path, header=HEADER) as reopened:
        assert reopened.steps == 3
        for entry in reopened.entries:
            assert entry.replayable and entry.update == update_file_name(step=entry.step, release=entry.release)
            # What comes back is exactly what was released.
            assert all(torch.equal(got, want) for got, want in zip(reopened.load_update(entry), update_of(entry.step)))


def fail_the_next_journal_line(monkeypatch, *, torn: bool) -> None:
    """The next journal line hits a full disk: after half of it landed (``torn``) or before any of it did."""
    fill_the_disk_in_journal_line(monkeypatch, record='"step"', torn=torn)


@pytest.mark.parametrize("torn", [False, True])
def test_an_update_whose_line_did_not_make_it_is_charged_and_replayable_on_reopening(tmp_path, monkeypatch, torn):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        record(journal, 1, 2)
        fail_the_next_journal_line(monkeypatch, torn=torn)
        with pytest.raises(OSError, match="No space left"):
            record(journal, 3)
        monkeypatch.undo()
    # The update was written (fsynced) before its line: it is on disk either way.
    assert (tmp_path / UPDATES_DIR / update_file_name(step=3, release=3)).is_file()
    assert read_journal(path)[1] == (3 if torn else 2)  # a torn line counts as a step
    with DPStepJournal(path, header=HEADER) as reopened:
        # Adopted (a line appended) or completed (the torn line rewritten): charged once, replayable.
        assert reopened.steps == 3
        last = reopened.entries[-1]
        assert (last.step, last.release, last.replayable, last.torn) == (3, 3, True, False)
        assert torch.equal(reopened.load_update(last)[0], update_of(3)[0])
        record(reopened, 4)
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["step"] == step for step, line in enumerate(lines[1:], 1))


def test_a_torn_line_without_its_update_still_counts(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        record(journal, 1)
    with open(path, "ab") as handle:
        handle.write(b'{"step": 2, "rel')  # the process died in the middle of this write
    with DPStepJournal(path, header=HEADER) as journal:
        assert journal.steps == 2
        torn = journal.entries[-1]
        assert torn.torn and torn.step == 2 and not torn.replayable
        record(journal, 2)
        assert journal.steps == 3
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 2 and lines[-2] == '{"step": 2, "rel'


def test_a_partial_update_file_is_charged_as_released_but_never_replayed(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        record(journal, 1)
    # A kill in the middle of the atomic write of step 2's update left its temporary file.
    partial = tmp_path / UPDATES_DIR / f".{update_file_name(step=2, release=2)}.x1y2.tmp"
    partial.write_bytes(b"PK\x03\x04 half a noisy gradient")
    with DPStepJournal(path, header=HEADER) as journal:
        assert journal.steps == 2 and not partial.exists()
        assert journal.entries[-1] == JournalEntry(release=2, step=2, unapplied=True)
        # Resuming from step 1: the charged-but-unapplied release is skipped, step 2 is taken again.
        assert journal.replay_plan(checkpoint_step=1, position=1) == []


def test_a_tampered_update_is_refused_in_one_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        record(journal, 1)
        entry = journal.entries[0]
        update_path = tmp_path / UPDATES_DIR / entry.update
        data = bytearray(update_path.read_bytes())
        data[-30] ^= 0xFF
        update_path.write_bytes(bytes(data))
        with pytest.raises(PrivacyError, match="SHA-256 differs from journal line 1") as error:
            journal.load_update(entry)
    assert "\n" not in str(error.value) and "refusing to replay" in str(error.value)


def test_the_replay_plan_follows_what_was_applied_and_stops_at_a_missing_update(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        record(journal, 1, 2, 3, 4, 5)
        # Checkpoint after step 2 (journal line 2): steps 3, 4, 5 are replayed, in order.
        assert [e.step for e in journal.replay_plan(checkpoint_step=2, position=2)] == [3, 4, 5]
        # Step 4's update is lost: 3 is replayed; 4 and 5 stay charged, their files go, they are taken again.
        (tmp_path / UPDATES_DIR / journal.entries[3].update).unlink()
        assert [e.step for e in journal.replay_plan(checkpoint_step=2, position=2)] == [3]
        assert not (tmp_path / UPDATES_DIR / journal.entries[4].update).exists()
        # Steps 4 and 5 taken again (lines 6 and 7), then a crash: the second attempt is what was applied.
        record(journal, 4, 5)
        plan = journal.replay_plan(checkpoint_step=2, position=2)
        assert [(e.step, e.release) for e in plan] == [(3, 3), (4, 6), (5, 7)]


def test_updates_beyond_the_next_release_are_refused(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        record(journal, 1)
    stray = tmp_path / UPDATES_DIR / update_file_name(step=5, release=5)
    stray.write_bytes(b"not released by this journal")
    with pytest.raises(PrivacyError, match="the folder was altered"):
        DPStepJournal(path, header=HEADER)


def test_released_updates_without_their_journal_are_refused(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        record(journal, 1, 2)
    path.unlink()
    with pytest.raises(PrivacyError, match="holds released DP-SGD updates but journal.jsonl is missing"):
        DPStepJournal(path, header=HEADER)


def test_pruning_deletes_the_updates_a_checkpoint_holds(tmp_path):
    with DPStepJournal(tmp_path / "journal.jsonl", header=HEADER) as journal:
        record(journal, 1, 2, 3)
        journal.prune_updates(through_step=2)
        assert sorted(p.name for p in (tmp_path / UPDATES_DIR).iterdir()) == [journal.entries[2].update]


@pytest.mark.parametrize("field, value", [("run_hash", "other"), ("noise_multiplier", 1.3)])
def test_a_journal_of_another_run_is_refused(tmp_path, field, value):
    path = tmp_path / "journal.jsonl"
    DPStepJournal(path, header=HEADER).close()
    with pytest.raises(PrivacyError, match=f"another run: its {field}"):
        DPStepJournal(path, header={**HEADER, field: value})


def test_a_file_without_header_is_refused(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"step": 1}\n')
    with pytest.raises(PrivacyError, match="not a DP-SGD journal"):
        DPStepJournal(path, header=HEADER)


def test_two_runs_cannot_share_a_folder_at_once(tmp_path):
    path = tmp_path / "journal.jsonl"
    first = DPStepJournal(path, header=HEADER)
    with pytest.raises(PrivacyError, match="another process"):
        DPStepJournal(path, header=HEADER)
    first.close()
    DPStepJournal(path, header=HEADER).close()


def test_an_audit_reads_the_journal_while_the_run_holds_the_lock(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        record(journal, 1, 2)
        header, steps = read_journal(path)
        _, entries = read_journal_entries(path)
    assert header == HEADER and steps == 2
    assert [(e.step, e.release, e.replayable) for e in entries] == [(1, 1, True), (2, 2, True)]


def test_a_checkpoint_ends_with_its_position_or_else_with_the_journal_it_was_taken_after():
    assert checkpoint_position(None) == 0
    assert checkpoint_position({"journal_steps": 4, "journal_position": 3}) == 3
    # Checkpoints written before updates were journalled: the journal's length then.
    assert checkpoint_position({"journal_steps": 4}) == 4
    for position in (2.5, "3", None, True):
        with pytest.raises(PrivacyError, match="not a journal line number"):
            checkpoint_position({"journal_steps": 4, "journal_position": position})


def test_a_checkpoint_account_must_charge_what_the_journal_listed_then():
    taken = {"journal_steps": 4, "journal_position": 3}
    assert checkpoint_account_problem(taken, charged_steps=4, journal_steps=6) is None
    # Its ledger charges another count than the journal listed when it was taken.
    assert "charges 5 steps" in checkpoint_account_problem(taken, charged_steps=5, journal_steps=6)
    # The append-only journal lists fewer lines now than then: replaced or truncated.
    assert "listed 4 then and 3 now" in checkpoint_account_problem(taken, charged_steps=4, journal_steps=3)
    # The model ends with a line the checkpoint does not charge, or with no line at all.
    for position in (5, -1, "x"):
        problem = checkpoint_account_problem({"journal_steps": 4, "journal_position": position}, charged_steps=4,
                                             journal_steps=6)
        assert problem is not None and "journal" in problem
