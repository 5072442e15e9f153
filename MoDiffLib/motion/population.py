"""The population motion of one kind of anatomy on its anatomy grid, linear in the motion strength.

For every anatomy-grid voxel, displacement component and cycle phase, a least-squares line in the
motion strength ``a`` (diaphragm excursion mm, or EF %) over the training cases::

    u(phase, a) = B0(phase) + a * B1(phase)

A line, not a field per unit of strength: base descent and torsion of the heart do not scale with
EF, and a breathing pattern measured in mm per mm of diaphragm excursion is simply B0 ~ 0. The
pattern is stored at ``P`` phases evenly spanning one cycle (phase 0 = frame 0, where it is zero)
and interpolated linearly, periodically, in between, so one pattern serves any frame count.

A per-voxel line is not consistent with the strength once integrated: averaging hearts of
different sizes smooths the contraction, so the line at EF 50 % moves a ventricle by an EF of
about 38 % (measured through the Jacobian over the LV). An optional **strength map**
``a_line = offset + slope * a``, fitted on training cases (``training.strength_calibration``), says
where on the line a requested strength lies, so that the motion produces the strength asked for.

This is the anatomy-aligned ``mean-motion`` baseline on its own, and the part of a MoDiff motion
model that its learned residual is added to (a zero residual reproduces it exactly).

With a breathing trace (the diaphragm descent ``tau_t`` of every frame) the motion is regressed on
the trace itself instead of on the cycle phase::

    u_t = tau_t C0 + rate_t C1,     rate_t = d tau / d phase (periodic central difference)

The level term carries everything that follows the diaphragm; the rate term the hysteresis (the
AP / LR motion of the chest lags the diaphragm, so it differs between inhale and exhale at the same
descent). ``C0, C1`` are one least-squares fit per voxel over all training cases and phases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


def phase_weights(phases: np.ndarray, num_stored: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (lower, upper) into ``num_stored`` evenly spaced phases and the upper weight, for
    periodic linear interpolation at ``phases``."""
    x = np.mod(np.asarray(phases, dtype=float), 1.0) * num_stored
    lower = np.floor(x).astype(int) % num_stored
    return lower, (lower + 1) % num_stored, (x - np.floor(x)).astype(np.float32)


