"""Where a user's cine sits in its cycle: ED / ES / EF and the cycle phase of every frame.

The evaluation and the models take frame 0 as the start of the cycle (end-diastole for a heart)
and a cine of T frames as one whole cycle at phases ``t / T`` unless ``meta["frame_phases"]`` says
otherwise. A user's case gets there here (:func:`place_in_cycle`):

* ED / ES: the sidecar's ``ed`` / ``es``, else -- where the labels hold the LV -- the labelled frame
  of the largest / smallest LV volume (:func:`lv_volumes_ml`);
* EF: the sidecar's ``ef``, else ``100 (V_ED - V_ES) / V_ED`` of the LV labels (signed); it becomes
  the case's ``amplitude`` (the motion strength of a cardiac model);
* a whole cardiac cycle whose ED is not frame 0 is rolled so that it is (``meta["source_frames"]``
  keeps the original order); a part of a cycle keeps its order and needs its phases (sidecar
  ``phases`` or ``cycle_frames``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..volume import Volume, VolumeSequence
from .base import Case4D
from .sidecar import Sidecar

#: Names (lower case, ``_``/``-`` read as spaces) of the LV blood pool in a label mapping.
LV_NAMES = ("lv", "lv blood", "lv blood pool", "lv cavity", "lvbp", "left ventricle", "left ventricle blood pool")


def is_lv_name(name: str) -> bool:
    """Whether a label name means the LV blood pool (see :data:`LV_NAMES`)."""
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split()) in LV_NAMES


def labelled_frames(labels: dict[int, Volume] | VolumeSequence | None, num_frames: int) -> dict[int, np.ndarray]:
    """``frame -> label array`` of every labelled frame."""
    if labels is None:
        return {}
    if isinstance(labels, VolumeSequence):
        return {t: labels.frames[t] for t in range(num_frames)}
    return {int(t): np.asarray(v.array) for t, v in labels.items()}


def lv_volumes_ml(labels: dict[int, np.ndarray], values: list[int], voxel_ml: float) -> dict[int, float]:
    """LV volume (mL) of every labelled frame: voxels of the LV ``values`` times the voxel volume."""
    return {t: float(np.isin(a, values).sum()) * voxel_ml for t, a in sorted(labels.items())}


def _roll(case_id: str, frames: VolumeSequence, labels, order: list[int]):
    """Frames and labels in ``order`` (indices of the old frames)."""
    new = VolumeSequence(frames.frames[order], frames.geometry, name=frames.name)
    if isinstance(labels, VolumeSequence):
        labels = VolumeSequence(labels.frames[order], labels.geometry, name=labels.name)
    elif isinstance(labels, dict):
        position = {old: t for t, old in enumerate(order)}
        labels = {position[t]: v for t, v in labels.items()}
    return new, labels


def place_in_cycle(case_id: str, frames: VolumeSequence, labels, sidecar: Sidecar,
                   meta: dict[str, Any]) -> Case4D:
    """The case with ED at frame 0 (cardiac), its ED / ES / EF, phases and label names in ``meta``.

    Raises:
        InputError: a sidecar frame index beyond the frames, phases that do not fit the frames, or
            a part of a cycle without its phases.
    """
    t_count = frames.num_frames
    for key in ("ed", "es"):
        value = getattr(sidecar, key)
        if value is not None and value >= t_count:
            raise InputError(f"{sidecar.path}: '{key}': {value} is beyond the {t_count} frames of {case_id}")
    names = sidecar.label_names or {}
    lv_values = sorted(v for v, n in names.items() if is_lv_name(n))
    arrays = labelled_frames(labels, t_count)
    volumes = lv_volumes_ml(arrays, lv_values, float(np.prod(frames.geometry.spacing)) / 1000.0) if lv_values else {}
    volumes = {t: v for t, v in volumes.items() if v > 0}
    notes: list[str] = []
    if arrays and not names:
        notes.append("labels found but no label names: give them in a sidecar (e.g. case.json "
                     "{\"labels\": {\"1\": \"lv\"}}) for the LV volume and EF metrics")
    elif arrays and not lv_values:
        notes.append(f"no label is named as the LV blood pool ({', '.join(LV_NAMES[:3])}, ...); no LV metrics")
    ed, es = sidecar.ed, sidecar.es
    ed_source = es_source = "sidecar"
    if ed is None and volumes:
        ed, ed_source = max(volumes, key=lambda t: (volumes[t], -t)), "labels (largest LV volume)"
    if es is None and len(volumes) >= 2:
        es, es_source = min(volumes, key=lambda t: (volumes[t], t)), "labels (smallest LV volume)"
    kind = sidecar.kind or ("cardiac" if lv_values else None)

    source_frames = list(range(t_count))
    if sidecar.whole_cycle:
        if sidecar.phases is not None and len(sidecar.phases) != t_count:
            raise InputError(f"{sidecar.path}: {len(sidecar.phases)} phases for the {t_count} frames of {case_id}")
        if kind == "cardiac" and ed:  # rolled so that frame 0 is end-diastole, where the cycle starts
            source_frames = list(range(ed, t_count)) + list(range(ed))
            frames, labels = _roll(case_id, frames, labels, source_frames)
        phases = [t / t_count for t in range(t_count)]
    else:
        if sidecar.phases is not None:
            if len(sidecar.phases) != t_count:
                raise InputError(f"{sidecar.path}: {len(sidecar.phases)} phases for the {t_count} frames of {case_id}")
            start = sidecar.phases[0]
            phases = [(p - start) % 1.0 for p in sidecar.phases]
        elif sidecar.cycle_frames is not None:
            if sidecar.cycle_frames < t_count:
                raise InputError(f"{sidecar.path}: 'cycle_frames': {sidecar.cycle_frames} is fewer than the "
                                 f"{t_count} frames of {case_id}")
            phases = [t / sidecar.cycle_frames for t in range(t_count)]
        else:
            raise InputError(f"{sidecar.path}: 'whole_cycle': false needs the frames' cycle 'phases' "
                             "or 'cycle_frames' (the frames of one whole cycle)")
    position = {old: t for t, old in enumerate(source_frames)}
    ed_new = None if ed is None else position[ed]
    es_new = None if es is None else position[es]
    ef, ef_source = sidecar.ef, "sidecar"
    if ef is None and ed is not None and es is not None and ed in volumes and es in volumes:
        ef, ef_source = 100.0 * (volumes[ed] - volumes[es]) / volumes[ed], "LV labels at ED and ES"
    meta = dict(meta)
    meta.update({
        "source_frames": source_frames,
        "frame_phases": phases,
        "whole_cycle": bool(sidecar.whole_cycle),
        "label_names": names,
        "ed_frame": ed_new, "es_frame": es_new,
        "ed_source": None if ed is None else ed_source, "es_source": None if es is None else es_source,
        "ef_pct": ef, "ef_source": None if ef is None else ef_source,
        "lv_volumes_ml": {str(position[t]): round(v, 4) for t, v in volumes.items()},
        "notes": notes,
    })
    if kind is not None:
        meta["kind"] = kind
    if sidecar.modality is not None:
        meta["modality"] = sidecar.modality
    amplitude = ef if kind == "cardiac" else None
    return Case4D(case_id, frames, labels, None, amplitude, meta)
