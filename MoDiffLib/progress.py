"""Progress and cancel: the one protocol every long-running part of MoDiff speaks.

Standard library only (no numpy, no torch), so the Slicer panel imports it while Slicer loads.

* **Events.** A producer (a sampler, the motion estimation, the planner, a pipeline, a command)
  calls a :data:`ProgressCallback` with :class:`ProgressEvent` s. ``event.stage`` is a key of
  :data:`STAGE_LABELS`, the one table of what each stage is called; an event of any other stage
  cannot be made.
* **One loop** (a leaf producer) reports ``step`` of ``total`` with :func:`report_step`: the
  event's ``fraction`` is ``step / total``.
* **A run of stages** reports through a :class:`StageReporter` built on the run's weight table
  (:data:`LATENT_GENERATION`, :data:`MOTION_GENERATION`, :data:`PLANNING`, ...): it turns
  ``(stage, step, total)`` into one overall ``fraction`` that never goes back and ends at 1; a
  loop run inside one of its stages reports through :meth:`StageReporter.within`, and a command
  that adds stages around a pipeline's re-weights the pipeline's events with :meth:`StageReporter.relay`.
* **Cancel.** A :class:`CancelFlag` is anything with ``is_set()`` (``threading.Event``);
  :func:`as_cancel_flag` makes one from a callable; :func:`check_cancel` raises
  :class:`~MoDiffLib.errors.Cancelled` once it is set.
* **Showing it.** :func:`progress_text` is the percentage and line a progress bar shows (the
  panel, the command line); :class:`ProgressPrinter` prints events as ``modiff`` commands do
  (``--progress json`` is the line protocol of :mod:`MoDiffLib.process_runner`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from .errors import Cancelled, InputError

#: Every stage any MoDiff producer reports, and what a user is shown for it (the one table).
STAGE_LABELS: dict[str, str] = {
    "load": "Loading",
    "preprocess": "Preparing the volume",
    "encode": "Encoding the volume (VAE)",
    "tddm": "Generating motion fields (TDDM)",
    "i2v": "Generating frames (I2V)",
    "decode": "Decoding frames",
    "postprocess": "Restoring the input grid",
    "fields": "Combining the motion samples",
    "warp": "Moving the input volume",
    "motion": "Estimating the motion",
    "propagate": "Carrying the labels into every frame",
    "plan": "Checking the needle path",
    "entry": "Choosing a needle path",
    "write": "Writing the outputs",
    "download": "Downloading the model",
}

#: Share of the run each stage takes, per kind of run, in the order the stages run (estimates:
#: sampling dominates the latent family, the full-resolution warp the motion family).
#: ``MoDiffPipeline.generate`` (the paper's latent family).
LATENT_GENERATION: dict[str, float] = {"load": 0.02, "preprocess": 0.02, "encode": 0.03, "tddm": 0.34, "i2v": 0.36,
                                       "decode": 0.08, "postprocess": 0.15}
#: ``MotionPipeline.generate`` (the motion family).
MOTION_GENERATION: dict[str, float] = {"load": 0.02, "preprocess": 0.05, "tddm": 0.45, "fields": 0.08, "warp": 0.40}
#: The same with a label map carried through the motion (one label resample per structure and frame).
MOTION_GENERATION_WITH_LABELS: dict[str, float] = {**MOTION_GENERATION, "propagate": 0.15}
#: ``modiff plan`` estimating the cine's motion (registration of every frame dominates).
PLANNING: dict[str, float] = {"load": 0.05, "motion": 0.80, "plan": 0.10, "write": 0.05}
#: ``modiff plan --motion FIELDS``: the motion is read, not estimated.
PLANNING_GIVEN_MOTION: dict[str, float] = {"load": 0.05, "motion": 0.05, "plan": 0.10, "write": 0.05}
#: Share of ``modiff generate`` that writing its outputs takes, after the pipeline's stages
#: (a 185 MB cine takes about 4 s, against minutes of sampling on a CPU).
WRITE_SHARE = 0.03


def then_write(weights: Mapping[str, float], share: float = WRITE_SHARE) -> dict[str, float]:
    """``weights`` of a pipeline followed by a ``write`` stage taking ``share`` of the whole run."""
    total = sum(weights.values())
    return {**{stage: w * (1.0 - share) / total for stage, w in weights.items()}, "write": share}


def motion_generation_stages(with_labels: bool = False, with_known: bool = False) -> dict[str, float]:
    """The stages of a motion-model generation: with given frames (two-frame / partial modes) their
    registration (``motion``) runs before the warp; with labels, ``propagate`` runs last."""
    stages = {k: v for k, v in MOTION_GENERATION.items() if k != "warp"}
    if with_known:
        stages["motion"] = 0.30
    stages["warp"] = MOTION_GENERATION["warp"]
    if with_labels:
        stages["propagate"] = MOTION_GENERATION_WITH_LABELS["propagate"]
    return stages


def check_stage(stage: str) -> str:
    """``stage`` itself if :data:`STAGE_LABELS` names it; else a ValueError (a stage without a
    label is a bug of the producer, not something a user did)."""
    if stage not in STAGE_LABELS:
        raise ValueError(f"unknown progress stage {stage!r}; every stage needs a label in "
                         f"MoDiffLib.progress.STAGE_LABELS ({', '.join(STAGE_LABELS)})")
    return stage


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: ``stage`` at ``step`` of ``total``, ``fraction`` (0..1) of the whole run.

    ``step``/``total`` count within the stage (``total`` 0: not known, e.g. a download without a
    size); ``message`` says more for people (a file name, ``frame 3: clear``), or nothing.
    """

    stage: str
    step: int
    total: int
    fraction: float
    message: str = ""

    def __post_init__(self) -> None:
        check_stage(self.stage)
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"progress fraction must be within 0..1, got {self.fraction!r} (stage {self.stage})")

    @property
    def label(self) -> str:
        """What the user is shown for this event's stage (from :data:`STAGE_LABELS`)."""
        return STAGE_LABELS[self.stage]

    def to_dict(self) -> dict[str, Any]:
        """The event as a ``--progress json`` line holds it (see :mod:`MoDiffLib.process_runner`)."""
        return {"event": "progress", "stage": self.stage, "label": self.label, "step": self.step,
                "total": self.total, "fraction": round(self.fraction, 4), "message": self.message}


