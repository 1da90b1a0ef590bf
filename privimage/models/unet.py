"""Class-conditional UNet for diffusion models (DPDM / DDPM style).

The network follows the DDPM UNet that DPDM (Dockhorn et al., 2023) uses for DP
training, restricted to layers that treat every sample on its own, because
DP-SGD needs per-sample gradients (DESIGN.md, Privacy): GroupNorm instead of
BatchNorm, SiLU, residual blocks that add an embedding of the noise level and of
the class, optional self-attention at chosen resolutions, dropout.

Class conditioning reserves one extra label, ``num_classes``, as the "null"
class: training replaces labels by it with probability ``label_dropout`` so the
same network also learns the unconditional model that classifier-free guidance
needs (Ho & Salimans, 2021).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from privimage.errors import ConfigError


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels each (1 group for tiny widths)."""
    # Normalising within a sample keeps per-sample gradients exact (no BatchNorm).
    max_groups = max(1, min(32, channels // 4))
    num_groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(num_groups, channels, eps=1e-6)


def timestep_embedding(noise_level: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the noise level t in [0, 1] (DDPM's positional encoding of 1000 t)."""
    half = dim // 2
    dtype = noise_level.dtype if noise_level.is_floating_point() else torch.float32
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=noise_level.device, dtype=dtype) / half)
    angles = 1000.0 * noise_level.to(dtype)[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class ResidualBlock(nn.Module):
    """GN-SiLU-conv, GN modulated by the (noise level + class) embedding, SiLU-dropout-conv, skip.

    The embedding sets a per-channel scale and shift after the second GroupNorm
    ("scale-shift norm" of improved DDPM / ADM, EDM's adaptive scale).
    """

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embedding = nn.Linear(embedding_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # A 1x1 conv matches channels on the skip path only where they change.
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.embedding(F.silu(embedding))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of one image (1x1 convs, so opacus hooks support it)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        query, key, value = self.qkv(self.norm(x)).reshape(batch, 3, channels, height * width).unbind(1)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", query, key) / math.sqrt(channels), dim=-1)
        attended = torch.einsum("bij,bcj->bci", weights, value).reshape(batch, channels, height, width)
        return x + self.proj(attended)


class LevelBlock(nn.Module):
    """One UNet block: a residual block, then self-attention where the resolution asks for it."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.residual = ResidualBlock(in_channels, out_channels, embedding_dim, dropout)
        self.attention = AttentionBlock(out_channels) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.attention(self.residual(x, embedding))


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 conv (the embedding is not used)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest neighbour, then a 3x3 conv (the embedding is not used)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Class-conditional denoising UNet: ``forward(x, noise_level, labels) -> F``, the raw output of EDM's denoiser.

    `privimage.diffusion` feeds it the scaled noisy image and turns F into a
    clean-image estimate (EDM preconditioning).

    Args:
        image_channels: 1 (MNIST) or 3 (CIFAR-10, CelebA).
        image_size: height = width of the images; divisible by 2 ** (len(channel_mult) - 1).
        num_classes: number of real classes; label ``num_classes`` is the null class.
        base_channels: channels at the first resolution.
        channel_mult: channel multiplier per resolution level (one level per entry).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sizes (e.g. ``(16,)``) whose blocks add self-attention;
            the middle of the network always has it.
        dropout: dropout probability inside residual blocks.
    """

    def __init__(
        self,
        *,
        image_channels: int,
        image_size: int,
        num_classes: int,
        base_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        attention_resolutions: tuple[int, ...] = (),
        dropout: float = 0.0,
    ):
        super().__init__()
        self.image_channels = image_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.base_channels = base_channels
        embedding_dim = 4 * base_channels

        # Noise-level and class embeddings are summed into one conditioning vector.
        self.noise_embedding = nn.Sequential(
            nn.Linear(base_channels, embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim)
        )
        self.class_embedding = nn.Embedding(num_classes + 1, embedding_dim)
        self.input_conv = nn.Conv2d(image_channels, base_channels, 3, padding=1)

        # Encoder: every block's output is a skip connection; remember their channels for the decoder.
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        channels = base_channels
        resolution = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(LevelBlock(channels, base_channels * mult, embedding_dim, dropout,
                                            resolution in attention_resolutions))
                channels = base_channels * mult
                skip_channels.append(channels)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(channels))
                skip_channels.append(channels)
                resolution //= 2

        self.middle = nn.ModuleList([
            LevelBlock(channels, channels, embedding_dim, dropout, attention=True),
            LevelBlock(channels, channels, embedding_dim, dropout, attention=False),
        ])

        # Decoder: one more block per level than the encoder, each consuming one skip connection.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(LevelBlock(channels + skip_channels.pop(), base_channels * mult, embedding_dim,
                                          dropout, resolution in attention_resolutions))
                channels = base_channels * mult
            if level != 0:
                self.up.append(Upsample(channels))
                resolution *= 2

        self.output = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, image_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The network output F for noisy ``x`` (`privimage.diffusion.preconditioning` says how it is used).

        Args:
            x: noisy images scaled to unit variance (c_in * x_t), B x C x H x W.
            noise_level: diffusion time t in [0, 1] per image (shape B).
            labels: class per image in [0, num_classes]; ``num_classes`` is the null class.

        Returns:
            F, same shape as ``x``.
        """
        embedding = self.noise_embedding(timestep_embedding(noise_level, self.base_channels))
        embedding = embedding + self.class_embedding(labels)

        h = self.input_conv(x)
        skips = [h]
        for block in self.down:
            h = block(h, embedding)
            skips.append(h)
        for block in self.middle:
            h = block(h, embedding)
        for block in self.up:
            if isinstance(block, LevelBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, embedding)
        return self.output(h)


def check_unet_shape(*, image_size: int, channel_mult: tuple[int, ...]) -> None:
    """Raise `ConfigError` unless every downsampling level halves the image exactly."""
    factor = 2 ** (len(channel_mult) - 1)
    if not channel_mult or image_size % factor:
        raise ConfigError(
            f"diffusion: image size {image_size} is not divisible by 2**{len(channel_mult) - 1} "
            f"(channel_mult {tuple(channel_mult)})"
        )
