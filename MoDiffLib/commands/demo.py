"""``modiff demo``: the embedded default, end to end, offline, on CPU.

Makes a held-out phantom (a seed of the test split, never seen in training), generates its cine
from frame 0 with the bundled model, and writes ``input.nrrd``, ``cine.seq.nrrd``,
``preview.png`` (generated frames beside the ground truth) and ``summary.txt`` (metrics of this
case against the ground truth and against the static baseline).

It then plans a needle puncture on the generated cine as ``modiff plan --motion --save-motion``
does (:func:`~MoDiffLib.planning.plan_puncture` over the model's own motion, or over the motion
estimated from the cine for a model that returns none): the target is a lesion of the phantom's
truth (a nodule; the LV apex of the cardiac phantom), the entry the skin point of the shortest
straight path from it that has a gating window, the risks the phantom's frame-0 anatomy
(``labels0.nrrd``). The plan goes into ``plan/`` (``plan.json``, ``plan.png``,
``motion.seq.nrrd``), where ``modiff view DIR`` finds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

NAME = "demo"
HELP = ("run the bundled model on a held-out phantom and write the cine, a preview, its metrics and a "
        "puncture plan on it")

#: What the demo punctures on each phantom: the landmarks (frame 0 of the truth) it may aim at,
#: by name prefix, and the structures the path must keep clear of. Lung: the nodules, around the
#: structures of the README's worked example; cardiac: transapical access to the LV apex.
DEMO_TARGETS: dict[str, tuple[str, ...]] = {"lung": ("nodule_",), "cardiac": ("lv_apex",)}
DEMO_RISKS: dict[str, tuple[str, ...]] = {
    "lung": ("vessels", "ribs", "heart", "aorta", "spine", "sternum", "airways", "liver", "spleen", "stomach"),
    "cardiac": ("lung", "liver", "rv_blood", "rv_myocardium", "aorta", "spine", "la_blood", "ra_blood"),
}
#: Directions tried from the target to the skin: every 30 degrees around in the axial plane, then
#: (only when none of those has a gating window) 30 degrees up and down. Each ray costs ~20 ms on
#: the lung demo's grid; the axial ones alone find a path on the held-out lung phantoms.
_AZIMUTHS_DEG = tuple(range(0, 360, 30))
_ELEVATION_TIERS_DEG = ((0,), (-30, 30))
#: Files of the plan folder, as ``modiff plan --save-motion`` names them; the frame-0 label map.
PLAN_DIR = "plan"
LABELS0 = "labels0.nrrd"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=["lung", "cardiac"], default="lung", help="which bundled model (default: lung)")
    parser.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out)")
    parser.add_argument("--frames", type=int, default=10, metavar="N", help="frames to generate (default: 10)")
    parser.add_argument("--case", type=int, default=0, metavar="K", help="which held-out phantom (default: 0)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="device (default: cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def path_candidates(case, kind: str, elevations_deg=(0,)) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(target name, entry, target)`` RAS mm on frame 0 of ``case``, shortest path first.

    Targets are the landmarks of :data:`DEMO_TARGETS`; each entry is where a ray from the target
    (:data:`_AZIMUTHS_DEG` around, at ``elevations_deg``) leaves the body
    (:func:`~MoDiffLib.planning.skin_entry`); rays that find no skin are left out.
    """
    from ..planning import skin_entry
    from ..volume import Volume

    body = Volume(case.labels.frames[0], case.frames.geometry, "labels0")
    found = []
    for name in sorted(n for n in case.landmarks if n.startswith(DEMO_TARGETS[kind])):
        target = np.asarray(case.landmarks[name][0], dtype=float)
        for elevation in np.radians(elevations_deg):
            for azimuth in np.radians(_AZIMUTHS_DEG):
                direction = [np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)]
                entry = skin_entry(body, target, direction)
                if entry is not None:
                    found.append((name, entry, target))
    return sorted(found, key=lambda c: float(np.linalg.norm(c[2] - c[1])))


