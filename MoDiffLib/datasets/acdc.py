"""ACDC cardiac cine MR (Bernard et al., IEEE TMI 2018), as distributed.

Layout (``root`` may be the folder that holds ``database/``, ``database/`` itself, or one of its
``training/`` / ``testing/`` folders)::

    database/training/patient001/Info.cfg                    ED: 1, ES: 12, Group: DCM, Height,
                                                             NbFrame: 30, Weight  (ED/ES 1-based)
    database/training/patient001/patient001_4d.nii.gz        X x Y x Z x T cine
    database/training/patient001/patient001_frame01.nii.gz   the ED frame
    database/training/patient001/patient001_frame01_gt.nii.gz  0 bg, 1 RV, 2 myocardium, 3 LV
    database/training/patient001/patient001_frame12(_gt).nii.gz  the ES frame
    database/testing/patient101/...                          patients 101-150, same files

Splits follow the image-to-video protocol of UVI-Net, also used by Mo-Diff's peers: patients
001-090 train, 091-100 test (both from ``training/``), ``"testing"`` the challenge's testing
patients 101-150; ``"all"`` takes every patient found, whatever its number (``patient7``,
``patient0123`` and numbers beyond 150 included), and ``patients=[...]`` any list of numbers.
Frames default to end-diastole .. end-systole (``frames="ed_to_es"``); ``frames="all"`` keeps the
whole cine as stored and ``frames="cycle"`` the whole cine rolled to start at ED (what
``modiff evaluate`` scores: a whole cycle with its ED and ES labels). The ED/ES label maps are
returned under their frame index within the returned frames; ``meta["frame_phases"]`` gives every
frame's cycle phase from ED (``(frame - ED) / NbFrame``), ``meta["whole_cycle"]`` whether the frames
span the cycle, and the case's ``amplitude`` is its signed EF from the LV labels at ED and ES.

The ACDC NIfTI headers carry a unit-scale sform next to the true qform; MoDiffLib.io reads NIfTI
grids as ITK (and Slicer) do, which takes the qform (the true spacing, e.g. 1.37 x 1.37 x 10 mm).
Licence: research, non-commercial; citing Bernard et al. 2018 is mandatory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Volume, VolumeSequence
from .base import Case4D, CaseDataset, existing_folder, frames_ed_to_es
from .files import nifti_header, read_sequence_file, read_volume_file

#: Patient numbers of the default splits (UVI-Net protocol); "all" takes every patient found.
ACDC_SPLITS: dict[str, range] = {"train": range(1, 91), "test": range(91, 101), "testing": range(101, 151)}
#: Frame selections: ED -> ES, the whole cine as stored, the whole cine from ED.
ACDC_FRAMES = ("ed_to_es", "all", "cycle")

#: Label values of the ground-truth maps.
ACDC_LABEL_NAMES = {0: "background", 1: "right ventricle", 2: "myocardium", 3: "left ventricle"}

_PATIENT_DIR = re.compile(r"^patient(\d+)$")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class _AcdcEntry:
    case_id: str
    patient: int
    folder: str
    image_4d: str
    frame_indices: tuple[int, ...]  # 0-based indices into the 4D cine
    ed: int  # 0-based
    es: int  # 0-based
    label_files: tuple[tuple[int, str], ...]  # (0-based cine frame, path) of the _gt files found
    info: tuple[tuple[str, str], ...]  # Info.cfg as read


def read_info_cfg(path: Path) -> dict[str, str]:
    """The ``Key: value`` lines of an ACDC ``Info.cfg``."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def _frame_number(info: dict[str, str], key: str, path: Path) -> int:
    if key not in info:
        raise InputError(f"{path} has no '{key}:' line (the 1-based {key} frame number is required)")
    try:
        value = float(info[key])
    except ValueError:
        raise InputError(f"{path}: '{key}: {info[key]}' is not a frame number") from None
    if value != int(value) or value < 1:
        raise InputError(f"{path}: '{key}: {info[key]}' is not a 1-based frame number")
    return int(value)


