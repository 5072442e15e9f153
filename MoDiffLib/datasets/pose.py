"""The same 4D case with the patient lying elsewhere: shifted, rotated, cropped or re-spaced.

A motion model must follow the anatomy, not the scanner: a population motion stored in scanner
coordinates fails as soon as the patient lies a few centimetres elsewhere. To measure that,
:func:`change_pose` moves a case's whole content rigidly inside the scanner's field of view and
re-samples it on a (possibly cropped or re-spaced) scanner grid, carrying every piece of ground
truth exactly along:

* frames (linear) and labels (nearest) at ``new(x) = old(T^-1 x)``;
* the motion, a displacement of frame-0 points: ``u_new(x) = R u_old(T^-1 x)``;
* landmarks ``p -> T p``; the breathing trace (S of the dome) moves with the shift's S part.

``T x = R (x - c) + c + shift`` rotates about the grid's k axis (a roll of the patient for axial CT,
an in-plane rotation for a short-axis stack) through the field-of-view centre ``c``. Content moved
outside the field of view is lost and filled with the frame's smallest value (air).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..preprocess import resample
from ..volume import Geometry, Volume, VolumeSequence
from .base import Case4D


@dataclass(frozen=True)
class PoseChange:
    """A rigid move of the patient plus a change of the scanner grid.

    Attributes:
        shift_mm: RAS translation of the content (mm).
        rotate_deg: rotation of the content about the grid's k axis through the field-of-view centre.
        crop: fraction of the field of view kept along i and j (centred), in (0, 1].
        spacing_scale: the new grid spacing as a multiple of the old (same field of view).
    """

    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotate_deg: float = 0.0
    crop: float = 1.0
    spacing_scale: float = 1.0

    def __post_init__(self) -> None:
        shift = tuple(float(v) for v in self.shift_mm)
        if len(shift) != 3 or not all(math.isfinite(v) for v in shift):
            raise InputError(f"the pose shift must be three finite numbers (mm), got {self.shift_mm!r}")
        object.__setattr__(self, "shift_mm", shift)
        if not math.isfinite(self.rotate_deg) or abs(self.rotate_deg) > 90:
            raise InputError(f"the pose rotation must lie in -90..90 degrees, got {self.rotate_deg!r}")
        if not 0.2 <= self.crop <= 1.0:
            raise InputError(f"the crop fraction must lie in 0.2..1, got {self.crop!r}")
        if not 0.25 <= self.spacing_scale <= 4.0:
            raise InputError(f"the spacing scale must lie in 0.25..4, got {self.spacing_scale!r}")

    @property
    def is_identity(self) -> bool:
        return self.shift_mm == (0.0, 0.0, 0.0) and self.rotate_deg == 0.0 and self.crop == 1.0 \
            and self.spacing_scale == 1.0

    def describe(self) -> dict:
        return {"shift_mm": list(self.shift_mm), "rotate_deg": self.rotate_deg, "crop": self.crop,
                "spacing_scale": self.spacing_scale}

    @classmethod
    def parse(cls, text: str) -> "PoseChange":
        """From ``shift=0,0,20;rotate=15;crop=0.8;spacing=1.5`` (any subset; shift in RAS mm)."""
        values: dict = {}
        names = {"shift": "shift_mm", "rotate": "rotate_deg", "crop": "crop", "spacing": "spacing_scale"}
        for part in str(text).split(";"):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if key not in names:
                raise InputError(f"unknown pose change {key!r} in {text!r}; use shift=R,A,S;rotate=DEG;"
                                 "crop=FRACTION;spacing=SCALE")
            if not sep:
                raise InputError(f"pose change {part.strip()!r} needs a value (key=value)")
            try:
                numbers = tuple(float(v) for v in value.split(","))
            except ValueError:
                raise InputError(f"pose change {part.strip()!r} needs a number (shift: three)") from None
            values[names[key]] = numbers if key == "shift" else (numbers[0] if len(numbers) == 1 else math.nan)
        return cls(**values)

    def transform(self, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """(R, t) of ``T x = R x + t`` for content on ``geometry``."""
        axis = geometry.direction[:, 2]
        a = math.radians(self.rotate_deg)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)  # Rodrigues
        centre = fov_centre(geometry)
        return rotation, centre - rotation @ centre + np.asarray(self.shift_mm)

    def target_grid(self, geometry: Geometry) -> Geometry:
        """The scanner grid after cropping and re-spacing (same centre and axes as ``geometry``)."""
        shape_ijk = np.asarray(geometry.shape_kji[::-1], dtype=float)
        spacing = np.asarray(geometry.spacing, dtype=float)
        extent = shape_ijk * spacing * np.array([self.crop, self.crop, 1.0])
        new_spacing = spacing * self.spacing_scale
        new_shape = np.maximum(np.round(extent / new_spacing), 2).astype(int)
        origin = fov_centre(geometry) - geometry.direction @ (new_spacing * (new_shape - 1) / 2.0)
        return Geometry(tuple(int(v) for v in new_shape[::-1]), tuple(new_spacing), tuple(origin),
                        geometry.direction_ras)


def fov_centre(geometry: Geometry) -> np.ndarray:
    """RAS centre of a grid's field of view."""
    shape_ijk = np.asarray(geometry.shape_kji[::-1], dtype=float)
    return np.asarray(geometry.origin_ras) + geometry.direction @ (np.asarray(geometry.spacing) * (shape_ijk - 1) / 2.0)


