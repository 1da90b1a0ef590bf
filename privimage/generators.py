"""The two generator families (paper Section 4.2): a diffusion model and a GAN, behind one interface.

A method's recipe names its family (`Method.generator`); the pipeline asks the
family for what differs between them and branches nowhere on the name:

- `GeneratorFamily.build`: fresh networks on this process's device;
- `GeneratorFamily.pretrain`: training on public data (paper Section 3.4);
- `GeneratorFamily.dp_finetune` / `finetune_nonprivate`: DP-SGD on the
  sensitive data (Algorithm 1), or plain SGD for the non-private ablations;
- `GeneratorFamily.sample`: one batch of images in [-1, 1].

Networks travel as a dict, ``{"model": unet}`` or ``{"generator",
"discriminator"}``, the keys of a cached ``pretrained.pt``. Training itself is
`privimage.training.diffusion_training` and `privimage.training.gan_training`;
the fine-tuning schedule of each family is `privimage.training.plan.finetune_plan`.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privimage import diffusion as diffusion_maths
from privimage import distributed
from privimage.config import Config
from privimage.data import dataset_info
from privimage.data.base import ImageDataset
from privimage.diffusion import ExponentialMovingAverage
from privimage.errors import ConfigError
from privimage.methods import get_method
from privimage.models import NullLabelModel, build_gan, build_unet, count_parameters
# Stages are called through their modules, so a stage replaced there (a test's tripwire) is the one that runs.
from privimage.training import diffusion_training, gan_training

Networks = dict[str, torch.nn.Module]


class GeneratorFamily(abc.ABC):
    """What a pipeline stage needs from a generator family."""

    name: str

    @abc.abstractmethod
    def settings(self, config: Config) -> dict[str, Any]:
        """The config section that shapes the networks (part of the pre-training cache key)."""

    @abc.abstractmethod
    def build(self, config: Config, *, image_channels: int, image_size: int, num_classes: int) -> Networks:
        """Freshly initialised networks, created on the CPU (the same weights on every rank) and moved to the device."""

    @abc.abstractmethod
    def pretrain(self, networks: Networks, *, public: ImageDataset, config: Config, run_dir: Path,
                 unconditional: bool, num_classes: int, progress: bool) -> dict[str, Any]:
        """Train ``networks`` in place on public data; ``unconditional``: its labels are not the sensitive classes.

        Returns:
            The training statistics.
        """

    @abc.abstractmethod
    def dp_finetune(self, networks: Networks, *, sensitive: ImageDataset, ledger, config: Config, run_dir: Path,
                    target_epsilon: float, progress: bool) -> dict[str, Any]:
        """DP-SGD on the sensitive data to ``target_epsilon`` (charged to ``ledger``); leaves ``networks`` to sample from.

        Returns:
            The training statistics.
        """

    @abc.abstractmethod
    def finetune_nonprivate(self, networks: Networks, *, sensitive: ImageDataset, config: Config, run_dir: Path,
                            progress: bool) -> dict[str, Any]:
        """Plain SGD on the sensitive data (no privacy guarantee); leaves ``networks`` to sample from.

        Returns:
            The training statistics.
        """

    @abc.abstractmethod
    def sample(self, networks: Networks, *, labels: torch.Tensor, image_shape: tuple[int, int, int],
               num_classes: int, config: Config, generator: torch.Generator) -> torch.Tensor:
        """Images in [-1, 1] of the given class ``labels``, drawn with the seeded ``generator``."""

    @abc.abstractmethod
    def parameter_counts(self, config: Config, *, image_channels: int, image_size: int,
                         num_classes: int) -> dict[str, Any]:
        """The networks' sizes as ``privimage run --dry-run`` reports them (``num_parameters`` first)."""

    @abc.abstractmethod
    def sampler_parameters(self, config: Config, *, image_channels: int, image_size: int, num_classes: int) -> int:
        """Parameters of the network that draws the images (the UNet; the GAN's generator)."""

    def pretrained_for_sampling(self, networks: Networks, *, unconditional: bool, num_classes: int) -> Networks:
        """Pre-trained ``networks`` ready to sample the sensitive classes before any fine-tuning."""
        return networks


