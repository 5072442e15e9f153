"""Fine-tune a motion model's population motion on the user's own 4D cines.

``python -m training.motion_finetune --model modiff-cardiac-motion --data folder:my_cines --out runs/my-model``

Real cines have no true motion fields, so each case's motion is *estimated* by the demons
registration the evaluation uses (:func:`MoDiffLib.motion.registration.estimate_motion`, frame 0
-> every frame), resampled onto the model's anatomy grid spanning that case's frame 0 (as
:mod:`training.motion` does with a phantom's true fields) and, from the case's frame phases, onto the
model's stored cycle phases (periodic linear interpolation). From these:

* **Line** ``u = B0 + a B1`` (where cases have a strength: the EF of their LV labels or sidecar,
  or a lung case's given strength): the least-squares line over the user cases *and* the prior, the
  prior entering through its own sufficient statistics (its line, strength mean and spread) as
  ``--prior-cases`` cases. So a few user cases move the line a little and many move it far.
* **Typical motion** (the motion without a strength): ``(1 - w) * prior + w * median`` where
  ``median`` is the geometric median of the user cases' motion (:mod:`training.typical_motion`)
  and ``w = n / (n + prior_cases)`` for ``n`` user cases (``--weight`` sets ``w`` directly).

Both trust a case only inside its anatomy (lungs for CT, the foreground for MR; the share of cases
covering a grid voxel scales their weight there): across the sliding chest wall the demons smear
the lungs' motion into ribs and body wall. On 6 held-out deep-breathing lung phantoms this kept the
whole-box field error at 2.09 mm (bundled 2.22) where the unmasked fit raised it to 2.63.

The strength map, trace regression, typicality summary and network are kept: a strength still
means what it meant (the map was measured on the prior line, which the user cases shift but do not
rescale), and a learned residual, if the model uses one, is added to the refitted line. Cases with
LV labels also get the EF their estimated motion gives the LV (``registered_ef_pct``): where the
registration misses the contraction (the demons do on short-axis cardiac phantoms: an EF of
4-18 % where the labels give 27-31 %) the command warns, since the refitted motion would then contract less.
``--holdout K`` leaves the last K cases (in the data set's order) out of the fit; their ids are
recorded beside the training cases in ``config.json`` (``training.finetune``) with the command and
its time (``modiff evaluate --data`` on a folder of those cases measures the effect). Exit status 2 with
``motion_finetune: error: ...`` for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from MoDiffLib.atomic import check_output_path
from MoDiffLib.datasets import open_dataset
from MoDiffLib.datasets.base import Case4D
from MoDiffLib.errors import InputError, MoDiffError
from MoDiffLib.evaluation import physiology as phys
from MoDiffLib.model_choice import guess_modality
from MoDiffLib.models.config import ModelConfig
from MoDiffLib.motion.anatomy import anatomy_box, foreground_mask, lung_mask, resample_nearest_border
from MoDiffLib.motion.population import PopulationMotion
from MoDiffLib.motion.registration import RegistrationSettings, estimate_motion
from MoDiffLib.motion_pipeline import MotionPipeline
from MoDiffLib.pipelines import load_pipeline

from .typical_motion import geometric_median

#: Fewest frames a case needs: fewer cannot sample a cycle's shape at the model's phases.
MIN_FRAMES = 4
#: Below this share of the labels' EF, the estimated motion is reported as too weak to learn from.
WEAK_REGISTRATION = 0.5
#: Default weight of the prior, in user cases.
PRIOR_CASES = 4.0


@dataclass
class CaseMotion:
    """One user case's estimated motion at the model's stored phases on its anatomy grid."""

    case_id: str
    fields: np.ndarray        # (P, 3, K, J, I) float32, RAS mm
    amplitude: float | None   # the case's motion strength where known (EF %, diaphragm mm)
    frames: int
    seconds: float
    registered_ef: float | None = None  # EF the estimated motion gives the LV label of frame 0 (cardiac)
    trust: np.ndarray | None = None  # (K, J, I) in [0, 1]: the share of each grid voxel inside the anatomy


def cycle_weights(frame_phases: np.ndarray, stored: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``stored`` evenly spaced cycle phases, the bracketing frames (lower, upper) among frames at
    ``frame_phases`` (increasing, in [0, 1), one whole cycle) and the upper weight, periodically."""
    p = np.asarray(frame_phases, dtype=float)
    if p.ndim != 1 or p.size < 2 or np.any(np.diff(p) <= 0) or p[0] < 0 or p[-1] >= 1:
        raise InputError(f"frame phases must increase within [0, 1), got {p.tolist()}")
    x = np.arange(stored) / float(stored)
    ext = np.concatenate([p, [p[0] + 1.0]])
    x = np.where(x < p[0], x + 1.0, x)
    upper = np.clip(np.searchsorted(ext, x, side="right"), 1, p.size)
    lower = upper - 1
    w = (x - ext[lower]) / (ext[upper] - ext[lower])
    return lower, upper % p.size, w.astype(np.float32)


