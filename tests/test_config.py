"""Profiles load strictly: unknown keys and wrong types name the key and the file."""

import json

import pytest

from privimage.config import PROFILES, Config, config_from_dict, config_hash, load_config, query_noise_multiplier
from privimage.errors import ConfigError


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_loads_and_round_trips_through_json(profile):
    config = load_config(profile)
    assert isinstance(config, Config)
    assert config.profile == profile
    as_json = json.dumps(config.to_dict())
    assert config_from_dict(json.loads(as_json)) == config


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("finetune:\n  epsilonn: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*finetune\.epsilonn"):
        load_config(str(path))


def test_unknown_top_level_section(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("fine_tune:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'fine_tune'"):
        load_config(str(path))


@pytest.mark.parametrize(
    "text, key",
    [
        ("finetune:\n  batch_size: '256'\n", "finetune.batch_size"),
        ("finetune:\n  batch_size: 2.5\n", "finetune.batch_size"),
        ("finetune:\n  secure_mode: 1\n", "finetune.secure_mode"),
        ("semantics:\n  k: true\n", "semantics.k"),
        ("experiment:\n  epsilons: 10\n", "experiment.epsilons"),
        ("data: 3\n", "data"),
    ],
)
def test_wrong_type_names_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"bad\.yaml: key '{key}'"):
        load_config(str(path))


def test_overrides_are_strict_and_applied():
    config = load_config("smoke", {"finetune.epochs": 3, "semantics": {"k": 2}})
    assert config.finetune.epochs == 3.0 and isinstance(config.finetune.epochs, float)
    assert config.semantics.k == 2
    # The override keeps the rest of the profile.
    assert config.pretrain.steps == load_config("smoke").pretrain.steps
    with pytest.raises(ConfigError, match="overrides: unknown key 'finetune.nope'"):
        load_config("smoke", {"finetune.nope": 1})


def test_unknown_profile_name():
    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        load_config("fast")


def test_config_is_frozen():
    config = load_config("smoke")
    with pytest.raises(Exception):
        config.seed = 3  # type: ignore[misc]


def test_config_hash_depends_on_section_content_only():
    a = load_config("smoke")
    b = load_config("smoke", {"finetune.epochs": 9})
    assert config_hash(a.semantics) == config_hash(b.semantics)
    assert config_hash(a.finetune) != config_hash(b.finetune)


@pytest.mark.parametrize(
    "key, value, requirement",
    [
        ("semantics.selection_ratio", 0.0, "lie in (0, 1]"),
        ("semantics.selection_ratio", 1.5, "lie in (0, 1]"),
        ("semantics.k", 0, "be >= 1"),
        ("semantics.query_noise_multiplier", -1.0, "be > 0"),
        ("finetune.delta", 1.0, "lie in (0, 1)"),
        ("finetune.noise_multiplicity", 0, "be > 0"),
        ("pretrain.label_dropout", 1.0, "lie in [0, 1)"),
        ("sampling.num_samples", 0, "be > 0"),
        ("experiment.epsilons", [1.0, -5.0], "hold only values > 0"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(key, value, requirement):
    with pytest.raises(ConfigError) as error:
        load_config("smoke", {key: value})
    assert f"{key} must {requirement}" in str(error.value)


def test_out_of_range_value_in_a_profile_file_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("finetune:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: finetune\.epochs must be > 0"):
        load_config(str(path))


def test_edge_values_inside_the_ranges_load():
    config = load_config("smoke", {"semantics.selection_ratio": 1.0, "pretrain.steps": 0, "pretrain.label_dropout": 0.0})
    assert config.semantics.selection_ratio == 1.0 and config.pretrain.steps == 0


def test_quick_and_paper_take_the_papers_one_percent_selection_with_k_following_n():
    for profile in ("quick", "paper"):
        semantics = load_config(profile).semantics
        assert semantics.selection_ratio == 0.01 and semantics.k is None, profile
    # An explicit k stays, and null (k = N) survives the JSON round trip of a saved config.json.
    assert load_config("quick", {"semantics.k": 3}).semantics.k == 3
    assert config_from_dict(load_config("quick").to_dict()).semantics.k is None


def test_query_noise_multiplier_keeps_the_papers_share_of_a_class_s_votes():
    # Quick: 484 x 400 / 5000 = 38.7 on MNIST-5k (paper Appendix A), written as 39.
    assert query_noise_multiplier(load_config("quick")) == 39.0
    # The derivation stands beside the setting.
    from privimage.config import PROFILE_DIR

    assert "484 x 400 / 5000 = 38.7" in (PROFILE_DIR / "quick.yaml").read_text()
    # Paper: null stands for the paper's z of the sensitive dataset.
    paper = load_config("paper")
    assert paper.semantics.query_noise_multiplier is None
    assert query_noise_multiplier(paper) == 484.0
    assert query_noise_multiplier(load_config("paper", {"data.sensitive": "celeba64"})) == 5300.0
    # A number set on top of the paper profile wins over the paper's table.
    assert query_noise_multiplier(load_config("paper", {"semantics.query_noise_multiplier": 100.0})) == 100.0


def test_a_null_query_noise_multiplier_for_a_dataset_the_paper_never_queried_is_refused():
    config = load_config("paper", {"data.sensitive": "mnist5k", "finetune.batch_size": 1000})
    with pytest.raises(ConfigError, match="gives none for 'mnist5k'.*set a number"):
        query_noise_multiplier(config)


def test_multiplicity_chunk_is_a_memory_bound_outside_run_identities():
    from privimage.config import run_identity

    one_pass = load_config("smoke", overrides={"finetune.multiplicity_chunk": 0})
    assert load_config("smoke").finetune.multiplicity_chunk == 1
    # Same per-sample gradients, so the same run folder and cache entry.
    assert run_identity(one_pass) == run_identity(load_config("smoke"))
    assert run_identity(load_config("smoke", overrides={"finetune.noise_multiplicity": 3})) != run_identity(one_pass)
    with pytest.raises(ConfigError, match="multiplicity_chunk"):
        load_config("smoke", overrides={"finetune.multiplicity_chunk": -1})
