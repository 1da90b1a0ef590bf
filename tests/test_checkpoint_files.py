"""Checkpoint files: atomic, the latest two kept, weights-only loads, fallback past a truncated file."""

import os
import pickle

import pytest
import torch

from privimage.errors import PrivacyError
from privimage.training.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)

IDENTITY = {"stage": "demo", "run_hash": "abc", "dataset_hash": "d1"}


def payload(value: float) -> dict:
    return {**IDENTITY, "model": {"weight": torch.full((3,), value)}, "ledger": {"entries": [{"steps": 2}]}}


def test_only_the_latest_two_checkpoints_are_kept(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(run_dir=tmp_path, step=step, payload=payload(float(step)))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-15.pt", "ckpt-10.pt"]
    # No temporary files are left behind by the atomic writes.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-10.pt", "ckpt-15.pt"]
    latest = load_latest_checkpoint(run_dir=tmp_path, expect=IDENTITY)
    assert latest["step"] == 15
    assert torch.equal(latest["model"]["weight"], torch.full((3,), 15.0))
    assert latest["ledger"] == {"entries": [{"steps": 2}]}


def test_step_order_is_numeric_not_lexicographic(tmp_path):
    for step in (9, 10):
        save_checkpoint(run_dir=tmp_path, step=step, payload=payload(float(step)))
    assert load_latest_checkpoint(run_dir=tmp_path, expect=IDENTITY)["step"] == 10


def test_truncated_latest_falls_back_to_the_previous_with_a_warning(tmp_path):
    save_checkpoint(run_dir=tmp_path, step=1, payload=payload(1.0))
    latest = save_checkpoint(run_dir=tmp_path, step=2, payload=payload(2.0))
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="ckpt-2.pt"):
        restored = load_latest_checkpoint(run_dir=tmp_path, expect=IDENTITY)
    assert restored["step"] == 1
    assert torch.equal(restored["model"]["weight"], torch.full((3,), 1.0))


def test_empty_folder_or_only_damaged_files_give_none(tmp_path):
    assert load_latest_checkpoint(run_dir=tmp_path / "missing", expect=IDENTITY) is None
    checkpoint_path(tmp_path, 3).write_bytes(b"")
    with pytest.warns(UserWarning):
        assert load_latest_checkpoint(run_dir=tmp_path, expect=IDENTITY) is None


class WritesMarker:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_checkpoint_with_pickled_code_is_refused_and_never_run(tmp_path, writer):
    marker = tmp_path / "marker"
    save_checkpoint(run_dir=tmp_path, step=1, payload=payload(1.0))
    evil = {**payload(2.0), "format": "privimage-checkpoint/1", "step": 2, "extra": WritesMarker(marker)}
    path = checkpoint_path(tmp_path, 2)
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(evil, handle)
    with pytest.raises(PrivacyError, match="pickled code"):
        load_checkpoint(path)
    # A tampered newest checkpoint stops the run rather than silently falling back.
    with pytest.raises(PrivacyError, match="pickled code"):
        load_latest_checkpoint(run_dir=tmp_path, expect=IDENTITY)
    assert not marker.exists()


@pytest.mark.parametrize("field", ["stage", "run_hash", "dataset_hash"])
def test_checkpoint_of_another_run_is_refused(tmp_path, field):
    save_checkpoint(run_dir=tmp_path, step=1, payload=payload(1.0))
    with pytest.raises(PrivacyError, match=f"belongs to another run: its {field}"):
        load_latest_checkpoint(run_dir=tmp_path, expect={**IDENTITY, field: "other"})


def test_keeping_fewer_than_two_is_refused(tmp_path):
    with pytest.raises(PrivacyError, match="keep must be >= 2"):
        save_checkpoint(run_dir=tmp_path, step=1, payload=payload(1.0), keep=1)


def test_temporary_files_of_an_interrupted_write_are_cleared(tmp_path):
    save_checkpoint(run_dir=tmp_path, step=1, payload=payload(1.0))
    stale = tmp_path / ".ckpt-2.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert load_latest_checkpoint(run_dir=tmp_path, expect=IDENTITY)["step"] == 1
    assert not stale.exists()