def _find_nifti(folder: Path, stem: str) -> Path | None:
    for suffix in _NIFTI_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def patient_folders(root: Path) -> list[Path]:
    """``patientNNN`` folders under any of the accepted roots, sorted by patient number."""
    candidates = [root]
    if (root / "database").is_dir():
        candidates = [root / "database"]
    base = candidates[0]
    for sub in ("training", "testing"):
        if (base / sub).is_dir():
            candidates.append(base / sub)
    found: dict[int, Path] = {}
    for folder in candidates:
        for p in sorted(folder.iterdir()):
            m = _PATIENT_DIR.match(p.name)
            if m and p.is_dir():
                number = int(m.group(1))
                if number in found:
                    raise InputError(f"patient {number} appears twice: {found[number]} and {p}")
                found[number] = p
    return [found[n] for n in sorted(found)]


class ACDCDataset(CaseDataset):
    """ACDC cines, one case per patient.

    Args:
        root: the folder holding ``database/``, ``database/`` itself, or ``training/``/``testing/``.
        split: ``"train"`` (patients 001-090), ``"test"`` (091-100), ``"testing"`` (101-150) or
            ``"all"`` (every patient found).
        frames: ``"ed_to_es"`` (end-diastole to end-systole, both included), ``"all"`` (the cine as
            stored) or ``"cycle"`` (the whole cine from ED).
        patients: explicit patient numbers instead of a named split.

    Raises:
        InputError: at construction, if no patient of the split is found, an ``Info.cfg`` lacks
            ED or ES, a cine or label file is missing, not 4D, or its grid differs from the cine's.
    """

    source = "acdc"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        frames: str = "ed_to_es",
        patients: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.root = existing_folder(root, "ACDC")
        if frames not in ACDC_FRAMES:
            raise InputError(f"ACDC frames must be 'ed_to_es', 'all' or 'cycle', got {frames!r}")
        if patients is not None:
            wanted = {int(p) for p in patients}
            split_text = f"patients {sorted(wanted)}"
        elif split == "all":
            wanted = None
            split_text = "all patients"
        elif split in ACDC_SPLITS:
            r = ACDC_SPLITS[split]
            wanted = set(r)
            split_text = f"split '{split}' (patients {r.start:03d}-{r.stop - 1:03d})"
        else:
            raise InputError(f"unknown ACDC split {split!r}; use one of {', '.join([*ACDC_SPLITS, 'all'])}")
        self.split = split if patients is None else "custom"
        self.frames = frames

        folders = patient_folders(self.root)
        with_cfg = [f for f in folders if (f / "Info.cfg").is_file()]
        if not with_cfg:
            raise InputError(
                f"no patientNNN folders with Info.cfg under {self.root} (expected the ACDC layout "
                "database/training/patient001/Info.cfg, patient001_4d.nii.gz, ...)"
            )
        chosen = [f for f in folders if wanted is None or _patient_number(f) in wanted]
        if not chosen:
            have = ", ".join(f.name[7:] for f in folders[:3]) + (" ..." if len(folders) > 3 else "")
            raise InputError(f"no ACDC patients of {split_text} under {self.root}; found patients {have}")
        for folder in chosen:
            self._entries.append(self._scan_patient(folder))

    def _scan_patient(self, folder: Path) -> _AcdcEntry:
        name = folder.name
        cfg = folder / "Info.cfg"
        if not cfg.is_file():
            raise InputError(f"{folder} has no Info.cfg (ED/ES frame numbers are read from it)")
        info = read_info_cfg(cfg)
        ed1 = _frame_number(info, "ED", cfg)
        es1 = _frame_number(info, "ES", cfg)
        image_4d = _find_nifti(folder, f"{name}_4d")
        if image_4d is None:
            raise InputError(f"{folder} has no cine {name}_4d.nii.gz")
        header = nifti_header(image_4d)
        num_frames = header.num_frames
        if num_frames < 2:
            raise InputError(f"{image_4d} is not a 4D cine (it holds one frame)")
        if "NbFrame" in info:
            try:
                nb = int(float(info["NbFrame"]))
            except ValueError:
                raise InputError(f"{cfg}: 'NbFrame: {info['NbFrame']}' is not a number") from None
            if nb != num_frames:
                raise InputError(f"{cfg} says NbFrame: {nb}, but {image_4d.name} holds {num_frames} frames")
        for key, value in (("ED", ed1), ("ES", es1)):
            if value > num_frames:
                raise InputError(f"{cfg}: {key}: {value} is beyond the {num_frames} frames of {image_4d.name}")
        ed, es = ed1 - 1, es1 - 1
        if self.frames == "ed_to_es":
            indices = frames_ed_to_es(ed, es, num_frames)
        elif self.frames == "cycle":
            indices = list(range(ed, num_frames)) + list(range(ed))
        else:
            indices = list(range(num_frames))

        labels = []
        for frame0 in sorted({ed, es}):
            stem = f"{name}_frame{frame0 + 1:02d}"
            for path in (_find_nifti(folder, stem), _find_nifti(folder, f"{stem}_gt")):
                if path is None:
                    continue
                h = nifti_header(path)
                if h.num_frames != 1 or not h.geometry.is_close(header.geometry, atol_mm=1e-3):
                    raise InputError(
                        f"{path} has a different grid ({h.geometry.describe()}, {h.num_frames} frame(s)) "
                        f"than the cine {image_4d.name} ({header.geometry.describe()})"
                    )
                if path.name.startswith(f"{stem}_gt"):
                    labels.append((frame0, str(path)))
        return _AcdcEntry(
            case_id=name,
            patient=_patient_number(folder),
            folder=str(folder),
            image_4d=str(image_4d),
            frame_indices=tuple(indices),
            ed=ed,
            es=es,
            label_files=tuple(labels),
            info=tuple(sorted(info.items())),
        )

    def _load(self, entry: _AcdcEntry) -> Case4D:
        cine = read_sequence_file(entry.image_4d)
        idx = list(entry.frame_indices)
        frames = VolumeSequence(cine.frames[idx], cine.geometry, name=entry.case_id)
        position = {frame0: t for t, frame0 in enumerate(idx)}
        labels: dict[int, Volume] = {}
        for frame0, path in entry.label_files:
            if frame0 not in position:
                continue
            label = read_volume_file(path)
            if not label.geometry.is_close(frames.geometry, atol_mm=1e-3):
                raise InputError(f"{path} has a different grid than the cine {Path(entry.image_4d).name}")
            values = np.unique(label.array)
            if not set(values.tolist()) <= set(ACDC_LABEL_NAMES):
                raise InputError(f"{path} holds label values {values.tolist()}; ACDC labels are 0, 1, 2, 3")
            phase = "ED" if frame0 == entry.ed else "ES"
            labels[position[frame0]] = Volume(
                label.array.astype(np.uint8), label.geometry, name=f"{entry.case_id}_{phase}_labels"
            )
        info = dict(entry.info)
        meta = {
            "source": self.source,
            "patient": entry.patient,
            "folder": entry.folder,
            "file": entry.image_4d,
            "group": info.get("Group"),
            "height_cm": _number(info.get("Height")),
            "weight_kg": _number(info.get("Weight")),
            "ed_frame": position.get(entry.ed),
            "es_frame": position.get(entry.es),
            "source_frames": [i + 1 for i in idx],  # 1-based ACDC frame numbers
            "num_source_frames": cine.num_frames,
            "label_names": dict(ACDC_LABEL_NAMES),
            "modality": "MR",
            "kind": "cardiac",
            # the cycle phase of every frame from ED (frame 0 of a whole cycle); ED -> ES is part of one
            "frame_phases": [((i - idx[0]) % cine.num_frames) / cine.num_frames for i in idx],
            "whole_cycle": len(idx) == cine.num_frames,
        }
        ef = _labelled_ef(labels, position.get(entry.ed), position.get(entry.es), frames.geometry.spacing)
        meta["ef_pct"], meta["ef_source"] = ef, None if ef is None else "LV labels at ED and ES"
        return Case4D(entry.case_id, frames, labels or None, None, ef, meta)


def _patient_number(folder: Path) -> int:
    return int(_PATIENT_DIR.match(folder.name).group(1))


def _labelled_ef(labels: dict[int, Volume], ed: int | None, es: int | None, spacing) -> float | None:
    """Signed EF (%) of the LV label (3) at the ED and ES frames, or None where either is missing or empty."""
    if ed is None or es is None or ed not in labels or es not in labels:
        return None
    edv, esv = (int(np.count_nonzero(labels[t].array == 3)) for t in (ed, es))
    return None if edv == 0 else float(100.0 * (edv - esv) / edv)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