def _moved(geometry: Geometry, rotation: np.ndarray, offset: np.ndarray) -> Geometry:
    """``geometry`` with its voxels carried by ``T``: sampling old arrays there gives ``old(T^-1 x)``."""
    return Geometry(geometry.shape_kji, geometry.spacing, tuple(rotation @ np.asarray(geometry.origin_ras) + offset),
                    tuple(map(tuple, rotation @ geometry.direction)))


def change_pose(case: Case4D, change: PoseChange) -> Case4D:
    """``case`` with its content moved and re-gridded by ``change`` (see the module docstring)."""
    if change.is_identity:
        return case
    source = case.frames.geometry
    rotation, offset = change.transform(source)
    moved, target = _moved(source, rotation, offset), change.target_grid(source)
    fill = float(np.min(case.frames.frames[0]))

    def images(seq: VolumeSequence, order: int, value: float) -> VolumeSequence:
        out = np.stack([resample(f, moved, target, order=order, fill=value) for f in seq.frames])
        return VolumeSequence(out.astype(np.asarray(seq.frames).dtype, copy=False), target, name=seq.name,
                              index_name=seq.index_name)

    frames = images(case.frames, 1, fill)
    labels = case.labels
    if isinstance(labels, VolumeSequence):
        labels = images(labels, 0, 0.0)
    elif isinstance(labels, dict):
        labels = {t: Volume(resample(v.array, moved, target, order=0).astype(v.array.dtype), target, v.name)
                  for t, v in labels.items()}
    landmarks = None if case.landmarks is None else {
        name: np.asarray(track, dtype=float) @ rotation.T + offset for name, track in case.landmarks.items()}
    meta = dict(case.meta, pose=change.describe(), scanner_geometry=source)
    motion = meta.get("motion")
    if isinstance(motion, VolumeSequence):
        vectors = np.stack([resample(m, moved, target, order=1, fill=0.0) @ rotation.T.astype(np.float32)
                            for m in motion.frames])
        meta["motion"] = VolumeSequence(vectors.astype(np.float32), target, name=motion.name,
                                        index_name=motion.index_name)
    trace = case.trace_mm
    if trace is not None:
        superior = abs(float(source.direction[2, 2]))  # the rotation axis is k; S is unchanged if k is S
        trace = np.asarray(trace, dtype=float) + change.shift_mm[2] if (change.rotate_deg == 0 or superior > 0.999) \
            else None
    return Case4D(case.case_id, frames, labels, landmarks, case.amplitude, meta, trace_mm=trace)
