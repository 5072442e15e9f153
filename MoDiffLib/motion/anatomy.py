"""A normalised anatomical frame: the box around the moving organs of one input, as a coarse grid.

A population motion pattern stored in scanner coordinates fails as soon as a patient lies a few
centimetres elsewhere, is smaller, or was scanned with another field of view. Motion models in
MoDiff therefore live on an **anatomy grid**: a coarse grid of fixed shape spanning the box around
the moving organs found in frame 0 (with margins), so that grid voxel (k, j, i) means "the same
place in the anatomy" for every patient:

* CT (lung): the lungs, i.e. air-like voxels (< -400 HU) that are not connected to the air around
  the body, widened by :data:`LUNG_MARGINS` (more below, where the abdomen follows the
  diaphragm). Axes are RAS-aligned (LPS order, like a CT scanner writes) whatever the input's
  orientation, so that "superior" is the same grid axis for every input.
* MR (cardiac cine): the foreground of the image in its own acquisition axes (a short-axis stack
  is already in the heart's frame), widened by :data:`MR_MARGINS`.

Displacements on an anatomy grid are RAS mm, like every field in MoDiff.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..volume import Geometry, Volume

#: Lung threshold (HU): parenchyma and air are below it, soft tissue above.
LUNG_THRESHOLD_HU = -400.0
#: Margins as fractions of the box size per RAS axis, (low, high): (R->L is handled by symmetry)
#: LR, AP (posterior, anterior), SI (inferior, superior).
LUNG_MARGINS = ((0.08, 0.08), (0.12, 0.12), (0.30, 0.08))
#: Margins per grid axis (i, j, k) of an MR box.
MR_MARGINS = ((0.05, 0.05), (0.05, 0.05), (0.0, 0.0))
#: Orientation of CT anatomy grids (columns: i, j, k in RAS): LPS-aligned, as scanners write CT.
CT_DIRECTION_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class AnatomyBox:
    """The box of one input's moving anatomy and how it was found.

    Attributes:
        low_local, high_local: box corners (mm) along the grid axes of ``direction`` (the box
            spans ``direction @ [low, high]`` in RAS).
        direction: 3x3 RAS columns of the grid axes.
        method: how the box was found (``lungs``, ``body``, ``foreground``).
    """

    low_local: tuple[float, float, float]
    high_local: tuple[float, float, float]
    direction: tuple[tuple[float, ...], ...]
    method: str

    def grid(self, shape_kji: tuple[int, int, int]) -> Geometry:
        """The anatomy grid of ``shape_kji`` voxels whose voxel *edges* span the box."""
        low, high = np.asarray(self.low_local), np.asarray(self.high_local)
        size_ijk = np.asarray(shape_kji[::-1], dtype=float)
        spacing = (high - low) / size_ijk
        direction = np.asarray(self.direction)
        origin = direction @ (low + 0.5 * spacing)
        return Geometry(tuple(shape_kji), tuple(spacing), tuple(origin), tuple(map(tuple, direction)))

    @property
    def size_mm(self) -> tuple[float, float, float]:
        """Box size (mm) along the grid axes (i, j, k)."""
        return tuple(float(h - l) for l, h in zip(self.low_local, self.high_local))  # type: ignore[return-value]

    def describe(self) -> dict:
        return {"method": self.method, "size_mm": [round(v, 2) for v in self.size_mm]}


def _largest_components(mask: np.ndarray, count: int, min_fraction: float = 0.05) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:count]
    keep = [i + 1 for i in order if sizes[i] >= min_fraction * sizes[order[0]]]
    return np.isin(labels, keep)


def lung_mask(volume: Volume, threshold_hu: float = LUNG_THRESHOLD_HU) -> np.ndarray:
    """Air-like voxels of a CT not connected to the in-plane image border (lungs, airways), (K, J, I) bool."""
    low = np.asarray(volume.array) < threshold_hu
    labels, n = ndimage.label(low)
    if n == 0:
        return low
    # only the in-plane faces: the lungs often reach the first or last slice of a thorax CT
    border = np.unique(np.concatenate([
        labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    inside = low & ~np.isin(labels, border[border > 0])
    return _largest_components(inside, 3)


def foreground_mask(volume: Volume) -> np.ndarray:
    """Voxels brighter than a tenth of the 99th percentile, largest component, (K, J, I) bool."""
    a = np.asarray(volume.array, dtype=np.float32)
    hi = float(np.percentile(a, 99.0))
    lo = float(np.percentile(a, 1.0))
    return _largest_components(a > lo + 0.1 * (hi - lo), 1)


def _box_of(mask: np.ndarray, geometry: Geometry, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corners (mm, along ``direction``'s axes) of the voxels of ``mask``, voxel extents included."""
    kji = np.argwhere(mask)
    lo_ijk = kji.min(axis=0)[::-1] - 0.5
    hi_ijk = kji.max(axis=0)[::-1] + 0.5
    corners = np.array(list(itertools.product(*zip(lo_ijk, hi_ijk))), dtype=float)
    local = geometry.ijk_to_ras_points(corners) @ direction
    return local.min(axis=0), local.max(axis=0)


def anatomy_box(volume: Volume, modality: str) -> AnatomyBox:
    """The box of the moving anatomy of ``volume`` (CT: the lungs; MR: the foreground).

    Raises:
        InputError: nothing usable was found (an empty or constant image).
    """
    a = np.asarray(volume.array)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise InputError(f"{volume.name} is empty or has NaN/inf voxels; no anatomy can be found in it")
    if modality == "CT":
        direction = CT_DIRECTION_RAS
        mask, method, margins = lung_mask(volume), "lungs", LUNG_MARGINS
        # box margins are per RAS axis; along LPS grid axes i (R->L) and j (A->P) low/high swap
        margins = (margins[0][::-1], margins[1][::-1], margins[2])
        if np.count_nonzero(mask) < 0.002 * mask.size:
            mask, method = _largest_components(a > LUNG_THRESHOLD_HU, 1), "body"
    else:
        direction = volume.geometry.direction
        mask, method, margins = foreground_mask(volume), "foreground", MR_MARGINS
    if not mask.any():
        raise InputError(f"{volume.name}: no {method} found in frame 0; cannot place the motion model")
    low, high = _box_of(mask, volume.geometry, direction)
    size = high - low
    low = low - size * np.asarray([m[0] for m in margins])
    high = high + size * np.asarray([m[1] for m in margins])
    high = np.maximum(high, low + 1.0)
    return AnatomyBox(tuple(map(float, low)), tuple(map(float, high)), tuple(map(tuple, direction)), method)


def resample_nearest_border(array: np.ndarray, source: Geometry, target: Geometry, order: int = 1) -> np.ndarray:
    """Resample (K, J, I) or (K, J, I, C) ``array`` from ``source`` onto ``target``; outside the
    source the nearest border value is used (a motion field continues smoothly beyond its box)."""
    a = np.asarray(array, dtype=np.float32)
    m_ijk = source.ras_to_ijk() @ target.ijk_to_ras()
    perm = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)
    matrix = perm @ m_ijk[:3, :3] @ perm
    offset = perm @ m_ijk[:3, 3]

    def one(channel: np.ndarray) -> np.ndarray:
        return ndimage.affine_transform(channel, matrix, offset, output_shape=target.shape_kji, order=order,
                                        mode="nearest", prefilter=False)

    if a.ndim == 3:
        return one(a)
    return np.stack([one(a[..., c]) for c in range(a.shape[-1])], axis=-1)
