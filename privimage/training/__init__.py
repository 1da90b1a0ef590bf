"""Training stages: non-private pre-training, DP-SGD fine-tuning, checkpoints and resume (Section 3.4).

- `pretrain_diffusion`, `pretrain_gan` - fixed-budget pre-training on public data.
- `dp_finetune_diffusion`, `dp_finetune_gan` - DP-SGD with opacus (Algorithm 1),
  sigma calibrated to the run's target epsilon through its ledger (Appendix E).
- `finetune_nonprivate_diffusion`, `finetune_nonprivate_gan` - NonPrivD/NonPrivG,
  the same budget without clipping or noise and without any privacy guarantee.
- `save_checkpoint`, `load_latest_checkpoint` - atomic, weights-only checkpoints;
  a stage re-run with the same run folder resumes from the newest good one.
- `DPStepJournal` - the fsynced record that keeps a resumed run from under-counting.
"""

from privimage.training.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from privimage.training.diffusion_training import (
    dp_finetune_diffusion,
    finetune_nonprivate_diffusion,
    pretrain_diffusion,
)
from privimage.training.dpsgd import (
    calibrate_to_ledger,
    dp_sgd_step,
    make_dp_optimizer,
    poisson_sampler,
    run_dp_sgd,
)
from privimage.training.gan_training import dp_finetune_gan, finetune_nonprivate_gan, pretrain_gan
from privimage.training.journal import DPStepJournal
from privimage.training.plain import run_plain_training
from privimage.training.plan import FinetunePlan, finetune_plan, finetune_schedule

__all__ = [
    "pretrain_diffusion", "dp_finetune_diffusion", "finetune_nonprivate_diffusion",
    "pretrain_gan", "dp_finetune_gan", "finetune_nonprivate_gan",
    "run_dp_sgd", "run_plain_training", "dp_sgd_step", "make_dp_optimizer", "poisson_sampler",
    "finetune_schedule", "finetune_plan", "FinetunePlan", "calibrate_to_ledger",
    "save_checkpoint", "load_checkpoint", "load_latest_checkpoint", "list_checkpoints", "checkpoint_path",
    "DPStepJournal",
]
