"""Distributed DP fine-tuning under torchrun (CPU, gloo) against the single-process run.

The slow test launches this file as a driver: once with one process, once with
``python -m torch.distributed.run --nproc_per_node 2`` and once more with one
process, each rank writing what it saw to ``<out>/<launch>-rank<r>.pt``. It then
checks the acceptance criteria of distributed DP-SGD:

- the ledger's epsilon, sigma and step count equal the single-process run's;
- with noise 0 (clipping off, and also on) the gradient released at each step
  and the model after it equal the single-process ones on the same rows;
- both ranks end with identical parameters;
- the noise is drawn once per logical step (its std is sigma * C / B, not
  sqrt(W) times that), the ranks' Poisson batches are disjoint shares of the
  data whose union has the configured expected size;
- a run interrupted with two processes resumes with one, and vice versa,
  replaying the step released after its checkpoint to the same parameters and
  charging every step once;
- non-private training (the all-reduce of `privimage.training.plain`) takes
  the single-process steps, and a failure on rank 0 reaches every rank.

Another slow test runs ``privimage run`` itself under torchrun; the fast tests
cover the single-process behaviour of `privimage.distributed` and the dry run's
per-rank batches.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# DP fine-tuning of the driver's run: N = 40, q = 10 / 40, 4 steps (8 when interrupted), checkpoints every 2.
RUN_EXAMPLES, RUN_BATCH, TARGET_EPSILON, RUN_DELTA = 40, 10, 5.0, 1e-3
INTERRUPT_AT_STEP = 5
# Exact-step comparison: N = 11 rows split 6 / 5 over two ranks, chunks of 5 (2 chunks on one rank, 1 on the other).
EXACT_EXAMPLES, EXACT_PHYSICAL, EXACT_STEPS = 11, 5, 3
# AdamW's learning rate in those steps.
EXACT_LR = 0.05
# Noise check: sigma = C = 1 on an all-zero gradient of 20,000 coordinates, expected batch 8.
NOISE_COORDINATES, NOISE_BATCH = 20_000, 8
# Sampler check: 200 steps of q = 0.25 over 400 rows.
SAMPLER_EXAMPLES, SAMPLER_RATE, SAMPLER_STEPS = 400, 0.25, 200


# --------------------------------------------------------------------------- the driver (run by torchrun)


class Interrupted(Exception):
    """Stands for a crash in the middle of fine-tuning."""


def _capture_released_gradients(optimizer, released: list[torch.Tensor]) -> None:
    """Record the gradient the wrapped optimizer is handed at each update (noisy, all-reduced, scaled)."""
    inner_step = optimizer.original_optimizer.step

    def step(*args, **kwargs):
        released.append(torch.cat([p.grad.detach().flatten().clone() for p in optimizer.params]))
        return inner_step(*args, **kwargs)

    optimizer.original_optimizer.step = step


def _flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _exact_steps(max_grad_norm: float) -> dict:
    """Three noiseless steps at sample rate 1, through the same sampler and optimizer `run_dp_sgd` uses."""
    from test_training_standins import TinyNet, load_rows, tiny_dataset, tiny_loss

    from privimage.training import dp_sgd_step, make_dp_optimizer, poisson_sampler

    dataset = tiny_dataset(num_examples=EXACT_EXAMPLES)
    model = TinyNet(seed=0)
    initial = _flat_parameters(model)
    optimizer = make_dp_optimizer(parameters=model.parameters(), lr=EXACT_LR, weight_decay=0.0,
                                  noise_multiplier=0.0, max_grad_norm=max_grad_norm,
                                  expected_batch_size=EXACT_EXAMPLES, secure_mode=False, device=torch.device("cpu"))
    released: list[torch.Tensor] = []
    _capture_released_gradients(optimizer, released)
    rows, parameters = [], []
    for batch in poisson_sampler(num_examples=EXACT_EXAMPLES, sample_rate=1.0, steps=EXACT_STEPS):
        rows.append(np.asarray(batch, dtype=np.int64))
        dp_sgd_step(model=model, optimizer=optimizer, per_example_loss=tiny_loss, batch_indices=batch,
                    load_inputs=load_rows(dataset), physical_batch_size=EXACT_PHYSICAL)
        parameters.append(_flat_parameters(model))
    return {"rows": rows, "initial": initial, "released": released, "parameters": parameters,
            "optimizer": type(optimizer).__name__}


def _adamw_replay(initial: torch.Tensor, gradients: list[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters after each step of plain AdamW handed ``gradients`` from ``initial``."""
    parameter = torch.nn.Parameter(initial.clone())
    optimizer = torch.optim.AdamW([parameter], lr=EXACT_LR, weight_decay=0.0)
    after = []
    for gradient in gradients:
        parameter.grad = gradient.clone()
        optimizer.step()
        after.append(parameter.detach().clone())
    return after


