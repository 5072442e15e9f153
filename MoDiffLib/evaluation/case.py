"""Evaluate the methods on one 4D case: make each method's cine from frame 0, score it against the truth.

:func:`evaluate_case` is the unit of ``modiff evaluate`` and what ``modiff demo`` can call for its
one case. Scores:

* a method's given frames are not scored: frame 0 for all, for the privileged ones the true frames
  they are given (:func:`~.methods.given_frames`: the key frame, or ``modiff-partial``'s frames);
  so that all methods can also be compared on the same frames, the ``*_common`` metrics score every
  method on frames 1..N-1 without any frame given to a method of the run (when it has privileged ones);
* image metrics per frame (:mod:`MoDiffLib.metrics`): PSNR, SSIM-3D and NMSE on the model's
  normalised intensities ([-1, 1] over the model's intensity window for this input, data range 2),
  and ``psnr_input_db``: PSNR of the unclipped input units (HU for CT) with the window's width as
  data range (clipped to the window it would equal ``psnr_db``, so it adds the error outside the
  window); the temporal-consistency error (TCE) of the whole normalised cine;
* motion metrics (unless ``motion_metrics=False``), from the motion estimated on each cine
  (:mod:`.landmarks`, :mod:`.physiology`): landmark error and the errors of the physiological
  curves (lung volume, diaphragm position and excursion; LV volume and EF). The same scores of
  the *true* cine are reported as ``reference.registration_floor``: what a perfect cine would get;
* CT lung curves from a -400 HU threshold, which involve no registration;
* propagated labels (:class:`_LabelOverlap`, where the case has true labels in frame 0 and later
  frames): the TRUE frame-0 labels carried by the same fields into every frame
  (:func:`~MoDiffLib.motion.transfer.carry_labels`, ``linear``, as ``modiff generate --labels`` does)
  and their Dice against that frame's true labels, per structure group of the issue's bar (lung and
  nodules; LV blood pool and myocardium); the true motion's own fields show what the voxelisation
  of the labels leaves (about a ceiling: a smooth method can score a little above it).

Per case a method's value of a metric is its mean over the scored frames; ``run`` aggregates over
cases.

Time (:mod:`.phases`): every true frame is scored at its own cycle phase. The model methods generate
the cycle at the true frames' phases where they can (a whole cycle of at most the model's maximum
frames) and otherwise at the model's frames, resampled in time to every true phase; the result
states the frames, their phases and how each method's cine met them.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import InputError
from ..metrics import nmse, psnr, ssim3d, temporal_consistency_error
from ..motion.fields import MotionFields
from ..motion.propagate import dice
from ..volume import Volume, VolumeSequence
from . import physiology as phys
from .baselines import (
    MEAN_MOTION_CASES,
    MeanMotion,
    key_frame,
    linear_interp_cine,
    registration_interp_cine,
    static_cine,
)
from .landmarks import (
    landmark_displacement_table,
    landmark_energy_table,
    landmark_error_table,
    mean_over,
    per_frame_mean,
)
from .methods import METHOD_INFO, METHODS, given_frames
from .phases import case_phases, describe_scope, is_even_cycle, phase_table, resample_generated, resample_trace, time_plan

#: Per-case (and aggregated) metric keys, common to every kind, in report order.
IMAGE_KEYS = ("psnr_db", "psnr_input_db", "ssim", "nmse", "tce")
#: ``landmark_energy_score_mm``: the energy score over a sampler's K motion samples (the distance itself
#: for a method that gives one motion).
MOTION_KEYS = ("landmark_error_mm", "landmark_energy_score_mm")
LUNG_KEYS = ("lung_volume_error_ml", "lung_volume_error_pct", "diaphragm_error_mm", "diaphragm_excursion_error_mm",
             "lung_volume_threshold_error_ml", "diaphragm_threshold_error_mm")
#: Cardiac: the LV curve errors, then the method's own ED (frame 0) and ES (the TRUE ES frame) LV volumes
#: and its signed EF (:func:`.physiology.ejection_fraction`).
#: ``ef_error_field_pct`` compares with the EF of the TRUE motion measured the same way (Jacobian of
#: the frame-0 LV label), so a method's field is judged without the label quantisation floor.
#: ``lv_volume_error_pct``: the LV curve error in % of the true EDV (frame 0).
CARDIAC_KEYS = ("lv_volume_error_ml", "lv_volume_error_pct", "ef_error_pct", "ef_error_field_pct", "edv_ml", "esv_ml", "ef_pct")
#: Dice of the frame-0 labels carried by a method's fields against each frame's true labels
#: (:class:`_LabelOverlap`): ``dice_<group>`` the mean over the scored frames (a group of several
#: structures, the nodules: its worst structure's mean), ``dice_<group>_min`` the worst frame.
DICE_GROUPS = {"lung": ("lung", "nodules"), "cardiac": ("lv_blood", "myocardium")}
DICE_KEYS = {kind: tuple(k for g in groups for k in (f"dice_{g}", f"dice_{g}_min"))
             for kind, groups in DICE_GROUPS.items()}
#: Metrics that depend on the motion estimated on a cine (what the registration floor reports).
FLOOR_KEYS = {"lung": MOTION_KEYS + LUNG_KEYS[:4] + DICE_KEYS["lung"],
              "cardiac": MOTION_KEYS + CARDIAC_KEYS + DICE_KEYS["cardiac"]}
#: The same metrics on the frames common to every method when a key frame is given to the privileged
#: ones: frames 1..N-1 without the key frame (NaN where the case has no key frame).
COMMON_KEYS = ("psnr_db_common", "psnr_input_db_common", "ssim_common", "nmse_common", "landmark_error_mm_common")


def metric_keys(kind: str) -> tuple[str, ...]:
    """The metric keys reported for a data kind (``lung`` or ``cardiac``)."""
    kind = "lung" if kind == "lung" else "cardiac"
    return IMAGE_KEYS + MOTION_KEYS + (LUNG_KEYS if kind == "lung" else CARDIAC_KEYS) + DICE_KEYS[kind] + COMMON_KEYS


def _mean(values: Iterable[float]) -> float:
    v = [float(x) for x in values]
    return float(np.mean(v)) if v else math.nan


class _Physiology:
    """The ground-truth curves of one case and how to measure the same curves on any cine."""

    def __init__(self, case, kind: str, modality: str) -> None:
        self.kind = kind
        frames = case.frames
        self.geometry = frames.geometry
        self.num_frames = frames.num_frames
        names = case.meta.get("label_names") or {}
        self.values = phys.lung_label_values(names) if kind == "lung" else phys.lv_label_values(names)
        truth_masks = phys.label_masks(case.labels, self.values, self.num_frames) if self.values else [None] * self.num_frames
        self.label_frames = [t for t, m in enumerate(truth_masks) if m is not None]
        self.mask0 = truth_masks[0]
        # following needs the frame-0 structure and one more labelled frame to compare with
        self.has_labels = self.mask0 is not None and bool(self.mask0.any()) and len(self.label_frames) >= 2
        self.columns = phys.dome_columns(self.mask0, self.geometry) if (self.has_labels and kind == "lung") else None
        self.threshold = kind == "lung" and modality == "CT"
        # the end-of-cycle drift check needs a cine that spans one whole cycle (phantoms do)
        self.whole_cycle = bool(case.meta.get("whole_cycle", True))
        self.truth: dict[str, dict[str, list[float]]] = {}
        #: the LV curve of the true motion measured like a method's (set by :meth:`set_true_motion`)
        self.true_motion_lv: list[float] | None = None
        if self.has_labels:
            self.truth["labels"] = self._curves(truth_masks, self.columns)
        if self.threshold:
            masks = [phys.lung_mask_threshold(f, self.geometry) for f in frames.frames]
            self.columns_threshold = phys.dome_columns(masks[0], self.geometry)
            self.truth["threshold"] = self._curves(masks, self.columns_threshold)

    def set_true_motion(self, fields) -> None:
        """Measure the LV curve of the true motion ``fields`` like a method's (cardiac with labels)."""
        if self.kind == "cardiac" and self.has_labels:
            self.true_motion_lv = phys.jacobian_volumes_ml(fields, self.mask0, self.label_frames)

    def _curves(self, masks, columns) -> dict[str, list[float]]:
        if self.kind == "lung":
            return phys.lung_curves(masks, self.geometry, columns)
        return phys.cardiac_curves(masks, self.geometry)

    def curves(self, cine: VolumeSequence, fields) -> dict[str, dict[str, list[float]]]:
        """Curves of a cine: the frame-0 structure followed through ``fields`` (if given) and the threshold masks."""
        out = {}
        if self.has_labels and fields is not None:
            volumes = phys.jacobian_volumes_ml(fields, self.mask0, self.label_frames)
            if self.kind == "lung":
                out["labels"] = {"lung_volume_ml": volumes, "diaphragm_si_mm": phys.carried_diaphragm_mm(
                    fields, self.mask0, self.columns, self.label_frames)}
            else:
                out["labels"] = {"lv_volume_ml": volumes}
        if self.threshold:
            masks = [phys.lung_mask_threshold(f, self.geometry) for f in cine.frames]
            out["threshold"] = self._curves(masks, self.columns_threshold)
        return out

    def errors(self, curves: dict[str, dict[str, list[float]]], scored: list[int]) -> dict[str, float]:
        """Curve errors over the scored frames; amplitude-type errors (excursion, EF) over all labelled frames."""
        out: dict[str, float] = {}
        keys = LUNG_KEYS if self.kind == "lung" else CARDIAC_KEYS
        for key in keys:
            out[key] = math.nan
        lab, truth = curves.get("labels"), self.truth.get("labels")
        if lab is not None and truth is not None:
            if self.kind == "lung":
                out["lung_volume_error_ml"] = phys.curve_error(lab["lung_volume_ml"], truth["lung_volume_ml"], scored)
                out["lung_volume_error_pct"] = 100.0 * out["lung_volume_error_ml"] / truth["lung_volume_ml"][0]
                out["diaphragm_error_mm"] = phys.curve_error(lab["diaphragm_si_mm"], truth["diaphragm_si_mm"], scored)
                out["diaphragm_excursion_error_mm"] = abs(
                    phys.excursion(lab["diaphragm_si_mm"]) - phys.excursion(truth["diaphragm_si_mm"]))
            else:
                out["lv_volume_error_ml"] = phys.curve_error(lab["lv_volume_ml"], truth["lv_volume_ml"], scored)
                out["lv_volume_error_pct"] = 100.0 * out["lv_volume_error_ml"] / truth["lv_volume_ml"][0]
                es = phys.es_frame(truth["lv_volume_ml"])  # the method is read at the TRUE ES phase
                if es is not None:
                    ef = phys.ejection_fraction(lab["lv_volume_ml"], es)
                    out["ef_error_pct"] = abs(ef - phys.ejection_fraction(truth["lv_volume_ml"], es))
                    if self.true_motion_lv is not None:
                        out["ef_error_field_pct"] = abs(ef - phys.ejection_fraction(self.true_motion_lv, es))
                    out["edv_ml"], out["esv_ml"] = phys.ed_es_volumes(lab["lv_volume_ml"], es)
                    out["ef_pct"] = ef
        thr, truth_thr = curves.get("threshold"), self.truth.get("threshold")
        if thr is not None and truth_thr is not None:
            out["lung_volume_threshold_error_ml"] = phys.curve_error(
                thr["lung_volume_ml"], truth_thr["lung_volume_ml"], scored)
            out["diaphragm_threshold_error_mm"] = phys.curve_error(
                thr["diaphragm_si_mm"], truth_thr["diaphragm_si_mm"], scored)
        return out

    def flags(self, cine_normalised: np.ndarray | None, truth_normalised: np.ndarray | None,
              curves: dict[str, dict[str, list[float]]]) -> list[str]:
        """Non-physiological-motion flags of one cine (:func:`.physiology.physiology_flags`): ``curves`` as
        :meth:`curves` measures them; the drift check only with both normalised cines and a whole cycle."""
        return phys.physiology_flags(self.kind, curves, self.truth, cine_normalised, truth_normalised,
                                     self.whole_cycle)

    def summary_of_truth(self) -> dict[str, Any]:
        """The truth's amplitude-type values: lung excursion, volume change and peak-inhale frame; cardiac ED
        (frame 0) and ES frames, volumes and signed EF; and the curve checks of the truth itself
        (``physiology_flags``: a sanity check of the data, empty for a physiological cine)."""
        out: dict[str, Any] = {}
        lab = self.truth.get("labels")
        if lab is not None and self.kind == "lung":
            out["diaphragm_excursion_mm"] = phys.excursion(lab["diaphragm_si_mm"])
            out["lung_volume_change_ml"] = phys.excursion(lab["lung_volume_ml"])
            out["inhale_frame"] = phys.inhale_frame(lab["lung_volume_ml"])
        if lab is not None and self.kind == "cardiac":
            es = phys.es_frame(lab["lv_volume_ml"])
            out["ed_frame"], out["es_frame"] = 0, es
            out["edv_ml"], out["esv_ml"] = phys.ed_es_volumes(lab["lv_volume_ml"], es)
            out["ef_pct"] = phys.ejection_fraction(lab["lv_volume_ml"], es)
            if self.true_motion_lv is not None:
                out["ef_true_motion_pct"] = phys.ejection_fraction(self.true_motion_lv, es)
        if self.truth:
            out["physiology_flags"] = phys.physiology_flags(self.kind, self.truth, self.truth)
        return out


