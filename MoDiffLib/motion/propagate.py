"""Carry points, markups and label maps of frame 0 through the motion to every frame.

* Points and markups move forward with the Lagrangian field: ``p -> p + u_t(p)``
  (:meth:`MotionFields.positions`), exact up to the trilinear interpolation of the field.
* Label maps are resampled into each frame through the inverse field: the voxel ``x`` of frame
  t takes the label of ``x + v_t(x)`` in frame 0. ``"nearest"`` copies the label found there;
  ``"linear"`` interpolates each structure's indicator (a probability of membership) and keeps
  the most probable label (background included), which follows small structures such as a
  nodule more faithfully than nearest neighbour (smoother, half-voxel exact boundaries).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..progress import CancelFlag, ProgressCallback, as_cancel_flag, check_cancel, report_step
from ..volume import Geometry, Volume, VolumeSequence
from .fields import MotionFields, as_points

LABEL_MODES = ("linear", "nearest")


def check_inside(fields: MotionFields, points_ras, what: str = "points") -> np.ndarray:
    """``points_ras`` as (N, 3), checked to lie inside the grid of the fields (InputError if not)."""
    p = as_points(points_ras, what)
    inside = fields.geometry.contains_ras(p)
    if not np.all(inside):
        first = p[int(np.flatnonzero(~inside)[0])]
        raise InputError(
            f"{what}: ({', '.join(f'{c:.1f}' for c in first)}) RAS lies outside the volume "
            f"({fields.geometry.describe()})"
        )
    return p


def propagate_points(fields: MotionFields, points_ras) -> np.ndarray:
    """Positions (T, N, 3) RAS mm in every frame of frame-0 points (N, 3) that lie inside the volume."""
    return fields.positions(check_inside(fields, points_ras))


def propagate_markups(fields: MotionFields, markups: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Each named list of frame-0 RAS points -> its (T, N, 3) track (e.g. the control points of markups)."""
    if not isinstance(markups, Mapping):
        raise InputError(f"markups must be a mapping name -> list of RAS points, got {type(markups).__name__}")
    return {str(name): propagate_points(fields, points) for name, points in markups.items()}


def _check_labels(fields: MotionFields, labels0: Volume) -> np.ndarray:
    if not isinstance(labels0, Volume) or labels0.is_vector:
        raise InputError(f"a label map must be a scalar Volume, got {type(labels0).__name__}")
    if not labels0.geometry.is_close(fields.geometry, atol_mm=1e-3):
        raise InputError(
            f"label map '{labels0.name}' ({labels0.geometry.describe()}) is not on the grid of the cine "
            f"({fields.geometry.describe()})"
        )
    a = labels0.array
    if not (np.issubdtype(a.dtype, np.integer) or np.all(a == np.round(a))):
        raise InputError(f"label map '{labels0.name}' holds fractional values; labels must be whole numbers")
    return a


def _box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(0, int(i.min()) - pad), min(n, int(i.max()) + pad + 1)) for i, n in zip(idx, mask.shape))


def source_index(geometry: Geometry, inverse_ras: np.ndarray) -> np.ndarray:
    """Continuous (k, j, i) frame-0 index, (3, K, J, I), of every voxel of a frame on ``geometry``
    with inverse (Eulerian) field ``inverse_ras`` (K, J, I, 3) RAS mm."""
    index_per_ras = np.linalg.inv(geometry.ijk_to_ras()[:3, :3])
    step_ijk = inverse_ras @ index_per_ras.T.astype(np.float32)  # displacement in index units (i, j, k)
    grid = np.indices(geometry.shape_kji, dtype=np.float32)  # (k, j, i)
    return np.stack([grid[0] + step_ijk[..., 2], grid[1] + step_ijk[..., 1], grid[2] + step_ijk[..., 0]])


def warp_labels(fields: MotionFields, labels0: Volume, t: int, mode: str = "linear",
                inverse_ras: np.ndarray | None = None) -> np.ndarray:
    """The frame-0 label map carried into frame ``t``: a (K, J, I) array of the input's dtype."""
    a = _check_labels(fields, labels0)
    if mode not in LABEL_MODES:
        raise InputError(f"unknown label propagation mode {mode!r}; choose one of {', '.join(LABEL_MODES)}")
    t = fields.check_frame(t)
    if t == 0:
        return a.copy()
    v = fields.inverse(t) if inverse_ras is None else inverse_ras
    reach_mm = float(np.abs(fields.displacements[t]).max()) if fields.displacements[t].size else 0.0
    return warp_label_array(a, source_index(fields.geometry, v), mode, reach_mm / min(fields.geometry.spacing))


