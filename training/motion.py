"""Train a MoDiff motion model: ``python -m training.motion --kind lung --out runs/lung-motion``.

The ``motion`` family (:mod:`MoDiffLib.models.motion_tddm`) learns from phantoms drawn on the fly
from the training seed range, with their exact ground-truth motion as supervision:

1. **Samples.** Frame 0 of each training phantom and its true displacement at ``num_phases`` cycle
   phases (:func:`MoDiffLib.phantom.samples.motion_sample`, no cine rendered), resampled onto the
   anatomy grid of that frame 0 (:mod:`MoDiffLib.motion.anatomy`), plus the prompt and, for lung,
   the true breathing trace. Work is spread over ``--workers`` processes.
2. **Population motion.** The least-squares line in the strength per voxel and phase
   (:class:`~MoDiffLib.motion.population.PopulationMotion`; through the origin for breathing).
3. **Residual basis.** Principal components of ``u - population`` over the first cases.
4. **Diffusion.** The residual of every case is projected onto the basis once, so a training step
   costs a temporal network pass, not a 3D one: AdamW, linear warm-up, cosine decay, EMA,
   gradient clipping; random frame counts 2..F; strength and trace dropped at random
   (classifier-free). ``--max-minutes`` / ``--steps`` bound the run.
5. **Validation** on held-out validation seeds at 10 frames: field RMSE (mm, inside the anatomy
   mask) of the population motion and of the model, unconditioned, with the true strength and
   (lung) with the true trace; written to ``validation.json`` and the log.

Outputs in OUT: ``model/`` (release checkpoint, ``modiff generate --model OUT/model``),
``log.csv`` and ``validation.json``. Exit status 2 with ``motion: error: ...`` for bad input.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from MoDiffLib.atomic import atomic_file, check_output_path
from MoDiffLib.datasets.phantom import PHANTOM_SEEDS
from MoDiffLib.errors import InputError, MoDiffError
from MoDiffLib.models.config import AmplitudeConfig, DiffusionConfig, GridConfig, IntensityConfig, ModelConfig
from MoDiffLib.models.diffusion import NoiseSchedule
from MoDiffLib.models.motion_tddm import MotionBasis, motion_loss
from MoDiffLib.motion.anatomy import anatomy_box, resample_nearest_border
from MoDiffLib.motion.population import PopulationMotion, frame_phases, interpolate_phases
from MoDiffLib.motion.typicality import Typicality
from MoDiffLib.motion_pipeline import MotionPipeline, build_motion_network, motion_prompt
from MoDiffLib.pipeline import resolve_device
from MoDiffLib.phantom.samples import motion_sample

#: Per kind: anatomy grid, phantom grid the samples are drawn at, strength, intensity recipe.
KIND_DEFAULTS = {
    "lung": dict(modality="CT", grid=(16, 20, 24), nominal_spacing=(12.0, 10.0, 16.0), phantom_shape=(48, 48, 24),
                 amplitude=AmplitudeConfig(name="diaphragm_si_mm", unit="mm", min=5.0, max=35.0, population_mean=20.0),
                 intensity=IntensityConfig(method="window", window=(-1000.0, 600.0), unit="HU"), through_origin=True),
    "cardiac": dict(modality="MR", grid=(16, 32, 32), nominal_spacing=(6.6, 6.6, 8.0), phantom_shape=(48, 48, 16),
                    amplitude=AmplitudeConfig(name="ejection_fraction_pct", unit="%", min=20.0, max=70.0,
                                              population_mean=45.0),
                    intensity=IntensityConfig(method="percentile", window=None, percentiles=(0.5, 99.5), unit="a.u."),
                    through_origin=False),
}


def motion_config(kind: str, max_frames: int, num_phases: int, components: int, width: int, depth: int,
                  steps: int) -> ModelConfig:
    d = KIND_DEFAULTS[kind]
    return ModelConfig(
        name=f"modiff-{kind}-motion", version="0.2.0", kind=kind, modality=d["modality"],
        grid=GridConfig(shape_kji=d["grid"], spacing_ijk_mm=d["nominal_spacing"]), intensity=d["intensity"],
        max_frames=max_frames, amplitude=d["amplitude"], family="motion",
        tddm={"num_components": components, "width": width, "depth": depth, "emb_channels": 128},
        diffusion=DiffusionConfig(prediction_type="sample"), sampling_steps=steps,
        motion={"num_phases": num_phases, "population_through_origin": d["through_origin"], "prompt_antialias": True},
    )


@dataclass
class Sample:
    """One training case on its anatomy grid."""

    prompt: np.ndarray        # (2, k, j, i) float16
    fields: np.ndarray        # (P, 3, k, j, i) float16, RAS mm
    mask: np.ndarray          # (k, j, i) bool, the anatomy mask on the grid (for validation)
    amplitude: float
    descent: np.ndarray | None  # (P,) mm
    box_mm: tuple[float, float, float]  # anatomy box size along the grid axes (i, j, k)


def make_sample(args: tuple) -> Sample:
    config, seed, phantom_shape = args
    phases = np.arange(config.motion["num_phases"]) / float(config.motion["num_phases"])
    s = motion_sample(config.kind, int(seed), phases, phantom_shape)
    box = anatomy_box(s.frame0, config.modality)
    grid = box.grid(config.grid.shape_kji)
    prompt = motion_prompt(config, s.frame0, grid)
    fields = np.stack([resample_nearest_border(m, s.frame0.geometry, grid) for m in s.motion])  # (P,k,j,i,3)
    return Sample(prompt.astype(np.float16), np.ascontiguousarray(fields.transpose(0, 4, 1, 2, 3)).astype(np.float16),
                  prompt[1] > 0, s.amplitude, None if s.descent_mm is None else s.descent_mm.astype(np.float32),
                  box.size_mm)


def shape_of(seed: int, shapes: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The phantom grid of one training seed: one of ``shapes``, drawn from the seed (reproducible)."""
    return shapes[0] if len(shapes) == 1 else shapes[int(np.random.default_rng([seed, 7]).integers(len(shapes)))]