class DiffusionFamily(GeneratorFamily):
    """The class-conditional diffusion UNet; it samples from an exponential moving average of its weights."""

    name = "diffusion"

    def settings(self, config: Config) -> dict[str, Any]:
        return dataclasses.asdict(config.diffusion)

    def build(self, config: Config, *, image_channels: int, image_size: int, num_classes: int) -> Networks:
        model = build_unet(config.diffusion, image_channels=image_channels, image_size=image_size,
                           num_classes=num_classes)
        return {"model": model.to(distributed.device())}

    def pretrain(self, networks: Networks, *, public: ImageDataset, config: Config, run_dir: Path,
                 unconditional: bool, num_classes: int, progress: bool) -> dict[str, Any]:
        model = networks["model"]
        ema = ExponentialMovingAverage(model, config.pretrain.ema_decay)
        # Public labels that are not the sensitive classes: the null class only, as PDP-Diffusion does.
        stats = diffusion_training.pretrain_diffusion(model=model, ema=ema, public=public, config=config,
                                                      run_dir=run_dir, unconditional=unconditional, progress=progress)
        ema.copy_to(model)
        return stats

    def dp_finetune(self, networks: Networks, *, sensitive: ImageDataset, ledger, config: Config, run_dir: Path,
                    target_epsilon: float, progress: bool) -> dict[str, Any]:
        return self._finetune_then_sample_average(
            networks, config, lambda model, ema: diffusion_training.dp_finetune_diffusion(
                model=model, ema=ema, sensitive=sensitive, ledger=ledger, config=config, run_dir=run_dir,
                target_epsilon=target_epsilon, progress=progress))

    def finetune_nonprivate(self, networks: Networks, *, sensitive: ImageDataset, config: Config, run_dir: Path,
                            progress: bool) -> dict[str, Any]:
        return self._finetune_then_sample_average(
            networks, config, lambda model, ema: diffusion_training.finetune_nonprivate_diffusion(
                model=model, ema=ema, sensitive=sensitive, config=config, run_dir=run_dir, progress=progress))

    @staticmethod
    def _finetune_then_sample_average(networks: Networks, config: Config, train) -> dict[str, Any]:
        """``train(model, ema)``, then the sampling network becomes a copy holding the fine-tuning average."""

        model = networks["model"]
        ema = ExponentialMovingAverage(model, config.finetune.ema_decay)
        stats = train(model, ema)
        ema_model = copy.deepcopy(model)
        ema.copy_to(ema_model)
        networks["model"] = ema_model
        return stats

    def sample(self, networks: Networks, *, labels: torch.Tensor, image_shape: tuple[int, int, int],
               num_classes: int, config: Config, generator: torch.Generator) -> torch.Tensor:
        return diffusion_maths.ddim_sample(networks["model"], labels=labels, image_shape=image_shape,
                                           num_classes=num_classes, steps=config.sampling.ddim_steps,
                                           guidance_scale=config.sampling.guidance_scale, generator=generator,
                                           sigma_data=config.diffusion.sigma_data)

    def parameter_counts(self, config: Config, *, image_channels: int, image_size: int,
                         num_classes: int) -> dict[str, Any]:
        return {"num_parameters": self.sampler_parameters(config, image_channels=image_channels,
                                                          image_size=image_size, num_classes=num_classes),
                "diffusion_preset": config.diffusion.preset}

    def sampler_parameters(self, config: Config, *, image_channels: int, image_size: int, num_classes: int) -> int:
        # The meta device counts without allocating (the paper-size presets are large).
        return int(count_parameters(build_unet(config.diffusion, image_channels=image_channels,
                                               image_size=image_size, num_classes=num_classes, device="meta")))

    def pretrained_for_sampling(self, networks: Networks, *, unconditional: bool, num_classes: int) -> Networks:
        # A model pre-trained on the null class alone is sampled with it, whatever class is asked for.
        return {**networks, "model": NullLabelModel(networks["model"], num_classes)} if unconditional else networks


