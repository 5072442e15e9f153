"""``modiff evaluate`` end to end: check every input, evaluate every case, write the report atomically.

:func:`prepare` validates everything a user can get wrong (methods, data spec, frame count,
steps, output folder, model and data kind) *before* any work, raising
:class:`~MoDiffLib.errors.InputError` / :class:`~MoDiffLib.errors.OutputError` (one line, exit 2 on
the command line). :func:`execute` then evaluates each case (:func:`.case.evaluate_case`),
aggregates (:mod:`.report`) and writes the output folder through
:func:`MoDiffLib.atomic.atomic_dir`, so a crash or a cancel leaves nothing half-written.

Data: ``phantom:KIND:N`` evaluates N phantoms of the held-out **test** split
(``PHANTOM_SEEDS["test"]``; ``phantom:KIND:N:val`` the validation split; the training split is
refused). Other specs (``acdc:PATH``, ``dirlab:PATH``, folders, a 4D file) score every frame of a
case at its own cycle phase (:mod:`.phases`): with more frames than the model makes, the model's
cycle is generated at its frames (``frames``, or the model's maximum) and resampled in time to the
true phases; nothing is subsampled. ACDC is read as whole cycles from ED (its ED and ES labels
kept where they are), every patient found unless ``split`` names one.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from ..errors import InputError
from .baselines import MEAN_MOTION_CASES, MeanMotion
from .case import evaluate_case
from .methods import METHOD_INFO, METHODS, parse_methods
from .perceptual import perceptual_status
from .report import REPORT_FORMAT_VERSION, aggregate, aggregate_reference, write_report

#: Frames per phantom case when none are asked for (capped by the model's maximum).
DEFAULT_FRAMES = 10

DEFINITIONS = {
    "psnr_db": "PSNR over the whole volume on intensities normalised to [-1, 1] over the model's window (data range 2)",
    "psnr_input_db": "PSNR of the unclipped input units (HU for CT) with the window width as data range",
    "ssim": "SSIM-3D (scikit-image, 7-voxel uniform window) on the normalised intensities",
    "nmse": "||prediction - truth||^2 / ||truth||^2 on the normalised intensities",
    "tce": "temporal-consistency error: mean |frame-to-frame change of prediction - of truth| (normalised units)",
    "landmark_error_mm": "distance between the true landmark position in frame t and the frame-0 landmark carried "
                         "by the motion estimated on the cine (MoDiffLib.motion demons); methods that make motion "
                         "fields (motion models, mean motion) are scored through their own fields instead",
    "landmark_energy_score_mm": "energy score of the landmarks over a motion model's K samples, mean_k |X_k - y| - "
                                "1/(2K^2) sum_kl |X_k - X_l| (mm; a proper score of the sample distribution, so "
                                "sampling is not penalised by construction); equal to landmark_error_mm for a "
                                "method that gives one motion",
    "lung_volume_error_ml": "mean |lung volume - true| over frames; a cine's lung volume is the frame-0 lung label "
                            "integrated with the Jacobian determinant of the motion estimated on the cine, the true "
                            "one is counted on the true labels",
    "lung_volume_error_pct": "lung_volume_error_ml as a percentage of the true frame-0 lung volume (the lung-volume "
                             "curve error)",
    "diaphragm_error_mm": "mean |diaphragm S position - true| over frames: the lung's lower boundary in the dome "
                          "columns (a cine: frame-0 boundary points carried by its estimated motion; truth: labels)",
    "diaphragm_excursion_error_mm": "|peak-to-peak diaphragm travel - true| (the motion strength of a lung cine)",
    "lung_volume_threshold_error_ml": "as lung_volume_error_ml with lung = below -400 HU inside the body (no registration)",
    "diaphragm_threshold_error_mm": "as diaphragm_error_mm from the -400 HU lung mask",
    "lv_volume_error_ml": "mean |LV cavity volume - true| over frames; a cine's LV volume is the frame-0 LV label "
                          "integrated with the Jacobian determinant of its estimated motion",
    "lv_volume_error_pct": "lv_volume_error_ml as a percentage of the true EDV (frame-0 LV volume): the LV volume "
                           "curve error (issue 14 bar: <= 5 %)",
    "dice_<group>": "propagated labels: the TRUE frame-0 labels carried into every frame by the method's fields "
                    "(its own, or those estimated on its cine; MoDiffLib.motion.transfer.carry_labels, linear) and "
                    "compared with that frame's true labels by Dice, mean over the scored frames; groups: lung = "
                    "the lungs with vessels and nodules together, nodules = each nodule on its own (the worst "
                    "nodule's mean), lv_blood = the LV blood pool, myocardium = the LV myocardium; "
                    "reference.true_motion shows what the voxelisation of the labels leaves, about a ceiling (issue 14 bar: "
                    ">= 0.9 in every frame); NaN / null where the case has no labels",
    "dice_<group>_min": "the worst scored frame's Dice of the group (nodules: of any nodule)",
    "label_dice": "per method and case: each structure's mean Dice, the frames it was taken over and the seconds "
                  "the carry and the Dice took",
    "registration_floor": "the true cine scored like a method: the bias of measuring motion metrics through "
                          "estimated motion (a perfect cine scores this, not zero)",
    "ef_error_pct": "|EF - true EF| in percentage points, both signed: EF = 100 (V_ED - V_ES) / V_ED with ED = frame 0 "
                    "and ES = the frame of the TRUE LV curve's smallest volume after frame 0 (a method is read at "
                    "the true ES phase); a dilating cine has a negative EF and so a larger error than a static one",
    "ef_error_field_pct": "|EF - EF of the TRUE motion measured the same way| (% points): the true motion fields "
                          "integrated over the frame-0 LV label like a method's (reference.true_motion); the phantom "
                          "labels quantise the base descent across thick slices, so even the true motion misses the "
                          "label EF by ef_error_pct of reference.true_motion; this error leaves that floor out",
    "true_motion": "the TRUE motion fields scored like a field method (the floor of field-based volume metrics)",
    "edv_ml": "a cine's LV cavity volume at ED (frame 0): the frame-0 LV label volume (truth: the same)",
    "esv_ml": "a cine's LV cavity volume at the TRUE ES frame (frame-0 label integrated with the Jacobian "
              "determinant of its estimated motion); truth.esv_ml is the true one",
    "ef_pct": "a cine's signed ejection fraction 100 (edv_ml - esv_ml) / edv_ml in %, negative for dilation; "
              "truth.ef_pct is the true one (NaN / null where the case has no LV labels)",
    "physiology_flags": "per method and case, the non-physiological motion found (empty when none): "
                        "lv_no_contraction: the LV volume does not fall from ED to the true ES (V_ES >= V_ED, so a "
                        "static cine is flagged); diaphragm_up_on_inhale: at the true peak-inhale frame (largest true "
                        "lung volume) the carried diaphragm lies more than 1 mm above frame 0's; "
                        "lung_volume_down_on_inhale: the lung volume there is below frame 0's (lung checks only where "
                        "the truth inhales; labels curves, else the -400 HU ones); intensity_drift (whole-cycle cines "
                        "only): mean |last frame - frame 0| of the normalised intensities is above 0.01 and more than "
                        "3x the truth's. truth.physiology_flags: the curve checks applied to the truth itself",
    "physiology_flagged_cases": "per method: the number of cases with at least one physiology flag "
                                "(physiology_flags in the aggregate: cases per flag)",
    "key_frame": "privileged methods' second input: the frame of largest true mean displacement from frame 0 "
                 "(largest mean intensity change where no true motion is known)",
    "scored_frames": "frames 1..N-1; privileged methods are not scored on the true frames they were given "
                     "(given_frames: the key frame; modiff-partial: the frames at 30 % and 60 % of the cycle)",
    "given_frames": "per privileged MoDiff method and case: the true frames passed to modiff generate --known",
    "frames_compared": "per case, every true frame scored (its index, the source frame it came from and its cycle "
                       "phase from frame 0); info.cycle says whether they span the whole cycle or a part of it",
    "time": "per model method and case: the frames the model generated (phases j/M) and whether its cine was "
            "resampled in time to the true phases (motion interpolated linearly between the generated phases "
            "around each true phase, periodically, frame 0 warped by it)",
    "*_common": "the same metric for every method on frames 1..N-1 without the key frame (one frame set for all)",
    "pose": "settings.pose: every case's content moved rigidly in the scanner (shift RAS mm; rotation about the "
            "grid's k axis through the field-of-view centre), the field of view cropped along i and j and the grid "
            "re-spaced, with all ground truth carried exactly (MoDiffLib.datasets.pose); the scanner-coordinate "
            "mean motion stays where it was in the scanner",
    "aggregation": "per case: mean over scored frames; per method: mean and std (ddof 0) over cases",
}


@dataclass
class EvaluationPlan:
    """Everything :func:`execute` needs, checked by :func:`prepare`."""

    spec: str
    dataset: Any
    pipeline: Any
    methods: list[str]
    frames: int | None
    steps: int | None
    seed: int
    device: str
    transfer: str
    out: Path
    overwrite: bool
    phantom: bool
    kind: str | None
    phantom_grid: tuple[int, int, int] | None
    mean_motion_cases: int
    registration: Any
    motion_metrics: bool
    paper_pipeline: Any = None
    samples: int | None = None
    pose: Any = None
    residual: bool | None = None
    split: str | None = None


def parse_triple(text: str | None, what: str) -> tuple[int, ...] | None:
    """``"a,b,c"`` as three non-negative integers (None stays None)."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise InputError(f"{what} must be three comma-separated integers, got {text!r}") from None
    if len(values) != 3 or min(values) < 0:
        raise InputError(f"{what} must be three comma-separated non-negative integers, got {text!r}")
    return values


