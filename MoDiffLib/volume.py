"""In-memory volumes with exact geometry.

Coordinate convention (stated once, used everywhere in MoDiff):

* World coordinates are **RAS** in millimetres, as in 3D Slicer. ITK-based files
  (NRRD, NIfTI via SimpleITK, MHA, DICOM) store **LPS**; :mod:`MoDiffLib.io` converts
  explicitly on read and write, nowhere else.
* Voxel arrays are indexed ``array[k, j, i]`` (slice, row, column), which is the order
  of ``slicer.util.arrayFromVolume`` and ``SimpleITK.GetArrayFromImage``.
* ``spacing`` is given in **(i, j, k)** order (as ``vtkMRMLVolumeNode.GetSpacing``),
  ``origin_ras`` is the RAS position of the centre of voxel (0, 0, 0), and the columns of
  ``direction_ras`` are the unit RAS directions of the i, j and k axes. Hence::

      ras = direction_ras @ (spacing * [i, j, k]) + origin_ras
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

#: Largest voxel count MoDiff accepts for one 3D volume (a 1024^3 int16 CT is 2 GiB).
MAX_VOXELS = 1024**3


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a volume: shape, spacing, origin and direction in RAS.

    Attributes:
        shape_kji: array shape ``(K, J, I)``.
        spacing: voxel size in mm, ``(i, j, k)`` order.
        origin_ras: RAS position (mm) of the centre of voxel (0, 0, 0).
        direction_ras: 3x3 matrix whose columns are the RAS unit vectors of i, j, k.
    """

    shape_kji: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_ras: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction_ras: tuple[tuple[float, ...], ...] = field(
        default=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    )

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape_kji)
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin_ras)
        direction = np.asarray(self.direction_ras, dtype=float)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"a 3D grid needs three positive sizes, got shape {shape}")
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise InputError(f"voxel spacing must be three positive numbers, got {spacing}")
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise InputError(f"origin must be three finite numbers, got {origin}")
        if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
            raise InputError("direction must be a finite 3x3 matrix")
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
            raise InputError("direction matrix must be orthonormal (unit, perpendicular columns)")
        object.__setattr__(self, "shape_kji", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin_ras", origin)
        object.__setattr__(self, "direction_ras", tuple(tuple(float(v) for v in row) for row in direction))

    # -- matrices -------------------------------------------------------------------
    @property
    def direction(self) -> np.ndarray:
        """Direction as a float 3x3 array (columns: i, j, k axes in RAS)."""
        return np.array(self.direction_ras, dtype=float)

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to (R, A, S, 1) in mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        m[:3, 3] = self.origin_ras
        return m

    def ras_to_ijk(self) -> np.ndarray:
        """Inverse of :meth:`ijk_to_ras`."""
        return np.linalg.inv(self.ijk_to_ras())

    @classmethod
    def from_ijk_to_ras(cls, shape_kji: tuple[int, int, int], matrix: np.ndarray) -> "Geometry":
        """Build a geometry from a 4x4 IJK-to-RAS matrix (as Slicer's ``GetIJKToRASMatrix``)."""
        m = np.asarray(matrix, dtype=float)
        if m.shape != (4, 4):
            raise InputError(f"IJK-to-RAS must be 4x4, got {m.shape}")
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        if np.any(spacing <= 0):
            raise InputError("IJK-to-RAS matrix has a zero-length axis")
        direction = m[:3, :3] / spacing[None, :]
        return cls(tuple(shape_kji), tuple(spacing), tuple(m[:3, 3]), tuple(map(tuple, direction)))

    # -- points -----------------------------------------------------------------------
    def ras_to_ijk_points(self, points_ras: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices of RAS points; ``points_ras`` has shape (..., 3)."""
        p = np.asarray(points_ras, dtype=float)
        m = self.ras_to_ijk()
        return p @ m[:3, :3].T + m[:3, 3]

    def ijk_to_ras_points(self, points_ijk: np.ndarray) -> np.ndarray:
        """RAS positions (mm) of continuous (i, j, k) indices; shape (..., 3)."""
        p = np.asarray(points_ijk, dtype=float)
        m = self.ijk_to_ras()
        return p @ m[:3, :3].T + m[:3, 3]

    def contains_ras(self, points_ras: np.ndarray, margin_voxels: float = 0.5) -> np.ndarray:
        """True for RAS points that lie inside the grid (voxel centres +- ``margin_voxels``)."""
        ijk = self.ras_to_ijk_points(points_ras)
        size_ijk = np.asarray(self.shape_kji[::-1], dtype=float)
        return np.all((ijk >= -margin_voxels) & (ijk <= size_ijk - 1 + margin_voxels), axis=-1)

    def voxel_centers_ras(self) -> np.ndarray:
        """RAS positions of all voxel centres, shape (K, J, I, 3)."""
        k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in self.shape_kji], indexing="ij")
        return self.ijk_to_ras_points(np.stack([i, j, k], axis=-1))

    # -- comparison -----------------------------------------------------------------------
    def is_close(self, other: "Geometry", atol_mm: float = 1e-4) -> bool:
        """Same shape and IJK-to-RAS within ``atol_mm`` (matrix entries compared in mm)."""
        return self.shape_kji == other.shape_kji and bool(
            np.allclose(self.ijk_to_ras(), other.ijk_to_ras(), atol=atol_mm, rtol=0.0)
        )

    def describe(self) -> str:
        """One-line human description, used in error messages."""
        sp = "x".join(f"{s:g}" for s in self.spacing)
        return f"{self.shape_kji[2]}x{self.shape_kji[1]}x{self.shape_kji[0]} voxels of {sp} mm"


def _check_voxels(array: np.ndarray, what: str, components: int | None) -> np.ndarray:
    a = np.asarray(array)
    want_ndim = 3 if components is None else 4
    if a.ndim != want_ndim:
        hint = "a 3D volume" if components is None else f"a 3D volume of {components}-vectors"
        raise InputError(f"{what} must be {hint}, got an array with {a.ndim} dimensions {a.shape}")
    if components is not None and a.shape[-1] != components:
        raise InputError(f"{what} must have {components} components per voxel, got {a.shape[-1]}")
    if a.size == 0:
        raise InputError(f"{what} is empty (shape {a.shape})")
    if a.size > MAX_VOXELS * (components or 1):
        raise InputError(f"{what} is too large ({a.size} values; at most {MAX_VOXELS} voxels supported)")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise InputError(f"{what} must hold numbers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise InputError(f"{what} holds complex numbers; MoDiff needs real intensities")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise InputError(f"{what} contains {bad} NaN or infinite voxel values")
    return a


@dataclass
class Volume:
    """A 3D image: voxels ``array[k, j, i]`` on a :class:`Geometry`.

    ``array`` may be scalar (K, J, I) or, for displacement fields, vector (K, J, I, 3)
    with components in RAS mm. Construction validates shape, emptiness and finiteness, so a
    ``Volume`` that exists is safe to feed to the models.
    """

    array: np.ndarray
    geometry: Geometry
    name: str = "volume"

    def __post_init__(self) -> None:
        components = 3 if (np.ndim(self.array) == 4) else None
        self.array = _check_voxels(self.array, self.name, components)
        if tuple(self.array.shape[:3]) != self.geometry.shape_kji:
            raise InputError(
                f"{self.name}: voxel array shape {self.array.shape[:3]} does not match geometry "
                f"{self.geometry.shape_kji}"
            )

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        origin_ras: tuple[float, float, float] = (0.0, 0.0, 0.0),
        direction_ras: np.ndarray | None = None,
        name: str = "volume",
    ) -> "Volume":
        """Wrap a (K, J, I) array with geometry given in Slicer's terms."""
        a = np.asarray(array)
        a = _check_voxels(a, name, 3 if a.ndim == 4 else None)
        direction = np.eye(3) if direction_ras is None else np.asarray(direction_ras, dtype=float)
        geometry = Geometry(tuple(a.shape[:3]), tuple(spacing), tuple(origin_ras), tuple(map(tuple, direction)))
        return cls(a, geometry, name)

    @property
    def is_vector(self) -> bool:
        return self.array.ndim == 4

    def with_array(self, array: np.ndarray, name: str | None = None) -> "Volume":
        """A volume on the same geometry with other voxels."""
        return Volume(array, self.geometry, name or self.name)


@dataclass
class VolumeSequence:
    """A time series of volumes on one shared :class:`Geometry` (a 4D cine).

    Attributes:
        frames: array (T, K, J, I) or, for vector sequences, (T, K, J, I, 3).
        geometry: grid shared by every frame.
        index_name: name of the sequence index (``"frame"`` for MoDiff output).
        index_unit: unit of the index values (``""`` for frame numbers, ``"s"`` for time).
        index_values: one label per frame; frame numbers by default.
    """

    frames: np.ndarray
    geometry: Geometry
    name: str = "sequence"
    index_name: str = "frame"
    index_unit: str = ""
    index_values: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        a = np.asarray(self.frames)
        if a.ndim not in (4, 5):
            raise InputError(f"{self.name} must be a 4D sequence (frames of 3D volumes), got {a.ndim} dimensions")
        if a.shape[0] < 1:
            raise InputError(f"{self.name} has no frames")
        components = 3 if a.ndim == 5 else None
        for t in range(a.shape[0]):
            _check_voxels(a[t], f"{self.name} frame {t}", components)
        if tuple(a.shape[1:4]) != self.geometry.shape_kji:
            raise InputError(
                f"{self.name}: frame shape {a.shape[1:4]} does not match geometry {self.geometry.shape_kji}"
            )
        self.frames = a
        if not self.index_values:
            self.index_values = [str(t) for t in range(a.shape[0])]
        if len(self.index_values) != a.shape[0]:
            raise InputError(f"{self.name}: {len(self.index_values)} index values for {a.shape[0]} frames")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def frame(self, t: int) -> Volume:
        """Frame ``t`` as a :class:`Volume` (a view, not a copy)."""
        if not -self.num_frames <= t < self.num_frames:
            raise InputError(f"{self.name} has {self.num_frames} frames; frame {t} does not exist")
        return Volume(self.frames[t], self.geometry, f"{self.name}[{t}]")

    @classmethod
    def from_volumes(cls, volumes: list[Volume], name: str = "sequence", **kwargs) -> "VolumeSequence":
        """Stack volumes that share one geometry (checked) into a sequence."""
        if not volumes:
            raise InputError(f"{name}: no frames given")
        g = volumes[0].geometry
        for t, v in enumerate(volumes[1:], start=1):
            if not v.geometry.is_close(g):
                raise InputError(
                    f"{name}: frame {t} has geometry {v.geometry.describe()} unlike frame 0 ({g.describe()})"
                )
        return cls(np.stack([v.array for v in volumes]), g, name, **kwargs)
