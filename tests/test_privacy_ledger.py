"""The privacy ledger: merging, accounting of the whole ledger, JSON round trip and refusals."""

from __future__ import annotations

import json

import pytest

from privimage.errors import PrivacyError
from privimage.privacy import PrivacyLedger, composition_epsilon, compute_epsilon

DATASET = "d" * 64
OTHER_DATASET = "e" * 64


def make_ledger(**overrides) -> PrivacyLedger:
    kwargs = dict(delta=1e-5, dataset_hash=DATASET, num_examples=4500, config_hash="cfg123")
    kwargs.update(overrides)
    return PrivacyLedger(**kwargs)


def test_identical_dpsgd_steps_merge_into_one_entry():
    ledger = make_ledger()
    for _ in range(2250):
        ledger.record_dpsgd_steps(noise_multiplier=1.5, sample_rate=0.04, steps=1)
    assert len(ledger.entries) == 1
    entry = ledger.entries[0]
    assert entry["mechanism"] == "dp_sgd" and entry["steps"] == 2250
    assert entry["neighbouring"] == "add/remove" and entry["dataset_hash"] == DATASET
    assert ledger.epsilon() == pytest.approx(7.3291, abs=1e-3)


def test_changed_parameters_open_a_new_entry_and_all_are_accounted():
    ledger = make_ledger()
    ledger.record_semantic_query(query_noise_multiplier=5.0, k=3, generator="os-entropy")
    ledger.record_dpsgd_steps(noise_multiplier=1.5, sample_rate=0.04, steps=100)
    ledger.record_dpsgd_steps(noise_multiplier=1.5, sample_rate=0.04, steps=50)
    ledger.record_dpsgd_steps(noise_multiplier=2.0, sample_rate=0.04, steps=10)
    ledger.record_dpsgd_steps(noise_multiplier=1.5, sample_rate=0.04, steps=5)
    mechanisms = [(e["mechanism"], e.get("steps")) for e in ledger.entries]
    assert mechanisms == [("semantic_query", None), ("dp_sgd", 150), ("dp_sgd", 10), ("dp_sgd", 5)]
    expected = composition_epsilon(
        dpsgd_runs=[(1.5, 0.04, 155), (2.0, 0.04, 10)], query_noise_multipliers=[5.0], delta=1e-5
    )
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-12)
    assert ledger.epsilon() > compute_epsilon(noise_multiplier=1.5, sample_rate=0.04, steps=155, delta=1e-5)


def test_query_entry_records_sensitivity_noise_and_generator():
    ledger = make_ledger()
    ledger.record_semantic_query(query_noise_multiplier=2.0, k=4, generator="secure")
    (entry,) = ledger.entries
    assert entry["l2_sensitivity"] == 2.0 and entry["noise_std"] == 4.0
    assert entry["generator"] == "secure" and entry["time"]
    with pytest.raises(PrivacyError, match="generator"):
        ledger.record_semantic_query(query_noise_multiplier=2.0, k=4, generator="seeded")


def test_entries_are_a_copy():
    ledger = make_ledger()
    ledger.record_dpsgd_steps(noise_multiplier=1.0, sample_rate=0.1, steps=3)
    ledger.entries[0]["steps"] = 0
    assert ledger.entries[0]["steps"] == 3


