"""Read and write 4D cines: Slicer volume sequences (``.seq.nrrd``) and 4D NIfTI.

``.seq.nrrd`` is the format of Slicer's ``vtkMRMLVolumeSequenceStorageNode`` (checked against
slicer-core 5.13, which writes it as below; MoDiff writes the same layout):

* a NRRD file, ``space: left-posterior-superior``, ``sizes: I J K T`` with
  ``kinds: domain domain domain list`` and ``space directions: (..) (..) (..) none``; for vector
  voxels ``sizes: 3 I J K T``, ``kinds: vector domain domain domain list`` and a leading ``none``;
* ``labels`` and ``units`` of the list axis hold the index name (e.g. ``time``) and unit;
* key/value pairs ``DataNodeClassName:=vtkMRMLScalarVolumeNode`` (or ``vtkMRMLVectorVolumeNode``),
  ``axis 3 index type:=numeric`` (or ``text``) and ``axis 3 index values:=v0 v1 ...``, the values
  separated by spaces and URL-encoded as Slicer's ``vtkMRMLNode::URLEncodeString`` does (only
  ``% space ' > < "``). The key says ``axis 3`` even when the list axis is NRRD axis 4 (vector
  voxels), because Slicer does not count the component axis. Older Slicer versions put the
  list axis first and wrote ``axis 0 ...``; both layouts are read.

MoDiff writes it through pynrrd (:mod:`MoDiffLib.io.nrrd_io`), gzip level 1 (fast) by default;
the header text is ASCII, as NRRD requires. Vector values are stored as they are (RAS mm)
and the key ``MoDiff_VectorSpace:=RAS`` says so (Slicer keeps it as a sequence node attribute).

4D NIfTI voxels are read and written with nibabel (which, unlike ITK, notices truncated files);
the grid is read by ITK, as Slicer reads it (ITK picks between qform and sform). Scalar cines
are stored as (X, Y, Z, T), vector cines as (X, Y, Z, T, 3) with the ``vector`` intent.
NIfTI keeps index values only when they are evenly spaced times in s, ms or us (as the time
step and offset); other index values are not stored and read back as frame numbers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import atomic_file, split_suffix
from ..errors import InputError, OutputError
from ..volume import Geometry, VolumeSequence
from . import nrrd_io
from .dicom_io import image_information
from .volume_io import (
    MAX_SEQUENCE_VALUES,
    VECTOR_SPACE_KEY,
    _sitk_reason,
    file_suffix,
    geometry_from_itk,
    load_nifti,
    new_nifti,
    storable_voxels,
)

#: Suffixes :func:`read_sequence` accepts.
SEQUENCE_READ_SUFFIXES = (".seq.nrrd", ".seq.nhdr", ".nrrd", ".nhdr", ".nii", ".nii.gz")
#: Suffixes :func:`write_sequence` writes.
SEQUENCE_WRITE_SUFFIXES = (".seq.nrrd", ".nii", ".nii.gz")

_LPS_FLIP = np.array([-1.0, -1.0, 1.0])
_URL_CODES = {"%": "%25", " ": "%20", "'": "%27", ">": "%3E", "<": "%3C", '"': "%22"}
_URL_DECODE = re.compile("%(25|20|27|3E|3C|22)", re.IGNORECASE)
_NIFTI_TIME_UNITS = {"s": "sec", "ms": "msec", "us": "usec"}
#: NIfTI ``intent_name`` marking a (X, Y, Z, T, 3) file as a vector cine even when T == 1.
_NIFTI_SEQUENCE_INTENT = "MoDiff frames"


def url_encode(text: str) -> str:
    """Encode an index value as Slicer does before joining values with spaces."""
    return "".join(_URL_CODES.get(c, c) for c in text)


def url_decode(text: str) -> str:
    """Inverse of :func:`url_encode` (other ``%XX`` sequences are left as they are, as in Slicer)."""
    return _URL_DECODE.sub(lambda m: chr(int(m.group(1), 16)), text)


# -- reading ---------------------------------------------------------------------------------------


def read_sequence(path: str | os.PathLike) -> VolumeSequence:
    """Read a 4D cine (``.seq.nrrd``/``.nrrd``/``.nhdr`` with a list axis, or 4D ``.nii``/``.nii.gz``).

    Returns:
        A :class:`VolumeSequence` in RAS geometry with frames (T, K, J, I) or (T, K, J, I, 3),
        voxel type as stored, and the file's index name, unit and values.

    Raises:
        InputError: missing, unreadable or truncated file, unsupported type, a single 3D
            volume, or voxels that a :class:`VolumeSequence` rejects; the message names the file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"file '{p}' does not exist")
    if p.is_dir():
        raise InputError(
            f"'{p}' is a folder; sequences are read from {', '.join(SEQUENCE_READ_SUFFIXES)} files"
        )
    suffix = file_suffix(p)
    if suffix not in SEQUENCE_READ_SUFFIXES:
        raise InputError(f"'{p}' is not a supported sequence file; use {', '.join(SEQUENCE_READ_SUFFIXES)}")
    if p.stat().st_size == 0:
        raise InputError(f"'{p}' is an empty file (0 bytes)")
    name = split_suffix(p)[0]
    if suffix in (".nii", ".nii.gz"):
        return _read_nifti_sequence(p, name)
    return _read_nrrd_sequence(p, name)


