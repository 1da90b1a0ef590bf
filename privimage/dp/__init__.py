"""DP-SGD building blocks: per-sample gradients (with noise multiplicity K) and model checks.

Clipping, noise and accounting are opacus' (`DPOptimizer`, accountants); this
package computes the per-sample gradients they consume. The DP fine-tuning
step that uses them (paper Algorithm 1, DPDM's noise multiplicity) is
`privimage.training.dpsgd.dp_sgd_step`.
"""

from privimage.dp.per_sample import (
    check_dp_compatible,
    compute_per_sample_gradients,
    compute_per_sample_gradients_opacus,
)

__all__ = ["check_dp_compatible", "compute_per_sample_gradients", "compute_per_sample_gradients_opacus"]
