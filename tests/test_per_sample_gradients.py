"""Per-sample gradients with noise multiplicity equal the one-example-at-a-time reference.

Computed in float64 so that "equal" means equal up to rounding, for every
parameter of every layer type the UNet and the discriminator use (Conv2d,
Linear, GroupNorm, Embedding, attention).
"""

import pytest
import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from privimage.config import DiffusionModelConfig, GANModelConfig
from privimage.diffusion import diffusion_loss_from_noise, draw_diffusion_noise
from privimage.dp import check_dp_compatible, compute_per_sample_gradients, compute_per_sample_gradients_opacus
from privimage.dp import per_sample
from privimage.dp.grouped import grouped_per_example_gradients, supports_grouped_gradients
from privimage.errors import PrivacyError
from privimage.models import build_gan, build_unet, discriminator_loss_per_row

torch.set_num_threads(2)
NUM_CLASSES = 3


def small_unet(seed=0):
    torch.manual_seed(seed)
    # Attention at 8x8 and in the middle: every UNet layer type is present.
    config = DiffusionModelConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,))
    return build_unet(config, image_channels=1, image_size=8, num_classes=NUM_CLASSES).double()


def diffusion_batch(batch, multiplicity, seed=1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 1, 8, 8, generator=generator, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
    noise, times, conditioning = draw_diffusion_noise(
        images, labels, noise_multiplicity=multiplicity, label_dropout=0.3, num_classes=NUM_CLASSES,
        generator=generator,
    )
    return images, noise, times, conditioning


def reference_gradients(model, loss_fn, *inputs):
    """One example at a time: autograd of that example's loss alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    per_example = []
    for index in range(inputs[0].shape[0]):
        loss = loss_fn(model, *(x[index:index + 1] for x in inputs)).sum()
        per_example.append(torch.autograd.grad(loss, params))
    return [torch.stack(column) for column in zip(*per_example)]


def assert_grad_samples_equal(model, expected):
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == len(expected)
    for (name, parameter), reference in zip(model.named_parameters(), expected):
        assert parameter.grad_sample.shape == reference.shape, name
        assert torch.allclose(parameter.grad_sample, reference, rtol=1e-9, atol=1e-12), name
        # A reference of zeros would make the comparison empty.
        assert reference.abs().max() > 0, name


@pytest.mark.parametrize("strategy", ["grouped", "vmap"])
@pytest.mark.parametrize("multiplicity", [1, 8])
def test_unet_per_sample_gradients_match_one_at_a_time_reference(multiplicity, strategy):
    model = small_unet()
    inputs = diffusion_batch(batch=3, multiplicity=multiplicity)
    losses = compute_per_sample_gradients(model, diffusion_loss_from_noise, *inputs, strategy=strategy)
    expected_losses = diffusion_loss_from_noise(model, *inputs)
    assert torch.allclose(losses, expected_losses, rtol=1e-10)
    assert_grad_samples_equal(model, reference_gradients(model, diffusion_loss_from_noise, *inputs))


def test_per_sample_gradient_with_k_draws_is_the_mean_of_single_draw_gradients():
    model = small_unet()
    images, noise, times, conditioning = diffusion_batch(batch=2, multiplicity=4)
    compute_per_sample_gradients(model, diffusion_loss_from_noise, images, noise, times, conditioning)
    averaged = {name: p.grad_sample.clone() for name, p in model.named_parameters()}
    singles = []
    for draw in range(4):
        for p in model.parameters():
            del p.grad_sample
        compute_per_sample_gradients(model, diffusion_loss_from_noise, images, noise[:, draw:draw + 1],
                                     times[:, draw:draw + 1], conditioning[:, draw:draw + 1])
        singles.append({name: p.grad_sample.clone() for name, p in model.named_parameters()})
    for name, value in averaged.items():
        mean_of_singles = torch.stack([single[name] for single in singles]).mean(dim=0)
        assert torch.allclose(value, mean_of_singles, rtol=1e-9, atol=1e-12), name
    # The draws differ, so one draw's gradient is not the average.
    assert not torch.allclose(averaged["input_conv.weight"], singles[0]["input_conv.weight"])


@pytest.mark.parametrize("strategy", ["grouped", "vmap"])
def test_chunked_computation_equals_unchunked(strategy):
    model = small_unet()
    inputs = diffusion_batch(batch=5, multiplicity=2)
    compute_per_sample_gradients(model, diffusion_loss_from_noise, *inputs, strategy=strategy)
    whole = [p.grad_sample.clone() for p in model.parameters()]
    for p in model.parameters():
        del p.grad_sample
    compute_per_sample_gradients(model, diffusion_loss_from_noise, *inputs, chunk_size=2, strategy=strategy)
    for reference, p in zip(whole, model.parameters()):
        assert torch.allclose(p.grad_sample, reference, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("grad_sample_mode", ["hooks", "functorch"])
def test_opacus_over_expanded_batch_gives_the_same_gradients(grad_sample_mode):
    model = small_unet()
    images, noise, times, conditioning = diffusion_batch(batch=3, multiplicity=4)
    losses = compute_per_sample_gradients(model, diffusion_loss_from_noise, images, noise, times, conditioning)
    ours = [p.grad_sample.clone() for p in model.parameters()]
    for p in model.parameters():
        del p.grad_sample
    # B*K rows, each with one draw; opacus sees them as B*K independent samples.
    rows = (images.repeat_interleave(4, dim=0), noise.flatten(0, 1)[:, None], times.flatten()[:, None],
            conditioning.flatten()[:, None])
    baseline_losses = compute_per_sample_gradients_opacus(model, diffusion_loss_from_noise, *rows, rows_per_example=4,
                                                          grad_sample_mode=grad_sample_mode)
    assert torch.allclose(losses, baseline_losses, rtol=1e-10)
    for reference, (name, p) in zip(ours, model.named_parameters()):
        assert torch.allclose(p.grad_sample, reference, rtol=1e-8, atol=1e-12), name
    # The hooks are gone afterwards: a plain forward leaves no per-row gradients behind.
    for p in model.parameters():
        del p.grad_sample
    diffusion_loss_from_noise(model, images, noise, times, conditioning).sum().backward()
    assert all(not hasattr(p, "grad_sample") for p in model.parameters())


@pytest.mark.parametrize("strategy", ["grouped", "vmap"])
def test_discriminator_per_row_gradients_match_reference_on_mixed_real_and_fake_rows(strategy):
    torch.manual_seed(0)
    _, discriminator = build_gan(GANModelConfig(discriminator_width=4), image_channels=3, image_size=8,
                                 num_classes=NUM_CLASSES)
    discriminator = discriminator.double()
    images = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 1, 2, 1])
    is_real = torch.tensor([True, True, False, False])
    losses = compute_per_sample_gradients(discriminator, discriminator_loss_per_row, images, labels, is_real,
                                          strategy=strategy)
    assert torch.allclose(losses, discriminator_loss_per_row(discriminator, images, labels, is_real))
    assert_grad_samples_equal(
        discriminator, reference_gradients(discriminator, discriminator_loss_per_row, images, labels, is_real)
    )


def test_a_second_call_appends_like_opacus_accumulation():
    model = small_unet()
    inputs = diffusion_batch(batch=2, multiplicity=1)
    compute_per_sample_gradients(model, diffusion_loss_from_noise, *inputs)
    compute_per_sample_gradients(model, diffusion_loss_from_noise, *inputs)
    grad_sample = model.input_conv.weight.grad_sample
    assert isinstance(grad_sample, list) and len(grad_sample) == 2
    assert torch.equal(grad_sample[0], grad_sample[1])


def test_dp_optimizer_clips_and_averages_our_grad_samples():
    """With zero noise, opacus' DPOptimizer step is -lr * sum_i clip(g_i) / B on our per-sample gradients."""
    model = small_unet()
    inputs = diffusion_batch(batch=4, multiplicity=2)
    max_grad_norm = 1e-3
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0,
                            max_grad_norm=max_grad_norm, expected_batch_size=4)
    before = [p.detach().clone() for p in model.parameters()]
    compute_per_sample_gradients(model, diffusion_loss_from_noise, *inputs)
    expected = reference_gradients(model, diffusion_loss_from_noise, *inputs)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(dim=1) for g in expected))
    assert (norms > max_grad_norm).all()  # every example is actually clipped
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    optimizer.step()
    for start, p, g in zip(before, model.parameters(), expected):
        update = torch.einsum("b,b...->...", factors, g) / 4
        assert torch.allclose(start - p.detach(), update, rtol=1e-6, atol=1e-12)
    optimizer.zero_grad()
    assert all(p.grad_sample is None for p in model.parameters())


