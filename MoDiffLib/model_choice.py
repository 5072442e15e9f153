"""Which model an input gets: by ``--kind``, else by its modality, guessed from the file.

The registry's models are of a ``kind`` (``lung``: breathing, trained on CT; ``cardiac``: heart
beat, trained on MR). Without ``--model``, ``modiff generate`` takes the first registered model
of the kind chosen here:

* ``--kind lung|cardiac`` names the kind; ``--kind ct|mr`` names the modality, whose kind is the
  one of the registered models of that modality (CT -> lung, MR -> cardiac);
* otherwise the modality is guessed: a DICOM series' Modality tag (0008,0060) when it says CT
  or MR, else the intensities: CT is in Hounsfield units, so a CT of the chest or heart holds air
  or lung well below -500 HU; MR is in arbitrary non-negative units. The guess is printed with
  how to override it, since a CT whose air was cropped away or stored without its rescale
  offset looks like MR.

:func:`check_spatial_axes` refuses 3D files whose header marks one of the three axes as time (a
2D+t cine stored as a volume would otherwise be animated as if it were anatomy). Detected: a
NRRD whose ``kinds`` names an axis ``time``/``list`` (or whose ``units`` give an axis a unit of
time); a 3D NIfTI whose units give time but no spatial unit (``xyzt_units``: the axes are not in
mm). Not detectable in general: a NIfTI written with mm units and frames on its third axis. A
DICOM series of one slice over time has all its slices at one position and is refused by
:func:`MoDiffLib.io.read_volume` itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .volume import Volume

#: Values of ``--kind``: a model kind or a modality.
KIND_CHOICES = ("lung", "cardiac", "ct", "mr")
#: Below this an intensity can only be air or lung in Hounsfield units (MR is never negative).
CT_AIR_HU = -500.0
#: Share of voxels that must lie below :data:`CT_AIR_HU` for the input to count as CT (robust to
#: a few negative outliers of an MR reconstruction).
CT_AIR_FRACTION = 0.01
_UNITS_OF_TIME = {"s", "sec", "second", "seconds", "ms", "msec", "us", "usec", "min", "minutes", "hz"}


@dataclass(frozen=True)
class ModelChoice:
    """The kind of model chosen for an input and why.

    Attributes:
        kind: registry model kind (``lung`` or ``cardiac``).
        modality: ``CT`` or ``MR`` (the modality the kind's models are trained on).
        reason: how it was chosen, for the message (e.g. ``--kind ct``, or what the guess saw).
        guessed: True when no ``--kind`` was given.
    """

    kind: str
    modality: str
    reason: str
    guessed: bool


def _kind_of_modality(modality: str) -> str:
    from .registry import list_models

    for entry in list_models():
        if entry.modality.upper() == modality:
            return entry.kind
    raise InputError(f"no {modality} model is registered; give a model with --model")


def _modality_of_kind(kind: str) -> str:
    from .registry import list_models

    for entry in list_models():
        if entry.kind == kind:
            return entry.modality.upper()
    raise InputError(f"no {kind} model is registered; give a model with --model")


def choose_kind(volume: Volume, kind: str | None = None, path: str | os.PathLike | None = None) -> ModelChoice:
    """The model kind for ``volume``: from ``kind`` (a value of :data:`KIND_CHOICES`) or guessed.

    Args:
        volume: the input volume (its intensities are looked at when guessing).
        kind: ``lung``/``cardiac`` (a model kind) or ``ct``/``mr`` (a modality); None to guess.
        path: the file or DICOM folder the volume came from (a DICOM Modality tag beats the
            intensity guess).

    Raises:
        InputError: an unknown ``kind``, or no registered model of the chosen kind/modality.
    """
    if kind is not None:
        k = str(kind).lower()
        if k not in KIND_CHOICES:
            raise InputError(f"--kind must be one of {', '.join(KIND_CHOICES)}, got {kind!r}")
        if k in ("ct", "mr"):
            return ModelChoice(_kind_of_modality(k.upper()), k.upper(), f"--kind {k}", False)
        return ModelChoice(k, _modality_of_kind(k), f"--kind {k}", False)
    modality, reason = guess_modality(volume, path)
    return ModelChoice(_kind_of_modality(modality), modality, reason, True)


def guess_modality(volume: Volume, path: str | os.PathLike | None = None) -> tuple[str, str]:
    """``("CT" | "MR", reason)`` for a volume: the DICOM Modality tag, else its intensity range."""
    if path is not None and Path(path).is_dir():
        tag = dicom_modality(Path(path))
        if tag in ("CT", "MR"):
            return tag, f"its DICOM Modality tag is {tag}"
    array = np.asarray(volume.array)
    if volume.is_vector:
        raise InputError("the input holds vectors, not intensities; give a scalar CT or MR volume")
    # A strided sample of at most about a million voxels: the guess need not see every voxel.
    sample = array.reshape(-1)[:: max(1, array.size // 1_000_000)]
    low, high = float(np.min(sample)), float(np.max(sample))
    air = float(np.mean(sample < CT_AIR_HU))
    if air >= CT_AIR_FRACTION:
        return "CT", f"{air:.0%} of its voxels are below {CT_AIR_HU:g} HU (air; values {low:.4g} to {high:.4g})"
    return "MR", f"no air below {CT_AIR_HU:g} HU (values {low:.4g} to {high:.4g})"


def dicom_modality(folder: Path) -> str | None:
    """The Modality tag shared by the DICOM series in ``folder`` (None if absent or mixed)."""
    from .io.dicom_io import image_information, list_series

    found = set()
    for files in list_series(folder).values():
        try:
            reader = image_information(files[0])
        except RuntimeError:
            return None
        found.add(reader.GetMetaData("0008|0060").strip().upper() if reader.HasMetaDataKey("0008|0060") else "")
    return found.pop() if len(found) == 1 else None


def describe_choice(choice: ModelChoice, model_name: str) -> str:
    """The one line printed when the model was chosen by a guess: what, why, and how to override."""
    other = "mr" if choice.modality == "CT" else "ct"
    return (f"using model '{model_name}' ({choice.kind}, {choice.modality}): the input looks like "
            f"{choice.modality} ({choice.reason}); give --kind {other} or --model NAME to choose another")


def check_spatial_axes(path: str | os.PathLike) -> None:
    """Refuse a 3D file whose header marks one of its three axes as time (see the module notes).

    DICOM folders and formats without such header fields pass.

    Raises:
        InputError: the header names a time axis; the message says which and what to do.
    """
    from .atomic import split_suffix

    p = Path(path)
    if p.is_dir() or not p.is_file():
        return
    suffix = split_suffix(p)[1].lower()
    hint = "MoDiff animates 3D volumes; read a 2D+t cine with read_sequence or give one 3D frame"
    if suffix in (".nrrd", ".nhdr", ".seq.nrrd", ".seq.nhdr"):
        from .io import nrrd_io

        header = nrrd_io.read_header(p)
        if header.dimension != 3:
            return
        for axis, (kind, unit) in enumerate(zip(header.kinds, header.units)):
            if kind in nrrd_io.LIST_KINDS or unit.strip().lower() in _UNITS_OF_TIME:
                what = f"kind '{kind}'" if kind in nrrd_io.LIST_KINDS else f"unit '{unit}'"
                raise InputError(f"'{p}' is 3D but its axis {axis} is time ({what} in its NRRD header); {hint}")
    elif suffix in (".nii", ".nii.gz"):
        from .io.volume_io import read_nifti_header

        header = read_nifti_header(p)
        space_unit, time_unit = header.get_xyzt_units()
        if len(header.get_data_shape()) == 3 and space_unit == "unknown" and time_unit != "unknown":
            raise InputError(
                f"'{p}' is 3D but its NIfTI header gives its axes a unit of time ({time_unit}) and no unit of "
                f"length (a 2D+t cine?); {hint}"
            )
