"""Puncture planning over a breathing (or beating) cycle: does the planned path stay safe?

The user plans on frame 0: an **entry** point on the skin and a **target** (e.g. a nodule
centre). The entry is taken as still (the needle enters through the chest wall, which barely
moves); the target moves with the tissue, ``target_t = target + u_t(target)`` (see
:mod:`MoDiffLib.motion.fields`). For every frame ``t`` the straight path entry -> target_t is
checked against the risk structures of that frame:

* with one label map of frame 0, each structure moves with the motion: its voxel centres are
  carried forward (``p + u_t(p)``), and a path point of frame t lies in the structure when its
  frame-0 origin (``back_to_frame0``) does;
* with one label map per frame, the map of frame t is used as it is.

``min_clearance_mm`` of a structure is the shortest distance between the path segment and the
structure's voxel centres in that frame (0 when the path passes through one of its voxels). A
frame is **clear** when no structure is crossed and every clearance is at least the margin.

The **gating window** is the set of frames that are clear *and* where the target is within
``tolerance_mm`` of its planned (frame-0) position: a needle advanced in those phases reaches the
target along a safe path. The **recommended frame** is the middle of the longest run of
consecutive gating frames (the cycle wraps around: the last frame is followed by frame 0, unless
the cine is marked as not cyclic), the
phase that leaves the most time on either side; ties go to the frame with the smaller target
displacement, then the larger clearance.

A generative motion model gives a mean motion and, over its K samples, a per-voxel **spread**
(``modiff generate --spread-out``: the length of the per-component standard deviation, mm, at
frame-0 voxel positions). With a spread, the target's spread ``s_t`` is sampled at the frame-0
target and a frame is within tolerance only when ``|u_t(target)| + spread_factor * s_t <=
tolerance_mm``: the target then stays within tolerance for (about) every motion sample, not only
for the mean. Frames that the mean alone would gate but the spread does not are reported in a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields as dataclass_fields
from typing import Any

import numpy as np

from ..errors import InputError
from ..motion.fields import MotionFields, sample_linear
from ..progress import CancelFlag, ProgressCallback, as_cancel_flag, check_cancel, report_step
from ..volume import Geometry, VolumeSequence
from .inputs import RiskStructures, check_entry_and_target

#: Defaults of the planning parameters (mm).
DEFAULT_MARGIN_MM = 5.0
DEFAULT_TOLERANCE_MM = 3.0
#: Default number of spreads added to the target displacement when a motion spread is given.
DEFAULT_SPREAD_FACTOR = 2.0
#: Axis names of the summary, in RAS order.
AXES = ("LR", "AP", "SI")
#: Path sampling step as a fraction of the smallest voxel size.
_SAMPLE_STEP = 0.5
#: Version of the plan.json layout.
PLAN_VERSION = 1


@dataclass
class FramePlan:
    """The path in one frame."""

    index: int
    index_value: str
    target_ras: list[float]
    displacement_mm: list[float]
    displacement_norm_mm: float
    path_length_mm: float
    direction_ras: list[float]
    angle_deg: float
    craniocaudal_tilt_deg: float
    min_clearance_mm: dict[str, float]
    intersects: list[str]
    clear: bool
    within_tolerance: bool
    gating: bool
    #: spread of the motion samples at the target (mm), None without a spread
    target_spread_mm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "index_value": self.index_value,
            "target_ras": self.target_ras,
            "displacement_mm": self.displacement_mm,
            "displacement_norm_mm": self.displacement_norm_mm,
            "path_length_mm": self.path_length_mm,
            "direction_ras": self.direction_ras,
            "angle_deg": self.angle_deg,
            "craniocaudal_tilt_deg": self.craniocaudal_tilt_deg,
            "min_clearance_mm": dict(self.min_clearance_mm),
            "intersects": list(self.intersects),
            "clear": self.clear,
            "within_tolerance": self.within_tolerance,
            "gating": self.gating,
            "target_spread_mm": self.target_spread_mm,
        }


@dataclass
class PuncturePlan:
    """Result of :func:`plan_puncture`: per-frame values and a summary (``to_dict`` is plan.json)."""

    entry_ras: list[float]
    target_ras: list[float]
    margin_mm: float
    tolerance_mm: float
    structures: dict[str, int]
    ignored_structures: dict[str, str]
    frames: list[FramePlan]
    summary: dict[str, Any]
    motion: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def gating_frames(self) -> list[int]:
        return list(self.summary["gating_frames"])

    @property
    def recommended_frame(self) -> int | None:
        return self.summary["recommended_frame"]

    def target_track(self) -> np.ndarray:
        """(T, 3) RAS positions of the target in every frame."""
        return np.array([f.target_ras for f in self.frames], dtype=float)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PuncturePlan":
        """A plan read back from its ``to_dict`` form (e.g. ``json.load`` of plan.json)."""
        try:
            if int(data.get("version", PLAN_VERSION)) > PLAN_VERSION:
                raise InputError(f"plan.json version {data['version']} is newer than this MoDiff reads ({PLAN_VERSION})")
            # fields with a default (added later, e.g. target_spread_mm) may be missing in older files
            frames = [FramePlan(**{d.name: f[d.name] for d in dataclass_fields(FramePlan)
                                   if d.name in f or (d.default is MISSING and d.default_factory is MISSING)})
                      for f in data["frames"]]
            return cls(
                entry_ras=[float(c) for c in data["entry_ras"]],
                target_ras=[float(c) for c in data["target_ras"]],
                margin_mm=float(data["margin_mm"]),
                tolerance_mm=float(data["tolerance_mm"]),
                structures={str(k): int(v) for k, v in data.get("structures", {}).items()},
                ignored_structures=dict(data.get("ignored_structures", {})),
                frames=frames,
                summary=dict(data["summary"]),
                motion=dict(data.get("motion", {})),
                source=dict(data.get("source", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a MoDiff plan (plan.json): {type(exc).__name__} {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "space": "RAS",
            "unit": "mm",
            "entry_ras": self.entry_ras,
            "target_ras": self.target_ras,
            "margin_mm": self.margin_mm,
            "tolerance_mm": self.tolerance_mm,
            "structures": dict(self.structures),
            "ignored_structures": dict(self.ignored_structures),
            "source": dict(self.source),
            "motion": dict(self.motion),
            "frames": [f.to_dict() for f in self.frames],
            "summary": dict(self.summary),
        }


def check_length_mm(value, what: str, allow_zero: bool = True) -> float:
    """``value`` as a finite, non-negative length in mm (InputError naming ``what`` otherwise)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"the {what} must be a number of mm, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InputError(f"the {what} must be a finite number of mm {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def check_spread_factor(value, what: str = "spread factor") -> float:
    """``value`` as a finite number >= 0 (how many spreads are added to the displacement)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"the {what} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise InputError(f"the {what} must be a finite number >= 0, got {value!r}")
    return v


def check_spread(spread, num_frames: int, geometry: Geometry, what: str = "the motion spread",
                 against: str = "the motion") -> VolumeSequence:
    """``spread`` checked as the per-voxel motion spread of ``num_frames`` frames on ``geometry``.

    Args:
        spread: scalar :class:`VolumeSequence` of spreads in mm (``modiff generate --spread-out``).
        num_frames, geometry: what it must match (the motion fields or the cine).
        what, against: names of the spread and of what it is compared with, for the messages.

    Raises:
        InputError: not a scalar sequence, another frame count or grid, or negative / non-finite values.
    """
    if not isinstance(spread, VolumeSequence):
        raise InputError(f"{what} must be a VolumeSequence, got {type(spread).__name__}")
    if spread.frames.ndim != 4:
        raise InputError(f"{what} holds vector frames; a motion spread is one value (mm) per voxel")
    if spread.num_frames != num_frames:
        raise InputError(f"{what} has {spread.num_frames} frames but {against} has {num_frames}")
    if not spread.geometry.is_close(geometry, atol_mm=1e-3):
        mine, theirs = spread.geometry.describe(), geometry.describe()
        detail = f"{mine} vs {theirs}" if mine != theirs else f"both {mine}, but placed differently (origin or direction)"
        raise InputError(f"{what} is not on the grid of {against}: {detail}")
    values = spread.frames
    if not np.all(np.isfinite(values)):
        raise InputError(f"{what} contains NaN or infinite values")
    low = float(values.min())
    if low < 0:
        raise InputError(f"{what} has negative values (down to {low:g} mm); a spread is a length >= 0")
    return spread


def segment_distances(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance (N,) of each point (N, 3) to the segment ``start``-``end``."""
    d = end - start
    length2 = float(d @ d)
    if len(points) == 0:
        return np.zeros(0)
    s = np.clip(((points - start) @ d) / length2, 0.0, 1.0) if length2 > 0 else np.zeros(len(points))
    nearest = start + s[:, None] * d
    return np.linalg.norm(points - nearest, axis=1)


def gating_runs(flags: Sequence[bool], cyclic: bool = True) -> list[list[int]]:
    """Runs of consecutive True frames; with ``cyclic`` the last frame is followed by frame 0."""
    n = len(flags)
    if n == 0 or not any(flags):
        return []
    if all(flags):
        return [list(range(n))]
    # begin right after a False, so that no run is cut (without wrapping: at frame 0)
    start = next(i for i in range(n) if not flags[i]) + 1 if cyclic else 0
    runs, current = [], []
    for step in range(n):
        i = (start + step) % n
        if not cyclic and i == 0 and current:
            runs.append(current)
            current = []
        if flags[i]:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def recommend_frame(frames: list[FramePlan], cyclic: bool = True) -> int | None:
    """The middle of the longest gating run (ties: smaller displacement, then larger clearance)."""
    runs = gating_runs([f.gating for f in frames], cyclic)
    if not runs:
        return None
    longest = max(len(r) for r in runs)

    def worst_clearance(f: FramePlan) -> float:
        return min(f.min_clearance_mm.values()) if f.min_clearance_mm else math.inf

    candidates = []
    for run in runs:
        if len(run) != longest:
            continue
        middle = (len(run) - 1) / 2.0
        for position, index in enumerate(run):
            f = frames[index]
            candidates.append((abs(position - middle), f.displacement_norm_mm, -worst_clearance(f), index))
    return min(candidates)[3]


class _StructureTracks:
    """Where each risk structure is in each frame (its surface voxel centres) and which label a path point hits."""

    def __init__(self, risk: RiskStructures | None, fields: MotionFields):
        self.risk = risk
        self.fields = fields

    def centres(self, value: int, t: int) -> np.ndarray:
        if self.risk.per_frame:
            return self.risk.surface_centres(value, t)
        p0 = self.risk.surface_centres(value)
        if t == 0 or len(p0) == 0:
            return p0
        return p0 + self.fields.displacement_at(t, p0)

    def labels_on_path(self, samples: np.ndarray, t: int) -> np.ndarray:
        if self.risk.per_frame:
            return self.risk.label_at(samples, t)
        return self.risk.label_at(self.fields.back_to_frame0(t, samples))


def plan_puncture(
    fields: MotionFields,
    entry_ras,
    target_ras,
    risk: RiskStructures | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    index_values: Sequence[str] | None = None,
    cyclic: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    spread: VolumeSequence | None = None,
    spread_factor: float = DEFAULT_SPREAD_FACTOR,
) -> PuncturePlan:
    """Analyse the straight path entry -> target in every frame of the motion (see the module docstring).

    Args:
        fields: motion of the cine (from :func:`~MoDiffLib.motion.estimate_motion` or ground truth).
        entry_ras, target_ras: points on frame 0, RAS mm, inside the volume.
        risk: structures to avoid (:func:`~.inputs.risk_structures`); ``None``: motion only.
        margin_mm: required clearance between the path and every structure.
        tolerance_mm: how far the target may be from its planned position in a gating frame.
        index_values: labels of the frames (e.g. the cine's index values); frame numbers by default.
        cyclic: the frames form one closed cycle (a breathing or cardiac cycle), so a gating window
            may run from the last frame into frame 0; ``False`` for a part of a cycle (e.g. exhale
            to inhale only).
        progress: a ``plan`` :class:`~MoDiffLib.progress.ProgressEvent` after each frame (its
            message: whether the path is clear).
        cancel: a :class:`~MoDiffLib.progress.CancelFlag` (or a callable), checked before each
            frame (raises :class:`~MoDiffLib.errors.Cancelled`).
        spread: per-voxel spread of the motion samples (scalar sequence, mm, frame-0 positions, on the
            fields' grid); a frame is then within tolerance only when displacement +
            ``spread_factor`` x spread at the target is. ``None``: the mean motion alone decides.
        spread_factor: how many spreads to add (2: at least about 95 % of Gaussian motion samples).

    Raises:
        InputError: a point outside the volume or NaN, entry equal to target, negative margin or
            tolerance, a risk map or spread that does not belong to this motion, a negative or
            non-finite spread or spread factor.
    """
    if not isinstance(fields, MotionFields):
        raise InputError(f"expected MotionFields, got {type(fields).__name__}")
    cancel = as_cancel_flag(cancel)
    entry, target = check_entry_and_target(entry_ras, target_ras, fields.geometry)
    margin = check_length_mm(margin_mm, "safety margin")
    tolerance = check_length_mm(tolerance_mm, "target tolerance")
    if risk is not None:
        if not isinstance(risk, RiskStructures):
            raise InputError(f"risk structures must come from risk_structures(), got {type(risk).__name__}")
        if not risk.geometry.is_close(fields.geometry, atol_mm=1e-3):
            raise InputError("the risk label map is not on the grid of the motion fields")
        if risk.per_frame and risk.labels.shape[0] != fields.num_frames:
            raise InputError(
                f"the risk label sequence has {risk.labels.shape[0]} frames but the motion has {fields.num_frames}"
            )
    factor = check_spread_factor(spread_factor)
    n = fields.num_frames
    target_spread: list[float] | None = None
    if spread is not None:
        check_spread(spread, n, fields.geometry, against="the motion")
        # the spread is given at frame-0 voxel positions, like the displacements: sample it at the planned target
        ijk = spread.geometry.ras_to_ijk_points(target[None, :])
        target_spread = [float(sample_linear(np.asarray(spread.frames[t], dtype=float), ijk)[0]) for t in range(n)]
    values = [str(v) for v in (index_values if index_values is not None else range(n))]
    if len(values) != n:
        raise InputError(f"{len(values)} index values for {n} frames")

    track = fields.positions(target)[:, 0, :]
    tracks = _StructureTracks(risk, fields)
    step = _SAMPLE_STEP * min(fields.geometry.spacing)
    planned_direction = (target - entry) / np.linalg.norm(target - entry)
    names = dict(risk.names) if risk is not None else {}
    frames: list[FramePlan] = []
    spread_dropped: list[int] = []  # frames the mean motion would gate but its spread does not
    for t in range(n):
        check_cancel(cancel, "puncture planning")
        target_t = track[t]
        path = target_t - entry
        length = float(np.linalg.norm(path))
        direction = path / length if length > 0 else planned_direction
        samples = entry + np.linspace(0.0, 1.0, max(2, int(math.ceil(length / step)) + 1))[:, None] * path
        hit_values = set(int(v) for v in tracks.labels_on_path(samples, t)) if names else set()
        clearance: dict[str, float] = {}
        crossed: list[str] = []
        for value, name in names.items():
            if value in hit_values:
                clearance[name] = 0.0
                crossed.append(name)
                continue
            centres = tracks.centres(value, t)
            clearance[name] = float(segment_distances(centres, entry, target_t).min()) if len(centres) else math.inf
        clear = not crossed and all(c >= margin for c in clearance.values())
        displacement = target_t - target
        norm = float(np.linalg.norm(displacement))
        within = norm <= tolerance
        if target_spread is not None:
            within_mean = within
            within = norm + factor * target_spread[t] <= tolerance
            if clear and within_mean and not within:
                spread_dropped.append(t)
        frames.append(FramePlan(
            index=t,
            index_value=values[t],
            target_ras=[round(float(c), 4) for c in target_t],
            displacement_mm=[round(float(c), 4) for c in displacement],
            displacement_norm_mm=round(norm, 4),
            path_length_mm=round(length, 4),
            direction_ras=[round(float(c), 6) for c in direction],
            angle_deg=round(float(np.degrees(np.arccos(np.clip(direction @ planned_direction, -1.0, 1.0)))), 4),
            craniocaudal_tilt_deg=round(float(np.degrees(np.arcsin(np.clip(direction[2], -1.0, 1.0)))), 4),
            min_clearance_mm={k: (round(v, 4) if math.isfinite(v) else None) for k, v in clearance.items()},
            intersects=crossed,
            clear=bool(clear),
            within_tolerance=bool(within),
            gating=bool(clear and within),
            target_spread_mm=round(target_spread[t], 4) if target_spread is not None else None,
        ))
        report_step(progress, "plan", t + 1, n, f"frame {t}: {'clear' if clear else 'blocked'}")

    summary = summarise(frames, margin, tolerance, names, cyclic,
                        spread_factor=factor if spread is not None else None, spread_dropped=spread_dropped)
    return PuncturePlan(
        entry_ras=[float(c) for c in entry],
        target_ras=[float(c) for c in target],
        margin_mm=margin,
        tolerance_mm=tolerance,
        structures={name: int(value) for value, name in names.items()},
        ignored_structures=dict(risk.ignored) if risk is not None else {},
        frames=frames,
        summary=summary,
        motion={k: v for k, v in fields.info.items() if k in ("method", "window", "seconds", "source", "settings")},
    )


def summarise(frames: list[FramePlan], margin_mm: float, tolerance_mm: float, names: dict[int, str],
              cyclic: bool = True, spread_factor: float | None = None,
              spread_dropped: Sequence[int] = ()) -> dict[str, Any]:
    """The summary block of plan.json (amplitudes, gating window, recommended frame, warnings).

    ``spread_factor`` is the factor used with a motion spread (None without one), ``spread_dropped``
    the frames the mean motion alone would gate but the spread does not (reported in a warning).
    """
    track = np.array([f.target_ras for f in frames])
    span = track.max(axis=0) - track.min(axis=0)
    gating = [f.index for f in frames if f.gating]
    runs = gating_runs([f.gating for f in frames], cyclic)
    recommended = recommend_frame(frames, cyclic)
    lengths = [f.path_length_mm for f in frames]
    spreads = [f.target_spread_mm for f in frames if f.target_spread_mm is not None]
    worst = {}
    for name in names.values():
        values = [f.min_clearance_mm[name] for f in frames if f.min_clearance_mm.get(name) is not None]
        worst[name] = round(min(values), 4) if values else None
    warnings = []
    always = [name for name in names.values() if all(name in f.intersects for f in frames)]
    if always:
        warnings.append(
            f"the path crosses {', '.join(always)} in every frame; if the needle must pass through "
            f"{'it' if len(always) == 1 else 'them'} (e.g. the organ that holds the target), leave "
            f"{'it' if len(always) == 1 else 'them'} out of the risk structures"
        )
    if spread_dropped:
        k = len(spread_dropped)
        warnings.append(
            f"{k} frame{'s' if k != 1 else ''} ({', '.join(map(str, spread_dropped))}) dropped from the gating "
            f"window because of motion uncertainty: the mean target motion is within {tolerance_mm:g} mm there, "
            f"but not with {spread_factor:g} x its spread over the motion samples"
        )
    if recommended is None:
        warnings.append(
            f"no frame keeps the path {margin_mm:g} mm clear of the risk structures with the target within "
            f"{tolerance_mm:g} mm of its planned position"
        )
    return {
        "amplitude_mm": {axis: round(float(v), 4) for axis, v in zip(AXES, span)},
        "max_displacement_mm": round(max(f.displacement_norm_mm for f in frames), 4),
        "spread_factor": spread_factor,
        "max_target_spread_mm": max(spreads) if spreads else None,
        "path_length_mm": {"min": round(min(lengths), 4), "max": round(max(lengths), 4)},
        "max_angle_deg": round(max(f.angle_deg for f in frames), 4),
        "min_clearance_mm": worst,
        "clear_frames": [f.index for f in frames if f.clear],
        "within_tolerance_frames": [f.index for f in frames if f.within_tolerance],
        "gating_frames": gating,
        "gating_windows": runs,
        "gating_fraction": round(len(gating) / len(frames), 4),
        "cyclic": bool(cyclic),
        "recommended_frame": recommended,
        "warnings": warnings,
    }
