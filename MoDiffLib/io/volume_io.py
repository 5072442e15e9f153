"""Read and write single 3D volumes: NRRD, NIfTI, MetaImage and DICOM series folders.

Geometry is read by SimpleITK, whose world space is LPS. MoDiff's world is RAS (see
:mod:`MoDiffLib.volume`), so the first two rows of the direction matrix and the first two origin
coordinates are flipped (:func:`volume_from_sitk`, :func:`volume_to_sitk`), here and nowhere else.
NIfTI is the exception on the voxel side: ITK reads a truncated NIfTI file without error and
writes one without raising when the disk is full, so NIfTI voxels are read and written with
nibabel (whose affine is RAS natively); NIfTI geometry is still read by ITK, as Slicer does.

Voxel types are kept (an int16 CT stays int16); only types the formats lack are widened:
bool is written as uint8 and float16 as float32.

Vector volumes (``array`` of shape (K, J, I, 3), e.g. displacement fields) are written as
3-component images with their values stored as they are, i.e. in RAS mm; NRRD and MetaImage
files record this in the header key ``MoDiff_VectorSpace`` (value ``RAS``). Vector values read
from files are likewise returned as stored, without any LPS/RAS conversion.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_file, split_suffix
from ..errors import InputError, OutputError
from ..volume import Geometry, Volume
from . import nrrd_header
from .dicom_io import read_dicom_series

#: File suffixes :func:`read_volume` accepts (a folder is read as a DICOM series).
VOLUME_READ_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: File suffixes :func:`write_volume` writes (single files only, so writes can be atomic).
VOLUME_WRITE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")
#: Header key recording the world frame of vector values in files MoDiff writes.
VECTOR_SPACE_KEY = "MoDiff_VectorSpace"

_LPS_FLIP = np.array([-1.0, -1.0, 1.0])


def file_suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix used for format dispatch (``.nii.gz`` and ``.seq.nrrd`` kept whole)."""
    return split_suffix(path)[1].lower()


# -- SimpleITK <-> Volume ------------------------------------------------------------------------


def volume_from_sitk(image: sitk.Image, name: str = "volume", allow_vector: bool = False) -> Volume:
    """Convert a 3D SimpleITK image (LPS) to a :class:`Volume` (RAS); the voxels are copied.

    Raises:
        InputError: not 3D, multi-component when scalar was asked for (or not 3 components),
            or voxels the :class:`Volume` checks reject (NaN, infinite, empty).
    """
    _check_layout(image.GetDimension(), image.GetNumberOfComponentsPerPixel(), name, allow_vector)
    geometry = geometry_from_itk(
        image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), name
    )
    return Volume(sitk.GetArrayFromImage(image), geometry, name)


def geometry_from_itk(size, spacing, origin_lps, direction_lps, what: str = "image") -> Geometry:
    """RAS :class:`Geometry` of the first three axes of an ITK grid (LPS) of 3 or more dimensions.

    Args:
        size, spacing, origin_lps: per-axis values as ITK gives them (``GetSize`` etc.).
        direction_lps: ITK's row-major n x n direction (``GetDirection``); its top-left 3x3 is used.
        what: names the data in the error message.

    Raises:
        InputError: the grid is unusable (non-positive spacing, non-orthonormal direction).
    """
    n = len(size)
    direction = np.array(direction_lps, dtype=float).reshape(n, n)[:3, :3]
    try:
        return Geometry(
            shape_kji=tuple(int(v) for v in size[:3])[::-1],
            spacing=tuple(spacing[:3]),
            # flip the first two rows / coordinates; "+ 0.0" turns -0.0 into 0.0
            origin_ras=tuple(_LPS_FLIP * np.array(origin_lps[:3], dtype=float) + 0.0),
            direction_ras=tuple(map(tuple, _LPS_FLIP[:, None] * direction + 0.0)),
        )
    except InputError as e:
        raise InputError(f"{what} has an unusable voxel grid: {e}") from None


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """Convert a :class:`Volume` (RAS) to a SimpleITK image (LPS); vector volumes give 3 components."""
    array = storable_voxels(np.asarray(volume.array))
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    image = sitk.GetImageFromArray(array, isVector=volume.is_vector)
    g = volume.geometry
    image.SetSpacing(g.spacing)
    image.SetOrigin(tuple(_LPS_FLIP * np.array(g.origin_ras)))
    image.SetDirection(tuple((_LPS_FLIP[:, None] * g.direction).ravel()))
    if volume.is_vector:
        image.SetMetaData(VECTOR_SPACE_KEY, "RAS")
    return image


