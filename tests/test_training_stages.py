"""The stage recipes on the real networks: diffusion and GAN pre-training, DP and non-private fine-tuning."""

import numpy as np
import pytest
import torch

from privimage.config import load_config
from privimage.data.base import ImageDataset
from privimage.diffusion import ExponentialMovingAverage
from privimage.errors import DataError
from privimage.models import build_gan, build_unet
from privimage.training import (
    dp_finetune_diffusion,
    dp_finetune_gan,
    finetune_nonprivate_diffusion,
    pretrain_diffusion,
    pretrain_gan,
)
from privimage.training import dpsgd
from privimage.training.gan_training import GENERATED_ROW
from privimage.training.journal import JOURNAL_NAME
from test_training_standins import NUM_CLASSES, dpsgd_steps, tiny_dataset, tiny_ledger

torch.set_num_threads(2)

CONFIG = load_config("smoke", {
    "diffusion": {"preset": "custom", "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                  "attention_resolutions": []},
    "gan": {"latent_dim": 8, "generator_width": 4, "discriminator_width": 4, "update_ratio": 2},
    "pretrain": {"steps": 3, "batch_size": 4, "gan_steps": 4, "gan_batch_size": 4, "checkpoint_every": 2},
    # N = 40, q = 8 / 40 = 0.2: 0.4 epochs are 2 diffusion steps, 0.8 epochs 4 GAN steps.
    "finetune": {"delta": 1e-3, "batch_size": 8, "physical_batch_size": 16, "epochs": 0.4, "gan_epochs": 0.8,
                 "noise_multiplicity": 2, "checkpoint_every": 1},
})


def unet():
    torch.manual_seed(0)
    return build_unet(CONFIG.diffusion, image_channels=1, image_size=8, num_classes=NUM_CLASSES)


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def test_diffusion_pretraining_trains_model_and_ema_for_the_fixed_budget(tmp_path):
    model = unet()
    ema = ExponentialMovingAverage(model, decay=0.9)
    before = flat(model)
    stats = pretrain_diffusion(model=model, ema=ema, public=tiny_dataset(num_examples=10, seed=5), config=CONFIG,
                               run_dir=tmp_path, progress=False)
    assert stats["skipped"] is False and stats["steps"] == 3 and ema.num_updates == 3
    assert np.isfinite(stats["final_losses"]["loss"])
    assert not torch.equal(flat(model), before)
    assert stats["resources"]["stage"] == "pretraining"
    assert (tmp_path / "resources-pretrain_diffusion.json").exists()


def test_pretraining_without_public_data_is_skipped(tmp_path):
    model = unet()
    before = flat(model)
    stats = pretrain_diffusion(model=model, ema=ExponentialMovingAverage(model, decay=0.9), public=None,
                               config=CONFIG, run_dir=tmp_path, progress=False)
    assert stats["skipped"] is True and torch.equal(flat(model), before)
    generator, discriminator = build_gan(CONFIG.gan, image_channels=1, image_size=8, num_classes=NUM_CLASSES)
    assert pretrain_gan(generator=generator, discriminator=discriminator, public=None, config=CONFIG,
                        run_dir=tmp_path, progress=False)["skipped"] is True


def test_pretraining_refuses_sensitive_data_and_foreign_labels(tmp_path):
    model = unet()
    ema = ExponentialMovingAverage(model, decay=0.9)
    public = tiny_dataset(num_examples=10)
    sensitive = ImageDataset(name="toy", split="train", images=public.images, labels=public.labels,
                             class_names=public.class_names, sensitive=True)
    with pytest.raises(DataError, match="must not read the sensitive"):
        pretrain_diffusion(model=model, ema=ema, public=sensitive, config=CONFIG, run_dir=tmp_path, progress=False)
    many = ImageDataset(name="wide", split="train", images=public.images, labels=np.arange(10, dtype=np.int64),
                        class_names=tuple(str(i) for i in range(10)))
    with pytest.raises(DataError, match="relabel"):
        pretrain_diffusion(model=model, ema=ema, public=many, config=CONFIG, run_dir=tmp_path, progress=False)
    # Unconditional pre-training takes any labels (they become the null class).
    stats = pretrain_diffusion(model=model, ema=ema, public=many, config=CONFIG, run_dir=tmp_path / "u",
                               unconditional=True, progress=False)
    assert stats["unconditional"] is True and stats["steps"] == 3


def test_dp_finetuning_of_the_unet_charges_each_logical_step(tmp_path):
    sensitive = tiny_dataset(num_examples=40)
    ledger = tiny_ledger(sensitive, delta=1e-3)
    model = unet()
    ema = ExponentialMovingAverage(model, decay=0.9)
    before = flat(model)
    stats = dp_finetune_diffusion(model=model, ema=ema, sensitive=sensitive, ledger=ledger, config=CONFIG,
                                  run_dir=tmp_path, target_epsilon=8.0, progress=False)
    assert stats["steps"] == 2 and dpsgd_steps(ledger) == 2 and ema.num_updates == 2
    assert 0.99 * 8.0 <= stats["epsilon"] <= 8.0
    assert not torch.equal(flat(model), before)


def test_nonprivate_finetuning_says_it_has_no_guarantee(tmp_path):
    sensitive = tiny_dataset(num_examples=40)
    model = unet()
    stats = finetune_nonprivate_diffusion(model=model, ema=ExponentialMovingAverage(model, decay=0.9),
                                          sensitive=sensitive, config=CONFIG, run_dir=tmp_path, progress=False)
    assert stats["private"] is False and stats["epsilon"] is None and stats["privacy"].startswith("none")
    assert stats["steps"] == 2
    assert not (tmp_path / JOURNAL_NAME).exists()


def test_dp_gan_accounts_discriminator_steps_only_with_a_fixed_number_of_generated_rows(tmp_path, monkeypatch):
    sensitive = tiny_dataset(num_examples=40)
    ledger = tiny_ledger(sensitive, delta=1e-3)
    torch.manual_seed(0)
    generator, discriminator = build_gan(CONFIG.gan, image_channels=1, image_size=8, num_classes=NUM_CLASSES)
    pretrain_gan(generator=generator, discriminator=discriminator, public=tiny_dataset(num_examples=10, seed=5),
                 config=CONFIG, run_dir=tmp_path / "pre", progress=False)
    rows_seen, generator_after = [], []
    real_step = dpsgd.dp_sgd_step

    def spy(**kwargs):
        rows_seen.append(np.asarray(kwargs["batch_indices"]))
        generator_after.append(flat(generator))
        return real_step(**kwargs)

    monkeypatch.setattr(dpsgd, "dp_sgd_step", spy)
    stats = dp_finetune_gan(generator=generator, discriminator=discriminator, sensitive=sensitive, ledger=ledger,
                            config=CONFIG, run_dir=tmp_path / "ft", target_epsilon=8.0, progress=False)
    assert stats["steps"] == 4 and dpsgd_steps(ledger) == 4 and stats["generator_steps"] == 2
    # Every discriminator batch: Poisson real rows plus exactly the expected batch size of generated rows.
    assert all((rows == GENERATED_ROW).sum() == CONFIG.finetune.batch_size for rows in rows_seen)
    assert all(((rows >= 0) & (rows < 40)).sum() == (rows != GENERATED_ROW).sum() for rows in rows_seen)
    # update_ratio = 2: the generator changes after steps 2 and 4 only.
    assert torch.equal(generator_after[0], generator_after[1])
    assert not torch.equal(generator_after[1], generator_after[2])
    assert torch.equal(generator_after[2], generator_after[3])
