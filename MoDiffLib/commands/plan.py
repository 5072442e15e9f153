"""``modiff plan``: check a needle path entry -> target in every frame of a 4D cine.

Estimates the motion of the cine (or takes given displacement fields), follows the target
through it and checks the straight path from the (still) entry to the moving target against the
risk structures in every frame. Writes ``DIR/plan.json`` (per-frame values and the summary: motion
amplitude per axis, gating window, recommended frame) and ``DIR/plan.png`` (displacement and
clearance against the frame), and with ``--save-motion`` the fields as ``DIR/motion.seq.nrrd``.
The folder appears complete or not at all.

With ``--spread`` (the per-voxel motion spread of ``modiff generate --spread-out``) a frame gates
only when the target displacement plus ``--spread-factor`` times its spread is within the tolerance.

Points are RAS millimetres on frame 0, as Slicer shows them: ``--entry=-120.5,-80,-170`` (write
``=`` when the first coordinate is negative, else the shell argument looks like an option).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

NAME = "plan"
HELP = "plan a needle puncture on a 4D cine: target motion, path clearance per frame, gating window"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cine", metavar="CINE", help="the 4D cine (.seq.nrrd or 4D .nii.gz), e.g. written by modiff generate")
    parser.add_argument("--entry", required=True, metavar="R,A,S",
                        help="needle entry point on the skin, RAS mm on frame 0 (write --entry=-1,2,3 for a negative first value)")
    parser.add_argument("--target", required=True, metavar="R,A,S", help="target point (e.g. the nodule centre), RAS mm on frame 0")
    parser.add_argument("--risk", metavar="LABELS",
                        help="label map of the structures to avoid: one 3D map of frame 0 (moved with the estimated "
                             "motion) or a .seq.nrrd with one map per frame; on the cine's grid")
    parser.add_argument("--series-uid", default=None, metavar="UID",
                        help="--risk given as a DICOM folder of several series: the Series Instance UID to read")
    parser.add_argument("--risk-names", metavar="NAMES",
                        help="structure names: a JSON file or text ({\"5\": \"vessels\"}), or vessels=5,ribs=11 "
                             "(default: label_names of a params.json beside the label map, else label_<n>)")
    parser.add_argument("--structures", metavar="LIST",
                        help="which structures are risks, by name or value, comma-separated (default: every label "
                             "except those containing the entry or the target)")
    parser.add_argument("--margin", type=float, default=None, metavar="MM",
                        help="clearance the path must keep from every risk structure (default: 5 mm)")
    parser.add_argument("--tolerance", type=float, default=None, metavar="MM",
                        help="how far the target may be from its planned position in a gating frame (default: 3 mm)")
    parser.add_argument("--not-cyclic", action="store_true",
                        help="the frames are part of a cycle (e.g. exhale to inhale only): gating windows do not wrap "
                             "from the last frame to frame 0")
    parser.add_argument("--motion", metavar="FIELDS",
                        help="use these displacement fields (vector .seq.nrrd, RAS mm, frame 0 -> t at frame-0 voxels, "
                             "e.g. a phantom's motion.seq.nrrd) instead of estimating them")
    parser.add_argument("--spread", metavar="SPREAD",
                        help="per-voxel motion spread in mm (scalar .seq.nrrd from modiff generate --spread-out, on "
                             "the cine's grid): a gating frame then needs displacement + factor x spread within the "
                             "tolerance")
    parser.add_argument("--spread-factor", type=float, default=None, metavar="F",
                        help="how many spreads to add to the target displacement (default: 2; needs --spread)")
    parser.add_argument("--save-motion", action="store_true", help="also write the fields used as DIR/motion.seq.nrrd")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: CINE's name + '-plan' beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--progress", choices=["text", "json"], default="text",
                        help="progress as text on stderr (default) or as JSON events on stdout (for the Slicer module)")


def _read_risk(path: str, series_uid: str | None = None):
    """A 3D label map (Volume) or a label sequence (VolumeSequence) from ``path`` (``series_uid``:
    the series of a DICOM folder)."""
    from ..atomic import split_suffix
    from ..errors import InputError
    from ..io import read_sequence, read_volume

    if split_suffix(path)[1].lower() in (".seq.nrrd", ".seq.nhdr"):
        return read_sequence(path)
    try:
        return read_volume(path, series_uid=series_uid)
    except InputError as first:
        try:
            return read_sequence(path)
        except InputError:
            raise first from None


def default_out(cine: str) -> Path:
    from ..atomic import split_suffix

    p = Path(cine)
    return p.with_name(f"{split_suffix(p)[0]}-plan")


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_dir, check_output_path
    from ..errors import InputError
    from ..io import read_sequence, write_sequence
    from ..motion import MotionFields, estimate_motion
    from ..planning import (
        DEFAULT_MARGIN_MM,
        DEFAULT_TOLERANCE_MM,
        check_entry_and_target,
        check_length_mm,
        names_beside,
        parse_label_names,
        parse_point,
        plan_puncture,
        plot_plan,
        risk_structures,
    )
    from ..planning.analysis import DEFAULT_SPREAD_FACTOR, check_spread, check_spread_factor
    from ..progress import PLANNING, PLANNING_GIVEN_MOTION, ProgressPrinter, StageReporter

    started = time.perf_counter()
    # -- everything that can be wrong with the request is checked before any work ----------------
    entry = parse_point(args.entry, "--entry")
    target = parse_point(args.target, "--target")
    margin = DEFAULT_MARGIN_MM if args.margin is None else args.margin
    tolerance = DEFAULT_TOLERANCE_MM if args.tolerance is None else args.tolerance
    out = Path(args.out) if args.out else default_out(args.cine)
    check_output_path(out, overwrite=args.overwrite, folder=True)
    printer = ProgressPrinter("json" if args.progress == "json" else "lines", prefix="modiff plan: ")
    report = StageReporter(printer, PLANNING_GIVEN_MOTION if args.motion else PLANNING, "planning")

    cine = read_sequence(args.cine)
    if cine.frames.ndim != 4:
        raise InputError(f"'{args.cine}' holds vector frames (displacements?); the cine must hold images")
    if cine.num_frames < 2:
        raise InputError(f"'{args.cine}' has one frame; planning over motion needs at least two")
    entry, target = check_entry_and_target(entry, target, cine.geometry)
    report("load", 1, 2, f"{cine.num_frames} frames of {cine.geometry.describe()}")

    fields = None
    if args.motion:
        fields = MotionFields.from_sequence(read_sequence(args.motion), {"method": "given", "source": str(args.motion)})
        if fields.num_frames != cine.num_frames or not fields.geometry.is_close(cine.geometry, atol_mm=1e-3):
            raise InputError(
                f"the motion fields '{args.motion}' ({fields.num_frames} frames of {fields.geometry.describe()}) do not "
                f"match the cine ({cine.num_frames} frames of {cine.geometry.describe()})"
            )
    spread = None
    if args.spread:
        spread = check_spread(read_sequence(args.spread), cine.num_frames, cine.geometry,
                              what=f"the motion spread '{args.spread}'", against="the cine")
    elif args.spread_factor is not None:
        raise InputError("--spread-factor needs a motion spread (--spread)")
    spread_factor = check_spread_factor(DEFAULT_SPREAD_FACTOR if args.spread_factor is None else args.spread_factor,
                                        "spread factor (--spread-factor)")
    risk = None
    if args.risk:
        labels = _read_risk(args.risk, args.series_uid)
        names = parse_label_names(args.risk_names) if args.risk_names else (names_beside(args.risk) or {})
        structures = [s for s in args.structures.split(",")] if args.structures else None
        risk = risk_structures(labels, cine.geometry, cine.num_frames, names, structures, entry, target)
    elif args.risk_names or args.structures or args.series_uid:
        raise InputError("--risk-names, --structures and --series-uid need a risk label map (--risk)")
    check_length_mm(margin, "safety margin (--margin)")
    check_length_mm(tolerance, "target tolerance (--tolerance)")
    report("load", 2, 2, "inputs checked")

    # -- work ---------------------------------------------------------------------------------------
    if fields is None:
        fields = estimate_motion(cine, progress=report.within("motion"))
    else:
        report("motion", 1, 1, f"fields from {args.motion}")
    plan = plan_puncture(fields, entry, target, risk, margin, tolerance, index_values=cine.index_values,
                         cyclic=not args.not_cyclic, progress=report.within("plan"),
                         spread=spread, spread_factor=spread_factor)
    plan.source = {"cine": str(args.cine), "risk": str(args.risk) if args.risk else None,
                   "spread": str(args.spread) if args.spread else None,
                   "frames": cine.num_frames, "grid": cine.geometry.describe(),
                   "index_name": cine.index_name, "index_unit": cine.index_unit}

    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        report("write", 0, 2, str(out))
        (tmp / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1), encoding="utf-8")
        plot_plan(plan, tmp / "plan.png", title=Path(args.cine).name)
        if args.save_motion:
            write_sequence(fields.to_sequence(), tmp / "motion.seq.nrrd")
    report("write", 2, 2)  # published

    summary = plan.summary
    elapsed = round(time.perf_counter() - started, 2)
    if args.progress == "json":
        print(json.dumps({"event": "done", "output": str(out),
                          "provenance": {"command": "plan", "frames": cine.num_frames, "motion": fields.info.get("method"),
                                         "margin_mm": margin, "tolerance_mm": tolerance,
                                         "spread_factor": summary["spread_factor"],
                                         "recommended_frame": summary["recommended_frame"],
                                         "elapsed_seconds": elapsed}}), flush=True)
    else:
        amp = summary["amplitude_mm"]
        spread_text = ("" if summary["max_target_spread_mm"] is None else
                       f"target spread up to {summary['max_target_spread_mm']:.1f} mm (x {summary['spread_factor']:g}); ")
        print(f"target motion LR {amp['LR']:.1f} mm, AP {amp['AP']:.1f} mm, SI {amp['SI']:.1f} mm; {spread_text}"
              f"gating frames {summary['gating_frames']}; recommended frame {summary['recommended_frame']}; "
              f"wrote {out}/plan.json and plan.png in {elapsed:.1f} s")
        for warning in summary["warnings"]:
            print(f"modiff plan: warning: {warning}", file=sys.stderr)
    return 0
