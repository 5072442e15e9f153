"""``modiff evaluate``: Dice of the propagated labels and the privileged MoDiff methods given true frames.

The bundled motion models on small phantoms (lung 48x48x24, 10 frames, through the command line;
cardiac 64x64x16, 6 frames, through :func:`evaluate_case`) and a synthetic 8x16x16 label map, so the
file runs in well under a minute. What is checked is what a user reads in the report: the Dice
groups and their bounds, the order static < modiff < true motion, the frames a privileged method is
(not) scored on, and the Dice columns of report.md.
"""

import json
import math
import re

import numpy as np
import pytest
from test_evaluation import modiff, tiny_config

from MoDiffLib.datasets import Case4D, PhantomDataset
from MoDiffLib.datasets.acdc import ACDC_LABEL_NAMES
from MoDiffLib.evaluation import evaluate_case
from MoDiffLib.evaluation import physiology as phys
from MoDiffLib.evaluation.case import DICE_KEYS, _LabelOverlap
from MoDiffLib.evaluation.methods import METHOD_INFO, given_frames
from MoDiffLib.motion import MotionFields, RegistrationSettings
from MoDiffLib.motion.propagate import dice
from MoDiffLib.phantom import make_phantom
from MoDiffLib.pipeline import MoDiffPipeline
from MoDiffLib.pipelines import load_pipeline
from MoDiffLib.volume import Geometry, Volume, VolumeSequence

LUNG_GRID = (48, 48, 24)
LUNG_FRAMES = 10
LUNG_METHODS = ("static", "modiff", "modiff-two-frame", "modiff-partial")
CARDIAC_GRID = (64, 64, 16)
CARDIAC_FRAMES = 6
FAST_REGISTRATION = "20,0,0"  # the coarse level only: the estimated motion of static and the floor


def finite_unit(value) -> bool:
    return value is not None and math.isfinite(value) and 0.0 <= value <= 1.0


def unmoved_dice(labels: np.ndarray, values: list[int], frames) -> float:
    """Mean Dice of the frame-0 structure left where it is against each frame's: what a static cine scores."""
    mask0 = np.isin(labels[0], values)
    return float(np.mean([dice(mask0, np.isin(labels[t], values)) for t in frames]))