class _LabelOverlap:
    """Dice of the TRUE frame-0 labels carried by a method's fields against the true labels of each frame.

    The structures (:func:`.physiology.dice_structures`) are carried as disjoint regions, one code per
    distinct set of structures a label value belongs to (lung: the lungs with their vessels as one
    region, each nodule as another), in one :func:`~MoDiffLib.motion.transfer.carry_labels` per method
    (``linear``: the mode ``modiff generate --labels`` uses); a structure is then the union of its
    regions, in the carried map as in the true one. Everything else is background, so no other
    label competes with a scored one at its boundary.
    """

    def __init__(self, case, kind: str, num_frames: int) -> None:
        from ..datasets.cycle import labelled_frames

        self.kind = "lung" if kind == "lung" else "cardiac"
        truth = labelled_frames(case.labels, num_frames)
        label0 = truth.get(0)
        names = case.meta.get("label_names") or {}
        present = set() if label0 is None else {int(v) for v in np.unique(label0)}
        groups = phys.dice_structures(self.kind, names)
        #: group -> structure -> label values present in frame 0
        self.groups = {g: {s: v for s, v in members.items() if present & set(v)} for g, members in groups.items()}
        self.groups = {g: members for g, members in self.groups.items() if members}
        self.frames = sorted(t for t in truth if t > 0)
        self.active = bool(self.groups) and bool(self.frames)
        if not self.active:
            return
        structures = {s: set(v) for members in self.groups.values() for s, v in members.items()}
        regions: dict[frozenset, int] = {}
        codes = np.zeros(label0.shape, dtype=np.uint8)
        for value in sorted(set().union(*structures.values())):
            member_of = frozenset(s for s, v in structures.items() if value in v)
            code = regions.setdefault(member_of, len(regions) + 1)
            codes[label0 == value] = code
        #: structure -> the carried codes it is made of
        self.codes = {s: [c for member_of, c in regions.items() if s in member_of] for s in structures}
        self.labels0 = Volume(codes, case.frames.geometry, "scored structures")
        self.truth = {s: {t: np.isin(truth[t], sorted(v)) for t in self.frames} for s, v in structures.items()}

    def score(self, fields: MotionFields, scored: list[int]) -> tuple[dict[str, float], dict[int, dict], dict]:
        """(summary, per-frame values by frame, details) of ``fields``: the :data:`DICE_KEYS` of the kind
        over the scored labelled frames; per frame ``dice_<group>`` (a group's worst structure) and
        ``dice_structures``; details: each structure's mean and the seconds taken."""
        from ..motion.transfer import carry_labels

        summary = {k: math.nan for k in DICE_KEYS[self.kind]}
        if not self.active:
            return summary, {}, {}
        started = time.perf_counter()
        carried = carry_labels(self.labels0, fields, mode="linear").frames
        values = {s: {t: dice(np.isin(carried[t], self.codes[s]), self.truth[s][t]) for t in self.frames}
                  for s in self.truth}
        frames = [t for t in self.frames if t in scored]
        per_frame: dict[int, dict] = {t: {"dice_structures": {s: values[s][t] for s in values}} for t in self.frames}
        means = {s: _mean(values[s][t] for t in frames) for s in values}
        for group, members in self.groups.items():
            for t in self.frames:
                per_frame[t][f"dice_{group}"] = min(values[s][t] for s in members)
            if frames:
                summary[f"dice_{group}"] = min(means[s] for s in members)
                summary[f"dice_{group}_min"] = min(values[s][t] for s in members for t in frames)
        details = {"structures": means, "frames": frames, "seconds": round(time.perf_counter() - started, 3)}
        return summary, per_frame, details


