"""The optional JSON sidecar of a user's case: what the images cannot say about themselves.

Looked up beside the images, first match wins: ``<stem>.json`` (the 4D file's stem, or a frame
series' name such as ``img_tf.json`` for ``img_tf0..14``), then ``case.json``, then ``modiff.json``.
Every key is optional::

    {"kind": "cardiac",            lung | cardiac (else the model's kind)
     "modality": "MR",             CT | MR
     "labels": {"1": "lv", "2": "myocardium"},   label value -> name (LV: lv, lv_blood, left ventricle)
     "ed": 0, "es": 6,             0-based frame indices (in file / frame-number order)
     "ef": 58.0,                   ejection fraction in %, signed (overrides the one from the labels)
     "whole_cycle": true,          the frames span one whole cycle (default); false: part of it,
     "phases": [0.0, 0.05, ...],   then the cycle phase of each frame in [0, 1), or
     "cycle_frames": 30}           the frames one whole cycle would have (phase t / cycle_frames)

Unknown keys are refused (a typo would otherwise be ignored silently).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

#: Sidecar names looked for in a case folder after ``<stem>.json``.
SIDECAR_NAMES = ("case.json", "modiff.json")
SIDECAR_KEYS = ("kind", "modality", "labels", "ed", "es", "ef", "whole_cycle", "phases", "cycle_frames")


@dataclass(frozen=True)
class Sidecar:
    """The facts of one sidecar, checked (None: not given)."""

    path: str | None = None
    kind: str | None = None
    modality: str | None = None
    labels: tuple[tuple[int, str], ...] | None = None
    ed: int | None = None
    es: int | None = None
    ef: float | None = None
    whole_cycle: bool = True
    phases: tuple[float, ...] | None = None
    cycle_frames: int | None = None

    @property
    def label_names(self) -> dict[int, str] | None:
        return None if self.labels is None else dict(self.labels)


def find_sidecar(folder: Path, stems: list[str]) -> Path | None:
    """The first of ``<stem>.json`` (for each of ``stems``), ``case.json``, ``modiff.json`` in ``folder``."""
    for name in [f"{s}.json" for s in stems] + list(SIDECAR_NAMES):
        p = folder / name
        if p.is_file():
            return p
    return None


def _index(data: dict, key: str, path: Path) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{path}: '{key}' must be a 0-based frame index, got {value!r}")
    return value


def read_sidecar(path: Path | None) -> Sidecar:
    """The checked sidecar at ``path`` (an empty one for None).

    Raises:
        InputError: unreadable JSON, an unknown key or a value of the wrong type or range.
    """
    if path is None:
        return Sidecar()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the sidecar {path}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object such as {{\"ed\": 0, \"es\": 6}}")
    unknown = sorted(set(data) - set(SIDECAR_KEYS))
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)}; use {', '.join(SIDECAR_KEYS)}")
    kind = data.get("kind")
    if kind is not None and kind not in ("lung", "cardiac"):
        raise InputError(f"{path}: 'kind' must be lung or cardiac, got {kind!r}")
    modality = data.get("modality")
    if modality is not None and str(modality).upper() not in ("CT", "MR"):
        raise InputError(f"{path}: 'modality' must be CT or MR, got {modality!r}")
    labels = data.get("labels")
    if labels is not None:
        try:
            labels = tuple(sorted((int(k), str(v)) for k, v in dict(labels).items()))
        except (TypeError, ValueError):
            raise InputError(f"{path}: 'labels' must map label values to names, e.g. {{\"1\": \"lv\"}}") from None
    ef = data.get("ef")
    if ef is not None and (isinstance(ef, bool) or not isinstance(ef, (int, float)) or not math.isfinite(ef)
                           or not -100.0 < float(ef) <= 100.0):
        raise InputError(f"{path}: 'ef' must be an ejection fraction in % (-100..100), got {ef!r}")
    whole = data.get("whole_cycle", True)
    if not isinstance(whole, bool):
        raise InputError(f"{path}: 'whole_cycle' must be true or false, got {whole!r}")
    phases = data.get("phases")
    if phases is not None:
        try:
            phases = tuple(float(p) for p in phases)
        except (TypeError, ValueError):
            raise InputError(f"{path}: 'phases' must be a list of cycle phases in [0, 1)") from None
        if not all(0.0 <= p < 1.0 for p in phases):
            raise InputError(f"{path}: 'phases' must lie in [0, 1) (fractions of the cycle), got {list(phases)}")
    cycle_frames = data.get("cycle_frames")
    if cycle_frames is not None and (isinstance(cycle_frames, bool) or not isinstance(cycle_frames, int)
                                     or cycle_frames < 2):
        raise InputError(f"{path}: 'cycle_frames' must be a whole number of at least 2, got {cycle_frames!r}")
    return Sidecar(str(path), kind, None if modality is None else str(modality).upper(), labels,
                   _index(data, "ed", path), _index(data, "es", path), None if ef is None else float(ef),
                   whole, phases, cycle_frames)


def sidecar_dict(sidecar: Sidecar) -> dict[str, Any]:
    """The sidecar's given facts as plain JSON values (for ``Case4D.meta``)."""
    out: dict[str, Any] = {"file": sidecar.path}
    for key in SIDECAR_KEYS:
        value = getattr(sidecar, key)
        if key == "labels" and value is not None:
            value = {str(k): v for k, v in value}
        elif key == "phases" and value is not None:
            value = list(value)
        if value is not None and not (key == "whole_cycle" and value is True):
            out[key] = value
    return out