@pytest.fixture(scope="module")
def lung_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "report"
    rc, err = modiff("evaluate", "--data", "phantom:lung:1", "--model", "modiff-lung-motion",
                     "--frames", str(LUNG_FRAMES), "--phantom-grid", ",".join(map(str, LUNG_GRID)),
                     "--baselines", ",".join(LUNG_METHODS), "--registration-iterations", FAST_REGISTRATION,
                     "--out", str(out))
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return report, (out / "report.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def cardiac_result():
    case = PhantomDataset("cardiac", "test", 1, CARDIAC_FRAMES, shape_ijk=CARDIAC_GRID)[0]
    result = evaluate_case(load_pipeline(None, kind="cardiac"), case, ["static", "modiff"],
                           registration=RegistrationSettings(iterations=(20, 0, 0)))
    return case, result


# -- which structures are scored --------------------------------------------------------------------------
def test_dice_structures_groups_the_phantom_and_acdc_labels():
    lung = make_phantom("lung", num_frames=2, seed=0, shape_ijk=(16, 16, 8)).label_names
    values = {name: v for v, name in lung.items()}
    nodules = sorted(n for n in values if n.startswith("nodule_"))
    assert nodules and {"body", "heart", "airways", "ribs"} <= set(values)  # not scored
    assert phys.dice_structures("lung", lung) == {
        "lung": {"lung": sorted(values[n] for n in ["lung_right", "lung_left", "vessels"] + nodules)},
        "nodules": {n: [values[n]] for n in nodules}}
    cardiac = make_phantom("cardiac", num_frames=2, seed=0, shape_ijk=(16, 16, 8)).label_names
    values = {name: v for v, name in cardiac.items()}
    assert "rv_myocardium" in values  # the RV's myocardium is not the scored (LV) myocardium
    assert phys.dice_structures("cardiac", cardiac) == {"lv_blood": {"lv_blood": [values["lv_blood"]]},
                                                        "myocardium": {"myocardium": [values["myocardium"]]}}
    # ACDC: 1 right ventricle, 2 myocardium, 3 left ventricle (the blood pool)
    assert ACDC_LABEL_NAMES[1] == "right ventricle"
    assert phys.dice_structures("cardiac", ACDC_LABEL_NAMES) == {"lv_blood": {"lv_blood": [3]},
                                                                 "myocardium": {"myocardium": [2]}}
    # a user's names; groups without a label are left out
    assert phys.dice_structures("cardiac", {1: "LV", 2: "LV-Myo", 4: "rv_myocardium"}) == {
        "lv_blood": {"lv_blood": [1]}, "myocardium": {"myocardium": [2]}}
    assert phys.dice_structures("cardiac", {1: "rv_blood", 4: "rv_myocardium"}) == {}
    assert phys.dice_structures("lung", {1: "body", 2: "lung_left"}) == {"lung": {"lung": [2]}}
    assert phys.dice_structures("lung", {1: "body", 2: "nodule_a", 3: "nodule_b"}) == {
        "lung": {"lung": [2, 3]}, "nodules": {"nodule_a": [2], "nodule_b": [3]}}


def test_label_overlap_scores_carried_frame0_labels_where_the_case_has_labels():
    """Labels at frames 0 and 2 only (as ACDC's ED and ES); frame 2 is frame 0 moved one voxel along i."""
    geometry = Geometry((8, 16, 16), (2.0, 2.0, 2.0))
    label0 = np.zeros((8, 16, 16), np.int16)
    label0[1:7, 1:15, 1:15] = 1  # body: not scored
    label0[2:6, 3:13, 2:7] = 2  # lung_right
    label0[2:6, 3:13, 8:13] = 3  # lung_left
    label0[3, 5, 4] = 5  # vessels
    label0[3:5, 8:10, 9:11] = 21  # nodule_1, two voxels wide
    label2 = np.roll(label0, 1, axis=2)
    names = {1: "body", 2: "lung_right", 3: "lung_left", 5: "vessels", 21: "nodule_1"}
    frames = VolumeSequence(np.zeros((3, 8, 16, 16), np.float32), geometry)
    case = Case4D("synthetic", frames, {0: Volume(label0, geometry), 2: Volume(label2, geometry)},
                  meta={"label_names": names, "kind": "lung"})
    overlap = _LabelOverlap(case, "lung", 3)
    assert overlap.active and overlap.frames == [2]
    lung = [2, 3, 5, 21]
    still = MotionFields(np.zeros((3, 8, 16, 16, 3), np.float32), geometry, {})
    summary, per_frame, details = overlap.score(still, [1, 2])
    assert set(summary) == set(DICE_KEYS["lung"]) and set(per_frame) == {2} and details["frames"] == [2]
    assert summary["dice_lung"] == pytest.approx(dice(np.isin(label0, lung), np.isin(label2, lung)))
    assert summary["dice_nodules"] == pytest.approx(0.5)  # half the nodule overlaps after a one-voxel move
    assert summary["dice_lung_min"] == summary["dice_lung"] and per_frame[2]["dice_nodules"] == pytest.approx(0.5)
    assert set(per_frame[2]["dice_structures"]) == {"lung", "nodule_1"}
    # the motion that made frame 2 carries every structure onto it exactly
    moved = np.zeros((3, 8, 16, 16, 3), np.float32)
    moved[2] = geometry.direction[:, 0] * geometry.spacing[0]
    summary, _, _ = overlap.score(MotionFields(moved, geometry, {}), [1, 2])
    assert summary["dice_lung"] == pytest.approx(1.0) and summary["dice_nodules"] == pytest.approx(1.0)
    # a frame not scored (a frame given to a privileged method) does not enter the summary
    summary, per_frame, _ = overlap.score(still, [1])
    assert all(math.isnan(summary[k]) for k in DICE_KEYS["lung"]) and "dice_lung" in per_frame[2]


# -- lung: the command line ------------------------------------------------------------------------------
def test_lung_dice_is_bounded_per_frame_and_ordered_static_modiff_true_motion(lung_run):
    report, _ = lung_run
    assert report["format_version"] == 4
    case = report["cases"][0]
    phantom = make_phantom("lung", num_frames=LUNG_FRAMES, seed=case["info"]["seed"], shape_ijk=LUNG_GRID)
    structures = phys.dice_structures("lung", phantom.label_names)
    lung_values = structures["lung"]["lung"]
    for name in LUNG_METHODS:
        entry = case["methods"][name]
        assert entry["available"], (name, entry["skipped"])
        s = entry["summary"]
        for group in ("lung", "nodules"):
            assert finite_unit(s[f"dice_{group}"]) and finite_unit(s[f"dice_{group}_min"]), (name, group)
            assert s[f"dice_{group}_min"] <= s[f"dice_{group}"]
            assert report["methods"][name][f"dice_{group}"] == pytest.approx(s[f"dice_{group}"])  # one case
        # every frame after frame 0 carries its Dice; the summary is the mean and the worst of the scored ones
        assert [f["frame"] for f in entry["per_frame"]] == list(range(1, LUNG_FRAMES))
        for f in entry["per_frame"]:
            assert finite_unit(f["dice_lung"]) and finite_unit(f["dice_nodules"])
            assert set(f["dice_structures"]) == {"lung", *structures["nodules"]}
            assert f["dice_nodules"] == min(f["dice_structures"][n] for n in structures["nodules"])  # the worst
        scored = [f["dice_lung"] for f in entry["per_frame"] if f["scored"]]
        assert s["dice_lung"] == pytest.approx(np.mean(scored)) and s["dice_lung_min"] == pytest.approx(min(scored))
        assert entry["label_dice"]["frames"] == entry["scored_frames"]
    for ref in ("true_motion", "registration_floor"):
        s = case["reference"][ref]["summary"]
        assert all(finite_unit(s[k]) for k in DICE_KEYS["lung"]), ref
        assert case["reference"][ref]["label_dice"]["frames"] == list(range(1, LUNG_FRAMES))
    dice_of = {name: case["methods"][name]["summary"]["dice_lung"] for name in ("static", "modiff")}
    dice_of["true_motion"] = case["reference"]["true_motion"]["summary"]["dice_lung"]
    # measured 0.974 < 0.981 < 0.986: the true motion's own fields are the ceiling
    assert dice_of["static"] + 0.003 < dice_of["modiff"] <= dice_of["true_motion"]
    assert dice_of["true_motion"] > 0.97
    # static leaves the frame-0 labels where they are: its Dice is their plain overlap with each frame's
    assert dice_of["static"] == pytest.approx(
        unmoved_dice(phantom.labels.frames, lung_values, range(1, LUNG_FRAMES)), abs=1e-3)


def test_privileged_modiff_methods_are_not_scored_on_their_given_frames(lung_run):
    report, md = lung_run
    case = report["cases"][0]
    key = case["key_frame"]
    expected = {"modiff-two-frame": [key], "modiff-partial": given_frames("modiff-partial", LUNG_FRAMES, key)}
    assert expected["modiff-partial"] == [3, 6]  # 30 % and 60 % of a 10-frame cycle
    for name, given in expected.items():
        assert METHOD_INFO[name].privileged and METHOD_INFO[name].uses_model
        entry = case["methods"][name]
        assert entry["privileged_input"] is True and entry["given_frames"] == given
        assert entry["scored_frames"] == [t for t in range(1, LUNG_FRAMES) if t not in given]
        assert [f["frame"] for f in entry["per_frame"] if not f["scored"]] == given
        for f in entry["per_frame"]:
            if f["frame"] in given:
                assert f["nmse"] == 0.0  # the given true frames are returned as they are
    for name in ("static", "modiff"):
        assert case["methods"][name]["scored_frames"] == list(range(1, LUNG_FRAMES))
        assert "given_frames" not in case["methods"][name]
    # the *_common metrics: every method on the frames no method of the run was given
    common = [t for t in range(1, LUNG_FRAMES) if t not in {key, 3, 6}]
    for name in LUNG_METHODS:
        entry = case["methods"][name]
        frames = {f["frame"]: f for f in entry["per_frame"]}
        for metric in ("psnr_db", "ssim", "nmse", "landmark_error_mm"):
            assert entry["summary"][f"{metric}_common"] == pytest.approx(
                np.mean([frames[t][metric] for t in common]), rel=1e-6), (name, metric)
    # given more than frame 0, both follow the landmarks better than plain MoDiff (measured 1.25, 1.25 vs 1.99 mm)
    plain = case["methods"]["modiff"]["summary"]["landmark_error_mm"]
    for name in expected:
        assert case["methods"][name]["summary"]["landmark_error_mm"] < 0.8 * plain, name
        assert case["methods"][name]["summary"]["landmark_error_mm_common"] < \
            0.8 * case["methods"]["modiff"]["summary"]["landmark_error_mm_common"], name
    assert "| modiff-two-frame (privileged) |" in md and "| modiff-partial (privileged) |" in md


def test_report_md_shows_the_dice_columns_with_three_decimals(lung_run):
    report, md = lung_run
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    titles = [c.strip() for c in header.strip("|").split("|")]
    for title in ("Dice lung", "Dice lung, worst frame", "Dice nodules (worst nodule)", "Dice nodules, worst frame"):
        assert title in titles, title
    column = {key: titles.index(title) for key, title in (("dice_lung", "Dice lung"),
                                                          ("dice_nodules_min", "Dice nodules, worst frame"))}
    rows = {"static": "| static |", "modiff": "| modiff |", "true_motion": "| *true motion (own fields)* |",
            "registration_floor": "| *true cine (registration floor)* |"}
    for name, start in rows.items():
        cells = [c.strip() for c in next(line for line in lines if line.startswith(start)).strip("|").split("|")]
        source = report["reference"][name] if name in report["reference"] else report["methods"][name]
        for key, index in column.items():
            assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}", cells[index]), (name, key, cells[index])
            assert cells[index].split(" ± ")[0] == f"{source[key]:.3f}"


