"""What the web viewer shows, found and read: the cine, its puncture plan, the risk label map.

``modiff view CINE`` takes a cine file or a folder that holds one (what ``modiff demo``,
``modiff generate`` or ``modiff phantom`` writes). Beside it the viewer looks for what the user
did not name:

* **the plan**: ``--plan`` (a folder written by ``modiff plan``, or its ``plan.json``), else the
  folder ``modiff plan`` writes by default (``<cine name>-plan`` beside the cine), else the one
  plan folder inside a CINE folder (or a ``plan.json`` in it);
* **the motion fields** of the plan: ``motion.seq.nrrd`` in the plan folder (``modiff plan
  --save-motion``), which carries a frame-0 label map into the other frames;
* **the risk structures**: ``--labels``, else the label map the plan was made with
  (``source.risk`` of plan.json), else ``labels.seq.nrrd`` beside the cine (a phantom case).

Everything is checked against the cine (frame count, grid) before the viewer starts; a problem
raises :class:`~MoDiffLib.errors.InputError` with one sentence naming it. What was looked for and
not found is kept in :attr:`ViewerInputs.notes`, which the viewer shows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import split_suffix
from ..errors import InputError
from ..motion.fields import MotionFields
from ..planning import PuncturePlan, RiskStructures, names_beside, risk_structures
from ..volume import VolumeSequence

#: Cine file names that MoDiff's commands write, in the order a folder is searched.
CINE_NAMES = ("cine.seq.nrrd", "frames.seq.nrrd")
#: Sequence files beside a cine that are not a cine (motion, labels, spread).
NOT_CINE_WORDS = ("motion", "label", "spread")
PLAN_FILE = "plan.json"
MOTION_FILE = "motion.seq.nrrd"
LABELS_FILE = "labels.seq.nrrd"


@dataclass
class ViewerInputs:
    """The data of one viewer session, checked against each other.

    Attributes:
        cine: the 4D cine (scalar frames).
        cine_path: the file it was read from.
        plan: the puncture plan of this cine, or None.
        plan_path: the plan folder (or plan.json), or None.
        fields: the plan's motion fields (frame 0 -> t), or None.
        risk: the risk structures to draw (label map of frame 0 or one per frame), or None.
        labels_path: the label map file, or None.
        notes: what the viewer could not find or will not show, one sentence each.
    """

    cine: VolumeSequence
    cine_path: Path
    plan: PuncturePlan | None = None
    plan_path: Path | None = None
    fields: MotionFields | None = None
    risk: RiskStructures | None = None
    labels_path: Path | None = None
    notes: list[str] = field(default_factory=list)


# -- finding ------------------------------------------------------------------------------------------
def _is_sequence_file(path: Path) -> bool:
    suffix = split_suffix(path)[1].lower()
    return suffix in (".seq.nrrd", ".seq.nhdr") or (suffix in (".nii", ".nii.gz") and path.is_file())


def find_cine(path: str | os.PathLike) -> Path:
    """The cine file named by ``path``: the file itself, or the cine inside a folder.

    Raises:
        InputError: nothing at ``path``, or a folder without exactly one recognisable cine.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"the cine '{p}' does not exist; give a .seq.nrrd file or a folder written by modiff demo")
    if p.is_file():
        return p
    for name in CINE_NAMES:
        if (p / name).is_file():
            return p / name
    candidates = sorted(c for c in p.iterdir() if c.is_file() and _is_sequence_file(c)
                        and not any(w in c.name.lower() for w in NOT_CINE_WORDS))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise InputError(f"the folder '{p}' holds no cine (looked for {', '.join(CINE_NAMES)} or one other .seq.nrrd)")
    names = ", ".join(c.name for c in candidates)
    raise InputError(f"the folder '{p}' holds several cines ({names}); name the file to view")


def _plan_dir_of(path: Path) -> Path:
    """A plan folder from ``--plan`` (the folder or its plan.json), checked to hold a plan.json."""
    if path.is_file() and path.name == PLAN_FILE:
        return path.parent
    if not path.exists():
        raise InputError(f"the plan '{path}' does not exist; give the folder written by modiff plan")
    if not (path / PLAN_FILE).is_file():
        raise InputError(f"the plan folder '{path}' has no {PLAN_FILE}; give the folder written by modiff plan")
    return path


def find_plan(cine_path: Path, given: str | os.PathLike | None, cine_arg: str | os.PathLike | None = None,
              notes: list[str] | None = None) -> Path | None:
    """The plan folder of ``cine_path``: ``given`` (checked), else the one found beside it (or None).

    ``cine_arg`` is what the user named as CINE (a folder is also searched for plan folders);
    ``notes`` receives a sentence when several plans are found and none is chosen.
    """
    if given is not None:
        return _plan_dir_of(Path(given))
    default = cine_path.with_name(f"{split_suffix(cine_path)[0]}-plan")
    if (default / PLAN_FILE).is_file():
        return default
    folder = Path(cine_arg) if cine_arg is not None and Path(cine_arg).is_dir() else cine_path.parent
    if (folder / PLAN_FILE).is_file():
        return folder
    found = sorted(d for d in folder.iterdir() if d.is_dir() and (d / PLAN_FILE).is_file())
    if len(found) == 1:
        return found[0]
    if found and notes is not None:
        notes.append(f"several plans in '{folder}' ({', '.join(d.name for d in found)}); choose one with --plan")
    return None