def _noise_step() -> dict:
    """One step on an all-zero gradient: what is released is the noise alone, scaled by 1 / B."""
    from test_training_standins import tiny_dataset

    from privimage.training import dp_sgd_step, make_dp_optimizer, poisson_sampler

    dataset = tiny_dataset(num_examples=16)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, NOISE_COORDINATES, bias=False)

    def zero_loss(model_call, inputs):
        return model_call(inputs).sum(dim=1) * 0.0

    def load_inputs(rows):
        return (torch.ones(len(rows), 1),)

    optimizer = make_dp_optimizer(parameters=model.parameters(), lr=0.01, weight_decay=0.0, noise_multiplier=1.0,
                                  max_grad_norm=1.0, expected_batch_size=NOISE_BATCH, secure_mode=False,
                                  device=torch.device("cpu"))
    released: list[torch.Tensor] = []
    _capture_released_gradients(optimizer, released)
    batch = next(iter(poisson_sampler(num_examples=len(dataset), sample_rate=0.5, steps=1)))
    dp_sgd_step(model=model, optimizer=optimizer, per_example_loss=zero_loss, batch_indices=batch,
                load_inputs=load_inputs, physical_batch_size=4)
    return {"released": released[0]}


def _sampled_rows() -> dict:
    from privimage.training import poisson_sampler

    batches = poisson_sampler(num_examples=SAMPLER_EXAMPLES, sample_rate=SAMPLER_RATE, steps=SAMPLER_STEPS)
    return {"batches": [np.asarray(batch, dtype=np.int64) for batch in batches]}


def _fine_tune(run_dir: Path, *, epochs: float, interrupt_at: int | None = None) -> dict:
    """The production DP-SGD loop on a toy model, with the ledger calibrated to the target."""
    from test_training_standins import TinyNet, load_rows, tiny_dataset, tiny_ledger, tiny_loss

    from privimage.config import FinetuneConfig
    from privimage.training.dpsgd import run_dp_sgd

    dataset = tiny_dataset(num_examples=RUN_EXAMPLES)
    ledger = tiny_ledger(dataset, delta=RUN_DELTA)
    model = TinyNet(seed=0)
    start = _flat_parameters(model)
    settings = FinetuneConfig(delta=RUN_DELTA, batch_size=RUN_BATCH, physical_batch_size=4, epochs=epochs,
                              max_grad_norm=1.0, checkpoint_every=2)

    after: dict[int, torch.Tensor] = {}

    def after_step(step: int) -> None:
        after[step] = _flat_parameters(model)
        if step == interrupt_at:
            raise Interrupted(f"killed after step {step}")

    try:
        stats = run_dp_sgd(stage="dp_toy", model=model, ema=None, per_example_loss=tiny_loss,
                           load_inputs=load_rows(dataset), sensitive=dataset, ledger=ledger, settings=settings,
                           lr=0.05, epochs=epochs, target_epsilon=TARGET_EPSILON, run_dir=run_dir, seed=0,
                           identity={"toy": True}, after_step=after_step, progress=False)
    except Interrupted:
        return {"interrupted": True, "after": after}
    return {"stats": json.loads(json.dumps(stats, default=str)), "ledger": ledger.to_dict(),
            "start": start, "parameters": _flat_parameters(model), "after": after}


