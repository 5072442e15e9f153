"""The image-to-video latent video diffusion model (I2V LVDM, paper Sec. 2.1 and 2.3).

It denoises the latents of frames 1..N-1 of a cine, conditioned on the prompt latent ``z_0``, the
frame count N, an optional motion amplitude and the temporal differential fields from TDDM.

How the prompt enters (a choice the paper leaves open for this stage). Both ways at once:

* frame 0 of the input sequence IS the clean prompt latent (the denoiser overwrites slot 0 with
  it, at every timestep, in training and sampling), so the temporal convolutions, the temporal
  attention and the Field Augmented Layer see the prompt as the first frame ``F_0`` of the
  sequence, as in the paper's description of FAL; its noise prediction is zero and unused;
* the prompt latent is also concatenated, as C extra input channels, to EVERY frame. Temporal
  layers reach only a few frames at full resolution (kernel 3 per layer, attention only at low
  resolution), while every frame needs the prompt's full-resolution anatomy; the concatenation
  gives it to every frame at the cost of C input channels of the first convolution.

The fields enter only through Field Augmented Layers (:mod:`.fal`) at the U-Net sites of the
levels listed in ``fal_levels`` (low resolution, for cost), never by channel concatenation (the
paper's ablation). With ``cumulative_fields`` (default) the learned warp of FAL gets, for frame i,
both the step ``d_i`` and the running sum ``d_1 + ... + d_i`` (= ``z_i - z_0`` for exact fields,
see :mod:`.tddm`), so the field token that shares frame i's index carries the whole displacement
from the prompt, not only the last step; attention alone could only average over the steps. Padding works as in TDDM: frames >= N are ignored, the network runs on the first
``max(N)`` frames only, and the predicted noise is zero at frame 0 and at padded frames.

Residual formulation (``residual_to_fields``). Because the fields are latent differences, exact
fields already determine the latents: ``z_i = z_0 + d_1 + ... + d_i``. With this option the
denoiser diffuses only the residual ``r_i = z_i - (z_0 + d_1 + ... + d_i)`` against those
field-implied latents (its input is still ``base + noisy residual``, so slot 0 stays the prompt).
The I2V stage then refines sampled fields instead of re-deriving every latent from scratch: an
untrained or undertrained denoiser predicting a near-zero residual leaves the TDDM motion intact,
which is what makes a model trainable on a CPU budget. :func:`~.diffusion.i2v_loss` and
:func:`~.diffusion.sample_latents` read the flag and need the model's ``field_scale``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import InputError
from .blocks import (
    ConditionEmbedding,
    SpatioTemporalUNet,
    UNetSite,
    check_denoiser_inputs,
    concat_channels,
    denoiser_frames,
    mask_frames,
)
from .fal import FieldAugmentedLayer


class I2VDenoiser(nn.Module):
    """Noise predictor for the latents of frames 1..N-1, guided by prompt, N, amplitude and fields.

    Args:
        latent_channels: channels C of latents and fields.
        max_frames: padding length F (the largest N).
        channels: U-Net width per level.
        num_res_blocks: residual blocks per level (int or one per level).
        down_factors: (D, H, W) factor between consecutive levels.
        attention_levels: per level, temporal self-attention after its blocks.
        fal_levels: U-Net levels whose sites (down, up, and the middle for the last level) get a
            Field Augmented Layer.
        cumulative_fields: give FAL the running sum of the fields next to the fields themselves.
        residual_to_fields: diffuse the residual against the field-implied latents (see above).
        emb_channels: width of the condition embedding.
        num_groups: GroupNorm groups.
        num_heads: heads of temporal attention and FAL.
        use_amplitude: build the amplitude condition (with its learned null token).
        amplitude_scale: see :class:`.blocks.AmplitudeEmbedding`.
        dropout: dropout in the residual blocks.

    Forward:
        latents: (B, C, T, D, H, W) noisy latents, max(N) <= T <= F; frame 0 is replaced by the
            prompt and frames >= N are ignored.
        timesteps: (B,) or one int, diffusion steps.
        prompt: (B, C, D, H, W) clean latent of frame 0.
        fields: (B, C, T, D, H, W) temporal differential fields (``d_0`` and padding ignored).
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
        fal_levels: Sequence[int] = (1, 2),
        cumulative_fields: bool = True,
        residual_to_fields: bool = False,
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
        if any(not 0 <= level < len(channels) for level in fal_levels):
            raise ValueError(f"fal_levels {tuple(fal_levels)} must name levels 0..{len(channels) - 1}")
        self.latent_channels = latent_channels
        self.max_frames = max_frames
        self.fal_levels = tuple(int(level) for level in fal_levels)
        self.cumulative_fields = bool(cumulative_fields)
        self.residual_to_fields = bool(residual_to_fields)
        field_channels = 2 * latent_channels if self.cumulative_fields else latent_channels
        self.embedding = ConditionEmbedding(emb_channels, use_amplitude, amplitude_scale)
        self.unet = SpatioTemporalUNet(
            2 * latent_channels,  # noisy latents + the prompt latent on every frame
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
        self.fal = nn.ModuleDict(
            {
                site.name: FieldAugmentedLayer(field_channels, site.channels, num_heads, num_groups)
                for site in self.unet.sites()
                if site.level in self.fal_levels
            }
        )

    def check_inputs(self, latents: torch.Tensor, prompt: torch.Tensor, fields: torch.Tensor) -> None:
        """Raise :class:`InputError` unless latents, prompt and fields have matching shapes."""
        if fields.shape != latents.shape:
            raise InputError(
                f"I2V expects latents and fields (B, C, T, D, H, W) of one shape, got {tuple(latents.shape)} "
                f"and {tuple(fields.shape)}"
            )
        check_denoiser_inputs("I2V", "latents", latents, prompt, self.latent_channels, self.max_frames, self.unet)

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor | int,
        prompt: torch.Tensor,
        fields: torch.Tensor,
        num_frames: torch.Tensor | int,
        amplitude: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        self.check_inputs(latents, prompt, fields)
        frames = denoiser_frames(self.embedding, latents, timesteps, num_frames, amplitude)
        run, frame_mask, future = frames.run, frames.frame_mask, frames.generated  # future: frames 1..N-1
        prompt = prompt.to(latents.dtype)
        prompt_video = prompt[:, :, None].expand(-1, -1, run, -1, -1, -1)
        x = mask_frames(latents[:, :, :run], future)
        x[:, :, 0] = prompt  # slot 0 holds the clean prompt frame
        fields = mask_frames(fields[:, :, :run], future)
        if self.cumulative_fields:
            fields = concat_channels(fields, torch.cumsum(fields, dim=2))

        def augment(h: torch.Tensor, site: UNetSite) -> torch.Tensor:
            if site.name not in self.fal:
                return h
            return self.fal[site.name](h, fields, frame_mask)

        eps = self.unet(concat_channels(x, prompt_video), frames.emb, frame_mask, hook=augment)
        return frames.finish(eps)
