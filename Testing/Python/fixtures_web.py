"""A small planned case for the web viewer's tests, written as a user would make it.

``modiff phantom``'s layout (frames.seq.nrrd, labels.seq.nrrd, motion.seq.nrrd, params.json) of a
4-frame lung phantom on a 48x48x24 grid, then ``modiff plan`` with its default output folder
(``frames-plan`` beside the cine), the phantom's true motion saved with the plan and the per-frame
label map as the risk structures. About 3 s on a 2-core machine.

The plan has a frame out of tolerance (the target moves 3.3 mm at peak inhale, the tolerance is
2.5 mm), so the path changes colour between frames; :func:`write_planned_case` checks that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from MoDiffLib import cli
from MoDiffLib.commands.phantom import write_case
from MoDiffLib.phantom import make_phantom
from MoDiffLib.planning import skin_entry
from MoDiffLib.volume import Volume

FRAMES = 4
SHAPE_IJK = (48, 48, 24)
STRUCTURES = "vessels,ribs,heart,aorta,spine"
MARGIN_MM = 4.0
TOLERANCE_MM = 2.5


@dataclass
class PlannedCase:
    folder: Path
    cine: Path
    plan_dir: Path
    plan: dict  # plan.json as written


def point(p) -> str:
    return ",".join(f"{c:.4f}" for c in p)


def write_planned_case(folder: Path) -> PlannedCase:
    """Write the case into ``folder`` (created) and plan it with ``modiff plan``; returns where it is."""
    folder.mkdir(parents=True, exist_ok=True)
    case = make_phantom("lung", num_frames=FRAMES, seed=3, shape_ijk=SHAPE_IJK)
    write_case(case, folder)
    target = case.landmarks["nodule_1"][0]
    labels0 = Volume(case.labels.frames[0], case.frames.geometry)
    entry = skin_entry(labels0, target, [1.0 if target[0] > 0 else -1.0, 0.0, 0.0])
    assert entry is not None, "no skin entry on the phantom's lateral line"
    cine = folder / "frames.seq.nrrd"
    code = cli.main(["plan", str(cine), f"--entry={point(entry)}", f"--target={point(target)}",
                     "--risk", str(folder / "labels.seq.nrrd"), "--structures", STRUCTURES,
                     "--motion", str(folder / "motion.seq.nrrd"), "--save-motion",
                     "--margin", str(MARGIN_MM), "--tolerance", str(TOLERANCE_MM)])
    assert code == 0, "modiff plan failed on the test case"
    plan_dir = folder / "frames-plan"
    plan = json.loads((plan_dir / "plan.json").read_text())
    gating = [f["gating"] for f in plan["frames"]]
    assert any(gating) and not all(gating), f"the test case needs gating and other frames, got {gating}"
    return PlannedCase(folder, cine, plan_dir, plan)