class GanFamily(GeneratorFamily):
    """The conditional GAN; DP-SGD trains its discriminator, the only network that sees sensitive images."""

    name = "gan"

    def settings(self, config: Config) -> dict[str, Any]:
        return dataclasses.asdict(config.gan)

    def build(self, config: Config, *, image_channels: int, image_size: int, num_classes: int) -> Networks:
        generator, discriminator = build_gan(config.gan, image_channels=image_channels, image_size=image_size,
                                             num_classes=num_classes)
        return {"generator": generator.to(distributed.device()),
                "discriminator": discriminator.to(distributed.device())}

    def pretrain(self, networks: Networks, *, public: ImageDataset, config: Config, run_dir: Path,
                 unconditional: bool, num_classes: int, progress: bool) -> dict[str, Any]:
        if unconditional:
            public = public_for_gan(public, num_classes=num_classes, seed=config.seed)
        return gan_training.pretrain_gan(**networks, public=public, config=config, run_dir=run_dir, progress=progress)

    def dp_finetune(self, networks: Networks, *, sensitive: ImageDataset, ledger, config: Config, run_dir: Path,
                    target_epsilon: float, progress: bool) -> dict[str, Any]:
        return gan_training.dp_finetune_gan(**networks, sensitive=sensitive, ledger=ledger, config=config,
                                            run_dir=run_dir, target_epsilon=target_epsilon, progress=progress)

    def finetune_nonprivate(self, networks: Networks, *, sensitive: ImageDataset, config: Config, run_dir: Path,
                            progress: bool) -> dict[str, Any]:
        return gan_training.finetune_nonprivate_gan(**networks, sensitive=sensitive, config=config, run_dir=run_dir,
                                                    progress=progress)

    def sample(self, networks: Networks, *, labels: torch.Tensor, image_shape: tuple[int, int, int],
               num_classes: int, config: Config, generator: torch.Generator) -> torch.Tensor:
        gan_generator = networks["generator"].eval()
        with torch.no_grad():
            latent = torch.randn(len(labels), gan_generator.latent_dim, generator=generator, device=labels.device)
            return gan_generator(latent, labels)

    def parameter_counts(self, config: Config, *, image_channels: int, image_size: int,
                         num_classes: int) -> dict[str, Any]:
        generator, discriminator = build_gan(config.gan, image_channels=image_channels, image_size=image_size,
                                             num_classes=num_classes)
        return {"num_parameters": count_parameters(generator) + count_parameters(discriminator),
                "generator_parameters": count_parameters(generator),
                "discriminator_parameters": count_parameters(discriminator)}

    def sampler_parameters(self, config: Config, *, image_channels: int, image_size: int, num_classes: int) -> int:
        return int(self.parameter_counts(config, image_channels=image_channels, image_size=image_size,
                                         num_classes=num_classes)["generator_parameters"])


def public_for_gan(public: ImageDataset, *, num_classes: int, seed: int) -> ImageDataset:
    """All public data relabelled for a GAN conditioned on the sensitive classes.

    The GAN has no null class, so each public class is mapped to one sensitive
    label by a seeded permutation: the labels carry no sensitive meaning, only
    the class structure of the public data (DPGAN-p pre-trains on all of it).
    """
    rng = np.random.default_rng(seed)
    mapping = rng.permutation(public.num_classes) % num_classes
    return ImageDataset(f"{public.name}-all", public.split, public.images, mapping[public.labels].astype(np.int64),
                        tuple(f"class {i}" for i in range(num_classes)))


FAMILIES: dict[str, GeneratorFamily] = {family.name: family for family in (DiffusionFamily(), GanFamily())}


def generator_family(name: str) -> GeneratorFamily:
    """The family a method's ``generator`` names (``"diffusion"`` or ``"gan"``).

    Args:
        name: `Method.generator`.

    Returns:
        The `GeneratorFamily`.
    """
    if name not in FAMILIES:
        raise ConfigError(f"unknown generator family {name!r} (choose from {', '.join(FAMILIES)})")
    return FAMILIES[name]


def count_generator_parameters(*, method: str, config: Config, data_root: Path | None = None) -> int:
    """Parameters of a method's generator (the UNet, or the GAN's generator) for the config's sensitive data.

    Args:
        method: a name from `privimage.methods.METHODS`.
        config: the resolved config (model sections and sensitive dataset).
        data_root: where the user's own sensitive dataset lies (the embedded and
            known datasets need no files).

    Returns:
        The number of trainable parameters of the network that draws the images.
    """

    info = dataset_info(config.data.sensitive, "train", data_root=data_root, config=config.data)
    channels, _, size = (int(v) for v in info["image_shape"])
    return generator_family(get_method(method).generator).sampler_parameters(
        config, image_channels=channels, image_size=size, num_classes=int(info["num_classes"]))
