"""Time one DP-SGD gradient step three ways: torch.func per-sample, opacus hooks, non-private.

``python -m privimage.dp.timing`` prints one JSON line per (method, K): the
median wall time of forward+backward for a batch of B images with K noise
draws each (B*K rows through the network in every method), and on CUDA the
peak memory. Methods:

- ``non_private``: the mean loss over the B*K rows, one backward (no per-sample gradients);
- ``torch_func``: `compute_per_sample_gradients` (B per-sample gradients);
- ``opacus_hooks``: `compute_per_sample_gradients_opacus` (B*K per-row gradients, averaged in groups of K).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from privimage.config import DiffusionModelConfig
from privimage.diffusion import diffusion_loss_from_noise, draw_diffusion_noise
from privimage.dp.per_sample import compute_per_sample_gradients, compute_per_sample_gradients_opacus
from privimage.models import build_unet, count_parameters

METHODS = ("non_private", "torch_func", "opacus_hooks")


def time_gradient_step(
    *,
    method: str,
    config: DiffusionModelConfig,
    batch_size: int,
    noise_multiplicity: int,
    image_channels: int = 1,
    image_size: int = 32,
    num_classes: int = 10,
    repeats: int = 10,
    device: str = "cpu",
) -> dict:
    """Median seconds (and CUDA peak bytes) of one gradient step of ``method``.

    Args:
        method: one of ``non_private``, ``torch_func``, ``opacus_hooks``.
        config: the UNet to time.
        batch_size: B images.
        noise_multiplicity: K draws per image.
        image_channels, image_size, num_classes: the data shape.
        repeats: timed steps after one warm-up step.
        device: ``cpu`` or ``cuda``.

    Returns:
        A dict with the settings, ``median_seconds`` and ``peak_memory_bytes`` (None on CPU).
    """
    torch.manual_seed(0)
    model = build_unet(config, image_channels=image_channels, image_size=image_size,
                       num_classes=num_classes).to(device)
    images = torch.rand(batch_size, image_channels, image_size, image_size, device=device) * 2 - 1
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    noise, times, conditioning = draw_diffusion_noise(images, labels, noise_multiplicity=noise_multiplicity,
                                                      label_dropout=0.1, num_classes=num_classes)
    rows = (images.repeat_interleave(noise_multiplicity, dim=0), noise.flatten(0, 1)[:, None],
            times.flatten()[:, None], conditioning.flatten()[:, None])

    def step():
        if method == "non_private":
            diffusion_loss_from_noise(model, images, noise, times, conditioning).mean().backward()
        elif method == "torch_func":
            compute_per_sample_gradients(model, diffusion_loss_from_noise, images, noise, times, conditioning)
        elif method == "opacus_hooks":
            compute_per_sample_gradients_opacus(model, diffusion_loss_from_noise, *rows,
                                                rows_per_example=noise_multiplicity)
        else:
            raise ValueError(f"unknown method {method!r}")

    def clear():
        for parameter in model.parameters():
            parameter.grad = None
            parameter.grad_sample = None

    durations = []
    for repeat in range(repeats + 1):
        clear()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        # The first step pays one-off costs (allocator, kernel selection).
        if repeat:
            durations.append(time.perf_counter() - start)
    return {
        "method": method,
        "parameters": count_parameters(model),
        "batch_size": batch_size,
        "noise_multiplicity": noise_multiplicity,
        "device": device,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "median_seconds": statistics.median(durations),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--multiplicities", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = DiffusionModelConfig(base_channels=args.base_channels, channel_mult=tuple(args.channel_mult))
    for multiplicity in args.multiplicities:
        for method in args.methods:
            result = time_gradient_step(method=method, config=config, batch_size=args.batch_size,
                                        noise_multiplicity=multiplicity, repeats=args.repeats, device=args.device)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
