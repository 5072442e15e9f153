"""Prompt Attention Layer (PAL): the prompt frame modulates the field features (paper, Sec. 2.3).

Mo-Diff does not concatenate the prompt frame to the noisy differential fields (its ablation
shows that a "coarse channel concatenation" gives worse fields). Instead a small convolutional
mapping ``P`` (convolution, ReLU, GroupNorm) takes the prompt latent to feature space, and the
result modulates the TDDM features element-wise, by multiplication and addition::

    p = GroupNorm(ReLU(Conv3d(resize(prompt))))
    h <- h * (1 + scale(p)) + shift(p)          # scale, shift broadcast over the frames T

``resize`` is an average pooling of the prompt to the (D, H, W) grid of the U-Net level the layer
sits at, so one PAL per site sees the prompt at that site's resolution. The prompt has no time
axis: it is mapped once per forward pass at the cost of a single frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import group_count


class PromptAttentionLayer(nn.Module):
    """Scale-and-shift modulation of video features by the prompt latent.

    Args:
        prompt_channels: channels of the prompt latent (the VAE latent channels).
        feature_channels: width C of the features to modulate.
        num_groups: GroupNorm groups of the mapping (reduced to a divisor of the width).

    Forward:
        h: (B, C, T, D', H', W') features of the differential fields at one U-Net site.
        prompt: (B, C_prompt, D, H, W) latent of frame 0, on the full latent grid; it is
            average-pooled to (D', H', W').

    Returns:
        (B, C, T, D', H', W'): ``h * (1 + scale) + shift``.
    """

    def __init__(self, prompt_channels: int, feature_channels: int, num_groups: int = 8) -> None:
        super().__init__()
        self.mapping = nn.Sequential(
            nn.Conv3d(prompt_channels, feature_channels, 3, padding=1),
            nn.ReLU(),
            nn.GroupNorm(group_count(feature_channels, num_groups), feature_channels),
        )
        self.to_scale_shift = nn.Conv3d(feature_channels, 2 * feature_channels, 1)

    def prompt_features(self, prompt: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        """(B, C_prompt, D, H, W) -> (B, 2C, D', H', W'): scale and shift stacked along channels."""
        if tuple(prompt.shape[2:]) != tuple(size):
            prompt = F.adaptive_avg_pool3d(prompt, size)
        return self.to_scale_shift(self.mapping(prompt))

    def forward(self, h: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        scale, shift = self.prompt_features(prompt, tuple(h.shape[3:])).to(h.dtype).chunk(2, dim=1)
        return h * (1 + scale[:, :, None]) + shift[:, :, None]