def _plain_steps() -> dict:
    """Three non-private AdamW steps through `run_plain_training` on batches of 7 rows (shares of 4 and 3)."""
    from test_training_standins import TinyNet, load_rows, tiny_dataset, tiny_loss

    from privimage.distributed import sum_gradients_over_ranks
    from privimage.training.plain import accumulate_mean_loss, run_plain_training

    dataset = tiny_dataset(num_examples=20)
    model = TinyNet(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    load = load_rows(dataset)
    seen, losses = [], []

    def train_step(step: int, rows: np.ndarray) -> dict[str, float]:
        seen.append(np.asarray(rows))
        optimizer.zero_grad(set_to_none=True)
        share = accumulate_mean_loss(lambda chunk: tiny_loss(model, *load(chunk)), rows, 3, batch_size=7)
        loss = sum_gradients_over_ranks(model.parameters(), share)
        losses.append(loss)
        optimizer.step()
        return {"loss": loss}

    run_dir = Path(os.environ["DRIVER_OUT"]) / f"plain-{os.environ['DRIVER_LAUNCH']}"
    run_plain_training(stage="plain_toy", dataset=dataset, steps=3, batch_size=7, train_step=train_step,
                       state={"model": model, "optimizer": optimizer}, run_dir=run_dir, seed=0,
                       identity={"toy": True}, checkpoint_every=2, resource_stage="pretraining", progress=False)
    return {"rows": seen, "losses": losses, "parameters": _flat_parameters(model)}


def _failure_on_rank_zero() -> dict:
    """A `main_only` section that fails on rank 0: what does each rank raise?"""
    from privimage import distributed
    from privimage.errors import PrivacyError

    def refuse() -> None:
        raise PrivacyError("refused on purpose")

    try:
        distributed.main_only(refuse)
    except PrivacyError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None}


def _driver(launch: str, out: Path, phases: list[str]) -> None:
    from privimage import distributed

    os.environ["DRIVER_OUT"], os.environ["DRIVER_LAUNCH"] = str(out), launch
    with distributed.process_group():
        result: dict = {"world_size": distributed.world_size(), "rank": distributed.rank()}
        for phase in phases:
            name, _, argument = phase.partition("=")
            if name == "exact":
                result["exact_unclipped"] = _exact_steps(1e6)
                result["exact_clipped"] = _exact_steps(0.05)
            elif name == "noise":
                result["noise"] = _noise_step()
            elif name == "sampler":
                result["sampler"] = _sampled_rows()
            elif name == "run":
                result["run"] = _fine_tune(out / f"run-{launch}", epochs=1.0)
            elif name == "interrupt":
                result["interrupt"] = _fine_tune(out / argument, epochs=2.0, interrupt_at=INTERRUPT_AT_STEP)
            elif name == "resume":
                result["resume"] = _fine_tune(out / argument, epochs=2.0)
            elif name == "plain":
                result["plain"] = _plain_steps()
            elif name == "failure":
                result["failure"] = _failure_on_rank_zero()
            else:
                raise SystemExit(f"unknown phase {phase}")
        torch.save(result, out / f"{launch}-rank{distributed.rank()}.pt")