def _read_nrrd_sequence(p: Path, name: str) -> VolumeSequence:
    header = nrrd_io.read_header(p)
    layout = nrrd_io.sequence_layout(header)  # raises for fewer than 3 spatial axes
    if layout.list_axis is None:
        kind = "3D vector volume" if layout.vector_axis is not None else "3D volume"
        raise InputError(f"'{p}' is a single {kind}, not a time series; read it with read_volume")
    sizes = header.sizes
    if layout.vector_axis is not None and sizes[layout.vector_axis] != 3:
        raise InputError(
            f"'{p}' has {sizes[layout.vector_axis]} components per voxel; MoDiff handles scalars or 3-vectors"
        )
    flip = header.space_to_ras_flip
    directions = header.space_directions
    si, sj, sk = layout.spatial_axes
    columns = np.stack([flip * directions[a] for a in (si, sj, sk)], axis=1)  # type: ignore[operator]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"'{p}' has a zero-length space direction")
    try:
        geometry = Geometry(
            (sizes[sk], sizes[sj], sizes[si]),
            tuple(spacing),
            tuple(flip * header.space_origin + 0.0),
            tuple(map(tuple, columns / spacing[None, :] + 0.0)),
        )
    except InputError as e:
        raise InputError(f"'{p}' has an unusable voxel grid: {e}") from None

    data = nrrd_io.read_data(header, MAX_SEQUENCE_VALUES)
    last = header.dimension - 1  # numpy axis of NRRD axis a is last - a
    order = [last - layout.list_axis, last - sk, last - sj, last - si]
    if layout.vector_axis is not None:
        order.append(last - layout.vector_axis)
    frames = np.ascontiguousarray(data.transpose(order))

    num_frames = frames.shape[0]
    values_text = None
    for key in (f"axis {layout.list_axis} index values", "axis 3 index values", "axis 0 index values"):
        if key in header.keyvalues:
            values_text = header.keyvalues[key]
            break
    given = [url_decode(v) for v in values_text.split()] if values_text else []
    # As Slicer: use the stored values where present, frame numbers for frames without one.
    index_values = [given[t] if t < len(given) else str(t) for t in range(num_frames)]
    index_name = header.labels[layout.list_axis] or "frame"
    index_unit = header.units[layout.list_axis]
    return _make_sequence(p, frames, geometry, name, index_name, index_unit, index_values)


