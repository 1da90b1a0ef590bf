"""DP-SGD fine-tuning: one logical step, Poisson sampling, calibration and the ledger's step count."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from privimage.config import FinetuneConfig
from privimage.errors import PrivacyError
from privimage.training import calibrate_to_ledger, dp_sgd_step, finetune_schedule, make_dp_optimizer, poisson_sampler
from privimage.training.dpsgd import run_dp_sgd
from privimage.training.journal import JOURNAL_NAME
from test_training_standins import TinyNet, dpsgd_steps, load_rows, tiny_dataset, tiny_ledger, tiny_loss

torch.set_num_threads(2)


def plain_sgd_update(model, images, labels, lr):
    """Parameters after one SGD step on the batch-mean loss."""
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=lr)
    tiny_loss(reference, images, labels).mean().backward()
    optimizer.step()
    return [p.detach() for p in reference.parameters()]


@pytest.mark.parametrize("physical_batch_size", [32, 5])
def test_noiseless_unclipped_dp_step_equals_plain_sgd_step(physical_batch_size):
    dataset = tiny_dataset(num_examples=17)
    images, labels = load_rows(dataset)(np.arange(17))
    model = TinyNet()
    expected = plain_sgd_update(model, images, labels, lr=0.5)
    # sigma = 0 and a huge C: DP-SGD reduces to the mean gradient, also across physical chunks.
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), noise_multiplier=0.0,
                            max_grad_norm=1e9, expected_batch_size=17, loss_reduction="mean")
    dp_sgd_step(model=model, optimizer=optimizer, per_example_loss=tiny_loss, batch_indices=np.arange(17),
                load_inputs=load_rows(dataset), physical_batch_size=physical_batch_size)
    for got, want, before in zip(model.parameters(), expected, TinyNet().parameters()):
        assert torch.allclose(got, want, atol=1e-6)
        assert not torch.allclose(got, before)


def test_dp_step_divides_by_the_expected_batch_size_and_clips():
    dataset = tiny_dataset(num_examples=10)
    images, labels = load_rows(dataset)(np.arange(10))
    start = [p.detach().clone() for p in TinyNet().parameters()]
    mean_step = [want - before for want, before in zip(plain_sgd_update(TinyNet(), images, labels, lr=1.0), start)]

    model = TinyNet()
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0,
                            max_grad_norm=1e9, expected_batch_size=40, loss_reduction="mean")
    dp_sgd_step(model=model, optimizer=optimizer, per_example_loss=tiny_loss, batch_indices=np.arange(10),
                load_inputs=load_rows(dataset), physical_batch_size=4)
    # 10 realised examples over an expected 40: a quarter of the mean-gradient step.
    for got, before, step in zip(model.parameters(), start, mean_step):
        assert torch.allclose(got - before, step / 4, atol=1e-6)

    clipped = TinyNet()
    clip_norm = 1e-3
    optimizer = DPOptimizer(torch.optim.SGD(clipped.parameters(), lr=1.0), noise_multiplier=0.0,
                            max_grad_norm=clip_norm, expected_batch_size=10, loss_reduction="mean")
    dp_sgd_step(model=clipped, optimizer=optimizer, per_example_loss=tiny_loss, batch_indices=np.arange(10),
                load_inputs=load_rows(dataset), physical_batch_size=3)
    # Reference: each example's own gradient rescaled to norm C, then averaged.
    reference = TinyNet()
    clipped_sum = None
    for index in range(10):
        grads = torch.autograd.grad(tiny_loss(reference, images[index:index + 1], labels[index:index + 1]).sum(),
                                    list(reference.parameters()))
        flat = torch.cat([g.flatten() for g in grads])
        assert flat.norm() > clip_norm  # every example is actually clipped
        flat = flat * (clip_norm / flat.norm())
        clipped_sum = flat if clipped_sum is None else clipped_sum + flat
    update = torch.cat([(p - b).flatten() for p, b in zip(clipped.parameters(), start)])
    # float32 parameters of size ~0.1 carry ~1e-8 rounding; the update is ~1e-5.
    assert torch.allclose(update, -clipped_sum / 10, rtol=1e-3, atol=1e-7)
    assert update.norm() <= clip_norm


def noisy_optimizer(model):
    """DP-SGD at sigma 1, C 1 and expected batch 4 (noise std 1/4 per coordinate)."""
    return make_dp_optimizer(parameters=model.parameters(), lr=0.1, weight_decay=0.0, noise_multiplier=1.0,
                             max_grad_norm=1.0, expected_batch_size=4, secure_mode=False, device=torch.device("cpu"))


def test_empty_poisson_batch_is_a_noisy_step():
    dataset = tiny_dataset(num_examples=10)
    model = TinyNet()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = noisy_optimizer(model)
    released = []
    dp_sgd_step(model=model, optimizer=optimizer, per_example_loss=tiny_loss, batch_indices=[],
                load_inputs=load_rows(dataset), physical_batch_size=4,
                before_release=lambda update: released.append([u.clone() for u in update]))
    (update,) = released
    assert [u.shape for u in update] == [p.shape for p in model.parameters()]
    # The release is the noise alone: std sigma * C / B = 1/4 on each of ~800 coordinates (std known to ~3%).
    assert torch.cat([u.flatten() for u in update]).std().item() == pytest.approx(0.25, rel=0.15)
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_the_release_is_handed_over_before_the_update_is_applied_and_a_refusal_applies_nothing():
    dataset = tiny_dataset(num_examples=10)
    model = TinyNet()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = noisy_optimizer(model)

    def refuse(update):
        # The journal could not record the release (a full disk): the parameters must still be the old ones.
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
        raise OSError("disk full")

    with pytest.raises(OSError):
        dp_sgd_step(model=model, optimizer=optimizer, per_example_loss=tiny_loss, batch_indices=[0, 1, 2],
                    load_inputs=load_rows(dataset), physical_batch_size=2, before_release=refuse)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_noise_is_not_controlled_by_the_experiment_seed():
    updates = []
    for _ in range(2):
        torch.manual_seed(0)
        model = TinyNet()
        optimizer = make_dp_optimizer(parameters=model.parameters(), lr=0.1, weight_decay=0.0,
                                      noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4,
                                      secure_mode=False, device=torch.device("cpu"))
        torch.manual_seed(0)
        dp_sgd_step(model=model, optimizer=optimizer, per_example_loss=tiny_loss, batch_indices=[0, 1, 2],
                    load_inputs=load_rows(tiny_dataset(10)), physical_batch_size=4)
        updates.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(updates[0], updates[1])


def test_poisson_batches_vary_in_size_and_are_not_seeded():
    torch.manual_seed(0)
    first = [len(batch) for batch in poisson_sampler(num_examples=1000, sample_rate=0.05, steps=40)]
    torch.manual_seed(0)
    second = [len(batch) for batch in poisson_sampler(num_examples=1000, sample_rate=0.05, steps=40)]
    assert len(first) == 40
    assert len(set(first)) > 5
    # Mean of 40 Binomial(1000, 0.05) draws: 50 +- 1.1 (std), so +- 6 is over 5 sigma.
    assert abs(np.mean(first) - 50) < 6
    assert first != second


def test_schedule_follows_epochs_over_sample_rate():
    assert finetune_schedule(num_examples=4000, batch_size=64, epochs=0.2) == (0.016, 13)
    sample_rate, steps = finetune_schedule(num_examples=50000, batch_size=16384, epochs=49.8)
    assert (sample_rate, steps) == (16384 / 50000, 152)


@pytest.mark.parametrize("query", [None, 20.0])
def test_calibrated_sigma_spends_the_target_within_one_percent(query):
    dataset = tiny_dataset()
    ledger = tiny_ledger(dataset, query_noise_multiplier=query)
    sigma = calibrate_to_ledger(ledger=ledger, target_epsilon=3.0, sample_rate=0.1, steps=50)
    ledger.record_dpsgd_steps(noise_multiplier=sigma, sample_rate=0.1, steps=50)
    assert 0.99 * 3.0 <= ledger.epsilon() <= 3.0


def test_calibration_refuses_a_ledger_that_already_holds_dpsgd_steps():
    dataset = tiny_dataset()
    ledger = tiny_ledger(dataset)
    ledger.record_dpsgd_steps(noise_multiplier=1.0, sample_rate=0.1, steps=3)
    with pytest.raises(PrivacyError, match="already holds 3 DP-SGD steps"):
        calibrate_to_ledger(ledger=ledger, target_epsilon=3.0, sample_rate=0.1, steps=50)


def settings(**changes):
    base = FinetuneConfig(delta=1e-4, batch_size=20, physical_batch_size=7, epochs=0.5, lr=1e-3,
                          checkpoint_every=2, noise_multiplicity=1)
    return dataclasses.replace(base, **changes)


def run(tmp_path, dataset, ledger, *, model=None, target_epsilon=4.0, **changes):
    return run_dp_sgd(
        stage="test_dpsgd", model=model or TinyNet(), ema=None, per_example_loss=tiny_loss,
        load_inputs=load_rows(dataset), sensitive=dataset, ledger=ledger, settings=settings(**changes),
        lr=1e-3, epochs=settings(**changes).epochs, target_epsilon=target_epsilon, run_dir=tmp_path, seed=0,
        identity={"finetune": dataclasses.asdict(settings(**changes))}, progress=False,
    )


def test_ledger_and_journal_count_exactly_the_logical_steps(tmp_path, monkeypatch):
    dataset = tiny_dataset(num_examples=200)
    ledger = tiny_ledger(dataset)
    released = []
    real_step = dp_sgd_step

    def counting_step(**kwargs):
        released.append(len(kwargs["batch_indices"]))
        return real_step(**kwargs)

    monkeypatch.setattr("privimage.training.dpsgd.dp_sgd_step", counting_step)
    # q = 20 / 200 = 0.1 and 0.5 epochs: T = 5 logical steps, each split into chunks of 7.
    stats = run(tmp_path, dataset, ledger)
    assert stats["steps"] == 5 and len(released) == 5
    assert dpsgd_steps(ledger) == 5
    journal = [json.loads(line) for line in (tmp_path / JOURNAL_NAME).read_text().splitlines()[1:]]
    assert [line["step"] for line in journal] == [1, 2, 3, 4, 5]
    # Each line names its released update and the update's SHA-256. Checkpoints after steps 2, 4 and 5 keep
    # ckpt-5 and ckpt-4: the updates up to step 4 are redundant, step 5's stays for a fall-back to ckpt-4.
    assert all(len(line["sha256"]) == 64 for line in journal)
    kept = sorted(path.name for path in (tmp_path / "dpsgd_updates").iterdir())
    assert kept == [journal[4]["update"]]
    assert 0.99 * 4.0 <= stats["epsilon"] <= 4.0
    assert stats["epsilon"] == ledger.epsilon()
    assert stats["sample_rate"] == 0.1
    # The DP-SGD entry names the noise source, never a seed.
    assert ledger.entries[-1]["generator"] == "os-entropy"
    resources = json.loads((tmp_path / "resources-test_dpsgd.json").read_text())
    assert resources["stage"] == "finetuning" and resources["wall_time_s"] > 0 and resources["peak_rss_bytes"] > 0


def test_batchnorm_model_is_refused(tmp_path):
    dataset = tiny_dataset()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3))
    with pytest.raises(PrivacyError, match="BatchNorm"):
        run(tmp_path, dataset, tiny_ledger(dataset), model=model)


def test_ledger_of_another_dataset_is_refused(tmp_path):
    dataset = tiny_dataset()
    with pytest.raises(PrivacyError, match="ledger is for sensitive dataset"):
        run(tmp_path, dataset, tiny_ledger(tiny_dataset(seed=1)))


def test_secure_mode_reaches_opacus_and_the_ledger(tmp_path):
    dataset = tiny_dataset()
    ledger = tiny_ledger(dataset)
    stats = run(tmp_path, dataset, ledger, secure_mode=True)
    assert stats["noise_generator"] == "secure"
    assert ledger.entries[-1]["generator"] == "secure"
    optimizer = make_dp_optimizer(parameters=TinyNet().parameters(), lr=0.1, weight_decay=0.0, noise_multiplier=1.0,
                                  max_grad_norm=1.0, expected_batch_size=4, secure_mode=True,
                                  device=torch.device("cpu"))
    assert optimizer.secure_mode and optimizer.expected_batch_size == 4 and optimizer.generator is not None
