"""Which cycle phase every true frame is scored at, and a generated cycle resampled to those phases.

A model makes a cine of ``M`` frames at the phases ``j / M`` of one whole cycle (frame 0 = phase 0,
the cycle returning to frame 0 after frame ``M - 1``), and at most ``config.max_frames`` of them.
A true cine may have more frames, or cover part of a cycle (ACDC ED -> ES): each of its frames has
its own phase (``Case4D.meta["frame_phases"]``; ``t / T`` for a whole cycle of ``T`` frames). So that
every true frame is scored at its own phase, the model's cycle is generated at ``M`` phases and
resampled in time (:func:`resample_generated`): the motion (frame 0 -> t displacements) linearly
interpolated between the two generated phases around each true phase, periodically, and frame 0
warped by it; a model without motion fields gets its frames interpolated the same way. Where the
true phases are the generated ones (``T <= max_frames`` frames of a whole cycle) the cine is
generated at ``T`` frames and nothing is resampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..volume import Volume, VolumeSequence


def case_phases(case) -> np.ndarray:
    """Cycle phase in [0, 1) of every frame of ``case``, frame 0 at phase 0 (``t / T`` unless the case says)."""
    t_count = case.num_frames
    given = case.meta.get("frame_phases")
    if given is None and case.meta.get("phases_percent") is not None:  # 4D-Lung, DIR-Lab: gated phases in %
        given = [float(p) / 100.0 for p in case.meta["phases_percent"]]
    if given is None:
        return np.arange(t_count) / float(t_count)
    phases = np.mod(np.asarray(given, dtype=float) - float(given[0]), 1.0)
    if phases.shape != (t_count,) or not np.all(np.isfinite(phases)):
        raise InputError(f"case {case.case_id}: {np.shape(given)} frame phases for {t_count} frames")
    return phases


def is_even_cycle(phases: np.ndarray) -> bool:
    """Whether ``phases`` are ``t / T``: the frames of one whole cycle, evenly spaced."""
    t_count = len(phases)
    return bool(np.allclose(phases, np.arange(t_count) / t_count, atol=1e-6))


@dataclass(frozen=True)
class TimePlan:
    """How a model's cine meets the true frames: generated at ``generated`` phases ``j / generated``,
    resampled to the true ``phases`` when ``resampled``."""

    generated: int
    phases: tuple[float, ...]
    resampled: bool

    def describe(self) -> dict[str, Any]:
        return {"generated_frames": self.generated,
                "generated_phases": [round(j / self.generated, 6) for j in range(self.generated)],
                "resampled": self.resampled,
                "rule": ("the model's cycle generated at the phases j/M and linearly resampled in time to each true "
                         "frame's phase (motion interpolated, frame 0 warped by it)") if self.resampled else
                        "generated at the true frames' phases (no resampling)"}


def time_plan(phases: np.ndarray, max_frames: int, requested: int | None = None) -> TimePlan:
    """The generated frame count for true ``phases`` (``requested``: a user's ``--frames``, capped by the model)."""
    t_count = len(phases)
    even = is_even_cycle(phases)
    if requested is not None:
        m = min(int(requested), int(max_frames))
    elif even and t_count <= max_frames:
        m = t_count
    else:
        m = int(max_frames)
    resampled = not (even and m == t_count)
    return TimePlan(m, tuple(float(p) for p in phases), resampled)


def phase_weights(phases: np.ndarray, generated: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, upper weight) of periodic linear interpolation between ``generated`` frames at ``phases``."""
    x = np.mod(np.asarray(phases, dtype=float), 1.0) * generated
    lo = np.floor(x).astype(int) % generated
    w = x - np.floor(x)
    return lo, (lo + 1) % generated, w


def resample_array(frames: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """(M, ...) values at the phases ``j / M``, linearly interpolated (periodically) at ``phases``."""
    a = np.asarray(frames)
    lo, hi, w = phase_weights(phases, a.shape[0])
    shape = (-1,) + (1,) * (a.ndim - 1)
    out = (1.0 - w).reshape(shape) * a[lo] + w.reshape(shape) * a[hi]
    return out.astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32)


def resample_fields(fields, phases: np.ndarray):
    """:class:`~MoDiffLib.motion.MotionFields` at ``phases`` (displacements interpolated; phase 0 stays zero)."""
    from ..motion.fields import MotionFields

    d = resample_array(fields.displacements, phases)
    d[np.asarray(phases) == 0.0] = 0.0
    return MotionFields(d, fields.geometry, dict(fields.info, resampled_phases=[round(float(p), 6) for p in phases]))


def resample_generated(frame0: Volume, cine: VolumeSequence, motion, samples, phases: np.ndarray,
                       mass_conservation: bool) -> tuple[VolumeSequence, Any, Any]:
    """A generated cycle (``cine`` with its ``motion`` and motion ``samples``, either may be None) at ``phases``.

    With motion, frame 0 is warped by the interpolated motion (as the model itself makes its frames:
    :func:`MoDiffLib.motion.transfer.warp_input`); without, the frames are interpolated.
    """
    if motion is not None:
        from ..motion.transfer import warp_input

        moved = resample_fields(motion, phases)
        frames, moved = warp_input(frame0, moved, mass_conservation=mass_conservation)
        sequence = VolumeSequence(frames, frame0.geometry, name=cine.name, index_name="frame")
    else:
        moved = None
        frames = resample_array(np.asarray(cine.frames, dtype=np.float32), phases)
        frames[np.asarray(phases) == 0.0] = np.asarray(frame0.array, dtype=np.float32)
        sequence = VolumeSequence(frames, frame0.geometry, name=cine.name, index_name="frame")
    resampled_samples = None if samples is None else [resample_fields(s, phases) for s in samples]
    return sequence, moved, resampled_samples


def resample_trace(trace: np.ndarray, phases: np.ndarray, generated: int) -> np.ndarray:
    """A per-true-frame breathing trace at the generated phases ``j / generated`` (periodic linear)."""
    order = np.argsort(phases)
    x = np.asarray(phases, dtype=float)[order]
    y = np.asarray(trace, dtype=float)[order]
    return np.interp(np.arange(generated) / generated, x, y, period=1.0)


def phase_table(phases: np.ndarray, source_frames: list[int] | None) -> list[dict[str, Any]]:
    """One row per true frame: its index, the source frame it came from and its cycle phase."""
    source = list(range(len(phases))) if source_frames is None else list(source_frames)
    return [{"frame": t, "source_frame": int(source[t]) if t < len(source) else t,
             "phase": round(float(p), 6)} for t, p in enumerate(phases)]


def describe_scope(phases: np.ndarray, whole_cycle: bool) -> str:
    """``whole cycle`` or ``part of the cycle (phases 0-0.40)``, for the report."""
    if whole_cycle:
        return "whole cycle"
    return f"part of the cycle (phases 0-{float(np.max(phases)):.2f})" if len(phases) else "part of the cycle"


__all__ = ["TimePlan", "case_phases", "describe_scope", "is_even_cycle", "phase_table", "phase_weights",
           "resample_array", "resample_fields", "resample_generated", "resample_trace", "time_plan"]
