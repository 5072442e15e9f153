"""Puncture planning: inputs, per-frame analysis, summary, plot; and the plan from ESTIMATED motion
against the plan from the phantom's TRUE motion (amplitude within 1.5 mm, same gating frames)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MoDiffLib.errors import InputError
from MoDiffLib.motion import MotionFields, estimate_motion
from MoDiffLib.phantom import make_phantom
from MoDiffLib.planning import (
    PuncturePlan,
    gating_runs,
    names_beside,
    parse_label_names,
    parse_point,
    plan_puncture,
    plot_plan,
    recommend_frame,
    risk_structures,
    segment_distances,
    skin_entry,
)
from MoDiffLib.volume import Geometry, Volume, VolumeSequence

RISKS = ["vessels", "ribs", "heart", "aorta", "spine", "sternum", "airways", "liver", "spleen", "stomach"]


# -- inputs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("12.5,-40,-160", (12.5, -40.0, -160.0)),
    (" 1, 2 ,3 ", (1.0, 2.0, 3.0)),
    ("[1 2 3]", (1.0, 2.0, 3.0)),
    ("-1e1,+2.,.5", (-10.0, 2.0, 0.5)),
])
def test_parse_point(text, expected):
    np.testing.assert_allclose(parse_point(text), expected)


@pytest.mark.parametrize("text, match", [
    ("1,2", "three numbers"), ("1,2,3,4", "three numbers"), ("a,b,c", "three numbers"), ("", "three numbers"),
    ("1;2;3", "three numbers"), ("nan,0,0", "NaN"), ("0,inf,0", "NaN or infinite"), ("1,,2", "three numbers"),
])
def test_parse_point_rejects(text, match):
    with pytest.raises(InputError, match=match):
        parse_point(text, "--entry")


def test_label_names_in_every_accepted_form(tmp_path):
    expected = {5: "vessels", 11: "ribs"}
    assert parse_label_names("vessels=5,ribs=11") == expected
    assert parse_label_names("5=vessels, 11=ribs") == expected
    assert parse_label_names('{"5": "vessels", "11": "ribs"}') == expected
    assert parse_label_names('{"vessels": 5, "ribs": 11}') == expected
    (tmp_path / "names.json").write_text(json.dumps({"5": "vessels", "11": "ribs"}))
    assert parse_label_names(str(tmp_path / "names.json")) == expected
    (tmp_path / "params.json").write_text(json.dumps({"seed": 1, "label_names": {"5": "vessels", "11": "ribs"}}))
    assert parse_label_names(str(tmp_path / "params.json")) == expected
    assert names_beside(tmp_path / "labels.seq.nrrd") == expected
    assert names_beside(tmp_path / "sub" / "labels.nrrd") is None
    for bad, match in [("vessels", "name=value"), ("vessels=x", "whole number"), ("vessels=0", "above 0"),
                       ("{bad json", "JSON"), (str(tmp_path / "missing.json"), "does not exist"), ("=5", "name missing")]:
        with pytest.raises(InputError, match=match):
            parse_label_names(bad)


def test_risk_structures_checks_grid_frames_and_selection():
    g = Geometry((8, 9, 10), spacing=(2.0, 2.0, 3.0))
    labels = np.zeros(g.shape_kji, np.uint8)
    labels[1:7, 1:8, 1:9] = 1  # body around everything
    labels[3:5, 3:6, 3:6] = 21  # the target's nodule
    labels[2, 2, 7] = 5
    entry = g.ijk_to_ras_points(np.array([1.0, 4.0, 4.0]))
    target = g.ijk_to_ras_points(np.array([4.0, 4.0, 4.0]))
    risk = risk_structures(Volume(labels, g), g, 3, {1: "body", 5: "vessels"}, entry_ras=entry, target_ras=target)
    assert risk.names == {5: "vessels"}
    assert risk.ignored == {"body": "contains the entry", "label_21": "contains the target"}
    chosen = risk_structures(Volume(labels, g), g, 3, {1: "body", 5: "vessels"}, structures=["vessels", "21"])
    assert chosen.names == {5: "vessels", 21: "label_21"} and chosen.ignored == {"body": "not selected"}
    with pytest.raises(InputError, match="not in the risk label map"):
        risk_structures(Volume(labels, g), g, 3, {}, structures=["heart"])
    moved = Geometry(g.shape_kji, g.spacing, origin_ras=(0.0, 0.0, 5.0))
    with pytest.raises(InputError, match="not on the grid of the cine"):
        risk_structures(Volume(labels, moved), g, 3)
    with pytest.raises(InputError, match="4 frames but the cine has 3"):
        risk_structures(VolumeSequence(np.stack([labels] * 4), g), g, 3)
    with pytest.raises(InputError, match="fractional"):
        risk_structures(Volume(labels + 0.5, g), g, 3)
    per_frame = risk_structures(VolumeSequence(np.stack([labels] * 3), g), g, 3, structures=["5"])
    assert per_frame.per_frame and per_frame.labels.shape == (3,) + g.shape_kji


def test_geometry_helpers():
    start, end = np.zeros(3), np.array([10.0, 0.0, 0.0])
    points = np.array([[5.0, 3.0, 0.0], [-4.0, 0.0, 3.0], [12.0, 0.0, 0.0], [7.0, 0.0, 0.0]])
    np.testing.assert_allclose(segment_distances(points, start, end), [3.0, 5.0, 2.0, 0.0])
    assert gating_runs([True, False, True, True, False, True]) == [[2, 3], [5, 0]]
    assert gating_runs([True] * 3) == [[0, 1, 2]] and gating_runs([False] * 3) == []
    assert gating_runs([False, True, True, True, False]) == [[1, 2, 3]]
    assert gating_runs([True, False, True, True, False, True], cyclic=False) == [[0], [2, 3], [5]]
    assert gating_runs([True, True, False, True], cyclic=False) == [[0, 1], [3]]


# -- analysis on synthetic motion ------------------------------------------------------------------------------
def synthetic(frames=8):
    """A block of tissue moving up to 6 mm superior, a 'vessel' slab beside the path that moves with it."""
    g = Geometry((30, 30, 30), spacing=(2.0, 2.0, 2.0), origin_ras=(-30.0, -30.0, -30.0))
    breathing = np.sin(np.pi * np.arange(frames) / frames) ** 2
    d = np.zeros((frames,) + g.shape_kji + (3,), np.float32)
    d[..., 2] = 6.0 * breathing[:, None, None, None]
    fields = MotionFields(d, g, {"method": "synthetic"})
    labels = np.zeros(g.shape_kji, np.uint8)
    centres = g.voxel_centers_ras()
    labels[(np.abs(centres[..., 0]) < 4) & (centres[..., 2] > 6) & (centres[..., 2] < 12)] = 5  # slab above the path
    return g, fields, labels


def test_plan_per_frame_values_and_gating_on_known_motion():
    g, fields, labels = synthetic()
    entry, target = np.array([0.0, -25.0, 0.0]), np.array([0.0, 10.0, 0.0])
    risk = risk_structures(Volume(labels, g), g, 8, {5: "vessels"})
    plan = plan_puncture(fields, entry, target, risk, margin_mm=5.0, tolerance_mm=3.0)
    breathing = np.sin(np.pi * np.arange(8) / 8) ** 2
    track = plan.target_track()
    np.testing.assert_allclose(track[:, 2], 6.0 * breathing, atol=1e-4)  # rounded to 0.1 um
    np.testing.assert_allclose(track[:, :2], np.tile(target[:2], (8, 1)), atol=1e-6)
    assert plan.summary["amplitude_mm"] == pytest.approx({"LR": 0.0, "AP": 0.0, "SI": 6.0}, abs=1e-4)
    for f in plan.frames:
        np.testing.assert_allclose(f.path_length_mm, np.linalg.norm(track[f.index] - entry), atol=1e-3)
        # the slab's lowest voxel centres (S = 8 mm on frame 0) move up with the target, which is the highest
        # point of the path: the clearance stays 8 mm
        expected_clearance = 8.0 + 6.0 * breathing[f.index] - track[f.index, 2]
        assert f.min_clearance_mm["vessels"] == pytest.approx(expected_clearance, abs=1e-3)
        assert f.within_tolerance == (6.0 * breathing[f.index] <= 3.0 + 1e-9)
        assert f.gating == (f.clear and f.within_tolerance)
    assert plan.gating_frames == [f.index for f in plan.frames if f.gating]
    assert plan.recommended_frame in plan.gating_frames


def test_intersecting_path_is_blocked_and_reported():
    g, fields, labels = synthetic(frames=4)
    risk = risk_structures(Volume(labels, g), g, 4, {5: "vessels"})
    plan = plan_puncture(fields, [0.0, -25.0, 9.0], [0.0, 20.0, 9.0], risk, margin_mm=1.0)  # straight through the slab
    assert all(f.intersects == ["vessels"] and f.min_clearance_mm["vessels"] == 0.0 and not f.clear for f in plan.frames)
    assert plan.recommended_frame is None and plan.gating_frames == []
    assert any("crosses vessels in every frame" in w for w in plan.summary["warnings"])


def test_per_frame_labels_are_used_as_given():
    g, fields, labels = synthetic(frames=4)
    moving = np.stack([np.roll(labels, shift=t, axis=0) for t in range(4)])  # the slab climbs one slice per frame
    risk = risk_structures(VolumeSequence(moving, g), g, 4, {5: "vessels"})
    still = MotionFields(np.zeros_like(fields.displacements), g, {})
    plan = plan_puncture(still, [0.0, -25.0, 0.0], [0.0, 10.0, 0.0], risk)
    clearances = [f.min_clearance_mm["vessels"] for f in plan.frames]
    np.testing.assert_allclose(np.diff(clearances), 2.0 * 1.0, atol=1e-6)  # one 2 mm slice per frame


@pytest.mark.parametrize("entry, target, match", [
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], "different points"),
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.4], "different points"),
    ([0.0, 0.0, 0.0], [500.0, 0.0, 0.0], "target point .* outside the volume"),
    ([0.0, -31.5, 0.0], [0.0, 0.0, 0.0], "entry point .* outside the volume"),
    ([np.nan, 0.0, 0.0], [0.0, 0.0, 0.0], "NaN"),
    ([0.0, 0.0], [0.0, 0.0, 0.0], "three coordinates"),
])
def test_bad_points_are_refused(entry, target, match):
    g, fields, labels = synthetic(frames=2)
    with pytest.raises(InputError, match=match):
        plan_puncture(fields, entry, target)


def test_bad_margin_tolerance_and_risk_are_refused():
    g, fields, labels = synthetic(frames=2)
    for kwargs, match in [({"margin_mm": -1.0}, "safety margin"), ({"tolerance_mm": float("nan")}, "tolerance"),
                          ({"margin_mm": "wide"}, "number of mm")]:
        with pytest.raises(InputError, match=match):
            plan_puncture(fields, [0.0, -25.0, 0.0], [0.0, 10.0, 0.0], **kwargs)
    other = Geometry(g.shape_kji, (2.0, 2.0, 2.5))
    risk = risk_structures(Volume(labels, other), other, 2)
    with pytest.raises(InputError, match="grid"):
        plan_puncture(fields, [0.0, -25.0, 0.0], [0.0, 10.0, 0.0], risk)


def test_recommendation_is_the_middle_of_the_longest_window():
    g, fields, labels = synthetic(frames=8)
    plan = plan_puncture(fields, [0.0, -25.0, 0.0], [0.0, 10.0, 0.0], None, tolerance_mm=1.0)
    # |displacement| = 6 sin^2(pi t / 8): within 1 mm at frames 7, 0, 1 -> one window wrapping around
    assert plan.gating_frames == [0, 1, 7]
    assert plan.summary["gating_windows"] == [[7, 0, 1]]
    assert plan.recommended_frame == 0
    part = plan_puncture(fields, [0.0, -25.0, 0.0], [0.0, 10.0, 0.0], None, tolerance_mm=1.0, cyclic=False)
    assert part.summary["gating_windows"] == [[0, 1], [7]] and part.recommended_frame == 0
    assert part.summary["cyclic"] is False
    frames = plan.frames
    for f in frames:
        f.gating = f.index in (2, 3, 4, 6)
    assert recommend_frame(frames) in (3,)  # middle of [2, 3, 4]


def test_plan_json_round_trip_and_plot(tmp_path):
    g, fields, labels = synthetic(frames=6)
    risk = risk_structures(Volume(labels, g), g, 6, {5: "vessels"})
    plan = plan_puncture(fields, [0.0, -25.0, 0.0], [0.0, 10.0, 0.0], risk, index_values=[f"{t * 0.5:g}" for t in range(6)])
    data = json.loads(json.dumps(plan.to_dict()))
    assert PuncturePlan.from_dict(data).to_dict() == data
    for key in ("frames", "summary"):
        assert key in data
    frame = data["frames"][3]
    assert set(frame) >= {"index", "target_ras", "displacement_mm", "path_length_mm", "min_clearance_mm", "clear"}
    assert frame["index_value"] == "1.5"
    assert set(data["summary"]["amplitude_mm"]) == {"LR", "AP", "SI"}
    assert set(data["summary"]) >= {"gating_frames", "recommended_frame"}
    with pytest.raises(InputError, match="not a MoDiff plan"):
        PuncturePlan.from_dict({"frames": [{}]})
    out = plot_plan(plan, tmp_path / "plan.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def ramp_spread(g, frames, level):
    """Spread sequence (mm) rising along R, ``level[t]`` at R = 1 mm in frame t (linear: trilinear sampling is exact)."""
    r = g.voxel_centers_ras()[..., 0]
    return VolumeSequence(np.stack([lv * (1.0 + (r - 1.0) / 40.0) for lv in level]).astype(np.float32), g, name="spread")


def test_motion_spread_narrows_the_gating_window():
    g, fields, _ = synthetic(frames=8)
    entry, target = [0.0, -25.0, 0.0], [1.0, 10.0, 0.0]  # R = 1 mm: between voxel centres
    # |displacement| = 6 sin^2(pi t / 8): 0, 0.88, 3, 5.1, 6, 5.1, 3, 0.88 mm -> within 2 mm at frames 7, 0, 1
    plain = plan_puncture(fields, entry, target, None, tolerance_mm=2.0)
    assert plain.gating_frames == [0, 1, 7] and plain.recommended_frame == 0
    assert all(f.target_spread_mm is None for f in plain.frames)
    assert plain.summary["spread_factor"] is None and plain.summary["max_target_spread_mm"] is None
    assert plain.summary["warnings"] == []
    assert plan_puncture(fields, entry, target, None, tolerance_mm=2.0, spread=None).to_dict() == plain.to_dict()

    # 2 x 0.7 mm of spread on top of 0.88 mm of mean motion leaves the 2 mm tolerance at frames 1 and 7
    level = [0.0] + [0.7] * 7
    wide = plan_puncture(fields, entry, target, None, tolerance_mm=2.0, spread=ramp_spread(g, 8, level))
    assert [f.target_spread_mm for f in wide.frames] == pytest.approx(level, abs=1e-4)
    assert wide.gating_frames == [0] and wide.summary["within_tolerance_frames"] == [0]
    assert wide.summary["spread_factor"] == 2.0 and wide.summary["max_target_spread_mm"] == pytest.approx(0.7, abs=1e-4)
    assert wide.summary["warnings"] == [
        "2 frames (1, 7) dropped from the gating window because of motion uncertainty: the mean target motion is "
        "within 2 mm there, but not with 2 x its spread over the motion samples"]
    # the mean motion itself is unchanged
    assert [f.target_ras for f in wide.frames] == [f.target_ras for f in plain.frames]
    # a small spread, or factor 0, gates as the mean does, and warns of nothing
    for kwargs in ({"spread": ramp_spread(g, 8, [0.0] + [0.05] * 7)},
                   {"spread": ramp_spread(g, 8, level), "spread_factor": 0.0}):
        same = plan_puncture(fields, entry, target, None, tolerance_mm=2.0, **kwargs)
        assert same.gating_frames == plain.gating_frames and same.summary["warnings"] == []

    # plan.json keeps the spread; an older plan.json without target_spread_mm still loads
    data = json.loads(json.dumps(wide.to_dict()))
    assert data["frames"][1]["target_spread_mm"] == pytest.approx(0.7, abs=1e-4)
    back = PuncturePlan.from_dict(data)
    assert [f.target_spread_mm for f in back.frames] == [f.target_spread_mm for f in wide.frames]
    assert back.to_dict() == data
    old = json.loads(json.dumps(plain.to_dict()))
    for frame in old["frames"]:
        del frame["target_spread_mm"]
    assert [f.target_spread_mm for f in PuncturePlan.from_dict(old).frames] == [None] * 8


def test_bad_motion_spreads_are_refused():
    g, fields, _ = synthetic(frames=4)
    entry, target = [0.0, -25.0, 0.0], [1.0, 10.0, 0.0]
    good = ramp_spread(g, 4, [0.0, 1.0, 1.0, 1.0])
    nan = ramp_spread(g, 4, [0.0, 1.0, 1.0, 1.0])
    nan.frames[2, 3, 3, 3] = np.nan
    moved = Geometry(g.shape_kji, g.spacing, origin_ras=(-30.0, -30.0, -25.0))
    coarse = Geometry((15, 15, 15), spacing=(4.0, 4.0, 4.0), origin_ras=(-30.0, -30.0, -30.0))
    cases = [
        ({"spread": ramp_spread(g, 3, [0.0, 1.0, 1.0])}, "the motion spread has 3 frames but the motion has 4"),
        ({"spread": VolumeSequence(good.frames, moved)}, "not on the grid of the motion: both 30x30x30 voxels of 2x2x2 "
                                                         "mm, but placed differently"),
        ({"spread": ramp_spread(coarse, 4, [0.0, 1.0, 1.0, 1.0])}, "15x15x15 voxels of 4x4x4 mm vs 30x30x30 voxels of 2x2x2 mm"),
        ({"spread": ramp_spread(g, 4, [0.0, 1.0, -1.0, 1.0])}, "negative values .* a spread is a length >= 0"),
        ({"spread": nan}, "NaN or infinite"),
        ({"spread": fields.to_sequence()}, "vector frames"),
        ({"spread": good.frames}, "must be a VolumeSequence"),
        ({"spread": good, "spread_factor": -1.0}, "spread factor must be a finite number >= 0"),
        ({"spread": good, "spread_factor": float("inf")}, "spread factor"),
    ]
    for kwargs, match in cases:
        with pytest.raises(InputError, match=match):
            plan_puncture(fields, entry, target, **kwargs)


def test_skin_entry_on_a_box():
    g = Geometry((20, 20, 20), spacing=(2.0, 2.0, 2.0), origin_ras=(-19.0, -19.0, -19.0))
    body = np.zeros(g.shape_kji, np.uint8)
    body[2:18, 2:18, 2:18] = 1  # RAS -15..15 on every axis
    entry = skin_entry(Volume(body, g), [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], depth_mm=1.0, min_path_mm=5.0)
    assert entry[0] == pytest.approx(15.0 - 1.0 + 0.5, abs=0.6) and abs(entry[1]) < 1e-9 and abs(entry[2]) < 1e-9
    body[:] = 1  # the body fills the volume: no skin along any ray
    assert skin_entry(Volume(body, g), [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]) is None
    with pytest.raises(InputError, match="zero"):
        skin_entry(Volume(body, g), [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])


# -- estimated vs true motion on a lung phantom ---------------------------------------------------------------
@pytest.fixture(scope="module")
def lung_plans():
    """Seed 0 lung phantom, 6 frames at the default grid; the plan's motion from the truth and estimated."""
    case = make_phantom("lung", num_frames=6, seed=0)
    truth = MotionFields.from_sequence(case.motion)
    estimated = estimate_motion(case.frames)
    risk, configurations = _configurations(case, truth)
    return case, truth, estimated, risk, configurations


