"""TDDM over motion: temporal differential fields of the residual displacement, in a compact basis.

The paper's TDDM generates intensity differences ``x_i - x_(i-1)``. A motion model generates the
differences of a **displacement residual** on top of the population motion of the anatomy
(:class:`~MoDiffLib.motion.population.PopulationMotion`), on the coarse anatomy grid of
:mod:`MoDiffLib.motion.anatomy`::

    u_i = B0(phase_i) + a * B1(phase_i) + r_i,      r_i = sum_k c_ik phi_k,
    d_i = c_i - c_(i-1)  (d_0 = 0, padded to F frames, loss on frames 1..N-1)

``phi_k`` is an orthonormal basis of the training residuals (:class:`MotionBasis`, principal
components of r over training cases and phases: XCAT-style breathing is close to low-rank, so a
few dozen components hold nearly all of it), and the diffusion runs over the scaled coefficient
differences ``d_i`` (K channels, one per component). A zero residual (what the network outputs
before training: its last layer starts at zero and it predicts the clean sample) reproduces the
population motion exactly, so training can only add what it learned. A (2+1)D U-Net over the
whole grid would do the same job at ~100x the cost, which the CPU budget of training cannot pay.

Conditions:

* frame 0 (normalised intensities and the anatomy mask, two channels on the anatomy grid) through
  the Prompt Attention Layer: a small conv + ReLU + GroupNorm mapping of the prompt whose pooled
  features scale and shift the temporal features of every block (multiplication and addition,
  not concatenation, as in the paper);
* the frame count N and the diffusion timestep (embedding, added in every block);
* the motion strength (embedding with a learned null token; dropped at random in training);
* the phase of every frame, ``(sin, cos)(2 pi i / N)``, and an optional per-frame breathing trace
  (diaphragm descent in mm, scaled, plus a presence flag) as per-frame input channels.

Tensors use the samplers' video layout (B, C, T, 1, 1, 1), so the noise schedule, the masked loss
and the DDIM chain of :mod:`.diffusion` serve this model unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..progress import CancelFlag, ProgressCallback
from .blocks import ConditionEmbedding, field_frame_mask, frame_counts, frame_mask_from_counts, group_count, mask_frames
from .diffusion import NoiseSchedule, _reverse_process, _training_draws, masked_mse

#: Per-frame condition channels: phase sin, phase cos, trace value, trace present.
FRAME_CONDITION_CHANNELS = 4
#: Trace values (mm of descent) are divided by this before the network sees them.
TRACE_SCALE_MM = 20.0


class MotionBasis(nn.Module):
    """Orthonormal residual basis ``phi`` (K, 3, k, j, i) and the std of each coefficient.

    ``encode`` projects fields (..., 3, k, j, i) to coefficients (..., K) divided by their std (unit
    variance, what the diffusion sees); ``decode`` is the inverse map back to fields.
    """

    def __init__(self, components: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("components", components.float().contiguous())
        self.register_buffer("std", std.float().clamp(min=1e-6).contiguous())

    @classmethod
    def empty(cls, num_components: int, grid_shape: tuple[int, int, int]) -> "MotionBasis":
        return cls(torch.zeros(num_components, 3, *grid_shape), torch.ones(num_components))

    @property
    def num_components(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, residuals: np.ndarray, num_components: int) -> "MotionBasis":
        """Principal components of residual samples (S, 3, k, j, i) (not centred: zero means "no residual")."""
        x = torch.from_numpy(np.asarray(residuals, dtype=np.float32)).reshape(len(residuals), -1)
        k = min(num_components, x.shape[0], x.shape[1])
        _, s, v = torch.linalg.svd(x, full_matrices=False)
        comps = v[:k]
        std = s[:k] / math.sqrt(x.shape[0])
        return cls(comps.reshape(k, *residuals.shape[1:]), std)

    def encode(self, fields: torch.Tensor) -> torch.Tensor:
        flat = fields.reshape(*fields.shape[:-4], -1)
        return flat @ self.components.reshape(self.num_components, -1).T / self.std

    def decode(self, coefficients: torch.Tensor) -> torch.Tensor:
        flat = (coefficients * self.std) @ self.components.reshape(self.num_components, -1)
        return flat.reshape(*coefficients.shape[:-1], *self.components.shape[1:])


def frame_conditions(num_frames: torch.Tensor, length: int, trace: torch.Tensor | None) -> torch.Tensor:
    """(B, 4, length) per-frame conditions: phase (sin, cos) of frame i of N, trace and its flag.

    ``trace``: (B, length) descent in mm per frame (a row with any NaN = absent for that sample), or None.
    """
    b = num_frames.shape[0]
    index = torch.arange(length, device=num_frames.device, dtype=torch.float32)[None]
    angle = 2.0 * math.pi * index / num_frames.float()[:, None]
    out = torch.zeros(b, FRAME_CONDITION_CHANNELS, length, device=num_frames.device)
    out[:, 0], out[:, 1] = torch.sin(angle), torch.cos(angle)
    if trace is not None:
        trace = torch.as_tensor(trace, dtype=torch.float32, device=num_frames.device)
        if trace.shape != (b, length):
            raise InputError(f"the breathing trace must have one value per frame ({length}), got shape {tuple(trace.shape)}")
        present = torch.isfinite(trace).all(dim=1, keepdim=True).float().expand(b, length)
        out[:, 2] = torch.nan_to_num(trace, nan=0.0) * present / TRACE_SCALE_MM
        out[:, 3] = present
    return out


class PromptEncoder(nn.Module):
    """The PAL's mapping of frame 0: conv + ReLU + GroupNorm, three times with stride 2, pooled to a vector."""

    def __init__(self, prompt_channels: int, width: int, num_groups: int = 8) -> None:
        super().__init__()
        layers, cin = [], prompt_channels
        for cout in (16, 32, width):
            layers += [nn.Conv3d(cin, cout, 3, stride=2, padding=1), nn.ReLU(), nn.GroupNorm(group_count(cout, num_groups), cout)]
            cin = cout
        self.net = nn.Sequential(*layers)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        return self.net(prompt).mean(dim=(2, 3, 4))


