"""The comparison methods that need no trained network.

Every method returns a cine with the input as frame 0, on the input's grid:

* :func:`static_cine` -- every frame is frame 0 (no motion at all).
* :class:`MeanMotion` -- the average motion pattern of *training* phantoms
  (``PHANTOM_SEEDS["train"]``, disjoint from the evaluated test seeds), applied to the input.
  Phantoms of one kind share one grid, so the pattern is simply the mean of the training cases'
  ground-truth displacement fields (frame 0 -> t, RAS mm at the frame-0 voxel centres), each
  divided by its case's motion strength (diaphragm SI excursion in mm, or EF in %): a field per
  unit of strength. ``mean-motion`` scales it to the training cases' mean strength (the
  population mean of the data the pattern came from), ``mean-motion+amplitude`` to the
  evaluated case's true strength. The input is warped with the scaled field (pull-back through
  its inverse, so the anatomy moves *along* the field). Only defined for phantom data: other data
  has no ground-truth motion on a shared grid.
* Two-frame methods (**privileged**: they are given the true key frame, which a one-volume method
  never sees). The key frame ``k`` is the frame of largest motion (:func:`key_frame`). Both follow
  the cycle with the fractions of :func:`cycle_fractions`: 0 at frame 0, rising to 1 at ``k``, then
  falling back towards frame 0, which the cycle reaches one frame after the last (a full cycle of
  T frames: frame T would be frame 0 again; for a half cycle such as ED -> ES the key frame is the
  last frame and only the rising half is used). Each half is a raised cosine,
  ``sin^2(pi/2 * t/k)`` and ``sin^2(pi/2 * (T-t)/(T-k))``: breathing and the cardiac cycle come to
  rest at their extremes (the Lujan breathing curve with n = 1; the cosine systole of the cardiac
  phantom), which a linear-in-time schedule (the linear motion hypothesis of DDM/UVI-Net) ignores.
  On the phantoms the raised cosine scored higher than the linear schedule for both methods at
  6 and 10 frames (at 4 frames the two are identical).

  - :func:`linear_interp_cine` -- intensities blended: ``(1 - f_t) I_0 + f_t I_k``.
  - :func:`registration_interp_cine` -- DDM's setting: the displacement ``u`` frame 0 -> k is
    estimated with :func:`MoDiffLib.motion.estimate_motion` and frame t is frame 0 warped by
    ``f_t u``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from ..volume import Geometry, Volume, VolumeSequence

#: Training phantoms averaged by :class:`MeanMotion` by default.
MEAN_MOTION_CASES = 8


def _sequence(frames: np.ndarray, geometry: Geometry, name: str) -> VolumeSequence:
    return VolumeSequence(np.asarray(frames, dtype=np.float32), geometry, name=name, index_name="frame")


def static_cine(frame0: Volume, num_frames: int) -> VolumeSequence:
    """``num_frames`` copies of frame 0."""
    a = np.asarray(frame0.array, dtype=np.float32)
    return _sequence(np.repeat(a[None], int(num_frames), axis=0), frame0.geometry, "static")


def warp_with_displacements(frame0: Volume, displacements: np.ndarray, name: str) -> VolumeSequence:
    """Frame 0 carried by Lagrangian displacements (T, K, J, I, 3) RAS mm (frame 0 -> t) into every frame."""
    from ..motion import MotionFields, warp_volume

    fields = MotionFields(displacements, frame0.geometry, {"method": name})
    base = Volume(np.asarray(frame0.array, dtype=np.float32), frame0.geometry, frame0.name)
    frames = [base.array.copy()] + [warp_volume(fields, base, t) for t in range(1, fields.num_frames)]
    return _sequence(np.stack(frames), frame0.geometry, name)


# -- mean motion of the training phantoms -----------------------------------------------------------
@dataclass
class MeanMotion:
    """Mean ground-truth motion per unit of strength of training phantoms on one grid.

    Attributes:
        kind: ``lung`` or ``cardiac``.
        num_frames: T of the pattern (frame 0 included).
        start_phase: cycle phase of frame 0.
        geometry: the phantom grid the pattern lives on.
        pattern: (T, K, J, I, 3) float32 displacement (RAS mm) per unit of strength.
        seeds: the training seeds averaged.
        amplitudes: their strengths (mm or %).
    """

    kind: str
    num_frames: int
    start_phase: float
    geometry: Geometry
    pattern: np.ndarray
    seeds: list[int]
    amplitudes: list[float]
    unit: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def population_amplitude(self) -> float:
        """Mean strength of the training cases (the strength ``mean-motion`` uses)."""
        return float(np.mean(self.amplitudes))

    @classmethod
    def from_training_phantoms(cls, kind: str, num_frames: int, shape_ijk=None, start_phase: float = 0.0,
                               num_cases: int = MEAN_MOTION_CASES,
                               log: Callable[[str], None] | None = None) -> "MeanMotion":
        """Average the motion of the first ``num_cases`` training phantoms of ``kind`` at ``num_frames``."""
        from ..datasets import PHANTOM_SEEDS
        from ..phantom import make_phantom

        if int(num_cases) < 1:
            raise InputError(f"the mean motion needs at least one training phantom, got {num_cases}")
        seeds = list(PHANTOM_SEEDS["train"][: int(num_cases)])
        total = None
        amplitudes = []
        geometry = None
        for i, seed in enumerate(seeds):
            case = make_phantom(kind, num_frames=int(num_frames), seed=seed, start_phase=start_phase,
                                shape_ijk=shape_ijk)
            a = float(case.params["amplitude"])
            if not a > 0:
                raise InputError(f"training phantom {seed} has motion strength {a}; cannot normalise its motion")
            per_unit = case.motion.frames.astype(np.float32) / np.float32(a)
            total = per_unit if total is None else total + per_unit
            amplitudes.append(a)
            geometry = case.motion.geometry
            if log:
                log(f"mean motion: training phantom {i + 1}/{len(seeds)} (seed {seed}, strength {a:.1f})")
        pattern = total / np.float32(len(seeds))
        unit = "mm" if kind == "lung" else "%"
        return cls(kind, int(num_frames), float(start_phase), geometry, pattern, seeds, amplitudes, unit,
                   {"split": "train", "normalisation": "each field divided by its case's strength"})

    def matches(self, kind: str, num_frames: int, geometry: Geometry, start_phase: float = 0.0) -> bool:
        return (kind == self.kind and int(num_frames) == self.num_frames and geometry.is_close(self.geometry, 1e-3)
                and abs(float(start_phase) - self.start_phase) < 1e-9)

    def cine(self, frame0: Volume, amplitude: float, name: str = "mean-motion") -> VolumeSequence:
        """Frame 0 warped by the pattern scaled to ``amplitude`` (the same unit as the training strengths)."""
        if not frame0.geometry.is_close(self.geometry, 1e-3):
            raise InputError(
                f"the mean motion lives on {self.geometry.describe()}, the input on {frame0.geometry.describe()}"
            )
        value = float(amplitude)
        if not math.isfinite(value) or value < 0:
            raise InputError(f"motion strength must be a non-negative number, got {amplitude}")
        return warp_with_displacements(frame0, self.pattern * np.float32(value), name)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "frames": self.num_frames, "start_phase": self.start_phase,
            "training_seeds": self.seeds, "training_amplitudes": [round(a, 4) for a in self.amplitudes],
            "population_amplitude": round(self.population_amplitude, 4), "unit": self.unit,
            "grid": self.geometry.describe(), **self.info,
        }


# -- two-frame (privileged) methods ------------------------------------------------------------------
def key_frame(truth: VolumeSequence, motion: VolumeSequence | None = None,
              window: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[int, str]:
    """The frame of largest motion from frame 0, and the rule used.

    With ground-truth ``motion`` (phantoms): the frame whose displacement from frame 0 has the
    largest mean magnitude. Without: the frame whose (``window``-normalised) intensities differ most
    from frame 0 in mean absolute value.
    """
    t_count = truth.num_frames
    if t_count < 2:
        raise InputError("a key frame needs at least two frames")
    if motion is not None:
        d = np.asarray(motion.frames, dtype=np.float32)
        score = [float(np.mean(np.linalg.norm(d[t], axis=-1))) for t in range(t_count)]
        rule = "largest mean ground-truth displacement from frame 0"
    else:
        f = np.asarray(truth.frames, dtype=np.float32)
        if window is not None:
            f = window(f)
        score = [float(np.mean(np.abs(f[t] - f[0]))) for t in range(t_count)]
        rule = "largest mean absolute intensity change from frame 0"
    score[0] = -math.inf
    return int(np.argmax(score)), rule


def cycle_fractions(num_frames: int, key: int) -> np.ndarray:
    """Fraction of the frame-0 -> key change at every frame (see the module docstring)."""
    t_count, k = int(num_frames), int(key)
    if not 1 <= k < t_count:
        raise InputError(f"key frame {key} must lie in 1..{t_count - 1}")
    t = np.arange(t_count, dtype=float)
    linear = np.where(t <= k, t / k, (t_count - t) / (t_count - k))
    return np.sin(0.5 * np.pi * linear) ** 2


def linear_interp_cine(frame0: Volume, key_volume: np.ndarray, key: int, num_frames: int) -> VolumeSequence:
    """Intensity interpolation between frame 0 and the true key frame, following the cycle."""
    a0 = np.asarray(frame0.array, dtype=np.float32)
    ak = np.asarray(key_volume, dtype=np.float32)
    if ak.shape != a0.shape:
        raise InputError(f"the key frame has shape {ak.shape}, frame 0 {a0.shape}")
    f = cycle_fractions(num_frames, key).astype(np.float32)
    frames = np.stack([a0 if w == 0 else (1.0 - w) * a0 + w * ak for w in f])
    return _sequence(frames, frame0.geometry, "linear-interp")


def registration_interp_cine(frame0: Volume, key_volume: np.ndarray, key: int, num_frames: int,
                             settings=None) -> tuple[VolumeSequence, dict[str, Any]]:
    """Frame 0 warped by fractions of the registered displacement frame 0 -> key frame (DDM's setting)."""
    from ..motion import estimate_motion

    pair = VolumeSequence(np.stack([np.asarray(frame0.array, np.float32), np.asarray(key_volume, np.float32)]),
                          frame0.geometry, name="frame 0 and key frame")
    fields = estimate_motion(pair, settings)
    f = cycle_fractions(num_frames, key).astype(np.float32)
    displacements = f[:, None, None, None, None] * fields.displacements[1][None]
    info = {"registration": fields.info["method"], "registration_seconds": fields.info["seconds"]}
    return warp_with_displacements(frame0, displacements, "registration-interp"), info