def _phantom_parts(spec: str) -> list[str] | None:
    parts = [p.strip() for p in str(spec).strip().split(":")]
    return parts if parts and parts[0].lower() == "phantom" else None


def prepare(
    data: str,
    model: str | None = None,
    methods: str | list[str] | None = None,
    frames: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    transfer: str | None = None,
    out: str | Path = "evaluation",
    overwrite: bool = False,
    device: str = "auto",
    phantom_grid: tuple[int, int, int] | str | None = None,
    mean_motion_cases: int = MEAN_MOTION_CASES,
    registration_iterations: tuple[int, ...] | str | None = None,
    motion_metrics: bool = True,
    pipeline=None,
    paper_model: str | None = None,
    samples: int | None = None,
    pose: str | None = None,
    residual: bool | None = None,
    split: str | None = None,
) -> EvaluationPlan:
    """Check every argument and open the data and the model(s); nothing is computed yet.

    ``pipeline`` may be given instead of ``model`` (an already loaded pipeline). ``paper_model``
    names the paper's (latent) variant for the ``modiff-paper`` methods (default: the first
    registered latent model of the data's kind; those methods are skipped if there is none).
    ``samples``: K of a motion model's point estimate (default: the model's). ``pose``: a
    :class:`~MoDiffLib.datasets.pose.PoseChange` spec applied to every case (shift, rotate, crop,
    re-space; e.g. ``shift=0,0,20;rotate=15``). ``residual``: a motion model's learned residual on
    or off for the ``modiff`` methods (None: the model's default). ``split``: the ACDC patients
    (``train``, ``test``, ``testing`` or ``all``, the default). ``frames``: phantoms: the frames per
    case; other data: the frames per cycle the model generates (default: the true frames where the
    model can make them, else its maximum), every true frame being scored.
    """
    from ..atomic import check_output_path
    from ..datasets import open_dataset
    from ..motion import RegistrationSettings
    from ..phantom import MAX_PHANTOM_FRAMES

    from ..datasets.pose import PoseChange

    pose_change = None if pose is None else PoseChange.parse(pose)
    selected = parse_methods(methods) if not isinstance(methods, (list, tuple)) else parse_methods(",".join(methods))
    out = check_output_path(Path(out), overwrite=overwrite, folder=True)
    if isinstance(phantom_grid, str):
        phantom_grid = parse_triple(phantom_grid, "--phantom-grid")
    if isinstance(registration_iterations, str):
        registration_iterations = parse_triple(registration_iterations, "--registration-iterations")
    registration = None
    if registration_iterations is not None:
        registration = RegistrationSettings(iterations=tuple(int(v) for v in registration_iterations))
    if int(mean_motion_cases) < 1:
        raise InputError(f"--mean-motion-cases must be at least 1, got {mean_motion_cases}")
    if frames is not None and int(frames) < 2:
        raise InputError(f"--frames must be at least 2 (frame 0 is the input), got {frames}")
    uses_model = any(METHOD_INFO[m].uses_model for m in selected)

    parts = _phantom_parts(data)
    phantom = parts is not None
    kind = None
    if phantom:
        if len(parts) == 4 and parts[3].lower() == "train":
            raise InputError(f"{data!r} names training phantoms; evaluate on held-out ones "
                             f"(phantom:{parts[1]}:{parts[2]} uses the test split, :val the validation split)")
        kind = parts[1].lower() if len(parts) > 1 else None
        if split is not None:
            raise InputError("--split applies to ACDC data only; name a phantom split in the spec (phantom:KIND:N:val)")
    elif phantom_grid is not None:
        raise InputError("--phantom-grid applies to phantom data only (phantom:KIND:N)")

    data_kind = kind if kind in ("lung", "cardiac") else None
    dataset = None
    if not phantom:
        # opened before the model: a user's case may say its kind (sidecar, LV labels, ACDC), which picks the model
        dataset = _open_real_data(data, split)
        if data_kind is None and len(dataset):
            first = dataset[0].meta.get("kind")
            data_kind = first if first in ("lung", "cardiac") else None
    if pipeline is None:
        from ..pipelines import load_pipeline

        pipeline = load_pipeline(model, kind=data_kind)
    config = pipeline.config
    if samples is not None and (isinstance(samples, bool) or not 1 <= int(samples) <= 32):
        raise InputError(f"--samples must be between 1 and 32, got {samples}")
    paper_pipeline = None
    if any(m.startswith("modiff-paper") for m in selected):
        paper_pipeline = _paper_pipeline(paper_model, data_kind or config.kind)
    from ..pipeline import TRANSFERS, default_transfer

    transfer = transfer or default_transfer(config)
    if transfer not in TRANSFERS:
        raise InputError(f"--transfer must be one of {', '.join(TRANSFERS)}, got {transfer!r}")
    if steps is not None and not 1 <= int(steps) <= config.diffusion.num_train_timesteps:
        raise InputError(f"--steps must be between 1 and {config.diffusion.num_train_timesteps}, got {steps}")

    if phantom:
        limit = min(MAX_PHANTOM_FRAMES, config.max_frames) if uses_model else MAX_PHANTOM_FRAMES
        n = int(frames) if frames is not None else min(DEFAULT_FRAMES, limit)
        if not 2 <= n <= limit:
            why = f"model '{config.name}' makes at most {config.max_frames}" if uses_model and limit == config.max_frames \
                else f"a phantom has at most {MAX_PHANTOM_FRAMES}"
            raise InputError(f"--frames {n} is out of range: use 2..{limit} ({why} frames)")
        options: dict[str, Any] = {"num_frames": n, "shape_ijk": phantom_grid}
        if len(parts) == 3:
            options["split"] = "test"
        dataset = open_dataset(data, **options)
        if dataset.kind != config.kind:
            raise InputError(f"model '{config.name}' is a {config.kind} model but {data!r} holds {dataset.kind} phantoms")
        kind = dataset.kind
    else:
        if data_kind is not None and data_kind != config.kind and uses_model:
            raise InputError(f"model '{config.name}' is a {config.kind} model but {data!r} holds {data_kind} data "
                             "(its sidecar kind, LV labels or source say so); name a matching --model")
        n = None if frames is None else int(frames)
        if uses_model and n is not None and n > config.max_frames:
            raise InputError(f"--frames {n} is out of range: model '{config.name}' makes at most {config.max_frames} frames")
    if len(dataset) == 0:
        raise InputError(f"data set {data!r} has no cases to evaluate")
    return EvaluationPlan(str(data), dataset, pipeline, selected, n, None if steps is None else int(steps), int(seed),
                          str(device), transfer, out, bool(overwrite), phantom, kind, phantom_grid, int(mean_motion_cases),
                          registration, bool(motion_metrics), paper_pipeline, None if samples is None else int(samples),
                          pose_change, None if residual is None else bool(residual), split)