class TemporalBlock(nn.Module):
    """Residual block over frames: GroupNorm-SiLU-Conv1d twice, the condition embedding added, the
    prompt features as scale-and-shift (the PAL modulation), then masked temporal self-attention."""

    def __init__(self, width: int, emb_channels: int, num_heads: int, num_groups: int) -> None:
        super().__init__()
        g = group_count(width, num_groups)
        self.norm1, self.conv1 = nn.GroupNorm(g, width), nn.Conv1d(width, width, 3, padding=1)
        self.emb = nn.Linear(emb_channels, width)
        self.pal = nn.Linear(width, 2 * width)
        self.norm2, self.conv2 = nn.GroupNorm(g, width), nn.Conv1d(width, width, 3, padding=1)
        self.attn_norm = nn.GroupNorm(g, width)
        self.attn = nn.MultiheadAttention(width, num_heads, batch_first=True)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, prompt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None, :].to(h.dtype)
        x = self.conv1(F.silu(self.norm1(h)) * m) + self.emb(F.silu(emb))[:, :, None]
        scale, shift = self.pal(prompt).chunk(2, dim=1)
        x = x * (1 + scale[:, :, None]) + shift[:, :, None]
        h = h + self.conv2(F.silu(self.norm2(x)) * m)
        q = self.attn_norm(h).transpose(1, 2)
        a, _ = self.attn(q, q, q, key_padding_mask=~mask, need_weights=False)
        return (h + a.transpose(1, 2)) * m


class MotionTDDM(nn.Module):
    """Denoiser of scaled residual coefficient differences (see the module docstring).

    Args:
        num_components: K, the basis size (channels of the diffusion).
        grid_shape: the anatomy grid (k, j, i) of the basis and the prompt.
        max_frames: padding length F.
        prompt_channels: channels of the frame-0 prompt.
        width, depth, emb_channels, num_heads, num_groups: the temporal network.
        use_amplitude, amplitude_scale: the motion-strength condition.

    Forward:
        x: (B, K, T, 1, 1, 1) noisy coefficient differences (frame 0 and frames >= N ignored).
        timesteps: (B,) or one int.
        prompt: (B, prompt_channels, k, j, i).
        num_frames: (B,) or one int.
        amplitude: (B,) normalised strength (NaN = absent), one float, or None.
        trace: (B, T) per-frame descent in mm (NaN = absent), or None.

    Returns:
        (B, K, T, 1, 1, 1) prediction, zero at frame 0 and at frames >= N.
    """

    def __init__(self, num_components: int = 48, grid_shape: tuple[int, int, int] = (16, 20, 24), max_frames: int = 30,
                 prompt_channels: int = 2, width: int = 128, depth: int = 4, emb_channels: int = 128,
                 num_heads: int = 4, num_groups: int = 8, use_amplitude: bool = True,
                 amplitude_scale: float = 100.0) -> None:
        super().__init__()
        if max_frames < 2:
            raise ValueError("max_frames must be at least 2")
        self.latent_channels = int(num_components)  # the samplers' name for the generated channels
        self.grid_shape = tuple(int(s) for s in grid_shape)
        self.prompt_channels = int(prompt_channels)
        self.max_frames = int(max_frames)
        self.basis = MotionBasis.empty(num_components, self.grid_shape)
        self.embedding = ConditionEmbedding(emb_channels, use_amplitude, amplitude_scale)
        self.prompt_encoder = PromptEncoder(prompt_channels, width, num_groups)
        self.stem = nn.Conv1d(num_components + FRAME_CONDITION_CHANNELS, width, 3, padding=1)
        self.blocks = nn.ModuleList(TemporalBlock(width, emb_channels, num_heads, num_groups) for _ in range(depth))
        self.out_norm = nn.GroupNorm(group_count(width, num_groups), width)
        self.out = nn.Conv1d(width, num_components, 3, padding=1)
        # a zero residual before training: the model starts as the population motion
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def check_inputs(self, x: torch.Tensor, prompt: torch.Tensor) -> None:
        if x.ndim != 6 or x.shape[1] != self.latent_channels or x.shape[3:] != (1, 1, 1):
            raise InputError(f"MotionTDDM expects coefficients (B, {self.latent_channels}, T, 1, 1, 1), got {tuple(x.shape)}")
        if prompt.shape[:2] != (x.shape[0], self.prompt_channels) or tuple(prompt.shape[2:]) != self.grid_shape:
            raise InputError(f"MotionTDDM expects a prompt (B, {self.prompt_channels}, {', '.join(map(str, self.grid_shape))}), "
                             f"got {tuple(prompt.shape)}")
        if not 2 <= x.shape[2] <= self.max_frames:
            raise InputError(f"MotionTDDM takes 2 to {self.max_frames} frames, got {x.shape[2]}")

    def forward(self, x, timesteps, prompt, num_frames, amplitude=None, trace=None) -> torch.Tensor:
        self.check_inputs(x, prompt)
        from .blocks import amplitudes

        b, _, length = x.shape[:3]
        counts = frame_counts(num_frames, b, length, x.device)
        steps = torch.as_tensor(timesteps, device=x.device).expand(b)
        emb = self.embedding(steps, counts, amplitudes(amplitude, b, x.device))
        generated = field_frame_mask(counts, length)
        valid = frame_mask_from_counts(counts, length)
        h = torch.cat([x[:, :, :, 0, 0, 0] * generated[:, None].to(x.dtype),
                       frame_conditions(counts, length, trace).to(x.dtype)], dim=1)
        h = self.stem(h) * valid[:, None].to(x.dtype)
        p = self.prompt_encoder(prompt.to(x.dtype))
        for block in self.blocks:
            h = block(h, emb, p, valid)
        out = self.out(F.silu(self.out_norm(h)))
        return mask_frames(out[..., None, None, None], generated)


