"""Bring a volume onto a model's grid and intensity range, and bring generated frames back.

The models see every input in one canonical frame: the grid stored in the model config
(shape, spacing and orientation), centred on the centre of the input volume. Resampling is a
single affine map in index space (input IJK <- model IJK), so any input orientation, spacing
or oblique direction is handled by the same code, and the inverse map restores the input's
exact geometry.

Generated frames are returned to the input by **difference transfer**: frame t of the output
is the input plus the model's change from its own frame 0 to frame t, resampled onto the input
grid. Frame 0 is therefore the input itself (bit-exact), the input's resolution and its
intensities outside the model's window are kept, and anything outside the model's field of view
stays still rather than turning into padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import InputError
from .volume import Geometry, Volume


@dataclass(frozen=True)
class IntensityWindow:
    """Linear map of an input intensity window ``[low, high]`` onto ``[-1, 1]`` (clipped)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.high > self.low):
            raise InputError(f"intensity window must have low < high, got [{self.low}, {self.high}]")

    def normalise(self, array: np.ndarray) -> np.ndarray:
        a = (np.asarray(array, dtype=np.float32) - self.low) / (self.high - self.low)
        return np.clip(a * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)

    def denormalise(self, array: np.ndarray) -> np.ndarray:
        return ((np.asarray(array, dtype=np.float32) + 1.0) * 0.5 * (self.high - self.low) + self.low).astype(
            np.float32
        )

    def scale(self, array: np.ndarray) -> np.ndarray:
        """Convert a *difference* of normalised intensities into input units."""
        return (np.asarray(array, dtype=np.float32) * 0.5 * (self.high - self.low)).astype(np.float32)


def window_for(volume: Volume, method: str, low: float, high: float) -> IntensityWindow:
    """The intensity window of a recipe for this volume.

    ``method="fixed"`` uses ``[low, high]`` in input units (CT in HU). ``method="percentile"``
    uses the ``low``-th and ``high``-th percentiles of the volume's voxels (MR, whose units are
    arbitrary per scan).
    """
    if method == "fixed":
        return IntensityWindow(float(low), float(high))
    if method == "percentile":
        lo, hi = np.percentile(volume.array, [low, high])
        if hi <= lo:
            raise InputError(f"{volume.name} has (almost) constant intensities ({lo:g}); nothing to animate")
        return IntensityWindow(float(lo), float(hi))
    raise InputError(f"unknown intensity recipe '{method}' (expected 'fixed' or 'percentile')")


def model_grid(input_geometry: Geometry, shape_kji: tuple[int, int, int], spacing_ijk: tuple[float, float, float],
               direction_ras: np.ndarray) -> Geometry:
    """The model grid (shape, spacing, orientation) centred on the input volume's centre."""
    in_size = np.asarray(input_geometry.shape_kji[::-1], dtype=float)
    centre_ras = input_geometry.ijk_to_ras_points((in_size - 1.0) / 2.0)
    direction = np.asarray(direction_ras, dtype=float)
    spacing = np.asarray(spacing_ijk, dtype=float)
    half_extent = direction @ (spacing * (np.asarray(shape_kji[::-1], dtype=float) - 1.0) / 2.0)
    return Geometry(tuple(shape_kji), tuple(spacing), tuple(centre_ras - half_extent), tuple(map(tuple, direction)))


def resample(array: np.ndarray, source: Geometry, target: Geometry, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Resample voxels ``array[k, j, i]`` on ``source`` onto the ``target`` grid (RAS-exact).

    Args:
        array: (K, J, I) scalar or (K, J, I, C) vector voxels on ``source``.
        order: 0 nearest (labels), 1 linear (images, fields).
        fill: value for target voxels outside the source.

    Returns:
        float32 array of ``target.shape_kji`` (plus the component axis for vectors).
    """
    a = np.asarray(array)
    if a.shape[:3] != source.shape_kji:
        raise InputError(f"array shape {a.shape[:3]} does not match its geometry {source.shape_kji}")
    # Index-space map target (i,j,k) -> source (i,j,k), then permuted to the arrays' (k,j,i) order.
    m_ijk = source.ras_to_ijk() @ target.ijk_to_ras()
    perm = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)
    matrix = perm @ m_ijk[:3, :3] @ perm
    offset = perm @ m_ijk[:3, 3]
    if np.allclose(matrix, np.eye(3), atol=1e-9) and np.allclose(offset, 0.0, atol=1e-9) and a.shape[:3] == target.shape_kji:
        return a.astype(np.float32, copy=True)

    def one(channel: np.ndarray) -> np.ndarray:
        return ndimage.affine_transform(
            channel.astype(np.float32, copy=False), matrix, offset, output_shape=target.shape_kji,
            order=order, mode="constant", cval=fill, prefilter=False,
        )

    if a.ndim == 3:
        return one(a)
    return np.stack([one(a[..., c]) for c in range(a.shape[-1])], axis=-1)


def to_model(volume: Volume, grid: Geometry, window: IntensityWindow) -> np.ndarray:
    """Input volume -> normalised float32 (K, J, I) array on the model grid (outside = window low)."""
    return window.normalise(resample(volume.array, volume.geometry, grid, order=1, fill=window.low))


def transfer_differences(volume: Volume, generated: np.ndarray, grid: Geometry, window: IntensityWindow) -> np.ndarray:
    """Output frames on the input grid from generated normalised frames on the model grid.

    Args:
        volume: the input (frame 0 of the output, unchanged).
        generated: (T, K, J, I) normalised frames decoded on ``grid``; frame 0 is the model's
            reconstruction of the input.

    Returns:
        (T, K, J, I) frames on the input's geometry in the input's dtype; frame 0 equals the input.
    """
    g = np.asarray(generated, dtype=np.float32)
    out = np.empty((g.shape[0], *volume.geometry.shape_kji), dtype=volume.array.dtype)
    out[0] = volume.array
    base = volume.array.astype(np.float32)
    for t in range(1, g.shape[0]):
        change = resample(window.scale(g[t] - g[0]), grid, volume.geometry, order=1, fill=0.0)
        out[t] = cast_like(base + change, volume.array.dtype)
    return out


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip into an integer dtype's range; floats pass through."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)
