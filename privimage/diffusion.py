"""Denoising diffusion: noise schedule, the per-example loss with noise multiplicity, DDIM sampling, EMA.

The forward process is the paper's (Section 2.2; Ho et al., 2020) in continuous
time with the cosine schedule of Nichol & Dhariwal (2021): for a clean image x0
in [-1, 1], t ~ U(0, 1) and eps ~ N(0, I),

    x_t = sqrt(alpha_bar(t)) * x0 + sqrt(1 - alpha_bar(t)) * eps.

The denoiser D is parameterised and weighted as in EDM (Karras et al., 2022),
as DPDM does (`preconditioning` says why), and the loss is the paper's Eq. 2
averaged over K noise draws per image (DPDM's noise multiplicity,
`diffusion_loss_per_example`). Sampling is deterministic DDIM with
classifier-free guidance (`ddim_sample`). Nothing here reads sensitive data or
draws DP noise: DP-SGD wraps the loss in `privimage.training.dpsgd`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from privimage.errors import ConfigError

# Offset s of the cosine schedule, and the smallest alpha_bar (t = 1 gives a log-SNR of about -9.2).
COSINE_OFFSET = 0.008
MIN_ALPHA_BAR = 1e-4
# EDM's sigma_data for images in [-1, 1] (Karras et al., 2022, Section 5).
SIGMA_DATA = 0.5


def alpha_bar(times: torch.Tensor) -> torch.Tensor:
    """Signal fraction alpha_bar(t) of the cosine schedule, for t in [0, 1] (alpha_bar(0) = 1).

    ``alpha_bar(t) = cos^2(((t + s) / (1 + s)) * pi / 2) / cos^2((s / (1 + s)) * pi / 2)``, s = 0.008.
    """
    def unnormalised(t: torch.Tensor) -> torch.Tensor:
        return torch.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * (math.pi / 2)) ** 2

    # Normalising by the same computation at t = 0 makes alpha_bar(0) exactly 1 in any precision.
    return (unnormalised(times) / unnormalised(torch.zeros_like(times))).clamp(MIN_ALPHA_BAR, 1.0)


def preconditioning(signal: torch.Tensor, sigma_data: float = SIGMA_DATA) -> tuple[torch.Tensor, ...]:
    """EDM's ``(c_in, c_skip, c_out)`` at signal fraction ``signal`` = alpha_bar(t), applied to x_t.

    EDM's Table 1 rewritten for x_t instead of x0 + sigma * eps (sigma^2 = (1 - alpha_bar) / alpha_bar)::

        D(x_t, t, y) = c_skip * x_t + c_out * F(c_in * x_t, t, y)
        Z^2    = 1 - alpha_bar + sigma_data^2 * alpha_bar
        c_in   = 1 / Z
        c_skip = sigma_data^2 * sqrt(alpha_bar) / Z^2
        c_out  = sigma_data * sqrt(1 - alpha_bar) / Z

    ``c_in`` gives the network an input of unit variance when the data's is
    ``sigma_data``, and the loss weight lambda(sigma) = 1 / c_out^2 makes the loss
    ``lambda * ||D - x0||^2 = ||F - network_target||^2``.

    Why not epsilon-prediction: its loss weights the clean-image error by
    alpha_bar / (1 - alpha_bar), about 0.03 at t = 0.9 and 1e-4 at t = 1, so the
    network barely learns the data's mean at high noise, and dividing its noise
    estimate by sqrt(alpha_bar) while sampling amplifies the error 100-fold there
    (measured: pre-trained 0.29M UNets kept grey backgrounds in 56-62% of their
    samples). EDM's weight stays at 1 / sigma_data^2 at high noise: the network
    predicts the clean image there and the noise at low noise. With
    sigma_data = 1 this is v-prediction (Salimans & Ho, 2022) with F = -v.
    """
    if not sigma_data > 0:
        raise ConfigError(f"sigma_data must be positive, got {sigma_data}")
    variance = 1 - signal + sigma_data**2 * signal
    return variance.rsqrt(), sigma_data**2 * signal.sqrt() / variance, sigma_data * (1 - signal).sqrt() * variance.rsqrt()


def network_target(
    images: torch.Tensor, noise: torch.Tensor, signal: torch.Tensor, sigma_data: float = SIGMA_DATA
) -> torch.Tensor:
    """The output F that makes D exact: ``(x0 - c_skip * x_t) / c_out``, in a form without the division.

    The closed form stays finite as t -> 0, where c_out -> 0 and the quotient loses
    all precision in float32.
    """
    input_scale, _, _ = preconditioning(signal, sigma_data)
    return ((1 - signal).sqrt() * images / sigma_data - sigma_data * signal.sqrt() * noise) * input_scale


def draw_diffusion_noise(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    noise_multiplicity: int,
    label_dropout: float,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the K noise draws of every image: noise, times and (possibly dropped) labels.

    Kept apart from the loss so that a test, or the per-sample gradient code, can
    replay exactly the same draws.

    Args:
        images: clean images, B x C x H x W (only shape, device and dtype are used).
        labels: classes, shape B, in [0, num_classes).
        noise_multiplicity: K >= 1 draws per image.
        label_dropout: probability of replacing a draw's label by the null class.
        num_classes: number of real classes (the null class is ``num_classes``).
        generator: optional torch generator for reproducible draws.

    Returns:
        ``(noise, times, conditioning_labels)`` of shapes B x K x C x H x W, B x K and B x K.
    """
    if noise_multiplicity < 1:
        raise ConfigError(f"noise_multiplicity must be at least 1, got {noise_multiplicity}")
    if not 0.0 <= label_dropout <= 1.0:
        raise ConfigError(f"label_dropout must lie in [0, 1], got {label_dropout}")
    batch = images.shape[0]
    device = images.device
    noise = torch.randn((batch, noise_multiplicity, *images.shape[1:]), generator=generator,
                        device=device, dtype=images.dtype)
    times = torch.rand((batch, noise_multiplicity), generator=generator, device=device, dtype=images.dtype)
    # Classifier-free guidance: some draws see the null class instead of the label.
    dropped = torch.rand((batch, noise_multiplicity), generator=generator, device=device) < label_dropout
    conditioning_labels = torch.where(dropped, num_classes, labels[:, None].expand(-1, noise_multiplicity))
    return noise, times, conditioning_labels


