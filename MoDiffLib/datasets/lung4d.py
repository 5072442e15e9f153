"""TCIA 4D-Lung (Hugo et al. 2016) 4DCT, in the layout the NBIA Data Retriever writes.

Layout (``root`` may be the download folder holding ``4D-Lung/``, ``4D-Lung/`` itself, one patient
or one study folder)::

    4D-Lung/100_HM10395/07-02-2003-NA-p4-14571/                      one study (date, number)
        1.000000-P4P100S300I00003 Gated 0.0A-29193/1-001.dcm ...     CT, "P4^P100^S300^I00003, Gated, 0.0%A"
        1.000000-P4P100S300I00004 Gated 10.0A-82400/...              CT, 10.0 %
        ...
        1.000000-P4P100S300I00012 Gated 90.0A-70956/...              CT, 90.0 %
        1.000000-P4P100S300I00003 Gated 0.0A-423.1/1-1.dcm           RTSTRUCT of phase 0 (skipped)

A case is one 4DCT: the gated series of one study that share their series description apart
from the phase percentage and the per-phase image number (``^I000NN``). The phase of a series is
read from its SeriesDescription tag (``Gated, 40.0%``), else from its folder name (``Gated 40.0A``;
the retriever drops ``%`` and ``,``). Folders without a readable image (RTSTRUCT, reports) and
series without a gated phase are left out and listed in ``skipped``.

Construction reads one header per series and checks, within each case, that the selected
phases are all there and agree in slice count, matrix, pixel spacing and orientation; the full
3D grids (origins, slice positions) are compared when a case is loaded. Values are HU (the
DICOM rescale is applied). Licence: CC BY 3.0 (cite Hugo et al. and TCIA).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..volume import VolumeSequence
from .base import Case4D, CaseDataset, existing_folder, phase_percentages
from .files import dicom_file_info, dicom_files, read_dicom_series

#: "Gated, 40.0%A" in a SeriesDescription, "Gated 40.0A" in an NBIA folder name.
_GATED = re.compile(r"gated\s*,?\s*(\d{1,3}(?:\.\d+)?)\s*%?", re.IGNORECASE)
#: The per-phase image number of the description ("^I00003", "I00003" in folder names).
_IMAGE_NUMBER = re.compile(r"(\^|(?<=\d))I\d+")


def gated_phase(text: str) -> float | None:
    """The phase percentage of a gated series description or folder name, else ``None``."""
    m = _GATED.search(text or "")
    if not m:
        return None
    value = float(m.group(1))
    return value if 0.0 <= value < 100.0 else None


def series_group_key(text: str) -> str:
    """A description with its phase and per-phase image number removed, for grouping phases."""
    key = _GATED.sub("Gated %", text)
    key = _IMAGE_NUMBER.sub("", key)
    return re.sub(r"\s+", " ", key).strip().lower()


@dataclass(frozen=True)
class _Series:
    folder: str
    phase: float
    description: str
    num_files: int
    info: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Lung4DEntry:
    case_id: str
    patient: str
    study: str
    series: tuple[_Series, ...]  # selected phases, sorted by percentage


class Lung4DDataset(CaseDataset):
    """TCIA 4D-Lung 4DCTs, one case per gated 4DCT (patient, study, series group).

    Args:
        root: the NBIA download folder, ``4D-Lung/``, a patient or a study folder.
        phases: ``"0-5"`` (0 %..50 %, end-inhale to end-exhale: the common protocol), ``"all"``
            (0 %..90 %) or a list of percentages.
        description_filter: optional regular expression a series description must match
            (e.g. ``"S300"`` for the planning 4DCTs, leaving out 4D-CBCTs).
        skip_incomplete: leave out (and list in ``skipped``) 4DCTs lacking a selected phase
            instead of raising.

    Raises:
        InputError: at construction, if no gated 4DCT is found, a 4DCT lacks a selected phase,
            holds the same phase twice, or its phases disagree in their headers.
    """

    source = "4dlung"

    def __init__(
        self,
        root: str | os.PathLike,
        phases: str | Sequence[float] = "0-5",
        description_filter: str | None = None,
        skip_incomplete: bool = False,
    ) -> None:
        super().__init__()
        self.root = existing_folder(root, "4D-Lung")
        self.phases = phase_percentages(phases)
        pattern = re.compile(description_filter, re.IGNORECASE) if description_filter else None
        base = self.root / "4D-Lung" if (self.root / "4D-Lung").is_dir() else self.root

        groups: dict[tuple[str, str, str], list[_Series]] = {}
        for folder in _series_folders(base):
            files = dicom_files(folder)
            info = dicom_file_info(files[0])
            if info is None:
                self.skipped.append((str(folder), "no readable DICOM image (e.g. RTSTRUCT)"))
                continue
            description = info["series_description"]
            phase = gated_phase(description)
            if phase is None:
                phase = gated_phase(folder.name)
                description = description or folder.name
            if phase is None:
                self.skipped.append((str(folder), f"not a gated phase series ({description or folder.name!r})"))
                continue
            if pattern is not None and not pattern.search(description):
                self.skipped.append((str(folder), f"description {description!r} does not match the filter"))
                continue
            study = folder.parent
            patient = study.parent
            key = (str(patient), str(study), series_group_key(description))
            groups.setdefault(key, []).append(
                _Series(str(folder), phase, description, len(files), tuple(sorted(info.items())))
            )

        if not groups:
            raise InputError(
                f"no gated 4DCT series under {self.root} (expected the NBIA layout "
                "4D-Lung/<PatientID>/<study>/<series 'Gated, 0.0%'>/1-001.dcm)"
            )
        per_study: dict[str, int] = {}
        for patient, study, _ in groups:
            per_study[study] = per_study.get(study, 0) + 1
        for key in sorted(groups):
            entry = self._make_entry(key, groups[key], per_study[key[1]] > 1, skip_incomplete)
            if entry is not None:
                self._entries.append(entry)
        if not self._entries:
            raise InputError(
                f"no 4DCT under {self.root} has all the phases {_phase_list(self.phases)}; "
                f"left out: {'; '.join(f'{p} ({r})' for p, r in self.skipped[:3])}"
            )

    def _make_entry(self, key, series: list[_Series], several_in_study: bool, skip_incomplete: bool):
        patient, study, group = key
        by_phase: dict[float, _Series] = {}
        for s in sorted(series, key=lambda s: s.folder):
            if s.phase in by_phase:
                raise InputError(
                    f"phase {s.phase:g}% appears twice in one 4DCT: {by_phase[s.phase].folder} and {s.folder}"
                )
            by_phase[s.phase] = s
        missing = [p for p in self.phases if p not in by_phase]
        if missing:
            reason = f"4DCT lacks phase(s) {_phase_list(missing)} (has {_phase_list(sorted(by_phase))})"
            if skip_incomplete:
                self.skipped.append((study, reason))
                return None
            raise InputError(f"{study}: {reason}; pass skip_incomplete=True to leave it out")
        chosen = tuple(by_phase[p] for p in self.phases)
        ref = dict(chosen[0].info)
        for s in chosen[1:]:
            info = dict(s.info)
            if s.num_files != chosen[0].num_files:
                raise InputError(
                    f"{s.folder} has {s.num_files} slices but phase {chosen[0].phase:g}% has "
                    f"{chosen[0].num_files}: the phases of a 4DCT must share one grid"
                )
            for tag in ("rows", "columns", "pixel_spacing", "orientation"):
                if not _same_tag(info.get(tag, ""), ref.get(tag, "")):
                    raise InputError(
                        f"{s.folder}: {tag.replace('_', ' ')} {info.get(tag)!r} differs from phase "
                        f"{chosen[0].phase:g}% ({ref.get(tag)!r}): the phases of a 4DCT must share one grid"
                    )
        patient_name, study_name = Path(patient).name, Path(study).name
        case_id = f"{patient_name}_{study_name}"
        if several_in_study:
            case_id += "_" + re.sub(r"[^a-z0-9]+", "-", group).strip("-")
        return _Lung4DEntry(case_id, patient_name, study_name, chosen)

    def _load(self, entry: _Lung4DEntry) -> Case4D:
        volumes = [read_dicom_series(s.folder) for s in entry.series]
        geometry = volumes[0].geometry
        for s, v in zip(entry.series[1:], volumes[1:]):
            if not v.geometry.is_close(geometry, atol_mm=1e-3):
                raise InputError(
                    f"{s.folder} ({v.geometry.describe()}, origin {np.round(v.geometry.origin_ras, 3).tolist()}) "
                    f"is not on the grid of phase {entry.series[0].phase:g}% "
                    f"({geometry.describe()}, origin {np.round(geometry.origin_ras, 3).tolist()})"
                )
        frames = VolumeSequence(np.stack([v.array for v in volumes]), geometry, name=entry.case_id)
        info = dict(entry.series[0].info)
        meta = {
            "source": self.source,
            "patient": info.get("patient_id") or entry.patient,
            "study": entry.study,
            "phases_percent": [s.phase for s in entry.series],
            "series_descriptions": [s.description for s in entry.series],
            "folders": [s.folder for s in entry.series],
            "modality": info.get("modality") or "CT",
        }
        return Case4D(entry.case_id, frames, None, None, None, meta)


def looks_like_4dlung(folder: Path, depth: int = 3) -> bool:
    """A ``4D-Lung`` folder, or a folder named like a gated series ('... Gated 0.0A ...') holding
    ``.dcm`` files within ``depth`` levels of ``folder``."""
    if (folder / "4D-Lung").is_dir():
        return True
    level = [folder]
    for _ in range(depth + 1):
        following = []
        for d in level:
            if gated_phase(d.name) is not None and any(f.suffix.lower() == ".dcm" for f in d.iterdir()):
                return True
            following.extend(c for c in sorted(d.iterdir()) if c.is_dir())
        level = following
    return False


def _series_folders(base: Path) -> list[Path]:
    """Every folder under ``base`` (itself included) that holds ``.dcm`` files, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        if any(f.lower().endswith(".dcm") for f in filenames):
            found.append(Path(dirpath))
    return found


def _same_tag(a: str, b: str) -> bool:
    """Equal DICOM values, numbers compared to 1e-4 (``0.976562`` vs ``0.9765625``)."""
    pa, pb = a.split("\\"), b.split("\\")
    if len(pa) != len(pb):
        return False
    for x, y in zip(pa, pb):
        try:
            if abs(float(x) - float(y)) > 1e-4:
                return False
        except ValueError:
            if x.strip() != y.strip():
                return False
    return True


def _phase_list(phases) -> str:
    return ", ".join(f"{p:g}%" for p in phases)
