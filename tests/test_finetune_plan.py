"""One fine-tuning plan for training, the dry run and the audit, whatever the generator family.

The profile here gives a GAN's discriminator twice the epochs of a diffusion
model (as the paper profile gives them different epochs), so any place that
takes a GAN's schedule from ``finetune.epochs`` disagrees with the run it
describes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from privimage.cli import main
from privimage.config import load_config, profile_path
from privimage.methods import METHODS
from privimage.run_audit import audit_run
from privimage.training.plan import DIFFUSION_BETAS, GAN_BETAS, finetune_plan

EPSILON = 10.0
PRIVATE_METHODS = [name for name, method in METHODS.items() if method.private]


@pytest.fixture(scope="module")
def unequal_epochs_profile(tmp_path_factory) -> Path:
    """The smoke profile with ``gan_epochs`` = 2 x ``epochs`` (13 diffusion steps, 26 discriminator steps)."""
    raw = yaml.safe_load(profile_path("smoke").read_text())
    raw["finetune"]["gan_epochs"] = 2 * raw["finetune"]["epochs"]
    raw["profile"] = "smoke-unequal-epochs"
    path = tmp_path_factory.mktemp("profile") / "smoke_unequal_epochs.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_each_generator_family_takes_its_own_epochs_rate_and_betas(unequal_epochs_profile):
    settings = load_config(str(unequal_epochs_profile)).finetune
    diffusion = finetune_plan(generator="diffusion", settings=settings, num_examples=4000)
    gan = finetune_plan(generator="gan", settings=settings, num_examples=4000)
    assert (diffusion.steps, gan.steps) == (13, 25)
    assert diffusion.sample_rate == gan.sample_rate == settings.batch_size / 4000
    assert (diffusion.lr, gan.lr) == (settings.lr, settings.gan_lr)
    assert (diffusion.betas, gan.betas) == (DIFFUSION_BETAS, GAN_BETAS)
    # A discriminator sees each image once; diffusion averages K noise draws per image.
    assert (diffusion.noise_multiplicity, gan.noise_multiplicity) == (settings.noise_multiplicity, 1)


@pytest.mark.parametrize("method", PRIVATE_METHODS)
def test_dry_run_reports_the_schedule_its_generator_family_trains(capsys, unequal_epochs_profile, method):
    code = main(["run", "--method", method, "--epsilon", str(EPSILON), "--profile", str(unequal_epochs_profile),
                 "--dry-run", "--json"])
    result = json_line(capsys)
    assert code == 0, result
    family = METHODS[method].generator
    plan = finetune_plan(generator=family, settings=load_config(str(unequal_epochs_profile)).finetune,
                         num_examples=result["num_examples"])
    assert (result["generator"], result["steps"], result["epochs"]) == (family, plan.steps, plan.epochs)
    assert result["steps"] == (25 if family == "gan" else 13)
    # The model size is that of the networks the method trains, not a UNet for a GAN.
    assert ("generator_parameters" in result) == (family == "gan")


def test_audit_of_a_dp_gan_run_recomputes_the_discriminator_schedule(tmp_path, capsys, unequal_epochs_profile):
    run_dir = tmp_path / "dpgan"
    code = main(["run", "--method", "dpgan", "--epsilon", str(EPSILON), "--profile", str(unequal_epochs_profile),
                 "--out", str(run_dir), "--no-evaluate"])
    capsys.readouterr()
    assert code == 0
    journal_header = json.loads((run_dir / "finetune" / "dpsgd_journal.jsonl").read_text().splitlines()[0])["header"]
    assert journal_header["total_steps"] == 25
    audit = audit_run(run_dir=run_dir)
    assert audit.status == "pass", audit.to_dict()
    assert {check.name for check in audit.checks if check.passed} >= {"noise_multiplier_calibrated",
                                                                       "dpsgd_steps_match_journal"}