def test_validator_accepts_our_models_and_rejects_batchnorm():
    check_dp_compatible(small_unet())
    generator, discriminator = build_gan(GANModelConfig(), image_channels=1, image_size=32, num_classes=10)
    check_dp_compatible(discriminator)
    check_dp_compatible(generator)
    with pytest.raises(PrivacyError, match="BatchNorm2d"):
        check_dp_compatible(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    # Without affine parameters opacus' validator would not look, yet batch statistics still mix samples.
    with pytest.raises(PrivacyError, match="BatchNorm1d"):
        check_dp_compatible(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4, affine=False)))
    with pytest.raises(PrivacyError, match="not DP-SGD compatible"):
        check_dp_compatible(nn.Sequential(nn.LSTM(2, 4)))


def test_an_empty_poisson_batch_gives_zero_rows_and_a_noise_only_step():
    model = small_unet()
    images, noise, times, conditioning = diffusion_batch(batch=0, multiplicity=2)
    losses = compute_per_sample_gradients(model, diffusion_loss_from_noise, images, noise, times, conditioning)
    assert losses.shape == (0,)
    assert all(p.grad_sample.shape == (0, *p.shape) for p in model.parameters())
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=1.0,
                            max_grad_norm=1.0, expected_batch_size=4)
    before = model.input_conv.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model.input_conv.weight, before)  # the noise is still added


