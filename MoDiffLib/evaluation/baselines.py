"""The comparison methods that need no trained network.

Every method returns a cine with the input as frame 0, on the input's grid:

* :func:`static_cine` -- every frame is frame 0 (no motion at all).
* :class:`MeanMotion` -- the average motion pattern of *training* phantoms
  (``PHANTOM_SEEDS["train"]``, disjoint from the evaluated test seeds), applied to the input.
  Phantoms of one kind share one grid, so the training cases' ground-truth displacement fields
  (frame 0 -> t, RAS mm at the frame-0 voxel centres) can be compared voxel by voxel: per voxel,
  frame and component the pattern is the least-squares line ``u = B0 + a B1`` over the training
  cases' motion strengths ``a`` (diaphragm SI excursion in mm, or EF in %). A line rather than a
  field per unit of strength because not all motion scales with the strength: in the cardiac
  phantom the base descent and the torsion do not follow the EF (``B0`` carries them). The lung
  phantom's motion of one anatomy is proportional to its strength (``B0`` = 0 exactly), but across
  training anatomies ``B0`` also absorbs their differences (about 1 mm RMS with 8 cases at
  32x32x16, where the whole field is about 2 mm RMS). ``mean-motion`` uses the training cases' mean
  strength (where the line passes through the plain mean field), ``mean-motion+amplitude`` the
  evaluated case's true strength. The input is warped with ``B0 + a B1`` (pull-back through its inverse, so the anatomy
  moves *along* the field). Only defined for phantom data: other data has no ground-truth motion
  on a shared grid.
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
from dataclasses import dataclass, field, replace
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
    """Ground-truth motion of training phantoms on one grid as a linear function of the motion strength.

    Per voxel, frame and component the displacement is ``u = B0 + a B1``, fitted by least squares over
    the training cases' strengths ``a`` (:meth:`regression`); :meth:`displacements` evaluates it.

    Attributes:
        kind: ``lung`` or ``cardiac``.
        num_frames: T of the pattern (frame 0 included).
        start_phase: cycle phase of frame 0.
        geometry: the phantom grid the pattern lives on.
        intercept: ``B0``, (T, K, J, I, 3) float32 displacement (RAS mm) at strength 0.
        slope: ``B1``, (T, K, J, I, 3) float32 displacement (RAS mm) per unit of strength.
        seeds: the training seeds fitted.
        amplitudes: their strengths (mm or %).
        unit: the strength's unit.
        info: provenance and fit statistics for :meth:`describe`.
    """

    kind: str
    num_frames: int
    start_phase: float
    geometry: Geometry
    intercept: np.ndarray
    slope: np.ndarray
    seeds: list[int]
    amplitudes: list[float]
    unit: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def population_amplitude(self) -> float:
        """Mean strength of the training cases (the strength ``mean-motion`` uses; there ``B0 + a B1`` is
        the plain mean of the training fields)."""
        return float(np.mean(self.amplitudes))

    @staticmethod
    def regression(samples, per_unit: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Least-squares line ``u = B0 + a B1`` through ``(a, u)`` samples, element by element, in closed form.

        ``B1 = sum (a - mean a)(u - mean u) / sum (a - mean a)^2`` and ``B0 = mean u - mean a B1``,
        accumulated in float64 one sample at a time (Welford), so the fields are never all held at once.
        With a single strength (one case, or all equal) there is no line: ``B0 = 0`` and
        ``B1 = mean u / a`` (a field per unit of strength), which needs ``a > 0``.

        Args:
            samples: iterable of ``(strength, field)``; every field has the same shape.
            per_unit: fit no line but ``B0 = 0``, ``B1 = mean(u / a)``: a field per unit of strength.
                For breathing, whose strength is the excursion itself, zero strength is no motion and
                a free intercept only absorbs anatomy differences (field RMS error on 6 test lung
                phantoms: 0.44 mm per unit vs 0.50 mm for the line, 24 training cases).

        Returns:
            ``(B0, B1, stats)`` as float32 arrays of the fields' shape; ``stats`` has ``cases``,
            ``residual_rms_mm`` (RMS over elements and cases of ``u - B0 - a B1``) and ``fit``
            (``least squares`` or ``per unit of strength``).
        """
        n = 0
        mean_a = 0.0
        m2_a = 0.0
        mean_u = cov = m2_u = None
        ratio_sum, ratio_n = None, 0
        for a, u in samples:
            a = float(a)
            if not math.isfinite(a):
                raise InputError(f"motion strength must be a finite number, got {a}")
            u = np.array(u, dtype=np.float64)  # a copy: updated in place below
            if mean_u is None:
                mean_u, cov, m2_u = np.zeros_like(u), np.zeros_like(u), np.zeros_like(u)
            elif u.shape != mean_u.shape:
                raise InputError(f"motion fields of different shapes: {u.shape} and {mean_u.shape}")
            if per_unit and a > 0:
                ratio_sum = u / a if ratio_sum is None else ratio_sum + u / a
                ratio_n += 1
            n += 1
            da = a - mean_a
            mean_a += da / n
            du = u - mean_u
            mean_u += du / n
            u -= mean_u  # u - the updated mean
            cov += da * u
            du *= u
            m2_u += du
            m2_a += da * (a - mean_a)
        if n == 0:
            raise InputError("the mean motion needs at least one training field")
        if per_unit:
            if ratio_sum is None:
                raise InputError("a motion per unit of strength needs training strengths above zero")
            slope = ratio_sum / ratio_n
            intercept = np.zeros_like(mean_u)
            residual = m2_u
            fit = "per unit of strength"
        elif m2_a > 1e-12 * n * max(1.0, mean_a * mean_a):
            slope = cov / m2_a
            intercept = mean_u - mean_a * slope
            residual = np.maximum(m2_u - cov * slope, 0.0)  # sum of squared residuals per element
            fit = "least squares"
        else:
            if not mean_a > 0:
                raise InputError(f"the training strengths are all {mean_a:g}; cannot fit the motion per unit of "
                                 "strength")
            slope = mean_u / mean_a
            intercept = np.zeros_like(mean_u)
            residual = m2_u
            fit = "per unit of strength (a single training strength)"
        stats = {"cases": n, "fit": fit,
                 "residual_rms_mm": float(np.sqrt(residual.sum() / max(residual.size * n, 1)))}
        return intercept.astype(np.float32), slope.astype(np.float32), stats

    @classmethod
    def from_training_phantoms(cls, kind: str, num_frames: int, shape_ijk=None, start_phase: float = 0.0,
                               num_cases: int = MEAN_MOTION_CASES,
                               log: Callable[[str], None] | None = None) -> "MeanMotion":
        """Fit ``u = B0 + a B1`` to the motion of the first ``num_cases`` training phantoms of ``kind`` at
        ``num_frames`` (see :meth:`regression`)."""
        from ..datasets import PHANTOM_SEEDS
        from ..phantom import make_phantom

        if int(num_cases) < 1:
            raise InputError(f"the mean motion needs at least one training phantom, got {num_cases}")
        seeds = list(PHANTOM_SEEDS["train"][: int(num_cases)])
        amplitudes: list[float] = []
        geometry: list[Geometry] = []

        def samples():
            for i, seed in enumerate(seeds):
                case = make_phantom(kind, num_frames=int(num_frames), seed=seed, start_phase=start_phase,
                                    shape_ijk=shape_ijk)
                a = float(case.params["amplitude"])
                amplitudes.append(a)
                geometry[:] = [case.motion.geometry]
                if log:
                    log(f"mean motion: training phantom {i + 1}/{len(seeds)} (seed {seed}, strength {a:.1f})")
                yield a, case.motion.frames

        # breathing: a field per mm of excursion; cardiac: a line in EF (base descent and torsion
        # do not scale with it)
        per_unit = kind == "lung"
        intercept, slope, stats = cls.regression(samples(), per_unit=per_unit)
        unit = "mm" if kind == "lung" else "%"
        model = ("per voxel, frame and component u = a B1, B1 the mean field per unit of strength" if per_unit else
                 "per voxel, frame and component u = B0 + a B1, least squares over the training strengths a")
        info = {"split": "train", "model": model, **stats,
                "intercept_rms_mm": float(np.sqrt(np.mean(np.square(intercept, dtype=np.float64)))),
                "slope_rms_mm_per_unit": float(np.sqrt(np.mean(np.square(slope, dtype=np.float64))))}
        return cls(kind, int(num_frames), float(start_phase), geometry[0], intercept, slope, seeds, amplitudes, unit,
                   info)

    def matches(self, kind: str, num_frames: int, geometry: Geometry, start_phase: float = 0.0) -> bool:
        return (kind == self.kind and int(num_frames) == self.num_frames and geometry.is_close(self.geometry, 1e-3)
                and abs(float(start_phase) - self.start_phase) < 1e-9)

    def on_geometry(self, geometry: Geometry) -> "MeanMotion":
        """The same scanner-coordinate pattern sampled on another grid of the scanner (a cropped or
        re-spaced one): the pattern stays where it is in the scanner, whatever lies there now."""
        if geometry.is_close(self.geometry, 1e-3):
            return self
        from ..motion.anatomy import resample_nearest_border

        def move(fields: np.ndarray) -> np.ndarray:
            return np.stack([resample_nearest_border(f, self.geometry, geometry) for f in fields]).astype(np.float32)

        return replace(self, geometry=geometry, intercept=move(self.intercept), slope=move(self.slope))

    def displacements(self, amplitude: float) -> np.ndarray:
        """``B0 + amplitude B1``: (T, K, J, I, 3) float32 Lagrangian displacements (RAS mm, frame 0 -> t) at
        ``amplitude`` (the unit of the training strengths; non-negative)."""
        value = float(amplitude)
        if not math.isfinite(value) or value < 0:
            raise InputError(f"motion strength must be a non-negative number, got {amplitude}")
        return self.intercept + np.float32(value) * self.slope

    def cine(self, frame0: Volume, amplitude: float, name: str = "mean-motion") -> VolumeSequence:
        """Frame 0 warped by :meth:`displacements` at ``amplitude`` (the same unit as the training strengths)."""
        if not frame0.geometry.is_close(self.geometry, 1e-3):
            raise InputError(
                f"the mean motion lives on {self.geometry.describe()}, the input on {frame0.geometry.describe()}"
            )
        return warp_with_displacements(frame0, self.displacements(amplitude), name)

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
