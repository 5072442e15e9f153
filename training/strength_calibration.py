"""Fit a population's strength map: where on its line in EF a requested EF lies.

The population motion ``u = B0 + a B1`` is a least-squares line per voxel. Integrated over a
ventricle it is not EF-consistent: averaging hearts of different sizes and timings smooths the
contraction, so the line taken at ``a`` moves the LV by less than ``a`` (on 83 training phantoms,
by 0.76 EF points per point with an offset; at EF 50 % by about 38 %). The map
``a_line = offset + slope * a`` (:attr:`~MoDiffLib.motion.population.PopulationMotion.strength_map`)
corrects that, measured the way the evaluation measures EF of a method's motion:

* for every training case, the EF its *true* motion gives (frame-0 LV label, Jacobian of the
  motion summed over it, at the labels' end-systolic frame: :mod:`MoDiffLib.evaluation.physiology`);
* the EF the population motion on this case's anatomy grid gives at two strengths on the line
  (EF is very nearly linear in ``a`` there), so the line strength ``a_i`` that reproduces the
  true motion's EF follows per case;
* ``a_i`` regressed on the case's drawn EF by least squares gives ``(offset, slope)``.

The target is the true motion's EF, not the drawn one: the labels quantise the base descent over
8 mm slices, so the drawn EF is not what motion of the true kind produces through this measurement.
Only kinds whose strength is an EF of a labelled LV are calibrated (cardiac).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass

import numpy as np
import torch

from MoDiffLib.errors import InputError
from MoDiffLib.evaluation import physiology as phys
from MoDiffLib.motion.anatomy import resample_nearest_border
from MoDiffLib.motion.fields import MotionFields
from MoDiffLib.motion.population import frame_phases
from MoDiffLib.motion_pipeline import MotionPipeline
from MoDiffLib.phantom import make_phantom

from .motion import shape_of

#: Frames of the calibration phantoms (one cycle), as the evaluation's cardiac runs.
CALIBRATION_FRAMES = 10
#: The two line strengths (EF %) each case's population EF is measured at.
PROBE_STRENGTHS = (30.0, 60.0)


@dataclass(frozen=True)
class CaseStrength:
    """One training case: its drawn EF, its true motion's EF, and the population's EF line on it."""

    seed: int
    ef_drawn: float
    ef_true_motion: float
    intercept: float  # population EF at line strength 0 (linear in the line strength)
    slope: float  # population EF points per point of line strength

    @property
    def line_strength(self) -> float:
        """The line strength whose population motion gives this case the true motion's EF."""
        return (self.ef_true_motion - self.intercept) / self.slope

    def population_ef(self, line_strength: float) -> float:
        return self.intercept + self.slope * line_strength


def case_strength(args: tuple[MotionPipeline, int, tuple[int, int, int] | None]) -> CaseStrength:
    """Measure one training phantom (see the module docstring)."""
    pipeline, seed, shape_ijk = args
    case = make_phantom("cardiac", num_frames=CALIBRATION_FRAMES, seed=int(seed), shape_ijk=shape_ijk)
    frame0 = case.frames.frame(0)
    masks = phys.label_masks(case.labels, phys.lv_label_values(case.label_names), CALIBRATION_FRAMES)
    es = phys.es_frame(phys.cardiac_curves(masks, frame0.geometry)["lv_volume_ml"])
    if es is None:
        raise InputError(f"training phantom {seed} has no end-systolic frame in its LV labels")
    true_fields = MotionFields.from_sequence(case.motion)
    ef_true = phys.ejection_fraction(phys.jacobian_volumes_ml(true_fields, masks[0], [0, es]), es)
    box, _ = pipeline.anatomy(frame0)
    grid = pipeline.motion_grid(box)
    phase = frame_phases(CALIBRATION_FRAMES)[es:es + 1]
    efs = []
    for a in PROBE_STRENGTHS:
        coarse = pipeline.population.fields(phase, a, calibrated=False)[0].transpose(1, 2, 3, 0)  # (k, j, i, 3)
        fine = resample_nearest_border(np.ascontiguousarray(coarse), grid, frame0.geometry)
        fields = MotionFields(np.stack([np.zeros_like(fine), fine]), frame0.geometry, {})
        efs.append(phys.ejection_fraction(phys.jacobian_volumes_ml(fields, masks[0], [0, 1]), 1))
    slope = (efs[1] - efs[0]) / (PROBE_STRENGTHS[1] - PROBE_STRENGTHS[0])
    if not slope > 0:
        raise InputError(f"the population motion does not raise the EF of training phantom {seed} with its strength")
    intercept = efs[0] - slope * PROBE_STRENGTHS[0]
    return CaseStrength(int(seed), float(case.params["amplitude"]), float(ef_true), float(intercept), float(slope))


def fit_strength_map(pipeline: MotionPipeline, seeds: list[int], workers: int, log,
                     shapes: list[tuple[int, int, int]] | None = None) -> tuple[tuple[float, float], dict]:
    """``(offset, slope)`` of the strength map of ``pipeline``'s population over the training
    phantoms ``seeds`` (each on one of the phantom grids ``shapes``, drawn from its seed as the
    trainer does; None: the phantom's default grid), and a summary (cases, EF errors on them with
    and without the map)."""
    if pipeline.config.kind != "cardiac":
        raise InputError(f"a strength map is fitted for cardiac models (EF of the LV), not {pipeline.config.kind!r}")
    if len(seeds) < 10:
        raise InputError("a strength map needs at least 10 training cases")
    jobs = [(pipeline, s, None if shapes is None else shape_of(s, shapes)) for s in seeds]
    t0 = time.perf_counter()
    pool = mp.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) if workers > 1 else None
    cases: list[CaseStrength] = []
    try:
        for c in (pool.imap(case_strength, jobs, chunksize=2) if pool else map(case_strength, jobs)):
            cases.append(c)
            if len(cases) % 50 == 0:
                log(f"strength cases {len(cases)}/{len(jobs)} ({time.perf_counter() - t0:.0f} s)")
    finally:
        if pool:
            pool.terminate()
    drawn = np.array([c.ef_drawn for c in cases])
    target = np.array([c.line_strength for c in cases])
    slope, offset = np.polyfit(drawn, target, 1)
    true_ef = np.array([c.ef_true_motion for c in cases])
    before = np.array([c.population_ef(c.ef_drawn) for c in cases]) - true_ef
    after = np.array([c.population_ef(offset + slope * c.ef_drawn) for c in cases]) - true_ef
    summary = {"cases": len(cases), "offset": round(float(offset), 4), "slope": round(float(slope), 4),
               "ef_error_vs_true_motion": {"without_map": {"mean_abs": round(float(np.abs(before).mean()), 3),
                                                           "bias": round(float(before.mean()), 3)},
                                           "with_map": {"mean_abs": round(float(np.abs(after).mean()), 3),
                                                        "bias": round(float(after.mean()), 3)}}}
    log(f"strength map a_line = {offset:.3f} + {slope:.4f} a on {len(cases)} cases; EF error vs true motion "
        f"{np.abs(before).mean():.2f} -> {np.abs(after).mean():.2f} points (bias {before.mean():+.2f} -> {after.mean():+.2f})")
    if not slope > 0:
        raise InputError(f"the fitted strength map has a non-positive slope ({slope:.4f}); too few or too alike cases")
    return (float(offset), float(slope)), summary
