"""Time curves of breathing and of the cardiac cycle, as functions of the cycle phase in [0, 1).

Breathing (Lujan model): the diaphragm height is ``z(t) = z0 - A cos^(2n)(pi t / tau - phi)``.
Written as an *inhale fraction* ``s`` in [0, 1] (0 = end-exhale, 1 = end-inhale) with the phase
origin at end-exhale this is ``s = sin^(2n)(pi w(phase))``; ``w`` warps the phase so that the
peak falls at ``inhale_fraction`` of the cycle (XCAT: inhale 40 %, exhale 60 %). Larger ``n``
dwells longer at end-exhale. A second curve with a later peak drives the AP/LR components, so
that a point traces a loop (hysteresis) rather than the same path in and out.

Cardiac: a *contraction state* ``kappa`` in [0, 1] (0 = end-diastole, 1 = end-systole): smooth
systole up to ``systole_fraction``, rapid early filling, diastasis, and an atrial kick that
delivers the last ``atrial_kick`` of the stroke around 0.92 of the cycle.
"""

from __future__ import annotations

import numpy as np


def _warp(phase: np.ndarray, peak: float) -> np.ndarray:
    """Piecewise-linear map of [0, 1) onto [0, 1) with ``peak`` -> 0.5."""
    p = np.mod(np.asarray(phase, dtype=float), 1.0)
    return np.where(p < peak, 0.5 * p / peak, 0.5 + 0.5 * (p - peak) / (1.0 - peak))


def breathing(phase, n: int, inhale_fraction: float = 0.4) -> np.ndarray:
    """Inhale fraction ``s`` in [0, 1] at ``phase`` (0 = end-exhale, peak 1 at ``inhale_fraction``).

    ``s = cos^(2n)(pi w - pi/2) = sin^(2n)(pi w)``: the Lujan ``cos^(2n)`` curve with its phase
    offset chosen so that the cycle starts at end-exhale (written with ``sin`` so that ``s`` is
    exactly 0 there).
    """
    if not 0.05 <= inhale_fraction <= 0.95:
        raise ValueError(f"inhale_fraction must be in [0.05, 0.95], got {inhale_fraction}")
    w = _warp(phase, inhale_fraction)
    return np.sin(np.pi * w) ** (2 * int(n))


def breathing_lagged(phase, n: int, inhale_fraction: float, lag: float) -> np.ndarray:
    """The breathing curve with its peak moved ``lag`` (fraction of the cycle) later.

    Zero at end-exhale like :func:`breathing`, so frame 0 stays the reference; used for the AP and
    LR components to create a hysteresis loop.
    """
    return breathing(phase, n, min(inhale_fraction + lag, 0.95))


def cardiac_contraction(phase, systole_fraction: float = 0.35, filling_end: float = 0.6,
                        kick_start: float = 0.86, atrial_kick: float = 0.07) -> np.ndarray:
    """Contraction state ``kappa`` (0 = end-diastole, 1 = end-systole) at ``phase`` from end-diastole.

    LV volume is modelled as ``EDV * (1 - EF * kappa)``, so ``atrial_kick`` is the share of the
    stroke volume delivered by atrial contraction (from ``kick_start`` to the end of the cycle,
    centred near 0.92).
    """
    p = np.mod(np.asarray(phase, dtype=float), 1.0)
    ts, tf, tk = systole_fraction, filling_end, kick_start
    if not 0.0 < ts < tf < tk < 1.0:
        raise ValueError("cardiac phases must satisfy 0 < systole < filling end < kick start < 1")
    systole = 0.5 * (1.0 - np.cos(np.pi * p / ts))
    filling = 1.0 - (1.0 - atrial_kick) * 0.5 * (1.0 - np.cos(np.pi * (p - ts) / (tf - ts)))
    kick = atrial_kick * 0.5 * (1.0 + np.cos(np.pi * (p - tk) / (1.0 - tk)))
    return np.where(p < ts, systole, np.where(p < tf, filling, np.where(p < tk, atrial_kick, kick)))


def frame_phases(num_frames: int, start_phase: float = 0.0) -> np.ndarray:
    """Phases of ``num_frames`` frames evenly spanning one cycle from ``start_phase``."""
    return np.mod(start_phase + np.arange(num_frames) / float(num_frames), 1.0)
