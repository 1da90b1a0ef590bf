"""Class-conditional DCGAN-style generator and discriminator (paper Section 2.2, Table 6).

Both networks use GroupNorm, never BatchNorm: the discriminator is trained with
DP-SGD and needs per-sample gradients (DESIGN.md, Privacy), and the generator
keeps the same normalisation so that sampling one image never depends on the
others in its batch.

- Generator: latent z and a class embedding -> 4x4 feature map -> upsampling
  (nearest + 3x3 conv) to the image size, channels halving each time -> tanh.
- Discriminator: strided 4x4 convs down to 4x4 -> a projection discriminator
  (Miyato & Koyama, 2018): ``logit = w . h + embed(y) . h``.

Losses are the non-saturating GAN loss (Goodfellow et al., 2014), written per
example so that the discriminator's DP-SGD step can clip each row's gradient.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from privimage.errors import ConfigError
from privimage.models.unet import group_norm


def _num_stages(image_size: int) -> int:
    """Number of 2x resolution changes between 4x4 and the image size."""
    stages = int(round(math.log2(image_size / 4))) if image_size >= 8 else 0
    if stages < 1 or 4 * 2**stages != image_size:
        raise ConfigError(f"gan: image size must be 4 * 2**n with n >= 1 (8, 16, 32, 64, ...), got {image_size}")
    return stages


class Generator(nn.Module):
    """``forward(z, labels) -> images in [-1, 1]``.

    Args:
        latent_dim: size of the latent vector z.
        width: channels at the image resolution; doubled at each coarser level.
        image_channels: 1 or 3.
        image_size: 8, 16, 32, 64, ...
        num_classes: number of classes of ``labels``.
    """

    def __init__(self, *, latent_dim: int, width: int, image_channels: int, image_size: int, num_classes: int):
        super().__init__()
        stages = _num_stages(image_size)
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        channels = width * 2**stages
        # The class enters through an embedding concatenated to z.
        self.class_embedding = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Linear(2 * latent_dim, channels * 4 * 4)
        self.initial_channels = channels
        blocks = []
        for _ in range(stages):
            blocks += [
                group_norm(channels), nn.ReLU(), nn.Upsample(scale_factor=2.0, mode="nearest"),
                nn.Conv2d(channels, channels // 2, 3, padding=1),
            ]
            channels //= 2
        blocks += [group_norm(channels), nn.ReLU(), nn.Conv2d(channels, image_channels, 3, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.class_embedding(labels)], dim=1))
        return self.blocks(h.view(-1, self.initial_channels, 4, 4))


class Discriminator(nn.Module):
    """``forward(x, labels) -> logits[B]`` (a high logit means "real").

    Args:
        width: channels of the first (full-resolution) conv; each strided conv doubles them.
        image_channels: 1 or 3.
        image_size: 8, 16, 32, 64, ...
        num_classes: number of classes of ``labels``.
    """

    def __init__(self, *, width: int, image_channels: int, image_size: int, num_classes: int):
        super().__init__()
        stages = _num_stages(image_size)
        layers: list[nn.Module] = [nn.Conv2d(image_channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for _ in range(stages):
            layers += [nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), group_norm(2 * channels),
                       nn.LeakyReLU(0.2)]
            channels *= 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
        self.linear = nn.Linear(channels, 1)
        # Projection conditioning: the class embedding is dotted with the pooled features.
        self.class_embedding = nn.Embedding(num_classes, channels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(x).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.class_embedding(labels) * h).sum(dim=1)


def discriminator_loss_real_per_example(discriminator: nn.Module, images: torch.Tensor,
                                        labels: torch.Tensor) -> torch.Tensor:
    """Per-example discriminator loss on real (sensitive) rows: ``softplus(-D(x, y))`` = -log sigmoid(D).

    Args:
        discriminator: the `Discriminator` (or a functional stand-in with the same call signature).
        images: real images in [-1, 1], B x C x H x W.
        labels: their classes, shape B.

    Returns:
        Loss per image, shape B.
    """
    return F.softplus(-discriminator(images, labels))


def discriminator_loss_fake_per_example(discriminator: nn.Module, images: torch.Tensor,
                                        labels: torch.Tensor) -> torch.Tensor:
    """Per-example discriminator loss on generated rows: ``softplus(D(G(z), y))`` = -log(1 - sigmoid(D)).

    Args:
        discriminator: the `Discriminator`.
        images: generated images (detached from the generator), B x C x H x W.
        labels: the classes they were generated for, shape B.

    Returns:
        Loss per image, shape B.
    """
    return F.softplus(discriminator(images, labels))


def discriminator_loss_per_row(discriminator: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                               is_real: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of a mixed batch, one value per row (real or fake).

    The DP discriminator step concatenates a Poisson-sampled batch of real images
    with a batch of generated ones and passes this function to
    `privimage.dp.compute_per_sample_gradients`: every row's gradient is clipped
    on its own and the noise covers the sum (opacus' DCGAN example). Only real
    rows are sensitive; removing one changes the clipped sum by at most the
    clipping norm, so the sensitivity, and the privacy cost, are those of the
    real batch alone. Generated rows come from the generator, itself a
    post-processing of earlier DP discriminators. This holds only if the fake
    rows do not depend on the real batch: use a fixed number of them (e.g. the
    expected batch size, not the sampled one, or one more real row would also
    bring one more fake row) and draw their labels independently of the real
    labels (e.g. uniformly over the classes).

    Args:
        discriminator: the `Discriminator`.
        images: real and generated images, B x C x H x W.
        labels: classes, shape B.
        is_real: bool (or 0/1) per row, shape B.

    Returns:
        Loss per row, shape B.
    """
    logits = discriminator(images, labels)
    # softplus(-l) for real rows, softplus(l) for fake rows.
    sign = torch.where(is_real.bool(), -1.0, 1.0).to(logits.dtype)
    return F.softplus(sign * logits)


def generator_loss_per_example(discriminator: nn.Module, fake_images: torch.Tensor,
                               labels: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``softplus(-D(G(z), y))`` per generated image.

    The generator never sees real data; its gradient flows through the
    (already DP) discriminator, so this step has no privacy cost.

    Args:
        discriminator: the `Discriminator`.
        fake_images: generator outputs (not detached), B x C x H x W.
        labels: the classes they were generated for, shape B.

    Returns:
        Loss per image, shape B.
    """
    return F.softplus(-discriminator(fake_images, labels))