def draw_samples(config: ModelConfig, seeds: list[int], workers: int, log,
                 shape: tuple[int, int, int] | list[tuple[int, int, int]] | None = None) -> list[Sample]:
    """Training samples of ``seeds``; ``shape`` one phantom grid or several (each seed draws one: the
    model then sees frame 0 at several resolutions, as users' scans come)."""
    shapes = [KIND_DEFAULTS[config.kind]["phantom_shape"]] if shape is None else (
        list(shape) if isinstance(shape, list) else [shape])
    jobs = [(config, s, shape_of(s, shapes)) for s in seeds]
    out: list[Sample] = []
    t0 = time.perf_counter()
    if workers > 1:
        with mp.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for i, sample in enumerate(pool.imap(make_sample, jobs, chunksize=4)):
                out.append(sample)
                if (i + 1) % 100 == 0:
                    log(f"samples {i + 1}/{len(jobs)} ({time.perf_counter() - t0:.0f} s)")
    else:
        for i, job in enumerate(jobs):
            out.append(make_sample(job))
            if (i + 1) % 100 == 0:
                log(f"samples {i + 1}/{len(jobs)} ({time.perf_counter() - t0:.0f} s)")
    return out


def fit_population(samples: list[Sample], through_origin: bool) -> PopulationMotion:
    """The population line in the strength and, where the samples carry a breathing trace, the trace regression."""
    acc = PopulationMotion.Accumulator(through_origin=through_origin)
    for s in samples:
        acc.add(s.fields.astype(np.float32), s.amplitude)
    population = acc.result()
    population.trace_basis = fit_trace_basis(samples)
    return population


def population_sample(args: tuple) -> tuple[np.ndarray, float, np.ndarray | None]:
    """One training case's motion at the stored phases on the anatomy grid of ``population_shape``
    (P, 3, k, j, i), its strength and its breathing trace (the streaming population fit's unit)."""
    config, seed, phantom_shape, shape_kji = args
    phases = np.arange(config.motion["num_phases"]) / float(config.motion["num_phases"])
    s = motion_sample(config.kind, int(seed), phases, phantom_shape)
    grid = anatomy_box(s.frame0, config.modality).grid(shape_kji)
    fields = np.stack([resample_nearest_border(m, s.frame0.geometry, grid) for m in s.motion])  # (P,k,j,i,3)
    return (np.ascontiguousarray(fields.transpose(0, 4, 1, 2, 3)).astype(np.float32), float(s.amplitude),
            None if s.descent_mm is None else s.descent_mm.astype(np.float32))


