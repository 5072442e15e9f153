"""``modiff bench``: wall time and peak memory per pipeline stage, as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "bench"
HELP = "measure speed and peak memory of generation per stage (JSON output)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="model to measure (default: the first registered); 'untrained:lung' or "
                             "'untrained:cardiac' measures the default architecture with fresh weights")
    parser.add_argument("--frames", default="6,10,16", metavar="LIST", help="frame counts to run (default: 6,10,16)")
    parser.add_argument("--steps", type=int, default=None, metavar="K", help="sampling steps (default: the model's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device (default: auto)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--skip-motion", action="store_true",
                        help="do not measure motion estimation (10 frames of the 128x128x64 lung phantom)")


def run(args: argparse.Namespace) -> int:
    from ..benchmark import bench_generation, machine_description
    from ..errors import InputError
    from ..models.config import default_config
    from ..phantom import make_phantom
    from ..pipeline import MoDiffPipeline
    from ..pipelines import load_pipeline

    if args.json:
        from ..atomic import check_output_path

        check_output_path(args.json, overwrite=True, folder=False)  # before the measuring, not after
    try:
        counts = [int(x) for x in args.frames.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--frames must be a comma-separated list of integers, got '{args.frames}'") from None
    if args.model and args.model.startswith("untrained:"):
        config = default_config(args.model.split(":", 1)[1])
        make = lambda: MoDiffPipeline.from_config(config)  # noqa: E731
    else:
        make = lambda: load_pipeline(args.model)  # noqa: E731
        config = make().config
    if max(counts) > config.max_frames or min(counts) < 2:
        raise InputError(f"--frames must lie in 2..{config.max_frames} for model '{config.name}', got {counts}")
    # A held-out phantom of the model's kind is the benchmark input (seed from the test split).
    volume = make_phantom(config.kind, num_frames=2, seed=200000).frames.frame(0)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results = {
        "benchmark": "generation",
        "model": args.model or config.name,
        "grid_kji": list(config.grid.shape_kji),
        "machine": machine_description(),
        **bench_generation(make, volume, counts, args.steps, args.device, log),
    }
    if not args.skip_motion:
        from ..motion import benchmark_motion

        log("motion estimation: 10 frames, 128x128x64 lung phantom ...")
        results["motion"] = benchmark_motion(num_frames=10, seed=0)
        log(f"motion estimation: {results['motion']['seconds']:.1f} s")
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        from ..atomic import atomic_file

        with atomic_file(Path(args.json), overwrite=True) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    return 0
