"""Field Augmented Layer (FAL): frame features attend to the differential fields (paper, Sec. 2.3).

The I2V denoiser receives the temporal differential fields ``d`` that TDDM generated. The paper
rejects a channel fusion of fields and frame features ("modality confusion") and instead:

1. warps the fields into the feature space of the frames with a learned mapping ``W``
   (here: average pooling to the site's grid, a 3x3x3 convolution per frame, GroupNorm, SiLU and a
   1x1x1 convolution);
2. interleaves warped field features and frame features WITH THE SAME FRAME INDEX along time,
   ``[f_0, w_0, f_1, w_1, ..., f_{T-1}, w_{T-1}]`` (length 2T);
3. projects that augmented sequence to keys and values, the frame features alone to queries, and
   attends along time at every voxel; the result is added to the frame features (residual).

Tokens carry the sinusoidal features of their frame index (both tokens of a pair share it) and a
learned type embedding (frame or field), so attention can tell "field i" from "frame i". Padded
frames (index >= N) are masked as keys. The cost is (D'*H'*W') * T * 2T * C per layer, so the
denoiser uses FAL at its low-resolution levels only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    FrameGroupNorm,
    SpatialConv,
    from_frames,
    from_per_voxel_sequences,
    multi_head_attention,
    per_voxel_key_mask,
    per_voxel_sequences,
    sinusoidal_embedding,
    to_frames,
)


class FieldWarp(nn.Module):
    """The learned mapping ``W`` of the paper: differential fields -> frame-feature space.

    Args:
        field_channels: channels of the fields (the VAE latent channels).
        feature_channels: width C of the frame features at the site.
        num_groups: GroupNorm groups.

    Shapes: fields (B, C_field, T, D, H, W), target (D', H', W') -> (B, C, T, D', H', W').
    """

    def __init__(self, field_channels: int, feature_channels: int, num_groups: int = 8) -> None:
        super().__init__()
        self.conv = SpatialConv(field_channels, feature_channels, 3)
        self.norm = FrameGroupNorm(num_groups, feature_channels)
        self.proj = SpatialConv(feature_channels, feature_channels, 1)

    def forward(self, fields: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        if tuple(fields.shape[3:]) != tuple(size):
            fields = from_frames(F.adaptive_avg_pool3d(to_frames(fields), size), fields.shape[0])
        return self.proj(F.silu(self.norm(self.conv(fields))))


class FieldAugmentedLayer(nn.Module):
    """Cross-attention along time from frame features to the field-augmented sequence.

    Args:
        field_channels: channels of the fields.
        feature_channels: width C of the frame features (divisible by ``num_heads``).
        num_heads: attention heads.
        num_groups: GroupNorm groups.

    Forward:
        h: (B, C, T, D', H', W') frame features at one U-Net site.
        fields: (B, C_field, T, D, H, W) differential fields on the latent grid (same T as h).
        frame_mask: (B, T) bool, True for real frames, or None.

    Returns:
        (B, C, T, D', H', W'): ``h + attention(queries=h, keys/values=interleave(h, W(fields)))``.
    """

    def __init__(self, field_channels: int, feature_channels: int, num_heads: int = 4, num_groups: int = 8) -> None:
        super().__init__()
        if feature_channels % num_heads:
            raise ValueError(f"FAL width {feature_channels} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.warp = FieldWarp(field_channels, feature_channels, num_groups)
        self.norm_frames = FrameGroupNorm(num_groups, feature_channels)
        self.norm_fields = FrameGroupNorm(num_groups, feature_channels)
        self.token_type = nn.Parameter(torch.randn(2, feature_channels) * 0.02)  # 0: frame, 1: field
        self.to_q = nn.Linear(feature_channels, feature_channels)
        self.to_kv = nn.Linear(feature_channels, 2 * feature_channels)
        self.out = nn.Linear(feature_channels, feature_channels)

    def augmented_sequence(self, h: torch.Tensor, fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-voxel frame tokens (N, T, C) and interleaved frame/field tokens (N, 2T, C), N = B*D'*H'*W'."""
        b, c, t = h.shape[:3]
        warped = self.warp(fields, tuple(h.shape[3:]))
        position = sinusoidal_embedding(torch.arange(t, device=h.device), c).to(h.dtype)
        frames = per_voxel_sequences(self.norm_frames(h)) + position + self.token_type[0]
        warped = per_voxel_sequences(self.norm_fields(warped)) + position + self.token_type[1]
        augmented = torch.stack([frames, warped], dim=2).reshape(frames.shape[0], 2 * t, c)
        return frames, augmented

    def forward(self, h: torch.Tensor, fields: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        if fields.shape[2] != h.shape[2]:
            raise ValueError(f"FAL got {fields.shape[2]} field frames for {h.shape[2]} feature frames")
        frames, augmented = self.augmented_sequence(h, fields)
        k, v = self.to_kv(augmented).chunk(2, dim=-1)
        key_mask = None if frame_mask is None else frame_mask.repeat_interleave(2, dim=1)
        voxels = frames.shape[0] // h.shape[0]
        out = multi_head_attention(self.to_q(frames), k, v, self.num_heads, per_voxel_key_mask(key_mask, voxels))
        return h + from_per_voxel_sequences(self.out(out), h.shape)
