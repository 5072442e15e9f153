"""``modiff generate``: one 3D volume -> an N-frame 4D cine (.seq.nrrd or 4D NIfTI)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

NAME = "generate"
HELP = "synthesise a 4D cine of breathing or heart motion from one 3D volume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="3D volume: .nrrd, .nii(.gz), .mha or a DICOM series folder")
    parser.add_argument("--frames", type=int, default=10, metavar="N", help="number of frames incl. the input (default: 10)")
    parser.add_argument("--out", required=True, metavar="OUT", help="output cine: .seq.nrrd (Slicer) or .nii/.nii.gz (4D)")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="registered model name or checkpoint folder (default: the first registered model of "
                             "--kind, or of the input's modality guessed from the file)")
    parser.add_argument("--kind", default=None, choices=["ct", "mr", "lung", "cardiac"],
                        help="without --model: the default model of this modality (ct: lung, mr: cardiac) or kind; "
                             "default: guessed from the input (DICOM Modality tag, else air below -500 HU means CT) "
                             "and printed")
    parser.add_argument("--series-uid", default=None, metavar="UID",
                        help="for a DICOM folder holding several series: the Series Instance UID to read")
    parser.add_argument("--steps", type=int, default=None, metavar="K", help="sampling steps per stage (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--amplitude", type=float, default=None, metavar="X",
                        help="motion strength: diaphragm SI excursion in mm (lung) or EF in %% (cardiac); default: unconditioned")
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim", help="sampler (default: ddim)")
    parser.add_argument("--transfer", choices=["warp", "difference"], default=None,
                        help="onto the input grid: warp the input by the generated motion or add the generated "
                             "intensity differences (default: the model's; warp for lung, difference for cardiac)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device (default: auto)")
    parser.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                        help="progress display: a bar on stderr, JSON lines on stdout, or none (default: bar)")
    parser.add_argument("--samples", type=int, default=None, metavar="K",
                        help="motion models: motion samples averaged into the cine (default: the model's, 4)")
    parser.add_argument("--trace", default=None, metavar="CSV",
                        help="motion models (lung): breathing trace, the diaphragm S position (mm) per frame, one "
                             "value a line or time_s,value lines resampled over one cycle (see README)")
    parser.add_argument("--residual", choices=["auto", "on", "off"], default="auto",
                        help="motion models: add the learned residual to the population motion (auto: the model's "
                             "measured default; off with --trace follows the trace by the population's trace "
                             "regression, on by the network's trace condition)")
    parser.add_argument("--motion-out", default=None, metavar="PATH",
                        help="motion models: also write the displacement fields (RAS mm, frame 0 -> t) as a vector "
                             "sequence (.seq.nrrd), the layout of a phantom's motion.seq.nrrd")
    parser.add_argument("--spread-out", default=None, metavar="PATH",
                        help="motion models with K > 1 samples: also write the per-voxel motion spread (mm) as a "
                             "sequence (.seq.nrrd)")
    parser.add_argument("--labels", default=None, metavar="FILE",
                        help="motion models: a label map of the input (.nrrd, a one-layer .seg.nrrd, .nii.gz) carried "
                             "through every frame by the generated motion, written to --labels-out")
    parser.add_argument("--labels-out", default=None, metavar="PATH",
                        help="where --labels writes the labels of every frame (.seq.nrrd; default: labels.seq.nrrd "
                             "beside OUT)")
    parser.add_argument("--end", default=None, metavar="FILE",
                        help="two-frame mode (motion models): the cine's last frame, on the input's grid (e.g. "
                             "end-inhale for an end-exhale input); the frames between follow the model's time course")
    parser.add_argument("--known", default=None, metavar="i:FILE,...",
                        help="partial mode (motion models): frames of the same cycle you have, by 0-based index "
                             "(1..N-1), e.g. 3:f3.nrrd,6:f6.nrrd; they are kept exactly and the rest filled in")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def cancel_on_sigterm() -> threading.Event:
    """The process's cancel state, set by SIGTERM (the Slicer module's Cancel) or Ctrl-C once
    :func:`MoDiffLib.cli.main` installed its handlers: the pipeline polls it and stops within one
    step, and the output writers refuse to publish once it is set."""
    from ..atomic import cooperative_cancel

    return cooperative_cancel()


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, outputs that cannot be written (see
    :func:`MoDiffLib.atomic.check_output_path`) and one path given for two outputs."""
    import os

    from ..atomic import check_output_path
    from ..errors import OutputError

    seen: dict[str, Path] = {}
    for path in paths:
        check_output_path(path, overwrite=overwrite, folder=False)
        key = os.path.abspath(path)
        if key in seen:
            raise OutputError(f"output '{path}' is given for two outputs; give each its own path")
        seen[key] = path


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_outputs
    from ..errors import InputError, OutputError
    from ..io import read_volume, write_sequence
    from ..io.sequence_io import SEQUENCE_WRITE_SUFFIXES

    out = Path(args.out)
    if not any(out.name.lower().endswith(s) for s in SEQUENCE_WRITE_SUFFIXES):
        raise OutputError(f"output '{out}' must end with one of {', '.join(SEQUENCE_WRITE_SUFFIXES)}")
    if args.labels_out is not None and args.labels is None:
        raise InputError("--labels-out needs a label map to carry (--labels FILE)")
    labels_out = None if args.labels is None else Path(args.labels_out or out.parent / "labels.seq.nrrd")
    outputs = [out] + [Path(p) for p in (args.motion_out, args.spread_out, labels_out) if p is not None]
    for extra in outputs[1:]:
        if not extra.name.lower().endswith(".seq.nrrd"):
            raise OutputError(f"output '{extra}' must end with .seq.nrrd")
    check_outputs(outputs, args.overwrite)  # fail before the work, not after
    if args.end is not None and args.known is not None:
        raise InputError("give either --end (two-frame mode) or --known (partial mode), not both")
    known_paths = None if args.known is None else parse_known(args.known, args.frames)
    if args.end is not None and not Path(args.end).exists():
        raise InputError(f"--end: file '{args.end}' does not exist")
    from ..model_choice import check_spatial_axes, choose_kind, describe_choice
    from ..pipelines import load_pipeline  # torch: after the checks that need none
    from ..progress import ProgressPrinter, StageReporter, then_write

    cancel = cancel_on_sigterm()
    printer = ProgressPrinter(args.progress)
    check_spatial_axes(args.input)
    volume = read_volume(args.input, series_uid=args.series_uid)
    if args.model is None:
        choice = choose_kind(volume, args.kind, args.input)
        pipeline = load_pipeline(None, kind=choice.kind)
        if choice.guessed:
            print(f"modiff: {describe_choice(choice, pipeline.config.name)}", file=sys.stderr)
    else:
        if args.kind is not None:
            raise InputError("--kind chooses the default model; give either --kind or --model, not both")
        pipeline = load_pipeline(args.model)
    options = {}
    motion_only = {"--samples": args.samples, "--trace": args.trace, "--motion-out": args.motion_out,
                   "--spread-out": args.spread_out, "--residual": None if args.residual == "auto" else args.residual,
                   "--labels": args.labels, "--end": args.end, "--known": args.known}
    if args.spread_out is not None and args.samples == 1:
        raise InputError("--spread-out needs more than one motion sample (--samples K > 1)")
    if pipeline.config.family != "motion":
        given = [k for k, v in motion_only.items() if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} a motion model; "
                             f"'{pipeline.config.name}' is the paper's "
                             "latent variant")
    else:
        if args.samples is not None:
            options["samples"] = args.samples
        if args.residual != "auto":
            options["residual"] = args.residual == "on"
        if args.trace is not None:
            from ..trace import read_trace

            options["trace_mm"] = read_trace(args.trace, args.frames, cyclic=True).descent_mm()
        if args.labels is not None:
            from ..labelmap import check_label_map, read_label_map

            # checked against the input now: a label map of another grid fails before the work
            options["labels"] = check_label_map(read_label_map(args.labels), volume.geometry, f"input '{args.input}'")
        if args.end is not None:
            options["end"] = read_volume(args.end)
        if args.known is not None:
            options["known"] = {t: read_volume(path) for t, path in known_paths.items()}
        if args.spread_out is not None and ("end" in options or "known" in options):
            raise InputError("--spread-out is not made in the two-frame or partial mode (the given frames fix the "
                             "motion); leave it out")
        if args.spread_out is not None and not pipeline.uses_residual(options.get("residual"), "trace_mm" in options):
            raise InputError("--spread-out needs motion samples, and this model's default is the population motion "
                             "alone (one field, no spread); add --residual on")
    # The pipeline's stages, then the writing: one fraction over the whole command.
    stages = pipeline.generation_stages("labels" in options, "end" in options or "known" in options) \
        if pipeline.config.family == "motion" else pipeline.stages
    report = StageReporter(printer, then_write(stages), "generation")
    try:
        result = pipeline.generate(volume, args.frames, steps=args.steps, seed=args.seed, amplitude=args.amplitude,
                                   device=args.device, sampler=args.sampler, progress=report.relay, cancel=cancel,
                                   transfer=args.transfer, **options)
        for warning in result.provenance.get("warnings", []):
            printer.close()  # the bar's line ends before a warning line
            print(f"modiff: warning: {warning}", file=sys.stderr)
        result.sequence.name = Path(args.input).name
        writes = [(result.sequence, out)]
        if args.motion_out is not None:
            writes.append((result.motion.to_sequence(f"{Path(args.input).name} motion"), Path(args.motion_out)))
        if args.spread_out is not None:
            writes.append((result.spread, Path(args.spread_out)))
        if labels_out is not None:
            result.labels.name = f"{Path(args.input).name} labels"
            writes.append((result.labels, labels_out))
        # One unit: the cine and its fields are published together or not at all (a cancel while the
        # fields are written must not leave the cine in place).
        with atomic_outputs(args.overwrite) as unit:
            for i, (sequence, path) in enumerate(writes):
                report("write", i, len(writes), path.name)
                write_sequence(sequence, unit.file(path))
        report("write", len(writes), len(writes))  # published
    finally:
        printer.close()
    volumes = None if result.labels is None else label_volume_summary(result)
    if args.progress == "json":
        printer.event({"event": "done", "output": str(out), "outputs": [str(p) for p in outputs],
                       "provenance": result.provenance, **({} if volumes is None else {"label_volumes_ml": volumes})})
    else:
        print(f"wrote {args.frames}-frame cine to {out} in {result.provenance['elapsed_seconds']:.1f} s "
              f"(model {result.provenance['model']}, {result.provenance['device']})", file=sys.stderr)
        if volumes is not None:
            print(f"wrote the labels of every frame to {labels_out}; volume (mL) frame 0 -> smallest / largest:",
                  file=sys.stderr)
            for name, values in volumes.items():
                print(f"  {name}: {values[0]:.1f} -> {min(values):.1f} / {max(values):.1f}", file=sys.stderr)
    return 0