def interpolate_phases(stored: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """``stored`` (P, ...) at evenly spaced phases j/P, linearly interpolated at ``phases`` (T,)."""
    lo, hi, w = phase_weights(phases, stored.shape[0])
    w = w.reshape((-1,) + (1,) * (stored.ndim - 1))
    return (1.0 - w) * stored[lo] + w * stored[hi]


def trace_rate(trace: np.ndarray) -> np.ndarray:
    """d trace / d phase (per cycle) of a trace sampled at evenly spaced phases of one cycle
    (periodic central difference; zero for fewer than three samples)."""
    t = np.asarray(trace, dtype=np.float64)
    if t.size < 3:
        return np.zeros_like(t)
    return (np.roll(t, -1) - np.roll(t, 1)) * (t.size / 2.0)


def frame_phases(num_frames: int) -> np.ndarray:
    """Phases of ``num_frames`` frames evenly spanning one cycle from phase 0."""
    return np.arange(int(num_frames), dtype=float) / float(num_frames)


@dataclass
class PopulationMotion:
    """``u(phase, a) = B0(phase) + a B1(phase)`` on an anatomy grid (see the module docstring).

    Attributes:
        b0, b1: (P, 3, K, J, I) float32, RAS mm and mm per unit of strength.
        amplitude_mean, amplitude_std: of the training strengths (the mean is the strength used
            when none is given).
        cases: training cases fitted.
        trace_basis: (2, 3, K, J, I) float32 ``C0`` (mm per mm of descent) and ``C1`` (mm per mm
            per cycle) of the trace regression, or None where the kind has no breathing trace.
        strength_map: ``(offset, slope)``: a requested strength ``a`` is taken at ``offset + slope * a``
            on the line (see the module docstring); None: at ``a`` itself.
        typical: (P, 3, K, J, I) float32, the motion given when no strength is: per voxel and phase
            the geometric median of the training cases' motion (the point nearest to all of them on
            average, which is what a landmark error measures; the line at the mean strength is their
            mean), or None (the line at the mean strength).
    """

    b0: np.ndarray
    b1: np.ndarray
    amplitude_mean: float
    amplitude_std: float
    cases: int
    trace_basis: np.ndarray | None = None
    strength_map: tuple[float, float] | None = None
    typical: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.b0 = np.asarray(self.b0, dtype=np.float32)
        self.b1 = np.asarray(self.b1, dtype=np.float32)
        if self.b0.shape != self.b1.shape or self.b0.ndim != 5 or self.b0.shape[1] != 3:
            raise InputError(f"population motion needs B0 and B1 of one (P, 3, K, J, I) shape, got "
                             f"{self.b0.shape} and {self.b1.shape}")
        if self.trace_basis is not None:
            self.trace_basis = np.asarray(self.trace_basis, dtype=np.float32)
            if self.trace_basis.shape != (2,) + self.b0.shape[1:]:
                raise InputError(f"the trace regression needs shape {(2,) + self.b0.shape[1:]}, got "
                                 f"{self.trace_basis.shape}")
        if self.strength_map is not None:
            offset, slope = (float(v) for v in self.strength_map)
            if not (np.isfinite(offset) and np.isfinite(slope) and slope > 0):
                raise InputError(f"a strength map needs a finite offset and a positive slope, got {self.strength_map}")
            self.strength_map = (offset, slope)
        if self.typical is not None:
            self.typical = np.asarray(self.typical, dtype=np.float32)
            if self.typical.shape != self.b0.shape or not np.all(np.isfinite(self.typical)):
                raise InputError(f"the typical motion needs finite values of shape {self.b0.shape}, got "
                                 f"{self.typical.shape}")

    @property
    def has_trace(self) -> bool:
        """Whether the population can follow a breathing trace (:meth:`trace_fields`)."""
        return self.trace_basis is not None

    @property
    def num_phases(self) -> int:
        return int(self.b0.shape[0])

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.b0.shape[2:])  # type: ignore[return-value]

    def line_strength(self, amplitude: float | None = None, calibrated: bool = True) -> float:
        """Where on the line the strength ``amplitude`` (None: the population mean) is taken: a
        requested strength through the strength map where there is one and ``calibrated``, else
        ``amplitude`` itself.

        The map is for a requested strength only: without one the least-squares line at the mean
        strength is the better average motion (on 20 held-out cardiac phantoms the map there raised
        the landmark error from 0.63 to 0.66 mm)."""
        if amplitude is None:
            return float(self.amplitude_mean)
        a = float(amplitude)
        if calibrated and self.strength_map is not None:
            a = self.strength_map[0] + self.strength_map[1] * a
        return a

    def fields(self, phases: np.ndarray, amplitude: float | None = None, calibrated: bool = True) -> np.ndarray:
        """(T, 3, K, J, I) displacement at ``phases`` for strength ``amplitude``.

        With no strength, the typical motion where there is one (see :attr:`typical`), else the line
        at the population mean strength. ``calibrated=False`` gives the least-squares line itself
        (no typical motion, no strength map): what a learned residual was trained on.
        """
        if amplitude is None and calibrated and self.typical is not None:
            return interpolate_phases(self.typical, phases)
        a = self.line_strength(amplitude, calibrated)
        return interpolate_phases(self.b0, phases) + np.float32(a) * interpolate_phases(self.b1, phases)

    def trace_fields(self, descent_mm: np.ndarray) -> np.ndarray:
        """(T, 3, K, J, I) displacement of frames whose diaphragm descent (mm, 0 at frame 0, one value a
        frame evenly spanning one cycle) is ``descent_mm``, by the trace regression."""
        if self.trace_basis is None:
            raise InputError("this population motion has no trace regression; it cannot follow a breathing trace")
        tau = np.asarray(descent_mm, dtype=np.float64)
        level = (tau - tau[0]).astype(np.float32)
        rate = trace_rate(tau).astype(np.float32)
        out = level[:, None, None, None, None] * self.trace_basis[0] + rate[:, None, None, None, None] * self.trace_basis[1]
        out[0] = 0.0  # frame 0 is the input itself, whatever the trace's rate there
        return out

    class TraceAccumulator:
        """Streaming least squares of ``u = tau C0 + rate C1`` per voxel: the 2x2 normal matrix is
        shared by all voxels (it depends on the traces only), so only it and two sums are kept."""

        def __init__(self) -> None:
            self.gram = np.zeros((2, 2))
            self.rhs: np.ndarray | None = None
            self.n = 0

        def add(self, fields: np.ndarray, descent_mm: np.ndarray) -> None:
            """One case: ``fields`` (P, 3, K, J, I) at P evenly spaced phases, its descent (P,)."""
            tau = np.asarray(descent_mm, dtype=np.float64)
            design = np.stack([tau - tau[0], trace_rate(tau)], axis=1)  # (P, 2)
            f = np.asarray(fields, dtype=np.float64).reshape(len(tau), -1)
            if self.rhs is None:
                self.rhs = np.zeros((2, f.shape[1]))
            self.gram += design.T @ design
            self.rhs += design.T @ f
            self.n += 1

        def result(self, shape: tuple[int, ...]) -> np.ndarray:
            """(2, 3, K, J, I) ``C0, C1`` for fields of per-phase ``shape`` (3, K, J, I)."""
            if self.n < 2 or self.rhs is None:
                raise InputError("the trace regression needs at least two training cases with a trace")
            coef = np.linalg.solve(self.gram + 1e-9 * np.eye(2), self.rhs)
            return coef.reshape((2,) + tuple(shape)).astype(np.float32)

    # -- fitting ------------------------------------------------------------------------------------
    class Accumulator:
        """Streaming least squares over cases (only sums are kept, so thousands of cases fit in memory)."""

        def __init__(self, through_origin: bool = False) -> None:
            #: fit ``u = a B1`` (no motion at zero strength) instead of a free line: for breathing,
            #: whose strength is the excursion itself, the intercept would only absorb anatomy noise
            self.through_origin = through_origin
            self.n = 0
            self.sa = self.saa = 0.0
            self.su: np.ndarray | None = None
            self.sau: np.ndarray | None = None

        def add(self, fields: np.ndarray, amplitude: float) -> None:
            """One case: ``fields`` (P, 3, K, J, I) at the stored phases, strength ``amplitude``."""
            f = np.asarray(fields, dtype=np.float64)
            a = float(amplitude)
            if self.su is None:
                self.su, self.sau = np.zeros_like(f), np.zeros_like(f)
            self.n += 1
            self.sa += a
            self.saa += a * a
            self.su += f
            self.sau += a * f

        def result(self) -> "PopulationMotion":
            if self.n < 2 or self.su is None:
                raise InputError("the population motion needs at least two training cases")
            n = float(self.n)
            mean_a = self.sa / n
            var_a = max(self.saa / n - mean_a * mean_a, 0.0)
            mean_u = self.su / n
            if self.through_origin:
                b1 = self.sau / max(self.saa, 1e-12)
                b0 = np.zeros_like(b1)
            elif var_a < 1e-9:  # one strength only: no slope can be fitted
                b1 = np.zeros_like(mean_u)
                b0 = mean_u
            else:
                b1 = (self.sau / n - mean_a * mean_u) / var_a
                b0 = mean_u - mean_a * b1
            return PopulationMotion(b0, b1, float(mean_a), float(np.sqrt(var_a)), self.n)


