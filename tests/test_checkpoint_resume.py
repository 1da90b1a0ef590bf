"""Crash and resume: a killed run resumes, reaches the same step count, and never spends less epsilon.

A crash is simulated in-process by an exception raised at the start of a
logical step: nothing runs between it and the process ending that writes to
the run folder, so the folder is left as a SIGKILL leaves it. The test at the
bottom does the real thing with a subprocess and SIGKILL (slow tier).
"""

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import privimage.privacy.calibration as calibration
from privimage.config import FinetuneConfig
from privimage.errors import PrivacyError
from privimage.training import dpsgd
from privimage.training.checkpoint import list_checkpoints
from privimage.training.journal import JOURNAL_NAME
from privimage.training.plain import run_plain_training
from test_training_standins import TinyNet, dpsgd_steps, load_rows, tiny_dataset, tiny_ledger, tiny_loss

torch.set_num_threads(2)
TESTS_DIR = Path(__file__).parent
# q = 20 / 200 = 0.1, one epoch: T = 10 logical steps, a checkpoint every 3.
SETTINGS = FinetuneConfig(delta=1e-4, batch_size=20, physical_batch_size=20, epochs=1.0, lr=1e-3,
                          checkpoint_every=3, noise_multiplicity=1)
TOTAL_STEPS = 10
TARGET_EPSILON = 4.0


# Calibration is a pure function of its arguments; caching it across runs only saves time.
CACHED_CALIBRATION = functools.lru_cache(calibration.calibrate_noise_multiplier)


@pytest.fixture(autouse=True)
def cached_calibration(monkeypatch):
    monkeypatch.setattr(calibration, "calibrate_noise_multiplier", CACHED_CALIBRATION)


class Crash(Exception):
    """Stands for the process dying."""


def crash_at_step(monkeypatch, step_number):
    """Make the run die at the start of logical step ``step_number`` (before it is journalled)."""
    real_step = dpsgd.dp_sgd_step
    calls = {"count": 0}

    def step(**kwargs):
        calls["count"] += 1
        if calls["count"] == step_number:
            raise Crash()
        return real_step(**kwargs)

    monkeypatch.setattr(dpsgd, "dp_sgd_step", step)


def fine_tune(run_dir, *, ledger=None, settings=SETTINGS, dataset=None):
    dataset = dataset or tiny_dataset()
    ledger = ledger if ledger is not None else tiny_ledger(dataset)
    stats = dpsgd.run_dp_sgd(
        stage="test_resume", model=TinyNet(), ema=None, per_example_loss=tiny_loss, load_inputs=load_rows(dataset),
        sensitive=dataset, ledger=ledger, settings=settings, lr=settings.lr, epochs=settings.epochs,
        target_epsilon=TARGET_EPSILON, run_dir=run_dir, seed=0,
        identity={"finetune": dataclasses.asdict(settings)}, progress=False,
    )
    return stats, ledger


def uninterrupted_epsilon(stats, steps=TOTAL_STEPS):
    """What an uninterrupted run with the same sigma spends (the ledger-count test shows runs spend this)."""
    reference = tiny_ledger(tiny_dataset())
    reference.record_dpsgd_steps(noise_multiplier=stats["noise_multiplier"], sample_rate=stats["sample_rate"],
                                 steps=steps, generator="os-entropy")
    return reference.epsilon()


def journal_steps(run_dir):
    return len((run_dir / JOURNAL_NAME).read_text().splitlines()) - 1


def test_kill_right_after_a_checkpoint_resumes_at_the_same_epsilon(tmp_path, monkeypatch):
    crash_at_step(monkeypatch, 7)
    with pytest.raises(Crash):
        fine_tune(tmp_path)
    assert journal_steps(tmp_path) == 6 and list_checkpoints(tmp_path)[0].name == "ckpt-6.pt"
    monkeypatch.undo()
    stats, ledger = fine_tune(tmp_path)
    assert stats["steps"] == TOTAL_STEPS and stats["resumed_from_step"] == 6
    assert dpsgd_steps(ledger) == TOTAL_STEPS == journal_steps(tmp_path)
    assert stats["lost_steps_charged"] == 0
    assert stats["epsilon"] == pytest.approx(uninterrupted_epsilon(stats), rel=1e-12)
    # Table 4's time covers the first session up to its checkpoint as well.
    assert stats["wall_time_s_all_sessions"] > stats["resources"]["wall_time_s"]
    assert 0.99 * TARGET_EPSILON <= stats["epsilon"] <= TARGET_EPSILON


