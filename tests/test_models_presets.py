"""Every UNet preset has the parameter count the paper names it by (within 5%)."""

import pytest
import torch

from privimage.config import DiffusionModelConfig
from privimage.errors import ConfigError
from privimage.models import UNET_PRESETS, build_unet, count_parameters, unet_shape

CIFAR10_SIZES = {"1.8M": 1.8e6, "4.0M": 4.0e6, "6.1M": 6.1e6, "15.7M": 15.7e6, "27.9M": 27.9e6, "80M": 80e6}
CPU_SIZES = {"0.11M": 0.11e6, "0.25M": 0.25e6, "0.44M": 0.44e6, "5.6M": 5.6e6}
MNIST_SIZES = {"1.75M": 1.75e6, "6.99M": 6.99e6, "27.9M": 27.9e6, "62.7M": 62.7e6, "112M": 112e6, "251M": 251e6}


def meta_count(preset, channels, image_size=32):
    # The meta device allocates nothing, so even the 251M model counts instantly.
    model = build_unet(DiffusionModelConfig(preset=preset), image_channels=channels, image_size=image_size,
                       num_classes=10, device="meta")
    return count_parameters(model)


@pytest.mark.parametrize("preset, target", sorted(CIFAR10_SIZES.items()))
def test_cifar10_presets_match_paper_parameter_counts(preset, target):
    assert abs(meta_count(preset, channels=3) / target - 1) < 0.05


@pytest.mark.parametrize("preset, target", sorted(MNIST_SIZES.items()))
def test_mnist_presets_match_paper_parameter_counts(preset, target):
    assert abs(meta_count(preset, channels=1) / target - 1) < 0.05


@pytest.mark.parametrize("preset, target", sorted(CPU_SIZES.items()))
def test_cpu_sweep_presets_match_their_names(preset, target):
    assert abs(meta_count(preset, channels=1) / target - 1) < 0.05


def test_tiny_preset_is_small_enough_for_smoke_tests():
    assert 30_000 < meta_count("tiny", channels=1) < 70_000


def test_every_preset_is_tested():
    assert set(UNET_PRESETS) == set(CIFAR10_SIZES) | set(MNIST_SIZES) | set(CPU_SIZES) | {"tiny"}


def test_64x64_images_build_with_the_same_presets():
    # CelebA64 adds no levels, so the count matches the 32x32 one.
    assert meta_count("1.8M", channels=3, image_size=64) == meta_count("1.8M", channels=3)


def test_custom_uses_the_config_fields_and_unknown_presets_are_refused():
    config = DiffusionModelConfig(preset="custom", base_channels=16, channel_mult=(1, 2), num_res_blocks=1)
    assert unet_shape(config).base_channels == 16
    small = count_parameters(build_unet(config, image_channels=1, image_size=32, num_classes=10, device="meta"))
    wider = DiffusionModelConfig(preset="custom", base_channels=32, channel_mult=(1, 2), num_res_blocks=1)
    assert count_parameters(build_unet(wider, image_channels=1, image_size=32, num_classes=10, device="meta")) > small
    with pytest.raises(ConfigError, match="unknown preset '2M'"):
        build_unet(DiffusionModelConfig(preset="2M"), image_channels=1, image_size=32, num_classes=10)
    assert next(build_unet(config, image_channels=1, image_size=32, num_classes=10).parameters()).device == \
        torch.device("cpu")