def _check_layout(dimension: int, components: int, what: str, allow_vector: bool) -> None:
    if dimension == 2:
        raise InputError(f"{what} is a 2D image; MoDiff needs a 3D volume")
    if dimension == 4:
        raise InputError(
            f"{what} is a 4D image (a time series of volumes); read it with read_sequence "
            "(time series are read from .seq.nrrd, .nrrd and .nii/.nii.gz files)"
        )
    if dimension != 3:
        raise InputError(f"{what} is a {dimension}D image; MoDiff needs a 3D volume")
    if components > 1 and not allow_vector:
        raise InputError(
            f"{what} has {components} components per voxel (a vector or colour image); MoDiff needs a scalar volume"
        )
    if components not in (1, 3):
        raise InputError(f"{what} has {components} components per voxel; MoDiff handles scalars or 3-vectors")


# -- reading -----------------------------------------------------------------------------------------


def read_volume(path: str | os.PathLike, allow_vector: bool = False, series_uid: str | None = None) -> Volume:
    """Read a 3D volume into RAS geometry.

    Args:
        path: a ``.nrrd``/``.nhdr``, ``.nii``/``.nii.gz`` or ``.mha``/``.mhd`` file, or a folder
            holding a DICOM series (see :mod:`MoDiffLib.io.dicom_io` for how a series is chosen).
        allow_vector: accept 3-component voxels and return a (K, J, I, 3) volume.
        series_uid: for a DICOM folder with several series, the Series Instance UID to read.

    Returns:
        The volume, voxel type as stored (rescaled for DICOM, e.g. HU), named after the file.

    Raises:
        InputError: missing or unreadable file, unsupported type, a 2D or 4D image, unwanted
            vector voxels, NaN/infinite voxels or an empty image; the message names the file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"file '{p}' does not exist")
    if p.is_dir():
        image = read_dicom_series(p, series_uid)
        return _to_volume(image, f"DICOM series in '{p}'", p.name or "volume", allow_vector)
    suffix = file_suffix(p)
    if suffix in (".seq.nrrd", ".seq.nhdr"):
        suffix = suffix[4:]
    if suffix not in VOLUME_READ_SUFFIXES:
        raise InputError(
            f"'{p}' is not a supported volume file; use {', '.join(VOLUME_READ_SUFFIXES)} or a DICOM series folder"
        )
    if p.stat().st_size == 0:
        raise InputError(f"'{p}' is an empty file (0 bytes)")
    if suffix in (".nrrd", ".nhdr"):
        _check_nrrd_is_single_volume(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"'{p}' is not a readable {suffix} image ({_sitk_reason(e)})") from None
    _check_layout(reader.GetDimension(), reader.GetNumberOfComponents(), f"'{p}'", allow_vector)
    if suffix in (".nii", ".nii.gz"):
        # ITK reads a truncated NIfTI file without complaint (the missing voxels become zeros),
        # so the voxels come from nibabel, which raises; the geometry stays ITK's, as in Slicer.
        geometry = geometry_from_itk(
            reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), f"'{p}'"
        )
        array = _read_nifti_voxels(p, reader.GetSize(), reader.GetNumberOfComponents())
        volume = Volume(array, geometry, f"'{p}'")
        volume.name = split_suffix(p)[0]
        return volume
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"'{p}' could not be read ({_sitk_reason(e)})") from None
    return _to_volume(image, f"'{p}'", split_suffix(p)[0], allow_vector)


def _read_nifti_voxels(p: Path, size_ijk, components: int) -> np.ndarray:
    """Voxels of a NIfTI volume as (K, J, I) or (K, J, I, C), in ITK's size (checked)."""
    _, data = load_nifti(p)
    shape = tuple(int(n) for n in size_ijk) + ((components,) if components > 1 else ())
    if data.size != int(np.prod(shape)):
        raise InputError(f"'{p}' holds {data.size} values where its header describes {shape}")
    data = data.reshape(shape)  # drops the singleton axes NIfTI puts before vector components
    return np.ascontiguousarray(data.transpose(2, 1, 0, 3) if components > 1 else data.transpose(2, 1, 0))


