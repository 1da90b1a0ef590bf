"""The generator families behind the pipeline: what each builds, how it samples, and what it does after pre-training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privimage.config import load_config
from privimage.data.base import ImageDataset
from privimage.errors import ConfigError
from privimage.generators import FAMILIES, generator_family, public_for_gan
from privimage.methods import METHODS
from privimage.models import NullLabelModel, count_parameters
from privimage.training.plan import GENERATORS

GEOMETRY = {"image_channels": 1, "image_size": 32, "num_classes": 10}


def test_every_method_has_a_family_and_the_plan_knows_every_family():
    assert {method.generator for method in METHODS.values()} == set(FAMILIES) == set(GENERATORS)
    with pytest.raises(ConfigError, match="unknown generator family"):
        generator_family("vae")


@pytest.mark.parametrize("name, keys", [("diffusion", ["model"]), ("gan", ["generator", "discriminator"])])
def test_build_gives_the_networks_the_pretraining_cache_stores(name, keys):
    config = load_config("smoke")
    family = generator_family(name)
    networks = family.build(config, **GEOMETRY)
    assert list(networks) == keys
    # The network that draws the images is the one the grids report the size of.
    sampler = networks["model" if name == "diffusion" else "generator"]
    assert family.sampler_parameters(config, **GEOMETRY) == count_parameters(sampler)
    assert family.parameter_counts(config, **GEOMETRY)["num_parameters"] == sum(
        count_parameters(network) for network in networks.values())


@pytest.mark.parametrize("name", ["diffusion", "gan"])
def test_sampling_is_seeded_and_returns_images_in_range(name):
    config = load_config("smoke", {"sampling.ddim_steps": 2})
    family = generator_family(name)
    torch.manual_seed(0)
    networks = family.build(config, **GEOMETRY)
    labels = torch.tensor([0, 3, 9])

    def draw():
        return family.sample(networks, labels=labels, image_shape=(1, 32, 32), num_classes=10, config=config,
                             generator=torch.Generator().manual_seed(5))

    first = draw()
    assert first.shape == (3, 1, 32, 32) and torch.isfinite(first).all()
    assert torch.equal(first, draw())


def test_a_diffusion_model_pre_trained_on_the_null_class_is_sampled_with_it():
    family = generator_family("diffusion")
    networks = {"model": torch.nn.Identity()}
    assert family.pretrained_for_sampling(networks, unconditional=False, num_classes=10) is networks
    wrapped = family.pretrained_for_sampling(networks, unconditional=True, num_classes=10)["model"]
    assert isinstance(wrapped, NullLabelModel) and wrapped.num_classes == 10
    # A GAN has no null class: its pre-training relabelled the public data instead.
    gan = {"generator": torch.nn.Identity()}
    assert generator_family("gan").pretrained_for_sampling(gan, unconditional=True, num_classes=10) is gan


def test_all_public_data_is_relabelled_onto_the_sensitive_classes_by_a_seeded_permutation():
    labels = np.arange(40) % 20
    public = ImageDataset("pub", "train", np.zeros((40, 1, 4, 4), np.uint8), labels,
                          tuple(f"p{i}" for i in range(20)))
    relabelled = public_for_gan(public, num_classes=10, seed=3)
    assert relabelled.num_classes == 10 and set(relabelled.labels) == set(range(10))
    # One public class maps to one sensitive label, the same for every image of it and every call.
    for public_class in range(20):
        assert len(set(relabelled.labels[labels == public_class])) == 1
    assert np.array_equal(relabelled.labels, public_for_gan(public, num_classes=10, seed=3).labels)
    assert not np.array_equal(relabelled.labels, public_for_gan(public, num_classes=10, seed=4).labels)
