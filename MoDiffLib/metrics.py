"""Image metrics of generated cines, shared by training validation and evaluation.

Definitions follow the peers (KNOWLEDGE.md section 6):

* **PSNR** over the whole volume: ``10 log10(data_range^2 / MSE)`` in dB; ``inf`` for identical
  volumes. ``data_range`` is the width of the intensity range the volumes live in, e.g. 2 for
  volumes normalised to [-1, 1] (MoDiff's model range) or ``hi - lo`` of an HU window.
* **SSIM-3D**: scikit-image's ``structural_similarity`` on the 3D arrays (a cubic uniform window
  of 7 voxels, shrunk to the smallest odd size that fits a thin axis) with ``data_range``.
* **NMSE**: ``||prediction - target||^2 / ||target||^2`` (0 for identical volumes).
* **Temporal-consistency error (TCE)**: mean absolute difference between the frame-to-frame
  changes of the prediction and those of the target, ``mean_t mean |(p_t - p_(t-1)) -
  (g_t - g_(t-1))|`` over t = 1..T-1, in the volumes' intensity units. It is zero when the
  prediction moves exactly like the target, even if both are offset by a constant.

:func:`cine_metrics` averages PSNR/SSIM/NMSE over frames 1..T-1 (frame 0 is the given input in
an image-to-video task and would flatter every method) and adds TCE. Inputs are numpy arrays or
anything ``np.asarray`` accepts; they are compared in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

from .errors import InputError

#: Edge length of the SSIM window (voxels) when every axis is at least this long.
SSIM_WINDOW = 7


def _pair(prediction: Any, target: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prediction, dtype=np.float64)
    g = np.asarray(target, dtype=np.float64)
    if p.shape != g.shape:
        raise InputError(f"{what}: prediction shape {p.shape} differs from target shape {g.shape}")
    if p.size == 0:
        raise InputError(f"{what}: the volumes are empty")
    if not (np.isfinite(p).all() and np.isfinite(g).all()):
        raise InputError(f"{what}: the volumes hold NaN or infinite values")
    return p, g


def _check_range(data_range: float) -> float:
    r = float(data_range)
    if not math.isfinite(r) or r <= 0:
        raise InputError(f"data_range must be a positive number, got {data_range}")
    return r


def psnr(prediction: Any, target: Any, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB over the whole volume; ``inf`` when they are identical."""
    p, g = _pair(prediction, target, "PSNR")
    r = _check_range(data_range)
    mse = float(np.mean((p - g) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(r * r / mse)


def ssim3d(prediction: Any, target: Any, data_range: float) -> float:
    """Structural similarity of two 3D volumes (scikit-image, uniform window), in [-1, 1]."""
    p, g = _pair(prediction, target, "SSIM")
    if p.ndim != 3:
        raise InputError(f"SSIM-3D needs 3D volumes, got {p.ndim} dimensions")
    r = _check_range(data_range)
    smallest = min(p.shape)
    if smallest < 3:
        raise InputError(f"SSIM-3D needs at least 3 voxels along every axis, got shape {p.shape}")
    win = min(SSIM_WINDOW, smallest if smallest % 2 else smallest - 1)
    return float(structural_similarity(p, g, win_size=win, data_range=r))


def nmse(prediction: Any, target: Any) -> float:
    """Normalised mean squared error ``||p - g||^2 / ||g||^2``; 0 when identical, inf for a zero target."""
    p, g = _pair(prediction, target, "NMSE")
    err = float(np.sum((p - g) ** 2))
    if err == 0.0:
        return 0.0
    ref = float(np.sum(g**2))
    return math.inf if ref == 0.0 else err / ref


def temporal_consistency_error(prediction_frames: Any, target_frames: Any) -> float:
    """Mean absolute error of the frame-to-frame differences of two (T, ...) cines, T >= 2."""
    p, g = _pair(prediction_frames, target_frames, "temporal-consistency error")
    if p.ndim < 2 or p.shape[0] < 2:
        raise InputError(f"the temporal-consistency error needs at least 2 frames, got shape {p.shape}")
    return float(np.mean(np.abs(np.diff(p, axis=0) - np.diff(g, axis=0))))


def cine_metrics(prediction_frames: Any, target_frames: Any, data_range: float) -> dict[str, float]:
    """PSNR, SSIM-3D and NMSE averaged over frames 1..T-1, and the TCE over all frames.

    Args:
        prediction_frames, target_frames: (T, K, J, I) cines on one grid, T >= 2, frame 0 = the input.
        data_range: width of the intensity range (2 for the [-1, 1] model range).

    Returns:
        ``{"psnr": dB, "ssim": ..., "nmse": ..., "tce": ...}``; PSNR is ``inf`` only when every
        frame matches exactly.
    """
    p, g = _pair(prediction_frames, target_frames, "cine metrics")
    if p.ndim != 4 or p.shape[0] < 2:
        raise InputError(f"cine metrics need (T, K, J, I) cines with T >= 2, got shape {p.shape}")
    r = _check_range(data_range)
    frames = range(1, p.shape[0])
    # PSNR is averaged in dB per frame, as the peers report it; identical frames give inf.
    return {
        "psnr": float(np.mean([psnr(p[t], g[t], r) for t in frames])),
        "ssim": float(np.mean([ssim3d(p[t], g[t], r) for t in frames])),
        "nmse": float(np.mean([nmse(p[t], g[t]) for t in frames])),
        "tce": temporal_consistency_error(p, g),
    }
