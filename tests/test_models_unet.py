"""The UNet: shapes, conditioning, per-sample independence, and refusal of bad shapes."""

import pytest
import torch

from privimage.config import DiffusionModelConfig
from privimage.errors import ConfigError
from privimage.models import build_unet

torch.set_num_threads(2)
SMALL = DiffusionModelConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,))


@pytest.mark.parametrize("channels, size", [(1, 32), (3, 32), (3, 64), (1, 28)])
def test_output_has_the_input_shape(channels, size):
    model = build_unet(SMALL, image_channels=channels, image_size=size, num_classes=10)
    x = torch.randn(2, channels, size, size)
    assert model(x, torch.rand(2), torch.tensor([0, 10])).shape == x.shape


def test_each_output_depends_only_on_its_own_sample():
    """No layer mixes samples: an image's output is the same alone or in any batch."""
    torch.manual_seed(0)
    model = build_unet(SMALL, image_channels=1, image_size=32, num_classes=10).train()
    x, t, y = torch.randn(4, 1, 32, 32), torch.rand(4), torch.tensor([1, 2, 3, 10])
    batched = model(x, t, y)
    alone = torch.cat([model(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(4)])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_noise_level_and_class_both_change_the_output():
    torch.manual_seed(0)
    model = build_unet(SMALL, image_channels=1, image_size=32, num_classes=10)
    x = torch.randn(1, 1, 32, 32).repeat(3, 1, 1, 1)
    out = model(x, torch.tensor([0.1, 0.9, 0.1]), torch.tensor([3, 3, 10]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # noise level
    assert not torch.allclose(out[0], out[2], atol=1e-4)  # class (vs. the null class)


def test_dropout_is_active_in_training_only():
    config = DiffusionModelConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, dropout=0.5)
    model = build_unet(config, image_channels=1, image_size=16, num_classes=2)
    x, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 1])
    model.train()
    assert not torch.allclose(model(x, t, y), model(x, t, y))
    model.eval()
    assert torch.equal(model(x, t, y), model(x, t, y))


@pytest.mark.parametrize(
    "config, kwargs, match",
    [
        (DiffusionModelConfig(channel_mult=(1, 2, 2, 2)), dict(image_size=28), "not divisible"),
        (SMALL, dict(image_channels=2), "1 or 3 channels"),
        (DiffusionModelConfig(dropout=1.0), {}, "dropout"),
        (DiffusionModelConfig(base_channels=0), {}, "positive"),
    ],
)
def test_bad_shapes_are_config_errors(config, kwargs, match):
    arguments = dict(image_channels=1, image_size=32, num_classes=10) | kwargs
    with pytest.raises(ConfigError, match=match):
        build_unet(config, **arguments)