def check_case(case: Case4D, config: ModelConfig) -> np.ndarray:
    """The frame phases of a case the model can be fitted on; clear errors for one it cannot."""
    if case.frames.frames.ndim != 4:
        raise InputError(f"{case.case_id}: holds vector frames; fine-tuning needs scalar images")
    if case.num_frames < MIN_FRAMES:
        raise InputError(f"{case.case_id}: {case.num_frames} frame(s); fine-tuning needs at least {MIN_FRAMES} "
                         "frames of one cycle")
    kind = case.meta.get("kind")
    if kind is not None and kind != config.kind:
        raise InputError(f"{case.case_id} is a {kind} case; the model '{config.name}' is {config.kind}")
    modality = case.meta.get("modality") or guess_modality(case.frames.frame(0))[0]
    if modality != config.modality:
        raise InputError(f"{case.case_id} looks like {modality}; the model '{config.name}' is for {config.modality} "
                         "(give a sidecar 'modality' if the guess is wrong)")
    if not case.meta.get("whole_cycle", True):
        raise InputError(f"{case.case_id} holds part of a cycle; fine-tuning needs whole cycles (the model's "
                         "motion spans one)")
    phases = case.meta.get("frame_phases")
    return np.arange(case.num_frames) / case.num_frames if phases is None else np.asarray(phases, dtype=float)


def case_motion(pipeline: MotionPipeline, case: Case4D, settings: RegistrationSettings) -> CaseMotion:
    """Estimate a case's motion and put it on the model's anatomy grid at its stored phases."""
    started = time.perf_counter()
    phases = check_case(case, pipeline.config)
    motion = estimate_motion(case.frames, settings)
    frame0 = case.frames.frame(0)
    grid = pipeline.motion_grid(anatomy_box(frame0, pipeline.config.modality))
    on_grid = np.stack([resample_nearest_border(d, case.frames.geometry, grid) for d in motion.displacements])
    on_grid = on_grid.transpose(0, 4, 1, 2, 3)  # (T, 3, K, J, I)
    lower, upper, w = cycle_weights(phases, pipeline.population.num_phases)
    w = w.reshape(-1, 1, 1, 1, 1)
    fields = ((1.0 - w) * on_grid[lower] + w * on_grid[upper]).astype(np.float32)
    amplitude = None if case.amplitude is None or not np.isfinite(case.amplitude) else float(case.amplitude)
    # the registration is trusted inside the anatomy only: across the sliding chest wall the demons
    # smooth the lungs' motion into ribs and body wall, which stay still
    mask = lung_mask(frame0) if pipeline.config.modality == "CT" else foreground_mask(frame0)
    trust = np.clip(resample_nearest_border(mask.astype(np.float32), case.frames.geometry, grid), 0.0, 1.0)
    return CaseMotion(case.case_id, fields, amplitude, case.num_frames, time.perf_counter() - started,
                      registered_ef(case, motion), trust)


def registered_ef(case: Case4D, motion) -> float | None:
    """The EF (%) the estimated motion gives the LV label of frame 0 (its Jacobian over the label), or
    None without LV labels: the check that the registration saw the contraction the labels show."""
    values = phys.lv_label_values({int(k): v for k, v in (case.meta.get("label_names") or {}).items()})
    mask0 = phys.label_masks(case.labels, values, case.num_frames)[0] if values and case.labels is not None else None
    if mask0 is None or not mask0.any():
        return None
    ef = phys.ejection_fraction(phys.jacobian_volumes_ml(motion, mask0, range(case.num_frames)))
    return round(ef, 2) if np.isfinite(ef) else None


