"""The conditional GAN: shapes, sizes, and the per-example losses DP training relies on."""

import pytest
import torch
from torch.nn import functional as F

from privimage.config import GANModelConfig
from privimage.errors import ConfigError
from privimage.models import (
    build_gan,
    count_parameters,
    discriminator_loss_fake_per_example,
    discriminator_loss_per_row,
    discriminator_loss_real_per_example,
    generator_loss_per_example,
)

torch.set_num_threads(2)


@pytest.mark.parametrize("channels, size", [(1, 32), (3, 32), (3, 64)])
def test_generator_and_discriminator_shapes(channels, size):
    generator, discriminator = build_gan(GANModelConfig(latent_dim=16, generator_width=8, discriminator_width=8),
                                         image_channels=channels, image_size=size, num_classes=10)
    labels = torch.tensor([0, 9, 4])
    images = generator(torch.randn(3, 16), labels)
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert discriminator(images, labels).shape == (3,)


def test_paper_widths_give_table_6_sizes():
    generator, discriminator = build_gan(GANModelConfig(latent_dim=100, generator_width=128, discriminator_width=60),
                                         image_channels=3, image_size=32, num_classes=10)
    assert abs(count_parameters(generator) / 9.42e6 - 1) < 0.05
    assert abs(count_parameters(discriminator) / 2.37e6 - 1) < 0.05


def test_labels_condition_both_networks():
    torch.manual_seed(0)
    generator, discriminator = build_gan(GANModelConfig(latent_dim=16, generator_width=8, discriminator_width=8),
                                         image_channels=1, image_size=16, num_classes=10)
    z = torch.randn(1, 16).repeat(2, 1)
    images = generator(z, torch.tensor([1, 2]))
    assert not torch.allclose(images[0], images[1])
    logits = discriminator(images[:1].repeat(2, 1, 1, 1), torch.tensor([1, 2]))
    assert not torch.isclose(logits[0], logits[1])


def test_per_row_loss_picks_the_real_or_fake_loss_per_row():
    torch.manual_seed(0)
    _, discriminator = build_gan(GANModelConfig(discriminator_width=8), image_channels=1, image_size=16,
                                 num_classes=3)
    images, labels = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    is_real = torch.tensor([1, 0, 1, 0])
    mixed = discriminator_loss_per_row(discriminator, images, labels, is_real)
    real = discriminator_loss_real_per_example(discriminator, images, labels)
    fake = discriminator_loss_fake_per_example(discriminator, images, labels)
    assert torch.allclose(mixed, torch.where(is_real.bool(), real, fake))
    logits = discriminator(images, labels)
    # -log sigmoid(l) on real rows, -log(1 - sigmoid(l)) on fake rows.
    assert torch.allclose(real, -F.logsigmoid(logits), atol=1e-6)
    assert torch.allclose(fake, -torch.log1p(-torch.sigmoid(logits)), atol=1e-5)
    assert torch.allclose(generator_loss_per_example(discriminator, images, labels), real)


def test_unsupported_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="image size"):
        build_gan(GANModelConfig(), image_channels=1, image_size=28, num_classes=10)
    with pytest.raises(ConfigError, match="positive"):
        build_gan(GANModelConfig(update_ratio=0), image_channels=1, image_size=32, num_classes=10)
