"""Label maps given with an input volume: checked, placed on the input's grid, and measured per frame.

A label map (a Slicer label map volume, a segmentation exported as one, or a ``.seg.nrrd``) gives
every voxel of frame 0 a whole number: 0 is background, each other value one structure. MoDiff
carries it through the generated motion (:func:`MoDiffLib.motion.transfer.carry_labels`); this
module holds what is true of a label map whatever moves it:

* :class:`LabelMap` -- the labels with their names and colours (from a segmentation or a colour
  table; a value without a name is called ``label N``);
* :func:`check_label_map` -- refuse what cannot be a label map of *this* input (fractional,
  negative or no labels) and place it on the input's grid. A label map on the same voxel lattice
  as the input but with another extent (Slicer crops a segmentation to its segments' extent when
  asked to) is placed exactly, voxel for voxel; on any other grid it is refused with both grids
  named, since resampling labels would move their boundaries by up to half a voxel unasked;
* :func:`read_label_map` -- a label map file (``.nrrd``, ``.seg.nrrd`` with one layer, NIfTI, MetaImage),
  with the segment names and colours a ``.seg.nrrd`` records;
* :func:`label_volumes_ml` -- the volume (mL) of every label in every frame of a label sequence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .volume import Geometry, Volume, VolumeSequence

#: Most distinct labels one map may hold (Slicer's generic colour table has 255 named entries;
#: more is a mistaken intensity image, and every label costs one interpolation per frame).
MAX_LABELS = 255
#: Offsets between two lattices below this fraction of a voxel count as none (float round-off of headers).
LATTICE_TOLERANCE_VOXELS = 1e-3


@dataclass
class LabelMap:
    """A frame-0 label map with the names (and colours) of its structures.

    Attributes:
        volume: whole-number labels ``(K, J, I)``, 0 = background, in an unsigned integer type.
        names: label value -> structure name (values without a name are named by :meth:`name_of`).
        colors: label value -> RGB in 0..1 (e.g. a segmentation's segment colours); may be empty.
    """

    volume: Volume
    names: dict[int, str] = field(default_factory=dict)
    colors: dict[int, tuple[float, float, float]] = field(default_factory=dict)

    @property
    def values(self) -> list[int]:
        """The labels present (background 0 excluded), ascending."""
        return [int(v) for v in np.unique(self.volume.array) if v != 0]

    def name_of(self, value: int) -> str:
        return self.names.get(int(value)) or f"label {int(value)}"

    def named(self) -> dict[int, str]:
        """Name of every label present (``label N`` where none was given)."""
        return {v: self.name_of(v) for v in self.values}


def _describe(geometry: Geometry) -> str:
    origin = ", ".join(f"{c:.2f}" for c in geometry.origin_ras)
    return f"{geometry.describe()}, first voxel at ({origin}) RAS"


def check_label_values(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as an unsigned integer label array, or InputError for what no label map holds."""
    a = np.asarray(array)
    if a.ndim != 3:
        raise InputError(f"label map '{name}' must be a 3D volume of whole numbers, got {a.ndim} dimensions")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"label map '{name}' must hold whole numbers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise InputError(f"label map '{name}' contains NaN or infinite values")
        fractional = a != np.round(a)
        if np.any(fractional):
            example = float(a[fractional].flat[0])
            raise InputError(f"label map '{name}' holds fractional values (e.g. {example:g}); labels must be whole "
                             "numbers (is this an image rather than a label map?)")
    low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if low < 0:
        raise InputError(f"label map '{name}' holds negative values (down to {low:g}); labels are 0 (background) "
                         "or positive whole numbers")
    if high == 0:
        raise InputError(f"label map '{name}' is empty: every voxel is background (0); there is nothing to carry")
    values = np.unique(a)
    if values.size - 1 > MAX_LABELS:
        raise InputError(f"label map '{name}' holds {values.size - 1} different labels (at most {MAX_LABELS}); "
                         "is this an image rather than a label map?")
    dtype = np.uint8 if high <= 255 else np.uint16 if high <= 65535 else np.uint32
    return a.astype(dtype, copy=False)


def _lattice_offset(labels: Geometry, target: Geometry) -> np.ndarray | None:
    """(k, j, i) index of the labels' first voxel on ``target``'s lattice, or None when the lattices differ."""
    if not np.allclose(labels.direction, target.direction, atol=1e-6):
        return None
    if not np.allclose(labels.spacing, target.spacing, rtol=1e-6, atol=0.0):
        return None
    ijk = target.ras_to_ijk_points(np.asarray(labels.origin_ras, dtype=float))
    whole = np.round(ijk)
    if np.max(np.abs(ijk - whole)) > LATTICE_TOLERANCE_VOXELS:
        return None
    return whole[::-1].astype(int)


def _place(array: np.ndarray, offset_kji: np.ndarray, target: Geometry, name: str) -> np.ndarray:
    """``array`` (whose voxel 0 is at ``offset_kji`` of ``target``) on ``target``'s grid; labels
    that would fall outside it are an error."""
    out = np.zeros(target.shape_kji, dtype=array.dtype)
    src, dst = [], []
    for o, n_src, n_dst in zip(offset_kji, array.shape, target.shape_kji):
        lo, hi = max(0, -o), min(n_src, n_dst - o)
        if hi <= lo:
            src.append(slice(0, 0))
            dst.append(slice(0, 0))
        else:
            src.append(slice(lo, hi))
            dst.append(slice(lo + o, hi + o))
    kept = int(np.count_nonzero(array[tuple(src)]))
    total = int(np.count_nonzero(array))
    if kept < total:
        raise InputError(f"label map '{name}' labels {total - kept} voxels outside the input volume; crop it to the "
                         "input or export the segmentation with the input volume as reference geometry")
    out[tuple(dst)] = array[tuple(src)]
    return out


def check_label_map(labels: Volume | LabelMap, geometry: Geometry, input_name: str = "the input volume") -> LabelMap:
    """``labels`` checked as a label map of the volume on ``geometry`` and placed on that grid.

    Args:
        labels: a label :class:`~MoDiffLib.volume.Volume` or :class:`LabelMap` (names kept).
        geometry: the input volume's grid (the cine's).
        input_name: how messages name the input.

    Returns:
        a :class:`LabelMap` on ``geometry`` in the smallest unsigned type that holds its labels.

    Raises:
        InputError: not a scalar volume, fractional / negative / NaN values, no label at all, too
            many labels, or a grid that is not the input's voxel lattice (both grids named), or
            labels outside the input.
    """
    if isinstance(labels, LabelMap):
        label_map = labels
    elif isinstance(labels, Volume):
        label_map = LabelMap(labels)
    else:
        raise InputError(f"labels must be a label map Volume or LabelMap, got {type(labels).__name__}")
    volume = label_map.volume
    if not isinstance(volume, Volume) or volume.is_vector:
        raise InputError(f"label map '{getattr(volume, 'name', '?')}' must be a scalar volume, not vectors")
    array = check_label_values(volume.array, volume.name)
    if not volume.geometry.is_close(geometry, atol_mm=1e-3):
        offset = _lattice_offset(volume.geometry, geometry)
        if offset is None:
            raise InputError(f"label map '{volume.name}' ({_describe(volume.geometry)}) is not on the voxel grid of "
                             f"{input_name} ({_describe(geometry)}); resample it onto the input with nearest-neighbour "
                             "interpolation, or export the segmentation with the input as reference geometry")
        array = _place(array, offset, geometry, volume.name)
    names = {int(k): str(v) for k, v in label_map.names.items()}
    colors = {int(k): tuple(float(c) for c in v) for k, v in label_map.colors.items()}
    return LabelMap(Volume(array, geometry, volume.name), names, colors)  # type: ignore[arg-type]


_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(Name|LabelValue|Color|Layer)$")


def _segment_table(fields: Mapping[str, object]) -> list[dict[str, str]]:
    """The ``SegmentN_*`` entries of a ``.seg.nrrd`` header, one dictionary per segment, in segment order."""
    segments: dict[int, dict[str, str]] = {}
    for key, value in fields.items():
        match = _SEGMENT_KEY.match(str(key))
        if match:
            segments.setdefault(int(match.group(1)), {})[match.group(2)] = str(value).strip()
    return [segments[i] for i in sorted(segments)]


def _segment_names(path: Path) -> tuple[dict[int, str], dict[int, tuple[float, float, float]]]:
    """Label value -> name and colour of the segments a Slicer ``.seg.nrrd`` records (empty for other NRRDs).

    Raises:
        InputError: a segmentation with several layers (overlapping segments), which is not one
            label map.
    """
    from .io.nrrd_io import read_header

    header = read_header(path)
    segments = _segment_table(header.keyvalues)
    if not segments:
        return {}, {}
    layers = {s.get("Layer", "0") for s in segments}
    if header.dimension != 3 or len(layers) > 1:
        raise InputError(f"segmentation '{path.name}' holds {max(len(layers), 2)} layers of overlapping segments, which "
                         "is not one label map; export it as a label map first (Slicer: Data module, right-click the "
                         "segmentation, 'Export visible segments to binary labelmap')")
    names: dict[int, str] = {}
    colors: dict[int, tuple[float, float, float]] = {}
    for segment in segments:
        try:
            value = int(segment.get("LabelValue", ""))
        except ValueError:
            continue  # a segment without a value has no voxels of its own in a single layer
        if segment.get("Name"):
            names[value] = segment["Name"]
        try:
            rgb = tuple(float(c) for c in segment.get("Color", "").split())
        except ValueError:
            rgb = ()
        if len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb):
            colors[value] = rgb  # type: ignore[assignment]
    return names, colors


