"""Read one DICOM series from a folder into a SimpleITK image (LPS, as ITK gives it).

Choosing the series: a folder with one series is read as is. A folder with several series
(a CT plus its scout, say) is read as the series with the most files, and a warning is logged
naming it; if two or more series tie for the most files the choice would be a guess, so an
:class:`InputError` lists them and asks for ``series_uid``. Subfolders are not searched.

Checks beyond ITK's: a series must have at least two slices, no two slices at the same
position (a 4D or multi-phase series stored as one series), evenly spaced slices (ITK would
silently take the spacing of the first two), and slices stacked along the normal of their
planes (a gantry tilt would give a sheared grid that ITK's direction matrix cannot express).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

log = logging.getLogger(__name__)

_IMAGE_POSITION = "0020|0032"
_IMAGE_ORIENTATION = "0020|0037"
_SERIES_DESCRIPTION = "0008|103e"


@contextmanager
def quiet_itk() -> Iterator[None]:
    """Silence ITK's console warnings while reading (e.g. "missing slices detected" before MoDiff's own
    one-line error, or ACDC's "unexpected scales in sform"): MoDiff reports problems itself."""
    was = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(was)


def image_information(path: str | os.PathLike, image_io: str | None = None) -> sitk.ImageFileReader:
    """A reader holding the header of the image file ``path`` (size, spacing, direction, tags), read
    without its voxels and with ITK's warnings silenced.

    Raises:
        RuntimeError: as ITK raises it for a file it cannot read (callers word their own error).
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if image_io is not None:
        reader.SetImageIO(image_io)
    with quiet_itk():
        reader.ReadImageInformation()
    return reader


def list_series(folder: str | Path) -> dict[str, tuple[str, ...]]:
    """Series instance UID -> its files (sorted by slice position) for the DICOM files in ``folder``."""
    with quiet_itk():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        return {uid: tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a DICOM series as a 3D SimpleITK image (LPS geometry, rescaled values such as HU).

    Args:
        folder: a folder holding the DICOM files of the series.
        series_uid: the Series Instance UID to read when the folder holds several series.

    Raises:
        InputError: no series, an ambiguous choice, an unknown ``series_uid``, an unreadable
            series, a single slice, or slices that do not form a regular 3D grid.
    """
    folder = Path(folder)
    series = list_series(folder)
    if not series:
        raise InputError(f"folder '{folder}' holds no DICOM series (subfolders are not searched)")
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(
                f"folder '{folder}' has no DICOM series {series_uid}; it holds {_describe(series)}"
            )
        uid = series_uid
    elif len(series) == 1:
        (uid,) = series
    else:
        most = max(len(files) for files in series.values())
        largest = [u for u, files in series.items() if len(files) == most]
        if len(largest) > 1:
            raise InputError(
                f"folder '{folder}' holds several DICOM series of {most} files each ({_describe(series)}); "
                "choose one with --series-uid UID (series_uid= in Python)"
            )
        uid = largest[0]
        log.warning("folder '%s' holds %d DICOM series; reading the largest, %s", folder, len(series), uid)
    files = series[uid]

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    _check_series_size(files, f"DICOM series {uid} in '{folder}'")
    try:
        with quiet_itk():  # ITK warns of uneven spacing on stderr; the checks below say it in one line
            image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"DICOM series {uid} in '{folder}' could not be read ({_first_line(e)})") from None
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        raise InputError(
            f"DICOM series {uid} in '{folder}' has a single slice (a 2D image); MoDiff needs a 3D volume"
        )
    if len(files) > 1:
        _check_slice_positions(reader, len(files), f"DICOM series {uid} in '{folder}'")
    return image


def _check_series_size(files: tuple[str, ...], what: str) -> None:
    """Refuse a series whose slices declare more voxels than :data:`~MoDiffLib.volume.MAX_VOXELS`,
    from the first slice's header, before ITK allocates the volume."""
    from ..volume import MAX_VOXELS

    try:
        reader = image_information(files[0])
    except RuntimeError:
        return  # unreadable first slice: the series read reports it
    size = reader.GetSize()
    voxels = int(np.prod(size[:2], dtype=object)) * len(files)
    if voxels > MAX_VOXELS:
        raise InputError(
            f"{what} declares {voxels} voxels ({len(files)} slices of {size[0]}x{size[1]}); "
            f"MoDiff reads at most {MAX_VOXELS}"
        )


def _check_slice_positions(reader: sitk.ImageSeriesReader, n: int, what: str) -> None:
    try:
        positions = np.array(
            [[float(v) for v in reader.GetMetaData(i, _IMAGE_POSITION).split("\\")] for i in range(n)]
        )
        cosines = np.array([float(v) for v in reader.GetMetaData(0, _IMAGE_ORIENTATION).split("\\")])
    except (RuntimeError, ValueError):
        return  # no per-slice geometry to check (e.g. a secondary capture); ITK's result stands
    if positions.shape != (n, 3) or cosines.shape != (6,):
        return
    normal = np.cross(cosines[:3], cosines[3:])
    normal /= np.linalg.norm(normal)
    along = np.sort(positions @ normal)
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise InputError(
            f"{what} has several slices at the same position (a multi-phase or 4D series?); "
            "MoDiff reads one 3D volume per series"
        )
    median = float(np.median(steps))
    if np.max(np.abs(steps - median)) > 0.01 * median + 1e-3:
        raise InputError(
            f"{what} has unevenly spaced slices ({steps.min():.3g} to {steps.max():.3g} mm apart: missing "
            "slices or varying thickness); resample it to a regular grid first"
        )
    span = positions[np.argmax(positions @ normal)] - positions[np.argmin(positions @ normal)]
    off_axis = np.linalg.norm(span - (span @ normal) * normal)
    if off_axis > 1e-3 * np.linalg.norm(span) + 0.01:
        raise InputError(
            f"{what} is stacked at an angle to its slice planes (gantry tilt of "
            f"{np.degrees(np.arctan2(off_axis, abs(span @ normal))):.1f} degrees); resample it to a regular grid first"
        )


def _describe(series: dict[str, tuple[str, ...]]) -> str:
    parts = []
    for uid, files in series.items():
        description = ""
        try:
            r = image_information(files[0])
            if r.HasMetaDataKey(_SERIES_DESCRIPTION):
                description = f" '{r.GetMetaData(_SERIES_DESCRIPTION).strip()}'"
        except RuntimeError:
            pass
        parts.append(f"{uid}{description}: {len(files)} files")
    return "; ".join(parts)


def _first_line(error: Exception) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception thrown", "/"))]
    return (useful or lines or ["unknown error"])[-1][:200]
