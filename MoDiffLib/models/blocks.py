"""Building blocks of the two Mo-Diff denoisers and the spatio-temporal U-Net they share.

Every video tensor here is laid out ``(B, C, T, D, H, W)``: batch, channels, frames, slices,
rows, columns. The blocks follow the paper's "Spatial & Temporal Layer" (Sec. 2.3, P3D / (2+1)D
factorisation): a 3D convolution over (D, H, W) applied to every frame on its own, then a 1D
convolution over T applied to every voxel on its own.

Frames, padding and masks. Sequences are padded to a fixed length; a boolean ``frame_mask``
(B, T) marks the real frames. Normalisation is per frame (GroupNorm statistics over one frame's
(C/G, D, H, W)), so a padded frame can reach a real one only through the temporal operations;
those zero padded frames before the temporal convolution and mask them as attention keys. The
outputs at real frames therefore do not depend on what the padded frames hold, and running a
network on the first ``max(N)`` frames only gives exactly the outputs of a run on all padded
frames (the denoisers use this to make the cost grow with N, not with the padding length).

Memory layout (speed only, never semantics): on a 2-core CPU the oneDNN convolutions are about
twice as fast on channels-last data, so the U-Net keeps its activations in "frame-major
channels-last" memory order (B, T, D, H, W, C) while their logical shape stays
(B, C, T, D, H, W). In that order the per-frame view (B*T, C, D, H, W) is channels-last 3D and
the per-voxel view (B, C, T, D*H*W) is channels-last 2D, both without copies. Any input layout
works; :func:`channels_last_video` converts once at the U-Net entry.

Down- and up-sampling act on (D, H, W) only, with one factor per axis per level (for example
(1, 2, 2) for thick-slice cardiac MR); the number of frames T is never resampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

Factor = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------


def channels_last_video(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` (B, C, T, D, H, W) stored in (B, T, D, H, W, C) memory order.

    The logical shape and values are unchanged; no copy is made when ``x`` is already so stored.
    """
    return x.permute(0, 2, 3, 4, 5, 1).contiguous().permute(0, 5, 1, 2, 3, 4)


def concat_channels(*xs: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, C_i, T, D, H, W) tensors along C, the result stored channels-last."""
    return torch.cat([x.permute(0, 2, 3, 4, 5, 1) for x in xs], dim=-1).permute(0, 5, 1, 2, 3, 4)


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, D, H, W) -> (B*T, C, D, H, W), one 3D volume per frame (a view when possible)."""
    b, c, t, d, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, d, h, w)


def from_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*T, C, D, H, W) -> (B, C, T, D, H, W), the inverse of :func:`to_frames`."""
    bt, c, d, h, w = x.shape
    return x.reshape(batch, bt // batch, c, d, h, w).transpose(1, 2)


def frame_mask_from_counts(num_frames: torch.Tensor, length: int) -> torch.Tensor:
    """Boolean mask (B, length) that is True for the frames ``t < num_frames[b]``."""
    steps = torch.arange(length, device=num_frames.device)
    return steps[None, :] < num_frames[:, None]


def frame_counts(num_frames: int | Sequence[int] | torch.Tensor, batch: int, max_frames: int,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Frame counts N as a (B,) int64 tensor, each checked to lie in [2, max_frames].

    ``num_frames`` is one int for the whole batch or one per sample. Raises :class:`InputError`
    for counts outside the range or a wrong number of them.
    """
    counts = torch.as_tensor(num_frames, device=device)
    if counts.is_floating_point() and bool((counts != counts.round()).any()):
        raise InputError(f"the frame count must be a whole number, got {counts.tolist()}")
    counts = counts.to(torch.int64)
    if counts.ndim == 0:
        counts = counts.expand(batch)
    if counts.shape != (batch,):
        raise InputError(f"expected one frame count or {batch} of them, got shape {tuple(counts.shape)}")
    low, high = int(counts.min()), int(counts.max())
    if low < 2 or high > max_frames:
        raise InputError(f"the frame count N must be between 2 and {max_frames}, got {counts.tolist()}")
    return counts.contiguous()