def fit_population_streamed(config: ModelConfig, seeds: list[int], shape_kji: tuple[int, int, int], workers: int,
                            log, phantom_shape: list[tuple[int, int, int]] | None = None) -> PopulationMotion:
    """The population line (and trace regression, where the kind has a trace) on the anatomy grid of
    ``shape_kji``, fitted case by case: at a fine grid the fields of thousands of cases do not fit in
    memory, their sums do."""
    shapes = [KIND_DEFAULTS[config.kind]["phantom_shape"]] if phantom_shape is None else list(phantom_shape)
    jobs = [(config, s, shape_of(s, shapes), tuple(shape_kji)) for s in seeds]
    acc = PopulationMotion.Accumulator(through_origin=config.motion["population_through_origin"])
    trace = PopulationMotion.TraceAccumulator()
    t0 = time.perf_counter()
    pool = mp.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) if workers > 1 else None
    try:
        results = pool.imap(population_sample, jobs, chunksize=2) if pool else map(population_sample, jobs)
        for i, (fields, amplitude, descent) in enumerate(results):
            acc.add(fields, amplitude)
            if descent is not None:
                trace.add(fields, descent)
            if (i + 1) % 100 == 0:
                log(f"population cases {i + 1}/{len(jobs)} ({time.perf_counter() - t0:.0f} s)")
    finally:
        if pool:
            pool.terminate()
    population = acc.result()
    if trace.n:
        population.trace_basis = trace.result((3,) + tuple(shape_kji))
    return population


def fit_trace_basis(samples: list[Sample]) -> np.ndarray | None:
    """(2, 3, k, j, i) trace regression of the samples' motion on their breathing trace (None without traces)."""
    if not samples or samples[0].descent is None:
        return None
    acc = PopulationMotion.TraceAccumulator()
    for s in samples:
        acc.add(s.fields.astype(np.float32), s.descent)
    return acc.result(samples[0].fields.shape[1:])


def fit_typicality(samples: list[Sample]) -> Typicality:
    """Summary of the training prompts and anatomy boxes (the model's out-of-distribution check);
    the samples' prompts must be anti-aliased (:func:`MoDiffLib.motion_pipeline.typicality_prompt`)."""
    return Typicality.fit(np.stack([s.prompt.astype(np.float32) for s in samples]), np.array([s.box_mm for s in samples]))


def fit_basis(samples: list[Sample], population: PopulationMotion, components: int, phases_per_case: int,
              rng: np.random.Generator) -> MotionBasis:
    rows = []
    p = population.num_phases
    for s in samples:
        for j in rng.choice(np.arange(1, p), size=min(phases_per_case, p - 1), replace=False):
            base = population.b0[j] + np.float32(s.amplitude) * population.b1[j]
            rows.append(s.fields[j].astype(np.float32) - base)
    return MotionBasis.fit(np.stack(rows), components)


def project(samples: list[Sample], population: PopulationMotion, basis: MotionBasis) -> np.ndarray:
    """(S, P, K) unit-scaled residual coefficients of every sample at every stored phase."""
    out = []
    with torch.no_grad():
        for s in samples:
            base = population.b0 + np.float32(s.amplitude) * population.b1
            out.append(basis.encode(torch.from_numpy(s.fields.astype(np.float32) - base)).numpy())
    return np.stack(out).astype(np.float32)


class Batches:
    """Random training batches: frame count N, phases i/N, coefficient differences, conditions."""

    def __init__(self, coeffs: np.ndarray, samples: list[Sample], config: ModelConfig, field_scale: float,
                 rng: np.random.Generator) -> None:
        self.coeffs, self.config, self.rng, self.field_scale = coeffs, config, rng, field_scale
        self.prompts = torch.from_numpy(np.stack([s.prompt for s in samples]).astype(np.float32))
        self.amplitudes = np.array([s.amplitude for s in samples], dtype=np.float32)
        self.descent = None if samples[0].descent is None else np.stack([s.descent for s in samples])
        a = config.amplitude
        self.amp_norm = (self.amplitudes - a.min) / (a.max - a.min)

    def frame_count(self) -> int:
        f = self.config.max_frames
        # half the batches at the frame counts users ask for most (cines of 10-20 frames)
        common = [n for n in (10, 12, 15, 20) if n <= f]
        if common and self.rng.random() < 0.5:
            return int(self.rng.choice(common))
        return int(self.rng.integers(2, f + 1))

    def __call__(self, batch: int):
        f = self.config.max_frames
        idx = self.rng.integers(0, len(self.coeffs), size=batch)
        counts = np.array([self.frame_count() for _ in range(batch)])
        x0 = np.zeros((batch, self.coeffs.shape[2], f), dtype=np.float32)
        trace = None if self.descent is None else np.zeros((batch, f), dtype=np.float32)
        for b, (i, n) in enumerate(zip(idx, counts)):
            c = interpolate_phases(self.coeffs[i], frame_phases(n))  # (n, K)
            x0[b, :, 1:n] = np.diff(c, axis=0).T * self.field_scale
            if trace is not None:
                trace[b, :n] = interpolate_phases(self.descent[i], frame_phases(n))
        return (torch.from_numpy(x0)[..., None, None, None], self.prompts[idx], torch.from_numpy(counts),
                torch.from_numpy(self.amp_norm[idx]), None if trace is None else torch.from_numpy(trace))