def test_mismatched_inputs_are_refused():
    model = small_unet()
    images, noise, times, conditioning = diffusion_batch(batch=3, multiplicity=2)
    with pytest.raises(PrivacyError, match="disagree"):
        compute_per_sample_gradients(model, diffusion_loss_from_noise, images, noise[:2], times, conditioning)


class ScaledUNet(nn.Module):
    """The small UNet behind a learnt output scale: a parameter outside every layer the grouped rules know."""

    def __init__(self):
        super().__init__()
        self.unet = small_unet()
        self.scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def forward(self, x, t, labels):
        return self.scale * self.unet(x, t, labels)


def test_auto_takes_grouped_for_our_networks_and_vmap_where_a_layer_has_no_grouped_rule(monkeypatch):
    _, discriminator = build_gan(GANModelConfig(discriminator_width=4), image_channels=1, image_size=8,
                                 num_classes=NUM_CLASSES)
    assert supports_grouped_gradients(small_unet()) and supports_grouped_gradients(discriminator)
    model = ScaledUNet()
    assert not supports_grouped_gradients(model)
    inputs = diffusion_batch(batch=2, multiplicity=2)
    # The training stage calls with the default strategy; here it must fall back to vmap and stay exact.
    used = []
    monkeypatch.setattr(per_sample, "grouped_per_example_gradients",
                        lambda *a, **k: used.append("grouped") or grouped_per_example_gradients(*a, **k))
    compute_per_sample_gradients(model, diffusion_loss_from_noise, *inputs)
    assert used == []
    assert_grad_samples_equal(model, reference_gradients(model, diffusion_loss_from_noise, *inputs))
    refused = ScaledUNet()
    with pytest.raises(PrivacyError, match="no grouped per-example gradient rule"):
        compute_per_sample_gradients(refused, diffusion_loss_from_noise, *inputs, strategy="grouped")
    # The refusal leaves no hook behind on the layers it had already looked at.
    assert not any(module._forward_hooks for module in refused.modules())
    with pytest.raises(PrivacyError, match="unknown per-sample gradient strategy"):
        compute_per_sample_gradients(small_unet(), diffusion_loss_from_noise, *inputs, strategy="fast")


def test_the_training_step_uses_the_grouped_path_by_default(monkeypatch):
    from privimage.training.dpsgd import dp_sgd_step

    model = small_unet()
    inputs = diffusion_batch(batch=4, multiplicity=2)
    used = []
    monkeypatch.setattr(per_sample, "grouped_per_example_gradients",
                        lambda *a, **k: used.append(a[2].shape[0]) or grouped_per_example_gradients(*a, **k))
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=1.0,
                            expected_batch_size=4)
    before = model.input_conv.weight.detach().clone()
    dp_sgd_step(model=model, optimizer=optimizer, per_example_loss=diffusion_loss_from_noise,
                batch_indices=[0, 1, 2, 3], load_inputs=lambda rows: tuple(x[rows] for x in inputs),
                physical_batch_size=2)
    # Two physical chunks of two images, both through the grouped path, and the step was applied.
    assert used == [2, 2]
    assert not torch.equal(model.input_conv.weight, before)