def _configurations(case, truth):
    """Entry directions (fixed list) whose plan under the TRUE motion has a non-trivial gating window."""
    g = case.frames.geometry
    labels0 = Volume(case.labels.frames[0], g, "labels")
    risk = risk_structures(labels0, g, case.frames.num_frames, case.label_names,
                           structures=[n for n in RISKS if n in case.label_names.values()])
    found = []
    for name in sorted(n for n in case.label_names.values() if n.startswith("nodule")):
        target = case.landmarks[name][0]
        for azimuth in range(0, 360, 30):
            for elevation in (-20, 0, 20):
                a, e = np.radians(azimuth), np.radians(elevation)
                entry = skin_entry(labels0, target, [np.cos(a) * np.cos(e), np.sin(a) * np.cos(e), np.sin(e)])
                if entry is None:
                    continue
                plan = plan_puncture(truth, entry, target, risk, margin_mm=5.0, tolerance_mm=3.0)
                if 0 < len(plan.gating_frames) < plan.num_frames:
                    found.append((name, entry, target, plan))
    return risk, found


def test_plan_from_estimated_motion_matches_the_truth(lung_plans):
    """Target amplitude within 1.5 mm per axis and the same gating frames (>= 90 % of frames) as with the
    true motion, for every entry direction that gives a non-trivial gating window."""
    case, truth, estimated, risk, configurations = lung_plans
    assert len(configurations) >= 3, "too few non-trivial plans on this phantom to compare"
    agreements = []
    for name, entry, target, true_plan in configurations:
        plan = plan_puncture(estimated, entry, target, risk, margin_mm=5.0, tolerance_mm=3.0)
        for axis in ("LR", "AP", "SI"):
            assert abs(plan.summary["amplitude_mm"][axis] - true_plan.summary["amplitude_mm"][axis]) <= 1.5, (name, axis)
        agree = np.mean([a.gating == b.gating for a, b in zip(plan.frames, true_plan.frames)])
        agreements.append(agree)
        assert agree >= 0.9, (name, entry, plan.gating_frames, true_plan.gating_frames)
    assert np.mean(agreements) >= 0.9


