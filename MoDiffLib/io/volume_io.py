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

import gzip
import io
import os
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_file, split_suffix
from ..errors import InputError, OutputError
from ..volume import MAX_VOXELS, Geometry, Volume
from . import nrrd_io
from .decompress import DEFLATE_MAX_RATIO, decompress_into
from .dicom_io import image_information, quiet_itk, read_dicom_series

#: File suffixes :func:`read_volume` accepts (a folder is read as a DICOM series).
VOLUME_READ_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: File suffixes :func:`write_volume` writes (single files only, so writes can be atomic).
VOLUME_WRITE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")
#: Header key recording the world frame of vector values in files MoDiff writes.
VECTOR_SPACE_KEY = "MoDiff_VectorSpace"

#: Most voxel values one sequence file may declare (frames x voxels x components): four times
#: :data:`~MoDiffLib.volume.MAX_VOXELS`, e.g. 30 frames of 512 x 512 x 270. Like MAX_VOXELS it is
#: checked from the header, before any memory is taken.
MAX_SEQUENCE_VALUES = 4 * MAX_VOXELS

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
    if not p.is_file():
        raise InputError(f"'{p}' is not a regular file")
    if p.stat().st_size == 0:
        raise InputError(f"'{p}' is an empty file (0 bytes)")
    # Sizes are checked from the header before ITK or nibabel allocate anything (issue 17):
    # a 345-byte header may declare gigabytes.
    nifti = read_nifti_header(p) if suffix in (".nii", ".nii.gz") else None
    if suffix in (".nrrd", ".nhdr"):
        _check_nrrd_is_single_volume(p)
    if suffix in (".mha", ".mhd"):
        _check_metaimage_data(p)
    try:
        reader = image_information(p)
    except RuntimeError as e:
        raise InputError(f"'{p}' is not a readable {suffix} image ({_sitk_reason(e)})") from None
    _check_layout(reader.GetDimension(), reader.GetNumberOfComponents(), f"'{p}'", allow_vector)
    check_voxel_count(reader.GetSize(), f"'{p}'")
    if nifti is not None:
        # ITK reads a truncated NIfTI file without complaint (the missing voxels become zeros),
        # so the voxels come from read_nifti_data, which raises; the geometry stays ITK's, as in Slicer.
        geometry = geometry_from_itk(
            reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), f"'{p}'"
        )
        array = _read_nifti_voxels(p, nifti, reader.GetSize(), reader.GetNumberOfComponents())
        volume = Volume(array, geometry, f"'{p}'")
        volume.name = split_suffix(p)[0]
        return volume
    try:
        with quiet_itk():
            image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"'{p}' could not be read ({_sitk_reason(e)})") from None
    return _to_volume(image, f"'{p}'", split_suffix(p)[0], allow_vector)


def check_voxel_count(size_ijk, what: str, limit: int = MAX_VOXELS) -> None:
    """Refuse a grid of more than ``limit`` voxels (by default :data:`~MoDiffLib.volume.MAX_VOXELS`),
    from its declared size; ``what`` names the data."""
    voxels = int(np.prod([int(n) for n in size_ijk[:3]], dtype=object))  # Python ints: no overflow
    if voxels > limit:
        dims = "x".join(str(int(n)) for n in size_ijk[:3])
        raise InputError(f"{what} declares {voxels} voxels ({dims}); MoDiff reads at most {limit}")


def _read_nifti_voxels(p: Path, header: nib.Nifti1Header, size_ijk, components: int) -> np.ndarray:
    """Voxels of a NIfTI volume as (K, J, I) or (K, J, I, C), in ITK's size (checked)."""
    data = read_nifti_data(p, header, MAX_VOXELS * components)
    shape = tuple(int(n) for n in size_ijk) + ((components,) if components > 1 else ())
    if data.size != int(np.prod(shape)):
        raise InputError(f"'{p}' holds {data.size} values where its header describes {shape}")
    data = data.reshape(shape, order="F")  # drops the singleton axes NIfTI puts before vector components
    return np.ascontiguousarray(data.transpose(2, 1, 0, 3) if components > 1 else data.transpose(2, 1, 0))


