"""Fault injection on real runs: killed, failing or out of disk mid-way, the same command resumes and completes.

Every test runs the smoke profile cut to seven DP-SGD steps with a checkpoint
after each and twenty samples in two batches. What is injected and where:

- SIGKILL from outside a real ``python -m privimage run`` between two steps;
- SIGKILL inside a checkpoint write, half the temporary file written;
- an exception from the sampler on its second batch;
- a full disk (``OSError(ENOSPC)``) in a checkpoint, released-update, journal
  (whole line or half of it) or ``synthetic.npz`` write;
- a checkpoint or run folder whose config, dataset hash or ledger disagrees;
- ``finetune.secure_mode`` on and off: which generators drew the DP noise, and what the ledger says.

The account a resumed run must give is fixed by `privimage.training.journal`:
every step released before the crash is charged once and, if it came after the
newest checkpoint, replayed from its journalled update rather than drawn again.
So at every one of these crash points the resumed run charges exactly the
uninterrupted run's steps and its epsilon equals the uninterrupted run's
exactly; ``privimage audit`` must agree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from disk_faults import FailingFile, disk_full, fill_the_disk_in_journal_line
import privimage.diffusion
import privimage.semantics.query
from privimage.cli import main
from privimage.config import load_config
from privimage.errors import PrivacyError
from privimage.pipeline import run_method
from privimage.privacy import PrivacyLedger
from privimage.privacy.noise import SecureNoiseGenerator
from privimage.run_audit import audit_run
from privimage.training import dpsgd
from privimage.training.checkpoint import list_checkpoints, load_checkpoint
from privimage.training.journal import JOURNAL_NAME, read_journal

REPO = Path(__file__).resolve().parent.parent
EPSILON = 5.0
# q = 32 / 4000 and 0.05 epochs: T = ceil(6.25) = 7 logical DP-SGD steps, a checkpoint after each.
TOTAL_STEPS = 7
FINETUNE = {"batch_size": 32, "physical_batch_size": 32, "epochs": 0.05, "checkpoint_every": 1}
# Two sampling batches, so a failure "on the second batch" leaves one batch done.
SAMPLING = {"num_samples": 20, "batch_size": 10, "ddim_steps": 2}

needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the file behind a descriptor in /proc")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A cache root shared by the module and the cut-down smoke profile as a YAML file."""
    root = tmp_path_factory.mktemp("faults")
    profile = yaml.safe_load((REPO / "privimage" / "configs" / "smoke.yaml").read_text())
    profile["finetune"].update(FINETUNE)
    profile["sampling"].update(SAMPLING)
    profile_path = root / "faults.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    patch = pytest.MonkeyPatch()
    patch.setenv("PRIVIMAGE_CACHE", str(root / "cache"))
    yield {"root": root, "profile": profile_path}
    patch.undo()


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    """The run every faulty run is compared with: the same command, never interrupted."""
    config = load_config(str(workspace["profile"]))
    result = run_method(method="dpdm", config=config, epsilon=EPSILON, out_dir=workspace["root"] / "uninterrupted",
                        evaluate=False, progress=False)
    record = read_run(result.run_dir)
    assert record["finetuning"]["steps"] == TOTAL_STEPS == record["ledger_steps"] == record["journal_steps"]
    assert record["finetuning"]["lost_steps_charged"] == 0
    return record


# --------------------------------------------------------------------------- helpers


def run_argv(out: Path, profile: Path) -> list[str]:
    return ["run", "--profile", str(profile), "--method", "dpdm", "--epsilon", str(EPSILON), "--no-evaluate",
            "--out", str(out), "--json"]


def cli(capsys, argv: list[str]) -> tuple[int, str]:
    """Run the command in this process: (exit code, standard error)."""
    code = main(argv)
    return code, capsys.readouterr().err


def read_run(run_dir: Path) -> dict:
    """What a finished run says about its own privacy account."""
    ledger = json.loads((run_dir / "ledger.json").read_text())
    return {
        "run_dir": run_dir,
        "privacy": json.loads((run_dir / "privacy.json").read_text()),
        "finetuning": json.loads((run_dir / "resources.json").read_text())["finetuning"],
        "ledger": ledger,
        "ledger_steps": sum(e["steps"] for e in ledger["entries"] if e["mechanism"] == "dp_sgd"),
        "journal_steps": read_journal(run_dir / "finetune" / JOURNAL_NAME)[1],
    }


