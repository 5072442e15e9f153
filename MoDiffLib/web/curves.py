"""The planning curves as an inline SVG, with a cursor on the frame shown.

The same two panels as ``plan.png`` (:func:`MoDiffLib.planning.plot_plan`): the target's
displacement per axis and its length against the tolerance, and the path's clearance to each risk
structure against the margin; gating frames shaded green, the recommended frame dashed. Drawn as
SVG text rather than a matplotlib image because the cursor moves at playback rate: a few
kilobytes of markup per frame instead of a rendered PNG, and no plotting library in the browser
(the viewer works offline).

Elements that scripts and tests read carry classes: ``curve`` (with ``data-name``), ``gating``,
``limit``, ``tick``, ``recommended``, ``cursor`` (with ``data-frame``) and ``far`` (the structures
beyond the clearance axis, listed instead of drawn).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable

from .state import Curve, Curves

#: The clearance axis reaches this many margins (at least :data:`MIN_CLEARANCE_TOP_MM`), rounded up
#: to a tick, as in plan.png: the decision is made near the margin. A structure never within it is
#: listed under the panel, not drawn.
CLEARANCE_TOP_MARGINS = 4.0
MIN_CLEARANCE_TOP_MM = 20.0
#: About this many value ticks per panel, and frame labels along the time axis.
VALUE_TICKS = 4
FRAME_TICKS = 10
GATING_FILL = "#2ca02c"
CURSOR_COLOR = "#e6550d"
#: Layout (px): the left margin holds the tick labels and the axis title.
LEFT, RIGHT_PAD, TOP_PAD, PANEL_GAP, AXIS_HEIGHT, NOTE_HEIGHT = 44.0, 8.0, 6.0, 8.0, 24.0, 12.0


def nice_step(span: float, count: int) -> float:
    """A 1, 2, 2.5 or 5 x 10^n step that divides ``span`` into about ``count`` parts."""
    if not span > 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(count, 1)
    exponent = math.floor(math.log10(raw))
    for mantissa in (1.0, 2.0, 2.5, 5.0, 10.0):
        step = mantissa * 10.0**exponent
        if step >= raw * (1 - 1e-9):
            return step
    return 10.0 ** (exponent + 1)  # not reached: 10 x 10^n >= raw


def nice_ticks(low: float, high: float, count: int = VALUE_TICKS) -> tuple[float, float, list[float]]:
    """Axis limits covering ``[low, high]`` on round numbers, and the ticks between them.

    Returns ``(bottom, top, ticks)``: ``bottom <= low``, ``top >= high``, both multiples of a
    :func:`nice_step`, and the ticks that step apart from ``bottom`` to ``top`` (0 among them when
    the range spans it). A limit within 1 % of a step past a tick ends there (the curve touches the
    frame); an empty range (``low == high``) is widened to one unit around it.
    """
    if high < low:
        low, high = high, low
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    step = nice_step(high - low, count)
    # a value within 1 % of a step past a round number (rounding noise, -1e-6 mm) does not add a step
    bottom = math.floor(low / step + 0.01) * step
    top = math.ceil(high / step - 0.01) * step
    ticks = [round(bottom + i * step, 10) for i in range(int(round((top - bottom) / step)) + 1)]
    return float(bottom), float(top), ticks


def frame_ticks(frames: tuple[int, ...], count: int = FRAME_TICKS) -> list[int]:
    """The frames labelled on the time axis: all of them for a short cine, else every 2nd, 5th, ... frame."""
    if not frames:
        return []
    step = max(1, int(math.ceil(nice_step(frames[-1] - frames[0], count))))
    return [t for t in frames if (t - frames[0]) % step == 0]


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _tick_label(v: float) -> str:
    return f"{v:.10g}"


def _panel(out: list[str], curves: Curves, series: tuple[Curve, ...], y0: float, height: float,
           x_of: Callable[[float], float], axis: tuple[float, float, list[float]], limit: float, limit_label: str,
           ylabel: str, right: float) -> None:
    """One panel: gating shading, frame, value ticks, the limit line, the curves and their legend."""
    bottom, top, ticks = axis

    def y_of(v: float) -> float:
        v = min(max(v, bottom), top)  # a near structure that moves beyond the axis runs along its top
        return y0 + height - (v - bottom) / (top - bottom) * height

    step = x_of(1) - x_of(0) if len(curves.frames) > 1 else right - LEFT
    for t in curves.gating_frames:
        x = max(x_of(t) - step / 2, LEFT)
        w = min(x_of(t) + step / 2, right) - x
        out.append(f'<rect class="gating" x="{x:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{height:.1f}" '
                   f'fill="{GATING_FILL}" fill-opacity="0.15"/>')
    out.append(f'<rect x="{LEFT:.1f}" y="{y0:.1f}" width="{right - LEFT:.1f}" height="{height:.1f}" fill="none" '
               'stroke="#999" stroke-width="0.5"/>')
    for v in ticks:
        y = y_of(v)
        out.append(f'<line x1="{LEFT - 3:.1f}" x2="{LEFT:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#999"/>')
        out.append(f'<text class="tick" x="{LEFT - 5:.1f}" y="{y + 3:.1f}" font-size="9" text-anchor="end">'
                   f'{_tick_label(v)}</text>')
    mid = y0 + height / 2
    out.append(f'<text x="{LEFT - 30:.1f}" y="{mid:.1f}" font-size="9" text-anchor="middle" '
               f'transform="rotate(-90 {LEFT - 30:.1f} {mid:.1f})">{html.escape(ylabel)}</text>')
    y = y_of(limit)
    out.append(f'<line class="limit" x1="{LEFT:.1f}" x2="{right:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
               'stroke="#666" stroke-dasharray="2 3"/>')
    out.append(f'<text x="{right - 2:.1f}" y="{y - 3:.1f}" font-size="8" text-anchor="end" fill="#666">'
               f'{html.escape(limit_label)}</text>')
    legend_x = LEFT + 4
    for curve in series:
        segments, points = [], []
        for t, v in zip(curves.frames, curve.values):
            if v is None or not math.isfinite(v):  # a gap: the structure is not in this frame
                if points:
                    segments.append(points)
                points = []
                continue
            points.append(f"{x_of(t):.1f},{y_of(v):.1f}")
        if points:
            segments.append(points)
        name = html.escape(curve.name)
        for seg in segments:
            out.append(f'<polyline class="curve" data-name="{name}" fill="none" stroke="{curve.color}" '
                       f'stroke-width="1.5" points="{" ".join(seg)}"/>')
        out.append(f'<text x="{legend_x:.1f}" y="{y0 + 10:.1f}" font-size="9" fill="{curve.color}">{name}</text>')
        legend_x += 7 + 5.5 * len(curve.name)


def split_far(clearance: tuple[Curve, ...], top_mm: float) -> tuple[tuple[Curve, ...], tuple[Curve, ...]]:
    """The clearance curves that come within ``top_mm`` of the path in some frame, and the others."""
    near, far = [], []
    for curve in clearance:
        values = _finite(curve.values)
        (near if values and min(values) <= top_mm else far).append(curve)
    return tuple(near), tuple(far)


def clearance_axis(margin_mm: float) -> tuple[float, float, list[float]]:
    """The clearance panel's axis: 0 to a few margins (at least 20 mm), rounded up to a tick."""
    return nice_ticks(0.0, max(CLEARANCE_TOP_MARGINS * margin_mm, MIN_CLEARANCE_TOP_MM))