# -- cardiac ---------------------------------------------------------------------------------------------
def test_cardiac_dice_and_lv_volume_error_in_percent_of_edv(cardiac_result):
    case, result = cardiac_result
    edv = result["truth"]["edv_ml"]
    assert edv > 0.0
    entries = {name: result["methods"][name] for name in ("static", "modiff")}
    entries.update({ref: result["reference"][ref] for ref in ("true_motion", "registration_floor")})
    for name, entry in entries.items():
        s = entry["summary"]
        assert all(finite_unit(s[k]) for k in DICE_KEYS["cardiac"]), name
        assert s["dice_lv_blood_min"] <= s["dice_lv_blood"] and s["dice_myocardium_min"] <= s["dice_myocardium"]
        assert math.isfinite(s["lv_volume_error_pct"])
        assert s["lv_volume_error_pct"] == pytest.approx(100.0 * s["lv_volume_error_ml"] / edv)
    for name in ("static", "modiff"):
        for f in result["methods"][name]["per_frame"]:
            assert finite_unit(f["dice_lv_blood"]) and finite_unit(f["dice_myocardium"])
            assert set(f["dice_structures"]) == {"lv_blood", "myocardium"}
    dice_of = {name: entry["summary"] for name, entry in entries.items()}
    # LV blood pool, measured 0.923 < 0.948 < 0.972
    assert dice_of["static"]["dice_lv_blood"] + 0.01 < dice_of["modiff"]["dice_lv_blood"] < \
        dice_of["true_motion"]["dice_lv_blood"] - 0.01
    for name in ("static", "modiff"):
        assert dice_of[name]["dice_myocardium"] < dice_of["true_motion"]["dice_myocardium"]
    values = phys.dice_structures("cardiac", case.meta["label_names"])
    for group in ("lv_blood", "myocardium"):
        assert dice_of["static"][f"dice_{group}"] == pytest.approx(unmoved_dice(
            case.labels.frames, values[group][group], range(1, CARDIAC_FRAMES)), abs=1e-3), group


# -- a latent-family model -------------------------------------------------------------------------------
def test_privileged_modiff_methods_need_a_motion_model():
    latent = MoDiffPipeline.from_config(tiny_config("lung"))  # untrained: only its family matters
    assert latent.config.family == "latent"
    case = PhantomDataset("lung", "test", 1, 4, shape_ijk=(32, 32, 16))[0]
    result = evaluate_case(latent, case, ["modiff-two-frame", "modiff-partial"], motion_metrics=False)
    for name in ("modiff-two-frame", "modiff-partial"):
        entry = result["methods"][name]
        assert entry["available"] is False and "motion model" in entry["skipped"], entry["skipped"]
        assert all(v is None for v in entry["summary"].values())