def epsilon_of_steps(reference: dict, steps: int) -> float:
    """Epsilon of ``steps`` DP-SGD steps with the reference run's sigma and q (dpdm makes no query)."""
    before = reference["ledger"]
    ledger = PrivacyLedger(delta=before["delta"], dataset_hash=before["dataset_hash"],
                           num_examples=before["num_examples"])
    finetuning = reference["finetuning"]
    ledger.record_dpsgd_steps(noise_multiplier=finetuning["noise_multiplier"], sample_rate=finetuning["sample_rate"],
                              steps=steps, generator="os-entropy")
    return ledger.epsilon()


def newest_checkpoint_step(run_dir: Path) -> int:
    checkpoints = list_checkpoints(run_dir / "finetune")
    return int(checkpoints[0].stem.split("-")[1]) if checkpoints else 0


def temporary_files(run_dir: Path) -> list[str]:
    return sorted(path.name for path in run_dir.rglob(".*.tmp"))


def assert_account(record: dict, *, uninterrupted: dict, resumed_from: int, replayed: int) -> None:
    """The resumed run did all T steps, replayed what it had released, and spent the uninterrupted epsilon."""
    finetuning = record["finetuning"]
    assert finetuning["steps"] == TOTAL_STEPS
    assert finetuning["resumed_from_step"] == resumed_from
    assert finetuning["replayed_steps"] == replayed
    assert finetuning["lost_steps_charged"] == 0
    assert record["ledger_steps"] == TOTAL_STEPS == record["journal_steps"] == finetuning["released_steps"]
    assert finetuning["noise_multiplier"] == uninterrupted["finetuning"]["noise_multiplier"]
    # Nothing released twice: exactly the uninterrupted run's epsilon.
    assert record["privacy"]["epsilon"] == uninterrupted["privacy"]["epsilon"]
    assert record["privacy"]["epsilon_prv"] == uninterrupted["privacy"]["epsilon_prv"]


def assert_audit_agrees(record: dict) -> None:
    """``privimage audit`` re-derives the same epsilon, finds every released step charged, and passes."""
    audit = audit_run(run_dir=record["run_dir"])
    checks = {check.name: check.passed for check in audit.checks}
    assert audit.epsilon_rdp == pytest.approx(record["privacy"]["epsilon"], rel=1e-9)
    assert checks["dpsgd_steps_match_journal"] and checks["released_updates_charged"]
    assert checks["epsilon_recorded"] and checks["checkpoints_carry_ledger"]
    assert record["privacy"]["epsilon"] <= EPSILON and record["privacy"]["epsilon_prv"] <= EPSILON
    assert [name for name, passed in checks.items() if not passed] == []
    assert audit.status == "pass"


def fail_atomic_writes(monkeypatch, prefix: str) -> None:
    """Make the atomic writer's temporary file for a name starting ``prefix`` hit a full disk half-way."""
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(prefix):
            return FailingFile(handle, disk_full)
        return handle

    monkeypatch.setattr(os, "fdopen", fdopen)


# Runs ``privimage run`` in a child that SIGKILLs itself half-way through writing one checkpoint.
KILLED_IN_A_WRITE = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from disk_faults import FailingFile

real_fdopen = os.fdopen

def fdopen(fd, *args, **kwargs):
    handle = real_fdopen(fd, *args, **kwargs)
    if os.path.basename(os.readlink(f"/proc/self/fd/{{fd}}")).startswith({prefix!r}):
        return FailingFile(handle, lambda: os.kill(os.getpid(), signal.SIGKILL))
    return handle