def case_kind(case, pipeline) -> str:
    kind = case.meta.get("kind") or pipeline.config.kind
    return "lung" if kind == "lung" else "cardiac"


def evaluate_case(
    pipeline,
    case,
    methods: Iterable[str] | None = None,
    *,
    steps: int | None = None,
    seed: int = 0,
    device: str = "auto",
    transfer: str | None = None,
    mean_motion: MeanMotion | None = None,
    mean_motion_cases: int = MEAN_MOTION_CASES,
    registration=None,
    motion_metrics: bool = True,
    log: Callable[[str], None] | None = None,
    return_cines: bool = False,
    paper_pipeline=None,
    samples: int | None = None,
    residual: bool | None = None,
    model_frames: int | None = None,
) -> dict[str, Any]:
    """Make and score every method's cine for one case (see the module docstring).

    Args:
        pipeline: a :class:`~MoDiffLib.pipeline.MoDiffPipeline` (its intensity window normalises the
            metrics; it generates the ``modiff`` cines).
        case: a :class:`~MoDiffLib.datasets.Case4D` (frames in input units; labels, landmarks,
            amplitude and ``meta["motion"]`` where known). All its frames are used.
        methods: names from :data:`~.methods.METHODS` (default: all).
        steps, seed, device, transfer: generation settings of the ``modiff`` methods.
        mean_motion: the training pattern for the ``mean-motion`` methods (built from
            ``mean_motion_cases`` training phantoms when not given or not matching the case).
        registration: :class:`~MoDiffLib.motion.RegistrationSettings` of the motion estimation.
        motion_metrics: estimate motion on every cine for the landmark and label-curve errors.
        log: called with one line per method (progress).
        return_cines: also return the cines under ``"_cines"`` (not JSON: for previews).
        paper_pipeline: the paper's (latent) variant for the ``modiff-paper`` methods, or None.
        samples: K of a motion model's point estimate (default: the pipeline's).
        residual: a motion model's learned residual on or off for the ``modiff`` methods (None: the
            model's default; the ``mean-motion-aligned`` methods never use it).
        model_frames: frames per cycle the model methods generate (None: the true frames where the
            model can make them, else the model's maximum; see :mod:`.phases`).

    Returns:
        a JSON-ready dictionary (floats may be NaN or inf): ``case_id``, ``info``, ``key_frame``,
        ``truth`` and per method ``available``, ``skipped``, ``privileged_input``, ``summary``,
        ``per_frame``, ``curves``; ``reference`` holds the registration floor.
    """
    selected = list(METHODS if methods is None else methods)
    unknown = [m for m in selected if m not in METHOD_INFO]
    if unknown:
        raise InputError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    say = log or (lambda s: None)
    truth = case.frames
    n = truth.num_frames
    if n < 2:
        raise InputError(f"case {case.case_id} has {n} frame; evaluation needs at least 2")
    geometry = truth.geometry
    phases = case_phases(case)
    whole_cycle = bool(case.meta.get("whole_cycle", is_even_cycle(phases)))
    frame0 = Volume(truth.frames[0], geometry, str(case.case_id))
    kind = case_kind(case, pipeline)
    modality = case.meta.get("modality") or pipeline.config.modality
    window = pipeline.window(frame0)
    truth_n = window.normalise(truth.frames)
    truth_raw = np.asarray(truth.frames, dtype=np.float32)
    input_range = float(window.high - window.low)
    is_phantom = case.meta.get("source") == "phantom"
    gt_motion = case.meta.get("motion")

    key, key_rule = None, None
    if any(METHOD_INFO[m].privileged for m in selected):
        key, key_rule = key_frame(truth, gt_motion, window.normalise)

    physiology = _Physiology(case, kind, modality)
    physiology.whole_cycle = whole_cycle  # the drift check needs a cine that returns to frame 0
    true_fields = MotionFields.from_sequence(gt_motion) if isinstance(gt_motion, VolumeSequence) else None
    if true_fields is not None:
        physiology.set_true_motion(true_fields)
    overlap = _LabelOverlap(case, kind, n)
    landmarks = case.landmarks or {}
    lm_names, lm_truth = landmark_displacement_table(landmarks, geometry, n)
    keys = metric_keys(kind)
    given = {m: given_frames(m, n, key) for m in selected}
    given_any = sorted(set().union(*given.values())) if given else []
    common = [t for t in range(1, n) if t not in given_any] if given_any else None

    def score(cine: VolumeSequence, scored: list[int], images: bool = True, own_fields=None,
              samples_fields=None) -> dict[str, Any]:
        per_frame: list[dict[str, Any]] = [{"frame": t, "phase": round(float(phases[t]), 6), "scored": t in scored}
                                           for t in range(1, n)]
        summary: dict[str, float] = {}
        if images:
            cine_n = window.normalise(cine.frames)
            cine_raw = np.asarray(cine.frames, dtype=np.float32)
            for f in per_frame:
                t = f["frame"]
                f.update({
                    "psnr_db": psnr(cine_n[t], truth_n[t], 2.0),
                    "psnr_input_db": psnr(cine_raw[t], truth_raw[t], input_range),
                    "ssim": ssim3d(cine_n[t], truth_n[t], 2.0),
                    "nmse": nmse(cine_n[t], truth_n[t]),
                })
            summary = {k: _mean(f[k] for f in per_frame if f["scored"]) for k in ("psnr_db", "psnr_input_db", "ssim", "nmse")}
            if common is not None:
                summary.update({f"{k}_common": _mean(f[k] for f in per_frame if f["frame"] in common)
                                for k in ("psnr_db", "psnr_input_db", "ssim", "nmse")})
            summary["tce"] = temporal_consistency_error(cine_n, truth_n)
        fields, motion_info = None, {}
        summary["landmark_error_mm"] = math.nan
        if own_fields is not None:
            # a method that makes motion is scored through it: estimating it back from its images
            # would add the registration's own error (see reference.registration_floor)
            fields = own_fields
            motion_info = {"method": "own fields", "seconds": 0.0}
        elif motion_metrics and (lm_names or physiology.has_labels or overlap.active):
            from ..motion import estimate_motion

            fields = estimate_motion(cine, registration)
            motion_info = {"method": fields.info["method"], "seconds": fields.info["seconds"]}
        if fields is not None and (motion_metrics or own_fields is not None):
            if lm_names:
                _, table = landmark_error_table(fields, landmarks)
                summary["landmark_error_mm"] = mean_over(table, scored)
                summary["landmark_energy_score_mm"] = summary["landmark_error_mm"] if not samples_fields else \
                    mean_over(landmark_energy_table(samples_fields, landmarks, geometry)[1], scored)
                if common is not None:
                    summary["landmark_error_mm_common"] = mean_over(table, common)
                for f, value in zip(per_frame, per_frame_mean(table)[1:]):
                    f["landmark_error_mm"] = value
        curves = physiology.curves(cine, fields)
        summary.update(physiology.errors(curves, scored))
        label_dice = {}
        if fields is not None and (motion_metrics or own_fields is not None):
            dice_summary, dice_frames, label_dice = overlap.score(fields, scored)
            summary.update(dice_summary)
            for f in per_frame:
                f.update(dice_frames.get(f["frame"], {}))
        for f in per_frame:
            for name, source in curves.items():
                for curve, values in source.items():
                    f[f"{curve}_{name}" if name != "labels" else curve] = values[f["frame"]]
        return {"summary": {k: summary.get(k, math.nan) for k in keys}, "per_frame": per_frame,
                "curves": curves, "motion_estimation": motion_info, "label_dice": label_dice,
                "physiology_flags": physiology.flags(cine_n if images else None, truth_n, curves)}

    result: dict[str, Any] = {
        "case_id": str(case.case_id),
        "info": {
            "source": case.meta.get("source"),
            "kind": kind,
            "modality": modality,
            "seed": case.meta.get("seed"),
            "split": case.meta.get("split"),
            "frames": n,
            "frame_phases": [round(float(p), 6) for p in phases],
            "frames_compared": phase_table(phases, case.meta.get("source_frames")),
            "cycle": describe_scope(phases, whole_cycle),
            "grid": geometry.describe(),
            "amplitude": case.amplitude,
            "amplitude_unit": ("mm" if kind == "lung" else "%") if case.amplitude is not None else None,
            "window": {"low": float(window.low), "high": float(window.high),
                       "unit": pipeline.config.intensity.unit},
            "landmarks": len(lm_names),
            "labelled_frames": physiology.label_frames,
            "ed_es_source": {k: case.meta.get(k) for k in ("ed_source", "es_source", "ef_source")
                             if case.meta.get(k)},
            "notes": list(case.meta.get("notes") or []),
        },
        "key_frame": key,
        "key_frame_rule": key_rule,
        "truth": {
            "curves": physiology.truth,
            "landmark_displacement_mm": per_frame_mean(lm_truth),
            "landmark_displacement_mean_mm": mean_over(lm_truth, range(1, n)) if lm_names else math.nan,
            "temporal_change": float(np.mean(np.abs(np.diff(truth_n, axis=0)))),
            **physiology.summary_of_truth(),
        },
        "methods": {},
        "reference": {},
    }
    cines: dict[str, VolumeSequence] = {}

    mm = mean_motion
    for name in selected:
        info = METHOD_INFO[name]
        entry: dict[str, Any] = {"available": False, "skipped": None, "privileged_input": info.privileged}
        result["methods"][name] = entry
        started = time.perf_counter()
        cine, reason, extra, own_fields, samples_fields = None, None, {}, None, None
        if name == "static":
            cine = static_cine(frame0, n)
        elif name in ("mean-motion", "mean-motion+amplitude"):
            if not is_phantom or gt_motion is None:
                reason = ("needs the ground-truth motion of training phantoms on the case's grid; "
                          "only defined for phantom data")
            elif name == "mean-motion+amplitude" and case.amplitude is None:
                reason = "the case's true motion strength is unknown"
            else:
                start_phase = float(case.meta.get("start_phase", 0.0))
                scanner = case.meta.get("scanner_geometry", geometry)  # the phantom's own grid (a moved pose: its original)
                if mm is None or not mm.matches(kind, n, scanner, start_phase):
                    shape = case.meta.get("params", {}).get("grid_shape_ijk")
                    mm = MeanMotion.from_training_phantoms(kind, n, shape, start_phase, mean_motion_cases)
                here = mm.on_geometry(geometry)
                amplitude = mm.population_amplitude if name == "mean-motion" else float(case.amplitude)
                cine = here.cine(frame0, amplitude, name)
                own_fields = MotionFields(here.displacements(amplitude), geometry, {"method": name})
                extra = {"amplitude": amplitude, "training_seeds": mm.seeds}
        elif name.startswith(("modiff", "mean-motion-aligned")):
            pipe = paper_pipeline if name.startswith("modiff-paper") else pipeline
            motion_model = pipe is not None and pipe.config.family == "motion"
            amplitude, options = None, {}
            if pipe is None:
                reason = "no paper-variant (latent) model of this kind is registered or given (--paper-model)"
            elif (name.startswith("mean-motion-aligned") or name in ("modiff-single", "modiff+trace")
                  or info.given) and not motion_model:
                reason = f"model '{pipe.config.name}' is not a motion model"
            elif info.given and not given[name]:
                reason = "the case has no key frame"
            elif name.endswith("+trace") and case.trace_mm is None:
                reason = "the case has no breathing trace"
            elif name == "mean-motion-aligned+trace" and not pipe.population.has_trace:
                reason = f"model '{pipe.config.name}' has no population trace regression"
            elif name.endswith("+amplitude"):
                a = pipe.config.amplitude
                if a is None:
                    reason = f"model '{pipe.config.name}' has no motion-strength condition"
                elif case.amplitude is None:
                    reason = "the case's true motion strength is unknown"
                elif not a.min <= float(case.amplitude) <= a.max:
                    reason = (f"the case's strength {case.amplitude:g} {a.unit} is outside the model's range "
                              f"{a.min:g}-{a.max:g} {a.unit}")
                else:
                    amplitude = float(case.amplitude)
            if reason is None:
                if name.startswith("mean-motion-aligned"):
                    options["residual"] = False
                elif name == "modiff-single":
                    options["samples"] = 1
                timing = time_plan(phases, pipe.config.max_frames, model_frames)
                if name.endswith("+trace"):
                    descent = case.trace_mm[0] - case.trace_mm
                    options["trace_mm"] = resample_trace(descent, phases, timing.generated) \
                        if timing.resampled else descent
                if info.given:
                    if timing.resampled:
                        reason = (f"the case has {n} frames and the model makes at most {pipe.config.max_frames}; "
                                  "given frames need one generated frame per true frame")
                    else:
                        options["known"] = {t: Volume(truth.frames[t], geometry, f"{case.case_id} frame {t}")
                                            for t in given[name]}
                if motion_model and samples is not None and "samples" not in options:
                    options["samples"] = int(samples)
                if motion_model and residual is not None and "residual" not in options:
                    options["residual"] = bool(residual)
            if reason is None:
                generated = pipe.generate(frame0, timing.generated, steps=steps, seed=seed, amplitude=amplitude,
                                          device=device, transfer=transfer if pipe is pipeline else None, **options)
                cine = generated.sequence
                own_fields = generated.motion
                samples_fields = generated.motion_samples
                if timing.resampled:
                    cine, own_fields, samples_fields = resample_generated(
                        frame0, cine, own_fields, samples_fields, phases, pipe.config.modality == "CT")
                extra = {"amplitude": amplitude, "provenance": generated.provenance, "time": timing.describe()}
                if info.given:
                    extra["given_frames"] = given[name]
        elif name == "linear-interp":
            cine = linear_interp_cine(frame0, truth.frames[key], key, n)
            extra = {"key_frame": key}
        elif name == "registration-interp":
            cine, reg = registration_interp_cine(frame0, truth.frames[key], key, n, registration)
            extra = {"key_frame": key, **reg}
        if cine is None:
            entry["skipped"] = reason
            entry["summary"] = {k: None for k in keys}
            say(f"{case.case_id}: {name} skipped ({reason})")
            continue
        made_s = time.perf_counter() - started
        scored = [t for t in range(1, n) if t not in given[name]]
        entry.update({"available": True, "scored_frames": scored, **extra})
        entry.update(score(cine, scored, own_fields=own_fields, samples_fields=samples_fields))
        entry["seconds"] = {"method": round(made_s, 3), "total": round(time.perf_counter() - started, 3),
                            "label_dice": entry["label_dice"].get("seconds", 0.0)}
        cines[name] = cine
        s = entry["summary"]
        dice_text = "".join(f"  Dice {g} {s[f'dice_{g}']:.3f}" for g in DICE_GROUPS[kind]
                            if math.isfinite(s[f"dice_{g}"]))
        say(f"{case.case_id}: {name:<22} PSNR {s['psnr_db']:6.2f} dB  SSIM {s['ssim']:.4f}  "
            f"landmarks {s['landmark_error_mm']:.2f} mm{dice_text}  ({entry['seconds']['total']:.1f} s)")

    if motion_metrics and (lm_names or physiology.has_labels or overlap.active):
        started = time.perf_counter()
        floor = score(truth, list(range(1, n)), images=False)
        result["reference"]["registration_floor"] = {
            "description": "the true cine scored like a method: the error the motion estimation alone leaves",
            "summary": {k: floor["summary"][k] for k in FLOOR_KEYS[kind]},
            "label_dice": floor["label_dice"],
            "seconds": round(time.perf_counter() - started, 3),
        }
        say(f"{case.case_id}: registration floor landmarks {floor['summary']['landmark_error_mm']:.2f} mm")
        if true_fields is not None:
            own = score(truth, list(range(1, n)), images=False, own_fields=true_fields)
            result["reference"]["true_motion"] = {
                "description": "the TRUE motion scored through its own fields like a field method: the error of "
                               "measuring volumes by the Jacobian of the frame-0 label (label quantisation); "
                               "its Dice shows what the voxelisation of the labels leaves (about a ceiling, "
                               "not a strict one)",
                "summary": {k: own["summary"][k] for k in FLOOR_KEYS[kind]}, "label_dice": own["label_dice"]}
    if mm is not None:
        result["mean_motion"] = mm.describe()
    if return_cines:
        result["_cines"] = cines
        result["_truth"] = truth
        result["_window"] = window
    return result
