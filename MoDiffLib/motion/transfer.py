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

from ..preprocess import cast_like, resample
from ..volume import Geometry, Volume, VolumeSequence
from .fields import CancelFlag, MotionFields, ProgressCallback, check_cancel
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
        progress: ``progress(done, total, message)`` per registered frame.
        cancel: checked before every frame.

    Returns:
        (T, K, J, I) frames on the input's geometry in the input's dtype (frame 0 equals the
        input) and the measured motion on the model grid (Lagrangian, RAS mm).
    """
    cine = VolumeSequence(np.asarray(generated, dtype=np.float32), grid, name="generated")
    fields = estimate_motion(cine, settings, progress=progress, cancel=cancel)
    target = volume.geometry
    out = np.empty((cine.num_frames, *target.shape_kji), dtype=volume.array.dtype)
    out[0] = volume.array
    base = volume.array.astype(np.float32)
    ras_to_index = np.linalg.inv(target.ijk_to_ras()[:3, :3]).astype(np.float32)
    index = np.indices(target.shape_kji, dtype=np.float32)  # (k, j, i)
    for t in range(1, cine.num_frames):
        check_cancel(cancel, "motion transfer")
        # Eulerian field of frame t (where each frame-t point was in frame 0), resampled to the
        # input grid; outside the model grid nothing moves.
        inverse = fields.inverse(t)
        inverse = np.stack([resample(inverse[..., c], grid, target, order=1, fill=0.0) for c in range(3)], axis=-1)
        step = inverse @ ras_to_index.T  # (i, j, k) index units
        source = [index[0] + step[..., 2], index[1] + step[..., 1], index[2] + step[..., 0]]
        out[t] = cast_like(ndimage.map_coordinates(base, source, order=1, mode="nearest"), volume.array.dtype)
    return out, fields