def combined_line(prior: PopulationMotion, cases: list[CaseMotion], prior_cases: float,
                  through_origin: bool) -> PopulationMotion:
    """The least-squares line over the user cases with a strength and the prior counted as
    ``prior_cases`` cases of its own strength mean and spread (its sufficient statistics)."""
    n0, m0, s0 = float(prior_cases), prior.amplitude_mean, prior.amplitude_std
    b0, b1 = prior.b0.astype(np.float64), prior.b1.astype(np.float64)
    # sums of a, a^2, u, a u over cases that lie on the prior line with its strength moments
    n, sa, saa = n0, n0 * m0, n0 * (s0 * s0 + m0 * m0)
    su = n0 * (b0 + m0 * b1)
    sau = n0 * (m0 * b0 + (s0 * s0 + m0 * m0) * b1)
    used = [c for c in cases if c.amplitude is not None]
    for c in used:  # a case counts at each voxel by its trust there (sums per voxel)
        m = 1.0 if c.trust is None else c.trust.astype(np.float64)
        n, sa, saa = n + m, sa + m * c.amplitude, saa + m * c.amplitude ** 2
        su = su + m * c.fields
        sau = sau + m * c.amplitude * c.fields
    mean_a = sa / n
    var_a = np.maximum(saa / n - mean_a * mean_a, 0.0)
    if through_origin:
        new_b1, new_b0 = sau / np.maximum(saa, 1e-12), np.zeros_like(b0)
    else:
        flat = var_a < 1e-9  # one strength only: no slope can be fitted there
        new_b1 = np.where(flat, 0.0, (sau / n - mean_a * su / n) / np.where(flat, 1.0, var_a))
        new_b0 = su / n - mean_a * new_b1
    # the strength statistics of all cases, whatever their trust (they describe the cohort)
    total = n0 + len(used)
    a_mean = (n0 * m0 + sum(c.amplitude for c in used)) / total
    a_var = max((n0 * (s0 * s0 + m0 * m0) + sum(c.amplitude ** 2 for c in used)) / total - a_mean ** 2, 0.0)
    return PopulationMotion(new_b0, new_b1, float(a_mean), float(np.sqrt(a_var)), prior.cases + len(used),
                            trace_basis=prior.trace_basis, strength_map=prior.strength_map, typical=prior.typical)


def finetune_population(prior: PopulationMotion, cases: list[CaseMotion], prior_cases: float,
                        weight: float | None, through_origin: bool) -> tuple[PopulationMotion, dict]:
    """The prior population refitted with the user cases (line and typical motion); what was done."""
    if not cases:
        raise InputError("no cases to fine-tune on")
    n = len(cases)
    w = n / (n + prior_cases) if weight is None else float(weight)
    with_strength = [c for c in cases if c.amplitude is not None]
    population = combined_line(prior, cases, prior_cases, through_origin) if with_strength else PopulationMotion(
        prior.b0, prior.b1, prior.amplitude_mean, prior.amplitude_std, prior.cases, prior.trace_basis,
        prior.strength_map, prior.typical)
    prior_typical = prior.fields(np.arange(prior.num_phases) / prior.num_phases)  # typical, else line at the mean
    median = geometric_median(np.stack([c.fields for c in cases]))
    trust = np.mean([np.ones(prior.grid_shape) if c.trust is None else c.trust for c in cases], axis=0)
    w_map = (w * trust)[None, None].astype(np.float32)  # the user's share where their anatomy is
    population.typical = ((1.0 - w_map) * prior_typical + w_map * median).astype(np.float32)
    done = {"typical_weight": round(w, 4), "trusted_share": round(float(trust.mean()), 4),
            "line_cases": len(with_strength),
            "fitted": ["typical_motion"] + (["population_line"] if with_strength else [])}
    return population, done


def select_cases(dataset, holdout: int) -> tuple[list[int], list[int]]:
    """Indices of the training and held-out cases (the last ``holdout`` in the data set's order)."""
    count = len(dataset)
    if count == 0:
        raise InputError("the data set holds no cases")
    if holdout < 0 or holdout >= count:
        raise InputError(f"--holdout must be from 0 to {count - 1} (the data set holds {count} case(s)), got {holdout}")
    return list(range(count - holdout)), list(range(count - holdout, count))