# --------------------------------------------------------------------------- launching it


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out: Path, launch: str, phases: list[str], *, processes: int) -> list[dict]:
    """Run the driver with ``processes`` processes (torchrun for more than one); return each rank's result."""
    driver = [str(Path(__file__).resolve()), launch, str(out), *phases]
    if processes == 1:
        command = [sys.executable, *driver]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                   "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
                   "--master_port", str(_free_port()), *driver]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return [torch.load(out / f"{launch}-rank{rank}.pt", weights_only=False) for rank in range(processes)]


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """One process, then two under torchrun (resuming the first's interrupted run), then one again."""
    out = tmp_path_factory.mktemp("distributed")
    single = _launch(out, "single", ["exact", "plain", "run", "interrupt=interrupted-single"], processes=1)
    double = _launch(out, "double", ["exact", "plain", "noise", "sampler", "failure", "run",
                                     "resume=interrupted-single", "interrupt=interrupted-double"], processes=2)
    resumed = _launch(out, "resumed", ["resume=interrupted-double"], processes=1)
    return {"single": single[0], "double": double, "resumed": resumed[0], "out": out}


@pytest.mark.slow
def test_each_launch_ran_with_its_number_of_processes(launches):
    assert launches["single"]["world_size"] == 1
    assert [rank["world_size"] for rank in launches["double"]] == [2, 2]
    assert [rank["rank"] for rank in launches["double"]] == [0, 1]
    assert launches["double"][0]["exact_unclipped"]["optimizer"] == "DistributedDPOptimizer"
    assert launches["single"]["exact_unclipped"]["optimizer"] == "DPOptimizer"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["exact_unclipped", "exact_clipped"])
def test_noiseless_steps_equal_the_single_process_steps(launches, case):
    single = launches["single"][case]
    ranks = [rank[case] for rank in launches["double"]]
    # Sample rate 1: the ranks hold disjoint strided shares that together are every row, every step.
    for step in range(EXACT_STEPS):
        assert ranks[0]["rows"][step].tolist() == list(range(0, EXACT_EXAMPLES, 2))
        assert ranks[1]["rows"][step].tolist() == list(range(1, EXACT_EXAMPLES, 2))
        assert single["rows"][step].tolist() == list(range(EXACT_EXAMPLES))
    for step in range(EXACT_STEPS):
        want_gradient = single["released"][step]
        assert want_gradient.norm() > 1e-3  # a real gradient, not a vacuous comparison
        for rank in ranks:
            # The released gradient: the sum over ranks / global B equals the single process's.
            torch.testing.assert_close(rank["released"][step], want_gradient, rtol=1e-5, atol=1e-7)
    # The model after each step: every launch applies AdamW to the gradient it released, from the same
    # start. Not compared with the single process's parameters directly: AdamW divides each
    # coordinate's step by its gradient's running magnitude, so where a gradient is small the
    # all-reduce's rounding becomes a visible part of the learning rate (up to 4e-6 on 3 of 819
    # coordinates on one 2-core machine, also on coordinates whose gradient exceeded 1e-5 at every step).
    for launch in [single, *ranks]:
        torch.testing.assert_close(launch["initial"], single["initial"], rtol=0, atol=0)
        replay = _adamw_replay(launch["initial"], launch["released"])
        for step in range(EXACT_STEPS):
            torch.testing.assert_close(launch["parameters"][step], replay[step], rtol=1e-5, atol=1e-6)
            assert not torch.equal(launch["parameters"][step], launch["initial"])  # the steps moved the model


@pytest.mark.slow
def test_clipping_is_per_sample_on_every_rank(launches):
    # With C = 0.05 the clipped gradient is much smaller than the unclipped one, and the ranks agree on it.
    clipped = launches["double"][0]["exact_clipped"]["released"][0]
    unclipped = launches["double"][0]["exact_unclipped"]["released"][0]
    assert clipped.norm() <= 0.05 + 1e-6
    assert unclipped.norm() > 2 * clipped.norm()


@pytest.mark.slow
def test_epsilon_and_schedule_equal_the_single_process_run(launches):
    single = launches["single"]["run"]
    for rank in launches["double"]:
        stats = rank["run"]["stats"]
        for key in ("steps", "sample_rate", "expected_batch_size", "released_steps"):
            assert stats[key] == single["stats"][key], key
        assert stats["noise_multiplier"] == pytest.approx(single["stats"]["noise_multiplier"], rel=1e-12)
        assert stats["epsilon"] == pytest.approx(single["stats"]["epsilon"], rel=1e-12)
        assert stats["world_size"] == 2
    assert single["stats"]["steps"] == 4
    assert 0.99 * TARGET_EPSILON <= single["stats"]["epsilon"] <= TARGET_EPSILON


