"""Puncture-planning overlays against real Slicer MRML (slicer-core): the shared scenarios and extra checks."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_headless import make_scene, require_slicer

slicer = require_slicer()

from MoDiffTesting import mrml_scenarios  # noqa: E402

PLAN_SCENARIOS = [s for s in mrml_scenarios.SCENARIOS if s.__name__.startswith("scenario_plan")]


@pytest.fixture
def scene():
    with make_scene() as hs:
        yield hs.scene


@pytest.mark.parametrize("scenario", PLAN_SCENARIOS, ids=lambda f: f.__name__)
def test_plan_scenario(scenario, scene):
    scenario(scene)


def test_scenario_catches_a_path_that_never_changes_colour(scene, monkeypatch):
    """Not vacuous: overlays that always paint the path green fail the shared scenario."""
    from MoDiffLib.mrml import planning

    monkeypatch.setattr(planning, "path_color", lambda frame: planning.COLOR_GATING)
    with pytest.raises(AssertionError, match="colour"):
        mrml_scenarios.scenario_plan_overlays_follow_the_cine(scene)


def test_scenario_catches_a_target_that_does_not_move(scene, monkeypatch):
    """Not vacuous: a motion sequence of identity transforms leaves the target on frame 0 and fails."""
    from MoDiffLib.mrml import planning

    original = planning.grid_transform_node

    def still(fields, t, step=1):
        return original(type(fields)(np.zeros_like(fields.displacements), fields.geometry, {}), t, step)

    monkeypatch.setattr(planning, "grid_transform_node", still)
    with pytest.raises(AssertionError, match="target shown at"):
        mrml_scenarios.scenario_plan_overlays_follow_the_cine(scene)


def test_grid_transform_reproduces_a_non_linear_field(scene):
    """With the phantom's true (non-linear, sliding) motion, the target under the grid transform is shown
    exactly where the plan (trilinear interpolation of the same field) puts it, in every frame."""
    from MoDiffLib.motion import MotionFields
    from MoDiffLib.mrml import build_cine, show_plan
    from MoDiffLib.mrml.volumes import node_from_volume
    from MoDiffLib.phantom import make_phantom
    from MoDiffLib.planning import plan_puncture

    case = make_phantom("lung", num_frames=4, seed=3, shape_ijk=(48, 48, 24))
    fields = MotionFields.from_sequence(case.motion)
    input_node = node_from_volume(scene, case.frames.frame(0), "CT")
    _, browser = build_cine(scene, case.frames, input_node, {})
    target = case.landmarks["nodule_1"][0]
    entry = target + np.array([60.0, 0.0, 0.0])
    plan = plan_puncture(fields, entry, target)
    nodes = show_plan(scene, plan, browser, fields)
    track = plan.target_track()
    assert np.ptp(track[:, 2]) > 2.0  # the nodule moves: the check below means something
    for t in range(4):
        browser.SetSelectedItemNumber(t)
        p = [0.0, 0.0, 0.0]
        nodes.target.GetNthControlPointPositionWorld(0, p)
        assert np.abs(np.array(p) - track[t]).max() < 1e-3, t
        # and the plan's target is where the phantom's landmark really is (truth fields: < 0.3 mm)
        assert np.linalg.norm(track[t] - case.landmarks["nodule_1"][t]) < 0.3

    # a coarser grid (every 2nd point) stays close on this smooth field
    coarse = show_plan(scene, plan, browser, fields, grid_step=2)
    errors = []
    for t in range(4):
        browser.SetSelectedItemNumber(t)
        p = [0.0, 0.0, 0.0]
        coarse.target.GetNthControlPointPositionWorld(0, p)
        errors.append(np.linalg.norm(np.array(p) - track[t]))
    assert max(errors) < 1.0, errors


def test_label_map_node_helpers(scene):
    """A label map node with a colour table gives its voxels, geometry and the names of the labels present."""
    from MoDiffLib.mrml.planning import label_names_of, labelmap_from_node
    from MoDiffLib.mrml.volumes import set_node_voxels

    geometry = mrml_scenarios.oblique_geometry((6, 7, 8))
    labels = np.zeros(geometry.shape_kji, np.uint8)
    labels[1:3, 2:4, 2:5] = 5
    labels[4, 5, 6] = 11
    node = slicer.vtkMRMLLabelMapVolumeNode()
    set_node_voxels(node, labels, geometry.ijk_to_ras())
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "risk colours")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(12)
    colors.SetColor(5, "vessels", 1.0, 0.0, 0.0, 1.0)
    colors.SetColor(11, "ribs", 1.0, 1.0, 1.0, 1.0)
    node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    volume = labelmap_from_node(node)
    assert np.array_equal(volume.array, labels)
    assert volume.geometry.is_close(geometry, atol_mm=1e-9)
    assert label_names_of(node) == {5: "vessels", 11: "ribs"}
    with pytest.raises(mrml_scenarios.InputError):
        labelmap_from_node(None)


def test_module_data_path_cine_to_plan_process_to_overlays(scene, tmp_path):
    """What MoDiffLogic.startPlan/finishPlan do, without Qt: Slicer writes the cine, `modiff plan` runs as a
    background process (JSON progress), and its plan.json + motion.seq.nrrd become the overlays."""
    import json
    import sys

    from MoDiffLib.planning.command import plan_command
    from MoDiffLib.io import read_sequence, write_volume
    from MoDiffLib.motion import MotionFields
    from MoDiffLib.mrml import build_cine, labelmap_from_node, save_cine, show_plan
    from MoDiffLib.mrml.volumes import node_from_volume, set_node_voxels
    from MoDiffLib.phantom import make_phantom
    from MoDiffLib.planning import PuncturePlan, skin_entry
    from MoDiffLib.process_runner import ProcessRunner, child_environment
    from MoDiffLib.volume import Volume

    case = make_phantom("lung", num_frames=4, seed=3, shape_ijk=(48, 48, 24))
    input_node = node_from_volume(scene, case.frames.frame(0), "CT")
    cine, browser = build_cine(scene, case.frames, input_node, {})
    labels0 = Volume(case.labels.frames[0], case.frames.geometry, "risk")
    risk_node = slicer.vtkMRMLLabelMapVolumeNode()
    set_node_voxels(risk_node, np.where(np.isin(labels0.array, [5, 11]), labels0.array, 0), labels0.geometry.ijk_to_ras())
    scene.AddNode(risk_node)
    target = case.landmarks["nodule_1"][0]
    entry = skin_entry(labels0, target, [np.sign(target[0]) or 1.0, 0.0, 0.0])

    cine_path = save_cine(cine, tmp_path / "cine.seq.nrrd")
    risk_path = write_volume(labelmap_from_node(risk_node), tmp_path / "risk.nrrd")
    (tmp_path / "names.json").write_text(json.dumps({"5": "vessels", "11": "ribs"}))
    command = plan_command(cine_path, tmp_path / "plan", entry, target, risk_path, tmp_path / "names.json", 4.0, 2.0,
                           python=sys.executable)
    events = []
    done = ProcessRunner(command, on_event=events.append, env=child_environment()).start().wait(timeout=300)
    assert done["output"] == str(tmp_path / "plan")
    assert [e["stage"] for e in events if e["event"] == "progress"][-1] == "write"

    plan = PuncturePlan.from_dict(json.loads((tmp_path / "plan" / "plan.json").read_text()))
    fields = MotionFields.from_sequence(read_sequence(tmp_path / "plan" / "motion.seq.nrrd"))
    assert set(plan.structures) == {"vessels", "ribs"}
    nodes = show_plan(scene, plan, browser, fields)
    for t in range(4):
        browser.SetSelectedItemNumber(t)
        p = [0.0, 0.0, 0.0]
        nodes.target.GetNthControlPointPositionWorld(0, p)
        np.testing.assert_allclose(p, plan.frames[t].target_ras, atol=1e-3)
        # estimated motion: the shown target is within 1.5 mm of where the nodule really is
        assert np.linalg.norm(np.array(p) - case.landmarks["nodule_1"][t]) < 1.5