def test_steps_lost_after_the_last_checkpoint_are_charged_again(tmp_path, monkeypatch):
    # Dies before step 6: steps 4 and 5 were released but only step 3 was checkpointed.
    crash_at_step(monkeypatch, 6)
    with pytest.raises(Crash):
        fine_tune(tmp_path)
    monkeypatch.undo()
    stats, ledger = fine_tune(tmp_path)
    assert stats["steps"] == TOTAL_STEPS and stats["resumed_from_step"] == 3
    assert stats["lost_steps_charged"] == 2
    assert dpsgd_steps(ledger) == TOTAL_STEPS + 2 == journal_steps(tmp_path)
    assert stats["epsilon"] == pytest.approx(uninterrupted_epsilon(stats, TOTAL_STEPS + 2), rel=1e-12)
    assert stats["epsilon"] > uninterrupted_epsilon(stats)


def test_kill_before_the_first_checkpoint_restarts_but_keeps_the_charge(tmp_path, monkeypatch):
    crash_at_step(monkeypatch, 3)
    with pytest.raises(Crash):
        fine_tune(tmp_path)
    assert list_checkpoints(tmp_path) == [] and journal_steps(tmp_path) == 2
    monkeypatch.undo()
    stats, ledger = fine_tune(tmp_path)
    assert stats["resumed_from_step"] == 0 and stats["lost_steps_charged"] == 2
    assert dpsgd_steps(ledger) == TOTAL_STEPS + 2
    assert stats["epsilon"] > uninterrupted_epsilon(stats)


def test_rerunning_a_finished_run_trains_nothing_and_reports_its_account(tmp_path):
    first, _ = fine_tune(tmp_path)
    again, ledger = fine_tune(tmp_path)
    assert again["resumed_from_step"] == TOTAL_STEPS
    assert journal_steps(tmp_path) == TOTAL_STEPS
    assert dpsgd_steps(ledger) == TOTAL_STEPS
    assert again["epsilon"] == pytest.approx(first["epsilon"], rel=1e-12)


def test_resuming_with_other_settings_or_another_ledger_is_refused(tmp_path, monkeypatch):
    crash_at_step(monkeypatch, 5)
    with pytest.raises(Crash):
        fine_tune(tmp_path)
    monkeypatch.undo()
    with pytest.raises(PrivacyError, match="another run"):
        fine_tune(tmp_path, settings=dataclasses.replace(SETTINGS, lr=1e-2))
    dataset = tiny_dataset()
    with pytest.raises(PrivacyError, match="another run"):
        fine_tune(tmp_path, ledger=tiny_ledger(dataset, query_noise_multiplier=5.0))
    # Without the journal the budget already spent cannot be established.
    (tmp_path / JOURNAL_NAME).unlink()
    with pytest.raises(PrivacyError, match="journal"):
        fine_tune(tmp_path)


def test_a_checkpoint_whose_ledger_disagrees_is_refused(tmp_path, monkeypatch):
    crash_at_step(monkeypatch, 5)
    with pytest.raises(Crash):
        fine_tune(tmp_path)
    monkeypatch.undo()
    checkpoint = list_checkpoints(tmp_path)[0]
    payload = torch.load(checkpoint, weights_only=True)
    # Someone rewrote the stored ledger to show fewer steps than the journal said at the time.
    payload["ledger"]["entries"][-1]["steps"] = 1
    torch.save(payload, checkpoint)
    with pytest.raises(PrivacyError, match="ledger disagrees"):
        fine_tune(tmp_path)