def _read_nifti_sequence(p: Path, name: str) -> VolumeSequence:
    header, data = load_nifti(p)
    intent_name = header.get_intent()[2] if hasattr(header, "get_intent") else ""
    if data.ndim == 3 or (data.ndim == 5 and data.shape[3] == 1 and intent_name != _NIFTI_SEQUENCE_INTENT):
        kind = "3D vector volume" if data.ndim == 5 else "3D volume"
        raise InputError(f"'{p}' is a single {kind}, not a time series; read it with read_volume")
    if data.ndim == 4:
        frames = data.transpose(3, 2, 1, 0)
    elif data.ndim == 5 and data.shape[4] == 3:
        frames = data.transpose(3, 2, 1, 0, 4)
    elif data.ndim == 5:
        raise InputError(f"'{p}' has {data.shape[4]} components per voxel; MoDiff handles scalars or 3-vectors")
    else:
        raise InputError(f"'{p}' is a {data.ndim}D image; a sequence must be 4D (frames of 3D volumes)")
    frames = np.ascontiguousarray(frames)
    geometry = _nifti_geometry_as_itk(p)
    if geometry.shape_kji != frames.shape[1:4]:
        raise InputError(f"'{p}' has voxels of shape {frames.shape[1:4]} but a header grid of {geometry.shape_kji}")

    num_frames = frames.shape[0]
    t_unit = header.get_xyzt_units()[1] if hasattr(header, "get_xyzt_units") else "unknown"
    zooms = header.get_zooms()
    step = float(zooms[3]) if len(zooms) > 3 else 0.0
    unit = {v: k for k, v in _NIFTI_TIME_UNITS.items()}.get(t_unit)
    if unit and step > 0:
        offset = float(header["toffset"]) if "toffset" in header else 0.0
        index_values = [f"{offset + t * step:.10g}" for t in range(num_frames)]
        index_name, index_unit = "time", unit
    else:
        index_values = [str(t) for t in range(num_frames)]
        index_name, index_unit = "frame", ""
    return _make_sequence(p, frames, geometry, name, index_name, index_unit, index_values)


def _nifti_geometry_as_itk(p: Path) -> Geometry:
    """The grid of a NIfTI file as ITK (and so Slicer) reads it: the choice between qform and
    sform, and its tolerance of slightly non-orthogonal matrices, stay ITK's."""
    try:
        reader = image_information(p)
    except RuntimeError as e:
        raise InputError(f"'{p}' has a NIfTI header ITK cannot read ({_sitk_reason(e)})") from None
    return geometry_from_itk(
        reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), f"'{p}'"
    )


def _make_sequence(p: Path, frames, geometry, name, index_name, index_unit, index_values) -> VolumeSequence:
    # VolumeSequence's checks name the data they reject; give them the file so the message points at it.
    sequence = VolumeSequence(frames, geometry, f"'{p}'", index_name, index_unit, index_values)
    sequence.name = name
    return sequence


# -- writing ---------------------------------------------------------------------------------------


def write_sequence(
    sequence: VolumeSequence, path: str | os.PathLike, overwrite: bool = False, compress: bool = True
) -> Path:
    """Write a cine atomically as ``.seq.nrrd`` (Slicer volume sequence) or 4D ``.nii``/``.nii.gz``.

    Args:
        sequence: frames on one geometry; index name, unit and values are kept in ``.seq.nrrd``.
        path: output file; its suffix picks the format.
        overwrite: replace an existing file (only once the new one is complete).
        compress: gzip (level 1) the ``.seq.nrrd`` data; ``.nii.gz`` is always compressed.

    Returns:
        The path written.

    Raises:
        OutputError: unsupported suffix, existing file, missing/unwritable folder, index values
            that the format cannot hold, or a failed write (e.g. disk full).
    """
    p = Path(path)
    suffix = file_suffix(p)
    if suffix not in SEQUENCE_WRITE_SUFFIXES:
        raise OutputError(
            f"cannot write '{p}': unsupported sequence file type '{suffix or p.name}'; "
            f"use {', '.join(SEQUENCE_WRITE_SUFFIXES)}"
        )
    frames = storable_voxels(np.asarray(sequence.frames))
    with atomic_file(p, overwrite) as tmp:
        try:
            if suffix == ".seq.nrrd":
                _write_seq_nrrd(sequence, frames, tmp, p, compress)
            else:
                _write_nifti_sequence(sequence, frames, tmp)
        except OSError as e:
            raise OutputError(f"could not write '{p}' ({e.strerror or e})") from None
    return p


