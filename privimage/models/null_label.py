"""Sampling a diffusion model that was pre-trained on the null class only.

PDP-Diffusion pre-trains on all public data, whose labels are not the sensitive
classes, so its UNet learns the null class alone (classifier-free guidance's
unconditional class). Sampled before fine-tuning, every requested class must
become that null class.
"""

from __future__ import annotations

import torch
from torch import nn


class NullLabelModel(nn.Module):
    """A denoiser that answers every class label with ``model``'s null class ``num_classes``."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, times: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model(x, times, torch.full_like(labels, self.num_classes))
