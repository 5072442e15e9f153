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
import torch

from ..errors import InputError
from ..preprocess import cast_like, resample
from ..progress import CancelFlag, ProgressCallback, as_cancel_flag, check_cancel, report_step
from ..volume import Geometry, Volume, VolumeSequence
from .anatomy import resample_nearest_border
from .fields import MotionFields
from .registration import RegistrationSettings, estimate_motion
from .sampling import SLAB_VOXELS, as_tensor, index_map, inside, sample, slab_index, slabs

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
    device: str | torch.device | None = None,
    slab_voxels: int = SLAB_VOXELS,
) -> tuple[np.ndarray, MotionFields]:
    """The input moved by ``fields`` (given on any grid, e.g. a coarse anatomy grid) at its full resolution.

    The inverse of each frame's field is computed on the fields' own grid (cheap where that grid
    is coarse) and sampled on the input grid; each output voxel then samples the input once
    (trilinear, :mod:`.sampling`: torch, on ``device``).

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
        device: where the sampling runs (default the CPU); the results come back as numpy arrays.
        slab_voxels: output voxels sampled at a time (bounds the temporary memory on large inputs).

    Returns:
        (T, K, J, I) frames on the input's geometry in the input's dtype (frame 0 equals the
        input) and the fields resampled onto the input grid.
    """
    if beyond not in ("border", "zero"):
        raise InputError(f"beyond must be 'border' or 'zero', got {beyond!r}")
    cancel = as_cancel_flag(cancel)
    dev = torch.device("cpu" if device is None else device)
    target, grid = volume.geometry, fields.geometry
    out = np.empty((fields.num_frames, *target.shape_kji), dtype=volume.array.dtype)
    out[0] = volume.array
    fine = np.zeros((fields.num_frames, *target.shape_kji, 3), dtype=np.float32)
    moved = np.empty(target.shape_kji, dtype=np.float32)
    ras_to_index = torch.tensor(np.linalg.inv(target.ijk_to_ras()[:3, :3]), dtype=torch.float32, device=dev)
    matrix, offset = index_map(grid, target, dev)
    lo, hi = DENSITY_HU
    with torch.no_grad():
        base = as_tensor(volume.array, dev)
        for t in range(1, fields.num_frames):
            check_cancel(cancel, "motion transfer")
            # displacement and its inverse (the Eulerian field: where each frame-t point was in frame 0)
            parts = [fields.displacements[t], fields.inverse(t)]
            coarse = as_tensor(np.concatenate(parts, axis=-1), dev)
            det = as_tensor(fields.jacobian_determinant(t), dev) if mass_conservation else None
            for k0, k1 in slabs(target.shape_kji, slab_voxels):
                index = slab_index(target.shape_kji, k0, k1, dev)
                at_grid = index @ matrix.T + offset
                vectors = sample(coarse, at_grid)  # (6, k, j, i) RAS mm
                if beyond == "zero":
                    vectors = vectors * inside(at_grid, grid.shape_kji)
                fine[t, k0:k1] = vectors[:3].permute(1, 2, 3, 0).cpu().numpy()
                source = index + torch.einsum("ab,bkji->kjia", ras_to_index, vectors[3:])
                value = sample(base, source)[0]
                if det is not None:
                    at_source = source @ matrix.T + offset
                    ratio = sample(det, at_source)[0]
                    if beyond == "zero":
                        ratio = torch.where(inside(at_source, grid.shape_kji), ratio, torch.ones_like(ratio))
                    ratio = torch.clamp(ratio, 0.25, 4.0)
                    w = torch.clamp((hi - value) / (hi - lo), 0.0, 1.0)  # of the moved value: tissue stays exact
                    value = value + w * ((value + 1000.0) / ratio - 1000.0 - value)
                moved[k0:k1] = value.cpu().numpy()
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