def _open_real_data(data: str, split: str | None):
    """A non-phantom data set as evaluated: ACDC as whole cycles from ED with every patient unless ``split``."""
    from ..datasets import open_dataset
    from ..datasets.spec import loader_of

    loader = loader_of(data)
    if split is not None and loader != "acdc":
        raise InputError(f"--split applies to ACDC data only (acdc:PATH), not to {data!r}")
    options = {"frames": "cycle", "split": split or "all"} if loader == "acdc" else {}
    return open_dataset(data, **options)


def _paper_pipeline(name: str | None, kind: str):
    """The paper's (latent-family) variant: ``name``, or the first registered latent model of ``kind``."""
    from ..pipelines import load_pipeline
    from ..registry import list_models

    if name is None:
        names = [e.name for e in list_models() if e.kind == kind and e.family == "latent"]
        if not names:
            return None
        name = names[0]
    pipe = load_pipeline(name, kind=kind)
    if pipe.config.family != "latent":
        raise InputError(f"--paper-model {name!r} is a {pipe.config.family} model; the paper's variant is a latent model")
    return pipe


def _model_block(pipeline, provenance: dict | None, steps: int | None) -> dict[str, Any]:
    config = pipeline.config
    return {
        "name": config.name,
        "version": config.version,
        "kind": config.kind,
        "modality": config.modality,
        "family": config.family,
        "source": pipeline.source,
        "max_frames": config.max_frames,
        "steps": steps or config.sampling_steps,
        "amplitude_condition": None if config.amplitude is None else dataclasses.asdict(config.amplitude),
        "intensity": dataclasses.asdict(config.intensity),
        "grid": dataclasses.asdict(config.grid),
        "training": config.training,
        "parameters": pipeline.parameter_counts(),
        "provenance": provenance,
    }