# -- storage ----------------------------------------------------------------------------------------
def low_rank(stack: np.ndarray, tol_mm: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """``stack`` (R, ...) as ``coef @ modes``: (R, r) coefficients times (r, ...) modes, with the
    smallest rank r whose reconstruction is within ``tol_mm`` everywhere."""
    rows = stack.shape[0]
    m = np.asarray(stack, dtype=np.float64).reshape(rows, -1)
    # the (R, R) Gram matrix gives the modes without a decomposition of the (R, voxels) matrix itself
    values, vectors = np.linalg.eigh(m @ m.T)
    vectors = vectors[:, np.argsort(values)[::-1]]
    for rank in range(1, rows + 1):
        coef = vectors[:, :rank]  # (R, r), orthonormal
        modes = coef.T @ m
        if np.abs(coef @ modes - m).max() <= tol_mm:
            break
    return coef.astype(np.float32), modes.reshape((rank,) + stack.shape[1:]).astype(np.float32)


def low_rank_phases(population: PopulationMotion, tol_mm: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``B0, B1`` as phase coefficients times shared spatial modes, for a compact checkpoint.

    A population pattern over the cycle is nearly separable (one spatial pattern whose size follows
    the phase), so a few modes hold all of it: a fine grid then costs a few fields, not ``P``. The
    rank is the smallest whose reconstruction of ``B0`` and ``B1`` at the mean strength is within
    ``tol_mm`` everywhere.

    Returns:
        ``(time0, time1, modes)``: (P, r), (P, r) and (r, 3, K, J, I), with
        ``B0 = time0 @ modes`` and ``B1 = time1 @ modes`` (over the flattened modes).
    """
    p = population.num_phases
    scale = max(abs(population.amplitude_mean), 1e-6)  # B1 in mm at the mean strength
    coef, modes = low_rank(np.concatenate([population.b0, scale * population.b1]), tol_mm)
    return coef[:p], (coef[p:] / scale).astype(np.float32), modes


def from_low_rank(time0: np.ndarray, time1: np.ndarray, modes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(B0, B1)`` (P, 3, K, J, I) from the factors :func:`low_rank_phases` gives."""
    return from_modes(time0, modes), from_modes(time1, modes)


def from_modes(coef: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """(R, ...) from the factors of :func:`low_rank`."""
    flat = np.asarray(modes, dtype=np.float32).reshape(modes.shape[0], -1)
    return (np.asarray(coef, np.float32) @ flat).reshape((coef.shape[0],) + tuple(modes.shape[1:]))
