"""File input and output of volumes and 4D cines, in MoDiff's RAS convention.

Public API:

* :func:`read_volume` / :func:`write_volume`: one 3D volume (NRRD, NIfTI, MetaImage; DICOM
  series folders for reading). ITK's LPS world is converted to RAS here and nowhere else.
* :func:`read_sequence` / :func:`write_sequence`: a 4D cine as a Slicer volume sequence
  (``.seq.nrrd``) or 4D NIfTI.
* :func:`volume_from_sitk` / :func:`volume_to_sitk` / :func:`geometry_from_itk`: the same
  LPS/RAS conversion for code that needs a SimpleITK image (e.g. resampling) or reads an ITK
  header itself.

Every user-caused problem raises :class:`~MoDiffLib.errors.InputError` (reading) or
:class:`~MoDiffLib.errors.OutputError` (writing) with one sentence naming the file; writes are
atomic (see :mod:`MoDiffLib.atomic`).
"""

from .sequence_io import SEQUENCE_READ_SUFFIXES, SEQUENCE_WRITE_SUFFIXES, read_sequence, write_sequence
from .volume_io import (
    VECTOR_SPACE_KEY,
    VOLUME_READ_SUFFIXES,
    VOLUME_WRITE_SUFFIXES,
    geometry_from_itk,
    read_volume,
    volume_from_sitk,
    volume_to_sitk,
    write_volume,
)

__all__ = [
    "SEQUENCE_READ_SUFFIXES",
    "SEQUENCE_WRITE_SUFFIXES",
    "VECTOR_SPACE_KEY",
    "VOLUME_READ_SUFFIXES",
    "VOLUME_WRITE_SUFFIXES",
    "geometry_from_itk",
    "read_sequence",
    "read_volume",
    "volume_from_sitk",
    "volume_to_sitk",
    "write_sequence",
    "write_volume",
]
