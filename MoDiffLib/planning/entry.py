"""Suggest an entry point on the skin: where a straight line from the target leaves the body.

Used by the demo and the tests to set up a plan on a phantom without clicking; a clinician
places the entry in Slicer instead.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .inputs import check_point


def skin_entry(labels0: Volume, target_ras, direction_ras, depth_mm: float = 1.0,
               min_path_mm: float = 20.0) -> np.ndarray | None:
    """The point ``depth_mm`` inside the skin where the ray target + s * direction leaves the body.

    The body is every voxel with a non-zero label in ``labels0`` (a label map of frame 0 that
    covers the body, such as a phantom's). The ray is followed in steps of a quarter of the
    smallest voxel; the skin is the last body voxel before the ray stays outside the body (more
    than 10 mm of background) or leaves the volume.

    Returns:
        The entry point (3,) RAS, or ``None`` when the ray leaves the volume inside the body or
        the path would be shorter than ``min_path_mm``.
    """
    if not isinstance(labels0, Volume) or labels0.is_vector:
        raise InputError("the body label map must be a scalar Volume")
    target = check_point(target_ras, "the target point")
    direction = check_point(direction_ras, "the direction")
    norm = float(np.linalg.norm(direction))
    if norm == 0:
        raise InputError("the direction must not be zero")
    direction = direction / norm
    g = labels0.geometry
    step = 0.25 * min(g.spacing)
    size = np.array(g.shape_kji[::-1])
    last_inside = None
    outside_run = 0.0
    s = 0.0
    while True:
        p = target + s * direction
        ijk = np.rint(g.ras_to_ijk_points(p)).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= size):
            break
        if labels0.array[ijk[2], ijk[1], ijk[0]] != 0:
            last_inside, outside_run = s, 0.0
        else:
            outside_run += step
            if last_inside is not None and outside_run > 10.0:
                break
        s += step
    if last_inside is None or outside_run == 0.0:  # never inside, or the volume ends inside the body
        return None
    distance = max(last_inside - depth_mm, 0.0)
    if distance < min_path_mm:
        return None
    return target + distance * direction
