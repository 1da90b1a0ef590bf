"""``privimage audit``: a faithful run folder passes; each way a privacy record can be wrong fails.

The run folders are written by ``privimage run`` itself, once per module, on
the smoke profile cut to a few steps; each test alters a copy the way a bug or
a tampering would, and checks that the audit names it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from privimage.cache import atomic_write_json
from privimage.cli import main
from privimage.privacy import PrivacyLedger
from privimage.run_audit import audit_run
from privimage.training.journal import JOURNAL_NAME, UPDATES_DIR, read_journal, update_file_name
from tiny_runs import tiny_profile

EPSILON = 10.0
# What a run writes from the sensitive data once fine-tuning ends (metrics.json too when it evaluates).
WRITTEN_AFTER_FINETUNING = ("ledger.json", "privacy.json", "synthetic.npz", "samples.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, module_cache):
    """Run folders that ``privimage run`` itself wrote: a private method with a query, one without, an ablation."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("pristine")
    profile = tiny_profile(root)
    for method, epsilon in (("privimage-d", EPSILON), ("dpdm", EPSILON), ("nonpriv-d", None)):
        budget = ["--epsilon", str(epsilon)] if epsilon is not None else []
        assert main(["run", "--profile", str(profile), "--method", method, *budget, "--no-evaluate",
                     "--out", str(root / method), "--json"]) == 0, method
    return root


@pytest.fixture
def copy_run(runs, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(runs / name, tmp_path / name))
    return copy


