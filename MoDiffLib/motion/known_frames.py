"""Motion through frames the user has: the two-frame and partial-sequence modes of the motion models.

Given frame 0 and some other frames of the same cine (an end frame, or any subset), the motion of
every frame comes from the given frames, in the model's time course. Two ways, by how well the
images register:

**CT (registration, :func:`through_known`).**

1. each given frame k is registered to frame 0 (demons, :func:`~.registration.estimate_motion`),
   which gives its displacement ``u_k`` (frame 0 -> k);
2. every model frame ``m_t`` is written, by least squares, as a mix of the model frames at the
   given indices (:func:`mixing_weights`): ``m_t ~ sum_k w_tk m_k``;
3. ``u_t`` averages ``sum_k w_tk u_k + (m_t - sum_k w_tk m_k)`` (the given frames' own motion,
   mixed as the model mixes them, plus what the model moves beyond it) with ``a m_t`` (the
   model's pattern at the strength ``a`` the given frames show).

**MR (image-fitted strength, :func:`fit_on_line`).** Demons on 8 mm short-axis slices recovers
about half the cardiac motion, so no registration is used: the model's motion is taken at the
strength (EF) that best carries frame 0 into the given frames, judged by the images alone
(:class:`WarpCost`).

So the model contributes what the given frames cannot: the time course between them (breathing
is not linear in time, and regions move out of step), and the motion itself where the given frames
say nothing. This conditions by the given frames and the model's time course; the network is not
trained with the end frame as an input. Everything runs on a *working grid*: the input's grid,
coarsened by a whole factor when it holds more than :data:`MAX_WORKING_VOXELS` voxels (a
512 x 512 x 300 CT is registered and moved at about 2.5 mm, the registration's finest level), so
the mode costs seconds, not minutes.

The given frames themselves are returned exactly by the pipeline (they are the user's data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import InputError
from ..preprocess import resample
from ..progress import CancelFlag, ProgressCallback
from ..volume import Geometry, Volume, VolumeSequence
from .registration import RegistrationSettings, estimate_motion, intensity_window, window_normalise
from .transfer import field_on_grid

#: Largest working grid (voxels): about 2.5 mm over a chest, the finest registration level.
MAX_WORKING_VOXELS = 2_000_000


def working_grid(geometry: Geometry, max_voxels: int = MAX_WORKING_VOXELS) -> Geometry:
    """``geometry`` itself, or the same box coarsened by one whole factor per axis (never finer than
    it, never above ``max_voxels``): voxel edges span the same extent."""
    count = int(np.prod(geometry.shape_kji))
    factor = 1 if count <= max_voxels else int(math.ceil((count / max_voxels) ** (1.0 / 3.0)))
    while factor > 1 and np.prod([math.ceil(n / factor) for n in geometry.shape_kji]) > max_voxels:
        factor += 1
    if factor == 1:
        return geometry
    shape = tuple(max(1, int(math.ceil(n / factor))) for n in geometry.shape_kji)
    spacing_ijk = tuple(s * n / m for s, n, m in zip(geometry.spacing, geometry.shape_kji[::-1], shape[::-1]))
    # the centre of the first coarse voxel: half a coarse voxel in from the box's corner
    corner = np.asarray(geometry.ijk_to_ras_points(np.array([-0.5, -0.5, -0.5])))
    origin = corner + geometry.direction @ (0.5 * np.asarray(spacing_ijk))
    return Geometry(shape, spacing_ijk, tuple(origin), geometry.direction_ras)


def check_modes(end: bool, known: bool, trace: bool) -> None:
    """Refuse combinations of the two-frame mode (``end``), the partial mode (``known``) and a breathing trace.

    Raises:
        InputError: both modes, or an end frame with a trace.
    """
    if end and known:
        raise InputError("give either an end frame (two-frame mode) or known frames (partial mode), not both")
    if end and trace:
        raise InputError("a breathing trace sets the motion of every frame; it does not combine with an end frame")


def check_known_frames(known: Mapping[int, Volume], num_frames: int, geometry: Geometry, input_name: str) -> dict[int, Volume]:
    """The given frames by index, checked: whole-number indices in 1..N-1, scalar volumes on the input's grid.

    Raises:
        InputError: naming the frame and what is wrong with it.
    """
    if not isinstance(known, Mapping) or not known:
        raise InputError("give at least one known frame besides frame 0 (index: volume)")
    out: dict[int, Volume] = {}
    for index, volume in known.items():
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InputError(f"known frame index {index!r} is not a whole number")
        t = int(index)
        if t == 0:
            raise InputError(f"frame 0 is the input itself ({input_name}); give known frames 1 to {num_frames - 1}")
        if not 1 <= t < num_frames:
            raise InputError(f"known frame {t} is outside the cine's frames 1 to {num_frames - 1} (--frames {num_frames})")
        if not isinstance(volume, Volume) or volume.is_vector:
            raise InputError(f"known frame {t} must be a scalar volume, got {type(volume).__name__}")
        if not volume.geometry.is_close(geometry, atol_mm=1e-3):
            raise InputError(f"known frame {t} ('{volume.name}', {volume.geometry.describe()}) is not on the grid of "
                             f"{input_name} ({geometry.describe()}); frames of one cine share one grid")
        out[t] = volume
    return dict(sorted(out.items()))


def on_working_grid(volume: Volume, grid: Geometry) -> np.ndarray:
    """``volume`` on the working grid, low-pass filtered first (half the coarse spacing) so the
    registration sees the anatomy, not aliasing."""
    from scipy import ndimage

    a = np.asarray(volume.array, dtype=np.float32)
    if volume.geometry.is_close(grid, 1e-4):
        return a
    sigma_kji = [max(0.5 * g / s - 0.5, 0.0) for g, s in zip(grid.spacing[::-1], volume.geometry.spacing[::-1])]
    return resample(ndimage.gaussian_filter(a, sigma_kji, mode="nearest"), volume.geometry, grid, order=1)


def register_known(
    frame0: Volume,
    known: Mapping[int, Volume],
    grid: Geometry,
    settings: RegistrationSettings | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> tuple[dict[int, np.ndarray], dict]:
    """Displacement frame 0 -> each known frame (K, J, I, 3) RAS mm on ``grid``, and the registration's info.

    Each given frame is registered on its own, in index order with the warm start of
    :func:`~.registration.estimate_motion` (starting from the model's motion instead made no
    difference on held-out lung or cardiac phantoms).
    """
    order = sorted(known)
    frames = np.stack([on_working_grid(frame0, grid)] + [on_working_grid(known[t], grid) for t in order])
    fields = estimate_motion(VolumeSequence(frames, grid, name="known frames"), settings, progress=progress,
                             cancel=cancel)
    return {t: fields.displacements[i + 1] for i, t in enumerate(order)}, dict(fields.info)


def mixing_weights(model: np.ndarray, anchors: list[int]) -> np.ndarray:
    """(N, A) weights that express each model frame in the model frames at ``anchors``
    (least squares over the field, every other voxel): how much of each given frame's motion
    every frame holds, according to the model. Given frames get themselves exactly."""
    step = (slice(None), slice(None, None, 2), slice(None, None, 2), slice(None, None, 2))
    flat = model[step].reshape(model.shape[0], -1).astype(np.float64)
    basis = flat[anchors]  # (A, V)
    gram = basis @ basis.T
    gram += np.eye(len(anchors)) * 1e-6 * max(float(np.trace(gram)), 1e-12)  # given frames with equal motion
    w = np.linalg.solve(gram, basis @ flat.T).T  # (N, A)
    for i, k in enumerate(anchors):
        w[k] = 0.0
        w[k, i] = 1.0
    w[0] = 0.0
    return w


def registered_strength(model: np.ndarray, registered: Mapping[int, np.ndarray]) -> float:
    """The scalar ``a`` that best turns the model's motion at the given frames into their registered
    motion (least squares over every voxel of every given frame): the strength the given frames show."""
    num = sum(float(np.vdot(np.asarray(registered[k], np.float64), model[k].astype(np.float64))) for k in registered)
    den = sum(float(np.vdot(model[k].astype(np.float64), model[k].astype(np.float64))) for k in registered)
    return num / den if den > 0 else 0.0


class WarpCost:
    """How badly a displacement carries frame 0 into another frame, by intensities alone.

    The mean squared difference between frame 0 and the frame sampled at ``x + u(x)`` (every
    other voxel of the grid; intensities in the registration's window, so that CT and MR weigh
    alike). No registration is involved: a model's motion is judged by the images it explains.
    """

    def __init__(self, frame0: np.ndarray, frame: np.ndarray, grid: Geometry):
        window = intensity_window(frame0)
        self._step = (slice(None, None, 2),) * 3
        self._fixed = window_normalise(frame0, window)[self._step]
        self._moving = window_normalise(frame, window)
        self._kji = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32)[::2] for n in grid.shape_kji], indexing="ij"))
        # RAS mm -> (k, j, i) voxel offsets
        self._to_kji = np.ascontiguousarray(np.asarray(grid.ras_to_ijk()[:3, :3], np.float32)[::-1])

    def offsets(self, field: np.ndarray) -> np.ndarray:
        """(3, k, j, i) voxel offsets of a (K, J, I, 3) RAS field on the cost's sample points."""
        return np.einsum("ab,kjib->akji", self._to_kji, field[self._step])

    def of_offsets(self, offsets: np.ndarray) -> float:
        from scipy import ndimage

        warped = ndimage.map_coordinates(self._moving, self._kji + offsets, order=1, mode="nearest")
        return float(np.mean((warped - self._fixed) ** 2))

    def __call__(self, field: np.ndarray) -> float:
        return self.of_offsets(self.offsets(field))