def _write_seq_nrrd(sequence: VolumeSequence, frames: np.ndarray, tmp: Path, final: Path, compress: bool) -> None:
    texts = [(sequence.index_name, "index name"), (sequence.index_unit, "index unit")]
    for text, what in texts + [(v, "index value") for v in sequence.index_values]:
        if what == "index value" and not text:
            raise OutputError(f"cannot write '{final}': an index value is empty")
        if any(not c.isprintable() for c in text):
            raise OutputError(f"cannot write '{final}': the {what} {text!r} holds control characters")
        if not text.isascii():
            raise OutputError(f"cannot write '{final}': the {what} {text!r} is not ASCII, as a NRRD header must be")
        if what != "index value" and text.endswith("\\"):  # NRRD's quoted labels cannot end so
            raise OutputError(f"cannot write '{final}': the {what} {text!r} ends with a backslash")
    if len(set(sequence.index_values)) < sequence.num_frames:
        raise OutputError(
            f"cannot write '{final}': index values repeat ({', '.join(sequence.index_values)}); "
            "Slicer would merge those frames"
        )
    g = sequence.geometry
    vector = frames.ndim == 5
    none = np.full(3, np.nan)  # pynrrd writes a NaN row of 'space directions' as "none"
    directions_lps = _LPS_FLIP[:, None] * g.direction * np.asarray(g.spacing)[None, :]
    rows = [directions_lps[:, c] for c in range(3)] + [none]
    kinds = ["domain", "domain", "domain", "list"]
    labels = ["", "", "", sequence.index_name]
    units = ["", "", "", sequence.index_unit]
    if vector:
        rows, kinds, labels, units = [none] + rows, ["vector"] + kinds, [""] + labels, [""] + units
    fields = {"space": "left-posterior-superior", "space directions": np.array(rows), "kinds": kinds, "labels": labels}
    if sequence.index_unit:
        fields["units"] = units
    fields["space origin"] = _LPS_FLIP * np.array(g.origin_ras)
    # Slicer keeps a numeric index sorted by value (and merges equal values), so "numeric" is
    # written only for increasing values; "text" keeps the frames in file order.
    numeric = all(_is_number(v) for v in sequence.index_values) and bool(
        np.all(np.diff([float(v) for v in sequence.index_values]) > 0)
    )
    keyvalues = {
        "DataNodeClassName": "vtkMRMLVectorVolumeNode" if vector else "vtkMRMLScalarVolumeNode",
        "axis 3 index type": "numeric" if numeric else "text",
        "axis 3 index values": " ".join(url_encode(v) for v in sequence.index_values),
    }
    if vector:
        keyvalues[VECTOR_SPACE_KEY] = "RAS"
    with open(tmp, "wb") as f:
        # frames (T, K, J, I[, 3]) in C order are NRRD's sizes ([3] I J K T): no transpose
        nrrd_io.write_nrrd(f, frames, fields, keyvalues, 1 if compress else None)


def _is_number(text: str) -> bool:
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False


def _write_nifti_sequence(sequence: VolumeSequence, frames: np.ndarray, tmp: Path) -> None:
    vector = frames.ndim == 5
    data = frames.transpose(3, 2, 1, 0, 4) if vector else frames.transpose(3, 2, 1, 0)
    image = new_nifti(data, sequence.geometry)
    header = image.header
    step, offset, unit = _even_time_steps(sequence)
    header.set_zooms(tuple(sequence.geometry.spacing) + (step,) + ((1.0,) if vector else ()))
    header.set_xyzt_units(xyz="mm", t=_NIFTI_TIME_UNITS.get(unit, "unknown"))
    if unit:
        header["toffset"] = offset
    if vector:
        header.set_intent("vector", (), name=_NIFTI_SEQUENCE_INTENT)
    image.to_filename(str(tmp))


def _even_time_steps(sequence: VolumeSequence) -> tuple[float, float, str]:
    """(step, offset, unit) when the index values are evenly spaced times in s/ms/us, else (1, 0, "")."""
    if sequence.index_unit not in _NIFTI_TIME_UNITS or not all(_is_number(v) for v in sequence.index_values):
        return 1.0, 0.0, ""
    times = np.array([float(v) for v in sequence.index_values])
    if times.size < 2:
        return 1.0, float(times[0]), sequence.index_unit
    steps = np.diff(times)
    if steps[0] <= 0 or not np.allclose(steps, steps[0], rtol=1e-6, atol=0.0):
        return 1.0, 0.0, ""
    return float(steps[0]), float(times[0]), sequence.index_unit