def diffusion_loss_from_noise(
    model: Callable[..., torch.Tensor],
    images: torch.Tensor,
    noise: torch.Tensor,
    times: torch.Tensor,
    conditioning_labels: torch.Tensor,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """The EDM-weighted Eq. 2 per image, averaged over its K given noise draws.

    The B x K noisy rows go through the model as one batch. This is the
    ``per_example_loss_fn`` that `privimage.dp.compute_per_sample_gradients`
    takes, with ``noise``, ``times`` and ``conditioning_labels`` from
    `draw_diffusion_noise`.

    Args:
        model: ``model(c_in * x_t, t, labels) -> F`` (a `UNet` or a functional call of one).
        images: clean images in [-1, 1], B x C x H x W.
        noise: B x K x C x H x W standard normal noise.
        times: B x K diffusion times in [0, 1].
        conditioning_labels: B x K labels in [0, num_classes] (``num_classes`` = null).
        sigma_data: EDM's data standard deviation (`preconditioning`).

    Returns:
        Loss per image, shape B (mean squared error over pixels and draws).
    """
    batch, multiplicity = times.shape
    signal = alpha_bar(times).view(batch, multiplicity, *([1] * (images.dim() - 1)))
    noisy = signal.sqrt() * images[:, None] + (1 - signal).sqrt() * noise
    input_scale, _, _ = preconditioning(signal, sigma_data)
    predicted = model((input_scale * noisy).flatten(0, 1), times.flatten(), conditioning_labels.flatten())
    target = network_target(images[:, None], noise, signal, sigma_data)
    squared_error = (predicted - target.flatten(0, 1)) ** 2
    return squared_error.flatten(1).mean(dim=1).view(batch, multiplicity).mean(dim=1)


def diffusion_loss_per_example(
    model: Callable[..., torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    noise_multiplicity: int,
    label_dropout: float,
    num_classes: int,
    generator: torch.Generator | None = None,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """Each image's denoising loss (Eq. 2, EDM-weighted) averaged over K fresh noise draws.

    Noise multiplicity (Dockhorn et al., 2023, DPDM Section 3.2): the K draws of
    (t, eps) share one image, so the gradient of the averaged loss is still one
    example's gradient. Clipping it costs no extra privacy, and it has lower
    variance than a single draw.

    Args:
        model: ``model(c_in * x_t, t, labels) -> F``.
        images: clean images in [-1, 1], B x C x H x W.
        labels: classes, shape B, in [0, num_classes).
        noise_multiplicity: K draws of (t, eps) per image.
        label_dropout: probability of the null label per draw (classifier-free guidance).
        num_classes: number of real classes.
        generator: optional torch generator for the draws.
        sigma_data: EDM's data standard deviation (`preconditioning`).

    Returns:
        Loss per image, shape B.
    """
    noise, times, conditioning_labels = draw_diffusion_noise(
        images, labels, noise_multiplicity=noise_multiplicity, label_dropout=label_dropout,
        num_classes=num_classes, generator=generator,
    )
    return diffusion_loss_from_noise(model, images, noise, times, conditioning_labels, sigma_data=sigma_data)


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    *,
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    num_classes: int,
    steps: int = 50,
    guidance_scale: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """Deterministic DDIM sampling (eta = 0) from pure noise to images.

    Song et al. (2021), Eq. 12 with eta = 0 (EDM's Euler sampler in sigma), with
    classifier-free guidance (Ho & Salimans, 2021): the network also learned the
    unconditional model from labels replaced by the null class ``num_classes``
    (``label_dropout``), and sampling mixes ``F = (1 + w) * F(x, t, y) - w * F(x, t, null)``;
    D is affine in F, so this is the same mix of the clean-image estimates.
    Sampling uses only the trained model, so it needs no privacy accounting.

    Args:
        model: the trained network F (its EMA copy, usually).
        labels: class of each image to generate, shape N, in [0, num_classes).
        image_shape: (C, H, W) of one image.
        num_classes: number of real classes (the null class for guidance is ``num_classes``).
        steps: number of network evaluations (times 2 with guidance).
        guidance_scale: w of classifier-free guidance; 0 samples the conditional model alone.
        generator: optional torch generator for the initial noise.
        progress: show a tqdm bar over the steps.
        sigma_data: the ``sigma_data`` the network was trained with.

    Returns:
        Images in [-1, 1], N x C x H x W, on the device of ``labels``.
    """
    if steps < 1:
        raise ConfigError(f"sampling steps must be at least 1, got {steps}")
    if guidance_scale < 0:
        raise ConfigError(f"guidance_scale must be non-negative, got {guidance_scale}")
    device = labels.device
    count = labels.shape[0]
    x = torch.randn((count, *image_shape), generator=generator, device=device)
    times = torch.linspace(1.0, 0.0, steps + 1, device=device)
    was_training = model.training
    model.eval()
    try:
        for index in tqdm(range(steps), desc="DDIM", disable=not progress, leave=False):
            t_now, t_next = times[index], times[index + 1]
            signal_now, signal_next = alpha_bar(t_now), alpha_bar(t_next)
            input_scale, skip_scale, output_scale = preconditioning(signal_now, sigma_data)
            output = _guided_output(model, input_scale * x, t_now.expand(count), labels, num_classes, guidance_scale)
            # The clean-image estimate D, clipped to the data range; the noise is re-derived from it.
            x0 = (skip_scale * x + output_scale * output).clamp(-1.0, 1.0)
            eps = (x - signal_now.sqrt() * x0) / (1 - signal_now).sqrt()
            # DDIM update (Song et al., 2021, Eq. 12 with sigma = 0).
            x = signal_next.sqrt() * x0 + (1 - signal_next).sqrt() * eps
    finally:
        model.train(was_training)
    return x.clamp(-1.0, 1.0)


def _guided_output(model, x, times, labels, num_classes, guidance_scale):
    """F(x, t, y), or the classifier-free guided mix when guidance_scale > 0 (one batched call)."""
    if guidance_scale == 0:
        return model(x, times, labels)
    null = torch.full_like(labels, num_classes)
    both = model(torch.cat([x, x]), torch.cat([times, times]), torch.cat([labels, null]))
    conditional, unconditional = both.chunk(2)
    return (1 + guidance_scale) * conditional - guidance_scale * unconditional


class ExponentialMovingAverage:
    """An exponential moving average of a model's weights, kept in a separate copy (``ema.model``).

    ``ema.update(model)`` after every optimizer step sets
    ``ema_weight = d * ema_weight + (1 - d) * weight`` with the warmed-up decay
    ``d = min(decay, (1 + n) / (10 + n))`` after n updates (TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``): without the warm-up, a run
    of a few hundred steps at decay 0.999 would sample from an average that is
    still mostly the random initialisation (0.999^300 = 0.74). Sample from
    ``ema.model``. Buffers (none in our networks) are copied as they are.

    Args:
        model: the model being trained; copied once here.
        decay: weight of the past, in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"ema_decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
            # Per-sample gradients of the live model are not part of its average.
            if hasattr(parameter, "grad_sample"):
                del parameter.grad_sample
            parameter.grad = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        decay = self.current_decay()
        for average, current in zip(self.model.parameters(), model.parameters()):
            average.lerp_(current.detach(), 1.0 - decay)
        for average, current in zip(self.model.buffers(), model.buffers()):
            average.copy_(current)
        self.num_updates += 1

    def current_decay(self) -> float:
        """The decay the next update uses: warmed up over the first updates, then ``decay``."""
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the average."""
        for average, target in zip(self.model.parameters(), model.parameters()):
            target.copy_(average)
        for average, target in zip(self.model.buffers(), model.buffers()):
            target.copy_(average)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.model.load_state_dict(state["model"])
