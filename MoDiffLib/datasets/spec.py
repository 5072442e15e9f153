"""Open a data set from a one-line spec, as the command line and configs name them.

Forms::

    phantom:lung:20            20 lung phantoms of the train split (phantom:KIND:N[:SPLIT])
    phantom:cardiac:20:test    20 held-out cardiac phantoms
    acdc:/data/ACDC            ACDC (database/training/patientNNN/...)
    4dlung:/data/manifest      TCIA 4D-Lung (NBIA layout)
    dirlab:/data/dirlab        DIR-Lab 4DCT (CaseNPack/...)
    folder:/data/cines         every 4D NIfTI / .seq.nrrd file in a folder
    /data/somewhere            a bare folder: the layout is detected
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InputError
from .acdc import ACDCDataset, patient_folders
from .base import CaseDataset
from .dirlab import DirLabDataset, looks_like_dirlab
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
    "folder:PATH",
    "a folder path (layout detected)",
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
    if path.exists():
        raise InputError(f"{path} is a file; a data set spec names a folder. Valid forms: {_forms()}")
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
    if any(c.is_file() and c.name.lower().endswith(FOLDER_SUFFIXES) for c in p.iterdir()):
        return "folder"
    raise InputError(
        f"cannot tell the data layout of {p}: expected ACDC (patientNNN/Info.cfg), TCIA 4D-Lung "
        "(<patient>/<study>/<series 'Gated, 0.0%'>/*.dcm), DIR-Lab (CaseNPack/Images/caseN_T00_s.img) "
        f"or 4D files ({', '.join(FOLDER_SUFFIXES)}); name it explicitly, e.g. acdc:{p}"
    )