#: What every producer calls with its events.
ProgressCallback = Callable[[ProgressEvent], None]


def report_step(progress: ProgressCallback | None, stage: str, step: int, total: int, message: str = "") -> None:
    """Report ``step`` of ``total`` of one loop (``fraction = step / total``) to ``progress``, if any
    (``stage`` is checked either way, so a stage without a label fails in every test)."""
    check_stage(stage)
    if progress is not None:
        progress(ProgressEvent(stage, step, total, _share(step, total), message))


def _share(step: int, total: int) -> float:
    return min(max(step / total, 0.0), 1.0) if total > 0 else 0.0


class StageReporter:
    """Turns ``(stage, step, total)`` of a run's stages into :class:`ProgressEvent` s with one
    overall ``fraction`` that never goes back, and keeps each finished stage's time.

    Args:
        callback: where the events go (``None``: nowhere; stages are still checked).
        weights: the run's stages in the order they run and the share each takes
            (:data:`LATENT_GENERATION`, ...); normalised to sum 1. Every stage needs a label.
        what: the run, in the message of a cancel between stages (``"generation was cancelled"``).

    A stage reported that is not in ``weights`` is a ValueError: its events would have no place
    in the overall fraction.
    """

    def __init__(self, callback: ProgressCallback | None, weights: Mapping[str, float], what: str = "the run") -> None:
        if not weights:
            raise ValueError("a StageReporter needs at least one stage")
        for stage, weight in weights.items():
            check_stage(stage)
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"stage {stage!r} needs a positive weight, got {weight!r}")
        self.callback = callback
        self.what = what
        self.timings: dict[str, float] = {}
        self.fraction = 0.0
        total = float(sum(weights.values()))
        self.bounds: dict[str, tuple[float, float]] = {}
        done = 0.0
        stages = list(weights)
        for stage in stages:
            start = done
            done += weights[stage] / total
            # the last stage ends at exactly 1, whatever the rounding of the sum
            self.bounds[stage] = (start, 1.0 if stage == stages[-1] else min(done, 1.0))

    @property
    def stages(self) -> list[str]:
        """The run's stages, in the order they run."""
        return list(self.bounds)

    def _place(self, stage: str) -> tuple[float, float]:
        try:
            return self.bounds[stage]
        except KeyError:
            check_stage(stage)
            raise ValueError(f"stage {stage!r} is not a stage of this run ({', '.join(self.bounds)})") from None

    def _emit(self, stage: str, step: int, total: int, within: float, message: str) -> None:
        start, end = self._place(stage)
        self.fraction = max(self.fraction, start + (end - start) * min(max(within, 0.0), 1.0))
        if self.callback is not None:
            self.callback(ProgressEvent(stage, step, total, self.fraction, message))

    def __call__(self, stage: str, step: int, total: int, message: str = "") -> None:
        """``stage`` is at ``step`` of ``total``."""
        self._emit(stage, step, total, _share(step, total), message)

    def within(self, stage: str) -> ProgressCallback:
        """A callback for a loop run inside ``stage`` (e.g. the motion estimation of a
        post-processing step): its events, whatever their own stage, are reported as ``stage``
        at their own fraction of it, with their step, total and message."""
        self._place(stage)

        def forward(event: ProgressEvent) -> None:
            self._emit(stage, event.step, event.total, event.fraction, event.message)

        return forward

    def relay(self, event: ProgressEvent) -> None:
        """Report an event of a run whose stages are also this run's (a pipeline's, inside a
        command that adds a ``write`` stage), placed by this run's weights."""
        self._emit(event.stage, event.step, event.total, _share(event.step, event.total), event.message)

    def stage_done(self, stage: str, t0: float, cancel: CancelFlag | None = None) -> None:
        """``stage`` finished (started at ``t0``, a ``time.perf_counter()``): keep its time, report
        it whole, and stop if ``cancel`` is set."""
        self.timings[stage] = time.perf_counter() - t0
        self(stage, 1, 1)
        check_cancel(cancel, self.what)


