"""``modiff phantom``: write one XCAT-lite 4D phantom case with its ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "phantom"
HELP = "write a synthetic 4D lung CT or cardiac MR case with ground-truth motion, labels and landmarks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=["lung", "cardiac"], default="lung", help="anatomy and modality (default: lung)")
    parser.add_argument("--frames", type=int, default=10, metavar="N", help="number of frames over one cycle (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same case (default: 0)")
    parser.add_argument("--start-phase", type=float, default=0.0, metavar="P",
                        help="cycle phase of frame 0 in [0, 1); 0 = end-exhale / end-diastole (default: 0)")
    parser.add_argument("--amplitude", type=float, default=None, metavar="X",
                        help="motion strength instead of a drawn one: diaphragm SI excursion in mm (lung) or EF in %% (cardiac)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def write_case(case, out_dir: Path) -> None:
    """Write a :class:`~MoDiffLib.phantom.PhantomCase` into an (empty, temporary) folder.

    Lung cases also get ``trace.csv``: the true breathing trace (``frame,time_s,diaphragm_s_mm``,
    time since frame 0; :func:`MoDiffLib.trace.read_trace` reads it).
    """
    from ..io import write_sequence, write_volume
    from ..trace import write_trace

    write_sequence(case.frames, out_dir / "frames.seq.nrrd")
    write_volume(case.frames.frame(0), out_dir / "frame0.nrrd")
    write_sequence(case.labels, out_dir / "labels.seq.nrrd")
    write_sequence(case.motion, out_dir / "motion.seq.nrrd")
    landmarks = {
        "space": "RAS",
        "unit": "mm",
        "num_frames": case.frames.num_frames,
        "landmarks": [
            {"name": name, "positions_ras": [[round(float(c), 4) for c in p] for p in positions]}
            for name, positions in case.landmarks.items()
        ],
    }
    (out_dir / "landmarks.json").write_text(json.dumps(landmarks, indent=1), encoding="utf-8")
    params = dict(case.params, kind=case.kind, label_names={str(k): v for k, v in case.label_names.items()})
    (out_dir / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True), encoding="utf-8")
    if case.params.get("trace_mm") is not None:
        n = case.frames.num_frames
        write_trace(out_dir / "trace.csv", case.params["trace_mm"],
                    [round(i * case.params["period_s"] / n, 6) for i in range(n)])


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_dir, check_output_path
    from ..phantom import make_phantom

    check_output_path(args.out, overwrite=args.overwrite, folder=True)  # fail before the work, not after
    case = make_phantom(args.kind, num_frames=args.frames, seed=args.seed, start_phase=args.start_phase,
                        amplitude=args.amplitude)
    with atomic_dir(Path(args.out), overwrite=args.overwrite) as tmp:
        write_case(case, tmp)
    strength = case.params["amplitude"]
    unit = "mm diaphragm SI excursion" if case.kind == "lung" else "% ejection fraction"
    print(f"wrote {args.kind} phantom (seed {args.seed}, {args.frames} frames, {strength:.1f} {unit}) to {args.out}")
    return 0
