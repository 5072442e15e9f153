"""TDDM, the temporal differential diffusion model (paper, Sec. 2.2): the denoiser of the fields.

What a "temporal differential field" is here. The paper defines ``d_i = x_i - x_(i-1)`` for
i = 1..N-1 with ``d_0 = 0`` (a zero mask). MoDiff computes the differences on the VAE LATENT
grid, ``d_i = z_i - z_(i-1)`` with ``z_i`` the (unit-scaled) latent of frame i, because:

* they are exact there: the I2V model consumes them on the same grid and in the same units as
  the latents it denoises, with no resampling or re-encoding;
* they cost what one latent video costs, not what an image video would (TDDM runs on the CPU
  budget of the product);
* they sum telescopically, ``d_1 + ... + d_i = z_i - z_0``, so the condition the I2V model gets
  carries the cumulative motion from the prompt frame, not only the step-to-step change.

Differences have a much smaller variance than latents; the pipeline multiplies them by their own
``field_scale`` (stored in the model configuration) before TDDM sees them and divides after
sampling. :func:`fields_from_latents` and :func:`latents_from_fields` convert between the two
views (unscaled).

Padding: sequences are padded to ``max_frames`` = F; frames >= N are padding. Frame 0 is the
known zero field: the denoiser overwrites it (and the padding) with zeros on input and outputs
zero noise there, so neither the loss nor a sampler has to treat it specially beyond masking.
The network runs on the first ``max(N)`` frames of the batch only (its outputs at real frames do
not depend on the padding; see :mod:`.blocks`), so the cost grows with N, not with F.

Conditions: the diffusion timestep, N and an optional motion amplitude are embedded and added
(:class:`.blocks.ConditionEmbedding`); the prompt latent ``z_0`` modulates the features at every
U-Net site through a Prompt Attention Layer (:mod:`.pal`), never by channel concatenation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .blocks import (
    ConditionEmbedding,
    SpatioTemporalUNet,
    UNetSite,
    check_denoiser_inputs,
    denoiser_frames,
    field_frame_mask,
    frame_mask_from_counts,
    mask_frames,
)
from .pal import PromptAttentionLayer


def fields_from_latents(latents: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
    """Latent differences ``d_i = z_i - z_(i-1)``, ``d_0 = 0``, padding (i >= N) zero.

    Shapes: latents (B, C, F, D, H, W), num_frames (B,) -> (B, C, F, D, H, W).
    """
    fields = torch.zeros_like(latents)
    fields[:, :, 1:] = latents[:, :, 1:] - latents[:, :, :-1]
    return mask_frames(fields, field_frame_mask(num_frames, latents.shape[2]))


def latents_from_fields(prompt: torch.Tensor, fields: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fields_from_latents`: ``z_i = z_0 + d_1 + ... + d_i``, padding zero.

    Shapes: prompt (B, C, D, H, W), fields (B, C, F, D, H, W), num_frames (B,) -> (B, C, F, D, H, W).
    """
    length = fields.shape[2]
    steps = mask_frames(fields, field_frame_mask(num_frames, length))
    latents = prompt[:, :, None] + torch.cumsum(steps, dim=2)
    return mask_frames(latents, frame_mask_from_counts(num_frames, length))


class TDDM(nn.Module):
    """Noise predictor for temporal differential fields, conditioned on prompt, N and amplitude.

    Args:
        latent_channels: channels C of latents and fields.
        max_frames: padding length F (the largest N).
        channels: U-Net width per level.
        num_res_blocks: residual blocks per level (int or one per level).
        down_factors: (D, H, W) factor between consecutive levels.
        attention_levels: per level, temporal self-attention after its blocks.
        emb_channels: width of the condition embedding.
        num_groups: GroupNorm groups.
        num_heads: temporal attention heads.
        use_amplitude: build the amplitude condition (with its learned null token).
        amplitude_scale: see :class:`.blocks.AmplitudeEmbedding`.
        dropout: dropout in the residual blocks.

    Forward:
        fields: (B, C, T, D, H, W) noisy fields, max(N) <= T <= F; frame 0 and frames >= N are
            ignored (overwritten with zeros).
        timesteps: (B,) or one int, diffusion steps.
        prompt: (B, C, D, H, W) latent of frame 0.
        num_frames: (B,) or one int, N in [2, T].
        amplitude: (B,) float (NaN = absent), one float, or None (absent: null token).

    Returns:
        (B, C, T, D, H, W) predicted noise; zero at frame 0 and at frames >= N.
    """

    def __init__(
        self,
        latent_channels: int = 8,
        max_frames: int = 16,
        channels: Sequence[int] = (16, 64, 128),
        num_res_blocks: int | Sequence[int] = 1,
        down_factors: Sequence[Sequence[int]] = ((2, 2, 2), (2, 2, 2)),
        attention_levels: Sequence[bool] = (False, False, True),
        emb_channels: int = 128,
        num_groups: int = 8,
        num_heads: int = 4,
        use_amplitude: bool = True,
        amplitude_scale: float = 100.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if max_frames < 2:
            raise ValueError("max_frames must be at least 2")
        self.latent_channels = latent_channels
        self.max_frames = max_frames
        self.embedding = ConditionEmbedding(emb_channels, use_amplitude, amplitude_scale)
        self.unet = SpatioTemporalUNet(
            latent_channels,
            latent_channels,
            channels=channels,
            num_res_blocks=num_res_blocks,
            down_factors=down_factors,
            attention_levels=attention_levels,
            emb_channels=emb_channels,
            num_groups=num_groups,
            num_heads=num_heads,
            dropout=dropout,
        )
        self.pal = nn.ModuleDict(
            {site.name: PromptAttentionLayer(latent_channels, site.channels, num_groups) for site in self.unet.sites()}
        )

    def check_inputs(self, fields: torch.Tensor, prompt: torch.Tensor) -> None:
        """Raise :class:`~MoDiffLib.errors.InputError` unless fields (B, C, T, D, H, W) and prompt (B, C, D, H, W) fit."""
        check_denoiser_inputs("TDDM", "fields", fields, prompt, self.latent_channels, self.max_frames, self.unet)

    def forward(
        self,
        fields: torch.Tensor,
        timesteps: torch.Tensor | int,
        prompt: torch.Tensor,
        num_frames: torch.Tensor | int,
        amplitude: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        self.check_inputs(fields, prompt)
        frames = denoiser_frames(self.embedding, fields, timesteps, num_frames, amplitude)
        prompt = prompt.to(fields.dtype)

        def modulate(h: torch.Tensor, site: UNetSite) -> torch.Tensor:
            return self.pal[site.name](h, prompt)

        known = frames.generated  # False at d_0 and at padding
        eps = self.unet(mask_frames(fields[:, :, :frames.run], known), frames.emb, frames.frame_mask, hook=modulate)
        return frames.finish(eps)
