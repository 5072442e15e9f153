"""Add the trace regression and the training-input summary to a trained motion model, no retraining.

``python -m training.motion_refit --model Resources/models/modiff-lung-motion --out runs/lung-refit``

Models trained before :mod:`training.motion` fitted them lack two parts that need no network: the
population's regression on the breathing trace (lung; :meth:`PopulationMotion.trace_fields`) and
the :class:`~MoDiffLib.motion.typicality.Typicality` summary of the training prompts (the
out-of-distribution warning). This draws ``--cases`` training phantoms exactly as the trainer does
(same seeds from 0, same phantom grid) and fits both; the network, its basis and the population
line in the strength stay as they are, so everything the model did before is unchanged.
Exit status 2 with ``motion_refit: error: ...`` for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from MoDiffLib.atomic import check_output_path
from MoDiffLib.datasets.phantom import PHANTOM_SEEDS
from MoDiffLib.errors import InputError, MoDiffError
from MoDiffLib.models.config import ModelConfig
from MoDiffLib.motion_pipeline import MotionPipeline, antialiased
from MoDiffLib.pipelines import load_pipeline

from .motion import draw_samples, fit_trace_basis, fit_typicality, parse_shapes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.motion_refit", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="motion model folder or registered name")
    p.add_argument("--out", required=True, help="folder for the completed model (created)")
    p.add_argument("--cases", type=int, default=1000, help="training phantoms drawn (train seeds 0..cases-1)")
    p.add_argument("--workers", type=int, default=2, help="processes drawing phantoms")
    p.add_argument("--phantom-shape", default=None, metavar="I,J,K[;I,J,K...]",
                   help="as training.motion (default: the kind's)")
    p.add_argument("--fit", default="trace,typicality",
                   help="what to fit: trace (the trace regression, lung), typicality, or both (default)")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if args.cases < 2 or args.workers < 1:
        raise InputError("--cases must be at least 2 and --workers at least 1")
    pipeline = load_pipeline(args.model)
    if not isinstance(pipeline, MotionPipeline):
        raise InputError(f"'{args.model}' is not a motion model")
    out = check_output_path(args.out, overwrite=args.overwrite)
    shape = None if args.phantom_shape is None else parse_shapes(args.phantom_shape)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    fit = {part.strip() for part in args.fit.split(",") if part.strip()}
    if not fit or fit - {"trace", "typicality"}:
        raise InputError(f"--fit takes trace, typicality or both, got {args.fit!r}")
    cfg = pipeline.config
    # the typicality summary measures anti-aliased prompts, whatever this model's network reads
    drawing = antialiased(cfg)
    lo = PHANTOM_SEEDS["train"].start
    samples = draw_samples(drawing, list(range(lo, lo + args.cases)), args.workers, log, shape)
    fitted = []
    if "trace" in fit:
        pipeline.population.trace_basis = fit_trace_basis(samples)
        fitted += ["trace_regression"] if pipeline.population.has_trace else []
    if "typicality" in fit:
        pipeline.typicality = fit_typicality(samples)
        fitted.append("typicality")
    refit = {"command": "python -m training.motion_refit " + " ".join(sys.argv[1:]), "cases": args.cases,
             "seeds": [lo, lo + args.cases - 1], "fitted": fitted,
             "phantom_shapes": None if shape is None else [list(s) for s in shape]}
    previous = cfg.training.get("refit")
    if previous:  # an earlier refit of the other part stays on record
        refit["previous"] = previous
    pipeline.config = ModelConfig.from_dict({**cfg.to_dict(), "training": {**cfg.training, "refit": refit}})
    pipeline.save_pretrained(out, overwrite=args.overwrite)
    distances = None if pipeline.typicality is None else [round(float(v), 3) for v in pipeline.typicality.distances]
    log(f"wrote {out}: {json.dumps(refit['fitted'])}; training prompt distances {distances}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except MoDiffError as e:
        print(f"motion_refit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
