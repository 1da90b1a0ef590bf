"""Per-example gradients of examples that span several rows, from one ordinary backward pass.

With noise multiplicity K (DPDM Section 3.2) an image's loss is the mean over K
noisy rows, so DP-SGD needs one gradient per *group* of K rows. Opacus' hooks
give one gradient per row (B*K of them, K times the memory), and
``torch.func.vmap`` over images runs the UNet's GroupNorm and convolution
backward through batching rules that, measured on CPU (``benchmarks/README.md``),
need about 3x the memory of a non-private step and 1.4-2.6x its time at K = 8.

This module instead runs the loss once over all B*K rows, as the non-private
step does, with the parameters' own gradients switched off (autograd then only
computes the gradients flowing back through the activations). A forward hook on
every layer that owns parameters keeps its input; a hook on its output receives
the gradient of the summed loss with respect to that output during the backward
pass and turns the pair into B per-example parameter gradients by summing over
each example's rows:

- ``Conv2d``: the weight gradient of each group of rows is an ordinary batched
  convolution weight gradient (``aten.convolution_backward``, oneDNN on CPU,
  cuDNN on GPU); 1x1 convolutions are a batched matrix product.
- ``Linear``: a batched matrix product over the rows of each example.
- ``GroupNorm``: the normalised input is recomputed and multiplied by the gradient.
- ``Embedding``: each row's gradient is added to the row of its index.

Only B per-example gradients are ever stored. Rows must be example-major (the K
rows of example b are rows b*K .. b*K+K-1 at every layer), as
`privimage.diffusion.diffusion_loss_from_noise` lays them out; the correctness
tests compare every parameter with the one-example-at-a-time reference.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from privimage.errors import PrivacyError

PerExampleLoss = Callable[..., torch.Tensor]


def supports_grouped_gradients(model: nn.Module) -> bool:
    """Whether every layer of ``model`` that owns a trainable parameter has a grouped rule here.

    Args:
        model: the network.

    Returns:
        True when `grouped_per_example_gradients` can handle ``model``.
    """
    for module in model.modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)) and not _supported(module):
            return False
    return True


def grouped_per_example_gradients(
    model: nn.Module,
    per_example_loss_fn: PerExampleLoss,
    *inputs: torch.Tensor,
    into: dict[nn.Parameter, torch.Tensor] | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, dict[nn.Parameter, torch.Tensor]]:
    """Per-example gradients of ``per_example_loss_fn`` from one forward and one backward pass.

    Args:
        model: the network; every layer owning a trainable parameter must be one
            `supports_grouped_gradients` accepts. Its parameters' ``requires_grad``
            flags are switched off during the call and restored afterwards.
        per_example_loss_fn: maps (model, *inputs) to one loss per example (shape B);
            inside, each layer of ``model`` must see the rows of example b as one
            contiguous block of equal size.
        *inputs: tensors whose leading dimension B indexes examples.
        into: per-example gradients of earlier passes (as this function returns them),
            to which ``scale`` times this pass's are added in place, layer by layer
            during the backward pass, so that no second B x P copy is ever alive.
        scale: weight of this pass's gradients (and losses): a noise-multiplicity
            chunk of c of the K draws weighs c / K.

    Returns:
        ``(losses, gradients)``: the detached per-example losses times ``scale``
        (shape B), and for each trainable parameter a tensor ``[B, *p.shape]``
        holding ``scale`` times the gradient of each example's own loss, plus
        ``into``'s (``into`` itself, updated, when given).

    Raises:
        PrivacyError: a layer without a grouped rule, or a layer whose rows do not
            split into B equal groups.
    """
    examples = inputs[0].shape[0]
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients: dict[nn.Parameter, torch.Tensor] = {} if into is None else into
    handles = _attach_grouped_hooks(model, examples=examples, gradients=gradients, scale=scale)
    # Parameters off: autograd computes only activation gradients, the hooks do the rest.
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        # Detached inputs: the caller's tensors never receive gradients, as with torch.func.
        losses = per_example_loss_fn(model, *(x.detach() for x in inputs))
        if losses.shape != (examples,):
            raise PrivacyError(f"the per-example loss returned shape {tuple(losses.shape)}, expected ({examples},)")
        if losses.requires_grad:
            losses.sum().backward()
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
        for handle in handles:
            handle.remove()
    # A parameter the loss never reached has a zero gradient for every example.
    for parameter in trainable:
        if parameter not in gradients:
            gradients[parameter] = parameter.new_zeros((examples, *parameter.shape))
    return losses.detach() * scale, gradients


def _attach_grouped_hooks(model: nn.Module, *, examples: int, gradients: dict[nn.Parameter, torch.Tensor],
                          scale: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks on every layer that owns a trained parameter, adding its per-example gradients into ``gradients``.

    A forward hook keeps the layer's input and hooks its output; during the
    backward pass the output's gradient and the kept input give the layer's B
    per-example parameter gradients (`_layer_gradients`), ``scale`` times which
    are added to ``gradients``.

    Returns:
        The forward hooks' handles, for the caller to remove.
    """
    def accumulate(parameter: nn.Parameter, value: torch.Tensor) -> None:
        # A layer called twice in one forward contributes twice, as in ordinary autograd;
        # an earlier pass's sum is added to in place.
        if parameter in gradients:
            gradients[parameter].add_(value, alpha=scale)
        else:
            gradients[parameter] = value if scale == 1.0 else value.mul_(scale)

    def keep_input(module: nn.Module, args: tuple, output: torch.Tensor):
        layer_input = args[0].detach()
        rows = layer_input.shape[0]
        if rows % examples:
            raise PrivacyError(
                f"layer {type(module).__name__} sees {rows} rows, not a multiple of the {examples} examples; "
                "per-example gradients need each example's rows in one contiguous block"
            )
        # Nothing upstream needs a gradient (parameters are off): make the output the start of the graph.
        if not output.requires_grad:
            output = output.detach().requires_grad_()

        def on_output_gradient(output_gradient: torch.Tensor) -> None:
            for name, value in _layer_gradients(module, layer_input, output_gradient, examples,
                                                wanted[module]).items():
                accumulate(getattr(module, name), value)

        output.register_hook(on_output_gradient)
        return output

    # Which parameters of each layer are trained, noted before the caller switches the flags off.
    wanted: dict[nn.Module, set[str]] = {}
    for module in model.modules():
        names = {name for name, p in module.named_parameters(recurse=False) if p.requires_grad}
        if names:
            if not _supported(module):
                # Refused before any hook is attached, so the model is left as it was.
                raise PrivacyError(f"no grouped per-example gradient rule for layer {type(module).__name__}")
            wanted[module] = names
    return [module.register_forward_hook(keep_input) for module in wanted]


