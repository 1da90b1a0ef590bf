"""DP-SGD building blocks: per-sample gradients (with noise multiplicity) and model checks.

Clipping, noise and accounting are opacus' (`DPOptimizer`, `DPDataLoader`,
accountants); this package computes the per-sample gradients they consume.
One DP fine-tuning step of a diffusion model (paper Algorithm 1, DPDM's noise
multiplicity K) reads::

    check_dp_compatible(model)                      # once: no BatchNorm or other sample-mixing layer
    optimizer = DPOptimizer(torch.optim.Adam(model.parameters(), lr), noise_multiplier=sigma,
                            max_grad_norm=C, expected_batch_size=batch_size)
    for images, labels in poisson_loader:           # e.g. opacus DPDataLoader
        noise, times, conditioning = draw_diffusion_noise(
            images, labels, noise_multiplicity=K, label_dropout=p, num_classes=n)
        compute_per_sample_gradients(model, diffusion_loss_from_noise, images, noise, times, conditioning,
                                     chunk_size=physical_batch_size,  # grouped fast path by default
                                     multiplicity_chunk=1)            # draws one at a time: memory of B rows
        optimizer.step()                            # clip each image's gradient, sum, add noise, average
        optimizer.zero_grad()
"""

from privimage.dp.per_sample import (
    check_dp_compatible,
    compute_per_sample_gradients,
    compute_per_sample_gradients_opacus,
)

__all__ = ["check_dp_compatible", "compute_per_sample_gradients", "compute_per_sample_gradients_opacus"]
