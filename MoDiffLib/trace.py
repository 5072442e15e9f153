"""Breathing traces: the diaphragm position per frame, as an input MoDiff can read and write.

A breathing trace is the diaphragm position per frame in mm: the superior (S, RAS) coordinate of
the diaphragm dome read off the images. Inhale moves the diaphragm inferior, so the values fall on
inhale. MoDiff uses the *descent* relative to frame 0, ``descent_i = value_0 - value_i`` (mm,
positive on inhale, 0 at frame 0).

File format ``trace.csv`` (UTF-8, comma-separated; blank lines and lines starting with ``#`` are
ignored; the first line may be a header of names):

* one column: one value per frame;
* two columns ``time_s,value``: samples at increasing times, resampled by linear interpolation to
  the frame times; periodically over one cycle when the cine is a whole cycle (the cycle length is
  the given period, else the samples' time span plus one sampling step);
* a header whose first name is ``frame`` marks a leading frame-index column (0, 1, 2, ...), checked
  and dropped. :func:`write_trace` writes one (``frame,time_s,diaphragm_s_mm``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_file
from .errors import InputError

#: Largest plausible diaphragm travel within one trace (mm); more means wrong units or data.
MAX_DESCENT_RANGE_MM = 60.0
#: Name of the value column that :func:`write_trace` writes.
VALUE_COLUMN = "diaphragm_s_mm"
_COMMENT = ("# breathing trace: S (RAS, mm) of the diaphragm dome per frame; it falls on inhale; "
            "descent = first value - value")


@dataclass(eq=False)
class BreathingTrace:
    """The diaphragm position per frame (validated on construction).

    Attributes:
        values_mm: (T,) S coordinate (RAS, mm) of the diaphragm dome in every frame.
        unit: always ``"mm"``.
        source: where the trace came from (a file path, ``"phantom"``, ...), used in messages.

    Raises:
        InputError: not one finite value per frame, a unit other than mm, or a travel above
            :data:`MAX_DESCENT_RANGE_MM`.
    """

    values_mm: np.ndarray
    unit: str = "mm"
    source: str = "breathing trace"

    def __post_init__(self) -> None:
        try:
            values = np.array(self.values_mm, dtype=float)
        except (TypeError, ValueError):
            raise InputError(f"{self.source}: breathing trace values must be numbers") from None
        if values.ndim != 1 or values.size == 0:
            raise InputError(f"{self.source}: a breathing trace needs one value per frame, got shape {values.shape}")
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise InputError(f"{self.source}: frame {bad[0]} of the breathing trace is {values[bad[0]]} "
                             "(every frame needs a finite value)")
        if self.unit != "mm":
            raise InputError(f"{self.source}: breathing traces are in mm, not {self.unit!r}")
        travel = float(np.ptp(values))
        if travel > MAX_DESCENT_RANGE_MM:
            raise InputError(f"{self.source}: the diaphragm descent spans {travel:.1f} mm, above the plausible "
                             f"{MAX_DESCENT_RANGE_MM:g} mm (values must be the diaphragm position in mm)")
        values.setflags(write=False)
        self.values_mm = values

    @property
    def num_frames(self) -> int:
        return int(self.values_mm.size)

    def descent_mm(self) -> np.ndarray:
        """``values[0] - values``: mm the diaphragm has descended since frame 0 (positive on inhale)."""
        return self.values_mm[0] - self.values_mm


def read_trace(path: str | os.PathLike, num_frames: int, frame_times_s: Sequence[float] | None = None,
               period_s: float | None = None, *, cyclic: bool = False) -> BreathingTrace:
    """Read a ``trace.csv`` (format in the module docstring) as a trace of ``num_frames`` frames.

    Args:
        path: the file (UTF-8).
        num_frames: frames of the cine the trace belongs to.
        frame_times_s: times of the frames (s, on the file's clock), for a ``time_s,value`` file;
            omitted: the frames evenly span the samples (one cycle from the first sample when
            periodic), or are the samples themselves when there is one per frame.
        period_s: cycle length (s); giving it says the cine is a whole cycle (periodic resampling).
        cyclic: the cine is a whole cycle even without ``period_s`` (the cycle is then the time span
            plus one sampling step).

    Raises:
        InputError: the file is unreadable, empty or malformed, or the trace does not fit the frames
            (the one-line message names the problem and, where it has one, the line).
    """
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read breathing trace {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"breathing trace {p} is not UTF-8 text") from None
    return parse_trace_text(text, num_frames, frame_times_s, period_s, cyclic=cyclic, source=str(p))


def parse_trace_text(text: str, num_frames: int, frame_times_s: Sequence[float] | None = None,
                     period_s: float | None = None, *, cyclic: bool = False,
                     source: str = "breathing trace") -> BreathingTrace:
    """Parse the text of a ``trace.csv``; arguments and errors as :func:`read_trace` (``source`` names it)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise InputError(f"{source}: num_frames must be a positive integer, got {num_frames!r}")
    rows = [(n, [c.strip() for c in line.split(",")]) for n, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")]
    header = rows.pop(0) if rows and not any(_is_number(c) for c in rows[0][1]) else None
    if not rows:
        raise InputError(f"{source}: the breathing trace is empty (no values)")
    first, width = rows[0][0], len(rows[0][1])
    for n, cells in rows:
        if len(cells) != width:
            raise InputError(f"{source}: line {n} has {len(cells)} columns, line {first} has {width}")
    if header is not None and len(header[1]) != width:
        raise InputError(f"{source}: the header (line {header[0]}) names {len(header[1])} columns, "
                         f"the values have {width}")
    data = np.array([[_number(cell, n, c, source) for c, cell in enumerate(cells, start=1)] for n, cells in rows])
    lines = [n for n, _ in rows]
    if header is not None and header[1][0].lower() == "frame":
        wrong = np.flatnonzero(data[:, 0] != np.arange(len(rows)))
        if wrong.size:
            raise InputError(f"{source}: line {lines[wrong[0]]}: the frame column must count 0, 1, 2, ... "
                             f"in order, found {data[wrong[0], 0]:g}")
        data, width = data[:, 1:], width - 1
    if width not in (1, 2):
        raise InputError(f"{source}: {width} value columns; a breathing trace has one (a value per frame) "
                         "or two (time_s,value)")
    if width == 1:
        if len(data) != num_frames:
            raise InputError(f"{source}: {len(data)} values for {num_frames} frames "
                             "(one value per frame, or give time_s,value columns)")
        values = data[:, 0]
    else:
        values = _resample(data[:, 0], data[:, 1], lines, num_frames, frame_times_s, period_s,
                           cyclic or period_s is not None, source)
    return BreathingTrace(values, "mm", source)


def write_trace(path: str | os.PathLike, values: BreathingTrace | Sequence[float] | np.ndarray,
                times: Sequence[float] | None = None, *, overwrite: bool = False) -> Path:
    """Write a trace as ``frame[,time_s],diaphragm_s_mm`` (atomically; :func:`read_trace` reads it back).

    Values are written exactly (shortest round-trip repr). ``times`` (s, increasing) are optional.

    Raises:
        InputError: the values are no valid trace, or the times do not match them.
        OutputError: ``path`` exists (without ``overwrite``) or cannot be written.
    """
    trace = values if isinstance(values, BreathingTrace) else BreathingTrace(values, "mm", str(path))
    columns = [np.arange(trace.num_frames), trace.values_mm]
    names = ["frame", VALUE_COLUMN]
    if times is not None:
        t = np.asarray(times, dtype=float).reshape(-1)
        if t.size != trace.num_frames:
            raise InputError(f"{path}: {t.size} times for {trace.num_frames} trace values")
        if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise InputError(f"{path}: trace times must be finite and increasing")
        columns.insert(1, t)
        names.insert(1, "time_s")
    lines = [_COMMENT, ",".join(names)]
    lines += [",".join([str(int(row[0]))] + [repr(float(v)) for v in row[1:]]) for row in zip(*columns)]
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _number(cell: str, line: int, column: int, source: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        what = "empty cell" if not cell else f"{cell!r} is not a number"
        raise InputError(f"{source}: line {line}, column {column}: {what}") from None
    if not math.isfinite(value):
        raise InputError(f"{source}: line {line}, column {column}: {cell} is not a finite number")
    return value


def _resample(times: np.ndarray, values: np.ndarray, lines: list[int], num_frames: int,
              frame_times_s: Sequence[float] | None, period_s: float | None, periodic: bool,
              source: str) -> np.ndarray:
    """Linear interpolation of (times, values) at the frame times (periodic over one cycle if asked)."""
    steps = np.diff(times)
    back = np.flatnonzero(steps <= 0)
    if back.size:
        i = back[0]
        raise InputError(f"{source}: times must increase, but line {lines[i + 1]} ({times[i + 1]:g} s) "
                         f"does not come after line {lines[i]} ({times[i]:g} s)")
    if frame_times_s is None and len(times) == num_frames:
        return values.copy()  # one sample per frame: the samples are the frames
    if len(times) < 2:
        raise InputError(f"{source}: one sample cannot be resampled to {num_frames} frames")
    start, span = float(times[0]), float(times[-1] - times[0])
    cycle = math.nan
    if periodic:
        cycle = float(np.median(steps)) + span if period_s is None else _positive(period_s, "period_s", source)
        if span > cycle * (1.0 + 1e-9):
            raise InputError(f"{source}: the samples span {span:g} s, more than the {cycle:g} s cycle")
    if frame_times_s is None and periodic:  # frames evenly over the cycle from the first sample
        at = start + np.arange(num_frames) * (cycle / num_frames)
    elif frame_times_s is None:  # frames evenly over the samples
        at = np.linspace(start, times[-1], num_frames)
    else:
        at = np.asarray(frame_times_s, dtype=float).reshape(-1)
        if at.size != num_frames:
            raise InputError(f"{source}: {at.size} frame times for {num_frames} frames")
        if not np.all(np.isfinite(at)):
            raise InputError(f"{source}: the frame times must be finite")
    if periodic:
        if times[-1] < start + cycle * (1.0 - 1e-9):  # close the cycle with the first sample
            times, values = np.append(times, start + cycle), np.append(values, values[0])
        return np.interp(start + np.mod(at - start, cycle), times, values)
    outside = np.flatnonzero((at < times[0] - 1e-9) | (at > times[-1] + 1e-9))
    if outside.size:
        raise InputError(f"{source}: frame time {at[outside[0]]:g} s lies outside the trace's times "
                         f"{times[0]:g}..{times[-1]:g} s (give the period if the cine is a whole cycle)")
    return np.interp(at, times, values)


def _positive(value: float, name: str, source: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{source}: {name} must be a positive number of seconds, got {value!r}")
    return v