def amplitudes(amplitude: float | Sequence[float] | torch.Tensor | None, batch: int,
               device: torch.device | str | None = None) -> torch.Tensor | None:
    """Motion amplitudes as a (B,) float tensor (NaN = absent for that sample), or None.

    Raises :class:`InputError` for infinite values or a wrong number of them.
    """
    if amplitude is None:
        return None
    values = torch.as_tensor(amplitude, dtype=torch.float32, device=device)
    if values.ndim == 0:
        values = values.expand(batch)
    if values.shape != (batch,):
        raise InputError(f"expected one amplitude or {batch} of them, got shape {tuple(values.shape)}")
    if bool(torch.isinf(values).any()):
        raise InputError(f"the motion amplitude must be finite, got {values.tolist()}")
    return values.contiguous()


def mask_frames(x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the frames of ``x`` (B, C, T, D, H, W) where ``frame_mask`` (B, T) is False (None: keep all)."""
    if frame_mask is None:
        return x
    return x * frame_mask[:, None, :, None, None, None].to(x.dtype)


def group_count(channels: int, num_groups: int) -> int:
    """Largest group count <= ``num_groups`` that divides ``channels`` (GroupNorm needs one)."""
    return math.gcd(channels, num_groups)


# --------------------------------------------------------------------------------------------
# Embeddings of the scalar conditions: diffusion timestep, frame count N, motion amplitude
# --------------------------------------------------------------------------------------------


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of scalars.

    Args:
        values: (B,) real values (timesteps, frame counts, scaled amplitudes).
        dim: number of features (even numbers use half cosines, half sines).
        max_period: the slowest period; frequencies are geometric from 1 to 1/max_period.

    Returns:
        (B, dim) float tensor.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half
    )
    args = values.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ScalarEmbedding(nn.Module):
    """Sinusoidal features of a scalar followed by a two-layer SiLU MLP.

    Used for the diffusion timestep and for the frame count N (paper: "an embedding added like
    the diffusion timestep").

    Args:
        emb_channels: output width E.
        input_scale: the scalar is multiplied by this before its sinusoidal features.

    Shapes: (B,) -> (B, E).
    """

    def __init__(self, emb_channels: int, input_scale: float = 1.0) -> None:
        super().__init__()
        self.emb_channels = emb_channels
        self.input_scale = float(input_scale)
        self.mlp = nn.Sequential(
            nn.Linear(emb_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(values * self.input_scale, self.emb_channels)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class AmplitudeEmbedding(nn.Module):
    """Embedding of an optional scalar motion strength, with a learned null token.

    An amplitude is "absent" where it is NaN; those samples get the learned ``null_token``
    instead of the MLP output, so one batch may mix given and absent amplitudes (training drops
    amplitudes at random to teach the null token; sampling without an amplitude uses it).

    Args:
        emb_channels: output width E.
        amplitude_scale: amplitudes are multiplied by this before their sinusoidal features
            (frequencies 1 to 1e-4 per unit). With the default, amplitudes in physical units
            (e.g. diaphragm travel in mm, ejection fraction in %) from 0.01 up to a few hundred
            map to distinct features without wrapping of the slowest component.

    Shapes: (B,) float with NaN = absent -> (B, E).
    """

    def __init__(self, emb_channels: int, amplitude_scale: float = 100.0) -> None:
        super().__init__()
        self.embed = ScalarEmbedding(emb_channels, input_scale=amplitude_scale)
        self.null_token = nn.Parameter(torch.randn(emb_channels) * 0.02)

    def forward(self, amplitude: torch.Tensor) -> torch.Tensor:
        present = torch.isfinite(amplitude)
        given = self.embed(torch.where(present, amplitude, torch.zeros_like(amplitude)))
        null = self.null_token.to(given.dtype).expand_as(given)
        return torch.where(present[:, None], given, null)


class ConditionEmbedding(nn.Module):
    """Sum of the timestep, frame-count and (optional) amplitude embeddings.

    Args:
        emb_channels: width E of the embedding given to every residual block.
        use_amplitude: build the amplitude embedding (with its null token).
        amplitude_scale: see :class:`AmplitudeEmbedding`.

    Forward:
        timesteps: (B,) integer diffusion steps.
        num_frames: (B,) integer frame counts N.
        amplitude: (B,) float, NaN where absent, or None (all absent). Must be None when the
            module was built without ``use_amplitude``.

    Returns:
        (B, E) embedding.
    """

    def __init__(self, emb_channels: int, use_amplitude: bool = True, amplitude_scale: float = 100.0) -> None:
        super().__init__()
        self.timestep = ScalarEmbedding(emb_channels)
        self.frame_count = ScalarEmbedding(emb_channels)
        self.amplitude = AmplitudeEmbedding(emb_channels, amplitude_scale) if use_amplitude else None

    def forward(
        self, timesteps: torch.Tensor, num_frames: torch.Tensor, amplitude: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.timestep(timesteps) + self.frame_count(num_frames)
        if self.amplitude is not None:
            if amplitude is None:
                amplitude = torch.full(timesteps.shape, float("nan"), device=timesteps.device)
            emb = emb + self.amplitude(amplitude)
        elif amplitude is not None and bool(torch.isfinite(amplitude).any()):
            raise InputError("this model was built without an amplitude condition; pass amplitude=None")
        return emb


# --------------------------------------------------------------------------------------------
# Factorised convolutions, normalisation, residual block
# --------------------------------------------------------------------------------------------


class SpatialConv(nn.Module):
    """3D convolution over (D, H, W) applied to every frame independently.

    Args:
        in_channels, out_channels: widths.
        kernel_size: cubic kernel size (odd).
        stride: per-axis (D, H, W) stride; padding keeps ``size / stride``.

    Shapes: (B, C_in, T, D, H, W) -> (B, C_out, T, D/sd, H/sh, W/sw).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: Sequence[int] = (1, 1, 1)
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size, stride=tuple(stride), padding=kernel_size // 2
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = to_frames(x).contiguous(memory_format=torch.channels_last_3d)
        return from_frames(self.conv(frames), x.shape[0])


class TemporalConv(nn.Module):
    """1D convolution over the frames T applied to every voxel independently (zero padding).

    Padded frames are zeroed first, so a frame next to the padding sees the same zeros as the
    last frame of an unpadded sequence.

    Args:
        in_channels, out_channels: widths.
        kernel_size: temporal kernel size (odd).

    Shapes: (B, C_in, T, D, H, W), mask (B, T) -> (B, C_out, T, D, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, (kernel_size, 1), padding=(kernel_size // 2, 0))

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, t, d, h, w = x.shape
        # (B, C, T, D*H*W) as a channels-last 2D image of height T: a view for channels-last video
        series = mask_frames(x, frame_mask).permute(0, 2, 3, 4, 5, 1).reshape(b, t, d * h * w, c)
        y = self.conv(series.permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1).reshape(b, t, d, h, w, -1).permute(0, 5, 1, 2, 3, 4)


class FactorisedConv(nn.Module):
    """P3D / (2+1)D convolution: :class:`SpatialConv` then :class:`TemporalConv`.

    Shapes: (B, C_in, T, D, H, W), mask (B, T) -> (B, C_out, T, D, H, W).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, temporal_kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.spatial = SpatialConv(in_channels, out_channels, kernel_size)
        self.temporal = TemporalConv(out_channels, out_channels, temporal_kernel_size)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.temporal(self.spatial(x), frame_mask)


class FrameGroupNorm(nn.Module):
    """GroupNorm with statistics per frame (over C/G, D, H, W of one frame).

    Shapes: (B, C, T, D, H, W) -> same.
    """

    def __init__(self, num_groups: int, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(group_count(channels, num_groups), channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_frames(self.norm(to_frames(x)), x.shape[0])


class SpatioTemporalResBlock(nn.Module):
    """Residual block of two factorised convolutions with the condition embedding as FiLM.

    ``norm -> SiLU -> FactorisedConv -> norm * (1 + scale) + shift -> SiLU -> dropout ->
    FactorisedConv``, plus a skip (a 1x1x1 convolution when widths differ). ``scale`` and
    ``shift`` come from a linear map of the condition embedding (timestep + N + amplitude).

    Args:
        in_channels, out_channels: widths.
        emb_channels: width E of the condition embedding.
        num_groups: GroupNorm groups (reduced to a divisor of the width where needed).
        temporal_kernel_size: kernel of the temporal convolutions.
        dropout: dropout probability before the second convolution.

    Shapes: x (B, C_in, T, D, H, W), emb (B, E), mask (B, T) -> (B, C_out, T, D, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        num_groups: int = 8,
        temporal_kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(num_groups, in_channels)
        self.conv1 = FactorisedConv(in_channels, out_channels, 3, temporal_kernel_size)
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels)
        self.norm2 = FrameGroupNorm(num_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = FactorisedConv(out_channels, out_channels, 3, temporal_kernel_size)
        self.skip = SpatialConv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), frame_mask)
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)), frame_mask)
        skip = x if self.skip is None else self.skip(x)
        return skip + h


# --------------------------------------------------------------------------------------------
# Temporal attention
# --------------------------------------------------------------------------------------------


def per_voxel_sequences(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, D, H, W) -> (B*D*H*W, T, C): one sequence over time per voxel."""
    b, c, t, d, h, w = x.shape
    return x.permute(0, 3, 4, 5, 2, 1).reshape(b * d * h * w, t, c)


def from_per_voxel_sequences(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(B*D*H*W, T, C) -> (B, C, T, D, H, W), the inverse of :func:`per_voxel_sequences`."""
    b, _, t, d, h, w = shape
    return x.reshape(b, d, h, w, t, x.shape[-1]).permute(0, 5, 4, 1, 2, 3)


def per_voxel_key_mask(frame_mask: torch.Tensor | None, voxels: int) -> torch.Tensor | None:
    """(B, T') bool -> (B*voxels, 1, 1, T') attention mask (True = may attend)."""
    if frame_mask is None:
        return None
    b, t = frame_mask.shape
    return frame_mask[:, None, :].expand(b, voxels, t).reshape(b * voxels, 1, 1, t)


def multi_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """Scaled dot-product attention with heads split from the channel axis.

    Shapes: q (N, Lq, C), k and v (N, Lk, C), mask (N, 1, 1, Lk) bool or None -> (N, Lq, C).
    """
    n, lq, c = q.shape
    lk = k.shape[1]
    q = q.reshape(n, lq, num_heads, c // num_heads).transpose(1, 2)
    k = k.reshape(n, lk, num_heads, c // num_heads).transpose(1, 2)
    v = v.reshape(n, lk, num_heads, c // num_heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(n, lq, c)


class TemporalSelfAttention(nn.Module):
    """Multi-head self-attention over the frames T at every voxel, residual.

    Frame positions enter as sinusoidal features of the frame index added before the
    projections; padded frames are masked as keys. Meant for low-resolution levels: the cost is
    (D*H*W) * T^2 * C.

    Args:
        channels: width C (divisible by ``num_heads``).
        num_heads: attention heads.
        num_groups: GroupNorm groups of the pre-norm.

    Shapes: (B, C, T, D, H, W), mask (B, T) -> same as x.
    """

    def __init__(self, channels: int, num_heads: int = 4, num_groups: int = 8) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention width {channels} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm = FrameGroupNorm(num_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, t, d, h, w = x.shape
        tokens = per_voxel_sequences(self.norm(x))
        position = sinusoidal_embedding(torch.arange(t, device=x.device), c).to(tokens.dtype)
        q, k, v = self.qkv(tokens + position[None]).chunk(3, dim=-1)
        out = multi_head_attention(q, k, v, self.num_heads, per_voxel_key_mask(frame_mask, d * h * w))
        return x + from_per_voxel_sequences(self.out(out), x.shape)


# --------------------------------------------------------------------------------------------
# Spatial resampling (never temporal)
# --------------------------------------------------------------------------------------------


def _as_factor(factor: Sequence[int]) -> Factor:
    f = tuple(int(v) for v in factor)
    if len(f) != 3 or min(f) < 1:
        raise ValueError(f"a spatial factor is three positive integers (D, H, W), got {tuple(factor)}")
    return f  # type: ignore[return-value]


class SpatialDownsample(nn.Module):
    """Strided 3x3x3 convolution per frame dividing (D, H, W) by ``factor`` (T unchanged).

    Shapes: (B, C_in, T, D, H, W) -> (B, C_out, T, D/fd, H/fh, W/fw).
    """

    def __init__(self, in_channels: int, out_channels: int, factor: Sequence[int]) -> None:
        super().__init__()
        self.factor = _as_factor(factor)
        self.conv = SpatialConv(in_channels, out_channels, 3, stride=self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialUpsample(nn.Module):
    """A 3x3x3 convolution per frame, then nearest-neighbour upsampling of (D, H, W) by ``factor``.

    The convolution runs BEFORE the upsampling, at the coarse resolution, where it is
    ``fd*fh*fw`` times cheaper; the decoder blocks that follow smooth the nearest-neighbour
    blocks. T is unchanged.

    Shapes: (B, C_in, T, D, H, W) -> (B, C_out, T, D*fd, H*fh, W*fw).
    """

    def __init__(self, in_channels: int, out_channels: int, factor: Sequence[int]) -> None:
        super().__init__()
        self.factor = _as_factor(factor)
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.conv(to_frames(x).contiguous(memory_format=torch.channels_last_3d))
        if self.factor != (1, 1, 1):
            frames = F.interpolate(frames, scale_factor=self.factor, mode="nearest")
        return from_frames(frames, x.shape[0])


# --------------------------------------------------------------------------------------------
# The U-Net
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UNetSite:
    """A place in :class:`SpatioTemporalUNet` where a denoiser may inject its condition.

    Attributes:
        name: ``"down<l>"`` (after the encoder blocks of level l), ``"mid"``, or ``"up<l>"``
            (after the decoder blocks of level l).
        level: the U-Net level (the middle is at the last level).
        channels: feature width at that site.
        reduction: total (D, H, W) reduction of the features there relative to the input.
    """

    name: str
    level: int
    channels: int
    reduction: Factor


#: A condition injector: features (B, C_site, T, D', H', W') at a site -> same shape.
SiteHook = Callable[[torch.Tensor, UNetSite], torch.Tensor]


class SpatioTemporalUNet(nn.Module):
    """U-Net of factorised spatio-temporal residual blocks; resamples (D, H, W) only.

    Level l runs ``num_res_blocks[l]`` residual blocks of width ``channels[l]``; between level
    l and l+1 the spatial axes are divided by ``down_factors[l]``. The encoder output of every
    level is kept as a skip; the middle is one residual block (plus temporal attention when the
    last level has it); the decoder upsamples, concatenates the skip and runs the same number of
    blocks. Temporal self-attention follows every block of the levels flagged in
    ``attention_levels`` (use it at low resolution only). Conditions other than the embedding
    (prompt, fields) are injected by the caller through ``hook`` at the :meth:`sites`.

    Args:
        in_channels: input width (noisy latents, plus any concatenated condition channels).
        out_channels: output width (the predicted noise).
        channels: width per level, e.g. (16, 64, 128).
        num_res_blocks: residual blocks per level (one int for all levels, or one per level).
        down_factors: (D, H, W) factor between consecutive levels, ``len(channels) - 1`` of them.
        attention_levels: per level, whether temporal self-attention follows its blocks.
        emb_channels: width E of the condition embedding.
        num_groups: GroupNorm groups.
        num_heads: heads of the temporal attention.
        temporal_kernel_size: kernel of the temporal convolutions.
        dropout: dropout in the residual blocks.

    Forward:
        x: (B, C_in, T, D, H, W); each of D, H, W divisible by the product of its factors.
        emb: (B, E) condition embedding.
        frame_mask: (B, T) bool, True for real frames, or None (all real).
        hook: optional :data:`SiteHook` called at every site.

    Returns:
        (B, C_out, T, D, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 64, 128),
        num_res_blocks: int | Sequence[int] = 1,
        down_factors: Sequence[Sequence[int]] = ((2, 2, 2), (2, 2, 2)),
        attention_levels: Sequence[bool] = (False, False, True),
        emb_channels: int = 128,
        num_groups: int = 8,
        num_heads: int = 4,
        temporal_kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        levels = len(channels)
        blocks = [num_res_blocks] * levels if isinstance(num_res_blocks, int) else list(num_res_blocks)
        factors = [_as_factor(f) for f in down_factors]
        if levels < 1 or len(blocks) != levels or len(factors) != levels - 1 or len(attention_levels) != levels:
            raise ValueError(
                "channels, num_res_blocks and attention_levels need one entry per level and "
                "down_factors one fewer"
            )
        if min(blocks) < 1:
            raise ValueError("every level needs at least one residual block")
        self.channels = tuple(int(c) for c in channels)
        self.down_factors = tuple(factors)
        self.attention_levels = tuple(bool(a) for a in attention_levels)

        def res(cin: int, cout: int) -> SpatioTemporalResBlock:
            return SpatioTemporalResBlock(cin, cout, emb_channels, num_groups, temporal_kernel_size, dropout)

        def attn(c: int) -> TemporalSelfAttention:
            return TemporalSelfAttention(c, num_heads, num_groups)

        self.stem = SpatialConv(in_channels, self.channels[0], 3)
        self.down_blocks = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        width = self.channels[0]
        for level, c in enumerate(self.channels):
            self.down_blocks.append(nn.ModuleList([res(width if i == 0 else c, c) for i in range(blocks[level])]))
            self.down_attn.append(
                nn.ModuleList([attn(c) for _ in range(blocks[level])]) if self.attention_levels[level] else None
            )
            width = c
            if level < levels - 1:
                self.downsamples.append(SpatialDownsample(c, c, factors[level]))
        self.mid_block = res(width, width)
        self.mid_attn = attn(width) if self.attention_levels[-1] else None
        self.up_blocks = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(levels)):
            c = self.channels[level]
            if level < levels - 1:
                self.upsamples.append(SpatialUpsample(width, c, factors[level]))
                width = c
            self.up_blocks.append(
                nn.ModuleList([res(width + c if i == 0 else c, c) for i in range(blocks[level])])
            )
            self.up_attn.append(
                nn.ModuleList([attn(c) for _ in range(blocks[level])]) if self.attention_levels[level] else None
            )
            width = c
        self.out_norm = FrameGroupNorm(num_groups, width)
        self.out_conv = SpatialConv(width, out_channels, 3)

    def reduction(self, level: int) -> Factor:
        """Total (D, H, W) reduction of level ``level`` relative to the input grid."""
        total = [1, 1, 1]
        for factor in self.down_factors[:level]:
            total = [a * b for a, b in zip(total, factor)]
        return tuple(total)  # type: ignore[return-value]

    def sites(self) -> list[UNetSite]:
        """All condition-injection sites, in the order the forward pass visits them."""
        levels = len(self.channels)
        out = [UNetSite(f"down{l}", l, self.channels[l], self.reduction(l)) for l in range(levels)]
        out.append(UNetSite("mid", levels - 1, self.channels[-1], self.reduction(levels - 1)))
        out += [UNetSite(f"up{l}", l, self.channels[l], self.reduction(l)) for l in reversed(range(levels))]
        return out

    def check_spatial_size(self, size: Sequence[int]) -> None:
        """Raise :class:`InputError` unless (D, H, W) ``size`` is divisible by every level's reduction."""
        total = self.reduction(len(self.channels) - 1)
        if any(s % f for s, f in zip(size, total)):
            raise InputError(
                f"the latent grid {tuple(size)} (D, H, W) is not divisible by the U-Net reduction {total}"
            )

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        hook: SiteHook | None = None,
    ) -> torch.Tensor:
        self.check_spatial_size(x.shape[3:])
        sites = {s.name: s for s in self.sites()}

        def inject(h: torch.Tensor, name: str) -> torch.Tensor:
            return h if hook is None else hook(h, sites[name])

        def run(blocks: nn.ModuleList, attns: nn.ModuleList | None, h: torch.Tensor) -> torch.Tensor:
            for i, block in enumerate(blocks):
                h = block(h, emb, frame_mask)
                if attns is not None:
                    h = attns[i](h, frame_mask)
            return h

        levels = len(self.channels)
        h = self.stem(channels_last_video(x))
        skips = []
        for level in range(levels):
            h = inject(run(self.down_blocks[level], self.down_attn[level], h), f"down{level}")
            skips.append(h)
            if level < levels - 1:
                h = self.downsamples[level](h)
        h = self.mid_block(h, emb, frame_mask)
        if self.mid_attn is not None:
            h = self.mid_attn(h, frame_mask)
        h = inject(h, "mid")
        for i, level in enumerate(reversed(range(levels))):
            if level < levels - 1:
                h = self.upsamples[i - 1](h)
            h = concat_channels(h, skips[level])
            h = inject(run(self.up_blocks[i], self.up_attn[i], h), f"up{level}")
        return self.out_conv(F.silu(self.out_norm(h)))


# --------------------------------------------------------------------------------------------
# What the two denoisers (TDDM and I2V) do around their U-Nets
# --------------------------------------------------------------------------------------------


def field_frame_mask(num_frames: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length) bool, True for the generated frames 1..N-1 (frame 0 is given: the zero field of
    TDDM, the prompt of I2V)."""
    mask = frame_mask_from_counts(num_frames, length)
    mask[:, 0] = False
    return mask


def check_denoiser_inputs(who: str, what: str, x: torch.Tensor, prompt: torch.Tensor, latent_channels: int,
                          max_frames: int, unet: "SpatioTemporalUNet") -> None:
    """Raise :class:`InputError` unless ``x`` (B, C, T, D, H, W) and ``prompt`` (B, C, D, H, W) fit
    the denoiser ``who`` (``what`` names ``x`` in the message)."""
    if x.ndim != 6 or prompt.ndim != 5:
        raise InputError(
            f"{who} expects {what} (B, C, T, D, H, W) and a prompt (B, C, D, H, W), got shapes "
            f"{tuple(x.shape)} and {tuple(prompt.shape)}"
        )
    b, c, t = x.shape[:3]
    if c != latent_channels or prompt.shape[:2] != (b, c) or prompt.shape[2:] != x.shape[3:]:
        raise InputError(
            f"{who} expects {latent_channels} latent channels and a prompt on the grid of the {what}, got "
            f"{what} {tuple(x.shape)} and prompt {tuple(prompt.shape)}"
        )
    if not 2 <= t <= max_frames:
        raise InputError(f"{who} takes 2 to {max_frames} frames, got {t}")
    unet.check_spatial_size(x.shape[3:])


@dataclass
class DenoiserFrames:
    """The frame bookkeeping of one denoiser call (see :func:`denoiser_frames`).

    Attributes:
        length: T of the input, padding included.
        run: frames actually computed, max(N): frames >= max(N) cannot influence the real ones.
        frame_mask: (B, run) True for the frames t < N.
        generated: (B, run) True for the generated frames 1..N-1.
        emb: (B, E) embedding of timestep, N and amplitude.
    """

    length: int
    run: int
    frame_mask: torch.Tensor
    generated: torch.Tensor
    emb: torch.Tensor

    def finish(self, prediction: torch.Tensor) -> torch.Tensor:
        """Zero ``prediction`` (B, C, run, ...) outside the generated frames; pad it back to ``length``."""
        return F.pad(mask_frames(prediction, self.generated), (0, 0, 0, 0, 0, 0, 0, self.length - self.run))


def denoiser_frames(embedding: "ConditionEmbedding", x: torch.Tensor, timesteps: torch.Tensor | int,
                    num_frames: torch.Tensor | int, amplitude: torch.Tensor | float | None) -> DenoiserFrames:
    """Frame counts, masks and the condition embedding of a denoiser input ``x`` (B, C, T, D, H, W)."""
    b, _, length = x.shape[:3]
    counts = frame_counts(num_frames, b, length, x.device)
    steps = torch.as_tensor(timesteps, device=x.device).expand(b)
    emb = embedding(steps, counts, amplitudes(amplitude, b, x.device))
    run = int(counts.max())
    return DenoiserFrames(length, run, frame_mask_from_counts(counts, run), field_frame_mask(counts, run), emb)
