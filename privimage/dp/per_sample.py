"""Per-sample gradients with noise multiplicity, in the form opacus' DPOptimizer consumes.

DP-SGD (paper Algorithm 1) clips each example's gradient. For diffusion models
the example's loss is averaged over K noise draws first (DPDM's noise
multiplicity), so we need one gradient per *image* of a loss that touches K
rows. Opacus' hooks compute one gradient per *row*, which for K draws means a
B*K expanded batch and B*K per-sample gradients in memory before averaging
groups of K (`compute_per_sample_gradients_opacus`, kept as the DPDM-style
baseline, in any of opacus' grad-sample modes).

`compute_per_sample_gradients` stores only B per-sample gradients. Its default
strategy, ``grouped`` (`privimage.dp.grouped`), runs the B*K rows through one
ordinary forward and backward pass and sums each example's rows inside
per-layer hooks; ``vmap`` maps ``torch.func.grad`` over the images instead and
handles any layer, at about 3x the memory of a non-private step and more time
(``benchmarks/``). ``auto``
takes ``grouped`` whenever every parametrised layer has a grouped rule. The
result goes to ``p.grad_sample`` (B x *p.shape), where opacus' `DPOptimizer`
clips, sums, noises and scales it exactly as it would after a
`GradSampleModule` backward pass.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from opacus.grad_sample.utils import prepare_module
from opacus.validators import ModuleValidator
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from privimage.dp.grouped import grouped_per_example_gradients, supports_grouped_gradients
from privimage.errors import PrivacyError

PerExampleLoss = Callable[..., torch.Tensor]
STRATEGIES = ("auto", "grouped", "vmap")
OPACUS_MODES = ("hooks", "functorch", "ew")


def compute_per_sample_gradients(
    model: nn.Module,
    per_example_loss_fn: PerExampleLoss,
    *inputs: torch.Tensor,
    chunk_size: int | None = None,
    strategy: str = "auto",
    multiplicity_chunk: int | None = None,
) -> torch.Tensor:
    """Per-example gradients of ``per_example_loss_fn`` into ``p.grad_sample``, one per example.

    ``per_example_loss_fn(model_call, *batched_inputs) -> Tensor[b]`` is the same
    function the non-private step uses (e.g.
    `privimage.diffusion.diffusion_loss_from_noise` or
    `privimage.models.discriminator_loss_per_row`). It must compute each
    example's loss from that example's inputs alone. Under ``grouped`` it
    receives ``model`` and the whole batch, and every layer must see the rows of
    one example as a contiguous block (example-major, as the diffusion loss lays
    out an image's K draws); under ``vmap`` it receives a callable that runs
    ``model`` with the parameters being differentiated, and each example's inputs
    with a leading batch dimension of 1 (for diffusion: one image and its K
    noise draws).

    Every ``p.grad_sample`` gets shape ``[B, *p.shape]``: the gradient of example
    b's own loss (not divided by B), as opacus' `GradSampleModule` with
    ``loss_reduction="sum"`` leaves it. Like opacus, a second call before
    ``optimizer.zero_grad()`` appends to a list (an accumulated iteration).

    Args:
        model: the network; its trainable parameters get ``grad_sample``; not modified otherwise.
        per_example_loss_fn: maps (model_call, *inputs with leading dim b) to losses of shape b.
        *inputs: tensors whose leading dimension B indexes examples.
        chunk_size: process this many examples at a time (bounds activation memory);
            None processes all B at once.
        strategy: ``grouped`` (one backward pass over all rows, per-layer sums per
            example; `privimage.dp.grouped`), ``vmap`` (``torch.func`` over examples,
            any layer), or ``auto``: grouped when the model's layers allow it.
        multiplicity_chunk: run an example's K noise draws this many at a time and
            add up their gradients (bounds activation memory by B * chunk rows
            instead of B * K); None or >= K runs all K at once. The loss must then be
            the mean over draws laid along dimension 1 of every input but the first
            (`privimage.diffusion.diffusion_loss_from_noise`'s images, noise, times,
            labels): a gradient is linear in the loss, so the draws' chunks, each
            weighted by its share of K, give the one-pass gradient (DPDM's noise
            multiplicity, clipped once afterwards).

    Returns:
        The per-example losses, shape B (detached).
    """
    if not inputs:
        raise PrivacyError("compute_per_sample_gradients needs at least one input tensor")
    batch = inputs[0].shape[0]
    if any(x.shape[0] != batch for x in inputs):
        raise PrivacyError(f"inputs disagree on the number of examples: {[tuple(x.shape) for x in inputs]}")
    if batch == 0:
        # Poisson sampling can draw an empty batch; opacus expects zero rows, not an error.
        for parameter in model.parameters():
            if parameter.requires_grad:
                _store_grad_sample(parameter, parameter.new_zeros((0, *parameter.shape)))
        return inputs[0].new_zeros((0,))
    if strategy not in STRATEGIES:
        raise PrivacyError(f"unknown per-sample gradient strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if strategy == "auto":
        strategy = "grouped" if supports_grouped_gradients(model) else "vmap"
    draw_chunks = _draw_chunks(inputs, multiplicity_chunk)
    if strategy == "vmap":
        return _vmap_over_draw_chunks(model, per_example_loss_fn, draw_chunks, chunk_size=chunk_size)
    return _grouped_over_draw_chunks(model, per_example_loss_fn, draw_chunks, batch=batch, chunk_size=chunk_size)


def _vmap_over_draw_chunks(model: nn.Module, per_example_loss_fn: PerExampleLoss,
                           draw_chunks: list[tuple[float, tuple[torch.Tensor, ...]]], *,
                           chunk_size: int | None) -> torch.Tensor:
    """The ``vmap`` strategy: each draw chunk's per-example gradients, weighted by its share of K and added."""
    losses, gradients = 0.0, {}
    for weight, part in draw_chunks:
        part_losses, part_gradients = _vmap_per_sample_gradients(model, per_example_loss_fn, part,
                                                                 chunk_size=chunk_size)
        losses = losses + weight * part_losses
        for name, value in part_gradients.items():
            gradients[name] = gradients[name] + weight * value if name in gradients else (
                value if weight == 1.0 else weight * value)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            _store_grad_sample(parameter, gradients[name])
    return losses


def _grouped_over_draw_chunks(model: nn.Module, per_example_loss_fn: PerExampleLoss,
                              draw_chunks: list[tuple[float, tuple[torch.Tensor, ...]]], *,
                              batch: int, chunk_size: int | None) -> torch.Tensor:
    """The ``grouped`` strategy (`privimage.dp.grouped`) over example chunks and draw chunks."""
    # Example chunks bound the activation memory; their per-example gradients are concatenated.
    # Within one, the draw chunks run one after another, adding into the same B accumulators.
    step = chunk_size or batch
    chunk_losses, chunk_gradients = [], []
    for start in range(0, batch, step):
        losses, gradients = 0.0, None
        for weight, part in draw_chunks:
            part_losses, gradients = grouped_per_example_gradients(
                model, per_example_loss_fn, *(x[start:start + step] for x in part), into=gradients, scale=weight)
            losses = losses + part_losses
        chunk_losses.append(losses)
        chunk_gradients.append(gradients)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parts = [gradients[parameter] for gradients in chunk_gradients]
            _store_grad_sample(parameter, parts[0] if len(parts) == 1 else torch.cat(parts))
    return torch.cat(chunk_losses)


def _draw_chunks(inputs: tuple[torch.Tensor, ...],
                 multiplicity_chunk: int | None) -> list[tuple[float, tuple[torch.Tensor, ...]]]:
    """The inputs split along the draws (dimension 1 of all but the first), each part with its share of K."""
    if multiplicity_chunk is None:
        return [(1.0, inputs)]
    if multiplicity_chunk < 1:
        raise PrivacyError(f"multiplicity_chunk must be a positive number of draws, got {multiplicity_chunk}")
    draws = inputs[1:]
    multiplicities = {x.shape[1] if x.dim() > 1 else None for x in draws}
    if len(multiplicities) != 1 or None in multiplicities:
        raise PrivacyError("a multiplicity chunk needs the K draws along dimension 1 of every input but the "
                           f"first, got shapes {[tuple(x.shape) for x in inputs]}")
    (multiplicity,) = multiplicities
    if multiplicity_chunk >= multiplicity:
        return [(1.0, inputs)]
    return [(min(multiplicity_chunk, multiplicity - start) / multiplicity,
             (inputs[0], *(x[:, start:start + multiplicity_chunk] for x in draws)))
            for start in range(0, multiplicity, multiplicity_chunk)]


def _vmap_per_sample_gradients(model: nn.Module, per_example_loss_fn: PerExampleLoss,
                               inputs: tuple[torch.Tensor, ...], *,
                               chunk_size: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The ``vmap`` strategy of `compute_per_sample_gradients`: losses and per-example gradients by name."""
    trainable = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def example_loss(parameters, *example):
        # One example, with a batch dimension of 1, through the same loss the non-private step uses.
        def model_call(*args, **kwargs):
            return functional_call(model, (parameters, frozen, buffers), args, kwargs)

        return per_example_loss_fn(model_call, *(x.unsqueeze(0) for x in example)).squeeze(0)

    # randomness="different": dropout masks differ between examples, as in a normal batch.
    per_example = vmap(
        grad_and_value(example_loss),
        in_dims=(None,) + (0,) * len(inputs),
        randomness="different",
        chunk_size=chunk_size,
    )
    grads, losses = per_example(trainable, *inputs)
    return losses.detach(), grads


def compute_per_sample_gradients_opacus(
    model: nn.Module,
    per_row_loss_fn: PerExampleLoss,
    *rows: torch.Tensor,
    rows_per_example: int = 1,
    grad_sample_mode: str = "hooks",
) -> torch.Tensor:
    """Baseline: opacus per-row gradients over an expanded batch, then the mean over each example's rows.

    With noise multiplicity K the caller expands B images into B*K rows (the K
    rows of an example contiguous, each with one draw); opacus computes B*K
    per-row gradients, which are averaged in groups of K. Same result as
    `compute_per_sample_gradients`, at K times its gradient memory.

    Args:
        model: the network (wrapped in a `GradSampleModule` for this call only).
        per_row_loss_fn: maps (model, *rows) to one loss per row, shape B*K.
        *rows: tensors with leading dimension B*K.
        rows_per_example: K.
        grad_sample_mode: opacus' per-row engine: ``hooks`` (DPDM's choice),
            ``functorch`` or ``ew`` (expanded weights).

    Returns:
        The per-example losses (mean over each example's rows), shape B.
    """
    if grad_sample_mode not in OPACUS_MODES:
        raise PrivacyError(f"unknown opacus grad_sample_mode {grad_sample_mode!r} (choose from {', '.join(OPACUS_MODES)})")
    total = rows[0].shape[0]
    if total % rows_per_example:
        raise PrivacyError(f"{total} rows do not split into groups of {rows_per_example}")
    batch = total // rows_per_example
    wrapped = prepare_module(model, grad_sample_mode, batch_first=True, loss_reduction="sum")
    try:
        losses = per_row_loss_fn(wrapped, *rows)
        with warnings.catch_warnings():
            # Opacus' hooks on the first layer warn that the images need no gradient; they do not.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses.sum().backward()
        per_row = {p: p.grad_sample for p in model.parameters() if p.requires_grad}
    finally:
        # Remove the hooks; this also deletes the per-row grad_sample attributes.
        wrapped._close()
    for parameter, grad_sample in per_row.items():
        parameter.grad = None
        _store_grad_sample(parameter, grad_sample.view(batch, rows_per_example, *parameter.shape).mean(dim=1))
    return losses.detach().view(batch, rows_per_example).mean(dim=1)


def _store_grad_sample(parameter: nn.Parameter, grad_sample: torch.Tensor) -> None:
    """Set ``parameter.grad_sample`` the way opacus' GradSampleModule does (a list when accumulating)."""
    existing = getattr(parameter, "grad_sample", None)
    if existing is None:
        parameter.grad_sample = grad_sample
    elif isinstance(existing, list):
        existing.append(grad_sample)
    else:
        parameter.grad_sample = [existing, grad_sample]


def check_dp_compatible(model: nn.Module) -> None:
    """Refuse a model with a layer that mixes samples, so per-sample gradients would be wrong.

    Runs opacus' `ModuleValidator` (BatchNorm, LSTM, MultiheadAttention, ...)
    and also rejects every BatchNorm variant even without trainable parameters,
    which opacus' validator skips although its batch statistics still mix samples.

    Args:
        model: the network to be trained with DP-SGD.

    Raises:
        PrivacyError: naming the first offending layer.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise PrivacyError(
                f"layer '{name}' ({type(module).__name__}) mixes samples in a batch; "
                "DP-SGD needs GroupNorm or another per-sample layer"
            )
    # Opacus also insists on training mode, which is a state, not a property of the architecture.
    errors = [e for e in ModuleValidator.validate(model, strict=False) if "training mode" not in str(e)]
    if errors:
        raise PrivacyError(f"model is not DP-SGD compatible: {str(errors[0]).splitlines()[0]}")