def load_nifti(p: Path, max_values: int = MAX_SEQUENCE_VALUES) -> tuple[nib.Nifti1Header, np.ndarray]:
    """The header of a NIfTI file and all its voxels, indexed [i, j, k, ...] as stored.

    See :func:`read_nifti_header` and :func:`read_nifti_data` for the checks.

    Raises:
        InputError: not a NIfTI file, a zero voxel size, more than ``max_values`` values, or
            truncated/corrupt data.
    """
    header = read_nifti_header(p)
    return header, read_nifti_data(p, header, max_values)


#: NIfTI ``pixdim`` indices of the i, j, k axes, for messages.
_AXES = ("i", "j", "k")


def read_nifti_header(p: Path) -> nib.Nifti1Header:
    """The NIfTI-1 or NIfTI-2 header of a single-file ``.nii``/``.nii.gz``, as stored.

    Read without nibabel's fixes, which would set a zero ``pixdim`` to 1 mm silently (as ITK
    does): a zero or non-finite voxel size of a spatial axis is refused, naming the axis.

    Raises:
        InputError: not a single-file NIfTI image, or a header that cannot describe a grid.
    """
    try:
        with open(p, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        with (gzip.open(p, "rb") if compressed else open(p, "rb")) as f:
            raw = f.read(540)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"'{p}' is not a readable NIfTI image ({' '.join(str(e).split())})") from None
    header = None
    for cls, size, magic in ((nib.Nifti1Header, 348, b"n+1"), (nib.Nifti2Header, 540, b"n+2")):
        if len(raw) >= size and size in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")):
            candidate = cls.from_fileobj(io.BytesIO(raw[:size]), check=False)
            if bytes(candidate["magic"]).rstrip(b"\0") == magic:
                header = candidate
                break
    if header is None:
        raise InputError(f"'{p}' is not a readable NIfTI image (no single-file NIfTI-1 or NIfTI-2 header)")
    try:
        shape = header.get_data_shape()
        header.get_data_dtype()
    except (nib.spatialimages.HeaderDataError, ValueError, KeyError) as e:
        raise InputError(f"'{p}' is not a readable NIfTI image ({e})") from None
    pixdim = header["pixdim"]
    for axis in range(min(3, len(shape))):
        value = float(pixdim[axis + 1])
        if not np.isfinite(value) or value == 0:
            raise InputError(
                f"'{p}' has voxel size {value:g} along axis {_AXES[axis]} (pixdim[{axis + 1}] of its NIfTI header); "
                "set the true voxel size in the header (ITK would take 1 mm)"
            )
    return header


