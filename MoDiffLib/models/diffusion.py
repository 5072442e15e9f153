"""Noise schedule, training losses and samplers of the two Mo-Diff denoisers (paper eq. 1-2).

The schedule is kept apart from the networks (MONAI style): :class:`NoiseSchedule` holds the
betas and implements the forward process ``q_sample`` (eq. 1), the training target and one
reverse step. The losses (:func:`tddm_loss`, :func:`i2v_loss`) are the MSE of eq. 2 (epsilon
prediction, as in the paper; ``v_prediction`` and ``sample`` targets follow the schedule's
``prediction_type``) restricted to the frames that are generated, 1..N-1: padded frames (>= N)
and frame 0 (the zero field of TDDM, the given prompt frame of I2V) never contribute. The samplers
(:func:`sample_fields`, :func:`sample_latents`) run DDIM (deterministic, ``eta = 0``) or DDPM
(ancestral, ``eta = 1``) on an evenly strided subset of the training timesteps, seeded by a
``torch.Generator``, with a progress callback and a cancel flag checked every step.

Why not ``monai.networks.schedulers``: in MONAI 1.6 ``DDPMScheduler.step`` always steps from t to
t - 1 whatever ``set_timesteps`` chose, so a 20-step DDPM chain is wrong, and
``DDIMScheduler.set_timesteps`` spaces its timesteps by ``(T - 1) / (steps - 1)`` while ``step``
moves to ``t - T // steps``, so each step lands on a noise level other than the one the next
model call is told (999 -> 949 while the next call uses 946 at 20 steps). Both also clip the
predicted sample to [-1, 1] by default, which is wrong for unit-variance latents. The math is a
few lines; here every step moves exactly between consecutive timesteps of one list.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from ..errors import InputError
from ..progress import CancelFlag, ProgressCallback, as_cancel_flag, check_cancel, report_step
from .blocks import amplitudes, field_frame_mask, frame_counts, mask_frames
from .config import DEFAULT_SAMPLING_STEPS
from .tddm import latents_from_fields

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SAMPLERS = ("ddim", "ddpm")


class NoiseSchedule:
    """Betas of the forward process and the arithmetic of one reverse step.

    Args:
        num_train_timesteps: T, the number of training timesteps (0..T-1).
        beta_schedule: ``linear`` (betas evenly spaced), ``scaled_linear`` (square roots evenly
            spaced, as in latent diffusion) or ``cosine`` (Nichol & Dhariwal; ignores
            ``beta_start``/``beta_end``).
        beta_start, beta_end: first and last beta of the linear schedules.
        prediction_type: what the networks predict: ``epsilon`` (the noise, the paper's eq. 2),
            ``v_prediction`` or ``sample`` (the clean x0).

    The keyword names match ``ModelConfig.diffusion``, so ``NoiseSchedule(**asdict(config.diffusion))``
    or :meth:`from_config` builds the schedule a model was trained with.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        prediction_type: str = "epsilon",
    ) -> None:
        if num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be at least 2")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if beta_schedule != "cosine" and not 0.0 < beta_start < beta_end < 1.0:
            raise ValueError(f"needs 0 < beta_start < beta_end < 1, got {beta_start} and {beta_end}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.prediction_type = prediction_type
        n = self.num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
        else:
            s = 0.008
            steps = torch.arange(n + 1, dtype=torch.float64) / n
            abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)

    @classmethod
    def from_config(cls, config: Any) -> "NoiseSchedule":
        """Build from an object with the constructor's fields (e.g. ``ModelConfig.diffusion``)."""
        return cls(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            prediction_type=getattr(config, "prediction_type", "epsilon"),
        )

    def _abar(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at (B,) timesteps, shaped to broadcast against ``like`` (B, ...)."""
        abar = self.alphas_cumprod[timesteps.long().cpu()].to(device=like.device, dtype=like.dtype)
        return abar.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Eq. 1: ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``. Shapes: (B, ...), (B,), (B, ...) -> (B, ...)."""
        abar = self._abar(timesteps, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the network must output for ``q_sample(x0, t, noise)`` under ``prediction_type``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        abar = self._abar(timesteps, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def split_prediction(
        self, model_output: torch.Tensor, x_t: torch.Tensor, timestep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted x0, predicted noise) from a network output at the integer ``timestep``."""
        abar = float(self.alphas_cumprod[timestep])
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        if self.prediction_type == "epsilon":
            return (x_t - s * model_output) / a, model_output
        if self.prediction_type == "sample":
            return model_output, (x_t - a * model_output) / s
        return a * x_t - s * model_output, s * x_t + a * model_output

    def sampling_timesteps(self, steps: int) -> list[int]:
        """``steps`` timesteps evenly spaced from T-1 down to 0 (descending, distinct)."""
        if not 1 <= steps <= self.num_train_timesteps:
            raise InputError(f"the number of sampling steps must be between 1 and {self.num_train_timesteps}, got {steps}")
        if steps == 1:
            return [self.num_train_timesteps - 1]
        top = self.num_train_timesteps - 1
        return [round(top * (1 - i / (steps - 1))) for i in range(steps)]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        prev_timestep: int,
        x_t: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One reverse step from ``timestep`` to ``prev_timestep`` (-1 = the clean end).

        Generalised DDIM (Song et al. 2021, eq. 12): ``eta = 0`` is deterministic DDIM, ``eta = 1``
        the DDPM ancestral step on the strided chain (posterior variance). Shapes: (B, ...) -> (B, ...).
        """
        abar_t = float(self.alphas_cumprod[timestep])
        abar_prev = float(self.alphas_cumprod[prev_timestep]) if prev_timestep >= 0 else 1.0
        x0, eps = self.split_prediction(model_output, x_t, timestep)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
        x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            noise = torch.randn(x_t.shape, generator=generator, device=_generator_device(generator, x_t), dtype=x_t.dtype)
            x_prev = x_prev + sigma * noise.to(x_t.device)
        return x_prev


# --------------------------------------------------------------------------------------------
# Training losses
# --------------------------------------------------------------------------------------------


def _generator_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the elements of the frames where ``frame_mask`` (B, T) is True.

    Shapes: prediction and target (B, C, T, D, H, W) -> scalar.
    """
    per_frame = (prediction - target).pow(2).sum(dim=(1, 3, 4, 5))  # (B, T)
    weight = frame_mask.to(per_frame.dtype)
    per_element = prediction.shape[1] * prediction[0, 0, 0].numel()
    return (per_frame * weight).sum() / (weight.sum().clamp(min=1) * per_element)


def _training_draws(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    amplitude: Any,
    amplitude_dropout: float,
    generator: torch.Generator | None,
    noise: torch.Tensor | None,
    timesteps: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Timesteps (B,), noise like x0 and amplitudes with random drops (NaN) for one batch."""
    b = x0.shape[0]
    where = _generator_device(generator, x0)
    if timesteps is None:
        timesteps = torch.randint(0, schedule.num_train_timesteps, (b,), generator=generator, device=where)
    timesteps = torch.as_tensor(timesteps).to(x0.device).long().expand(b)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=where, dtype=x0.dtype)
    noise = noise.to(x0.device)
    amps = amplitudes(amplitude, b, x0.device)
    if not 0.0 <= amplitude_dropout <= 1.0:
        raise ValueError(f"amplitude_dropout must be in [0, 1], got {amplitude_dropout}")
    if amps is not None and amplitude_dropout > 0:
        drop = torch.rand(b, generator=generator, device=where).to(x0.device) < amplitude_dropout
        amps = torch.where(drop, torch.full_like(amps, float("nan")), amps)
    return timesteps, noise, amps


def tddm_loss(
    model: torch.nn.Module,
    fields: torch.Tensor,
    prompt: torch.Tensor,
    num_frames: int | Sequence[int] | torch.Tensor,
    amplitude: float | Sequence[float] | torch.Tensor | None = None,
    amplitude_dropout: float = 0.2,
    generator: torch.Generator | None = None,
    *,
    schedule: NoiseSchedule | None = None,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked denoising loss of TDDM for one batch (paper eq. 2 on the fields).

    Args:
        model: a :class:`~.tddm.TDDM`.
        fields: (B, C, F, D, H, W) clean scaled fields; frame 0 and frames >= N are ignored.
        prompt: (B, C, D, H, W) prompt latents.
        num_frames: N per sample (or one for all), in [2, F].
        amplitude: (B,) amplitudes (NaN = absent), one float, or None.
        amplitude_dropout: probability of replacing a given amplitude by the null token.
        generator: random source of timesteps, noise and drops.
        schedule: the noise schedule (default :class:`NoiseSchedule`).
        noise, timesteps: fixed draws instead of random ones (tests, reproducibility).

    Returns:
        Scalar mean squared error over the elements of frames 1..N-1.
    """
    schedule = schedule or NoiseSchedule()
    counts = frame_counts(num_frames, fields.shape[0], model.max_frames, fields.device)
    t, eps, amps = _training_draws(schedule, fields, amplitude, amplitude_dropout, generator, noise, timesteps)
    x_t = schedule.q_sample(fields, t, eps)
    prediction = model(x_t, t, prompt, counts, amps)
    target = schedule.training_target(fields, eps, t)
    return masked_mse(prediction, target, field_frame_mask(counts, fields.shape[2]))


def field_implied_latents(
    model: torch.nn.Module, prompt: torch.Tensor, fields: torch.Tensor, num_frames: torch.Tensor,
    field_scale: float | None,
) -> torch.Tensor:
    """What the I2V denoiser diffuses against: ``z_0 + d_1 + ... + d_i`` for a residual model, else 0.

    Shapes: prompt (B, C, D, H, W), scaled fields (B, C, F, D, H, W), num_frames (B,) -> like fields.
    """
    if not getattr(model, "residual_to_fields", False):
        return torch.zeros_like(fields)
    if field_scale is None or not field_scale > 0:
        raise InputError("this I2V denoiser diffuses the residual against the fields; pass the model's field_scale")
    return latents_from_fields(prompt, fields / field_scale, num_frames).to(fields.dtype)


def i2v_loss(
    model: torch.nn.Module,
    latents: torch.Tensor,
    prompt: torch.Tensor,
    fields: torch.Tensor,
    num_frames: int | Sequence[int] | torch.Tensor,
    amplitude: float | Sequence[float] | torch.Tensor | None = None,
    amplitude_dropout: float = 0.2,
    generator: torch.Generator | None = None,
    *,
    schedule: NoiseSchedule | None = None,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    field_scale: float | None = None,
) -> torch.Tensor:
    """Masked denoising loss of the I2V denoiser for one batch (paper eq. 2).

    Args:
        model: an :class:`~.i2v.I2VDenoiser`.
        latents: (B, C, F, D, H, W) clean scaled latents of frames 0..N-1 (padding ignored).
        prompt: (B, C, D, H, W) latent of frame 0 (the denoiser puts it in slot 0).
        fields: (B, C, F, D, H, W) scaled differential fields (ground truth or TDDM samples).
        num_frames, amplitude, amplitude_dropout, generator, schedule, noise, timesteps:
            as in :func:`tddm_loss`.
        field_scale: the factor the fields were scaled by; needed when the denoiser diffuses the
            residual against the field-implied latents (``model.residual_to_fields``).

    Returns:
        Scalar mean squared error over the elements of frames 1..N-1.
    """
    schedule = schedule or NoiseSchedule()
    counts = frame_counts(num_frames, latents.shape[0], model.max_frames, latents.device)
    base = field_implied_latents(model, prompt, fields, counts, field_scale)
    x0 = latents - base
    t, eps, amps = _training_draws(schedule, x0, amplitude, amplitude_dropout, generator, noise, timesteps)
    x_t = schedule.q_sample(x0, t, eps)
    prediction = model(x_t + base, t, prompt, fields, counts, amps)
    target = schedule.training_target(x0, eps, t)
    return masked_mse(prediction, target, field_frame_mask(counts, latents.shape[2]))


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


def _reverse_process(
    denoise: Callable[[torch.Tensor, int], torch.Tensor],
    shape: Sequence[int],
    free: torch.Tensor,
    known: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    sampler: str,
    seed: int,
    device: torch.device,
    progress: ProgressCallback | None,
    cancel: CancelFlag | None,
    stage: str,
) -> torch.Tensor:
    """Run the reverse chain on frames where ``free`` (B, F) is True; others are held at ``known``;
    each step is reported to ``progress`` as ``stage``."""
    if sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    timesteps = schedule.sampling_timesteps(int(steps))
    eta = 0.0 if sampler == "ddim" else 1.0
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    x = torch.randn(tuple(shape), generator=generator, device=device)
    x = mask_frames(x, free) + known
    total = len(timesteps)
    cancel = as_cancel_flag(cancel)
    for i, t in enumerate(timesteps):
        check_cancel(cancel, "sampling")
        prev = timesteps[i + 1] if i + 1 < total else -1
        x = schedule.step(denoise(x, t), t, prev, x, eta=eta, generator=generator)
        x = mask_frames(x, free) + known
        report_step(progress, stage, i + 1, total)
    return x


class _EvalMode:
    """Context manager: the model in eval mode and no autograd, restored afterwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.was_training = model.training
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def _chain(model: torch.nn.Module, prompt: torch.Tensor, num_frames, amplitude, schedule: NoiseSchedule | None):
    """What both samplers set up for ``model``: schedule, (B, C, F, D, H, W) shape, N, amplitudes and
    the (B, F) mask of the frames the chain generates (1..N-1)."""
    channels = model.latent_channels
    if prompt.ndim != 5 or prompt.shape[1] != channels:
        raise InputError(f"the prompt latent must be (B, {channels}, D, H, W), got {tuple(prompt.shape)}")
    b, c = prompt.shape[:2]
    length = model.max_frames
    counts = frame_counts(num_frames, b, length, prompt.device)
    free = field_frame_mask(counts, length)
    shape = (b, c, length, *prompt.shape[2:])
    return schedule or NoiseSchedule(), shape, counts, amplitudes(amplitude, b, prompt.device), free


def sample_fields(
    tddm: torch.nn.Module,
    prompt: torch.Tensor,
    num_frames: int | Sequence[int] | torch.Tensor,
    steps: int = DEFAULT_SAMPLING_STEPS,
    sampler: str = "ddim",
    seed: int = 0,
    amplitude: float | Sequence[float] | torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """Generate temporal differential fields with TDDM.

    Args:
        tddm: a :class:`~.tddm.TDDM`.
        prompt: (B, C, D, H, W) scaled latent of frame 0.
        num_frames: N in [2, F], one for all or one per sample.
        steps: number of reverse steps.
        sampler: ``ddim`` (deterministic given the seed) or ``ddpm`` (ancestral).
        seed: seed of the ``torch.Generator`` (results are identical for a seed and device).
        amplitude: motion amplitude(s), or None for the learned null token.
        progress: called with a :class:`~MoDiffLib.progress.ProgressEvent` of stage ``tddm``
            after each step.
        cancel: a :class:`~MoDiffLib.progress.CancelFlag` (or a callable), checked before each
            step; when set, :class:`~MoDiffLib.errors.Cancelled` is raised.
        schedule: the training noise schedule (default :class:`NoiseSchedule`).

    Returns:
        (B, C, F, D, H, W) scaled fields; frame 0 and frames >= N are zero.
    """
    schedule, shape, counts, amps, free = _chain(tddm, prompt, num_frames, amplitude, schedule)
    known = torch.zeros(shape, device=prompt.device, dtype=prompt.dtype)

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        return tddm(x, torch.full((shape[0],), t, device=x.device), prompt, counts, amps)

    with _EvalMode(tddm):
        return _reverse_process(
            denoise, shape, free, known, schedule, steps, sampler, seed, prompt.device, progress, cancel, "tddm"
        )


def sample_latents(
    i2v: torch.nn.Module,
    prompt: torch.Tensor,
    fields: torch.Tensor,
    num_frames: int | Sequence[int] | torch.Tensor,
    steps: int = DEFAULT_SAMPLING_STEPS,
    sampler: str = "ddim",
    seed: int = 0,
    amplitude: float | Sequence[float] | torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    schedule: NoiseSchedule | None = None,
    field_scale: float | None = None,
) -> torch.Tensor:
    """Generate the latents of frames 1..N-1 with the I2V denoiser, guided by ``fields``.

    Args:
        i2v: an :class:`~.i2v.I2VDenoiser`.
        prompt: (B, C, D, H, W) scaled latent of frame 0.
        fields: (B, C, F, D, H, W) scaled fields, e.g. from :func:`sample_fields`.
        num_frames, steps, sampler, seed, amplitude, cancel, schedule: as in :func:`sample_fields`.
        progress: as in :func:`sample_fields`, stage ``i2v``.
        field_scale: the model's field scale (needed by a ``residual_to_fields`` denoiser).

    Returns:
        (B, C, F, D, H, W) scaled latents: frame 0 is the prompt, frames 1..N-1 generated,
        frames >= N zero.
    """
    schedule, shape, counts, amps, free = _chain(i2v, prompt, num_frames, amplitude, schedule)
    if tuple(fields.shape) != shape:
        raise InputError(f"the fields must have shape {shape} (B, C, F, D, H, W), got {tuple(fields.shape)}")
    # The chain runs on x0 - base (base = 0 unless the denoiser is residual); slot 0 of the result
    # is the prompt either way.
    base = field_implied_latents(i2v, prompt, fields, counts, field_scale)
    known = torch.zeros(shape, device=prompt.device, dtype=prompt.dtype)
    known[:, :, 0] = prompt - base[:, :, 0]

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        return i2v(x + base, torch.full((shape[0],), t, device=x.device), prompt, fields, counts, amps)

    with _EvalMode(i2v):
        residual = _reverse_process(
            denoise, shape, free, known, schedule, steps, sampler, seed, prompt.device, progress, cancel, "i2v"
        )
    return residual + base
