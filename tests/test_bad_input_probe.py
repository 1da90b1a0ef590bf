"""The inputs a new-user probe found still ending in a traceback, a hang or a wrong answer (issue 25, part 2).

Each numbered case of the probe has a test here: one ``error:`` line and exit 2
(or a failed audit check, exit 1), in under 10 seconds. A hypothesis property
test drives the accounting commands with arbitrary numbers, and a corruption test
damages every JSON file of a finished smoke run, then resumes and audits it.
The refusal helpers and the tripwire are those of ``test_bad_input``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from privimage.cli import main
from privimage.privacy import PrivacyLedger
from tiny_runs import tiny_profile
from test_bad_input import TrainingStarted, assert_nothing_looks_complete, refused, run_argv, save_npz, tripwire  # noqa: F401

# Every refusal (and every accepted call of the property test) must come back within this.
SECONDS = 10.0


def timed(call):
    """``call()``'s result and the wall-clock seconds it took."""
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def no_sensitive_read(monkeypatch):
    """Fail the test if the sensitive training set is read (by ``run`` or ``select``)."""
    import privimage.data
    import privimage.pipeline

    def tripped(*args, **kwargs):
        raise TrainingStarted("the sensitive training set was read before the output folder was checked")

    monkeypatch.setattr(privimage.data, "load_sensitive_train", tripped)
    monkeypatch.setattr(privimage.pipeline, "load_sensitive_train", tripped)


# --------------------------------------------------------------------------- run folders, made once per module


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished DPDM run on the smoke profile cut to a few DP-SGD steps (no pre-training, no query)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("finished")
    out = root / "run"
    argv = ["run", "--profile", str(tiny_profile(root)), "--method", "dpdm", "--epsilon", "5", "--no-evaluate", "--out"]
    assert main([*argv, str(out), "--json"]) == 0
    return out, argv


