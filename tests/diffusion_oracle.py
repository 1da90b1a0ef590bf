"""The exact denoiser for data holding one image per class, written from EDM's Table 1 in sigma form.

Independent of `privimage.diffusion`'s rewrite of the coefficients for x_t: with
sigma^2 = (1 - alpha_bar) / alpha_bar and y = x_t / sqrt(alpha_bar) = x0 + sigma * eps,
EDM's network sees c_in * y and its output F gives D = c_skip * y + c_out * F, with

    c_in = 1 / sqrt(sigma^2 + sigma_data^2)
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2).

The oracle returns the F for which D is exactly the class's image.
"""

import torch

from privimage.diffusion import alpha_bar


class OracleDenoiser(torch.nn.Module):
    """F(c_in * y, t, label) that makes D equal to ``images_by_label[label]`` (the null class included)."""

    def __init__(self, images_by_label, sigma_data=0.5):
        super().__init__()
        self.images_by_label = images_by_label
        self.sigma_data = sigma_data
        self.calls = []

    def forward(self, scaled_input, times, labels):
        self.calls.append(labels.clone())
        signal = alpha_bar(times).view(-1, 1, 1, 1)
        sigma = ((1 - signal) / signal).sqrt()
        norm = (sigma**2 + self.sigma_data**2).sqrt()
        y = scaled_input * norm
        c_skip = self.sigma_data**2 / norm**2
        c_out = sigma * self.sigma_data / norm
        return (self.images_by_label[labels] - c_skip * y) / c_out