def difference_scale(coeffs: np.ndarray, num_frames: int = 10) -> float:
    """1 / std of the coefficient differences at ``num_frames`` frames (what the diffusion sees)."""
    c = interpolate_phases(np.moveaxis(coeffs, 1, 0), frame_phases(num_frames))  # (N, S, K)
    return float(1.0 / max(np.diff(c, axis=0).std(), 1e-6))


def validate(pipeline: MotionPipeline, samples: list[Sample], steps: int, samples_k: int = 4) -> dict:
    """Field RMSE (mm, inside the anatomy mask, frames 1..9 of 10) per setting, mean over cases."""
    n = 10
    phases = frame_phases(n)
    scores: dict[str, list[float]] = {}
    for case, s in enumerate(samples):
        truth = interpolate_phases(s.fields.astype(np.float32), phases)[1:]
        prompt = s.prompt.astype(np.float32)
        trace = None if s.descent is None else interpolate_phases(s.descent, phases)
        settings = {"population": dict(residual=False), "population+amplitude": dict(residual=False, amplitude=s.amplitude),
                    "modiff": {}, "modiff+amplitude": dict(amplitude=s.amplitude)}
        if trace is not None:
            if pipeline.population.has_trace:
                settings["population+trace"] = dict(residual=False, trace_mm=trace)
            settings["modiff+trace"] = dict(trace_mm=trace)
            settings["modiff+amplitude+trace"] = dict(trace_mm=trace, amplitude=s.amplitude)
        for name, kw in settings.items():
            drawn = pipeline.fields_on_grid(prompt, n, samples=samples_k, steps=steps, seed=case, **kw)
            err = np.sqrt(np.sum((drawn.mean(axis=0)[1:] - truth) ** 2, axis=1))  # (N-1, k, j, i)
            scores.setdefault(name, []).append(float(np.sqrt(np.mean(err[:, s.mask] ** 2))))
    return {k: round(float(np.mean(v)), 4) for k, v in scores.items()}


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``I,J,K[;I,J,K...]``: one or more phantom grids."""
    shapes = []
    for part in str(text).split(";"):
        try:
            shape = tuple(int(v) for v in part.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 8:
            raise InputError(f"--phantom-shape must be I,J,K triples of integers of at least 8 separated by ';', "
                             f"got {text!r}")
        shapes.append(shape)
    return shapes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.motion", description=__doc__.split("\n")[0])
    p.add_argument("--kind", required=True, choices=sorted(KIND_DEFAULTS))
    p.add_argument("--out", required=True, help="run folder (created)")
    p.add_argument("--cases", type=int, default=1500, help="training phantoms (train seeds 0..cases-1)")
    p.add_argument("--basis-cases", type=int, default=400, help="cases whose residuals give the basis")
    p.add_argument("--components", type=int, default=48, help="residual basis size K")
    p.add_argument("--phases", type=int, default=40, help="stored cycle phases P (multiples of 10 are exact at 10 frames)")
    p.add_argument("--max-frames", type=int, default=30)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=6000, help="optimiser steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this long")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--sampling-steps", type=int, default=10, help="default DDIM steps of the model")
    p.add_argument("--val-cases", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="processes drawing phantoms")
    p.add_argument("--phantom-shape", default=None, metavar="I,J,K[;I,J,K...]",
                   help="grid(s) the phantoms are drawn at, several separated by ';' (each seed draws one) "
                        "(default: lung 48,48,24; cardiac 48,48,16)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto: where the network trains (phantoms are "
                                                     "always drawn on the CPU; default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except MoDiffError as e:
        print(f"motion: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    for name in ("cases", "basis_cases", "components", "phases", "steps", "batch", "val_cases", "workers", "threads"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    train_lo = PHANTOM_SEEDS["train"].start
    if args.cases > len(PHANTOM_SEEDS["train"]):
        raise InputError(f"--cases {args.cases} exceeds the training seed range")
    shape = None if args.phantom_shape is None else parse_shapes(args.phantom_shape)
    device = resolve_device(args.device)  # a missing GPU fails before any phantom is drawn
    out = check_output_path(args.out, overwrite=args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    config = motion_config(args.kind, args.max_frames, args.phases, args.components, args.width, args.depth,
                           args.sampling_steps)
    log(f"drawing {args.cases} training phantoms ({args.kind}, {args.phases} phases, grid {config.grid.shape_kji})")
    samples = draw_samples(config, list(range(train_lo, train_lo + args.cases)), args.workers, log, shape)
    val_lo = PHANTOM_SEEDS["val"].start
    val = draw_samples(config, list(range(val_lo, val_lo + args.val_cases)), 1, log, shape)
    population = fit_population(samples, config.motion["population_through_origin"])
    log(f"population motion fitted on {population.cases} cases (mean strength {population.amplitude_mean:.2f})")
    basis = fit_basis(samples[: args.basis_cases], population, args.components, 8, rng)
    coeffs = project(samples, population, basis)
    field_scale = difference_scale(coeffs)
    config = ModelConfig.from_dict({**config.to_dict(), "field_scale": field_scale})
    log(f"residual basis K={basis.num_components}, difference scale {field_scale:.3f}")

    model = build_motion_network(config)
    model.basis.load_state_dict(basis.state_dict())
    model.to(device)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW([p for n, p in model.named_parameters()], lr=args.lr, weight_decay=1e-4)
    warmup = min(200, args.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / args.steps, 1.0))))
    schedule = NoiseSchedule.from_config(config.diffusion)
    batches = Batches(coeffs, samples, config, field_scale, rng)
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    t_train = time.perf_counter()
    step = 0
    for step in range(1, args.steps + 1):
        x0, prompt, counts, amps, trace = (None if x is None else x.to(device, non_blocking=True)
                                           for x in batches(args.batch))
        loss = motion_loss(model, x0, prompt, counts, amps, trace, generator=generator, schedule=schedule)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        if step % 100 == 0 or step == 1:
            rows.append({"step": step, "loss": round(loss.item(), 6), "lr": sched.get_last_lr()[0],
                         "seconds": round(time.perf_counter() - t_train, 1)})
            log(f"step {step} loss {loss.item():.5f}")
        if args.max_minutes is not None and time.perf_counter() - t_train > 60 * args.max_minutes:
            log(f"stopping at step {step}: --max-minutes {args.max_minutes} reached")
            break
    train_s = time.perf_counter() - t_train
    training = {"command": "python -m training.motion " + " ".join(sys.argv[1:]), "cases": args.cases,
                "seeds": [train_lo, train_lo + args.cases - 1], "steps": step, "batch": args.batch,
                "train_seconds": round(train_s, 1), "threads": args.threads, "device": str(device),
                "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "population_cases": population.cases, "basis_components": basis.num_components}
    config = ModelConfig.from_dict({**config.to_dict(), "training": training})
    ema.cpu()  # validated and saved on the CPU, as the model is used
    pipeline = MotionPipeline(config, ema, population, source=str(out / "model"), typicality=fit_typicality(samples))
    scores = validate(pipeline, val, args.sampling_steps)
    log(f"validation field RMSE (mm): {scores}")
    pipeline.save_pretrained(out / "model", overwrite=args.overwrite)
    with atomic_file(out / "validation.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps({"field_rmse_mm": scores, "val_seeds": [val_lo, val_lo + args.val_cases - 1],
                                   "frames": 10, "training": training}, indent=2) + "\n", encoding="utf-8")
    with atomic_file(out / "log.csv", overwrite=True) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", "seconds"])
            w.writeheader()
            w.writerows(rows)
    log(f"model written to {out / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
