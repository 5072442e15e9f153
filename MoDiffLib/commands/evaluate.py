"""``modiff evaluate``: MoDiff and its baselines on held-out 4D cases, with a report (JSON, Markdown, plots).

Writes ``DIR/report.json`` (per method: mean and std over cases of every metric, per case, method
and frame: the raw values), ``DIR/report.md`` (a method x metric table), ``DIR/metrics_per_frame.png``,
``DIR/curves.png`` (physiological curves of the first case) and ``DIR/montage.png`` (generated vs
ground truth vs error for the first case). Progress goes to stderr, one line per case and method.
"""

from __future__ import annotations

import argparse

NAME = "evaluate"
HELP = "score MoDiff and baselines against ground-truth 4D cases (report.json, report.md, plots)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.methods import METHODS

    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="phantom:lung:K or phantom:cardiac:K (K held-out test phantoms; add :val for the "
                             "validation split), or a data set spec/folder (acdc:PATH, dirlab:PATH, 4dlung:PATH, "
                             "folder:PATH for a folder of 4D files, of numbered 3D frames or of case folders, with "
                             "labels beside them; or one 4D file)")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="registered model name or checkpoint folder (default: the registered model of the data's kind)")
    parser.add_argument("--baselines", default=None, metavar="LIST",
                        help=f"comma-separated methods to compare (default: all): {', '.join(METHODS)}")
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help="phantoms: frames per case incl. frame 0 (default 10, at most the model's maximum); "
                             "other data: frames per cycle the model generates (default: the case's own where the "
                             "model can make them, else its maximum), resampled in time so that every true frame "
                             "is scored at its own cycle phase")
    parser.add_argument("--split", default=None, choices=["train", "test", "testing", "all"],
                        help="ACDC patients to evaluate: train 001-090, test 091-100, testing 101-150, or all "
                             "(default: every patient found)")
    parser.add_argument("--steps", type=int, default=None, metavar="K", help="sampling steps (default: the model's)")
    parser.add_argument("--transfer", choices=["warp", "difference"], default=None,
                        help="how generated frames reach the input grid (see modiff generate; default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the generation (default: 0)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device (default: auto)")
    parser.add_argument("--out", default="evaluation", metavar="DIR", help="output folder (default: evaluation)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--phantom-grid", default=None, metavar="I,J,K",
                        help="phantom grid size instead of the phantom's default (same field of view)")
    parser.add_argument("--mean-motion-cases", type=int, default=8, metavar="M",
                        help="training phantoms averaged by the mean-motion baselines (default: 8)")
    parser.add_argument("--registration-iterations", default=None, metavar="A,B,C",
                        help="demons iterations per pyramid level of the motion estimation (default: 40,30,5); "
                             "fewer is faster and less accurate")
    parser.add_argument("--paper-model", default=None, metavar="NAME|PATH",
                        help="the paper's variant (a latent-family model) for the modiff-paper methods (default: the "
                             "registered latent model of the data's kind)")
    parser.add_argument("--samples", type=int, default=None, metavar="K",
                        help="motion samples averaged by a motion model's point estimate (default: the model's)")
    parser.add_argument("--pose", default=None, metavar="CHANGES",
                        help="move every case's patient before scoring, e.g. 'shift=0,0,20;rotate=15;crop=0.8;"
                             "spacing=1.5' (RAS mm, degrees about the grid's k axis, field-of-view fraction kept "
                             "along i and j, spacing factor); ground truth moves along exactly")
    parser.add_argument("--residual", choices=["auto", "on", "off"], default="auto",
                        help="motion models: the learned residual on or off for the modiff methods (auto: the "
                             "model's default)")
    parser.add_argument("--no-motion-metrics", action="store_true",
                        help="skip motion estimation on the cines (no landmark or label-curve errors)")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.run import execute, prepare, stderr_log

    plan = prepare(
        args.data, args.model, methods=args.baselines, frames=args.frames, steps=args.steps, seed=args.seed,
        transfer=args.transfer, out=args.out, overwrite=args.overwrite, device=args.device, phantom_grid=args.phantom_grid,
        mean_motion_cases=args.mean_motion_cases, registration_iterations=args.registration_iterations,
        motion_metrics=not args.no_motion_metrics, paper_model=args.paper_model, samples=args.samples,
        pose=args.pose, residual=None if args.residual == "auto" else args.residual == "on", split=args.split,
    )
    execute(plan, stderr_log)
    return 0
