"""The planning plot: target displacement and path clearance against the frame (matplotlib, Agg).

Top: the target's displacement from its planned position per axis (LR, AP, SI) and its length,
with the tolerance. Bottom: the smallest clearance between the path and each risk structure,
with the safety margin. Gating frames are shaded in both, the recommended frame is marked.
"""

from __future__ import annotations

import os
from pathlib import Path

from .analysis import AXES, PuncturePlan


def plot_plan(plan: PuncturePlan, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the planning plot of ``plan`` as a PNG to ``path`` (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a Figure without pyplot: no global state, no GUI backend

    frames = [f.index for f in plan.frames]
    fig = Figure(figsize=(8.0, 6.5), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)

    for ax in (top, bottom):
        for i in plan.gating_frames:
            ax.axvspan(i - 0.5, i + 0.5, color="tab:green", alpha=0.12, lw=0)
        if plan.recommended_frame is not None:
            ax.axvline(plan.recommended_frame, color="tab:green", lw=1.5, ls="--")
        ax.grid(True, alpha=0.3)

    colours = {"LR": "tab:red", "AP": "tab:blue", "SI": "tab:purple"}
    for axis_index, axis in enumerate(AXES):
        top.plot(frames, [f.displacement_mm[axis_index] for f in plan.frames], marker="o", ms=3,
                 color=colours[axis], label=f"{axis} ({plan.summary['amplitude_mm'][axis]:.1f} mm p-p)")
    top.plot(frames, [f.displacement_norm_mm for f in plan.frames], color="black", lw=2, label="|displacement|")
    top.axhline(plan.tolerance_mm, color="grey", ls=":", label=f"tolerance {plan.tolerance_mm:g} mm")
    top.set_ylabel("target displacement (mm)")
    top.legend(loc="best", fontsize=8)

    if plan.structures:
        # the range that matters for the decision: up to a few margins; farther structures are listed
        top_mm = max(4.0 * plan.margin_mm, 20.0)
        far = []
        for name in plan.structures:
            values = [f.min_clearance_mm.get(name) for f in plan.frames]
            finite = [v for v in values if v is not None]
            if not finite or min(finite) > top_mm:
                far.append(name)
                continue
            bottom.plot(frames, [float("nan") if v is None else v for v in values], marker="o", ms=3, label=name)
        bottom.axhline(plan.margin_mm, color="tab:red", ls=":", label=f"margin {plan.margin_mm:g} mm")
        bottom.set_ylim(0.0, top_mm)
        if far:
            bottom.text(0.01, 0.97, f"more than {top_mm:g} mm away: {', '.join(far)}", transform=bottom.transAxes,
                        va="top", fontsize=8, color="dimgrey", wrap=True)
        bottom.legend(loc="lower right", fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no risk structures given", ha="center", va="center", transform=bottom.transAxes)
    blocked = [f.index for f in plan.frames if not f.clear]
    if blocked:
        bottom.plot(blocked, [0.0] * len(blocked), "x", color="tab:red", ms=9, mew=2, clip_on=False, label="_blocked")
    bottom.set_ylabel("path clearance (mm)")
    bottom.set_xlabel("frame")
    bottom.set_xticks(frames)

    recommended = plan.recommended_frame
    heading = title or "Puncture plan"
    detail = (f"gating frames {plan.gating_frames}, recommended frame {recommended}" if recommended is not None
              else "no gating window")
    fig.suptitle(f"{heading}: {detail}", fontsize=10)
    out = Path(path)
    fig.savefig(out, format="png")
    return out
