"""Puncture planning over the motion of a cine: is the straight path entry -> target safe in each phase?

* :mod:`.inputs` -- parsing and checking: ``"R,A,S"`` points, the risk label map (frame 0 or
  one per frame) and its structure names.
* :mod:`.analysis` -- :func:`plan_puncture`: per frame the target position and displacement,
  the path length and angle, the clearance to each risk structure; the motion amplitude per
  axis, the gating window and the recommended frame (:class:`PuncturePlan`, ``plan.json``).
* :mod:`.plot` -- the planning plot (``plan.png``).
* :mod:`.entry` -- :func:`skin_entry`: where a ray from the target leaves the body (demos, tests).
"""

from .analysis import (
    AXES,
    DEFAULT_MARGIN_MM,
    DEFAULT_TOLERANCE_MM,
    FramePlan,
    PuncturePlan,
    check_length_mm,
    gating_runs,
    plan_puncture,
    recommend_frame,
    segment_distances,
)
from .entry import skin_entry
from .inputs import (
    RiskStructures,
    check_entry_and_target,
    check_point,
    names_beside,
    parse_label_names,
    parse_point,
    risk_structures,
)
from .plot import plot_plan

__all__ = [
    "AXES",
    "DEFAULT_MARGIN_MM",
    "DEFAULT_TOLERANCE_MM",
    "FramePlan",
    "PuncturePlan",
    "RiskStructures",
    "check_entry_and_target",
    "check_length_mm",
    "check_point",
    "gating_runs",
    "names_beside",
    "parse_label_names",
    "parse_point",
    "plan_puncture",
    "plot_plan",
    "recommend_frame",
    "risk_structures",
    "segment_distances",
    "skin_entry",
]