def _risk_path_from_plan(plan: PuncturePlan, plan_dir: Path) -> Path | None:
    """The label map ``modiff plan`` used (``source.risk``), as written or relative to the plan's folder."""
    risk = plan.source.get("risk") if isinstance(plan.source, dict) else None
    if not risk:
        return None
    p = Path(risk)
    for candidate in (p, plan_dir.parent / p, plan_dir / p):
        if candidate.exists():
            return candidate
    return None


# -- reading --------------------------------------------------------------------------------------------
def read_plan(plan_dir: Path) -> PuncturePlan:
    """The plan in ``plan_dir/plan.json`` (InputError if unreadable or not a plan)."""
    path = plan_dir / PLAN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the plan '{path}': {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"the plan '{path}' is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"the plan '{path}' is not a MoDiff plan (plan.json holds no object)")
    try:
        return PuncturePlan.from_dict(data)
    except InputError as exc:
        raise InputError(f"'{path}': {exc}") from None


def _read_labels(path: Path):
    """A label map file as a Volume or a VolumeSequence (what ``modiff plan --risk`` accepts)."""
    from ..io import read_sequence, read_volume

    if split_suffix(path)[1].lower() in (".seq.nrrd", ".seq.nhdr"):
        return read_sequence(path)
    try:
        return read_volume(path)
    except InputError as first:
        try:
            return read_sequence(path)
        except InputError:
            raise first from None


def load_inputs(cine: str | os.PathLike, plan: str | os.PathLike | None = None,
                labels: str | os.PathLike | None = None) -> ViewerInputs:
    """Find and read what ``modiff view CINE [--plan PLAN] [--labels LABELS]`` shows (see the module docstring).

    Raises:
        InputError: a named file that is missing or unreadable, a cine of vector frames, a plan
            with another frame count than the cine or a point outside it, a label map on another
            grid or with another frame count.
    """
    from ..io import read_sequence

    cine_path = find_cine(cine)
    sequence = read_sequence(cine_path)
    if sequence.frames.ndim != 4:
        raise InputError(f"'{cine_path}' holds vector frames (displacements?); the viewer shows a cine of images")
    inputs = ViewerInputs(cine=sequence, cine_path=cine_path)

    plan_dir = find_plan(cine_path, plan, cine, inputs.notes)
    if plan_dir is not None:
        inputs.plan = read_plan(plan_dir)
        inputs.plan_path = plan_dir
        if inputs.plan.num_frames != sequence.num_frames:
            raise InputError(f"the plan '{plan_dir}' has {inputs.plan.num_frames} frames but the cine "
                             f"'{cine_path}' has {sequence.num_frames}; it was made for another cine")
        for name, p in (("entry", inputs.plan.entry_ras), ("target", inputs.plan.target_ras)):
            if not bool(sequence.geometry.contains_ras(p)):
                raise InputError(f"the {name} point of the plan '{plan_dir}' lies outside the cine "
                                 f"'{cine_path}' ({sequence.geometry.describe()}); it was made for another cine")
        motion = plan_dir / MOTION_FILE
        if motion.is_file():
            fields = MotionFields.from_sequence(read_sequence(motion), {"method": "plan", "source": str(motion)})
            if fields.num_frames != sequence.num_frames or not fields.geometry.is_close(sequence.geometry, atol_mm=1e-3):
                raise InputError(f"the motion fields '{motion}' ({fields.num_frames} frames of "
                                 f"{fields.geometry.describe()}) do not match the cine ({sequence.num_frames} "
                                 f"frames of {sequence.geometry.describe()})")
            inputs.fields = fields
    else:
        inputs.notes.append("no plan found: run modiff plan on this cine (or give --plan) to see the path and "
                            "the gating window")

    labels_path = Path(labels) if labels is not None else None
    if labels_path is not None and not labels_path.exists():
        raise InputError(f"the label map '{labels_path}' does not exist")
    if labels_path is None and inputs.plan is not None:
        labels_path = _risk_path_from_plan(inputs.plan, plan_dir)
        if labels_path is None and inputs.plan.structures:
            inputs.notes.append(f"the risk label map of the plan ({inputs.plan.source.get('risk')}) was not "
                                "found; give it with --labels")
    if labels_path is None and (cine_path.parent / LABELS_FILE).is_file():
        labels_path = cine_path.parent / LABELS_FILE
    if labels_path is not None:
        label_map = _read_labels(labels_path)
        names = names_beside(labels_path) or {}
        chosen = None
        if inputs.plan is not None and inputs.plan.structures:
            # the plan's risks under the plan's names: the clearances of the curves are theirs
            names = {**names, **{v: n for n, v in inputs.plan.structures.items()}}
            chosen = list(inputs.plan.structures)
        entry = inputs.plan.entry_ras if inputs.plan is not None else None
        target = inputs.plan.target_ras if inputs.plan is not None else None
        inputs.risk = risk_structures(label_map, sequence.geometry, sequence.num_frames, names, chosen, entry, target)
        inputs.labels_path = labels_path
        if not inputs.risk.per_frame and inputs.fields is None:
            why = ("the plan folder has no motion fields (modiff plan --save-motion)" if inputs.plan is not None
                   else "there is no plan with motion fields")
            inputs.notes.append(f"the risk structures are a label map of frame 0 and {why}: they are drawn where "
                                "they are in frame 0")
    return inputs