def private_copy(run, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of a module's run folder and the command that resumes it."""
    source, argv = run
    out = Path(shutil.copytree(source, tmp_path / "run"))
    return out, [*argv, str(out), "--json"]


@pytest.fixture
def copy_finished(finished_run, tmp_path, capsys):
    capsys.readouterr()
    return private_copy(finished_run, tmp_path)


def audit(capsys, run_dir: Path) -> tuple[int, dict | None, str]:
    """Exit code, JSON result (None when refused) and stderr of ``privimage audit``."""
    code = main(["audit", "--run", str(run_dir), "--json"])
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    return code, (json.loads(out[-1]) if code != 2 and out else None), captured.err


def failed_checks(result: dict) -> set[str]:
    return {check["name"] for check in result["checks"] if not check["passed"]}


# --------------------------------------------------------------------------- 1, 2: accounting that exploded


def test_1_a_dry_run_at_an_absurd_epsilon_is_refused_in_seconds(capsys, tmp_path):
    # Calibrating to epsilon 1e12 used to halve sigma until the PRV grid took 17 PiB; it now stops at a floor.
    argv = ["run", "--method", "privimage-d", "--epsilon", "1e12", "--profile", "smoke", "--dry-run", "--json",
            "--data-root", str(tmp_path)]
    _, seconds = timed(lambda: refused(capsys, argv, mentions="noise multiplier below 0.001"))
    assert seconds < SECONDS


def test_1_a_real_run_at_an_unmeetable_budget_is_refused_before_any_work(capsys, tmp_path, tripwire):
    # The dry run's calibration runs first, so neither the query nor pre-training spends anything.
    out = tmp_path / "run"
    refused(capsys, run_argv(out, method="privimage-d", epsilon="1e12"), mentions="noise multiplier")
    assert_nothing_looks_complete(out)


def test_2_prv_epsilon_with_a_tiny_sigma_is_refused_in_seconds_and_rdp_still_answers(capsys):
    argv = ["privacy", "epsilon", "--noise-multiplier", "0.01", "--sample-rate", "0.016", "--steps", "13",
            "--delta", "1e-5"]
    line, seconds = timed(lambda: refused(capsys, [*argv, "--accountant", "prv"], mentions="grid points"))
    assert seconds < SECONDS and "1.66e+08" in line
    # The RDP bound of the same composition is still given (a huge, valid epsilon).
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epsilon"] > 100


def test_2_the_prv_bound_keeps_the_settings_the_profiles_use(capsys):
    from privimage.privacy.accounting import MAX_PRV_DOMAIN_POINTS, prv_domain_points

    # The paper profile's CIFAR-10 schedule at epsilon 10 (q = 0.328, T = 152, sigma 2.30) with its query.
    history = [(2.302734375, 0.32768, 152), (484.0, 1.0, 1)]
    assert prv_domain_points(history=history, delta=1e-5) < MAX_PRV_DOMAIN_POINTS / 10
    assert prv_domain_points(history=[(0.01, 0.016, 13)], delta=1e-5) > MAX_PRV_DOMAIN_POINTS


# --------------------------------------------------------------------------- 3: an audit that exploded


def test_3_an_audit_of_a_ledger_charging_1e9_steps_fails_a_check(capsys, copy_finished):
    out, _ = copy_finished
    ledger = json.loads((out / "ledger.json").read_text())
    next(entry for entry in ledger["entries"] if entry["mechanism"] == "dp_sgd")["steps"] = 10**9
    (out / "ledger.json").write_text(json.dumps(ledger))
    (code, result, err), seconds = timed(lambda: audit(capsys, out))
    assert code == 1 and result["status"] == "fail" and not err, (code, err)
    # RDP bounds it (far above target); PRV, only a cross-check, says it cannot, in fixed time.
    assert {"dpsgd_steps_match_journal", "epsilon_within_target"} <= set(failed_checks(result))
    accountable = next(check for check in result["checks"] if check["name"] == "epsilon_accountable")
    assert "PRV cross-check unavailable" in accountable["detail"] and result["epsilon_prv"] is None
    assert seconds < SECONDS


def test_a_finished_run_records_an_unavailable_prv_cross_check_instead_of_failing(capsys, copy_finished, monkeypatch):
    # A composition whose PRV grid is too large must not cost a finished run its outputs: privacy.json says so.
    from privimage.privacy import accounting

    out, _ = copy_finished
    monkeypatch.setattr(accounting, "MAX_PRV_DOMAIN_POINTS", 1.0)
    ledger = PrivacyLedger.load(out / "ledger.json")
    epsilon_prv, reason = ledger.prv_cross_check()
    assert epsilon_prv is None and "grid points" in reason
    privacy = json.loads((out / "privacy.json").read_text())
    privacy.update({"epsilon_prv": None, "epsilon_prv_unavailable": reason})
    (out / "privacy.json").write_text(json.dumps(privacy))
    code, result, err = audit(capsys, out)
    assert code == 0 and result["status"] == "pass", result
    # A value recorded where PRV cannot bound the ledger is a wrong record.
    privacy["epsilon_prv"] = 1.0
    (out / "privacy.json").write_text(json.dumps(privacy))
    code, result, _ = audit(capsys, out)
    assert code == 1 and "epsilon_recorded" in failed_checks(result)


# --------------------------------------------------------------------------- 4: resuming a damaged folder


@pytest.mark.parametrize("damage", ["run.json truncated", "run.json is a list", "pretraining_data.json lacks data"])
def test_4_resuming_a_damaged_run_folder_is_one_line_and_the_audit_fails_it(capsys, copy_finished, tripwire, damage):
    out, argv = copy_finished
    name = damage.split()[0]
    text = (out / name).read_text()
    (out / name).write_text({"run.json truncated": text[: len(text) // 2], "run.json is a list": "[]",
                             "pretraining_data.json lacks data": "{}"}[damage])
    _, seconds = timed(lambda: refused(capsys, argv, mentions=name))
    assert seconds < SECONDS
    code, result, err = audit(capsys, out)
    if name == "run.json":
        # Not a run folder any more: one line, exit 2.
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    else:
        assert code == 1 and "pretraining_data_recorded" in failed_checks(result)


# --------------------------------------------------------------------------- 5: labels that are not classes


@pytest.mark.parametrize("labels, names", [([0, 30_000_000], None), ([0, 2], None), ([-1, 0], None),
                                           ([0, 5], ["a", "b"])])
def test_5_npz_labels_must_be_dense_or_named(capsys, tmp_path, labels, names):
    arrays = {"x": np.zeros((2, 32, 32, 1), np.uint8), "y": np.array(labels)}
    if names is not None:
        arrays["class_names"] = np.array(names)
    save_npz(tmp_path / "odd.npz", **arrays)
    _, seconds = timed(lambda: refused(capsys, ["data", "info", "npz:odd.npz", "--data-root", str(tmp_path)],
                                       mentions="labels"))
    assert seconds < SECONDS


def test_5_dense_labels_and_named_classes_still_load(capsys, tmp_path):
    save_npz(tmp_path / "ok.npz", x=np.zeros((3, 32, 32, 1), np.uint8), y=np.array([1, 0, 1]),
             class_names=np.array(["cat", "dog", "eel"]))
    assert main(["data", "info", "npz:ok.npz", "--data-root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_classes"] == 3


# --------------------------------------------------------------------------- 6: a run inside another release


def plant_release(folder: Path) -> None:
    """What ``privimage select --out FOLDER`` leaves: a noisy histogram and its selection."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "selection.json").write_text('{"public": "glyphs1k", "selected_counts": {}}')
    np.savez(folder / "noisy_histogram.npz", noisy_histogram=np.zeros((10, 1000)))


@pytest.mark.parametrize("where", ["on the release", "inside the release", "inside a run"])
def test_6_a_run_is_never_created_in_or_on_another_release(capsys, tmp_path, tripwire, monkeypatch, where):
    no_sensitive_read(monkeypatch)
    release = tmp_path / "S"
    if where == "inside a run":
        release.mkdir()
        (release / "run.json").write_text('{"method": "dpdm", "epsilon": 1.0, "seed": 0}')
    else:
        plant_release(release)
    out = release if where == "on the release" else release / "nested" / "run"
    _, seconds = timed(lambda: refused(capsys, run_argv(out), mentions="another"))
    assert seconds < SECONDS
    assert not (out / "run.json").exists() or where == "inside a run"
    assert_nothing_looks_complete(out)


def test_6_select_is_never_written_into_a_run_folder(capsys, tmp_path, tripwire, monkeypatch):
    no_sensitive_read(monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"method": "dpdm", "epsilon": 1.0, "seed": 0}')
    refused(capsys, ["select", "--profile", "smoke", "--out", str(run)], mentions="another run")
    assert not (run / "selection.json").exists()


def test_6_the_audit_fails_a_run_folder_holding_a_release_its_ledger_does_not_charge(capsys, copy_finished):
    out, _ = copy_finished
    assert audit(capsys, out)[0] == 0
    plant_release(out)
    code, result, _ = audit(capsys, out)
    assert code == 1 and failed_checks(result) == {"no_uncharged_release"}


# --------------------------------------------------------------------------- 7, 8: output paths, checked first


@pytest.mark.parametrize("command", ["select", "run"])
def test_7_an_output_folder_under_a_file_is_refused_before_any_work(capsys, tmp_path, tripwire, monkeypatch,
                                                                    command):
    import privimage.semantics.stage as stage

    no_sensitive_read(monkeypatch)
    monkeypatch.setattr(stage, "load_public", lambda *a, **k: pytest.fail("the public corpus was loaded"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = (["select", "--profile", "smoke", "--out", str(blocker / "S")] if command == "select"
            else run_argv(blocker / "run"))
    # The message names the culprit in words, not as errno text, and run exits 2 like select.
    line, seconds = timed(lambda: refused(capsys, argv, mentions="is a file, not a folder"))
    assert "Errno" not in line and str(blocker) in line
    assert seconds < SECONDS


def test_8_a_truncated_last_journal_line_is_called_cut_off_not_altered(capsys, copy_finished):
    out, _ = copy_finished
    journal = out / "finetune" / "dpsgd_journal.jsonl"
    text = journal.read_text().rstrip("\n")
    journal.write_text(text[: len(text) - 20])
    code, result, _ = audit(capsys, out)
    detail = next(check["detail"] for check in result["checks"] if check["name"] == "released_updates_charged")
    assert code == 1 and "cut off while being written" in detail and "altered" not in detail, detail


def test_8_a_text_file_named_npz_is_called_not_a_zip_archive(capsys, tmp_path):
    (tmp_path / "notes.npz").write_text("hello, not an archive")
    line = refused(capsys, ["data", "info", "npz:notes.npz", "--data-root", str(tmp_path)], mentions="not a readable npz file (not a zip archive")
    assert "pickle" not in line


def test_8_select_from_the_sensitive_set_says_it_is_not_public_before_reading_it(capsys, tmp_path, tripwire,
                                                                                 monkeypatch):
    no_sensitive_read(monkeypatch)
    refused(capsys, ["select", "--profile", "smoke", "--public", "mnist5k", "--out", str(tmp_path / "S")],
            mentions="not a public dataset with named semantics")
    assert not (tmp_path / "S").exists()


def test_8_sds_with_a_selection_folder_names_the_file_to_give(capsys, tmp_path):
    refused(capsys, ["sds", "--profile", "smoke", "--a", "mnist5k", "--b", f"glyphs1k:{tmp_path}"],
            mentions=f"give the selection.json inside it, e.g. glyphs1k:{tmp_path / 'selection.json'}")


# --------------------------------------------------------------------------- arbitrary numbers


NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1e-300, 5e-324, 1e300, 1e12, 0.01, 0.5, 1.0, 2.0, 39.0]),
    st.floats(min_value=1e-3, max_value=1e3),
)
INTEGERS = st.one_of(st.integers(), st.sampled_from([0, -1, 1, 13, 10**9, 10**30, 2**63]),
                     st.integers(min_value=1, max_value=10**4))
# Half the draws in the ranges a real run uses, so that accepted calls are exercised as much as refusals.
RATES = st.one_of(NUMBERS, st.floats(min_value=1e-4, max_value=1.0))
DELTAS = st.one_of(NUMBERS, st.floats(min_value=1e-10, max_value=2e-4))
# No shrinking: a failing example is reported as drawn (shrinking slow calls takes minutes).
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def one_json_object_or_one_error(capsys, argv: list[str]) -> dict | None:
    """Exit 0 with one JSON object on stdout, or exit 2 with one ``error:`` line; within the time bound."""
    code, seconds = timed(lambda: main(argv))
    captured = capsys.readouterr()
    assert seconds < SECONDS, (argv, seconds)
    if code == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and not captured.out, (argv, captured)
        return None
    assert code == 0 and not captured.err, (argv, code, captured.err)
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, (argv, captured.out)
    result = json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"{name} in the JSON of {argv}"))
    assert isinstance(result, dict)
    return result


@PROPERTY
@given(sigma=NUMBERS, q=RATES, steps=INTEGERS, delta=DELTAS, z=st.none() | NUMBERS, k=INTEGERS,
       accountant=st.sampled_from(["rdp", "prv"]))
def test_privacy_epsilon_answers_or_refuses_any_numbers(capsys, sigma, q, steps, delta, z, k, accountant):
    argv = ["privacy", "epsilon", f"--noise-multiplier={sigma!r}", f"--sample-rate={q!r}", f"--steps={steps}",
            f"--delta={delta!r}", f"--k={k}", f"--accountant={accountant}", "--json"]
    argv += [] if z is None else [f"--query-noise-multiplier={z!r}"]
    result = one_json_object_or_one_error(capsys, argv)
    if result is not None:
        assert 0 <= result["epsilon"] < math.inf


@PROPERTY
@given(target=NUMBERS, q=RATES, steps=INTEGERS, delta=DELTAS, z=st.none() | NUMBERS,
       accountant=st.sampled_from(["rdp", "prv"]))
def test_privacy_calibrate_answers_or_refuses_any_numbers(capsys, target, q, steps, delta, z, accountant):
    argv = ["privacy", "calibrate", f"--target-epsilon={target!r}", f"--sample-rate={q!r}", f"--steps={steps}",
            f"--delta={delta!r}", f"--accountant={accountant}", "--json"]
    argv += [] if z is None else [f"--query-noise-multiplier={z!r}"]
    result = one_json_object_or_one_error(capsys, argv)
    if result is not None:
        # Calibration never overspends the target it was given.
        assert result["epsilon"] <= target and result["noise_multiplier"] > 0


@PROPERTY
@given(epsilon=NUMBERS, delta=st.none() | DELTAS, seed=st.none() | INTEGERS, world_size=st.none() | INTEGERS,
       method=st.sampled_from(["privimage-d", "dpdm", "nonpriv-d"]))
def test_run_dry_run_answers_or_refuses_any_numbers(capsys, tmp_path, epsilon, delta, seed, world_size, method):
    argv = ["run", "--method", method, "--profile", "smoke", "--dry-run", "--json", "--data-root", str(tmp_path),
            f"--epsilon={epsilon!r}"]
    argv += [] if delta is None else [f"--delta={delta!r}"]
    argv += [] if seed is None else [f"--seed={seed}"]
    argv += [] if world_size is None else [f"--world-size={world_size}"]
    result = one_json_object_or_one_error(capsys, argv)
    if result is not None and result["private"]:
        assert result["epsilon"] <= result["target_epsilon"] == epsilon


# --------------------------------------------------------------------------- a damaged finished run

JSON_FILES = ("config.json", "run.json", "ledger.json", "privacy.json", "pretraining_data.json", "resources.json",
              "finetune/resources-dp_finetune_diffusion.json")
DAMAGES = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "a list": lambda text: "[]",
    "a key removed": lambda text: json.dumps(dict(list(json.loads(text).items())[1:])),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("name", JSON_FILES)
def test_a_damaged_json_file_is_refused_flagged_or_rebuilt_never_a_wrong_epsilon(capsys, copy_finished, name, damage):
    out, argv = copy_finished
    path = out / name
    path.write_text(DAMAGES[damage](path.read_text()))
    code = main(argv)
    captured = capsys.readouterr()
    if code == 2:
        # Refused in one line, and nothing was rewritten behind the refusal.
        assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("error: "), captured.err
    else:
        # Resumed: the run reports the epsilon of the ledger now on disk.
        assert code == 0 and not captured.err, captured.err
        reported = json.loads(captured.out.strip().splitlines()[-1])
        ledger = PrivacyLedger.load(out / "ledger.json")
        assert reported["privacy"]["epsilon"] == pytest.approx(ledger.epsilon(), rel=1e-12)
    audit_code, result, err = audit(capsys, out)
    if audit_code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    elif audit_code == 0:
        # A pass is fine after the resume refused (the clear error) or rebuilt the file, never over the damage.
        assert code == 2 or isinstance(json.loads(path.read_text()), dict), (code, path.read_text())
    else:
        assert audit_code == 1 and failed_checks(result), result