def choose_plan(case, kind: str, fields, risk, index_values=None, progress=None):
    """The plan of the shortest path (:func:`path_candidates`) that has a gating window, else of the best path.

    The axial directions are tried first, the oblique ones only when no axial path gates. "Best"
    when no path gates: the most clear frames, then the largest clearance. Every path is planned
    as ``modiff plan`` plans it (:func:`~MoDiffLib.planning.plan_puncture`, default margin and
    tolerance); ``progress`` gets an ``entry`` event per path.

    Returns:
        ``(target name, plan)``, or ``None`` when no ray from a target reaches the skin.
    """
    from ..planning import DEFAULT_MARGIN_MM, DEFAULT_TOLERANCE_MM, plan_puncture
    from ..progress import report_step

    def worst_clearance(plan) -> float:
        return min((min(f.min_clearance_mm.values(), default=np.inf) for f in plan.frames), default=np.inf)

    best = None
    for elevations in _ELEVATION_TIERS_DEG:
        candidates = path_candidates(case, kind, elevations)
        for i, (name, entry, target) in enumerate(candidates, 1):
            plan = plan_puncture(fields, entry, target, risk, DEFAULT_MARGIN_MM, DEFAULT_TOLERANCE_MM,
                                 index_values=index_values)
            report_step(progress, "entry", i, len(candidates), f"{name}: {len(plan.gating_frames)} gating frames")
            if plan.gating_frames:
                return name, plan
            score = (sum(f.clear for f in plan.frames), worst_clearance(plan))
            if best is None or score > best[0]:
                best = (score, name, plan)
    return None if best is None else (best[1], best[2])