def plain_run(run_dir, train_log):
    dataset = tiny_dataset(num_examples=30)
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    load = load_rows(dataset)

    def train_step(step, rows):
        images, labels = load(rows)
        optimizer.zero_grad()
        # Input noise from the global stream: a resumed run must restore it to match.
        loss = tiny_loss(model, images + 0.1 * torch.randn_like(images), labels).mean()
        loss.backward()
        optimizer.step()
        train_log.append((step, tuple(rows)))
        return {"loss": float(loss.detach())}

    stats = run_plain_training(
        stage="test_plain", dataset=dataset, steps=6, batch_size=8, train_step=train_step,
        state={"model": model, "optimizer": optimizer}, run_dir=run_dir, seed=3, identity={"lr": 1e-2},
        checkpoint_every=2, resource_stage="pretraining", progress=False,
    )
    return stats, model


def test_resumed_pretraining_matches_the_uninterrupted_run_exactly(tmp_path):
    full_log, resumed_log = [], []
    _, full_model = plain_run(tmp_path / "full", full_log)
    plain_run(tmp_path / "resumed", [])
    # Lose the last checkpoint: the run resumes from step 4 and redoes steps 5 and 6.
    (tmp_path / "resumed" / "ckpt-6.pt").unlink()
    stats, resumed_model = plain_run(tmp_path / "resumed", resumed_log)
    assert stats["resumed_from_step"] == 4
    assert resumed_log == full_log[4:]
    for got, want in zip(resumed_model.parameters(), full_model.parameters()):
        assert torch.equal(got, want)
    # Batches cover the data without replacement within an epoch (30 rows, batches of 8).
    rows = np.concatenate([np.array(r) for _, r in full_log])
    assert sorted(rows[:30].tolist()) == list(range(30))


WORKER = """
import dataclasses, json, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from privimage.config import FinetuneConfig
from privimage.training.dpsgd import run_dp_sgd
from test_training_standins import TinyNet, dpsgd_steps, load_rows, tiny_dataset, tiny_ledger, tiny_loss

settings = FinetuneConfig(**json.loads(sys.argv[2]))
dataset = tiny_dataset()
ledger = tiny_ledger(dataset)
stats = run_dp_sgd(
    stage="test_resume", model=TinyNet(), ema=None, per_example_loss=tiny_loss, load_inputs=load_rows(dataset),
    sensitive=dataset, ledger=ledger, settings=settings, lr=settings.lr, epochs=settings.epochs,
    target_epsilon={target}, run_dir=sys.argv[1], seed=0, identity={{"finetune": dataclasses.asdict(settings)}},
    after_step=lambda step: time.sleep(float(sys.argv[3])), progress=False,
)
print(json.dumps({{"stats": {{k: stats[k] for k in ("steps", "resumed_from_step", "lost_steps_charged",
                   "noise_multiplier", "sample_rate", "epsilon")}}, "ledger_steps": dpsgd_steps(ledger)}}))
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_resumes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS_DIR), target=TARGET_EPSILON))
    run_dir = tmp_path / "run"
    settings = json.dumps(dataclasses.asdict(SETTINGS))
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR.parent)}
    process = subprocess.Popen([sys.executable, str(script), str(run_dir), settings, "0.4"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Kill once a checkpoint exists and at least one released step came after it.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (run_dir / "ckpt-3.pt").exists() and (run_dir / JOURNAL_NAME).exists() and journal_steps(run_dir) >= 4:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[1].decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = journal_steps(run_dir)
    checkpointed = int(list_checkpoints(run_dir)[0].stem.split("-")[1])
    assert checkpointed < killed_at < TOTAL_STEPS

    done = subprocess.run([sys.executable, str(script), str(run_dir), settings, "0"], env=env,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    stats = result["stats"]
    lost = killed_at - checkpointed
    assert stats["steps"] == TOTAL_STEPS and stats["resumed_from_step"] == checkpointed
    assert stats["lost_steps_charged"] == lost
    assert result["ledger_steps"] == TOTAL_STEPS + lost == journal_steps(run_dir)
    assert stats["epsilon"] == pytest.approx(uninterrupted_epsilon(stats, TOTAL_STEPS + lost), rel=1e-12)
    assert stats["epsilon"] > uninterrupted_epsilon(stats)
