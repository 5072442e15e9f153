"""Image files of the data sets: cheap header reads for the scan, full reads per case.

The only module of :mod:`MoDiffLib.datasets` that touches image formats, and only through
:mod:`MoDiffLib.io`, which owns the LPS->RAS conversion: ``io.read_volume`` for 3D files and
DICOM series, ``io.read_sequence`` for cines, ``io.geometry_from_itk`` for header-only reads.
NIfTI grids are ITK's (as in Slicer): on files whose sform and qform disagree (all of ACDC: a
unit-scale sform next to the true qform) ITK takes the qform, so a cine and its label maps agree.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import io as mio
from ..errors import InputError
from ..io import nrrd_io
from ..io.dicom_io import image_information, quiet_itk
from ..volume import Geometry, Volume, VolumeSequence

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


@dataclass(frozen=True)
class ImageHeader:
    """What the scan needs to know of an image file without reading its voxels."""

    geometry: Geometry  #: grid of one (3D) frame
    num_frames: int  #: 1 for a 3D image, T for a 4D one
    path: str


def nifti_header(path: str | os.PathLike) -> ImageHeader:
    """Grid and frame count of a 3D or 4D NIfTI file, read from its header only."""
    p = Path(path)
    reader = _header_reader(p, "NIfTI")
    dim = reader.GetDimension()
    if dim not in (3, 4):
        raise InputError(f"{p} is a {dim}D image; a 3D volume or a 4D cine was expected")
    if reader.GetNumberOfComponents() != 1:
        raise InputError(f"{p} has {reader.GetNumberOfComponents()} components per voxel; a scalar image was expected")
    return ImageHeader(_geometry(reader, p), int(reader.GetSize()[3]) if dim == 4 else 1, str(p))


def _header_reader(p: Path, what: str) -> sitk.ImageFileReader:
    """The ITK header of ``p``; an unreadable one is a one-line error naming the ``what`` format."""
    try:
        return image_information(p)
    except RuntimeError:
        raise InputError(f"cannot read the {what} header of {p}") from None


def _geometry(reader: sitk.ImageFileReader, p: Path) -> Geometry:
    return mio.geometry_from_itk(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), str(p))


def sequence_frame_count(path: str | os.PathLike) -> int:
    """Number of frames of a NIfTI or (sequence) NRRD file, from its header: 1 for a 3D image."""
    if is_nifti(path):
        return nifti_header(path).num_frames
    header = nrrd_io.read_header(path)
    layout = nrrd_io.sequence_layout(header)
    return 1 if layout.list_axis is None else int(header.sizes[layout.list_axis])


def read_sequence_file(path: str | os.PathLike) -> VolumeSequence:
    """A 4D cine from a NIfTI or sequence NRRD file (RAS grid, voxels as stored)."""
    with quiet_itk():
        return mio.read_sequence(Path(path))


def read_volume_file(path: str | os.PathLike) -> Volume:
    """A 3D image file (NIfTI, NRRD, ...) with RAS geometry."""
    with quiet_itk():
        return mio.read_volume(Path(path))


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    """The image series in a DICOM folder as a volume (rescaled to HU for CT, RAS geometry)."""
    return mio.read_volume(Path(folder))


# -- DICOM headers ----------------------------------------------------------------------------

#: DICOM tags read from the first file of a series (SimpleITK key -> our name).
_DICOM_TAGS = {
    "0008|0060": "modality",
    "0008|103e": "series_description",
    "0010|0020": "patient_id",
    "0020|000d": "study_uid",
    "0020|000e": "series_uid",
    "0020|0037": "orientation",
    "0028|0030": "pixel_spacing",
    "0028|0010": "rows",
    "0028|0011": "columns",
}


def dicom_file_info(path: str | os.PathLike) -> dict[str, str] | None:
    """Selected tags of one DICOM image file, or ``None`` if it holds no readable image
    (an RTSTRUCT, a report, a damaged file)."""
    try:
        reader = image_information(path, "GDCMImageIO")
    except RuntimeError:
        return None
    return {name: reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else "" for key, name in _DICOM_TAGS.items()}


def dicom_files(folder: Path) -> list[Path]:
    """The ``.dcm`` files of a series folder, in natural name order (``1-2`` before ``1-10``)."""

    def natural(p: Path):
        return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]

    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm"), key=natural)


# -- any image file -------------------------------------------------------------------------------

#: Image file endings the folder loaders read (lower case; compound endings first).
IMAGE_SUFFIXES = (".seq.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_suffix(path: str | os.PathLike) -> str | None:
    """The image ending of ``path`` (``.seq.nrrd``, ``.nii.gz``, ...), or None for any other file."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def image_header(path: str | os.PathLike) -> ImageHeader:
    """Grid and frame count of any image file the folder loaders read, from its header only.

    NIfTI through :func:`nifti_header`; NRRD through its own header (a list axis makes frames);
    MetaImage through ITK. The geometry of a sequence NRRD is the frames' grid.
    """
    p = Path(path)
    if is_nifti(p):
        return nifti_header(p)
    if image_suffix(p) in (".seq.nrrd", ".nrrd", ".nhdr"):
        return _nrrd_header(p)
    return _itk_header(p)


def _nrrd_header(p: Path) -> ImageHeader:
    """A NRRD file's grid and frame count (a list axis holds frames), as io.read_sequence builds them."""
    header = nrrd_io.read_header(p)
    layout = nrrd_io.sequence_layout(header)
    if layout.vector_axis is not None:
        raise InputError(f"{p} holds vector voxels; a scalar image was expected")
    sizes = header.sizes
    flip = header.space_to_ras_flip
    si, sj, sk = layout.spatial_axes
    columns = np.stack([flip * header.space_directions[a] for a in (si, sj, sk)], axis=1)
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"{p} has a zero-length space direction")
    geometry = Geometry((sizes[sk], sizes[sj], sizes[si]), tuple(spacing), tuple(flip * header.space_origin + 0.0),
                        tuple(map(tuple, columns / spacing[None, :] + 0.0)))
    frames = 1 if layout.list_axis is None else int(sizes[layout.list_axis])
    return ImageHeader(geometry, frames, str(p))


def _itk_header(p: Path) -> ImageHeader:
    reader = _header_reader(p, "image")
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        raise InputError(f"{p} is not a scalar 3D image ({reader.GetDimension()}D, "
                         f"{reader.GetNumberOfComponents()} component(s))")
    return ImageHeader(_geometry(reader, p), 1, str(p))
