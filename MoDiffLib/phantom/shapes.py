"""Analytic shape primitives for the phantoms, evaluated at arbitrary points.

Every primitive returns an approximate *signed distance* in millimetres (negative inside), so
that shapes can be combined (``min`` = union, ``max`` = intersection) and turned into a
partial-volume coverage with :func:`coverage`. All functions are vectorised over point arrays
and keep ``float32`` where their inputs are ``float32``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smoothstep(t: np.ndarray) -> np.ndarray:
    """C1 ramp: 0 for t <= 0, 1 for t >= 1, ``3t^2 - 2t^3`` between."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def coverage(sdf: np.ndarray, width_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel of size ``width_mm`` whose centre has signed distance ``sdf``.

    A linear ramp from 1 (``sdf <= -width/2``) to 0 (``sdf >= +width/2``): the box-filtered edge.
    """
    return np.clip(0.5 - sdf / np.float32(width_mm), 0.0, 1.0).astype(np.float32, copy=False)


class Canvas:
    """Values and labels of points, painted structure by structure (later structures on top).

    Each :meth:`paint` blends the structure's value in by its partial-volume :func:`coverage`
    and gives the points inside it (signed distance < 0) its label.
    """

    def __init__(self, values: np.ndarray, labels: np.ndarray, width_mm: float) -> None:
        self.values = values
        self.labels = labels
        self.width_mm = width_mm

    def paint(self, sdf: np.ndarray, value, label: int | None) -> None:
        """Paint the structure with signed distance ``sdf`` and ``value`` (scalar or per point)."""
        a = coverage(sdf, self.width_mm)
        self.values = self.values + a * (value - self.values)
        if label is not None:
            self.labels[sdf < 0] = label


def smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum of two surfaces (log-sum-exp with softness ``k`` mm); C-infinity, >= max(a, b)."""
    m = np.maximum(a, b)
    return m + k * np.log(np.exp((a - m) / k) + np.exp((b - m) / k))


def ellipse2d(x: np.ndarray, y: np.ndarray, a: float, b: float, power: float = 2.0) -> np.ndarray:
    """Signed distance (approximate, along the ray from the centre) to a (super)ellipse.

    ``|x/a|^p + |y/b|^p = 1`` centred at the origin; exact on the axes, good to a few per cent
    elsewhere for moderate eccentricity, which is all the anatomy needs.
    """
    ax = np.abs(x) / a
    ay = np.abs(y) / b
    rho = (ax**power + ay**power) ** (1.0 / power)
    r = np.sqrt(x * x + y * y)
    return (rho - 1.0) * r / np.maximum(rho, 1e-6)