os.fdopen = fdopen
from privimage.cli import main
sys.exit(main(sys.argv[1:]))
"""


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_sigkill_between_two_steps_resumes_to_the_uninterrupted_epsilon(workspace, uninterrupted, capsys):
    out = workspace["root"] / "sigkill-between-steps"
    argv = run_argv(out, workspace["profile"])
    process = subprocess.Popen([sys.executable, "-m", "privimage", *argv], env=child_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / "finetune" / JOURNAL_NAME

    def between_steps() -> bool:
        # Every released step is checkpointed and the run is past step 3, before its last.
        try:
            steps = read_journal(journal)[1]
        except (FileNotFoundError, PrivacyError):  # not created, or its header not written yet
            return False
        return 3 <= steps < TOTAL_STEPS and newest_checkpoint_step(out) == steps

    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if between_steps():
            # Freeze it, check the state it is frozen in, then kill it there.
            process.send_signal(signal.SIGSTOP)
            if between_steps():
                break
            process.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    killed_at = read_journal(journal)[1]
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "ledger.json").exists() and not (out / "synthetic.npz").exists()

    code, err = cli(capsys, argv)
    assert code == 0, err
    record = read_run(out)
    assert_account(record, uninterrupted=uninterrupted, resumed_from=killed_at, replayed=0)
    assert_audit_agrees(record)
    with np.load(out / "synthetic.npz") as archive:
        assert archive["x"].shape == (20, 1, 32, 32) and np.bincount(archive["y"]).tolist() == [2] * 10


@pytest.mark.slow
@needs_proc
def test_sigkill_inside_a_checkpoint_write_resumes_from_the_previous_checkpoint(workspace, uninterrupted, capsys,
                                                                                 tmp_path):
    out = workspace["root"] / "sigkill-in-checkpoint-write"
    argv = run_argv(out, workspace["profile"])
    script = tmp_path / "killed_in_a_write.py"
    script.write_text(KILLED_IN_A_WRITE.format(tests=str(Path(__file__).parent), prefix=".ckpt-4.pt."))
    child = subprocess.run([sys.executable, str(script), *argv], env=child_env(), capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]

    # Step 4 was released (journalled), its checkpoint is half a temporary file; the final names are untouched.
    finetune = out / "finetune"
    assert read_journal(finetune / JOURNAL_NAME)[1] == 4
    assert [path.name for path in list_checkpoints(finetune)] == ["ckpt-3.pt", "ckpt-2.pt"]
    (partial,) = finetune.glob(".ckpt-4.pt.*.tmp")
    assert 0 < partial.stat().st_size < (finetune / "ckpt-3.pt").stat().st_size
    assert [load_checkpoint(path)["step"] for path in list_checkpoints(finetune)] == [3, 2]

    code, err = cli(capsys, argv)
    assert code == 0, err
    assert temporary_files(out) == []
    record = read_run(out)
    # Resumed from step 3: step 4 was released before the kill and is replayed from its update, not drawn again.
    assert_account(record, uninterrupted=uninterrupted, resumed_from=3, replayed=1)
    assert_audit_agrees(record)


# --------------------------------------------------------------------------- sampling


class SamplerFailure(RuntimeError):
    pass


def test_an_exception_inside_sampling_leaves_no_synthetic_set_and_the_rerun_spends_nothing(
        workspace, monkeypatch, capsys):
    out = workspace["root"] / "sampler-fails"
    argv = run_argv(out, workspace["profile"])
    real_sample = privimage.diffusion.ddim_sample
    first_attempt = []

    def failing_sample(*args, **kwargs):
        if len(first_attempt) == 1:
            raise SamplerFailure("sampler failed on batch 2")
        first_attempt.append(real_sample(*args, **kwargs))
        return first_attempt[-1]

    monkeypatch.setattr(privimage.diffusion, "ddim_sample", failing_sample)
    with pytest.raises(SamplerFailure, match="batch 2"):
        main(argv)
    capsys.readouterr()
    # Nothing that looks like a finished synthetic set, and the privacy record is already complete.
    assert not (out / "synthetic.npz").exists() and not (out / "samples.png").exists()
    assert temporary_files(out) == []
    spent = read_journal(out / "finetune" / JOURNAL_NAME)[1]
    epsilon = json.loads((out / "privacy.json").read_text())["epsilon"]
    assert spent == TOTAL_STEPS

    monkeypatch.undo()
    code, err = cli(capsys, argv)
    assert code == 0, err
    record = read_run(out)
    # Resumed from the fine-tuned checkpoint: no DP-SGD step run again, the same account.
    assert record["finetuning"]["resumed_from_step"] == TOTAL_STEPS
    assert record["journal_steps"] == record["ledger_steps"] == spent
    assert record["privacy"]["epsilon"] == epsilon
    with np.load(out / "synthetic.npz") as archive:
        images, labels = archive["x"], archive["y"]
    assert images.shape == (20, 1, 32, 32) and np.bincount(labels).tolist() == [2] * 10
    # The same fine-tuned model and sampling seed: the batch done before the failure comes out identical.
    first_batch = ((first_attempt[0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(images[: len(first_batch)], first_batch)


# --------------------------------------------------------------------------- full disk


def fill_the_disk_in_the_journal(monkeypatch, *, record: str, torn: bool) -> None:
    """The journal line holding ``record`` hits a full disk, after half of it (``torn``) or none of it landed."""
    fill_the_disk_in_journal_line(monkeypatch, record=record, torn=torn)


# Where the disk fills -> (file named in the error, checkpoints left, journal steps left, step resumed from,
# steps replayed from their journalled updates).
FULL_DISK = {
    # Step 4 is released and applied, its checkpoint cannot be written: step 4 is replayed.
    "checkpoint": ("ckpt-4.pt", [3, 2], 4, 3, 1),
    # Step 4's update cannot be written: nothing was released, step 4 is taken afresh.
    "update": ("step-000004-release-000004.pt", [3, 2], 3, 3, 0),
    # Step 4's update is on disk but its journal line is not: the update is charged on resume and replayed.
    "journal step": (JOURNAL_NAME, [3, 2], 3, 3, 1),
    # Half of step 4's line landed: it counts, is completed from the update on resume, and replayed.
    "torn journal step": (JOURNAL_NAME, [3, 2], 4, 3, 1),
    # The journal's first line is cut short: no step was released, the re-run starts the journal again.
    "journal header": (JOURNAL_NAME, [], None, 0, 0),
    # Fine-tuning is complete; only the synthetic set is missing.
    "synthetic set": ("synthetic.npz", [TOTAL_STEPS, TOTAL_STEPS - 1], TOTAL_STEPS, TOTAL_STEPS, 0),
}


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("where", list(FULL_DISK))
def test_a_full_disk_is_a_one_line_error_and_the_rerun_completes(workspace, uninterrupted, monkeypatch, capsys,
                                                                 where):
    failed_file, checkpoints_left, journal_left, resumed_from, replayed = FULL_DISK[where]
    out = workspace["root"] / f"disk-full-{where.replace(' ', '-')}"
    argv = run_argv(out, workspace["profile"])
    if where == "checkpoint":
        fail_atomic_writes(monkeypatch, ".ckpt-4.pt.")
    elif where == "update":
        fail_atomic_writes(monkeypatch, ".step-000004-release-000004.pt.")
    elif where in ("journal step", "torn journal step"):
        fill_the_disk_in_the_journal(monkeypatch, record='{"step": 4,', torn=where.startswith("torn"))
    elif where == "journal header":
        fill_the_disk_in_the_journal(monkeypatch, record='"header"', torn=True)
    else:
        fail_atomic_writes(monkeypatch, ".synthetic.npz.")

    code, err = cli(capsys, argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: cannot write ")
    assert failed_file in err and "No space left on device" in err
    assert temporary_files(out) == []
    finetune = out / "finetune"
    # The checkpoints written before are intact and load.
    assert [load_checkpoint(path)["step"] for path in list_checkpoints(finetune)] == checkpoints_left
    if journal_left is None:
        with pytest.raises(PrivacyError, match="not a DP-SGD journal"):
            read_journal(finetune / JOURNAL_NAME)
    else:
        assert read_journal(finetune / JOURNAL_NAME)[1] == journal_left
    assert (out / "ledger.json").exists() is (where == "synthetic set")
    assert not (out / "synthetic.npz").exists()

    monkeypatch.undo()
    code, err = cli(capsys, argv)
    assert code == 0, err
    record = read_run(out)
    assert_account(record, uninterrupted=uninterrupted, resumed_from=resumed_from, replayed=replayed)
    assert_audit_agrees(record)
    assert (out / "synthetic.npz").is_file()


def test_a_journal_cut_short_in_its_header_released_nothing_and_starts_again(tmp_path):
    from privimage.training.journal import DPStepJournal

    header = {"stage": "demo", "run_hash": "abc", "noise_multiplier": 1.25}
    path = tmp_path / JOURNAL_NAME
    path.write_bytes(b'{"header": {"noise_multi')
    with DPStepJournal(path, header=header) as journal:
        assert journal.steps == 0
        journal.record_step(step=1, update=[torch.zeros(3)])
    assert read_journal(path) == (header, 1)
    # Once the header is whole, a torn step line is a released step, never dropped.
    with open(path, "ab") as handle:
        handle.write(b'{"st')
    with DPStepJournal(path, header=header) as journal:
        assert journal.steps == 2


# --------------------------------------------------------------------------- foreign checkpoints


def tamper_newest_checkpoint(run_dir: Path, change) -> None:
    path = list_checkpoints(run_dir / "finetune")[0]
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def double_the_ledgers_sigma(payload):
    for entry in payload["ledger"]["entries"]:
        entry["noise_multiplier"] *= 2


def other_learning_rate(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    config["finetune"]["lr"] *= 2
    (run_dir / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, message", [
    ("checkpoint of another config", "belongs to another run: its run_hash"),
    ("checkpoint of another dataset", "belongs to another run: its dataset_hash"),
    ("checkpoint ledger disagrees", "its privacy ledger disagrees"),
    ("run folder of another config", "was run with another config"),
])
def test_a_checkpoint_or_folder_that_disagrees_with_the_run_is_refused(workspace, uninterrupted, capsys, tmp_path,
                                                                        damage, message):
    run_dir = Path(shutil.copytree(uninterrupted["run_dir"], tmp_path / "run"))
    if damage == "checkpoint of another config":
        tamper_newest_checkpoint(run_dir, lambda payload: payload.update(run_hash="0" * 16))
    elif damage == "checkpoint of another dataset":
        tamper_newest_checkpoint(run_dir, lambda payload: payload.update(dataset_hash="f" * 64))
    elif damage == "checkpoint ledger disagrees":
        tamper_newest_checkpoint(run_dir, double_the_ledgers_sigma)
    else:
        other_learning_rate(run_dir)
    before = {path.relative_to(run_dir): path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}

    code, err = cli(capsys, run_argv(run_dir, workspace["profile"]))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert message in err
    # Refused before anything ran: no step released, no file of the run rewritten.
    after = {path.relative_to(run_dir): path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    assert after == before


# --------------------------------------------------------------------------- secure noise


@pytest.mark.slow
@pytest.mark.parametrize("secure_mode, name", [(True, "secure"), (False, "os-entropy")])
def test_secure_mode_draws_every_dp_noise_from_secret_seeds_and_the_ledger_names_the_generator(
        workspace, monkeypatch, secure_mode, name):
    import secrets

    drawn: list[int] = []
    real_randbits = secrets.randbits

    def randbits(bits):
        drawn.append(real_randbits(bits))
        return drawn[-1]

    query_generators, optimizers, samplers = [], [], []

    def spy(target, name_, log):
        real = getattr(target, name_)

        def wrapper(*args, **kwargs):
            log.append(real(*args, **kwargs))
            return log[-1]

        monkeypatch.setattr(target, name_, wrapper)

    monkeypatch.setattr(secrets, "randbits", randbits)
    spy(privimage.semantics.query, "dp_noise_generator", query_generators)
    spy(dpsgd, "make_dp_optimizer", optimizers)
    spy(dpsgd, "poisson_sampler", samplers)
    config = load_config(str(workspace["profile"]), {"finetune.secure_mode": secure_mode, "pretrain.steps": 2,
                                                      "finetune.epochs": 0.02})
    result = run_method(method="privimage-d", config=config, epsilon=EPSILON,
                        out_dir=workspace["root"] / f"privimage-d-{name}", evaluate=False, progress=False)

    # The privacy record names the generator of every mechanism: the query and each DP-SGD entry.
    ledger = json.loads((result.run_dir / "ledger.json").read_text())
    assert sorted(e["mechanism"] for e in ledger["entries"]) == ["dp_sgd", "semantic_query"]
    assert {e["generator"] for e in ledger["entries"]} == {name}
    assert json.loads((result.run_dir / "resources.json").read_text())["finetuning"]["noise_generator"] == name
    privacy = json.loads((result.run_dir / "privacy.json").read_text())
    assert privacy["noise_generators"] == [name] and privacy["secure_mode"] is secure_mode
    audit = audit_run(run_dir=result.run_dir)
    assert audit.status == "pass" and {c.name: c.passed for c in audit.checks}["noise_generator"]

    # The histogram noise: a Philox stream keyed with 128 secret bits, or PCG64 from numpy's OS-entropy seed.
    (query_generator,) = query_generators
    if secure_mode:
        assert isinstance(query_generator, SecureNoiseGenerator)
        key = query_generator.bit_generator.state["state"]["key"]
        assert int(key[0]) + (int(key[1]) << 64) in drawn
    else:
        assert not isinstance(query_generator, SecureNoiseGenerator)
        assert query_generator.bit_generator.seed_seq.entropy not in (None, config.seed)
    # DP-SGD noise and Poisson sampling: torch generators seeded from secrets, never the experiment seed.
    (optimizer,), (sampler,) = optimizers, samplers
    assert optimizer.secure_mode is secure_mode
    for generator in (optimizer.generator, sampler.generator):
        assert generator is not torch.default_generator and generator.initial_seed() in drawn
    assert optimizer.generator is not sampler.generator