def read_label_map(path: str | os.PathLike) -> LabelMap:
    """A label map file as a :class:`LabelMap`: voxels checked (:func:`check_label_values`), names
    and colours from a Slicer ``.seg.nrrd`` (values without a name are ``label N``).

    Raises:
        InputError: the file cannot be read as one 3D volume, or does not hold labels.
    """
    from .io import read_volume

    p = Path(path)
    names, colors = _segment_names(p) if p.is_file() and p.name.lower().endswith((".nrrd", ".nhdr")) else ({}, {})
    volume = read_volume(p)
    array = check_label_values(volume.array, p.name)
    return LabelMap(Volume(array, volume.geometry, p.name), names, colors)


def label_volumes_ml(sequence: VolumeSequence, values: list[int] | Mapping[int, str] | None = None) -> dict[int, list[float]]:
    """Volume in mL of each label (default: those present in frame 0) in every frame of ``sequence``."""
    frames = np.asarray(sequence.frames)
    if frames.ndim != 4:
        raise InputError(f"{sequence.name} is not a label sequence (it holds vectors)")
    wanted = [int(v) for v in (values if values is not None else np.unique(frames[0])) if int(v) != 0]
    voxel_ml = float(np.prod(sequence.geometry.spacing)) / 1000.0
    out: dict[int, list[float]] = {v: [] for v in wanted}
    top = int(frames.max()) if frames.size else 0
    for t in range(frames.shape[0]):
        counts = np.bincount(frames[t].ravel().astype(np.int64), minlength=top + 1)
        for v in wanted:
            out[v].append(float(counts[v]) * voxel_ml if v <= top else 0.0)
    return out