def ellipsoid(p_local: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Signed distance (approximate) to an axis-aligned ellipsoid; ``p_local`` has shape (..., 3)."""
    x, y, z = p_local[..., 0], p_local[..., 1], p_local[..., 2]
    ra, rb, rc = (float(v) for v in radii)
    rho = np.sqrt((x / ra) ** 2 + (y / rb) ** 2 + (z / rc) ** 2)
    r = np.sqrt(x * x + y * y + z * z)
    return (rho - 1.0) * r / np.maximum(rho, 1e-6)


def segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from points ``p`` (..., 3) to the segment a-b, and the position 0..1 along it."""
    ab = (b - a).astype(p.dtype)
    denom = float(np.dot(ab, ab))
    ap = p - a.astype(p.dtype)
    t = np.clip((ap @ ab) / max(denom, 1e-12), 0.0, 1.0)
    d = ap - t[..., None] * ab
    return np.sqrt(np.sum(d * d, axis=-1)), t


def capsule(p: np.ndarray, a: np.ndarray, b: np.ndarray, r0: float, r1: float | None = None) -> np.ndarray:
    """Signed distance (approximate) to a tube from a to b whose radius tapers from r0 to r1."""
    d, t = segment_distance(p, np.asarray(a, float), np.asarray(b, float))
    r1 = r0 if r1 is None else r1
    return d - (r0 + (r1 - r0) * t)


def rotation_matrix(axis_angles: tuple[float, float, float]) -> np.ndarray:
    """Rotation R = Rz @ Ry @ Rx from three angles in radians."""
    ax, ay, az = axis_angles
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def apply_matrix(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``points @ matrix`` for (N, 3) points and a 3x3 matrix, in the points' float dtype.

    Written with ``einsum`` (no BLAS call): BLAS thread start-up and contention made small
    products erratically slow inside the frame worker threads.
    """
    m = np.asarray(matrix, dtype=points.dtype)
    return np.einsum("ni,ij->nj", points, m)


def smooth_noise(shape: tuple[int, ...], sigma_voxels: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation (float32)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    field = ndimage.gaussian_filter(white, sigma_voxels, mode="wrap")
    std = float(field.std())
    return (field / max(std, 1e-6)).astype(np.float32)


class GridSampler:
    """Trilinear sampling of several scalar fields stored on one oriented regular grid.

    The fields are arrays indexed ``[k, j, i]``; voxel (0, 0, 0) sits at ``origin`` (local mm),
    ``axes`` (columns) are the local directions of i, j, k and ``spacing`` their step (i, j, k).
    Points outside the grid are clamped to the border. The fields are stored channel-last so
    that one gather per cube corner fetches all of them.
    """

    def __init__(self, fields: dict[str, np.ndarray], origin: np.ndarray, spacing: np.ndarray, axes: np.ndarray):
        shapes = {f.shape for f in fields.values()}
        if len(shapes) != 1:
            raise ValueError("all sampled fields must share one grid")
        self.shape_kji = next(iter(shapes))
        self.names = list(fields)
        self.data = np.stack([np.asarray(fields[n], dtype=np.float32).ravel() for n in self.names], axis=1)
        self.origin = np.asarray(origin, dtype=np.float64)
        # ijk = inv(axes * spacing) @ (p - origin)
        self.to_ijk = np.linalg.inv(np.asarray(axes, float) * np.asarray(spacing, float)[None, :])
        self._to_ijk_t32 = np.ascontiguousarray(self.to_ijk.T, dtype=np.float32)
        self._origin32 = self.origin.astype(np.float32)

    def field(self, name: str) -> np.ndarray:
        """The stored values of one field at the grid voxels (flat, [k, j, i] order)."""
        return self.data[:, self.names.index(name)]

    def sample(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Interpolated values of every field at ``points`` (N, 3), as a name -> (N,) dict."""
        p = np.asarray(points, dtype=np.float32)
        ijk = apply_matrix(p - self._origin32, self._to_ijk_t32)
        nk, nj, ni = self.shape_kji
        limits = np.array([ni - 1, nj - 1, nk - 1], dtype=np.float32)
        np.clip(ijk, 0.0, limits, out=ijk)
        base = np.minimum(np.floor(ijk), np.maximum(limits - 1.0, 0.0))
        frac = ijk - base  # float32
        base = base.astype(np.int64)
        steps = (1 if ni > 1 else 0, ni if nj > 1 else 0, ni * nj if nk > 1 else 0)
        flat0 = (base[:, 2] * nj + base[:, 1]) * ni + base[:, 0]
        acc = np.zeros((len(p), self.data.shape[1]), dtype=np.float32)
        fx, fy, fz = frac[:, 0:1], frac[:, 1:2], frac[:, 2:3]
        gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
        for dk, wz in ((0, gz), (1, fz)):
            for dj, wy in ((0, gy), (1, fy)):
                wzy = wz * wy
                for di, wx in ((0, gx), (1, fx)):
                    corner = np.take(self.data, flat0 + (dk * steps[2] + dj * steps[1] + di * steps[0]), axis=0)
                    corner *= wzy * wx
                    acc += corner
        return {n: acc[:, c] for c, n in enumerate(self.names)}


def rasterise_tubes(tubes, points_of_index, shape_kji: tuple[int, int, int], to_index: np.ndarray,
                    margin_mm: float = 6.0) -> np.ndarray:
    """Signed distance (mm) to a union of tapered tubes on a grid, clamped to +-``margin_mm``.

    Args:
        tubes: iterable of ``(start, end, r_start, r_end)`` in local mm.
        points_of_index: function ``(k, j, i) index arrays -> (..., 3) local mm`` of voxel centres.
        to_index: 4x4 matrix mapping local mm to continuous (i, j, k).
        margin_mm: distances are exact within this band around the walls; they are only needed
            there (sub-voxel edges after interpolation, and the sign for labels).
    """
    sd = np.full(shape_kji, margin_mm, dtype=np.float32)
    nk, nj, ni = shape_kji
    lin = to_index[:3, :3]
    for start, end, r0, r1 in tubes:
        start, end = np.asarray(start, float), np.asarray(end, float)
        reach = max(r0, r1) + margin_mm
        lo, hi = np.minimum(start, end) - reach, np.maximum(start, end) + reach
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        ijk = corners @ lin.T + to_index[:3, 3]
        i0, j0, k0 = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
        i1, j1, k1 = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, [ni, nj, nk])
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            continue
        kk, jj, ii = np.meshgrid(np.arange(k0, k1), np.arange(j0, j1), np.arange(i0, i1), indexing="ij")
        p = points_of_index(kk, jj, ii)
        ab = end - start
        t = np.clip(((p - start) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        d = np.linalg.norm(p - start - t[..., None] * ab, axis=-1)
        local = np.maximum(d - (r0 + (r1 - r0) * t), -margin_mm).astype(np.float32)
        view = sd[k0:k1, j0:j1, i0:i1]
        np.minimum(view, local, out=view)
    return sd