def warp_label_array(a: np.ndarray, source: np.ndarray, mode: str, reach_voxels: float) -> np.ndarray:
    """Labels ``a`` (K, J, I) resampled at the continuous frame-0 indices ``source`` (3, K, J, I)
    (see :func:`source_index`) by ``mode`` (:data:`LABEL_MODES`); ``reach_voxels``: the largest
    displacement in voxels, which bounds the box each structure is interpolated in."""
    if mode == "nearest":
        return ndimage.map_coordinates(a, source, order=0, mode="nearest").astype(a.dtype)
    # linear: per structure, the interpolated indicator inside a box that covers its motion
    pad = int(np.ceil(reach_voxels)) + 2
    best = np.zeros(a.shape, dtype=np.float32)
    total = np.zeros(a.shape, dtype=np.float32)
    out = np.zeros(a.shape, dtype=a.dtype)
    survivors: list[tuple[int, tuple[int, ...], tuple[slice, ...]]] = []  # each structure's most probable voxel
    for value in np.unique(a):
        if value == 0:
            continue
        mask = a == value
        box = _box(mask, pad)
        origin = np.array([s.start for s in box], dtype=np.float32)[:, None, None, None]
        local = source[(slice(None),) + box] - origin
        prob = ndimage.map_coordinates(mask[box].astype(np.float32), local, order=1, mode="constant", cval=0.0)
        total[box] += prob
        top = int(np.argmax(prob))
        if prob.flat[top] > 0:
            local_peak = np.unravel_index(top, prob.shape)
            survivors.append((value, tuple(int(p + s.start) for p, s in zip(local_peak, box)), box))
        better = prob > best[box]
        best[box] = np.where(better, prob, best[box])
        out[box] = np.where(better, value, out[box])
    out[best < 1.0 - total] = 0  # background is more probable than any structure
    for value, peak, box in survivors:
        # a structure a few voxels across can fall below one half everywhere after a sub-voxel
        # shift; a target that vanishes from a frame is worse than one voxel too many
        if not np.any(out[box] == value):
            out[peak] = value
    return out


def warp_probability(fields: MotionFields, mask0: Volume, t: int) -> np.ndarray:
    """A frame-0 mask or probability map (values in [0, 1]) carried into frame ``t``, linearly
    interpolated: the probability that each voxel of frame t belongs to the structure, (K, J, I) float32."""
    if not isinstance(mask0, Volume) or mask0.is_vector or not mask0.geometry.is_close(fields.geometry, 1e-3):
        raise InputError("the mask to carry must be a scalar Volume on the grid of the motion fields")
    a = mask0.array.astype(np.float32)
    if a.size and (float(a.min()) < 0.0 or float(a.max()) > 1.0):
        raise InputError(f"'{mask0.name}' must hold probabilities in [0, 1] (or a 0/1 mask)")
    t = fields.check_frame(t)
    if t == 0:
        return a.copy()
    source = source_index(fields.geometry, fields.inverse(t))
    return ndimage.map_coordinates(a, source, order=1, mode="constant", cval=0.0).astype(np.float32)


def propagate_labels(fields: MotionFields, labels0: Volume, mode: str = "linear",
                     progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> VolumeSequence:
    """A frame-0 label map carried into every frame: a (T, K, J, I) label :class:`VolumeSequence`.

    ``progress`` gets a ``propagate`` event after each frame; ``cancel`` is checked before each.

    Raises:
        InputError: the label map is not on the cine's grid, or an unknown ``mode``.
    """
    cancel = as_cancel_flag(cancel)
    a = _check_labels(fields, labels0)
    out = np.empty((fields.num_frames,) + a.shape, dtype=a.dtype)
    out[0] = a
    for t in range(1, fields.num_frames):
        check_cancel(cancel, "label propagation")
        out[t] = warp_labels(fields, labels0, t, mode)
        report_step(progress, "propagate", t, fields.num_frames - 1)
    return VolumeSequence(out, fields.geometry, name=f"{labels0.name} propagated")


def warp_volume(fields: MotionFields, volume0: Volume, t: int, order: int = 1) -> np.ndarray:
    """Frame 0's image carried into frame ``t`` (e.g. to compare with the real frame t)."""
    if not isinstance(volume0, Volume) or volume0.is_vector or not volume0.geometry.is_close(fields.geometry, 1e-3):
        raise InputError("the volume to warp must be a scalar Volume on the grid of the motion fields")
    t = fields.check_frame(t)
    if t == 0:
        return volume0.array.copy()
    source = source_index(fields.geometry, fields.inverse(t))
    return ndimage.map_coordinates(volume0.array.astype(np.float32), source, order=order, mode="nearest")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total