def read_nifti_data(p: Path, header: nib.Nifti1Header, max_values: int) -> np.ndarray:
    """All voxels of a NIfTI file, indexed [i, j, k, ...] as stored (Fortran order, native bytes).

    The declared size is checked before any memory is taken: at most ``max_values`` values
    (and :data:`~MoDiffLib.volume.MAX_VOXELS` per 3D grid), and data that fits in the file (for
    ``.nii.gz``: that the compressed file could expand to it). Compressed data is decompressed
    streamed into the declared size and no further, so a gzip bomb costs no more than its header
    declares. Scaled data (``scl_slope``/``scl_inter``) comes back as float32, as ITK returns it,
    unless stored as float64.

    Raises:
        InputError: too many voxels, truncated or corrupt data.
    """
    shape = tuple(int(n) for n in header.get_data_shape())
    check_voxel_count(shape + (1, 1), f"'{p}'")  # the 3D grid (a 2D image padded)
    count = int(np.prod(shape, dtype=object))
    if count > max_values:
        raise InputError(
            f"'{p}' declares {count} voxel values ({'x'.join(map(str, shape))}); MoDiff reads at most {max_values}"
        )
    dtype = header.get_data_dtype()
    offset = int(header.get_data_offset())
    nbytes = count * dtype.itemsize
    size = p.stat().st_size
    with open(p, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    can_hold = size * DEFLATE_MAX_RATIO if compressed else size - offset
    if nbytes > can_hold:
        raise InputError(
            f"'{p}' is truncated: its header declares {nbytes} bytes of voxel data but the "
            f"{size}-byte file {'cannot expand to that' if compressed else f'holds {max(size - offset, 0)}'}"
        )
    buffer = np.empty(nbytes, np.uint8)  # pages are only taken as data arrives
    try:
        with open(p, "rb") as f:
            if compressed:
                got = decompress_into(f, buffer, "gzip", skip=offset)
            else:
                f.seek(offset)
                got = f.readinto(memoryview(buffer))
    except (OSError, EOFError, zlib.error, ValueError) as e:
        reason = " ".join(str(e).split())
        raise InputError(f"'{p}' could not be read; it may be truncated or corrupt ({reason})") from None
    if got < nbytes:
        raise InputError(f"'{p}' is truncated: it holds {got} of the {nbytes} bytes of voxel data its header declares")
    data = buffer.view(dtype)
    if not dtype.isnative and dtype.fields is None:
        data = data.astype(dtype.newbyteorder("="))
    data = data.reshape(shape, order="F")
    try:
        slope, inter = header.get_slope_inter()
    except nib.spatialimages.HeaderDataError as e:
        raise InputError(f"'{p}' has invalid scaling in its NIfTI header ({e})") from None
    scaled = (slope is not None and slope != 1.0) or (inter is not None and inter != 0.0)
    if scaled:
        data = data.astype(np.float64 if dtype == np.float64 else np.float32)
        data *= 1.0 if slope is None else slope
        data += 0.0 if inter is None else inter
    return data


def _to_volume(image: sitk.Image, what: str, name: str, allow_vector: bool) -> Volume:
    if image.GetNumberOfPixels() == 0:
        raise InputError(f"{what} is an empty image (no voxels)")
    # Volume's checks name the data they reject; give them the file so the message points at it.
    volume = volume_from_sitk(image, what, allow_vector)
    volume.name = name
    return volume


def _check_nrrd_is_single_volume(path: Path) -> None:
    """Reject NRRD time series before ITK misreads their frames as voxel components, and data
    that cannot be there (more than the voxel budget, beyond the file's end, a device file)."""
    header = nrrd_io.read_header(path)
    layout = nrrd_io.sequence_layout(header) if header.dimension >= 4 else None
    if layout is not None and layout.list_axis is not None:
        frames = header.sizes[layout.list_axis]
        raise InputError(
            f"'{path}' is a time series of {frames} volumes (4D); read it with read_sequence"
        )
    if header.dimension == 3:
        check_voxel_count(header.sizes, f"NRRD file '{path}'")
    nrrd_io.check_data_size(header, MAX_VOXELS * (3 if header.dimension > 3 else 1))


#: MetaImage ``ElementType`` -> bytes per value (unknown types count as 1: the check stays a lower bound).
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_FLOAT": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_DOUBLE": 8}


def _check_metaimage_data(path: Path) -> None:
    """Check a MetaImage header's declared data against the data's size before ITK allocates it:
    uncompressed data must fit, a detached data file must be a regular file."""
    fields: dict[str, str] = {}
    header_bytes = 0
    try:
        with open(path, "rb") as f:
            while header_bytes < 1 << 20:
                line = f.readline(4096)
                if not line:
                    break
                header_bytes += len(line)
                key, _, value = line.decode("latin-1").partition("=")
                fields[key.strip().lower()] = value.strip()
                if key.strip().lower() == "elementdatafile":
                    break
    except OSError as e:
        raise InputError(f"cannot read '{path}': {e.strerror or e}") from None
    name = fields.get("elementdatafile")
    try:
        sizes = [int(v) for v in fields.get("dimsize", "").split()]
        components = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        return  # malformed: ITK's reader says so
    if name is None or not sizes:
        return
    check_voxel_count(sizes, f"'{path}'")
    if name.upper() == "LOCAL":
        data, available = path, path.stat().st_size - header_bytes
    elif " " in name or "%" in name or name.upper().startswith("LIST"):
        return  # data spread over several files: ITK checks each
    else:
        data = Path(name) if Path(name).is_absolute() else path.parent / name
        if not data.exists():
            raise InputError(f"'{path}' points to data file '{data}', which does not exist")
        if not data.is_file():
            raise InputError(f"'{path}' points to data file '{data}', which is not a regular file")
        available = data.stat().st_size
    need = int(np.prod(sizes, dtype=object)) * max(components, 1) * _MET_BYTES.get(fields.get("elementtype", ""), 1)
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if need > (available * DEFLATE_MAX_RATIO if compressed else available):
        raise InputError(
            f"'{path}' is truncated: its header declares {need} bytes of voxel data but holds {max(available, 0)}"
            + (" compressed" if compressed else "")
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