def parse_known(text: str, num_frames: int) -> dict[int, str]:
    """``--known i:FILE,...`` as frame index -> path (indices 1..N-1, each once; files must exist).

    Raises:
        InputError: naming the item that is malformed, repeated, out of range or missing.
    """
    from ..errors import InputError

    out: dict[int, str] = {}
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        index, sep, path = item.partition(":")
        if not sep or not path or not index.strip().isdigit():
            raise InputError(f"--known item '{item}' is not INDEX:FILE (e.g. 3:frame3.nrrd)")
        t = int(index)
        if not 1 <= t < num_frames:
            raise InputError(f"--known frame {t} is outside frames 1 to {num_frames - 1} (--frames {num_frames}; "
                             "frame 0 is the input)")
        if t in out:
            raise InputError(f"--known gives frame {t} twice")
        if not Path(path).exists():
            raise InputError(f"--known frame {t}: file '{path}' does not exist")
        out[t] = path
    if not out:
        raise InputError("--known names no frame; give INDEX:FILE items separated by commas")
    return out


def label_volume_summary(result) -> dict[str, list[float]]:
    """Structure name -> its volume (mL) in every frame of a result's carried labels."""
    from ..labelmap import label_volumes_ml

    names = result.label_map.named()
    out: dict[str, list[float]] = {}
    for value, volumes in label_volumes_ml(result.labels, names).items():
        name = names[value] if names[value] not in out else f"{names[value]} ({value})"
        out[name] = [round(x, 3) for x in volumes]
    return out
