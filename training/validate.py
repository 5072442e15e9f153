"""Validation: cines of held-out cases, made with the EMA weights, scored against the truth.

Every case is generated from its frame 0 with the model's own preprocessing, and every output
goes back onto the case's grid through the pipeline's difference transfer, so the three stages
are scored the same way, on what a user would get:

* ``vae`` -- *reconstruction*: every true frame through the VAE (posterior mean); the ceiling
  of what any generated latent can give;
* ``tddm`` -- *fields*: TDDM samples fields from frame 0's latent; the frames are the prompt
  latent plus the cumulative fields, decoded;
* ``i2v`` -- *pipeline*: ``MoDiffPipeline.generate`` (TDDM fields, then the I2V denoiser).

Scores (:func:`MoDiffLib.metrics.cine_metrics`) are computed on the case's grid after the
model's intensity window of frame 0 (values in [-1, 1], data range 2): PSNR, SSIM-3D and NMSE
averaged over frames 1..N-1, and the temporal-consistency error; the same for the *static*
baseline (every frame = frame 0), which a useful model must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from MoDiffLib.errors import InputError
from MoDiffLib.metrics import cine_metrics
from MoDiffLib.models.diffusion import sample_fields
from MoDiffLib.models.tddm import latents_from_fields
from MoDiffLib.pipeline import MoDiffPipeline, normalise_amplitude
from MoDiffLib.preprocess import to_model, transfer_differences
from MoDiffLib.volume import VolumeSequence

from .data import frame_indices, sequence_choices

#: What each stage's validation generates (also the ``kind`` column of log.csv).
MODES = {"vae": "reconstruction", "tddm": "fields", "i2v": "pipeline"}


@dataclass
class ValidationCase:
    """A held-out case: frames (at most max_frames, spanning the case) and its amplitude."""

    case_id: str
    frames: VolumeSequence
    amplitude: float | None  # clinical unit, inside the model's range, or None


def load_validation_cases(dataset: Sequence, num_cases: int, mode: str, pipeline: MoDiffPipeline) -> list[ValidationCase]:
    """The first ``num_cases`` cases, each subsampled to the longest allowed sequence."""
    cfg = pipeline.config
    out = []
    for i in range(min(num_cases, len(dataset))):
        case = dataset[i]
        choices = sequence_choices(case.frames.num_frames, mode, cfg.max_frames)
        if not choices:
            raise InputError(
                f"validation case {case.case_id} has {case.frames.num_frames} frames, which give no sequence of "
                f"2..{cfg.max_frames} frames with data.subsample '{mode}'"
            )
        stride, n = max(choices, key=lambda c: c[1])
        idx = frame_indices(stride, n)
        frames = VolumeSequence(case.frames.frames[idx], case.frames.geometry, name=case.case_id)
        out.append(ValidationCase(case.case_id, frames, _in_range(cfg, case.amplitude)))
    return out


def _in_range(cfg, amplitude: float | None) -> float | None:
    if amplitude is None or cfg.amplitude is None:
        return None
    return float(amplitude) if cfg.amplitude.min <= amplitude <= cfg.amplitude.max else None


@torch.no_grad()
def generate_for_validation(pipeline: MoDiffPipeline, stage: str, case: ValidationCase, steps: int, seed: int,
                            device: torch.device) -> np.ndarray:
    """(N, K, J, I) frames on the case's grid in input units, made as :data:`MODES` says."""
    cfg = pipeline.config
    frames = case.frames
    n = frames.num_frames
    first = frames.frame(0)
    if stage == "i2v":
        result = pipeline.generate(first, n, steps=steps, seed=seed, amplitude=case.amplitude, device=device)
        return result.sequence.frames
    grid, window = pipeline.grid_for(first), pipeline.window(first)
    vae = pipeline.vae.to(device).eval()
    if stage == "vae":
        decoded = []
        for t in range(n):
            x = torch.from_numpy(to_model(frames.frame(t), grid, window))[None, None].to(device)
            decoded.append(vae.decode(vae.encode(x)[0]).float()[0, 0].cpu().numpy())
    elif stage == "tddm":
        x0 = torch.from_numpy(to_model(first, grid, window))[None, None].to(device)
        prompt = vae.encode(x0)[0].float() * cfg.latent_scale
        counts = torch.tensor([n], device=device)
        amplitude = normalise_amplitude(cfg, case.amplitude)
        fields = sample_fields(pipeline.tddm.to(device), prompt, counts, steps=steps, seed=seed, amplitude=amplitude,
                               schedule=pipeline.schedule)
        latents = latents_from_fields(prompt, fields / cfg.field_scale, counts) / cfg.latent_scale
        decoded = [vae.decode(latents[:, :, t]).float()[0, 0].cpu().numpy() for t in range(n)]
    else:
        raise InputError(f"unknown stage {stage!r}")
    return transfer_differences(first, np.stack(decoded), grid, window)


def validate(pipeline: MoDiffPipeline, stage: str, cases: list[ValidationCase], steps: int, seed: int,
             device: torch.device) -> dict[str, float]:
    """Mean scores over ``cases`` of the stage's cines and of the static baseline (``static_*``)."""
    scores: dict[str, list[float]] = {}
    for case in cases:
        truth = case.frames.frames
        window = pipeline.window(case.frames.frame(0))
        made = generate_for_validation(pipeline, stage, case, steps, seed, device)
        static = np.repeat(truth[:1], truth.shape[0], axis=0)
        target = window.normalise(truth)
        for prefix, cine in (("", made), ("static_", static)):
            for key, value in cine_metrics(window.normalise(cine), target, data_range=2.0).items():
                scores.setdefault(prefix + key, []).append(value)
    return {key: float(np.mean(values)) for key, values in scores.items()}