def fit_on_line(frame0: np.ndarray, given: Mapping[int, np.ndarray], low: np.ndarray, high: np.ndarray,
                grid: Geometry, tol: float = 0.005) -> float:
    """The fraction ``f`` in [0, 1] whose motion ``low + f (high - low)`` best carries frame 0 into
    every given frame (summed :class:`WarpCost`, golden-section search).

    ``low`` and ``high`` are a model's motion at the two ends of its strength range (the
    population motion is linear in the strength), so ``f`` says which strength the given frames
    show, judged by the images alone: that holds where a deformable registration does not (demons
    on 8 mm short-axis slices recovers about half the cardiac motion).

    Args:
        frame0: (K, J, I) frame 0 on ``grid``.
        given: index -> (K, J, I) given frame on ``grid``.
        low, high: (N, K, J, I, 3) displacements (RAS mm) on ``grid``.
    """
    parts = []
    for k, frame in sorted(given.items()):
        cost = WarpCost(frame0, frame, grid)
        start = cost.offsets(low[k])
        parts.append((cost, start, cost.offsets(high[k]) - start))
    return _golden_min(lambda f: sum(c.of_offsets(a + np.float32(f) * d) for c, a, d in parts), 0.0, 1.0, tol)


def _golden_min(f, lo: float, hi: float, tol: float) -> float:
    """Minimiser of a unimodal ``f`` on ``[lo, hi]`` to within ``tol`` (golden-section search)."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return 0.5 * (a + b)


def through_known(model: np.ndarray, registered: Mapping[int, np.ndarray], model_share: float = 1.0,
                  pattern_weight: float = 0.5) -> np.ndarray:
    """Motion of every frame from the registered motion of the given frames, mixed as the model mixes them.

    Two estimates, averaged with ``pattern_weight`` on the second:

    * ``sum_k w_tk u_k + model_share * (m_t - sum_k w_tk m_k)`` with the weights of
      :func:`mixing_weights`: the given frames' own (registered) motion in the model's time course,
      plus (``model_share``) the part of the model's motion they do not explain;
    * ``a m_t``: the model's own motion pattern at the strength the given frames show
      (:func:`registered_strength`), which registration noise does not enter.

    The average beat either alone on held-out lung and cardiac phantoms (README). Given frames
    get their registered motion exactly, frame 0 none.

    Args:
        model: (N, K, J, I, 3) the model's displacements on the working grid.
        registered: index -> (K, J, I, 3) displacement frame 0 -> that frame, same grid.
    """
    anchors = sorted(registered)
    w = mixing_weights(model, anchors)
    strength = np.float32(registered_strength(model, registered))
    out = np.zeros(model.shape, dtype=np.float32)
    for t in range(1, model.shape[0]):
        if t in registered:
            out[t] = registered[t]
            continue
        mixed = np.zeros(model.shape[1:], dtype=np.float32)
        explained = np.zeros(model.shape[1:], dtype=np.float32)
        for i, k in enumerate(anchors):
            if w[t, i] != 0.0:
                mixed += np.float32(w[t, i]) * np.asarray(registered[k], dtype=np.float32)
                explained += np.float32(w[t, i]) * model[k]
        mixed += np.float32(model_share) * (model[t] - explained)
        out[t] = (1.0 - pattern_weight) * mixed + pattern_weight * strength * model[t]
    return out


def model_on_grid(displacements: np.ndarray, source: Geometry, grid: Geometry) -> np.ndarray:
    """(N, K, J, I, 3) model displacements on the anatomy grid ``source`` sampled on ``grid``
    (continued by their border value outside the anatomy box, as the images are moved)."""
    return np.stack([field_on_grid(d, source, grid, "border") for d in displacements]).astype(np.float32)


def at_phases(displacements: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """A whole cycle of M frames (at phases t / M) linearly interpolated, periodically, at ``phases`` in [0, 1]."""
    m = displacements.shape[0]
    x = np.asarray(phases, dtype=float) * m
    lo = np.floor(x).astype(int)
    f = (x - lo).astype(np.float32)
    out = np.empty((len(x),) + displacements.shape[1:], dtype=np.float32)
    for i, (a, w) in enumerate(zip(lo, f)):
        out[i] = (1.0 - w) * displacements[a % m] + w * displacements[(a + 1) % m]
    return out


def _nearest_phase(cycle: np.ndarray, error) -> float:
    """The phase (0..1) of a whole-cycle motion ``cycle`` (M frames) whose field has the smallest
    ``error(field)``, searched at 8 M phases (refined between the frames)."""
    best, best_phase = math.inf, 0.5
    for phase in np.linspace(0.0, 1.0, 8 * cycle.shape[0], endpoint=False)[1:]:
        value = error(at_phases(cycle, np.array([phase]))[0])
        if value < best:
            best, best_phase = value, float(phase)
    return best_phase


def end_phase(cycle: np.ndarray, end_field: np.ndarray) -> float:
    """The phase (0..1) of a whole-cycle model motion ``cycle`` (M frames) nearest ``end_field``
    (RMS over the field), refined between frames: where the given end frame sits in the model's cycle."""
    step = (slice(None, None, 2),) * 3  # every other voxel: the phase is a property of the whole field
    target = end_field[step]
    return _nearest_phase(cycle[(slice(None),) + step], lambda field: float(np.mean((field - target) ** 2)))


def image_end_phase(frame0: np.ndarray, end: np.ndarray, cycle: np.ndarray, grid: Geometry) -> float:
    """The phase (0..1) of a whole-cycle model motion ``cycle`` (M, K, J, I, 3) whose motion best
    carries frame 0 into the end frame (:class:`WarpCost`), searched like :func:`end_phase` but by
    the images instead of a registered field (for images whose registration is unreliable)."""
    return _nearest_phase(cycle, WarpCost(frame0, end, grid))
