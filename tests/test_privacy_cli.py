"""``privimage privacy``: one JSON object on the last line, errors as exit code 2."""

from __future__ import annotations

import json

import pytest

from privimage.cli import main
from privimage.privacy import PrivacyLedger, compute_epsilon


def run_json(capsys, argv):
    code = main(argv + ["--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_epsilon_command_reports_the_composition(capsys):
    code, result = run_json(capsys, [
        "privacy", "epsilon", "--noise-multiplier", "1.5", "--sample-rate", "0.04", "--steps", "2250",
        "--delta", "1e-5", "--query-noise-multiplier", "5", "--k", "2",
    ])
    assert code == 0
    assert result["epsilon"] == pytest.approx(7.4073, abs=2e-3)
    assert result["delta"] == 1e-5 and result["accountant"] == "rdp"


def test_epsilon_command_with_prv(capsys):
    code, result = run_json(capsys, [
        "privacy", "epsilon", "--noise-multiplier", "1.5", "--sample-rate", "0.04", "--steps", "2249",
        "--delta", "1e-5", "--accountant", "prv",
    ])
    assert code == 0 and result["accountant"] == "prv"
    assert result["epsilon"] == pytest.approx(6.7774, abs=0.01)


def test_calibrate_command_meets_the_target(capsys):
    code, result = run_json(capsys, [
        "privacy", "calibrate", "--target-epsilon", "1", "--delta", "1e-5", "--sample-rate", "0.04",
        "--steps", "2250", "--query-noise-multiplier", "50",
    ])
    assert code == 0
    assert 0.99 <= result["epsilon"] <= 1.0
    recomputed = compute_epsilon(noise_multiplier=result["noise_multiplier"], sample_rate=0.04, steps=2250,
                                 delta=1e-5, query_noise_multiplier=50.0)
    assert recomputed == pytest.approx(result["epsilon"])


def test_ledger_command_reads_a_saved_ledger(capsys, tmp_path):
    ledger = PrivacyLedger(delta=1e-5, dataset_hash="abc", num_examples=4500)
    ledger.record_semantic_query(query_noise_multiplier=5.0, k=1, generator="os-entropy")
    ledger.record_dpsgd_steps(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
    ledger.save(tmp_path / "ledger.json")
    code, result = run_json(capsys, ["privacy", "ledger", str(tmp_path / "ledger.json")])
    assert code == 0
    assert result["epsilon"] == pytest.approx(ledger.epsilon())
    assert [e["mechanism"] for e in result["entries"]] == ["semantic_query", "dp_sgd"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["privacy", "epsilon", "--noise-multiplier", "0", "--sample-rate", "0.1", "--steps", "10", "--delta", "1e-5"],
         "noise_multiplier"),
        (["privacy", "epsilon", "--noise-multiplier", "1", "--sample-rate", "1.5", "--steps", "10", "--delta", "1e-5"],
         "sample_rate"),
        (["privacy", "epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "10", "--delta", "0"],
         "delta"),
        (["privacy", "calibrate", "--target-epsilon", "1", "--delta", "1e-5", "--sample-rate", "0.1", "--steps",
          "10", "--query-noise-multiplier", "0.5"], "query alone"),
        (["privacy", "ledger", "/nonexistent/ledger.json"], "not found"),
    ],
)
def test_bad_input_is_error_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
