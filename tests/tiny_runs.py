"""Real ``privimage run`` folders in seconds: the smoke profile cut to a few steps, shared by the run-folder tests."""

from __future__ import annotations

from pathlib import Path

import yaml

SMOKE_PROFILE = Path(__file__).resolve().parent.parent / "privimage" / "configs" / "smoke.yaml"


def tiny_profile(folder: Path) -> Path:
    """Write ``folder/tiny.yaml``: smoke with a few pre-training and DP-SGD steps (a checkpoint every two), 20 samples."""
    profile = yaml.safe_load(SMOKE_PROFILE.read_text())
    profile["pretrain"].update(steps=4, gan_steps=4, checkpoint_every=2)
    profile["finetune"].update(epochs=0.07, gan_epochs=0.07, checkpoint_every=2)
    profile["sampling"].update(num_samples=20, batch_size=20, ddim_steps=2)
    path = Path(folder) / "tiny.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path
