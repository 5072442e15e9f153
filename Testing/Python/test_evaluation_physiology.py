"""Evaluation physiology: signed ED -> ES ejection fraction, non-physiological-motion flags, the
strength regression of the mean-motion baselines, and the report's flag counts.

Synthetic curves, arrays and label maps only (plus three training phantoms on a 24x24x8 grid), so
the file runs in seconds.
"""

import json
import math

import numpy as np
import pytest

from MoDiffLib.datasets import Case4D
from MoDiffLib.evaluation import MeanMotion
from MoDiffLib.evaluation import physiology as phys
from MoDiffLib.evaluation.baselines import warp_with_displacements
from MoDiffLib.evaluation.case import CARDIAC_KEYS, FLOOR_KEYS, _Physiology, metric_keys
from MoDiffLib.evaluation.report import FLAG_TITLE, aggregate, aggregate_reference, json_ready, markdown
from MoDiffLib.evaluation.run import DEFINITIONS
from MoDiffLib.errors import InputError
from MoDiffLib.volume import Geometry, Volume, VolumeSequence

TRUE_LV = [100.0, 80.0, 60.0, 85.0]  # ED at frame 0, ES at frame 2: EF 40 %
DILATING_LV = [100.0, 105.0, 110.0, 104.0]
CONSTANT_LV = [100.0] * 4


# -- signed ejection fraction -----------------------------------------------------------------------------
def test_signed_ejection_fraction_is_read_at_the_true_es_frame():
    es = phys.es_frame(TRUE_LV)
    assert es == 2
    assert phys.ejection_fraction(TRUE_LV) == pytest.approx(40.0)  # default ES: the curve's own minimum
    assert phys.ed_es_volumes(TRUE_LV, es) == (100.0, 60.0)
    # a dilating ventricle has a negative EF at the true ES (the old (max - min) / max gave +9.1 %)
    assert phys.ejection_fraction(DILATING_LV, es) == pytest.approx(-10.0)
    assert phys.ejection_fraction(CONSTANT_LV, es) == 0.0
    # a method is judged at the true phase, not at its own minimum
    late = [100.0, 95.0, 90.0, 50.0]
    assert phys.ejection_fraction(late, es) == pytest.approx(10.0)
    assert phys.ejection_fraction(late) == pytest.approx(50.0)
    # frame 0 is never ES; undefined frames (ACDC: labels at ED and ES only) are skipped
    assert phys.es_frame([50.0, math.nan, 70.0, math.nan, 40.0]) == 4
    assert phys.es_frame([100.0, 120.0, 130.0]) == 1  # a dilating truth: its least-dilated frame
    assert phys.es_frame([math.nan, 80.0]) is None and phys.es_frame([80.0]) is None
    assert math.isnan(phys.ejection_fraction([math.nan, 80.0, 60.0], 2))
    assert math.isnan(phys.ejection_fraction([100.0, math.nan, 60.0], 1))
    assert math.isnan(phys.ejection_fraction([0.0, 0.0, 0.0], 2))


def test_dilation_gets_a_negative_ef_a_flag_and_a_larger_ef_error_than_static():
    assert phys.cardiac_flags(DILATING_LV, 2) == ["lv_no_contraction"]
    assert phys.cardiac_flags(CONSTANT_LV, 2) == ["lv_no_contraction"]  # V_ES >= V_ED: no contraction
    assert phys.cardiac_flags(TRUE_LV, 2) == []
    assert phys.cardiac_flags([100.0, 99.0, 99.9, 100.0], 2) == []
    assert phys.cardiac_flags([100.0, math.nan, math.nan, 100.0], 2) == []  # undefined: not checked
    assert phys.cardiac_flags(DILATING_LV, None) == []
    truth = phys.ejection_fraction(TRUE_LV, 2)
    dilating = abs(phys.ejection_fraction(DILATING_LV, 2) - truth)
    static = abs(phys.ejection_fraction(CONSTANT_LV, 2) - truth)
    assert dilating == pytest.approx(50.0) and static == pytest.approx(40.0) and dilating > static


def lv_case(volumes_voxels, whole_cycle=None):
    """A synthetic cardiac case whose LV label (value 3) has the given voxel counts per frame."""
    geometry = Geometry((6, 8, 8), (2.0, 2.0, 2.0))
    labels = np.zeros((len(volumes_voxels), 6, 8, 8), np.int16)
    for t, count in enumerate(volumes_voxels):
        labels[t].reshape(-1)[:count] = 3
    frames = np.where(labels == 3, 800.0, 100.0).astype(np.float32)
    meta = {"label_names": {3: "lv_blood"}, "kind": "cardiac", "modality": "MR", "source": "phantom"}
    if whole_cycle is not None:
        meta["whole_cycle"] = whole_cycle
    return Case4D("lv", VolumeSequence(frames, geometry), VolumeSequence(labels, geometry), meta=meta)