def parse_iterations(text: str | None) -> RegistrationSettings:
    """``A,B,C`` demons iterations per pyramid level (None: the defaults)."""
    if text is None:
        return RegistrationSettings()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != len(RegistrationSettings().iterations) or min(values, default=-1) < 0:
        raise InputError(f"--registration-iterations must be {len(RegistrationSettings().iterations)} whole numbers "
                         f">= 0, got {text!r}")
    return RegistrationSettings(iterations=values)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.motion_finetune", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="motion model folder or registered name (the prior)")
    p.add_argument("--data", required=True, metavar="SPEC", help="the cines (folder:PATH, a 4D file, ...)")
    p.add_argument("--out", required=True, help="folder for the fine-tuned model (created)")
    p.add_argument("--holdout", type=int, default=0, metavar="K", help="leave the last K cases out (default 0)")
    p.add_argument("--prior-cases", type=float, default=PRIOR_CASES, metavar="N",
                   help=f"how many user cases the prior counts as (default {PRIOR_CASES:g})")
    p.add_argument("--weight", type=float, default=None, metavar="W",
                   help="share of the user cases in the typical motion, 0..1 (default: n / (n + prior cases))")
    p.add_argument("--registration-iterations", default=None, metavar="A,B,C",
                   help="demons iterations per pyramid level (default: the evaluation's 40,30,5)")
    p.add_argument("--name", default=None,
                   help="name of the fine-tuned model (default: the prior's with -finetuned, so reports tell them "
                        "apart)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the provenance
    return args


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    if not args.prior_cases > 0:
        raise InputError(f"--prior-cases must be positive, got {args.prior_cases}")
    if args.weight is not None and not 0.0 <= args.weight <= 1.0:
        raise InputError(f"--weight must be from 0 to 1, got {args.weight}")
    settings = parse_iterations(args.registration_iterations)
    pipeline = load_pipeline(args.model)
    if not isinstance(pipeline, MotionPipeline):
        raise InputError(f"'{args.model}' is not a motion model (fine-tuning refits a motion model's population)")
    out = check_output_path(args.out, overwrite=args.overwrite, folder=True)
    dataset = open_dataset(args.data)
    train, held = select_cases(dataset, args.holdout)
    ids = dataset.case_ids
    cfg = pipeline.config
    cases = []
    for i in train:
        c = case_motion(pipeline, dataset[i], settings)
        cases.append(c)
        strength = "none" if c.amplitude is None else f"{c.amplitude:.1f}"
        log(f"{c.case_id}: {c.frames} frames, strength {strength}, motion estimated in {c.seconds:.1f} s"
            + ("" if c.registered_ef is None else f", EF of the estimated motion {c.registered_ef:.1f} %"))
        if c.registered_ef is not None and c.amplitude and c.registered_ef < WEAK_REGISTRATION * c.amplitude:
            log(f"warning: {c.case_id}: the registration recovers an EF of {c.registered_ef:.1f} % where the labels "
                f"give {c.amplitude:.1f} %; the refitted motion will contract less than these hearts do")
    population, done = finetune_population(pipeline.population, cases, args.prior_cases, args.weight,
                                           bool(cfg.motion.get("population_through_origin", False)))
    pipeline.population = population
    seconds = time.perf_counter() - started
    finetune = {"command": "python -m training.motion_finetune " + " ".join(args.argv),
                "prior": f"{cfg.name} {cfg.version}", "data": str(args.data),
                "cases": [ids[i] for i in train], "holdout": [ids[i] for i in held],
                "strengths": [c.amplitude for c in cases], "frames": [c.frames for c in cases],
                "registered_ef_pct": [c.registered_ef for c in cases],
                "prior_cases": args.prior_cases, **done,
                "registration": {"method": f"demons-{settings.method}", "iterations": list(settings.iterations)},
                "kept": ["strength_map", "trace_regression", "typicality", "network"],
                "seconds": round(seconds, 1)}
    previous = cfg.training.get("finetune")
    if previous:  # an earlier fine-tune stays on record
        finetune["previous"] = previous
    name = args.name or (cfg.name if cfg.name.endswith("-finetuned") else f"{cfg.name}-finetuned")
    pipeline.config = ModelConfig.from_dict({**cfg.to_dict(), "name": name,
                                             "training": {**cfg.training, "finetune": finetune}})
    pipeline.save_pretrained(out, overwrite=args.overwrite)
    log(f"wrote {out}: {json.dumps(done['fitted'])} from {len(cases)} case(s), held out {finetune['holdout']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except MoDiffError as e:
        print(f"motion_finetune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