def plan_line(name: str, plan) -> str:
    """One line on the demo's plan: target, path, target motion, gating window, closest structure."""
    s = plan.summary
    amp = s["amplitude_mm"]
    closest = min(((min(f.min_clearance_mm[k] for f in plan.frames), k) for k in plan.structures), default=None)
    clearance = f"; closest structure {closest[1]} at {closest[0]:.1f} mm" if closest is not None else ""
    gating = f"gating frames {s['gating_frames']}, recommended frame {s['recommended_frame']}" \
        if s["gating_frames"] else "no gating frame (no path kept the margin with the target in tolerance)"
    length = float(np.linalg.norm(np.subtract(plan.target_ras, plan.entry_ras)))
    return (f"plan: {name}, {length:.0f} mm path from the skin; target motion LR {amp['LR']:.1f}, AP {amp['AP']:.1f}, "
            f"SI {amp['SI']:.1f} mm; {gating}{clearance} (margin {plan.margin_mm:g} mm, tolerance {plan.tolerance_mm:g} mm)")


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_dir, check_output_path
    from ..datasets import PHANTOM_SEEDS
    from ..io import write_sequence, write_volume
    from ..metrics import cine_metrics
    from ..motion import estimate_motion
    from ..phantom import make_phantom
    from ..pipelines import load_pipeline
    from ..planning import plot_plan, risk_structures
    from ..preview import save_preview
    from ..progress import ProgressPrinter, StageReporter
    from ..volume import Volume

    check_output_path(args.out, overwrite=args.overwrite, folder=True)
    pipeline = load_pipeline(None, kind=args.kind)
    seed = PHANTOM_SEEDS["test"].start + args.case
    print(f"held-out {args.kind} phantom, seed {seed}; model {pipeline.config.name} {pipeline.config.version}",
          file=sys.stderr)
    case = make_phantom(args.kind, num_frames=args.frames, seed=seed)
    volume = case.frames.frame(0)
    volume.name = f"{args.kind}-phantom-{seed}"
    # One bar over the whole demo. Measured on the lung demo (2 cores): generation ~12 s, choosing
    # and checking the path ~0.7 s, writing ~6 s (the plan's plot and motion fields ~3 s of it); a
    # model without its own motion (latent family) adds the demons estimate of the cine's motion,
    # which takes about as long as generation.
    own_motion = pipeline.config.family == "motion"
    weights = {stage: 0.7 * w / sum(pipeline.stages.values()) for stage, w in pipeline.stages.items()}
    weights.update(({} if own_motion else {"motion": 0.6}) | {"entry": 0.03, "write": 0.27})
    printer = ProgressPrinter("bar")
    report = StageReporter(printer, weights, "the demo")
    try:
        result = pipeline.generate(volume, args.frames, seed=0, device=args.device, progress=report.relay)
        # the plan, as modiff plan makes it: the motion of the cine (the model's own: the cine is
        # the input moved by it), the frame-0 anatomy of the truth as the risks
        fields = result.motion if own_motion else estimate_motion(result.sequence, progress=report.within("motion"))
        labels0 = Volume(case.labels.frames[0], result.sequence.geometry, "labels0")
        risk = risk_structures(labels0, result.sequence.geometry, result.sequence.num_frames, case.label_names,
                               [n for n in DEMO_RISKS[args.kind] if n in case.label_names.values()])
        chosen = choose_plan(case, args.kind, fields, risk, result.sequence.index_values, report.within("entry"))
        target_name, plan = chosen if chosen is not None else (None, None)
        if plan is not None:
            # paths relative to the demo folder: modiff view finds them beside the plan folder
            plan.source = {"cine": "cine.seq.nrrd", "risk": LABELS0, "spread": None, "motion": fields.info.get("method"),
                           "target": target_name, "frames": result.sequence.num_frames,
                           "grid": result.sequence.geometry.describe(), "index_name": result.sequence.index_name,
                           "index_unit": result.sequence.index_unit}
        report("entry", 1, 1)

        # Metrics on the model's normalised intensities ([-1, 1] over its window), as the paper reports.
        window = pipeline.window(volume)
        truth = window.normalise(case.frames.frames)
        model = cine_metrics(window.normalise(result.sequence.frames), truth, 2.0)
        static = cine_metrics(truth[[0] * len(truth)], truth, 2.0)
        unit = case.params.get("amplitude")
        lines = [
            f"MoDiff demo: {args.kind} phantom seed {seed} (held out), {args.frames} frames",
            f"model: {pipeline.config.name} {pipeline.config.version} ({result.provenance['device']}, "
            f"{result.provenance['steps']} steps, {result.provenance['elapsed_seconds']:.1f} s)",
            f"true motion strength: {unit:.1f} {pipeline.config.amplitude.unit if pipeline.config.amplitude else ''}",
            f"metrics over frames 1..N-1 on intensities normalised to [-1, 1] over [{window.low:g}, {window.high:g}]:",
            f"  {'method':<10} {'PSNR dB':>8} {'SSIM':>7} {'NMSE':>9} {'TCE':>8}",
        ]
        for name, m in (("modiff", model), ("static", static)):
            lines.append(f"  {name:<10} {m['psnr']:8.2f} {m['ssim']:7.4f} {m['nmse']:9.5f} {m['tce']:8.4f}")
        if result.motion is not None:
            # a motion model returns its motion: landmarks follow it exactly (no registration)
            def error(track, moved):
                return float(np.linalg.norm(moved[1:] - track[1:], axis=1).mean())

            tracks = list(case.landmarks.values())
            mine = np.mean([error(t, result.motion.positions(t[0])[:, 0]) for t in tracks])
            still = np.mean([error(t, np.repeat(t[:1], len(t), axis=0)) for t in tracks])
            lines.append(f"landmark error (mm, {len(tracks)} landmarks, frames 1..N-1): modiff {mine:.2f}, static {still:.2f}")
        lines.append(plan_line(target_name, plan) if plan is not None else
                     f"plan: none (no ray from the {' or '.join(DEMO_TARGETS[args.kind])} targets reaches the skin in the volume)")
        summary = "\n".join(lines) + "\n"
        steps = 6 if plan is not None else 3
        with atomic_dir(Path(args.out), overwrite=args.overwrite) as tmp:
            report("write", 0, steps, "input.nrrd")
            write_volume(volume, tmp / "input.nrrd")
            report("write", 1, steps, "cine.seq.nrrd")
            write_sequence(result.sequence, tmp / "cine.seq.nrrd")
            report("write", 2, steps, "preview.png")
            save_preview(tmp / "preview.png", result.sequence, case.frames, window=(window.low, window.high),
                         title=f"MoDiff {args.kind} demo (seed {seed}): generated vs ground truth")
            (tmp / "summary.txt").write_text(summary, encoding="utf-8")
            (tmp / "provenance.json").write_text(json.dumps(result.provenance, indent=2), encoding="utf-8")
            if plan is not None:
                report("write", 3, steps, f"{LABELS0}, {PLAN_DIR}/plan.json")
                write_volume(labels0, tmp / LABELS0)
                (tmp / PLAN_DIR).mkdir()
                (tmp / PLAN_DIR / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1), encoding="utf-8")
                report("write", 4, steps, f"{PLAN_DIR}/plan.png")
                plot_plan(plan, tmp / PLAN_DIR / "plan.png", title=f"MoDiff {args.kind} demo (seed {seed}): {target_name}")
                report("write", 5, steps, f"{PLAN_DIR}/motion.seq.nrrd")
                # the motion lets modiff view carry the frame-0 risk structures into every frame
                write_sequence(fields.to_sequence(), tmp / PLAN_DIR / "motion.seq.nrrd")
        report("write", steps, steps)  # published
    finally:
        printer.close()
    print(summary, end="")
    plan_files = f", {LABELS0}, {PLAN_DIR}/ (plan.json, plan.png, motion.seq.nrrd)" if plan is not None else ""
    print(f"wrote {args.out}/: input.nrrd, cine.seq.nrrd, preview.png, summary.txt{plan_files}; "
          f"view it with: modiff view {args.out}", file=sys.stderr)
    return 0