class CancelFlag(Protocol):
    """Anything with ``is_set()`` that becomes True to stop, e.g. :class:`threading.Event`."""

    def is_set(self) -> bool: ...


class _CallableCancel:
    """A ``cancel()`` callable seen as the ``is_set()`` flag that every loop polls."""

    __slots__ = ("_function",)

    def __init__(self, function: Callable[[], Any]) -> None:
        self._function = function

    def is_set(self) -> bool:
        return bool(self._function())


def _shown(value: Any) -> str:
    """``value`` for a one-line message: its repr (on one line, shortened) and its type."""
    text = " ".join(repr(value).split())
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def as_cancel_flag(cancel: Any) -> CancelFlag | None:
    """``cancel`` as a :class:`CancelFlag` (or None): an object with ``is_set()`` is used as it is,
    a callable returning True to stop is wrapped. ``True``/``False`` are refused: a constant can
    never be set later, so it would stop at once or never.

    Raises:
        InputError: anything else, naming what was passed.
    """
    if cancel is None:
        return None
    if isinstance(cancel, bool):  # (a numpy bool is refused below: neither is_set() nor callable)
        raise InputError(f"cancel must be None, a threading.Event or a callable, got {_shown(cancel)}; "
                         "pass an Event and set() it to stop")
    if callable(getattr(cancel, "is_set", None)):
        return cancel
    if callable(cancel):
        return _CallableCancel(cancel)
    raise InputError(f"cancel must be None, a threading.Event (anything with is_set()) or a callable, "
                     f"got {_shown(cancel)}")


def check_callbacks(progress: Any, cancel: Any) -> CancelFlag | None:
    """Validate a run's ``progress`` (None or a callable taking a :class:`ProgressEvent`) and
    ``cancel`` (see :func:`as_cancel_flag`); return ``cancel`` as a :class:`CancelFlag` or None."""
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be None or a callable taking a ProgressEvent, got {_shown(progress)}")
    return as_cancel_flag(cancel)


def check_cancel(cancel: CancelFlag | None, what: str) -> None:
    """Raise :class:`~MoDiffLib.errors.Cancelled` (``"<what> was cancelled"``) if ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} was cancelled")


def progress_text(event: ProgressEvent | Mapping[str, Any]) -> tuple[int, str]:
    """Percentage (0..100) and one line for a progress bar, of an event or its JSON dictionary:
    the stage's label, ``(step/total)`` when the stage has several steps, and the message."""
    if isinstance(event, ProgressEvent):
        event = event.to_dict()
    try:
        percent = int(round(100.0 * min(max(float(event.get("fraction")), 0.0), 1.0)))
    except (TypeError, ValueError):
        percent = 0
    stage = event.get("stage")
    # a stage of this table first; a child of another version may send one we do not know, with its label
    text = STAGE_LABELS.get(stage) if isinstance(stage, str) else None
    text = text or str(event.get("label") or "Working")
    step, total = event.get("step"), event.get("total")
    if isinstance(step, int) and isinstance(total, int) and total > 1:
        text += f" ({step}/{total})"
    message = event.get("message")
    if message:
        text += f": {message}"
    return percent, text


class ProgressPrinter:
    """A :data:`ProgressCallback` that prints events as the ``modiff`` commands do.

    Modes: ``json`` (one :meth:`ProgressEvent.to_dict` line per event on stdout, the protocol of
    :mod:`MoDiffLib.process_runner`), ``bar`` (one bar on stderr, redrawn), ``lines`` (one
    :func:`progress_text` line per event on stderr, after ``prefix``), ``none``.
    """

    MODES = ("json", "bar", "lines", "none")

    def __init__(self, mode: str, prefix: str = "modiff: ", stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        if mode not in self.MODES:
            raise ValueError(f"progress mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.mode = mode
        self.prefix = prefix
        self._stdout, self._stderr = stdout, stderr
        self._drawn = False

    @property
    def stdout(self) -> TextIO:
        return self._stdout or sys.stdout  # looked up late: pytest's capture replaces sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr or sys.stderr

    def event(self, payload: dict[str, Any]) -> None:
        """Print another event of the protocol (``done``) in ``json`` mode."""
        if self.mode == "json":
            print(json.dumps(payload), file=self.stdout, flush=True)

    def __call__(self, event: ProgressEvent) -> None:
        if self.mode == "json":
            self.event(event.to_dict())
        elif self.mode == "bar":
            width = 30
            filled = int(round(event.fraction * width))
            text = progress_text(event)[1]
            self.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {event.fraction * 100:5.1f}%  {text[:60]:<60}")
            self.stderr.flush()
            self._drawn = True
        elif self.mode == "lines":
            print(f"{self.prefix}{progress_text(event)[1]}", file=self.stderr, flush=True)

    def close(self) -> None:
        """End the bar's line (nothing in the other modes)."""
        if self._drawn:
            self.stderr.write("\n")
            self.stderr.flush()
            self._drawn = False