@pytest.mark.slow
def test_one_journal_and_checkpoints_from_rank_zero(launches):
    from privimage.training.checkpoint import list_checkpoints, load_checkpoint
    from privimage.training.journal import JOURNAL_NAME, read_journal

    run_dir = launches["out"] / "run-double"
    _, steps = read_journal(run_dir / JOURNAL_NAME)
    assert steps == 4
    checkpoints = list_checkpoints(run_dir)
    assert [path.name for path in checkpoints] == ["ckpt-4.pt", "ckpt-2.pt"]
    newest = load_checkpoint(checkpoints[0])
    # The checkpoint's ledger is the run's ledger, the same on both ranks.
    assert newest["ledger"]["entries"] == launches["double"][0]["run"]["ledger"]["entries"]
    assert launches["double"][0]["run"]["ledger"]["entries"] == launches["double"][1]["run"]["ledger"]["entries"]
    # No generator state: the non-private streams are seeded per step (their state would show batch sizes).
    assert newest["world_size"] == 2 and "rng_by_rank" not in newest


@pytest.mark.slow
def test_both_ranks_end_with_identical_parameters(launches):
    first, second = (rank["run"] for rank in launches["double"])
    assert torch.equal(first["parameters"], second["parameters"])
    assert not torch.allclose(first["parameters"], first["start"])


@pytest.mark.slow
def test_noise_is_added_once_per_logical_step(launches):
    released = [rank["noise"]["released"] for rank in launches["double"]]
    assert torch.equal(released[0], released[1])
    # sigma * C / B = 1/8; noise on both ranks would give sqrt(2)/8 (20,000 draws: std known to 0.5%).
    measured = released[0].std().item()
    assert measured == pytest.approx(1.0 / NOISE_BATCH, rel=0.04)


@pytest.mark.slow
def test_ranks_poisson_sample_disjoint_shares_of_the_configured_size(launches):
    batches = [rank["sampler"]["batches"] for rank in launches["double"]]
    assert len(batches[0]) == len(batches[1]) == SAMPLER_STEPS
    sizes = []
    for first, second in zip(*batches):
        # Rank r holds rows r, r + 2, ...: the shares never overlap.
        assert np.all(first % 2 == 0) and np.all(second % 2 == 1)
        sizes.append(len(first) + len(second))
    # Mean of 200 Binomial(400, 0.25) draws: 100 +- 0.61 (std); +- 4 is over 6 sigma.
    assert abs(np.mean(sizes) - SAMPLER_EXAMPLES * SAMPLER_RATE) < 4
    # Each rank samples its own shard independently (fresh OS-entropy generators).
    assert any(len(a) != len(b) for a, b in zip(*batches))


@pytest.mark.slow
@pytest.mark.parametrize("resume", ["double", "resumed"])
def test_a_run_resumes_with_another_number_of_processes(launches, resume):
    from test_training_standins import tiny_dataset, tiny_ledger

    results = launches["double"] if resume == "double" else [launches["resumed"]]
    # The interrupted run was single-process for the two-process resume, and two-process for the single one.
    interrupted = launches["single"]["interrupt"] if resume == "double" else launches["double"][0]["interrupt"]
    assert interrupted["interrupted"] and set(interrupted["after"]) == {1, 2, 3, 4, 5}
    for rank in results:
        stats = rank["resume"]["stats"]
        # Interrupted after step 5 with a checkpoint at 4: step 5 was released and is replayed, not re-done.
        assert stats["resumed_from_step"] == 4 and stats["replayed_steps"] == 1
        assert stats["released_steps"] == 8
        assert stats["lost_steps_charged"] == 0
        assert torch.equal(rank["resume"]["after"][5], interrupted["after"][5])
        assert not torch.equal(rank["resume"]["after"][5], interrupted["after"][4])
        expected = tiny_ledger(tiny_dataset(num_examples=RUN_EXAMPLES), delta=RUN_DELTA)
        expected.record_dpsgd_steps(noise_multiplier=stats["noise_multiplier"], sample_rate=stats["sample_rate"],
                                    steps=8, generator="os-entropy")
        assert stats["epsilon"] == pytest.approx(expected.epsilon(), rel=1e-12)
    if resume == "double":
        assert torch.equal(results[0]["resume"]["parameters"], results[1]["resume"]["parameters"])



