"""Named UNet sizes: the parameter counts the paper reports, as (width, depth) settings.

One architecture family covers both of the paper's size sweeps: channel
multipliers (1, 2, 2), two residual blocks per level and self-attention at 16x16
(DPDM's layout), scaled by the base channel count. The counts below are for 32x32
images with 10 classes; they change by under 0.1% between 1 and 3 channels, and
do not depend on the image size. ``tests/test_models_presets.py`` checks each
against its name within 5%.

- CIFAR-10 size sweep (paper Section 5, RQ4): 1.8M, 4.0M, 6.1M, 15.7M, 27.9M.
- PDP-Diffusion's 80M model (paper Table 1): the 4-level DDPM CIFAR-10 layout.
- MNIST over-parameterization sweep (paper Appendix B, Fig. 8): 1.75M, 6.99M,
  27.9M, 62.7M, 112M, 251M (base 32, 64, 128, 192, 256, 384).
- CPU sweep of the quick profile: 0.11M, 0.25M, 0.44M (base 8, 12, 16: the
  CIFAR-10 sweep's 1.8M/4.0M/6.1M layout at a quarter of the width, so that
  the size ablation fits a 2-core machine; 1-channel counts), and 5.6M, the
  80M layout at the same width ratio, for Table 4 (1-channel count).
- ``tiny``: about 45k parameters, for smoke tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetPreset:
    """The shape of one UNet size: see `privimage.models.unet.UNet` for the meaning of each field."""

    base_channels: int
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)


UNET_PRESETS: dict[str, UNetPreset] = {
    "tiny": UNetPreset(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=()),
    # CIFAR-10 / CelebA sweep (3 channels).
    "1.8M": UNetPreset(base_channels=32),
    "4.0M": UNetPreset(base_channels=48),
    "6.1M": UNetPreset(base_channels=60),
    "15.7M": UNetPreset(base_channels=96),
    "27.9M": UNetPreset(base_channels=128),
    "80M": UNetPreset(base_channels=144, channel_mult=(1, 2, 2, 2), num_res_blocks=4),
    # The quick profile's CPU sweep (1 channel): the layout above at a quarter of the width.
    "0.11M": UNetPreset(base_channels=8),
    "0.25M": UNetPreset(base_channels=12),
    "0.44M": UNetPreset(base_channels=16),
    # PDP-Diffusion's 80M layout at the width ratio of 0.44M to 6.1M (16/60): 12.7 times 0.44M, as 80M is 13.1
    # times 6.1M (paper Table 4 on the quick profile).
    "5.6M": UNetPreset(base_channels=38, channel_mult=(1, 2, 2, 2), num_res_blocks=4),
    # MNIST over-parameterization sweep (1 channel); 27.9M is shared with the list above.
    "1.75M": UNetPreset(base_channels=32),
    "6.99M": UNetPreset(base_channels=64),
    "62.7M": UNetPreset(base_channels=192),
    "112M": UNetPreset(base_channels=256),
    "251M": UNetPreset(base_channels=384),
}