def audit_cli(capsys, run_dir: Path) -> tuple[int, dict]:
    code = main(["audit", "--run", str(run_dir), "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1])


def verdicts(result: dict) -> dict[str, bool]:
    return {check["name"]: check["passed"] for check in result["checks"]}


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- faithful runs


def test_a_faithful_private_run_passes_with_both_accountants(capsys, runs):
    code, result = audit_cli(capsys, runs / "privimage-d")
    assert code == 0 and result["status"] == "pass", result
    assert all(verdicts(result).values())
    assert {"semantic_query_recorded", "dpsgd_steps_match_journal", "noise_multiplier_calibrated",
            "dataset_hash", "epsilon_within_target", "checkpoints_carry_ledger",
            "released_updates_charged"} <= set(verdicts(result))
    ledger = PrivacyLedger.load(runs / "privimage-d" / "ledger.json")
    assert result["epsilon_rdp"] == pytest.approx(ledger.epsilon())
    assert result["epsilon_prv"] == pytest.approx(ledger.epsilon(accountant="prv"))
    # Calibration spends the target to within its tolerance; PRV is the tighter bound.
    assert 0.99 * EPSILON <= result["epsilon_rdp"] <= EPSILON
    assert result["epsilon_prv"] < result["epsilon_rdp"]
    assert result["delta"] == 1e-5


def test_a_method_without_query_passes_without_one(capsys, runs):
    code, result = audit_cli(capsys, runs / "dpdm")
    assert code == 0, result
    assert "no semantic query" in {c["name"]: c["detail"] for c in result["checks"]}["semantic_query_recorded"]


def test_human_output_lists_every_check(capsys, runs):
    assert main(["audit", "--run", str(runs / "dpdm")]) == 0
    out = capsys.readouterr().out
    assert "PASS  noise_multiplier_calibrated" in out and out.strip().splitlines()[-1].startswith("pass:")


def test_a_nonprivate_ablation_has_its_own_status(capsys, runs):
    code, result = audit_cli(capsys, runs / "nonpriv-d")
    assert code == 3 and result["status"] == "no guarantee"
    assert result["epsilon_rdp"] is None and result["passed"] is False


def test_a_nonprivate_run_claiming_a_guarantee_fails(capsys, copy_run):
    run_dir = copy_run("nonpriv-d")
    edit_json(run_dir / "privacy.json", lambda d: d.update(guarantee="differential privacy"))
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and verdicts(result) == {"privacy_json_says_no_guarantee": False}


# --------------------------------------------------------------------------- custody of derived artifacts


def test_derived_artifacts_without_a_ledger_fail(capsys, copy_run):
    run_dir = copy_run("privimage-d")
    (run_dir / "ledger.json").unlink()
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and result["status"] == "fail"
    detail = result["checks"][0]["detail"]
    assert "synthetic.npz" in detail and "finetune/ckpt-" in detail


def test_checkpoints_alone_without_a_ledger_fail(capsys, copy_run):
    run_dir = copy_run("dpdm")
    for name in WRITTEN_AFTER_FINETUNING:
        (run_dir / name).unlink()
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and not result["checks"][0]["passed"]
    assert "finetune/ckpt-" in result["checks"][0]["detail"]


def test_a_folder_with_nothing_derived_is_incomplete(capsys, copy_run):
    run_dir = copy_run("dpdm")
    shutil.rmtree(run_dir / "finetune")
    for name in WRITTEN_AFTER_FINETUNING:
        (run_dir / name).unlink()
    code, result = audit_cli(capsys, run_dir)
    assert code == 4 and result["status"] == "incomplete"


def test_a_checkpoint_holding_code_is_refused_not_run(capsys, copy_run, tmp_path):
    run_dir = copy_run("dpdm")
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    payload = {"format": "privimage-checkpoint/1", "ledger": Payload()}
    (run_dir / "finetune" / "ckpt-99.pt").write_bytes(pickle.dumps(payload, protocol=2))
    code, result = audit_cli(capsys, run_dir)
    assert not marker.exists()
    assert code == 1 and verdicts(result)["checkpoints_carry_ledger"] is False
    assert "pickled code" in {c["name"]: c["detail"] for c in result["checks"]}["checkpoints_carry_ledger"]


# --------------------------------------------------------------------------- the ledger disagrees with the run


def test_uncharged_released_steps_fail(capsys, copy_run):
    run_dir = copy_run("privimage-d")
    # Two steps released after the last checkpoint of a killed run, and a ledger that forgot them.
    with open(run_dir / "finetune" / JOURNAL_NAME, "a") as journal:
        journal.write('{"step": 99}\n{"step": 100}\n')
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and verdicts(result)["dpsgd_steps_match_journal"] is False
    assert verdicts(result)["noise_multiplier_calibrated"] is True


def test_an_update_altered_after_its_release_fails(capsys, copy_run):
    run_dir = copy_run("dpdm")
    # The updates no checkpoint holds yet stay on disk, to be replayed after a crash.
    kept = sorted((run_dir / "finetune" / UPDATES_DIR).glob("step-*.pt"))
    assert kept
    data = bytearray(kept[-1].read_bytes())
    data[-40] ^= 0x01
    kept[-1].write_bytes(bytes(data))
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and verdicts(result) == {**{k: True for k in verdicts(result)}, "released_updates_charged": False}
    assert "differs from journal line" in {c["name"]: c["detail"] for c in result["checks"]}["released_updates_charged"]


def test_a_released_update_that_no_journal_line_charges_fails(capsys, copy_run):
    run_dir = copy_run("dpdm")
    updates = run_dir / "finetune" / UPDATES_DIR
    steps = read_journal(run_dir / "finetune" / JOURNAL_NAME)[1]
    # An update written after the last journal line (the line was never written) is a release all the same.
    shutil.copy(sorted(updates.glob("step-*.pt"))[-1], updates / update_file_name(step=steps + 1, release=steps + 1))
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and verdicts(result)["released_updates_charged"] is False
    assert "no journal line charges" in {c["name"]: c["detail"] for c in result["checks"]}["released_updates_charged"]


def test_a_step_journalled_after_the_newest_checkpoint_must_keep_its_update(capsys, copy_run):
    run_dir = copy_run("dpdm")
    newest = max((run_dir / "finetune").glob("ckpt-*.pt"), key=lambda path: int(path.stem.split("-")[1]))
    payload = torch.load(newest, weights_only=True)
    # A checkpoint one step earlier: the last journalled step lives only in its update file.
    payload["journal_position"] -= 1
    torch.save(payload, newest)
    code, result = audit_cli(capsys, run_dir)
    assert code == 0 and "1 step(s) after ckpt-" in {c["name"]: c["detail"] for c in result["checks"]}[
        "released_updates_charged"]
    for update in (run_dir / "finetune" / UPDATES_DIR).glob("step-*.pt"):
        update.unlink()
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and verdicts(result)["released_updates_charged"] is False
    assert "has no update to replay" in {c["name"]: c["detail"] for c in result["checks"]}["released_updates_charged"]


def test_a_missing_journal_fails(capsys, copy_run):
    run_dir = copy_run("dpdm")
    (run_dir / "finetune" / JOURNAL_NAME).unlink()
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and verdicts(result)["dpsgd_steps_match_journal"] is False


def test_a_noise_multiplier_other_than_the_calibrated_one_fails(capsys, copy_run):
    run_dir = copy_run("dpdm")

    def double_sigma(ledger):
        for entry in ledger["entries"]:
            entry["noise_multiplier"] *= 2

    edit_json(run_dir / "ledger.json", double_sigma)
    code, result = audit_cli(capsys, run_dir)
    checks = verdicts(result)
    assert code == 1 and checks["noise_multiplier_calibrated"] is False
    # The doubled sigma spends less than recorded: the recorded epsilon no longer matches either.
    assert checks["epsilon_recorded"] is False and checks["epsilon_within_target"] is True


@pytest.mark.parametrize("factor", [0.98, 1.02])
def test_a_consistently_recorded_sigma_off_the_calibration_fails(capsys, copy_run, factor):
    run_dir = copy_run("dpdm")

    def scale_sigma(ledger):
        for entry in ledger["entries"]:
            entry["noise_multiplier"] *= factor

    edit_json(run_dir / "ledger.json", scale_sigma)
    journal = run_dir / "finetune" / JOURNAL_NAME
    header, *lines = journal.read_text().splitlines(keepends=True)
    record = json.loads(header)
    record["header"]["noise_multiplier"] *= factor
    journal.write_text(json.dumps(record) + "\n" + "".join(lines))
    code, result = audit_cli(capsys, run_dir)
    checks = verdicts(result)
    # Every record agrees; the sigma either overspends the target or wastes what calibration would spend.
    assert code == 1 and checks["noise_multiplier_calibrated"] is False
    assert checks["dpsgd_steps_match_journal"] is True
    assert checks["epsilon_within_target"] is (factor > 1)


def test_a_ledger_without_the_query_of_a_querying_method_fails(capsys, copy_run):
    run_dir = copy_run("privimage-d")
    edit_json(run_dir / "ledger.json",
              lambda d: d.update(entries=[e for e in d["entries"] if e["mechanism"] != "semantic_query"]))
    code, result = audit_cli(capsys, run_dir)
    checks = verdicts(result)
    assert code == 1 and checks["semantic_query_recorded"] is False
    assert result["epsilon_rdp"] < json.loads((run_dir / "privacy.json").read_text())["epsilon"]


def test_a_query_with_other_parameters_than_the_config_fails(capsys, copy_run):
    run_dir = copy_run("privimage-d")

    def weaker_query(ledger):
        query = ledger["entries"][0]
        query["query_noise_multiplier"] = 500.0
        query["noise_std"] = 500.0

    edit_json(run_dir / "ledger.json", weaker_query)
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and verdicts(result)["semantic_query_recorded"] is False


def test_a_ledger_of_another_dataset_fails(capsys, copy_run):
    run_dir = copy_run("dpdm")

    def other_dataset(ledger):
        ledger["dataset_hash"] = "f" * 64
        for entry in ledger["entries"]:
            entry["dataset_hash"] = "f" * 64

    edit_json(run_dir / "ledger.json", other_dataset)
    code, result = audit_cli(capsys, run_dir)
    checks = verdicts(result)
    assert code == 1 and checks["dataset_hash"] is False
    # The journal and checkpoints name the real dataset, so they disagree with this ledger too.
    assert checks["dpsgd_steps_match_journal"] is False and checks["checkpoints_carry_ledger"] is False


def test_epsilon_above_the_target_fails(capsys, copy_run):
    run_dir = copy_run("dpdm")
    edit_json(run_dir / "run.json", lambda d: d.update(epsilon=5.0))
    code, result = audit_cli(capsys, run_dir)
    checks = verdicts(result)
    assert code == 1 and checks["epsilon_within_target"] is False
    assert result["epsilon_rdp"] > 5.0 and result["target_epsilon"] == 5.0


def test_a_misreported_epsilon_fails(capsys, copy_run):
    run_dir = copy_run("dpdm")
    edit_json(run_dir / "privacy.json", lambda d: d.update(epsilon=1.0))
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and verdicts(result) == {**{k: True for k in verdicts(result)}, "epsilon_recorded": False}


def test_a_tampered_ledger_is_a_failed_check(capsys, copy_run):
    run_dir = copy_run("privimage-d")
    edit_json(run_dir / "ledger.json", lambda d: d["entries"][0].update(noise_std=1.0))
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and verdicts(result)["ledger_valid"] is False and result["epsilon_rdp"] is None


def test_metrics_must_say_they_are_outside_the_guarantee(capsys, copy_run):
    run_dir = copy_run("dpdm")
    atomic_write_json(run_dir / "metrics.json", {"fid": 12.0})
    code, result = audit_cli(capsys, run_dir)
    assert code == 1 and verdicts(result)["metrics_labelled_reporting_only"] is False
    atomic_write_json(run_dir / "metrics.json", {"fid": 12.0, "reporting_only": "uses the test split"})
    code, result = audit_cli(capsys, run_dir)
    assert code == 0 and verdicts(result)["metrics_labelled_reporting_only"] is True


def test_a_private_run_without_a_target_fails_and_still_prints(capsys, copy_run):
    run_dir = copy_run("dpdm")
    edit_json(run_dir / "run.json", lambda d: d.update(epsilon=None))
    assert main(["audit", "--run", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  epsilon_within_target" in out and "target none" in out


def test_an_interrupted_run_names_its_unaccounted_steps(capsys, copy_run):
    run_dir = copy_run("dpdm")
    for path in [*(run_dir / name for name in WRITTEN_AFTER_FINETUNING), *(run_dir / "finetune").glob("ckpt-*.pt")]:
        path.unlink()
    steps = read_journal(run_dir / "finetune" / JOURNAL_NAME)[1]
    code, result = audit_cli(capsys, run_dir)
    assert code == 4 and f"lists {steps} released DP-SGD steps" in result["checks"][0]["detail"]


# --------------------------------------------------------------------------- unreadable input


@pytest.mark.parametrize("damage", ["missing", "garbled", "unknown method"])
def test_an_unreadable_run_folder_is_a_one_line_error(capsys, copy_run, damage):
    run_dir = copy_run("dpdm")
    if damage == "missing":
        (run_dir / "run.json").unlink()
    elif damage == "garbled":
        (run_dir / "run.json").write_text('{"method": "dp')
    else:
        edit_json(run_dir / "run.json", lambda d: d.update(method="dp-magic"))
    code = main(["audit", "--run", str(run_dir), "--json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1


def test_audit_run_library_call_matches_the_command(runs):
    audit = audit_run(run_dir=runs / "dpdm")
    assert audit.status == "pass" and audit.exit_code == 0 and not audit.failed
