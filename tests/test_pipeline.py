"""Every method of the paper end to end on a toy budget, resume, and the paper-scale dry run."""

import json

import numpy as np
import pytest

from privimage.config import load_config
from privimage.methods import METHODS
from privimage.pipeline import dry_run, run_method

# The smoke profile cut further: the test checks the plumbing of every method, not quality.
TINY = {
    "pretrain.steps": 3, "pretrain.gan_steps": 3, "finetune.epochs": 0.05, "finetune.gan_epochs": 0.05,
    "sampling.num_samples": 20, "sampling.ddim_steps": 2,
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the module, so methods share the SQF, selections and pre-trained models as in a real run."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PRIVIMAGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_end_to_end(method, shared_cache, tmp_path):
    config = load_config("smoke", TINY)
    recipe = METHODS[method]
    epsilon = 10.0 if recipe.private else None
    result = run_method(method=method, config=config, epsilon=epsilon, out_dir=tmp_path / method,
                        evaluate=False, progress=False)
    run_dir = result.run_dir
    with np.load(run_dir / "synthetic.npz") as archive:
        images, labels = archive["x"], archive["y"]
    assert images.dtype == np.uint8 and images.shape == (20, 1, 32, 32)
    # Class-balanced: two images of each digit.
    assert np.bincount(labels, minlength=10).tolist() == [2] * 10
    assert (run_dir / "samples.png").stat().st_size > 0
    assert json.loads((run_dir / "config.json").read_text()) == config.to_dict()
    privacy = json.loads((run_dir / "privacy.json").read_text())
    if recipe.private:
        ledger = json.loads((run_dir / "ledger.json").read_text())
        mechanisms = [entry["mechanism"] for entry in ledger["entries"]]
        # The query is charged exactly when the method makes one, DP-SGD always.
        assert mechanisms.count("semantic_query") == (1 if recipe.uses_query else 0)
        assert "dp_sgd" in mechanisms
        assert 0.99 * epsilon <= privacy["epsilon"] <= epsilon
    else:
        assert privacy["guarantee"] == "none" and not (run_dir / "ledger.json").exists()


@pytest.mark.slow
def test_rerun_resumes_without_spending_budget_again(shared_cache, tmp_path):
    config = load_config("smoke", TINY)
    first = run_method(method="dpdm", config=config, epsilon=5.0, out_dir=tmp_path / "run", evaluate=False,
                       progress=False)
    ledger_before = json.loads((first.run_dir / "ledger.json").read_text())
    second = run_method(method="dpdm", config=config, epsilon=5.0, out_dir=tmp_path / "run", evaluate=False,
                        progress=False)
    ledger_after = json.loads((second.run_dir / "ledger.json").read_text())
    steps = lambda ledger: sum(e["steps"] for e in ledger["entries"] if e["mechanism"] == "dp_sgd")  # noqa: E731
    assert steps(ledger_after) == steps(ledger_before) > 0
    assert second.privacy["epsilon"] == pytest.approx(first.privacy["epsilon"])


def test_a_run_folder_of_another_run_is_refused(shared_cache, tmp_path):
    from privimage.errors import PrivImageError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"method": "dpdm", "epsilon": 1.0, "seed": 0}))
    with pytest.raises(PrivImageError, match="holds a run of dpdm"):
        run_method(method="dpdm", config=load_config("smoke", TINY), epsilon=5.0, out_dir=tmp_path / "run",
                   evaluate=False, progress=False)


def test_paper_dry_run_needs_no_data_and_meets_the_target(tmp_path):
    result = dry_run(method="privimage-d", config=load_config("paper"), epsilon=10.0, data_root=tmp_path)
    assert result["sensitive"] == "cifar10" and result["num_examples"] == 50000
    assert result["dataset_available"] is False
    assert result["steps"] == 152  # paper Table 5
    assert 0.99 * 10.0 <= result["epsilon"] <= 10.0
    assert abs(result["num_parameters"] - 1.8e6) / 1.8e6 < 0.05
    assert result["noise_multiplier"] > 0
    # The paper's CIFAR-10 query: z = 484, a 1% selection (N = 1) and k = N (Appendix A, Table 8).
    assert (result["query_noise_multiplier"], result["k"], result["semantics_per_class"]) == (484.0, 1, 1)