@pytest.mark.slow
def test_nonprivate_steps_equal_the_single_process_steps(launches):
    single = launches["single"]["plain"]
    ranks = [rank["plain"] for rank in launches["double"]]
    for step in range(3):
        # Each rank trains on its strided share of the single-process batch.
        whole = single["rows"][step]
        assert ranks[0]["rows"][step].tolist() == whole[0::2].tolist()
        assert ranks[1]["rows"][step].tolist() == whole[1::2].tolist()
        # The reported loss is the mean over the whole batch, on every rank.
        assert ranks[0]["losses"][step] == pytest.approx(single["losses"][step], rel=1e-6)
        assert ranks[1]["losses"][step] == ranks[0]["losses"][step]
    for rank in ranks:
        torch.testing.assert_close(rank["parameters"], single["parameters"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_failure_on_rank_zero_reaches_every_rank(launches):
    first, second = (rank["failure"] for rank in launches["double"])
    assert first == {"error": "PrivacyError", "message": "refused on purpose"}
    assert second["error"] == "PrivacyError" and second["message"] == "rank 0 failed: refused on purpose"


@pytest.mark.slow
def test_privimage_run_under_torchrun(tmp_path):
    """The real command, two processes: selection, pre-training, DP fine-tuning, sampling; rank 0 writes."""
    import yaml

    from privimage.config import load_config

    tiny = load_config("smoke", {"pretrain.steps": 3, "finetune.epochs": 0.05, "sampling.num_samples": 20,
                                 "sampling.ddim_steps": 2})
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump(tiny.to_dict()))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "privimage", "run",
               "--method", "privimage-d", "--epsilon", "10", "--profile", str(profile), "--no-evaluate", "--json",
               "--out", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRIVIMAGE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    # Rank 0 alone prints: one JSON object.
    printed = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1
    summary = json.loads(printed[0])
    run_dir = tmp_path / "run"
    ledger = json.loads((run_dir / "ledger.json").read_text())
    # One semantic query (drawn once, on rank 0) and the DP-SGD steps of the global batch.
    assert [entry["mechanism"] for entry in ledger["entries"]] == ["semantic_query", "dp_sgd"]
    assert 0.99 * 10.0 <= summary["privacy"]["epsilon"] <= 10.0
    resources = json.loads((run_dir / "resources.json").read_text())
    assert resources["finetuning"]["world_size"] == 2 and resources["pretraining"]["world_size"] == 2
    with np.load(run_dir / "synthetic.npz") as archive:
        assert archive["x"].shape == (20, 1, 32, 32)
    selections = list((tmp_path / "cache" / "selection").iterdir())
    assert len(selections) == 1 and (selections[0] / "noisy_histogram.npz").is_file()


# --------------------------------------------------------------------------- one process, and the dry run


def test_one_process_needs_no_process_group(monkeypatch):
    from privimage import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup() is False
    assert (distributed.world_size(), distributed.rank(), distributed.is_main_process()) == (1, 0, True)
    assert distributed.rows_of_this_rank(np.arange(5)).tolist() == [0, 1, 2, 3, 4]
    assert distributed.share_of_count(7) == 7
    assert distributed.main_only(lambda: 3) == 3
    assert distributed.all_reduce_sum(2.5) == 2.5
    # Rank 0 keeps the experiment's stream: a single-process run is unchanged.
    assert distributed.rank_seed(11) == 11
    distributed.check_same_everywhere("abc", what="nothing")


@pytest.mark.parametrize(("environment", "message"), [
    ({"WORLD_SIZE": "2"}, "MASTER_ADDR"),
    ({"WORLD_SIZE": "two"}, "positive integer"),
    ({"WORLD_SIZE": "0"}, "positive integer"),
])
def test_a_half_set_torchrun_environment_is_refused(monkeypatch, environment, message):
    from privimage import distributed
    from privimage.errors import ConfigError

    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        distributed.setup()


def test_the_semantic_query_is_refused_on_other_ranks(monkeypatch):
    from test_training_standins import tiny_dataset

    from privimage.data.base import ImageDataset
    from privimage.errors import PrivacyError
    from privimage.semantics.query_function import QueryFunction

    toy = tiny_dataset(num_examples=5)
    sensitive = ImageDataset(toy.name, toy.split, toy.images, toy.labels, toy.class_names, sensitive=True)
    query_function = QueryFunction(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), "toy",
                                   ("a", "b", "c"), 1.0, 0.0, "")
    # A command torchrun started twice: the second copy must not draw a second noisy release.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(PrivacyError, match="rank 0 only"):
        query_function.probabilities(sensitive)
    assert query_function.probabilities(toy).shape == (5, 3)  # public data: any rank
    monkeypatch.setenv("RANK", "0")
    assert query_function.probabilities(sensitive).shape == (5, 3)

