"""Open a data set from a one-line spec, as the command line and configs name them.

Forms::

    phantom:lung:20            20 lung phantoms of the train split (phantom:KIND:N[:SPLIT])
    phantom:cardiac:20:test    20 held-out cardiac phantoms
    acdc:/data/ACDC            ACDC (database/training/patientNNN/...)
    4dlung:/data/manifest      TCIA 4D-Lung (NBIA layout)
    dirlab:/data/dirlab        DIR-Lab 4DCT (CaseNPack/...)
    folder:/data/cines         a folder of 4D files, of numbered 3D frames, or of case sub-folders
    folder:/data/cine.nii.gz   one 4D file (NIfTI or .seq.nrrd) as a one-case data set
    /data/somewhere            a bare folder (the layout is detected) or a 4D file
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InputError
from .acdc import ACDCDataset, patient_folders
from .base import CaseDataset
from .dirlab import DirLabDataset, looks_like_dirlab
from .files import image_suffix
from .folder import FOLDER_SUFFIXES, Folder4DDataset
from .lung4d import Lung4DDataset, looks_like_4dlung
from .phantom import PHANTOM_KINDS, PHANTOM_SEEDS, PhantomDataset

#: Loader of each path spec prefix.
DATASETS: dict[str, type[CaseDataset]] = {
    "acdc": ACDCDataset,
    "4dlung": Lung4DDataset,
    "dirlab": DirLabDataset,
    "folder": Folder4DDataset,
}

SPEC_FORMS = (
    "phantom:KIND:N[:SPLIT] (KIND lung or cardiac, SPLIT train, val or test)",
    "acdc:PATH",
    "4dlung:PATH",
    "dirlab:PATH",
    "folder:PATH (a folder of 4D files, of numbered 3D frames or of case folders, or one 4D file)",
    "a folder path (layout detected) or a 4D file",
)


def _forms() -> str:
    return "; ".join(SPEC_FORMS)


def open_dataset(spec: str, **options) -> CaseDataset:
    """The data set a spec names; ``options`` go to its constructor (e.g. ``split="test"``).

    Raises:
        InputError: an unknown or malformed spec (the message lists the valid forms), or the
            loader's own errors for the data it names.
    """
    text = str(spec).strip()
    if not text:
        raise InputError(f"empty data set spec; use one of: {_forms()}")
    prefix, sep, rest = text.partition(":")
    key = prefix.strip().lower()
    if sep and key == "phantom":
        return _open_phantom(text, rest, options)
    if sep and key in DATASETS:
        if not rest.strip():
            raise InputError(f"data set spec {text!r} names no folder; write {key}:PATH")
        return DATASETS[key](rest.strip(), **options)
    path = Path(text).expanduser()
    if path.is_dir():
        return DATASETS[detect_layout(path)](path, **options)
    if path.is_file():
        if image_suffix(path) is None:
            raise InputError(f"{path} is not a 4D image file ({', '.join(FOLDER_SUFFIXES)}) or a folder. "
                             f"Valid forms: {_forms()}")
        return Folder4DDataset(path, **options)
    if sep and len(key) > 1:
        raise InputError(f"unknown data set kind {prefix!r} in {text!r}; valid forms: {_forms()}")
    raise InputError(f"{text!r} is neither a data set spec nor an existing folder; valid forms: {_forms()}")


def _open_phantom(text: str, rest: str, options: dict) -> PhantomDataset:
    parts = [p.strip() for p in rest.split(":")]
    if len(parts) not in (2, 3):
        raise InputError(f"phantom spec {text!r} must read phantom:KIND:N[:SPLIT], e.g. phantom:lung:20")
    kind, count = parts[0].lower(), parts[1]
    if kind not in PHANTOM_KINDS:
        raise InputError(f"phantom spec {text!r}: kind must be one of {', '.join(PHANTOM_KINDS)}")
    if not re.fullmatch(r"\d+", count) or int(count) < 1:
        raise InputError(f"phantom spec {text!r}: N must be a positive whole number of cases")
    if len(parts) == 3:
        if parts[2].lower() not in PHANTOM_SEEDS:
            raise InputError(f"phantom spec {text!r}: split must be one of {', '.join(PHANTOM_SEEDS)}")
        options = dict(options, split=parts[2].lower())
    return PhantomDataset(kind, num_cases=int(count), **options)


def detect_layout(root: str | os.PathLike) -> str:
    """Which loader a folder's layout calls for: ``acdc``, ``4dlung``, ``dirlab`` or ``folder``.

    Raises:
        InputError: the folder matches none of the layouts.
    """
    p = Path(root)
    if not p.is_dir():
        raise InputError(f"{p} is not a folder; data sets are read from folders")
    if any((f / "Info.cfg").is_file() for f in patient_folders(p)):
        return "acdc"
    if looks_like_dirlab(p):
        return "dirlab"
    if looks_like_4dlung(p):
        return "4dlung"
    if _holds_images(p) or any(_holds_images(c) for c in p.iterdir() if c.is_dir()):
        return "folder"
    raise InputError(
        f"cannot tell the data layout of {p}: expected ACDC (patientNNN/Info.cfg), TCIA 4D-Lung "
        "(<patient>/<study>/<series 'Gated, 0.0%'>/*.dcm), DIR-Lab (CaseNPack/Images/caseN_T00_s.img) "
        f"or 4D files ({', '.join(FOLDER_SUFFIXES)}) or numbered 3D frames (here or in case sub-folders); "
        f"name it explicitly, e.g. acdc:{p}"
    )


def _holds_images(folder: Path) -> bool:
    return any(c.is_file() and image_suffix(c) is not None for c in folder.iterdir())


def loader_of(spec: str) -> str | None:
    """The loader a spec opens (``phantom``, ``acdc``, ``4dlung``, ``dirlab``, ``folder``), or None
    where the spec is malformed (:func:`open_dataset` then says why)."""
    text = str(spec).strip()
    prefix, sep, rest = text.partition(":")
    key = prefix.strip().lower()
    if sep and (key == "phantom" or key in DATASETS):
        return key
    path = Path(text).expanduser()
    if path.is_file():
        return "folder"
    if path.is_dir():
        try:
            return detect_layout(path)
        except InputError:
            return None
    return None
