"""Crash and resume: a killed run resumes, replays what it released, and spends exactly the uninterrupted epsilon.

A crash is simulated in-process by an exception raised at the start of a
logical step or inside a checkpoint write: nothing runs between it and the
process ending that writes to the run folder, so the folder is left as a
SIGKILL leaves it. The test at the bottom does the real thing with a
subprocess and SIGKILL (slow tier).
"""

import copy
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
from privimage.diffusion import ExponentialMovingAverage
from privimage.training.checkpoint import list_checkpoints
from privimage.training.journal import JOURNAL_NAME, UPDATES_DIR, DPStepJournal
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


def crash_in_checkpoint_write(monkeypatch, step_number, written):
    """Make the checkpoint write after ``step_number`` die; record every payload handed to the writer."""
    real_save = dpsgd.save_checkpoint
    failed = []

    def save(*, run_dir, step, payload, **kwargs):
        # A copy: the payload holds the live tensors, which later steps change.
        written.append({**copy.deepcopy(payload), "step": step})
        if step == step_number and not failed:
            failed.append(step)
            raise Crash()
        return real_save(run_dir=run_dir, step=step, payload=payload, **kwargs)

    monkeypatch.setattr(dpsgd, "save_checkpoint", save)


def fine_tune(run_dir, *, ledger=None, settings=SETTINGS, dataset=None, with_ema=False):
    dataset = dataset or tiny_dataset()
    ledger = ledger if ledger is not None else tiny_ledger(dataset)
    model = TinyNet()
    stats = dpsgd.run_dp_sgd(
        stage="test_resume", model=model, ema=ExponentialMovingAverage(model, decay=0.9) if with_ema else None,
        per_example_loss=tiny_loss, load_inputs=load_rows(dataset),
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



def fine_tune_until_crash_before_step_6(run_dir, monkeypatch) -> None:
    """Fine-tune in ``run_dir`` until the run dies before step 6: steps 4 and 5 released after checkpoint 3."""
    crash_at_step(monkeypatch, 6)
    with pytest.raises(Crash):
        fine_tune(run_dir)
    monkeypatch.undo()

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


def test_steps_released_after_the_last_checkpoint_are_replayed_not_charged_again(tmp_path, monkeypatch):
    # Dies before step 6: steps 4 and 5 were released but only step 3 was checkpointed.
    fine_tune_until_crash_before_step_6(tmp_path, monkeypatch)
    stats, ledger = fine_tune(tmp_path)
    assert stats["steps"] == TOTAL_STEPS and stats["resumed_from_step"] == 3 and stats["replayed_steps"] == 2
    assert stats["lost_steps_charged"] == 0 and stats["released_steps"] == TOTAL_STEPS
    assert dpsgd_steps(ledger) == TOTAL_STEPS == journal_steps(tmp_path)
    assert stats["epsilon"] == pytest.approx(uninterrupted_epsilon(stats), rel=1e-12)


def test_kill_before_the_first_checkpoint_replays_from_the_starting_weights(tmp_path, monkeypatch):
    crash_at_step(monkeypatch, 3)
    with pytest.raises(Crash):
        fine_tune(tmp_path)
    assert list_checkpoints(tmp_path) == [] and journal_steps(tmp_path) == 2
    monkeypatch.undo()
    stats, ledger = fine_tune(tmp_path)
    assert stats["resumed_from_step"] == 0 and stats["replayed_steps"] == 2 and stats["lost_steps_charged"] == 0
    assert dpsgd_steps(ledger) == TOTAL_STEPS
    assert stats["epsilon"] == pytest.approx(uninterrupted_epsilon(stats), rel=1e-12)


def test_replayed_updates_give_the_live_run_s_model_optimizer_and_ema_bitwise(tmp_path, monkeypatch):
    # The checkpoint after step 6 dies: steps 4-6 were released and applied, ckpt-3 is the newest.
    written = []
    crash_in_checkpoint_write(monkeypatch, 6, written)
    with pytest.raises(Crash):
        fine_tune(tmp_path, with_ema=True)
    live = written[-1]
    assert live["step"] == 6 and [path.name for path in list_checkpoints(tmp_path)] == ["ckpt-3.pt"]
    stats, _ = fine_tune(tmp_path, with_ema=True)
    replayed = next(payload for payload in written if payload is not live and payload["step"] == 6)
    assert stats["resumed_from_step"] == 3 and stats["replayed_steps"] == 3 and stats["lost_steps_charged"] == 0
    for part in ("model", "ema"):
        flat = {k: v for k, v in (live[part]["model"] if part == "ema" else live[part]).items()}
        other = replayed[part]["model"] if part == "ema" else replayed[part]
        assert all(torch.equal(flat[key], other[key]) for key in flat), part
    for index, state in live["optimizer"]["state"].items():
        assert all(torch.equal(value, replayed["optimizer"]["state"][index][key]) for key, value in state.items())
    assert replayed["journal_position"] == live["journal_position"] == 6
    # Not vacuous: the model after step 6 differs from the one after step 3.
    before = next(payload for payload in written if payload["step"] == 3)
    assert not all(torch.equal(before["model"][key], live["model"][key]) for key in live["model"])


@pytest.mark.parametrize("noise_multiplier", [0.0, 1.0])
def test_replaying_k_journalled_updates_from_a_checkpoint_reproduces_the_live_parameters(tmp_path, noise_multiplier):
    dataset = tiny_dataset(num_examples=40)

    def optimizer_of(model):
        return dpsgd.make_dp_optimizer(parameters=model.parameters(), lr=0.05, weight_decay=0.01,
                                       noise_multiplier=noise_multiplier, max_grad_norm=0.5, expected_batch_size=8,
                                       secure_mode=False, device=torch.device("cpu"))

    model = TinyNet()
    optimizer = optimizer_of(model)
    batches = [np.arange(8 * k, 8 * k + 8) for k in range(5)]
    with DPStepJournal(tmp_path / JOURNAL_NAME, header={"stage": "unit"}) as journal:
        for step, rows in enumerate(batches, 1):
            dpsgd.dp_sgd_step(model=model, optimizer=optimizer, per_example_loss=tiny_loss, batch_indices=rows,
                              load_inputs=load_rows(dataset), physical_batch_size=3,
                              before_release=lambda update, step=step: journal.record_step(step=step, update=update))
            if step == 2:
                checkpoint = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
        live = [p.detach().clone() for p in model.parameters()]
        entries = journal.replay_plan(checkpoint_step=2, position=2)
        assert [entry.step for entry in entries] == [3, 4, 5]

        resumed = TinyNet(seed=1)
        resumed.load_state_dict(checkpoint["model"])
        resumed_optimizer = optimizer_of(resumed)
        # A copy: loading keeps AdamW's step counters by reference, and the redo below loads it again.
        resumed_optimizer.load_state_dict(copy.deepcopy(checkpoint["optimizer"]))
        for entry in entries:
            dpsgd.apply_released_update(optimizer=resumed_optimizer, update=journal.load_update(entry))
    for got, want in zip(resumed.parameters(), live):
        assert torch.equal(got, want)
    # Taking steps 3-5 again on the same rows instead gives the live model only when there is no noise.
    redone = TinyNet(seed=1)
    redone.load_state_dict(checkpoint["model"])
    redone_optimizer = optimizer_of(redone)
    redone_optimizer.load_state_dict(checkpoint["optimizer"])
    for rows in batches[2:]:
        dpsgd.dp_sgd_step(model=redone, optimizer=redone_optimizer, per_example_loss=tiny_loss, batch_indices=rows,
                          load_inputs=load_rows(dataset), physical_batch_size=3)
    same = all(torch.allclose(got, want, atol=1e-6) for got, want in zip(redone.parameters(), live))
    assert same is (noise_multiplier == 0.0)


def test_a_gan_replays_its_discriminator_updates_and_generator_steps_exactly(tmp_path, monkeypatch):
    from privimage.config import load_config
    from privimage.models import build_gan
    from privimage.training import dp_finetune_gan

    # N = 40, q = 8 / 40: 0.8 epochs are 4 discriminator steps; the generator steps after steps 2 and 4.
    config = load_config("smoke", {
        "gan": {"latent_dim": 8, "generator_width": 4, "discriminator_width": 4, "update_ratio": 2},
        "finetune": {"delta": 1e-3, "batch_size": 8, "physical_batch_size": 16, "gan_epochs": 0.8,
                     "checkpoint_every": 1},
    })
    sensitive = tiny_dataset(num_examples=40)

    def fine_tune_gan():
        torch.manual_seed(0)
        generator, discriminator = build_gan(config.gan, image_channels=1, image_size=8, num_classes=3)
        ledger = tiny_ledger(sensitive, delta=1e-3)
        stats = dp_finetune_gan(generator=generator, discriminator=discriminator, sensitive=sensitive, ledger=ledger,
                                config=config, run_dir=tmp_path, target_epsilon=8.0, progress=False)
        return stats, ledger

    # The checkpoint after step 2 dies: the discriminator update and the generator step after it were applied.
    written = []
    crash_in_checkpoint_write(monkeypatch, 2, written)
    with pytest.raises(Crash):
        fine_tune_gan()
    live = written[-1]
    stats, ledger = fine_tune_gan()
    replayed = next(payload for payload in written if payload is not live and payload["step"] == 2)
    assert stats["resumed_from_step"] == 1 and stats["replayed_steps"] == 1 and stats["lost_steps_charged"] == 0
    assert dpsgd_steps(ledger) == 4 == stats["released_steps"]
    generator_live, generator_replayed = live["extra"]["generator"], replayed["extra"]["generator"]
    after_step_1 = written[0]["extra"]["generator"]
    # The generator step drew its latents afresh from the step's seed: the same images, the same update.
    assert all(torch.equal(generator_live[key], generator_replayed[key]) for key in generator_live)
    assert not all(torch.equal(generator_live[key], after_step_1[key]) for key in generator_live)
    assert all(torch.equal(live["model"][key], replayed["model"][key]) for key in live["model"])


def test_a_missing_update_is_charged_again_and_taken_with_fresh_noise(tmp_path, monkeypatch):
    fine_tune_until_crash_before_step_6(tmp_path, monkeypatch)
    # Step 5's update is gone (deleted by hand): step 4 is replayed, step 5 cannot be and is paid twice.
    (step_5,) = (tmp_path / UPDATES_DIR).glob("step-000005-*.pt")
    step_5.unlink()
    stats, ledger = fine_tune(tmp_path)
    assert stats["resumed_from_step"] == 3 and stats["replayed_steps"] == 1 and stats["lost_steps_charged"] == 1
    assert dpsgd_steps(ledger) == TOTAL_STEPS + 1 == journal_steps(tmp_path)
    assert stats["epsilon"] == pytest.approx(uninterrupted_epsilon(stats, TOTAL_STEPS + 1), rel=1e-12)
    assert stats["epsilon"] > uninterrupted_epsilon(stats)


def test_a_tampered_update_stops_the_resume_in_one_line(tmp_path, monkeypatch):
    fine_tune_until_crash_before_step_6(tmp_path, monkeypatch)
    (step_4,) = (tmp_path / UPDATES_DIR).glob("step-000004-*.pt")
    data = bytearray(step_4.read_bytes())
    data[-40] ^= 0x01
    step_4.write_bytes(bytes(data))
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    with pytest.raises(PrivacyError, match="SHA-256 differs from journal line 4") as error:
        fine_tune(tmp_path)
    assert "\n" not in str(error.value)
    # Refused before anything was written: no checkpoint, no journal line.
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


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
print(json.dumps({{"stats": {{k: stats[k] for k in ("steps", "resumed_from_step", "replayed_steps", "lost_steps_charged",
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
    # The steps released after the checkpoint are replayed: nothing is charged twice.
    assert stats["steps"] == TOTAL_STEPS and stats["resumed_from_step"] == checkpointed
    assert stats["replayed_steps"] == killed_at - checkpointed
    assert stats["lost_steps_charged"] == 0
    assert result["ledger_steps"] == TOTAL_STEPS == journal_steps(run_dir)
    assert stats["epsilon"] == pytest.approx(uninterrupted_epsilon(stats), rel=1e-12)