@pytest.mark.parametrize("ratio, n", [(0.01, 1), (0.05, 5), (0.2, 20)])
def test_dry_run_reports_the_query_z_k_and_n_of_the_methods_that_select(ratio, n):
    config = load_config("quick", {"semantics.selection_ratio": ratio})
    result = dry_run(method="privimage-d", config=config, epsilon=10.0)
    assert (result["query_noise_multiplier"], result["k"], result["semantics_per_class"]) == (39.0, n, n)
    # No query: nothing to report; the non-private ablation selects, with no noise.
    assert {key: dry_run(method="pdp-diffusion", config=config, epsilon=10.0)[key]
            for key in ("query_noise_multiplier", "k", "semantics_per_class")} == dict.fromkeys(
        ("query_noise_multiplier", "k", "semantics_per_class"))
    nonprivate = dry_run(method="nonpriv-d", config=config, epsilon=None)
    assert (nonprivate["query_noise_multiplier"], nonprivate["k"], nonprivate["semantics_per_class"]) == (None, n, n)


def test_run_dry_run_json_on_the_command_line_reports_the_query(capsys):
    from privimage.cli import main

    assert main(["run", "--profile", "quick", "--method", "privimage-g", "--epsilon", "5", "--dry-run", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["query_noise_multiplier"], printed["k"], printed["semantics_per_class"]) == (39.0, 1, 1)


def test_nonprivate_methods_refuse_nothing_and_private_ones_need_epsilon():
    from privimage.errors import PrivImageError

    with pytest.raises(PrivImageError, match="needs --epsilon"):
        dry_run(method="dpdm", config=load_config("smoke"), epsilon=None)
    with pytest.raises(PrivImageError, match="positive finite"):
        dry_run(method="dpdm", config=load_config("smoke"), epsilon=-1.0)
    assert dry_run(method="nonpriv-d", config=load_config("smoke"), epsilon=None)["private"] is False


@pytest.mark.slow
def test_a_retrained_query_function_never_reuses_an_earlier_selection(shared_cache, monkeypatch):
    from privimage.cache import cache_root
    from privimage.data import load_sensitive_train
    from privimage.pipeline import selection_stage
    from privimage.privacy import PrivacyLedger
    from privimage.semantics import query_function

    config = load_config("smoke", TINY)
    sensitive = load_sensitive_train(config)

    def select():
        ledger = PrivacyLedger(delta=config.finetune.delta, dataset_hash=sensitive.content_hash(),
                               num_examples=len(sensitive))
        selection_stage(method=METHODS["privimage-d"], config=config, sensitive=sensitive, ledger=ledger,
                        data_root=None, progress=False)
        return {path.name for path in (cache_root() / "selection").iterdir()}

    first = select()
    assert select() == first  # the same SQF: the cached release is reused
    # Same config, another SQF (as after a change to how it is trained): a new query.
    real_key = query_function.query_function_key
    monkeypatch.setattr(query_function, "query_function_key", lambda **kwargs: "another-" + real_key(**kwargs))
    assert len(select() - first) == 1


@pytest.mark.slow
def test_each_sensitive_label_pre_trains_on_the_semantics_its_own_class_selected(shared_cache):
    # The selection comes back from selection.json, whose keys JSON sorts by name ("eight" first);
    # label i must still get the public images that class_names[i] selected.
    from privimage.data import load_dataset, load_sensitive_train
    from privimage.pipeline import selection_stage
    from privimage.privacy import PrivacyLedger

    config = load_config("smoke", TINY)
    sensitive = load_sensitive_train(config)
    ledger = PrivacyLedger(delta=config.finetune.delta, dataset_hash=sensitive.content_hash(),
                           num_examples=len(sensitive))
    selected, summary = selection_stage(method=METHODS["privimage-d"], config=config, sensitive=sensitive,
                                        ledger=ledger, data_root=None, progress=False)
    public = load_dataset(config.data.public, "train", config=config.data)
    assert selected.class_names == sensitive.class_names
    for label, class_name in enumerate(sensitive.class_names):
        chosen = [public.class_names.index(name) for name in summary["selected"][class_name]]
        expected = public.images[np.isin(public.labels, chosen)]
        assert np.array_equal(selected.images[selected.labels == label], expected), class_name


def test_a_run_pre_trained_on_other_data_is_never_resumed(tmp_path):
    from privimage.errors import PrivImageError
    from privimage.pipeline import _check_same_pretraining_data

    _check_same_pretraining_data(tmp_path, "selected:aaaa")
    _check_same_pretraining_data(tmp_path, "selected:aaaa")  # the same data: resume
    with pytest.raises(PrivImageError, match="holds a run pre-trained on other data"):
        _check_same_pretraining_data(tmp_path, "selected:bbbb")
