"""Refit the parts of a trained motion model that need no network: population, trace regression, input summary.

``python -m training.motion_refit --model Resources/models/modiff-lung-motion --out runs/lung-refit``

Models trained before :mod:`training.motion` fitted them lack two parts that need no network: the
population's regression on the breathing trace (lung; :meth:`PopulationMotion.trace_fields`) and
the :class:`~MoDiffLib.motion.typicality.Typicality` summary of the training prompts (the
out-of-distribution warning). This draws ``--cases`` training phantoms exactly as the trainer does
(same seeds from 0, same phantom grid) and fits both; the network, its basis and the population
line in the strength stay as they are, so everything the model did before is unchanged.

``--fit population --population-shape K,J,I`` refits the population motion itself (and, where the
kind has a breathing trace, its trace regression) on a finer anatomy grid than the network's, case
by case: the network's residual is interpolated onto it. The cardiac model needs this: on its
6.6 mm network grid even the true motion loses 1.4-4.1 EF points (6 held-out phantoms), on a
3.3 mm in-plane grid 0.6-1.7.

``--fit strength`` (cardiac) fits the population's strength map, so that the motion at a
requested EF moves the LV by that EF (:mod:`training.strength_calibration`); it is fitted after
a refitted population, on the first ``--cases`` training phantoms (``--strength-cases`` of them).
``--fit typical`` fits the motion shown when no strength is given, the geometric median of the
training cases (:mod:`training.typical_motion`; ``--typical-cases`` of them, held in memory).
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

from .motion import draw_samples, fit_population_streamed, fit_trace_basis, fit_typicality, parse_shapes
from .strength_calibration import fit_strength_map
from .typical_motion import fit_typical_motion

#: What ``--fit`` can refit.
PARTS = ("population", "trace", "typicality", "strength", "typical")


def parse_grid(text: str) -> tuple[int, int, int]:
    """``K,J,I``: an anatomy grid of three whole numbers from 2 to 256 (array order)."""
    try:
        shape = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or not all(2 <= v <= 256 for v in shape):
        raise InputError(f"--population-shape must be K,J,I: three whole numbers from 2 to 256, got {text!r}")
    return shape  # type: ignore[return-value]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.motion_refit", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="motion model folder or registered name")
    p.add_argument("--out", required=True, help="folder for the completed model (created)")
    p.add_argument("--cases", type=int, default=1000, help="training phantoms drawn (train seeds 0..cases-1)")
    p.add_argument("--workers", type=int, default=2, help="processes drawing phantoms")
    p.add_argument("--phantom-shape", default=None, metavar="I,J,K[;I,J,K...]",
                   help="as training.motion (default: the kind's)")
    p.add_argument("--fit", default="trace,typicality",
                   help="what to fit, comma-separated: population, trace (the trace regression, lung), typicality, "
                        "strength (the strength map, cardiac), typical (the motion without a strength) "
                        "(default: trace,typicality)")
    p.add_argument("--typical-cases", type=int, default=600,
                   help="training phantoms the typical motion is fitted on (default 600)")
    p.add_argument("--strength-cases", type=int, default=200,
                   help="training phantoms the strength map is fitted on (default 200)")
    p.add_argument("--population-shape", default=None, metavar="K,J,I",
                   help="anatomy grid of a refitted population (default: the model's population grid)")
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
    if not fit or fit - set(PARTS):
        raise InputError(f"--fit takes {', '.join(PARTS)} (comma-separated), got {args.fit!r}")
    cfg = pipeline.config
    population_shape = pipeline.population.grid_shape
    if args.population_shape is not None:
        if "population" not in fit:
            raise InputError("--population-shape needs --fit population")
        population_shape = parse_grid(args.population_shape)
    motion = dict(cfg.motion)
    motion.pop("population_shape_kji", None)
    if population_shape != cfg.grid.shape_kji:
        motion["population_shape_kji"] = list(population_shape)
    lo = PHANTOM_SEEDS["train"].start
    seeds = list(range(lo, lo + args.cases))
    fitted = []
    drawn = 0  # training phantoms the fitted parts were drawn from (each part takes the first ones)
    # the trainer's samples hold fields on the network grid; a trace on a finer population grid
    # comes from the streamed fit instead
    trace_from_samples = "trace" in fit and population_shape == cfg.grid.shape_kji
    if "population" in fit or ("trace" in fit and not trace_from_samples):
        population = fit_population_streamed(cfg, seeds, population_shape, args.workers, log, shape)
        drawn = len(seeds)
        if "population" in fit:
            pipeline.population = population
            fitted.append(f"population {list(population_shape)}")
        if "trace" in fit:
            pipeline.population.trace_basis = population.trace_basis
        fitted += ["trace_regression"] if population.has_trace else []  # a refitted population brings its own
    if "typicality" in fit or trace_from_samples:
        # the typicality summary measures anti-aliased prompts, whatever this model's network reads
        samples = draw_samples(antialiased(cfg), seeds, args.workers, log, shape)
        drawn = len(seeds)
        if trace_from_samples:
            pipeline.population.trace_basis = fit_trace_basis(samples)
            fitted += ["trace_regression"] if pipeline.population.has_trace else []
        if "typicality" in fit:
            pipeline.typicality = fit_typicality(samples)
            fitted.append("typicality")
    if "typical" in fit:
        typical_seeds = seeds[:max(min(args.typical_cases, len(seeds)), 0)]
        pipeline.population.typical = fit_typical_motion(cfg, typical_seeds, pipeline.population.grid_shape,
                                                         args.workers, log, shape)
        drawn = max(drawn, len(typical_seeds))
        fitted.append("typical_motion")
    strength = None
    if "strength" in fit:
        # fitted last: the map belongs to the population line it was measured on
        strength_seeds = seeds[:max(min(args.strength_cases, len(seeds)), 0)]
        strength_map, strength = fit_strength_map(pipeline, strength_seeds, args.workers, log, shape)
        pipeline.population.strength_map = strength_map
        fitted.append("strength_map")
        drawn = max(drawn, len(strength_seeds))
    refit = {"command": "python -m training.motion_refit " + " ".join(sys.argv[1:]), "cases": drawn,
             "seeds": [lo, lo + drawn - 1], "fitted": fitted,
             "phantom_shapes": None if shape is None else [list(s) for s in shape]}
    if strength is not None:
        refit["strength_map"] = strength
    previous = cfg.training.get("refit")
    if previous:  # an earlier refit of the other part stays on record
        refit["previous"] = previous
    pipeline.config = ModelConfig.from_dict({**cfg.to_dict(), "motion": motion,
                                             "training": {**cfg.training, "refit": refit}})
    if pipeline.population.grid_shape != population_shape:
        raise InputError(f"the population grid {pipeline.population.grid_shape} is not the requested {population_shape}")
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
