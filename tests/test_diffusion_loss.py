"""The denoising loss (paper Eq. 2 with EDM's preconditioning and weight), noise multiplicity and label dropout."""

import pytest
import torch
from diffusion_oracle import OracleDenoiser

from privimage.diffusion import (
    MIN_ALPHA_BAR,
    alpha_bar,
    diffusion_loss_from_noise,
    diffusion_loss_per_example,
    draw_diffusion_noise,
    network_target,
    preconditioning,
)
from privimage.errors import ConfigError

torch.set_num_threads(2)


def test_cosine_schedule_runs_from_clean_to_noise():
    times = torch.linspace(0, 1, 101)
    values = alpha_bar(times)
    assert values[0] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(MIN_ALPHA_BAR)
    assert (values[1:] <= values[:-1]).all() and (values[1:-1] < values[:-2]).all()
    assert alpha_bar(torch.tensor(0.5)) == pytest.approx(0.5, abs=0.03)  # cosine: half signal at mid-time


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_oracle_denoiser_has_zero_loss(sigma_data):
    """x_t is built as sqrt(ab) x0 + sqrt(1 - ab) eps; EDM's exact denoiser output gives zero loss."""
    # float64: the oracle divides by c_out, which vanishes as t -> 0.
    prototypes = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 2, 1, 2])
    oracle = OracleDenoiser(prototypes, sigma_data=sigma_data)
    loss = diffusion_loss_per_example(oracle, prototypes[labels], labels, noise_multiplicity=5, label_dropout=0.0,
                                      num_classes=3, sigma_data=sigma_data)
    assert loss.shape == (4,)
    assert loss.max() < 1e-10
    # The wrong clean image gives a positive loss.
    wrong = diffusion_loss_per_example(oracle, prototypes[(labels + 1) % 3], labels, noise_multiplicity=5,
                                       label_dropout=0.0, num_classes=3, sigma_data=sigma_data)
    assert (wrong > 1e-3).all()


def test_loss_is_edm_weighted_clean_image_error():
    """||F - target||^2 = lambda(sigma) ||D - x0||^2 with EDM's lambda = (sigma^2 + sd^2) / (sigma sd)^2.

    At high noise the clean-image error keeps weight ~1 / sd^2 = 4, where the
    epsilon loss would weight it by alpha_bar / (1 - alpha_bar) (below 0.03 at t = 0.9).
    """
    torch.manual_seed(0)
    images = torch.rand(4, 1, 6, 6, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 1, 1, 6, 6, dtype=torch.float64)
    times = torch.tensor([[0.05], [0.3], [0.6], [0.9]], dtype=torch.float64)
    output = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    loss = diffusion_loss_from_noise(lambda x, t, y: output, images, noise, times, torch.zeros(4, 1, dtype=torch.long))

    signal = alpha_bar(times).view(4, 1, 1, 1)
    noisy = signal.sqrt() * images + (1 - signal).sqrt() * noise[:, 0]
    _, skip, out = preconditioning(signal)
    denoised = skip * noisy + out * output
    sigma_squared = (1 - signal) / signal
    weight = (sigma_squared + 0.25) / (sigma_squared * 0.25)
    expected = (weight * (denoised - images) ** 2).flatten(1).mean(dim=1)
    assert torch.allclose(loss, expected, rtol=1e-9)
    assert weight.flatten()[-1] > 4 and (signal / (1 - signal)).flatten()[-1] < 0.03


def test_sigma_data_one_is_v_prediction():
    """With sd = 1 the target is -v, v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho, 2022), and c_in = 1."""
    images, noise = torch.rand(5, 1, 4, 4) * 2 - 1, torch.randn(5, 1, 4, 4)
    signal = alpha_bar(torch.linspace(0.1, 1.0, 5)).view(5, 1, 1, 1)
    velocity = signal.sqrt() * noise - (1 - signal).sqrt() * images
    assert torch.allclose(network_target(images, noise, signal, sigma_data=1.0), -velocity, atol=1e-6)
    assert torch.allclose(preconditioning(signal, sigma_data=1.0)[0], torch.ones_like(signal))
    with pytest.raises(ConfigError, match="sigma_data"):
        preconditioning(signal, sigma_data=0.0)


def test_k_draws_give_the_mean_of_the_single_draw_losses():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    images, labels = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 1])
    model_call = lambda x, t, y: model(x) * (1 + t.view(-1, 1, 1, 1))  # noqa: E731
    noise, times, conditioning = draw_diffusion_noise(images, labels, noise_multiplicity=4, label_dropout=0.0,
                                                      num_classes=2)
    averaged = diffusion_loss_from_noise(model_call, images, noise, times, conditioning)
    singles = torch.stack([
        diffusion_loss_from_noise(model_call, images, noise[:, k:k + 1], times[:, k:k + 1], conditioning[:, k:k + 1])
        for k in range(4)
    ])
    assert torch.allclose(averaged, singles.mean(dim=0))
    assert not torch.allclose(singles[0], singles[1])


def test_draws_replay_with_the_same_generator():
    images, labels = torch.zeros(2, 1, 4, 4), torch.tensor([0, 1])
    first = draw_diffusion_noise(images, labels, noise_multiplicity=3, label_dropout=0.5, num_classes=2,
                                 generator=torch.Generator().manual_seed(7))
    second = draw_diffusion_noise(images, labels, noise_multiplicity=3, label_dropout=0.5, num_classes=2,
                                  generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    noise, times, conditioning = first
    assert noise.shape == (2, 3, 1, 4, 4) and times.shape == (2, 3) and conditioning.shape == (2, 3)
    assert ((times >= 0) & (times <= 1)).all()


def test_label_dropout_replaces_labels_by_the_null_class_at_its_rate():
    images, labels = torch.zeros(2000, 1, 1, 1), torch.randint(0, 10, (2000,))
    _, _, kept = draw_diffusion_noise(images, labels, noise_multiplicity=2, label_dropout=0.0, num_classes=10)
    assert torch.equal(kept, labels[:, None].expand(-1, 2))
    _, _, dropped = draw_diffusion_noise(images, labels, noise_multiplicity=2, label_dropout=1.0, num_classes=10)
    assert (dropped == 10).all()
    _, _, mixed = draw_diffusion_noise(images, labels, noise_multiplicity=2, label_dropout=0.1, num_classes=10)
    rate = (mixed == 10).float().mean().item()
    assert 0.07 < rate < 0.13
    assert torch.equal(mixed[mixed != 10], labels[:, None].expand(-1, 2)[mixed != 10])


def test_bad_parameters_are_config_errors():
    images, labels = torch.zeros(1, 1, 4, 4), torch.tensor([0])
    with pytest.raises(ConfigError, match="noise_multiplicity"):
        draw_diffusion_noise(images, labels, noise_multiplicity=0, label_dropout=0.1, num_classes=2)
    with pytest.raises(ConfigError, match="label_dropout"):
        draw_diffusion_noise(images, labels, noise_multiplicity=1, label_dropout=1.5, num_classes=2)
