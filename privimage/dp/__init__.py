"""DP-SGD building blocks: per-sample gradients (with noise multiplicity) and model checks.

Clipping, noise and accounting are opacus' (`DPOptimizer`, `DPDataLoader`,
accountants); this package computes the per-sample gradients they consume.
"""

from privimage.dp.per_sample import (
    check_dp_compatible,
    compute_per_sample_gradients,
    compute_per_sample_gradients_opacus,
)

__all__ = ["check_dp_compatible", "compute_per_sample_gradients", "compute_per_sample_gradients_opacus"]