def load_nifti(p: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A NIfTI image and all its voxels, indexed [i, j, k, ...] as stored.

    Scaled data (``scl_slope``/``scl_inter``) comes back as float32, as ITK returns it, unless
    stored as float64.

    Raises:
        InputError: not a NIfTI file, or truncated/corrupt data (nibabel checks the length).
    """
    try:
        image = nib.load(str(p))
        data = np.asanyarray(image.dataobj)
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as e:
        raise InputError(f"'{p}' is not a readable NIfTI image ({e})") from None
    except (OSError, EOFError, ValueError, zlib.error) as e:
        reason = " ".join(str(e).split())
        raise InputError(f"'{p}' could not be read; it may be truncated or corrupt ({reason})") from None
    slope, inter = image.header.get_slope_inter()
    scaled = (slope is not None and slope != 1.0) or (inter is not None and inter != 0.0)
    if scaled and image.header.get_data_dtype() != np.float64:
        data = data.astype(np.float32)
    return image, data


def _to_volume(image: sitk.Image, what: str, name: str, allow_vector: bool) -> Volume:
    if image.GetNumberOfPixels() == 0:
        raise InputError(f"{what} is an empty image (no voxels)")
    # Volume's checks name the data they reject; give them the file so the message points at it.
    volume = volume_from_sitk(image, what, allow_vector)
    volume.name = name
    return volume


def _check_nrrd_is_single_volume(path: Path) -> None:
    """Reject NRRD time series before ITK misreads their frames as voxel components."""
    header = nrrd_header.read_header(path)
    layout = nrrd_header.sequence_layout(header) if header.dimension >= 4 else None
    if layout is not None and layout.list_axis is not None:
        frames = header.sizes[layout.list_axis]
        raise InputError(
            f"'{path}' is a time series of {frames} volumes (4D); read it with read_sequence"
        )


def _sitk_reason(error: RuntimeError) -> str:
    """The informative part of a SimpleITK exception (its last 'ERROR:' line, no object address)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    reason = lines[-1] if lines else "unknown error"
    for ln in reversed(lines):
        if "ERROR:" in ln:
            reason = ln.split("ERROR:", 1)[1].strip()
            break
    return re.sub(r"\w+\(0x[0-9a-fA-F]+\):\s*", "", reason).rstrip(": ")[:200]


# -- writing -----------------------------------------------------------------------------------------


def write_volume(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a volume atomically as ``.nrrd`` (gzip), ``.nii``, ``.nii.gz`` or ``.mha`` (zlib).

    NRRD and MetaImage are written by SimpleITK (LPS on disk), NIfTI by nibabel (RAS affine as
    qform and sform, vector volumes as (X, Y, Z, 1, 3) with the ``vector`` intent, as ITK does).

    The file appears complete or not at all: it is written under a temporary name beside
    ``path`` and renamed when done.

    Returns:
        The path written.

    Raises:
        OutputError: unsupported suffix, ``path`` exists and ``overwrite`` is false, the folder is
            missing or unwritable, or the write failed (e.g. disk full).
    """
    p = Path(path)
    suffix = file_suffix(p)
    if suffix not in VOLUME_WRITE_SUFFIXES:
        raise OutputError(
            f"cannot write '{p}': unsupported volume file type '{suffix or p.name}'; "
            f"use {', '.join(VOLUME_WRITE_SUFFIXES)}"
        )
    if suffix in (".nii", ".nii.gz"):
        # nibabel, not ITK: ITK's NIfTI writer reports a failed write (disk full) only on stderr.
        with atomic_file(p, overwrite) as tmp:
            array = storable_voxels(np.asarray(volume.array))
            data = array.transpose(2, 1, 0, 3)[:, :, :, None, :] if volume.is_vector else array.transpose(2, 1, 0)
            image = new_nifti(data, volume.geometry)
            if volume.is_vector:
                image.header.set_intent("vector")
            try:
                image.to_filename(str(tmp))
            except OSError as e:
                raise OutputError(f"could not write '{p}' ({e.strerror or e})") from None
        return p
    image = volume_to_sitk(volume)
    writer = sitk.ImageFileWriter()
    writer.SetUseCompression(True)
    writer.SetCompressionLevel(1)
    with atomic_file(p, overwrite) as tmp:
        writer.SetFileName(str(tmp))
        try:
            writer.Execute(image)
        except RuntimeError as e:
            raise OutputError(f"could not write '{p}' ({_sitk_reason(e)})") from None
    return p


def new_nifti(data_xyz: np.ndarray, geometry: Geometry) -> nib.Nifti1Image:
    """A NIfTI-1 image of ``data_xyz`` (indexed [i, j, k, ...]) with qform = sform = IJK-to-RAS (code 1).

    Extra axes (time, components) get a zoom of 1; callers set time units and intents.
    """
    affine = geometry.ijk_to_ras()
    image = nib.Nifti1Image(data_xyz, affine)
    image.header.set_data_dtype(data_xyz.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_zooms(tuple(geometry.spacing) + (1.0,) * (data_xyz.ndim - 3))
    image.header.set_xyzt_units(xyz="mm")
    return image


def storable_voxels(array: np.ndarray) -> np.ndarray:
    """Widen voxel types the file formats lack: bool -> uint8, float16 -> float32."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array