def execute(plan: EvaluationPlan, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate every case of the plan, write the output folder and return the report."""
    from ..atomic import atomic_dir
    from ..datasets.pose import change_pose
    from ..motion import RegistrationSettings

    say = log or (lambda s: None)
    started = time.perf_counter()
    dataset = plan.dataset
    total = len(dataset)
    say(f"evaluating {', '.join(plan.methods)} on {total} case(s) of {plan.spec} "
        f"with model {plan.pipeline.config.name} {plan.pipeline.config.version}")
    mean_motion = None
    if plan.phantom and any(m.startswith("mean-motion") for m in plan.methods):
        mean_motion = MeanMotion.from_training_phantoms(
            plan.kind, plan.frames, plan.phantom_grid, dataset.start_phase, plan.mean_motion_cases, log=say)
    cases: list[dict[str, Any]] = []
    first = None
    for i in range(total):
        case = dataset[i]
        if plan.pose is not None:
            case = change_pose(case, plan.pose)
        say(f"case {i + 1}/{total}: {case.case_id} ({case.num_frames} frames)")
        result = evaluate_case(plan.pipeline, case, plan.methods, steps=plan.steps, seed=plan.seed, device=plan.device,
                               transfer=plan.transfer, mean_motion=mean_motion, mean_motion_cases=plan.mean_motion_cases,
                               registration=plan.registration, motion_metrics=plan.motion_metrics,
                               log=lambda s: say("  " + s), return_cines=(i == 0),
                               paper_pipeline=plan.paper_pipeline, samples=plan.samples, residual=plan.residual,
                               model_frames=None if plan.phantom else plan.frames)
        result.pop("mean_motion", None)
        if i == 0:
            first = result
            cases.append({k: v for k, v in result.items() if not k.startswith("_")})
        else:
            cases.append(result)
    kind = cases[0]["info"]["kind"]
    provenance = next((c["methods"][m]["provenance"] for c in cases for m in ("modiff", "modiff+amplitude")
                       if c["methods"].get(m, {}).get("provenance")), None)
    frames = sorted({c["info"]["frames"] for c in cases})
    report: dict[str, Any] = {
        "format": "modiff-evaluation",
        "format_version": REPORT_FORMAT_VERSION,
        "data": plan.spec,
        "data_info": {
            "kind": kind,
            "cases": len(cases),
            "case_ids": [c["case_id"] for c in cases],
            "split": cases[0]["info"].get("split") or plan.split,
            "frames": frames[0] if len(frames) == 1 else frames,
            "grid": cases[0]["info"]["grid"],
            "frames_compared": {c["case_id"]: c["info"]["frames_compared"] for c in cases},
            "cycle": {c["case_id"]: c["info"]["cycle"] for c in cases},
            "skipped_files": [{"path": p, "reason": r} for p, r in getattr(dataset, "skipped", [])],
        },
        "model": _model_block(plan.pipeline, provenance, plan.steps),
        "paper_model": None if plan.paper_pipeline is None else _model_block(plan.paper_pipeline, None, plan.steps),
        "settings": {
            "methods": plan.methods,
            "frames": frames[0] if len(frames) == 1 else frames,
            "steps": plan.steps or plan.pipeline.config.sampling_steps,
            "seed": plan.seed,
            "device": plan.device,
            "transfer": plan.transfer,
            "motion_metrics": plan.motion_metrics,
            "registration": dataclasses.asdict(plan.registration or RegistrationSettings()),
            "mean_motion_cases": plan.mean_motion_cases,
            "phantom_grid_ijk": None if plan.phantom_grid is None else list(plan.phantom_grid),
            "samples": plan.samples,
            "paper_model": None if plan.paper_pipeline is None else plan.paper_pipeline.config.name,
            "pose": None if plan.pose is None else plan.pose.describe(),
            "residual": plan.residual,
            "model_frames": None if plan.phantom else plan.frames,
        },
        "methods": aggregate(cases, plan.methods, kind),
        "reference": aggregate_reference(cases, kind),
        "unavailable": perceptual_status(),
        "definitions": DEFINITIONS,
        "mean_motion": None if mean_motion is None else mean_motion.describe(),
        "cases": cases,
    }
    report["seconds"] = round(time.perf_counter() - started, 2)
    with atomic_dir(plan.out, overwrite=plan.overwrite) as tmp:
        written = write_report(report, tmp, first)
    say(f"wrote {plan.out}/: {', '.join(written)} ({report['seconds']:.1f} s)")
    return report


def run_evaluation(data: str, model: str | None = None, log: Callable[[str], None] | None = None,
                   **options) -> dict[str, Any]:
    """:func:`prepare` then :func:`execute` (the options are those of :func:`prepare`)."""
    return execute(prepare(data, model, **options), log)


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


__all__ = ["DEFAULT_FRAMES", "EvaluationPlan", "METHODS", "execute", "prepare", "run_evaluation"]
