"""The DP-SGD journal: durable step count, torn writes counted, foreign or concurrent runs refused."""

import json

import pytest

from privimage.errors import PrivacyError
from privimage.training.journal import DPStepJournal, read_journal

HEADER = {"stage": "demo", "run_hash": "abc", "noise_multiplier": 1.25, "sample_rate": 0.1}


def test_steps_survive_reopening(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        for step in (1, 2, 3):
            journal.record_step(step=step)
    with DPStepJournal(path, header=HEADER) as reopened:
        assert reopened.steps == 3


def test_a_torn_last_line_counts_and_the_next_record_starts_a_new_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        journal.record_step(step=1)
    with open(path, "ab") as handle:
        handle.write(b'{"st')  # the process died in the middle of this write
    with DPStepJournal(path, header=HEADER) as journal:
        assert journal.steps == 2
        journal.record_step(step=2)
        assert journal.steps == 3
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"step": 2} and lines[-2] == '{"st'


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


def test_an_audit_reads_the_count_while_the_run_holds_the_lock(tmp_path):
    path = tmp_path / "journal.jsonl"
    with DPStepJournal(path, header=HEADER) as journal:
        journal.record_step(step=1)
        journal.record_step(step=2)
        header, steps = read_journal(path)
    assert header == HEADER and steps == 2