def test_json_round_trip_preserves_entries_and_epsilon(tmp_path):
    ledger = make_ledger()
    ledger.record_semantic_query(query_noise_multiplier=5.0, k=2, generator="os-entropy")
    ledger.record_dpsgd_steps(noise_multiplier=1.2, sample_rate=0.05, steps=40, generator="secure")
    path = tmp_path / "ledger.json"
    ledger.save(path)
    data = json.loads(path.read_text())
    assert data["entries"][1]["generator"] == "secure" and data["epsilon_rdp"] == pytest.approx(ledger.epsilon())
    loaded = PrivacyLedger.load(path, expect_dataset_hash=DATASET, expect_config_hash="cfg123")
    assert loaded.entries == ledger.entries
    assert loaded.epsilon() == ledger.epsilon() and loaded.delta == ledger.delta
    # Steps recorded after loading add to the ledger's total.
    loaded.record_dpsgd_steps(noise_multiplier=1.2, sample_rate=0.05, steps=1, generator="secure")
    assert sum(e.get("steps", 0) for e in loaded.entries) == 41
    assert loaded.epsilon() > ledger.epsilon()
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_refuses_another_dataset_or_config(tmp_path):
    path = tmp_path / "ledger.json"
    make_ledger().save(path)
    with pytest.raises(PrivacyError, match="sensitive dataset"):
        PrivacyLedger.load(path, expect_dataset_hash=OTHER_DATASET)
    with pytest.raises(PrivacyError, match="config"):
        PrivacyLedger.load(path, expect_config_hash="other")


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: d.update(format="something"),
        lambda d: d.update(version=99),
        lambda d: d.pop("delta"),
        lambda d: d.update(delta=0.5),
        lambda d: d["entries"].append({**d["entries"][0], "mechanism": "laplace"}),
        lambda d: d["entries"][0].update(dataset_hash=OTHER_DATASET),
        lambda d: d["entries"][0].update(noise_std=1.0),
        lambda d: d["entries"][1].update(steps=-3),
        lambda d: d["entries"][1].update(sample_rate=2.0),
        lambda d: d["entries"][1].pop("noise_multiplier"),
    ],
)
def test_load_refuses_corrupt_ledgers(tmp_path, corrupt):
    ledger = make_ledger()
    ledger.record_semantic_query(query_noise_multiplier=5.0, k=2, generator="os-entropy")
    ledger.record_dpsgd_steps(noise_multiplier=1.2, sample_rate=0.05, steps=40)
    data = ledger.to_dict()
    corrupt(data)
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PrivacyError):
        PrivacyLedger.load(path)


def test_load_refuses_missing_and_unreadable_files(tmp_path):
    with pytest.raises(PrivacyError, match="not found"):
        PrivacyLedger.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PrivacyError, match="unreadable"):
        PrivacyLedger.load(tmp_path / "bad.json")


def test_merge_adds_a_cached_query_to_a_run():
    query = make_ledger()
    query.record_semantic_query(query_noise_multiplier=5.0, k=1, generator="os-entropy")
    run = make_ledger()
    run.record_dpsgd_steps(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
    run.merge(query)
    assert [e["mechanism"] for e in run.entries] == ["dp_sgd", "semantic_query"]
    assert run.epsilon() == pytest.approx(7.4073, abs=2e-3)
    with pytest.raises(PrivacyError, match="different sensitive datasets"):
        run.merge(make_ledger(dataset_hash=OTHER_DATASET))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_examples": 0}, "empty"),
        ({"delta": 1 / 4500}, "below 1/N"),
        ({"delta": 1e-3}, "below 1/N"),
        ({"delta": 0.0}, "delta"),
        ({"delta": float("nan")}, "delta"),
        ({"dataset_hash": ""}, "dataset_hash"),
    ],
)
def test_constructor_validation(overrides, message):
    with pytest.raises(PrivacyError, match=message):
        make_ledger(**overrides)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(noise_multiplier=0.0, sample_rate=0.1),
        dict(noise_multiplier=1.0, sample_rate=0.0),
        dict(noise_multiplier=1.0, sample_rate=0.1, steps=-1),
        dict(noise_multiplier=float("nan"), sample_rate=0.1),
        dict(noise_multiplier=1.0, sample_rate=0.1, generator="mt19937"),
    ],
)
def test_dpsgd_record_validation_also_on_the_merge_path(kwargs):
    ledger = make_ledger()
    ledger.record_dpsgd_steps(noise_multiplier=1.0, sample_rate=0.1, steps=1)
    with pytest.raises(PrivacyError):
        ledger.record_dpsgd_steps(**kwargs)
    assert ledger.entries[0]["steps"] == 1


def test_empty_ledger_spends_nothing():
    assert make_ledger().epsilon() == 0.0
    assert make_ledger().epsilon(accountant="prv") == 0.0