def test_case_physiology_reports_signed_ef_volumes_and_flags():
    counts = [100, 80, 60, 85]
    physiology = _Physiology(lv_case(counts), "cardiac", "MR")
    unit = 0.008  # mL per 2 mm voxel
    truth = physiology.summary_of_truth()
    assert truth["ed_frame"] == 0 and truth["es_frame"] == 2
    assert truth["edv_ml"] == pytest.approx(100 * unit) and truth["esv_ml"] == pytest.approx(60 * unit)
    assert truth["ef_pct"] == pytest.approx(40.0) and truth["physiology_flags"] == []
    scored = [1, 2, 3]
    rising = {"labels": {"lv_volume_ml": [v * unit for v in (100, 105, 110, 104)]}}
    constant = {"labels": {"lv_volume_ml": [100 * unit] * 4}}
    dilating, static = physiology.errors(rising, scored), physiology.errors(constant, scored)
    assert set(CARDIAC_KEYS) <= set(dilating) and {"edv_ml", "esv_ml", "ef_pct"} <= set(FLOOR_KEYS["cardiac"])
    assert {"edv_ml", "esv_ml", "ef_pct", "ef_error_pct"} <= set(metric_keys("cardiac"))
    assert dilating["ef_pct"] == pytest.approx(-10.0) and static["ef_pct"] == 0.0
    assert dilating["edv_ml"] == pytest.approx(100 * unit) and dilating["esv_ml"] == pytest.approx(110 * unit)
    assert dilating["ef_error_pct"] == pytest.approx(50.0) and static["ef_error_pct"] == pytest.approx(40.0)
    assert dilating["ef_error_pct"] > static["ef_error_pct"]
    assert physiology.flags(None, None, rising) == ["lv_no_contraction"]
    good = {"labels": {"lv_volume_ml": [v * unit for v in counts]}}
    assert physiology.errors(good, scored)["ef_error_pct"] == 0.0 and physiology.flags(None, None, good) == []
    # no LV labels: NaN for the new keys, nothing flagged
    empty = physiology.errors({}, scored)
    assert all(math.isnan(empty[k]) for k in ("edv_ml", "esv_ml", "ef_pct", "ef_error_pct"))
    assert physiology.flags(None, None, {}) == []


# -- lung and drift checks ---------------------------------------------------------------------------------
TRUE_LUNG = {"lung_volume_ml": [3000.0, 3300.0, 3600.0, 3200.0], "diaphragm_si_mm": [0.0, -8.0, -15.0, -5.0]}


def test_lung_flags_at_the_true_peak_inhale():
    assert phys.inhale_frame(TRUE_LUNG["lung_volume_ml"]) == 2
    up = [0.0, 1.0, 1.5, 0.5]
    assert phys.lung_flags(TRUE_LUNG["lung_volume_ml"], up, 2) == ["diaphragm_up_on_inhale"]
    assert phys.lung_flags(TRUE_LUNG["lung_volume_ml"], [0.0, 0.5, 0.9, 0.2], 2) == []  # within 1 mm
    assert phys.lung_flags([3000.0, 2950.0, 2900.0, 2990.0], TRUE_LUNG["diaphragm_si_mm"], 2) == [
        "lung_volume_down_on_inhale"]
    assert phys.lung_flags([3000.0] * 4, [0.0] * 4, 2) == []  # static: neither
    assert phys.lung_flags(None, up, None) == []
    cine = {"labels": {"lung_volume_ml": [3000.0, 2950.0, 2900.0, 2990.0], "diaphragm_si_mm": up}}
    truth = {"labels": TRUE_LUNG}
    assert phys.physiology_flags("lung", cine, truth) == ["diaphragm_up_on_inhale", "lung_volume_down_on_inhale"]
    assert phys.physiology_flags("lung", {"labels": TRUE_LUNG}, truth) == []
    # a truth that does not inhale after frame 0 (it starts at peak inhale) is not a reference for the check
    exhaling = {"labels": {"lung_volume_ml": [3600.0, 3300.0, 3000.0, 3400.0], "diaphragm_si_mm": [0.0, 5.0, 9.0, 4.0]}}
    assert phys.physiology_flags("lung", cine, exhaling) == []
    # the -400 HU curves are checked where there are no labels
    assert phys.physiology_flags("lung", {"threshold": cine["labels"]}, {"threshold": TRUE_LUNG}) == [
        "diaphragm_up_on_inhale", "lung_volume_down_on_inhale"]