def test_frame0_labels_moved_by_the_motion_match_the_phantom_labels_per_frame(lung_plans):
    """Moving the frame-0 risk map with the true motion gives the same gating as the phantom's own label
    map of every frame (checks the structure tracking of plan_puncture)."""
    case, truth, _, risk0, configurations = lung_plans
    per_frame = risk_structures(case.labels, case.frames.geometry, case.frames.num_frames, case.label_names,
                                structures=list(risk0.names.values()))
    agreements, differences = [], []
    for name, entry, target, plan0 in configurations:
        plan = plan_puncture(truth, entry, target, per_frame, margin_mm=5.0, tolerance_mm=3.0)
        agreements.append(np.mean([a.gating == b.gating for a, b in zip(plan.frames, plan0.frames)]))
        for a, b in zip(plan.frames, plan0.frames):
            for structure, value in a.min_clearance_mm.items():
                if value is not None and value < 30.0:  # the structures that matter for the decision
                    differences.append(abs(value - b.min_clearance_mm[structure]))
    # the phantom re-renders its labels in every frame (vessels thicken where the lung stretches), so the
    # moved frame-0 map is close to, not identical with, the per-frame maps
    assert np.median(differences) < 0.5 and np.percentile(differences, 90) < 2.0, np.percentile(differences, [50, 90])
    assert np.mean(agreements) >= 0.9, agreements


def test_wrong_motion_is_caught(lung_plans):
    """Not vacuous: with no motion the amplitude and gating comparisons fail."""
    case, truth, _, risk, configurations = lung_plans
    still = MotionFields(np.zeros_like(truth.displacements), truth.geometry, {})
    name, entry, target, true_plan = max(configurations, key=lambda c: c[3].summary["amplitude_mm"]["SI"])
    plan = plan_puncture(still, entry, target, risk, margin_mm=5.0, tolerance_mm=3.0)
    assert abs(plan.summary["amplitude_mm"]["SI"] - true_plan.summary["amplitude_mm"]["SI"]) > 1.5
    assert plan.gating_frames != true_plan.gating_frames
