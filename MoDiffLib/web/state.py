"""The web viewer's state, without any UI: the loaded cine and plan, the current frame, playback,
and what each frame shows.

:class:`ViewerState` is what the trame app (:mod:`.app`) binds its widgets to and what the tests
drive: stepping, playing and jumping change :attr:`ViewerState.frame`; :meth:`ViewerState.view`
says what the views draw in a frame (the path entry -> target of that frame and its status, the
target, the clearance of each risk structure), :meth:`ViewerState.timeline` the gating window as
one cell per frame and :meth:`ViewerState.curves` the planning curves (as ``plan.png`` plots them).

A frame's status is ``"gating"`` (the path is clear of every structure by the margin and the target
is within the tolerance: the needle may go in), ``"clear"`` (clear, but the target is out of
tolerance), ``"blocked"`` (the path crosses a structure or comes closer than the margin), or
``"none"`` without a plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..planning import AXES, gating_runs
from .inputs import ViewerInputs

STATUS_GATING = "gating"
STATUS_CLEAR = "clear"
STATUS_BLOCKED = "blocked"
STATUS_NONE = "none"
#: Colours of the risk structures (hex), in the order of their label values: the same colour in the
#: slice views, the 3D view and the curves (matplotlib's tab10 without its green and red, which
#: the path uses for gating and blocked frames).
STRUCTURE_COLORS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
#: Colours of the displacement curves per axis and of its length (as in plan.png).
AXIS_COLORS = {"LR": "#d62728", "AP": "#1f77b4", "SI": "#9467bd", "|d|": "#000000"}


@dataclass(frozen=True)
class StructureView:
    """A risk structure in one frame: its clearance from the path (mm; None without a plan) and
    whether the path crosses it."""

    name: str
    value: int
    color: str
    clearance_mm: float | None
    crossed: bool


@dataclass(frozen=True)
class PathView:
    """The needle path in one frame: still entry -> the target where it is in this frame (RAS mm)."""

    entry_ras: tuple[float, float, float]
    target_ras: tuple[float, float, float]
    status: str
    length_mm: float
    angle_deg: float


@dataclass(frozen=True)
class FrameView:
    """What the views show in frame ``index`` (``path`` and ``target_ras`` are None without a plan)."""

    index: int
    index_value: str
    num_frames: int
    status: str
    path: PathView | None
    target_ras: tuple[float, float, float] | None
    displacement_mm: tuple[float, float, float] | None
    displacement_norm_mm: float | None
    structures: tuple[StructureView, ...]
    recommended: bool


@dataclass(frozen=True)
class TimelineCell:
    """One frame on the timeline: its status, whether it is shown now, whether it is the recommended one."""

    index: int
    status: str
    current: bool
    recommended: bool


@dataclass(frozen=True)
class Curve:
    """One planning curve: a value per frame (None where it has none)."""

    name: str
    color: str
    values: tuple[float | None, ...]


@dataclass(frozen=True)
class Curves:
    """The planning curves: target displacement per axis (and its length) with the tolerance, path
    clearance per risk structure with the margin, the gating frames and the recommended frame."""

    frames: tuple[int, ...]
    displacement: tuple[Curve, ...]
    clearance: tuple[Curve, ...]
    tolerance_mm: float
    margin_mm: float
    gating_frames: tuple[int, ...]
    recommended_frame: int | None


def _point(p) -> tuple[float, float, float]:
    return tuple(float(c) for c in p)  # type: ignore[return-value]


class ViewerState:
    """The loaded cine and plan, the frame shown and playback (see the module docstring).

    Args:
        inputs: what :func:`~MoDiffLib.web.inputs.load_inputs` read.
        frame: the frame to show first (default: 0).
    """

    def __init__(self, inputs: ViewerInputs, frame: int = 0):
        if not isinstance(inputs, ViewerInputs):
            raise InputError(f"expected ViewerInputs, got {type(inputs).__name__}")
        self.inputs = inputs
        self.playing = False
        self._frame = 0
        self.set_frame(frame)
        plan, risk = inputs.plan, inputs.risk
        names = dict(risk.names) if risk is not None else {}
        #: (name, label value, colour) of each risk structure drawn, by label value.
        self.structures: list[tuple[str, int, str]] = [
            (names[v], v, STRUCTURE_COLORS[n % len(STRUCTURE_COLORS)]) for n, v in enumerate(sorted(names))
        ]
        self.cyclic = bool(plan.summary.get("cyclic", True)) if plan is not None else True

    # -- what is loaded ---------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return self.inputs.cine.num_frames

    @property
    def has_plan(self) -> bool:
        return self.inputs.plan is not None

    @property
    def gating_frames(self) -> list[int]:
        """The frames of the gating window (empty without a plan)."""
        return list(self.inputs.plan.gating_frames) if self.has_plan else []

    @property
    def gating_windows(self) -> list[list[int]]:
        """Runs of consecutive gating frames (wrapping from the last frame to frame 0 for a cycle)."""
        if not self.has_plan:
            return []
        return gating_runs([f.gating for f in self.inputs.plan.frames], self.cyclic)

    @property
    def recommended_frame(self) -> int | None:
        return self.inputs.plan.recommended_frame if self.has_plan else None

    # -- the frame shown and playback --------------------------------------------------------------------
    @property
    def frame(self) -> int:
        return self._frame

    def set_frame(self, index) -> int:
        """Show frame ``index``; returns it.

        Raises:
            InputError: not a whole number, or no such frame.
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            try:
                as_float = float(index)
            except (TypeError, ValueError):
                raise InputError(f"frame {index!r} is not a frame number") from None
            if as_float != int(as_float):
                raise InputError(f"frame {index!r} is not a whole number")
            index = int(as_float)
        if not 0 <= int(index) < self.num_frames:
            raise InputError(f"frame {index} does not exist; the cine has frames 0 to {self.num_frames - 1}")
        self._frame = int(index)
        return self._frame

    def step(self, delta: int = 1) -> int:
        """Move ``delta`` frames on (back when negative), wrapping around the cycle; returns the frame."""
        return self.set_frame((self._frame + int(delta)) % self.num_frames)

    def play(self) -> None:
        self.playing = True

    def pause(self) -> None:
        self.playing = False

    def toggle_play(self) -> bool:
        """Play if paused, pause if playing; returns whether it plays now."""
        self.playing = not self.playing
        return self.playing

    def tick(self) -> bool:
        """One playback step: the next frame if playing. Returns whether the frame changed."""
        if not self.playing or self.num_frames < 2:
            return False
        self.step(1)
        return True

    def go_to_recommended(self) -> int | None:
        """Pause and show the recommended frame (None, and nothing changes, when there is none)."""
        frame = self.recommended_frame
        if frame is None:
            return None
        self.pause()
        return self.set_frame(frame)

    # -- what a frame shows ----------------------------------------------------------------------------------
    def status(self, index: int) -> str:
        """The status of frame ``index`` (see the module docstring)."""
        if not self.has_plan:
            return STATUS_NONE
        f = self.inputs.plan.frames[index]
        if f.gating:
            return STATUS_GATING
        return STATUS_CLEAR if f.clear else STATUS_BLOCKED

    def view(self, index: int | None = None) -> FrameView:
        """What frame ``index`` (default: the current one) shows."""
        t = self._frame if index is None else int(index)
        if not 0 <= t < self.num_frames:
            raise InputError(f"frame {t} does not exist; the cine has frames 0 to {self.num_frames - 1}")
        plan = self.inputs.plan
        index_value = self.inputs.cine.index_values[t]
        if plan is None:
            structures = tuple(StructureView(n, v, c, None, False) for n, v, c in self.structures)
            return FrameView(t, index_value, self.num_frames, STATUS_NONE, None, None, None, None, structures, False)
        f = plan.frames[t]
        path = PathView(_point(plan.entry_ras), _point(f.target_ras), self.status(t), float(f.path_length_mm),
                        float(f.angle_deg))
        structures = tuple(
            StructureView(n, v, c, f.min_clearance_mm.get(n), n in f.intersects) for n, v, c in self.structures
        )
        return FrameView(t, index_value, self.num_frames, path.status, path, _point(f.target_ras),
                         _point(f.displacement_mm), float(f.displacement_norm_mm), structures,
                         t == plan.recommended_frame)

    def timeline(self) -> list[TimelineCell]:
        """One cell per frame: the gating window on a timeline, the current frame marked."""
        recommended = self.recommended_frame
        return [TimelineCell(t, self.status(t), t == self._frame, t == recommended) for t in range(self.num_frames)]

    def curves(self) -> Curves | None:
        """The planning curves (None without a plan)."""
        plan = self.inputs.plan
        if plan is None:
            return None
        displacement = [Curve(axis, AXIS_COLORS[axis], tuple(float(f.displacement_mm[i]) for f in plan.frames))
                        for i, axis in enumerate(AXES)]
        displacement.append(Curve("|d|", AXIS_COLORS["|d|"], tuple(float(f.displacement_norm_mm) for f in plan.frames)))
        colors = {n: c for n, _, c in self.structures}
        clearance = []
        for n, name in enumerate(plan.structures):
            values = tuple(None if f.min_clearance_mm.get(name) is None else float(f.min_clearance_mm[name])
                           for f in plan.frames)
            clearance.append(Curve(name, colors.get(name, STRUCTURE_COLORS[n % len(STRUCTURE_COLORS)]), values))
        return Curves(tuple(f.index for f in plan.frames), tuple(displacement), tuple(clearance),
                      float(plan.tolerance_mm), float(plan.margin_mm), tuple(plan.gating_frames),
                      plan.recommended_frame)

    def describe(self) -> list[str]:
        """Lines for the viewer's header: the cine, and the plan's summary (or why there is none)."""
        cine = self.inputs.cine
        lines = [f"{self.inputs.cine_path.name}: {cine.num_frames} frames of {cine.geometry.describe()}"]
        plan = self.inputs.plan
        if plan is not None:
            amp = plan.summary.get("amplitude_mm", {})
            motion = ", ".join(f"{a} {amp[a]:.1f}" for a in AXES if a in amp)
            windows = self.gating_windows
            window = "; ".join(", ".join(map(str, w)) for w in windows) or "none"
            lines.append(f"target motion {motion} mm; gating frames {window}; recommended frame "
                         f"{plan.recommended_frame if plan.recommended_frame is not None else 'none'} "
                         f"(margin {plan.margin_mm:g} mm, tolerance {plan.tolerance_mm:g} mm)")
        return lines + list(self.inputs.notes)
