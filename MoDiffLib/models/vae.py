"""The frame VAE: a 3D KL autoencoder that maps ONE frame to a small latent and back.

Mo-Diff denoises latents, not voxels (paper, eq. 1): every frame ``x`` (B, 1, D, H, W) with
D = slices (k), H = rows (j), W = columns (i) is encoded to a Gaussian posterior with mean and
log-variance of shape (B, C_lat, d, h, w); the pipeline decodes the generated latents frame by
frame. Scaling latents to unit variance (``z_scaled = z * latent_scale``) happens OUTSIDE this
module, in the pipeline, with the factor stored in the model configuration
(:func:`compute_latent_scale` measures it).

Why not MONAI's ``AutoencoderKL``: in MONAI 1.6 every level of that network halves every axis
(its downsampling is a stride-2 convolution and its upsampling a factor-2 interpolation, fixed in
code), so it cannot downsample in-plane only. Thick-slice cardiac MR (about 10-16 slices of
8-10 mm) needs in-plane-only levels, and a CPU budget of one minute per cine needs thin
full-resolution layers and no attention at 32^3 latent tokens. This module is therefore a lean
KL-VAE in plain PyTorch with the same overall layout (residual blocks, strided-convolution
downsampling, nearest-neighbour + convolution upsampling, a convolution to mean/log-variance) and
one factor per axis per level.

Sizes: every spatial size must be divisible by the total factor per axis (the product of the
level factors); other sizes raise :class:`~MoDiffLib.errors.InputError` instead of being padded
silently. The preprocessing resamples volumes to the model grid, which satisfies this.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

if TYPE_CHECKING:  # the config module holds no torch code; imported for type names only
    from .config import VAEConfig

#: Log-variance is clamped to this range before it is exponentiated (numerical safety).
LOGVAR_RANGE = (-30.0, 20.0)

Factors = tuple[tuple[int, int, int], ...]


def _as_factors(down_factors: Sequence[Sequence[int]]) -> Factors:
    factors = tuple(tuple(int(f) for f in level) for level in down_factors)
    for level in factors:
        if len(level) != 3 or min(level) < 1 or max(level) > 8:
            raise InputError(
                f"VAE down factors must be three integers in 1..8 per level (D, H, W), got {level}"
            )
    return factors


class ResBlock(nn.Module):
    """Two GroupNorm-SiLU-Conv3d(3x3x3) steps plus a skip (a 1x1x1 conv when widths differ).

    Shapes: (B, C_in, D, H, W) -> (B, C_out, D, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, norm_num_groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Strided convolution that divides each axis by its own factor.

    An axis with factor 1 gets a 3-wide kernel and stride 1 (size kept); an axis with factor
    ``f > 1`` gets kernel ``2f - 1``, stride ``f`` and padding ``f - 1``, which maps a size ``n``
    divisible by ``f`` to exactly ``n / f``.

    Shapes: (B, C_in, D, H, W) -> (B, C_out, D / f_D, H / f_H, W / f_W).
    """

    def __init__(self, in_channels: int, out_channels: int, factor: tuple[int, int, int]) -> None:
        super().__init__()
        kernel = tuple(3 if f == 1 else 2 * f - 1 for f in factor)
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel, stride=factor, padding=tuple(k // 2 for k in kernel)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour enlargement by a factor per axis, then a 3x3x3 convolution.

    Shapes: (B, C_in, d, h, w) -> (B, C_out, d * f_D, h * f_H, w * f_W).
    """

    def __init__(self, in_channels: int, out_channels: int, factor: tuple[int, int, int]) -> None:
        super().__init__()
        self.factor = tuple(int(f) for f in factor)
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor != (1, 1, 1):
            x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return self.conv(x)


class KLAutoencoder(nn.Module):
    """3D KL autoencoder for one frame, with a downsampling factor per axis per level.

    Level ``l`` works at width ``channels[l]``; between level ``l`` and ``l + 1`` each axis is
    divided by ``down_factors[l]``. Encoder: conv_in, then per level ``num_res_blocks[l]``
    residual blocks and a downsampling, ``num_res_blocks[-1]`` blocks at the bottom, and
    GroupNorm-SiLU-conv to ``2 * latent_channels`` (mean, log-variance). The decoder mirrors it
    with upsamplings; its full-resolution part is conv-only when ``num_res_blocks[0] == 0``,
    which keeps decoding fast on a CPU.

    Args:
        in_channels: image channels per frame (1 for CT/MR intensities).
        latent_channels: channels of the latent ``C_lat``.
        channels: widths per level, full resolution first; ``len(down_factors) + 1`` values.
        down_factors: per level, the (D, H, W) factor by which that level downsamples,
            e.g. ``((2, 2, 2), (1, 2, 2))`` (lung CT) or ``((1, 2, 2), (1, 2, 2))`` (cardiac MR).
        num_res_blocks: residual blocks per level (one int for all levels, or one per level).
        norm_num_groups: GroupNorm groups; must divide every width.

    Shapes:
        ``encode``: (B, in_channels, D, H, W) -> mean, logvar (B, C_lat, D/F_D, H/F_H, W/F_W),
        where ``F`` is :attr:`total_factor`; ``decode`` is the inverse map of shapes.
    """

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 8,
        channels: Sequence[int] = (16, 32, 64),
        down_factors: Sequence[Sequence[int]] = ((2, 2, 2), (1, 2, 2)),
        num_res_blocks: int | Sequence[int] = (0, 1, 1),
        norm_num_groups: int = 8,
    ) -> None:
        super().__init__()
        factors = _as_factors(down_factors)
        widths = tuple(int(c) for c in channels)
        levels = len(factors) + 1
        blocks = (
            (int(num_res_blocks),) * levels
            if isinstance(num_res_blocks, int)
            else tuple(int(n) for n in num_res_blocks)
        )
        if len(widths) != levels:
            raise InputError(
                f"VAE needs one width per level ({levels} for {len(factors)} down factors), got {widths}"
            )
        if len(blocks) != levels or min(blocks) < 0:
            raise InputError(f"VAE needs {levels} non-negative res-block counts, got {blocks}")
        if in_channels < 1 or latent_channels < 1 or norm_num_groups < 1:
            raise InputError("VAE in/latent channels and norm groups must be positive")
        if any(c < 1 or c % norm_num_groups for c in widths):
            raise InputError(f"every VAE width {widths} must be a positive multiple of {norm_num_groups} groups")

        self.in_channels = int(in_channels)
        self.latent_channels = int(latent_channels)
        self.channels = widths
        self.down_factors = factors
        self.num_res_blocks = blocks
        self.total_factor: tuple[int, int, int] = tuple(
            math.prod(level[a] for level in factors) for a in range(3)
        )  # type: ignore[assignment]

        g = norm_num_groups
        # -- encoder ------------------------------------------------------------------------
        self.enc_in = nn.Conv3d(in_channels, widths[0], 3, padding=1)
        self.enc_levels = nn.ModuleList()
        for level, factor in enumerate(factors):
            stage = nn.Sequential(*[ResBlock(widths[level], widths[level], g) for _ in range(blocks[level])])
            stage.append(Downsample(widths[level], widths[level + 1], factor))
            self.enc_levels.append(stage)
        self.enc_mid = nn.Sequential(*[ResBlock(widths[-1], widths[-1], g) for _ in range(blocks[-1])])
        self.enc_norm = nn.GroupNorm(g, widths[-1], eps=1e-6)
        self.enc_out = nn.Conv3d(widths[-1], 2 * latent_channels, 3, padding=1)
        # -- decoder ------------------------------------------------------------------------
        self.dec_in = nn.Conv3d(latent_channels, widths[-1], 3, padding=1)
        self.dec_mid = nn.Sequential(*[ResBlock(widths[-1], widths[-1], g) for _ in range(blocks[-1])])
        self.dec_levels = nn.ModuleList()
        for level in reversed(range(len(factors))):
            stage = nn.Sequential(Upsample(widths[level + 1], widths[level], factors[level]))
            for _ in range(blocks[level]):
                stage.append(ResBlock(widths[level], widths[level], g))
            self.dec_levels.append(stage)
        self.dec_norm = nn.GroupNorm(g, widths[0], eps=1e-6)
        self.dec_out = nn.Conv3d(widths[0], in_channels, 3, padding=1)

    @classmethod
    def from_config(cls, config: "VAEConfig") -> "KLAutoencoder":
        """Build the network that a :class:`~MoDiffLib.models.config.VAEConfig` describes."""
        return cls(**config.kwargs())

    # -- shapes -------------------------------------------------------------------------------
    def latent_shape(self, shape_dhw: Sequence[int]) -> tuple[int, int, int]:
        """Latent (d, h, w) of a frame of size (D, H, W); InputError if not divisible."""
        shape = tuple(int(s) for s in shape_dhw)
        if len(shape) != 3 or any(s < 1 for s in shape):
            raise InputError(f"a frame needs three positive sizes (D, H, W), got {shape}")
        if any(s % f for s, f in zip(shape, self.total_factor)):
            raise InputError(
                f"frame size {shape[0]}x{shape[1]}x{shape[2]} (DxHxW) is not divisible by the VAE's "
                f"downsampling {self.total_factor[0]}x{self.total_factor[1]}x{self.total_factor[2]}; "
                "resample the volume to the model grid first"
            )
        return tuple(s // f for s, f in zip(shape, self.total_factor))  # type: ignore[return-value]

    def _check_frame(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise InputError(
                f"the VAE encodes frames of shape (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}"
            )
        self.latent_shape(x.shape[2:])

    # -- encode / sample / decode ----------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of frames ``x`` (B, 1, D, H, W): ``(mean, logvar)``, each (B, C_lat, d, h, w)."""
        self._check_frame(x)
        h = self.enc_in(x)
        for stage in self.enc_levels:
            h = stage(h)
        h = self.enc_out(F.silu(self.enc_norm(self.enc_mid(h))))
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    @staticmethod
    def sample(
        mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``z = mean + exp(logvar / 2) * noise`` (reparameterised; same shape as ``mean``)."""
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Frames (B, 1, D, H, W) from latents ``z`` (B, C_lat, d, h, w) (unscaled latents)."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise InputError(
                f"the VAE decodes latents of shape (B, {self.latent_channels}, d, h, w), got {tuple(z.shape)}"
            )
        h = self.dec_mid(self.dec_in(z))
        for stage in self.dec_levels:
            h = stage(h)
        return self.dec_out(F.silu(self.dec_norm(h)))

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct ``x`` (B, 1, D, H, W) through a posterior sample (or the mean).

        Returns:
            ``(reconstruction, mean, logvar)``: (B, 1, D, H, W) and twice (B, C_lat, d, h, w).
        """
        mean, logvar = self.encode(x)
        z = self.sample(mean, logvar, generator) if sample else mean
        return self.decode(z), mean, logvar

    # -- whole sequences ---------------------------------------------------------------------
    def encode_frames(
        self,
        frames: torch.Tensor | Sequence[torch.Tensor],
        chunk_size: int = 2,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Latents of a sequence of frames, ``chunk_size`` frames at a time (memory-bounded).

        Args:
            frames: (B, T, D, H, W), or a list of T tensors (B, D, H, W).
            chunk_size: frames passed through the encoder together.
            sample: draw from the posterior instead of taking its mean (the default).

        Returns:
            latents (B, C_lat, T, d, h, w): the layout of the denoisers, time after channels.
        """
        x = _stack_frames(frames)
        b, t = x.shape[:2]
        flat = x.reshape(b * t, 1, *x.shape[2:])  # frame-major: row b*t + s is batch b, frame s
        out = []
        for part in _chunks(flat, chunk_size):
            mean, logvar = self.encode(part)
            out.append(self.sample(mean, logvar, generator) if sample else mean)
        z = torch.cat(out)
        return z.reshape(b, t, *z.shape[1:]).transpose(1, 2)

    def decode_frames(self, latents: torch.Tensor, chunk_size: int = 2) -> torch.Tensor:
        """Frames (B, T, D, H, W) from latents (B, C_lat, T, d, h, w), ``chunk_size`` at a time."""
        if latents.ndim != 6:
            raise InputError(
                f"decode_frames expects latents (B, C_lat, T, d, h, w), got shape {tuple(latents.shape)}"
            )
        b, c, t = latents.shape[:3]
        flat = latents.transpose(1, 2).reshape(b * t, c, *latents.shape[3:])
        x = torch.cat([self.decode(part) for part in _chunks(flat, chunk_size)])
        return x.reshape(b, t, *x.shape[2:])


def _stack_frames(frames: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, T, D, H, W) from a tensor of that shape or from a list of (B, D, H, W) frames."""
    if isinstance(frames, torch.Tensor):
        x = frames
    else:
        if len(frames) == 0:
            raise InputError("no frames to encode")
        shapes = {tuple(f.shape) for f in frames}
        if len(shapes) != 1:
            raise InputError(f"all frames must have one shape, got {sorted(shapes)}")
        x = torch.stack(list(frames), dim=1)
    if x.ndim != 5:
        raise InputError(f"encode_frames expects frames (B, T, D, H, W), got shape {tuple(x.shape)}")
    return x


def _chunks(x: torch.Tensor, chunk_size: int) -> Iterable[torch.Tensor]:
    if chunk_size < 1:
        raise InputError(f"chunk size must be at least 1, got {chunk_size}")
    return torch.split(x, chunk_size)


# -- training losses ------------------------------------------------------------------------------
def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over (C, d, h, w), averaged over the batch.

    Shapes: mean, logvar (B, C_lat, d, h, w) -> scalar.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean()


def gradient_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean L1 difference of forward finite differences along D, H and W (an edge term).

    Shapes: x, y (B, C, D, H, W) -> scalar; axes of size 1 are skipped.
    """
    terms = [
        (torch.diff(x, dim=d) - torch.diff(y, dim=d)).abs().mean() for d in (2, 3, 4) if x.shape[d] > 1
    ]
    return torch.stack(terms).sum() if terms else x.new_zeros(())


def vae_loss(
    vae: KLAutoencoder,
    x: torch.Tensor,
    kl_weight: float = 1e-6,
    gradient_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training objective: L1 reconstruction + ``gradient_weight`` * gradient L1 + ``kl_weight`` * KL.

    The reconstruction goes through a posterior sample. The KL is summed over latent elements and
    averaged over the batch (see :func:`kl_divergence`), so ``kl_weight`` around 1e-6 keeps the
    latent near-deterministic, as latent diffusion models do.

    Args:
        x: frames (B, 1, D, H, W) in the normalised intensity range [-1, 1].

    Returns:
        ``(loss, logs)``: the scalar loss to back-propagate and floats ``recon_l1``,
        ``gradient_l1``, ``kl`` and ``loss`` for logging.
    """
    recon, mean, logvar = vae(x, sample=True, generator=generator)
    recon_l1 = (recon - x).abs().mean()
    kl = kl_divergence(mean, logvar)
    loss = recon_l1 + kl_weight * kl
    grad = gradient_l1(recon, x) if gradient_weight > 0 else recon_l1.new_zeros(())
    loss = loss + gradient_weight * grad
    logs = {
        "recon_l1": float(recon_l1.detach()),
        "gradient_l1": float(grad.detach()),
        "kl": float(kl.detach()),
        "loss": float(loss.detach()),
    }
    return loss, logs


@torch.no_grad()
def compute_latent_scale(
    vae: KLAutoencoder, frames: Iterable[torch.Tensor], chunk_size: int = 2
) -> float:
    """``1 / std`` of the posterior means of ``frames`` over all batches, channels and voxels.

    Multiplying latents by this factor gives them unit standard deviation, the scale the
    diffusion schedule assumes. The result belongs in ``ModelConfig.latent_scale``.

    Args:
        frames: an iterable of batches (B, 1, D, H, W) in the normalised intensity range.
    """
    count, total, total_sq = 0, 0.0, 0.0
    for batch in frames:
        for part in _chunks(batch, chunk_size):
            mean, _ = vae.encode(part)
            z = mean.double()
            count += z.numel()
            total += float(z.sum())
            total_sq += float(z.pow(2).sum())
    if count < 2:
        raise InputError("computing the latent scale needs at least one frame")
    mu = total / count
    var = max(total_sq / count - mu * mu, 0.0) * count / (count - 1)
    if not math.isfinite(var) or var <= 0.0:
        raise InputError("the latents of the given frames have zero variance; cannot compute a latent scale")
    return 1.0 / math.sqrt(var)
