"""DDIM sampling with classifier-free guidance, and the EMA of weights."""

import pytest
import torch
from diffusion_oracle import OracleDenoiser

from privimage.config import DiffusionModelConfig
from privimage.diffusion import ExponentialMovingAverage, ddim_sample
from privimage.errors import ConfigError
from privimage.models import build_unet

torch.set_num_threads(2)


@pytest.mark.parametrize("steps", [1, 5, 50])
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_ddim_with_an_exact_denoiser_returns_the_data(steps, sigma_data):
    """The sampler assembles D from F with EDM's coefficients: an exact F lands on the data."""
    prototypes = torch.rand(3, 1, 8, 8) * 1.6 - 0.8  # two classes and the null class
    labels = torch.tensor([0, 1, 1, 0])
    samples = ddim_sample(OracleDenoiser(prototypes, sigma_data=sigma_data), labels=labels, image_shape=(1, 8, 8),
                          num_classes=2, steps=steps, generator=torch.Generator().manual_seed(0), sigma_data=sigma_data)
    assert torch.allclose(samples, prototypes[labels], atol=1e-4)


def test_guidance_extrapolates_from_the_unconditional_towards_the_conditional_model():
    prototypes = torch.stack([torch.full((1, 4, 4), 0.4), torch.full((1, 4, 4), 0.2)])  # class 0, null = 1
    model = OracleDenoiser(prototypes)
    labels = torch.zeros(3, dtype=torch.long)
    samples = ddim_sample(model, labels=labels, image_shape=(1, 4, 4), num_classes=1, steps=10, guidance_scale=1.0)
    # (1 + w) * 0.4 - w * 0.2 with w = 1.
    assert torch.allclose(samples, torch.full_like(samples, 0.6), atol=1e-4)
    assert all((call[:3] == 0).all() and (call[3:] == 1).all() for call in model.calls)
    model.calls.clear()
    ddim_sample(model, labels=labels, image_shape=(1, 4, 4), num_classes=1, steps=3)
    assert all(len(call) == 3 and (call == 0).all() for call in model.calls)


def test_samples_are_reproducible_by_generator_and_in_range():
    torch.manual_seed(0)
    model = build_unet(DiffusionModelConfig(preset="tiny"), image_channels=1, image_size=16, num_classes=10)
    labels = torch.arange(10)
    first = ddim_sample(model, labels=labels, image_shape=(1, 16, 16), num_classes=10, steps=3,
                        generator=torch.Generator().manual_seed(1))
    again = ddim_sample(model, labels=labels, image_shape=(1, 16, 16), num_classes=10, steps=3,
                        generator=torch.Generator().manual_seed(1))
    other = ddim_sample(model, labels=labels, image_shape=(1, 16, 16), num_classes=10, steps=3,
                        generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (10, 1, 16, 16) and first.min() >= -1 and first.max() <= 1
    assert model.training  # restored after sampling in eval mode


def test_smoke_sized_sampling_runs():
    """200 images, 5 steps, tiny model at 1x32x32: the smoke profile's synthetic set."""
    model = build_unet(DiffusionModelConfig(preset="tiny"), image_channels=1, image_size=32, num_classes=10)
    samples = ddim_sample(model, labels=torch.arange(200) % 10, image_shape=(1, 32, 32), num_classes=10, steps=5)
    assert samples.shape == (200, 1, 32, 32) and torch.isfinite(samples).all()


def test_bad_sampling_parameters_are_config_errors():
    model = OracleDenoiser(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ConfigError, match="steps"):
        ddim_sample(model, labels=torch.tensor([0]), image_shape=(1, 4, 4), num_classes=1, steps=0)
    with pytest.raises(ConfigError, match="guidance_scale"):
        ddim_sample(model, labels=torch.tensor([0]), image_shape=(1, 4, 4), num_classes=1, guidance_scale=-1)


def test_ema_follows_the_exponential_average_and_round_trips():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ExponentialMovingAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    # Warm-up decays 1/10 then 2/11: 0 -> 0.9 -> 0.9 * 2/11 + 9/11.
    expected = 0.9 * 2 / 11 + 9 / 11
    assert torch.allclose(ema.model.weight, torch.full((1, 2), expected))
    assert not ema.model.weight.requires_grad
    restored = ExponentialMovingAverage(torch.nn.Linear(2, 1), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.9 and restored.num_updates == 2
    target = torch.nn.Linear(2, 1)
    restored.copy_to(target)
    assert torch.allclose(target.weight, torch.full((1, 2), expected))
    with pytest.raises(ConfigError, match="ema_decay"):
        ExponentialMovingAverage(model, decay=1.0)


def test_ema_warm_up_reaches_the_configured_decay_and_forgets_the_initialisation():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ExponentialMovingAverage(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(300):
        ema.update(model)
    # Without the warm-up the average would still be 74% initialisation (0.999^300).
    assert ema.model.weight.item() > 0.99
    assert ema.current_decay() < 0.999
    ema.num_updates = 100_000
    assert ema.current_decay() == 0.999