def motion_loss(model: MotionTDDM, x0: torch.Tensor, prompt: torch.Tensor, num_frames, amplitude=None,
                trace: torch.Tensor | None = None, amplitude_dropout: float = 0.2, trace_dropout: float = 0.5,
                generator: torch.Generator | None = None, schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Masked denoising loss for clean scaled coefficient differences ``x0`` (B, K, F, 1, 1, 1).

    The strength is replaced by its null token with probability ``amplitude_dropout`` and the trace
    by "absent" with probability ``trace_dropout`` (classifier-free conditioning on both).
    """
    schedule = schedule or NoiseSchedule()
    b = x0.shape[0]
    counts = frame_counts(num_frames, b, model.max_frames, x0.device)
    t, eps, amps = _training_draws(schedule, x0, amplitude, amplitude_dropout, generator, None, None)
    if trace is not None and trace_dropout > 0:
        drop = torch.rand(b, generator=generator) < trace_dropout
        trace = torch.where(drop[:, None].to(trace.device), torch.full_like(trace, float("nan")), trace)
    x_t = schedule.q_sample(x0, t, eps)
    prediction = model(x_t, t, prompt, counts, amps, trace)
    target = schedule.training_target(x0, eps, t)
    return masked_mse(prediction, target, field_frame_mask(counts, x0.shape[2]))


def sample_motion(model: MotionTDDM, prompt: torch.Tensor, num_frames: int, steps: int, seed: int = 0,
                  amplitude: float | None = None, trace: torch.Tensor | None = None, sampler: str = "ddim",
                  schedule: NoiseSchedule | None = None, progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None) -> torch.Tensor:
    """Residual coefficient trajectories (B, N, K) in field units (not scaled) for prompts (B, C, k, j, i).

    Each row of the batch is one sample; the coefficients of frame i are the cumulative sum of the
    generated differences (``c_0 = 0``). ``progress`` gets one ``tddm`` event per sampling step;
    ``cancel`` is checked before each (as in :func:`~.diffusion.sample_fields`).
    """
    schedule = schedule or NoiseSchedule()
    b = prompt.shape[0]
    length = model.max_frames
    counts = frame_counts(num_frames, b, length, prompt.device)
    free = field_frame_mask(counts, length)
    shape = (b, model.latent_channels, length, 1, 1, 1)
    known = torch.zeros(shape, device=prompt.device, dtype=prompt.dtype)
    amps = None if amplitude is None else torch.full((b,), float(amplitude), device=prompt.device)

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        return model(x, torch.full((b,), t, device=x.device), prompt, counts, amps, trace)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            diffs = _reverse_process(denoise, shape, free, known, schedule, steps, sampler, seed, prompt.device,
                                     progress, cancel, "tddm")
    finally:
        model.train(was_training)
    n = int(num_frames)
    return torch.cumsum(diffs[:, :, :n, 0, 0, 0], dim=2).transpose(1, 2)  # scaled coefficients (B, N, K)
