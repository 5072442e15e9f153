"""Default voxel grids of the phantoms (realistic geometry: oriented, non-zero origin).

* Lung CT: axial slices, 128 x 128 x 64 voxels of 2.7 x 2.7 x 4 mm (345.6 x 345.6 x 256 mm), k
  pointing superior, direction diag(-1, -1, 1) in RAS (i towards the patient's left, j towards
  posterior: how a standard axial CT is stored and shown in Slicer).
* Cardiac cine MR: a short-axis stack, 128 x 128 x 16 voxels of 1.5 x 1.5 x 8 mm, oblique: k runs
  along the LV long axis from apex to base, i and j span the short-axis plane.

A custom ``shape_ijk`` keeps the field of view and changes the spacing. The anatomy is defined in
RAS millimetres, so any grid (these or another one) samples the same patient.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..volume import Geometry

#: RAS position (mm) of the thorax centre: thorax-local coordinates are RAS minus this.
THORAX_CENTER_RAS = np.array([2.5, -18.0, -165.0])

LUNG_SHAPE_IJK = (128, 128, 64)
LUNG_FOV_MM = (345.6, 345.6, 256.0)
#: grid centre in thorax-local mm (slightly posterior: the table side)
_LUNG_GRID_CENTER_LOCAL = np.array([0.0, -6.0, 0.0])
_LUNG_DIRECTION = np.diag([-1.0, -1.0, 1.0])

CARDIAC_SHAPE_IJK = (128, 128, 16)
CARDIAC_FOV_MM = (192.0, 192.0, 128.0)
#: LV long axis from base to apex, RAS (left, anterior, inferior)
CARDIAC_LONG_AXIS_RAS = np.array([-0.58, 0.48, -0.66]) / np.linalg.norm([-0.58, 0.48, -0.66])
#: point of the LV long axis (thorax-local mm) taken as the origin of the heart frame
CARDIAC_AXIS_POINT_LOCAL = np.array([-20.0, 24.0, -40.0])
#: grid centre in heart-frame coordinates (a, b, c) mm
_CARDIAC_GRID_CENTER_HEART = np.array([-8.0, 6.0, -10.0])

#: Limits of a custom grid size (per axis) so that a phantom stays a phantom, not a memory bomb.
MIN_SHAPE, MAX_SHAPE = 8, 512


def cardiac_frame() -> np.ndarray:
    """3x3 matrix whose columns are the heart-frame axes (a, b, c) in RAS; c points apex -> base.

    a is the patient's left projected onto the short-axis plane, b = c x a (right-handed).
    """
    c = -CARDIAC_LONG_AXIS_RAS
    left = np.array([-1.0, 0.0, 0.0])
    a = left - (left @ c) * c
    a /= np.linalg.norm(a)
    b = np.cross(c, a)
    return np.stack([a, b, c], axis=1)


def _check_shape(shape_ijk, default) -> tuple[int, int, int]:
    if shape_ijk is None:
        return tuple(default)
    try:
        shape = tuple(int(s) for s in shape_ijk)
        exact = all(float(s) == int(s) for s in shape_ijk)
    except (TypeError, ValueError):
        raise InputError(f"shape_ijk must be three integers (i, j, k), got {shape_ijk!r}") from None
    if len(shape) != 3 or not exact:
        raise InputError(f"shape_ijk must be three integers (i, j, k), got {shape_ijk!r}")
    if min(shape) < MIN_SHAPE or max(shape) > MAX_SHAPE:
        raise InputError(
            f"shape_ijk {shape} out of range: each size must be in [{MIN_SHAPE}, {MAX_SHAPE}] voxels"
        )
    return shape


def _grid(shape_ijk, fov, direction, center_ras) -> Geometry:
    n = np.asarray(shape_ijk, float)
    spacing = np.asarray(fov, float) / n
    origin = np.asarray(center_ras, float) - direction @ (spacing * (n - 1) / 2.0)
    return Geometry(tuple(int(s) for s in shape_ijk[::-1]), tuple(spacing), tuple(origin), tuple(map(tuple, direction)))


def lung_grid(shape_ijk: tuple[int, int, int] | None = None) -> Geometry:
    """The lung CT grid (default 128 x 128 x 64 voxels, field of view 345.6 x 345.6 x 256 mm)."""
    shape = _check_shape(shape_ijk, LUNG_SHAPE_IJK)
    return _grid(shape, LUNG_FOV_MM, _LUNG_DIRECTION, THORAX_CENTER_RAS + _LUNG_GRID_CENTER_LOCAL)


def cardiac_grid(shape_ijk: tuple[int, int, int] | None = None) -> Geometry:
    """The cardiac short-axis grid (default 128 x 128 x 16 voxels, field of view 192 x 192 x 128 mm)."""
    shape = _check_shape(shape_ijk, CARDIAC_SHAPE_IJK)
    frame = cardiac_frame()
    center = THORAX_CENTER_RAS + CARDIAC_AXIS_POINT_LOCAL + frame @ _CARDIAC_GRID_CENTER_HEART
    return _grid(shape, CARDIAC_FOV_MM, frame, center)


LUNG_GRID: Geometry = lung_grid()
CARDIAC_GRID: Geometry = cardiac_grid()