def displacement_axis(curves: Curves) -> tuple[float, float, list[float]]:
    """The displacement panel's axis: 0 and the tolerance and every displacement value on it."""
    values = _finite(v for c in curves.displacement for v in c.values)
    return nice_ticks(min([0.0] + values), max([curves.tolerance_mm] + values))


def curves_svg(curves: Curves | None, current: int, width: int = 420, height: int = 300) -> str:
    """The planning curves of ``curves`` with a cursor at frame ``current``, as one ``<svg>`` element.

    ``height`` is that of the two panels with their time axis; a line listing the structures
    beyond the clearance axis adds to it. Without a plan (``curves`` None) the SVG says so.
    """
    open_tag = ('<svg xmlns="http://www.w3.org/2000/svg" class="modiff-curves" width="{w}" height="{h}" '
                'viewBox="0 0 {w} {h}" font-family="sans-serif">')
    if curves is None or not curves.frames:
        return (open_tag.format(w=width, h=height) + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
                'font-size="12" fill="#666">no plan: no planning curves</text></svg>')
    right = width - RIGHT_PAD
    first, last = curves.frames[0], curves.frames[-1]

    def x_of(t: float) -> float:
        return LEFT + (t - first) / (last - first) * (right - LEFT) if last > first else (LEFT + right) / 2

    panel = (height - TOP_PAD - PANEL_GAP - AXIS_HEIGHT) / 2
    y1 = TOP_PAD + panel + PANEL_GAP
    out: list[str] = []
    _panel(out, curves, curves.displacement, TOP_PAD, panel, x_of, displacement_axis(curves), curves.tolerance_mm,
           f"tolerance {curves.tolerance_mm:g} mm", "target displacement (mm)", right)
    far: tuple[Curve, ...] = ()
    if curves.clearance:
        axis = clearance_axis(curves.margin_mm)
        near, far = split_far(curves.clearance, axis[1])
        _panel(out, curves, near, y1, panel, x_of, axis, curves.margin_mm, f"margin {curves.margin_mm:g} mm",
               "path clearance (mm)", right)
    else:
        out.append(f'<text x="{(LEFT + right) / 2:.1f}" y="{y1 + panel / 2:.1f}" text-anchor="middle" font-size="10" '
                   'fill="#666">no risk structures in the plan</text>')
    axis_y = y1 + panel + 11
    for t in frame_ticks(curves.frames):
        out.append(f'<text x="{x_of(t):.1f}" y="{axis_y:.1f}" font-size="9" text-anchor="middle">{t}</text>')
    out.append(f'<text x="{(LEFT + right) / 2:.1f}" y="{axis_y + 11:.1f}" font-size="9" text-anchor="middle">'
               'frame</text>')
    total = height
    if far:
        total += NOTE_HEIGHT
        names = ", ".join(c.name for c in far)
        out.append(f'<text class="far" x="{LEFT:.1f}" y="{height + 8:.1f}" font-size="9" fill="#666">'
                   f'more than {axis[1]:g} mm from the path in every frame: {html.escape(names)}</text>')
    if curves.recommended_frame is not None:
        x = x_of(curves.recommended_frame)
        out.append(f'<line class="recommended" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP_PAD}" y2="{y1 + panel:.1f}" '
                   f'stroke="{GATING_FILL}" stroke-width="1.5" stroke-dasharray="5 3"/>')
    x = x_of(current)
    out.append(f'<line class="cursor" data-frame="{int(current)}" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP_PAD}" '
               f'y2="{y1 + panel:.1f}" stroke="{CURSOR_COLOR}" stroke-width="2"/>')
    return open_tag.format(w=width, h=f"{total:g}") + "".join(out) + "</svg>"
