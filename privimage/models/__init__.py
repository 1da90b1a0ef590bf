"""Generative models: the class-conditional diffusion UNet and the conditional GAN.

``build_unet`` and ``build_gan`` turn the ``diffusion:`` and ``gan:`` config
sections into networks; every layer treats each sample on its own (GroupNorm,
never BatchNorm) so that DP-SGD can clip per-sample gradients.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from privimage.config import DiffusionModelConfig, GANModelConfig
from privimage.errors import ConfigError
from privimage.models.gan import (
    Discriminator,
    Generator,
    discriminator_loss_fake_per_example,
    discriminator_loss_per_row,
    discriminator_loss_real_per_example,
    generator_loss_per_example,
)
from privimage.models.null_label import NullLabelModel
from privimage.models.presets import UNET_PRESETS, UNetPreset
from privimage.models.unet import UNet, check_unet_shape

__all__ = [
    "UNET_PRESETS", "UNetPreset", "UNet", "Generator", "Discriminator", "NullLabelModel",
    "build_unet", "build_gan", "unet_shape", "count_parameters",
    "discriminator_loss_real_per_example", "discriminator_loss_fake_per_example",
    "discriminator_loss_per_row", "generator_loss_per_example",
]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (works on the meta device too)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def unet_shape(config: DiffusionModelConfig) -> UNetPreset:
    """The UNet shape a config names: its preset, or its own fields when ``preset == "custom"``.

    Raises:
        ConfigError: unknown preset name.
    """
    if config.preset == "custom":
        return UNetPreset(
            base_channels=config.base_channels,
            channel_mult=tuple(config.channel_mult),
            num_res_blocks=config.num_res_blocks,
            attention_resolutions=tuple(config.attention_resolutions),
        )
    if config.preset not in UNET_PRESETS:
        raise ConfigError(
            f"diffusion.preset: unknown preset '{config.preset}' (choose from custom, {', '.join(UNET_PRESETS)})"
        )
    return UNET_PRESETS[config.preset]


def build_unet(config: DiffusionModelConfig, *, image_channels: int, image_size: int, num_classes: int,
               device: torch.device | str | None = None) -> UNet:
    """Build the class-conditional diffusion UNet a config describes.

    Args:
        config: the ``diffusion`` section (preset or custom shape, dropout).
        image_channels: 1 or 3.
        image_size: 32 or 64 (any size divisible by 2 ** (levels - 1)).
        num_classes: number of real classes; the null class ``num_classes`` is added.
        device: where to create the parameters; ``"meta"`` counts them without memory.

    Returns:
        The `UNet`.

    Raises:
        ConfigError: unknown preset, bad shape, or bad dropout.
    """
    shape = unet_shape(config)
    if image_channels not in (1, 3):
        raise ConfigError(f"diffusion: images must have 1 or 3 channels, got {image_channels}")
    if num_classes < 1:
        raise ConfigError(f"diffusion: need at least one class, got {num_classes}")
    if shape.base_channels < 1 or shape.num_res_blocks < 1 or any(m < 1 for m in shape.channel_mult):
        raise ConfigError(f"diffusion: channels and block counts must be positive, got {shape}")
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"diffusion.dropout must lie in [0, 1), got {config.dropout}")
    check_unet_shape(image_size=image_size, channel_mult=shape.channel_mult)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return UNet(
            image_channels=image_channels,
            image_size=image_size,
            num_classes=num_classes,
            base_channels=shape.base_channels,
            channel_mult=shape.channel_mult,
            num_res_blocks=shape.num_res_blocks,
            attention_resolutions=shape.attention_resolutions,
            dropout=config.dropout,
        )


def build_gan(config: GANModelConfig, *, image_channels: int, image_size: int,
              num_classes: int) -> tuple[Generator, Discriminator]:
    """Build the class-conditional generator and discriminator a config describes.

    Args:
        config: the ``gan`` section (latent size, widths, update ratio).
        image_channels: 1 or 3.
        image_size: 8, 16, 32, 64, ...
        num_classes: number of classes.

    Returns:
        ``(generator, discriminator)``.

    Raises:
        ConfigError: non-positive sizes or an unsupported image size.
    """
    if min(config.latent_dim, config.generator_width, config.discriminator_width, config.update_ratio) < 1:
        raise ConfigError(f"gan: latent_dim, widths and update_ratio must be positive, got {config}")
    if image_channels not in (1, 3):
        raise ConfigError(f"gan: images must have 1 or 3 channels, got {image_channels}")
    generator = Generator(latent_dim=config.latent_dim, width=config.generator_width,
                          image_channels=image_channels, image_size=image_size, num_classes=num_classes)
    discriminator = Discriminator(width=config.discriminator_width, image_channels=image_channels,
                                  image_size=image_size, num_classes=num_classes)
    return generator, discriminator