def test_drift_flags_a_cine_whose_last_frame_does_not_return():
    rng = np.random.default_rng(0)
    truth = np.clip(rng.normal(0.0, 0.3, (5, 4, 6, 6)), -1, 1).astype(np.float32)
    truth[-1] = truth[0] + 0.002  # a whole cycle: the last frame comes back close to frame 0
    returning = truth + rng.normal(0.0, 0.001, truth.shape).astype(np.float32)
    drifting = truth.copy()
    drifting[-1] = truth[0] + 0.2
    assert phys.end_drift(truth) == pytest.approx(0.002, rel=1e-4)
    assert phys.end_drift(drifting) == pytest.approx(0.2, rel=1e-4)
    assert phys.drift_flags(drifting, truth) == ["intensity_drift"]
    assert phys.drift_flags(returning, truth) == []
    assert phys.drift_flags(truth, truth) == []
    small = truth.copy()
    small[-1] = truth[0] + 0.008  # 4x the truth's drift but below the 0.01 minimum
    assert phys.drift_flags(small, truth) == []
    wandering = truth.copy()
    wandering[-1] = truth[0] + 0.05
    loose = truth.copy()
    loose[-1] = truth[0] + 0.03  # a truth that itself drifts 0.03: 0.05 is less than 3x that
    assert phys.drift_flags(wandering, truth) == ["intensity_drift"] and phys.drift_flags(wandering, loose) == []
    # through the case's physiology: only for a whole cycle (the default for phantoms)
    whole = _Physiology(lv_case([100, 80, 60, 85, 98]), "cardiac", "MR")
    half = _Physiology(lv_case([100, 80, 60, 85, 98], whole_cycle=False), "cardiac", "MR")
    assert whole.whole_cycle and not half.whole_cycle
    assert whole.flags(drifting, truth, {}) == ["intensity_drift"] and whole.flags(returning, truth, {}) == []
    assert half.flags(drifting, truth, {}) == []
    assert whole.flags(None, truth, {}) == []  # no images scored (the registration floor)


# -- mean-motion regression ----------------------------------------------------------------------------------
def test_regression_recovers_intercept_and_slope_exactly():
    rng = np.random.default_rng(1)
    b0 = rng.normal(0.0, 2.0, (3, 2, 4, 5, 3)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, b0.shape).astype(np.float32)
    amplitudes = [30.0, 45.0, 62.0, 38.0, 55.0]
    fields = [b0 + np.float32(a) * b1 for a in amplitudes]
    intercept, slope, stats = MeanMotion.regression(zip(amplitudes, fields))
    assert intercept.dtype == slope.dtype == np.float32 and intercept.shape == b0.shape
    np.testing.assert_allclose(intercept, b0, atol=2e-5)
    np.testing.assert_allclose(slope, b1, atol=5e-7)
    assert stats["cases"] == 5 and stats["fit"] == "least squares" and stats["residual_rms_mm"] < 1e-5
    # with noise: the ordinary least-squares line of every element
    noisy = [f + rng.normal(0.0, 0.5, f.shape).astype(np.float32) for f in fields]
    intercept, slope, stats = MeanMotion.regression(zip(amplitudes, noisy))
    design = np.stack([np.ones(5), amplitudes], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.stack(noisy).reshape(5, -1).astype(np.float64), rcond=None)
    np.testing.assert_allclose(intercept.reshape(-1), coef[0], atol=1e-4)
    np.testing.assert_allclose(slope.reshape(-1), coef[1], atol=1e-5)
    residual = np.stack(noisy).reshape(5, -1) - design @ coef
    assert stats["residual_rms_mm"] == pytest.approx(float(np.sqrt(np.mean(residual ** 2))), rel=1e-4)
    # the line passes through the mean field at the mean strength
    mm = MeanMotion("cardiac", 3, 0.0, Geometry((2, 4, 5)), intercept, slope, [0, 1, 2, 3, 4], amplitudes, "%")
    np.testing.assert_allclose(mm.displacements(mm.population_amplitude), np.mean(noisy, axis=0), atol=1e-4)
    # one strength only: a field per unit of strength through the origin
    intercept, slope, stats = MeanMotion.regression([(20.0, fields[0]), (20.0, fields[1])])
    assert not intercept.any() and "per unit" in stats["fit"]
    np.testing.assert_allclose(slope * 20.0, (fields[0] + fields[1]) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError):
        MeanMotion.regression([(0.0, fields[0])])
    with pytest.raises(InputError):
        MeanMotion.regression([])
    with pytest.raises(InputError):
        MeanMotion.regression([(10.0, fields[0]), (20.0, fields[0][:1])])