def test_grouped_path_restores_the_parameters_flags_and_trains_only_trainable_ones():
    model = small_unet()
    model.input_conv.bias.requires_grad_(False)
    inputs = diffusion_batch(batch=3, multiplicity=2)
    compute_per_sample_gradients(model, diffusion_loss_from_noise, *inputs, strategy="grouped")
    assert not model.input_conv.bias.requires_grad and not hasattr(model.input_conv.bias, "grad_sample")
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "input_conv.bias")
    assert all(p.grad is None for p in model.parameters())  # only grad_sample, as opacus expects
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter, reference in zip(trainable, reference_gradients(model, diffusion_loss_from_noise, *inputs)):
        assert torch.allclose(parameter.grad_sample, reference, rtol=1e-9, atol=1e-12)

    def failing_loss(network, *batch):
        raise RuntimeError("loss failed")

    with pytest.raises(RuntimeError, match="loss failed"):
        compute_per_sample_gradients(model, failing_loss, *inputs, strategy="grouped")
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "input_conv.bias")
    assert all(not module._forward_hooks for module in model.modules())


def test_grouped_path_refuses_rows_that_do_not_split_into_examples():
    model = small_unet()
    images, noise, times, conditioning = diffusion_batch(batch=3, multiplicity=2)

    def loss_dropping_a_row(network, images, noise, times, conditioning):
        # Five rows for three examples: no contiguous equal blocks, so no per-example sums.
        rows = noise.flatten(0, 1)[:5]
        predicted = network(rows, times.flatten()[:5], conditioning.flatten()[:5])
        return predicted.flatten(1).mean(dim=1)[:3]

    with pytest.raises(PrivacyError, match="not a multiple"):
        compute_per_sample_gradients(model, loss_dropping_a_row, images, noise, times, conditioning,
                                     strategy="grouped")
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("strategy", ["grouped", "vmap"])
@pytest.mark.parametrize("multiplicity, multiplicity_chunk", [(1, 1), (4, 1), (4, 3), (8, 1), (8, 2), (8, 8)])
def test_draws_in_chunks_give_the_one_pass_per_sample_gradients(multiplicity, multiplicity_chunk, strategy):
    # K = 8 in chunks of 3 leaves a short last chunk (3, 3, 2): each must weigh its share of K.
    inputs = diffusion_batch(batch=3, multiplicity=multiplicity)
    one_pass = small_unet()
    one_pass_losses = compute_per_sample_gradients(one_pass, diffusion_loss_from_noise, *inputs, strategy=strategy)
    chunked = small_unet()
    chunked_losses = compute_per_sample_gradients(chunked, diffusion_loss_from_noise, *inputs, strategy=strategy,
                                                  multiplicity_chunk=multiplicity_chunk)
    assert torch.allclose(chunked_losses, one_pass_losses, rtol=1e-10)
    assert_grad_samples_equal(chunked, [p.grad_sample for p in one_pass.parameters()])
    # And both equal the one-example-at-a-time reference, so neither can be wrong in the same way.
    assert_grad_samples_equal(chunked, reference_gradients(chunked, diffusion_loss_from_noise, *inputs))


def test_draw_chunks_combine_with_example_chunks():
    inputs = diffusion_batch(batch=5, multiplicity=8)
    one_pass = small_unet()
    compute_per_sample_gradients(one_pass, diffusion_loss_from_noise, *inputs)
    chunked = small_unet()
    compute_per_sample_gradients(chunked, diffusion_loss_from_noise, *inputs, chunk_size=2, multiplicity_chunk=3)
    assert_grad_samples_equal(chunked, [p.grad_sample for p in one_pass.parameters()])


def test_a_multiplicity_chunk_needs_draws_along_dimension_one():
    model = small_unet()
    images, noise, times, conditioning = diffusion_batch(batch=2, multiplicity=4)
    with pytest.raises(PrivacyError, match="dimension 1"):
        compute_per_sample_gradients(model, diffusion_loss_from_noise, images, noise, times[:, :3], conditioning,
                                     multiplicity_chunk=2)
    with pytest.raises(PrivacyError, match="positive"):
        compute_per_sample_gradients(model, diffusion_loss_from_noise, images, noise, times, conditioning,
                                     multiplicity_chunk=0)