def test_paper_dry_run_plans_per_rank_batches(tmp_path):
    from privimage.config import load_config
    from privimage.pipeline import dry_run, per_rank_batches

    config = load_config("paper")
    four = dry_run(method="privimage-d", config=config, epsilon=10.0, data_root=tmp_path, world_size=4)
    # Table 5: an expected batch of 16,384 over 4 GPUs, chunks of 2,048 per GPU.
    assert four["distributed"] == {
        "world_size": 4, "finetune_expected_batch_per_rank": 4096.0, "finetune_physical_batch_per_rank": 2048,
        "finetune_chunks_per_rank_per_step": 2, "pretrain_batch_per_rank": 512,
        "pretrain_physical_batch_per_rank": 512, "gan_pretrain_batch_per_rank": 16, "sqf_batch_per_rank": 2048,
    }
    # The privacy schedule is that of the global batch.
    assert four["steps"] == 152 and four["sample_rate"] == 16384 / 50000
    one = per_rank_batches(config=config, world_size=1, num_examples=50000)
    assert one["finetune_expected_batch_per_rank"] == 16384.0 and one["finetune_chunks_per_rank_per_step"] == 8
    # An expected share smaller than the physical batch runs in one chunk of its own size.
    many = per_rank_batches(config=config, world_size=64, num_examples=50000)
    assert many["finetune_physical_batch_per_rank"] == 256 and many["finetune_chunks_per_rank_per_step"] == 1


def test_dry_run_cli_reads_the_world_size(monkeypatch, capsys, tmp_path):
    from privimage.cli import main

    monkeypatch.setenv("WORLD_SIZE", "8")
    assert main(["run", "--method", "dpdm", "--profile", "paper", "--epsilon", "5", "--dry-run",
                 "--data-root", str(tmp_path)]) == 0
    planned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["distributed"]
    assert planned["world_size"] == 8 and planned["finetune_expected_batch_per_rank"] == 2048.0
    assert main(["run", "--method", "dpdm", "--profile", "paper", "--epsilon", "5", "--dry-run",
                 "--world-size", "2", "--json", "--data-root", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["distributed"]["world_size"] == 2
    # Training on several processes is torchrun's job, not an option of the command.
    assert main(["run", "--method", "dpdm", "--profile", "smoke", "--epsilon", "5", "--world-size", "2"]) == 2
    assert "torchrun" in capsys.readouterr().err

if __name__ == "__main__":
    _driver(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