def test_mean_motion_cine_warps_with_intercept_plus_strength_times_slope():
    geometry = Geometry((8, 24, 24), (5.0, 5.0, 8.0))
    mm = MeanMotion.from_training_phantoms("cardiac", 3, (24, 24, 8), 0.0, 3)
    assert mm.intercept.shape == mm.slope.shape == (3, 8, 24, 24, 3) and mm.geometry.shape_kji == (8, 24, 24)
    assert mm.info["fit"] == "least squares" and mm.info["cases"] == 3 and len(mm.amplitudes) == 3
    assert mm.matches("cardiac", 3, mm.geometry) and not mm.matches("lung", 3, mm.geometry)
    described = json.loads(json.dumps(mm.describe()))
    assert described["training_seeds"] == mm.seeds and "B0 + a B1" in described["model"]
    # mean-motion (population strength) is the plain mean of the training fields
    from MoDiffLib.phantom import make_phantom

    fields = [make_phantom("cardiac", num_frames=3, seed=s, shape_ijk=(24, 24, 8)).motion.frames for s in mm.seeds]
    np.testing.assert_allclose(mm.displacements(mm.population_amplitude), np.mean(fields, axis=0), atol=1e-4)
    np.testing.assert_allclose(mm.displacements(40.0), mm.intercept + 40.0 * mm.slope, rtol=1e-6)
    frame0 = Volume(np.random.default_rng(2).normal(0, 1, (8, 24, 24)).astype(np.float32), mm.geometry)
    expected = warp_with_displacements(frame0, mm.displacements(40.0), "x").frames
    np.testing.assert_allclose(mm.cine(frame0, 40.0).frames, expected)
    with pytest.raises(InputError):
        mm.displacements(-1.0)
    with pytest.raises(InputError):
        mm.cine(Volume(np.zeros((8, 24, 24), np.float32), geometry), 40.0)  # another grid


# -- report --------------------------------------------------------------------------------------------
def fake_case(case_id, flags):
    keys = metric_keys("cardiac")
    methods = {}
    for name, flagged in flags.items():
        methods[name] = {"available": True, "privileged_input": False, "skipped": None,
                         "summary": {k: 1.0 for k in keys}, "physiology_flags": flagged,
                         "per_frame": [{"frame": 1, "scored": True, "psnr_db": 30.0}]}
    methods["modiff+amplitude"] = {"available": False, "skipped": "no strength", "summary": {k: None for k in keys}}
    truth = {"edv_ml": 120.0, "esv_ml": 60.0, "ef_pct": 50.0, "physiology_flags": []}
    return {"case_id": case_id, "methods": methods, "truth": truth, "reference": {}}


def test_report_counts_flagged_cases_per_method():
    cases = [fake_case("a", {"static": ["lv_no_contraction"], "modiff": []}),
             fake_case("b", {"static": ["lv_no_contraction"], "modiff": ["lv_no_contraction", "intensity_drift"]}),
             fake_case("c", {"static": ["lv_no_contraction"], "modiff": []})]
    methods = aggregate(cases, ["static", "modiff", "modiff+amplitude"], "cardiac")
    assert methods["static"]["physiology_flagged_cases"] == 3
    assert methods["static"]["physiology_flags"] == {"lv_no_contraction": 3, "diaphragm_up_on_inhale": 0,
                                                     "lung_volume_down_on_inhale": 0, "intensity_drift": 0}
    assert methods["modiff"]["physiology_flagged_cases"] == 1
    assert methods["modiff"]["physiology_flags"]["intensity_drift"] == 1
    assert methods["modiff+amplitude"]["physiology_flagged_cases"] == 0 and methods["modiff+amplitude"]["cases"] == 0
    assert methods["static"]["ef_pct"] == 1.0 and "edv_ml_std" in methods["static"]
    reference = aggregate_reference(cases, "cardiac")
    assert reference["truth"]["ef_pct"] == 50.0 and reference["truth"]["physiology_flagged_cases"] == 0
    assert "registration_floor" not in reference
    report = {
        "data": "phantom:cardiac:3", "data_info": {"kind": "cardiac", "cases": 3},
        "settings": {"frames": 4, "seed": 0},
        "model": {"name": "m", "version": "0", "source": "x", "steps": 2},
        "methods": methods, "reference": reference, "unavailable": {}, "definitions": DEFINITIONS,
        "mean_motion": None,
    }
    json.dumps(json_ready(report), allow_nan=False)
    md = markdown(report)
    header = next(line for line in md.splitlines() if line.startswith("| method |"))
    assert header.endswith(f"| {FLAG_TITLE} |") and "EF (%)" in header and "EDV (mL)" in header
    assert next(line for line in md.splitlines() if line.startswith("| static |")).endswith("| 3/3 |")
    assert next(line for line in md.splitlines() if line.startswith("| modiff |")).endswith("| 1/3 |")
    assert "| *ground truth* |" in md
    assert "- static: 3/3 cases (lv_no_contraction 3)" in md
    assert "- modiff: 1/3 cases (lv_no_contraction 1, intensity_drift 1)" in md
    for key in ("edv_ml", "esv_ml", "ef_pct", "physiology_flags", "physiology_flagged_cases"):
        assert key in DEFINITIONS
