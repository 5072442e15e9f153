"""Carry motion generated on the coarse model grid onto the input volume at its full resolution.

The networks generate frames on a model grid coarser than most inputs. Adding their intensity
differences to the input (:func:`MoDiffLib.preprocess.transfer_differences`) blurs every moving
edge into a ghost: the difference of two coarse frames is not a sharp shift of the fine one.
:func:`transfer_motion` instead measures the motion of the generated frames (demons registration
of each frame to frame 0, :func:`.registration.estimate_motion`) and warps the input with it, so
every output frame is the input's own anatomy, moved: nothing is added or blurred, and voxels the
model leaves still stay bit-identical where the measured displacement is zero.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..preprocess import cast_like, resample
from ..progress import CancelFlag, ProgressCallback, as_cancel_flag, check_cancel, report_step
from ..volume import Geometry, Volume, VolumeSequence
from .anatomy import resample_nearest_border
from .fields import MotionFields
from .registration import RegistrationSettings, estimate_motion

#: Registration of generated frames: they are in the model's normalised range [-1, 1].
GENERATED_SETTINGS = RegistrationSettings(window=(-1.0, 1.0))


def transfer_motion(
    volume: Volume,
    generated: np.ndarray,
    grid: Geometry,
    settings: RegistrationSettings = GENERATED_SETTINGS,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> tuple[np.ndarray, MotionFields]:
    """Output frames on the input grid: the input warped by the motion of the generated frames.

    Args:
        volume: the input (frame 0 of the output, unchanged).
        generated: (T, K, J, I) normalised frames decoded on ``grid``; frame 0 is the model's
            reconstruction of the input.
        grid: the model grid of ``generated``.
        settings: registration parameters for the generated frames.
        progress: a ``motion`` :class:`~MoDiffLib.progress.ProgressEvent` per registered frame.
        cancel: a :class:`~MoDiffLib.progress.CancelFlag` (or a callable), checked before every frame.

    Returns:
        (T, K, J, I) frames on the input's geometry in the input's dtype (frame 0 equals the
        input) and the measured motion on the model grid (Lagrangian, RAS mm).
    """
    cine = VolumeSequence(np.asarray(generated, dtype=np.float32), grid, name="generated")
    fields = estimate_motion(cine, settings, progress=progress, cancel=cancel)
    # outside the model grid nothing moves
    frames, _ = warp_input(volume, fields, beyond="zero", cancel=cancel)
    return frames, fields


#: HU below which a voxel's density follows mass conservation fully (lung parenchyma, air) and
#: above which not at all (soft tissue, vessels, bone); linear in between, so no seam appears.
DENSITY_HU = (-600.0, -200.0)


def field_on_grid(a: np.ndarray, source: Geometry, target: Geometry, beyond: str = "border") -> np.ndarray:
    """A (K, J, I[, C]) field on ``source`` sampled on ``target`` (trilinear); outside ``source``
    continued by its ``border`` value or ``zero``. The field itself where the grids agree."""
    if source.is_close(target, 1e-4):
        return a
    if beyond == "zero":
        return resample(a, source, target, order=1, fill=0.0)
    return resample_nearest_border(a, source, target)


def warp_input(
    volume: Volume,
    fields: MotionFields,
    mass_conservation: bool = False,
    beyond: str = "border",
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> tuple[np.ndarray, MotionFields]:
    """The input moved by ``fields`` (given on any grid, e.g. a coarse anatomy grid) at its full resolution.

    The inverse of each frame's field is computed on the fields' own grid (cheap where that grid
    is coarse) and resampled to the input grid; each output voxel then samples the input once (trilinear).

    Args:
        volume: the input (frame 0 of the output, unchanged).
        fields: Lagrangian displacements frame 0 -> t (RAS mm) on their own grid.
        mass_conservation: CT lung density follows the volume change,
            ``HU' = (HU + 1000) / det J - 1000``, for voxels below :data:`DENSITY_HU` (blended
            linearly inside that range): inhaled lung gets darker, as in a 4D CT.
        beyond: outside the fields' grid, continue them by their ``border`` value, or ``zero``
            (nothing moves there).
        progress: a ``warp`` :class:`~MoDiffLib.progress.ProgressEvent` per frame.
        cancel: a :class:`~MoDiffLib.progress.CancelFlag` (or a callable), checked before every frame.

    Returns:
        (T, K, J, I) frames on the input's geometry in the input's dtype (frame 0 equals the
        input) and the fields resampled onto the input grid.
    """
    cancel = as_cancel_flag(cancel)
    target = volume.geometry
    out = np.empty((fields.num_frames, *target.shape_kji), dtype=volume.array.dtype)
    out[0] = volume.array
    base = volume.array.astype(np.float32)
    fine = np.zeros((fields.num_frames, *target.shape_kji, 3), dtype=np.float32)
    ras_to_index = np.linalg.inv(target.ijk_to_ras()[:3, :3]).astype(np.float32)
    index = np.indices(target.shape_kji, dtype=np.float32)  # (k, j, i)
    lo, hi = DENSITY_HU
    for t in range(1, fields.num_frames):
        check_cancel(cancel, "motion transfer")

        def to_target(a: np.ndarray) -> np.ndarray:
            return field_on_grid(a, fields.geometry, target, beyond)

        fine[t] = to_target(fields.displacements[t])
        # Eulerian field of frame t (where each frame-t point was in frame 0) on the input grid
        step = to_target(fields.inverse(t)) @ ras_to_index.T  # (i, j, k) index units
        source = [index[0] + step[..., 2], index[1] + step[..., 1], index[2] + step[..., 0]]
        moved = ndimage.map_coordinates(base, source, order=1, mode="nearest")
        if mass_conservation:
            det = np.clip(to_target(fields.jacobian_determinant(t)), 0.25, 4.0)
            det_t = ndimage.map_coordinates(det, source, order=1, mode="nearest")
            w = np.clip((hi - moved) / (hi - lo), 0.0, 1.0)  # of the moved value: tissue stays exact
            moved = moved + w * ((moved + 1000.0) / det_t - 1000.0 - moved)
        out[t] = cast_like(moved, volume.array.dtype)
        report_step(progress, "warp", t, fields.num_frames - 1)
    return out, MotionFields(fine, target, dict(fields.info))


def carry_labels(
    labels0: Volume,
    fields: MotionFields,
    mode: str = "linear",
    beyond: str = "border",
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> VolumeSequence:
    """A frame-0 label map on the input grid carried into every frame by ``fields`` given on any grid.

    Each frame's inverse field is computed on the fields' own grid and resampled onto the labels'
    grid exactly as :func:`warp_input` does for the images (same ``beyond``), so the labels of
    frame t lie on the anatomy of frame t of the cine made with the same fields.

    Args:
        labels0: whole-number labels on the input grid (see :func:`MoDiffLib.labelmap.check_label_map`).
        fields: Lagrangian displacements frame 0 -> t (RAS mm), e.g. on a model's coarse anatomy grid.
        mode: ``linear`` or ``nearest`` (:func:`~.propagate.warp_label_array`).
        beyond: as :func:`warp_input`.
        progress: a ``propagate`` :class:`~MoDiffLib.progress.ProgressEvent` per frame.
        cancel: checked before every frame.

    Returns:
        (T, K, J, I) labels of the input's dtype on the input's grid; frame 0 is ``labels0``.
    """
    from .propagate import LABEL_MODES, source_index, warp_label_array

    if mode not in LABEL_MODES:
        raise InputError(f"unknown label propagation mode {mode!r}; choose one of {', '.join(LABEL_MODES)}")
    if beyond not in ("border", "zero"):
        raise InputError(f"beyond must be 'border' or 'zero', got {beyond!r}")
    cancel = as_cancel_flag(cancel)
    target = labels0.geometry
    a = labels0.array
    out = np.empty((fields.num_frames, *a.shape), dtype=a.dtype)
    out[0] = a
    for t in range(1, fields.num_frames):
        check_cancel(cancel, "label propagation")
        inverse = field_on_grid(fields.inverse(t), fields.geometry, target, beyond)
        reach_voxels = float(np.linalg.norm(fields.displacements[t], axis=-1).max()) / min(target.spacing)
        out[t] = warp_label_array(a, source_index(target, inverse), mode, reach_voxels)
        report_step(progress, "propagate", t, fields.num_frames - 1)
    return VolumeSequence(out, target, name=f"{labels0.name} labels", index_name="frame")