def _supported(module: nn.Module) -> bool:
    """Layers with a grouped rule (and only the settings the rules implement)."""
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    if isinstance(module, nn.Embedding):
        return (module.padding_idx is None and module.max_norm is None and not module.sparse
                and not module.scale_grad_by_freq)
    return isinstance(module, (nn.Linear, nn.GroupNorm))


def _layer_gradients(module: nn.Module, layer_input: torch.Tensor, output_gradient: torch.Tensor,
                     examples: int, wanted: set[str]) -> dict[str, torch.Tensor]:
    """Per-example gradients of the ``wanted`` parameters of one layer, summed over each example's rows."""
    grouped_output = output_gradient.reshape(examples, -1, *output_gradient.shape[1:])
    result: dict[str, torch.Tensor] = {}
    if isinstance(module, nn.Conv2d):
        if "weight" in wanted:
            result["weight"] = _conv_weight_gradients(module, layer_input, output_gradient, examples)
        if "bias" in wanted:
            result["bias"] = grouped_output.sum(dim=(1, 3, 4))
    elif isinstance(module, nn.Linear):
        # Rows of an example (and any middle dimensions) are summed by the matrix product.
        out_grad = output_gradient.reshape(examples, -1, module.out_features)
        if "weight" in wanted:
            result["weight"] = torch.bmm(out_grad.transpose(1, 2),
                                         layer_input.reshape(examples, -1, module.in_features))
        if "bias" in wanted:
            result["bias"] = out_grad.sum(dim=1)
    elif isinstance(module, nn.GroupNorm):
        channels = layer_input.shape[1]
        per_channel = (examples, -1, channels, layer_input[0, 0].numel())
        if "weight" in wanted:
            # d loss / d gamma = sum over rows and positions of (gradient * normalised input).
            normalised = torch.nn.functional.group_norm(layer_input, module.num_groups, None, None, module.eps)
            result["weight"] = (output_gradient * normalised).reshape(per_channel).sum(dim=(1, 3))
        if "bias" in wanted:
            result["bias"] = output_gradient.reshape(per_channel).sum(dim=(1, 3))
    elif isinstance(module, nn.Embedding) and "weight" in wanted:
        vocabulary, width = module.weight.shape
        indices = layer_input.reshape(examples, -1)
        # Row r of example b adds its gradient to row (b, index_r) of a B x V x D table.
        flat_rows = (torch.arange(examples, device=indices.device)[:, None] * vocabulary + indices).reshape(-1)
        table = output_gradient.new_zeros((examples * vocabulary, width))
        table.index_add_(0, flat_rows, output_gradient.reshape(-1, width))
        result["weight"] = table.view(examples, vocabulary, width)
    return result


def _conv_weight_gradients(module: nn.Conv2d, layer_input: torch.Tensor, output_gradient: torch.Tensor,
                           examples: int) -> torch.Tensor:
    """Conv2d weight gradient of each example's rows, B x out x in/groups x kh x kw."""
    rows = layer_input.shape[0] // examples
    pointwise = (module.kernel_size == (1, 1) and module.stride == (1, 1) and tuple(module.padding) == (0, 0)
                 and module.groups == 1)
    if pointwise:
        # A 1x1 convolution is a matrix product over rows and pixels.
        grouped_gradient = output_gradient.reshape(examples, rows, module.out_channels, -1)
        grouped_input = layer_input.reshape(examples, rows, module.in_channels, -1)
        weight = torch.einsum("bkol,bkcl->boc", grouped_gradient, grouped_input)
        return weight.view(examples, *module.weight.shape)
    # Each example's weight gradient is a normal batched one over its rows (oneDNN / cuDNN kernels);
    # measured faster than unfold + matmul and than vmap's grouped-convolution rule.
    per_example = [
        torch.ops.aten.convolution_backward(
            output_gradient[b * rows:(b + 1) * rows], layer_input[b * rows:(b + 1) * rows], module.weight,
            None, module.stride, module.padding, module.dilation, False, [0, 0], module.groups,
            [False, True, False],
        )[1]
        for b in range(examples)
    ]
    return torch.stack(per_example)
