"""The web viewer without a browser: what ``modiff view`` finds and loads, what each frame shows,
playback, the planning curves, and the MRML scene the views render (slicer-core, no trame).

Nothing here needs the web extra (trame): these run wherever the test extra is installed (CI).
The page itself is tested in a real browser by test_web_browser.py.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from fixtures_web import MARGIN_MM, TOLERANCE_MM, write_planned_case
from slicer_headless import make_scene, require_slicer

from MoDiffLib import cli
from MoDiffLib.errors import InputError
from MoDiffLib.io import read_sequence, write_sequence
from MoDiffLib.volume import VolumeSequence
from MoDiffLib.web import ViewerState, find_cine, load_inputs
from MoDiffLib.web.curves import clearance_axis, curves_svg, frame_ticks, nice_ticks
from MoDiffLib.web.state import STATUS_BLOCKED, STATUS_CLEAR, STATUS_GATING, STATUS_NONE

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_planned_case(tmp_path_factory.mktemp("web-state") / "case")


@pytest.fixture(scope="module")
def inputs(case):
    return load_inputs(case.cine)


def expected_status(frame: dict) -> str:
    if frame["gating"]:
        return STATUS_GATING
    return STATUS_CLEAR if frame["clear"] else STATUS_BLOCKED


# -- finding and loading --------------------------------------------------------------------------------
def test_the_cine_is_found_in_the_folders_modiff_writes(case, tmp_path):
    # modiff phantom's folder: the cine among the label map and the motion fields
    assert find_cine(case.folder) == case.cine
    assert find_cine(case.cine) == case.cine
    # modiff demo's folder (demo-out): cine.seq.nrrd beside input.nrrd
    demo = tmp_path / "demo-out"
    demo.mkdir()
    shutil.copy(case.cine, demo / "cine.seq.nrrd")
    shutil.copy(case.folder / "frame0.nrrd", demo / "input.nrrd")
    assert find_cine(demo) == demo / "cine.seq.nrrd"

    with pytest.raises(InputError, match="does not exist"):
        find_cine(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no cine"):
        find_cine(empty)
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(case.cine, two / "a.seq.nrrd")
    shutil.copy(case.cine, two / "b.seq.nrrd")
    with pytest.raises(InputError, match=r"several cines \(a.seq.nrrd, b.seq.nrrd\)"):
        find_cine(two)


def test_the_plan_its_motion_and_the_risk_labels_beside_the_cine_are_loaded(case, inputs):
    assert inputs.cine.num_frames == 4
    assert inputs.plan_path == case.plan_dir  # modiff plan's default output folder
    assert inputs.fields is not None and inputs.fields.num_frames == 4  # --save-motion
    assert inputs.labels_path == case.folder / "labels.seq.nrrd"  # the plan's source.risk
    assert inputs.risk.per_frame
    assert sorted(inputs.risk.names.values()) == sorted(case.plan["structures"])
    assert inputs.notes == []
    # the folder names the same case
    again = load_inputs(case.folder)
    assert again.cine_path == case.cine and again.plan_path == case.plan_dir


def test_without_a_plan_the_viewer_shows_the_cine_and_says_how_to_get_one(case, tmp_path):
    shutil.copy(case.cine, tmp_path / "cine.seq.nrrd")
    state = ViewerState(load_inputs(tmp_path))
    assert state.inputs.plan is None and state.inputs.risk is None
    assert any("no plan found: run modiff plan" in note for note in state.inputs.notes)
    view = state.view()
    assert view.status == STATUS_NONE and view.path is None and view.target_ras is None
    assert state.curves() is None and state.recommended_frame is None
    assert state.go_to_recommended() is None
    assert "no plan" in curves_svg(state.curves(), 0)
    assert [c.status for c in state.timeline()] == [STATUS_NONE] * 4


def test_a_plan_or_labels_that_do_not_fit_the_cine_are_refused_naming_the_file(case, tmp_path):
    cine = read_sequence(case.cine)
    short = tmp_path / "short.seq.nrrd"
    write_sequence(VolumeSequence(cine.frames[:3], cine.geometry, index_values=cine.index_values[:3]), short)
    with pytest.raises(InputError, match=r"has 4 frames but the cine .*short.seq.nrrd' has 3"):
        load_inputs(short, plan=case.plan_dir)
    with pytest.raises(InputError, match="has no plan.json"):
        load_inputs(case.cine, plan=tmp_path)
    with pytest.raises(InputError, match="the label map .*missing.nrrd' does not exist"):
        load_inputs(case.cine, labels=tmp_path / "missing.nrrd")


# -- the frame shown and playback ---------------------------------------------------------------------
def test_stepping_wraps_around_the_cycle_and_bad_frames_are_refused(inputs):
    state = ViewerState(inputs)
    assert state.frame == 0
    assert state.step(-1) == 3 and state.step(1) == 0 and state.step(6) == 2
    assert state.set_frame(1.0) == 1  # a slider's number
    with pytest.raises(InputError, match="frame 4 does not exist; the cine has frames 0 to 3"):
        state.set_frame(4)
    with pytest.raises(InputError, match="not a whole number"):
        state.set_frame(1.5)
    with pytest.raises(InputError, match="not a frame number"):
        state.set_frame("next")
    assert state.frame == 1  # unchanged by the refused values


def test_play_advances_a_frame_per_tick_and_pause_stops_it(case, inputs):
    state = ViewerState(inputs, frame=2)
    assert not state.tick() and state.frame == 2  # paused: nothing moves
    state.play()
    assert [state.tick() and state.frame for _ in range(3)] == [3, 0, 1]
    assert state.toggle_play() is False and not state.tick() and state.frame == 1
    state.play()
    recommended = case.plan["summary"]["recommended_frame"]
    assert state.go_to_recommended() == recommended and state.frame == recommended
    assert not state.playing  # going to the recommended frame pauses


# -- what each frame shows ----------------------------------------------------------------------------------
def test_each_frame_shows_the_plans_path_target_status_and_clearances(case, inputs):
    state = ViewerState(inputs)
    plan = case.plan
    recommended = plan["summary"]["recommended_frame"]
    for t, frame in enumerate(plan["frames"]):
        view = state.view(t)
        assert view.index == t and view.num_frames == 4
        assert view.status == expected_status(frame)
        assert view.path.entry_ras == pytest.approx(plan["entry_ras"])
        assert view.path.target_ras == pytest.approx(frame["target_ras"])
        assert view.target_ras == pytest.approx(frame["target_ras"])
        assert view.displacement_norm_mm == pytest.approx(frame["displacement_norm_mm"])
        clearances = {s.name: s.clearance_mm for s in view.structures}
        assert clearances == pytest.approx(frame["min_clearance_mm"])
        assert view.recommended == (t == recommended)
    statuses = {state.view(t).status for t in range(4)}
    assert STATUS_GATING in statuses and len(statuses) > 1  # the path changes colour in this case


def test_the_timeline_marks_the_gating_window_the_current_and_the_recommended_frame(case, inputs):
    state = ViewerState(inputs, frame=2)
    cells = state.timeline()
    gating = case.plan["summary"]["gating_frames"]
    assert [c.index for c in cells if c.status == STATUS_GATING] == gating
    assert [c.index for c in cells if c.current] == [2]
    assert [c.index for c in cells if c.recommended] == [case.plan["summary"]["recommended_frame"]]
    # the header names the gating window as a run through the cycle's end (e.g. 3, 0, 1)
    windows = case.plan["summary"]["gating_windows"]
    assert f"gating frames {'; '.join(', '.join(map(str, w)) for w in windows)}" in state.describe()[1]


# -- the planning curves ----------------------------------------------------------------------------------
def _svg(text: str) -> ET.Element:
    return ET.fromstring(text)


def _by_class(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("class") == name]


def test_the_curves_cursor_follows_the_frame_and_far_structures_are_listed_not_drawn(case, inputs):
    state = ViewerState(inputs)
    curves = state.curves()
    assert curves.tolerance_mm == TOLERANCE_MM and curves.margin_mm == MARGIN_MM
    cursor_x = []
    for t in range(4):
        root = _svg(curves_svg(curves, t))
        (cursor,) = _by_class(root, "cursor")
        assert cursor.get("data-frame") == str(t)
        cursor_x.append(float(cursor.get("x1")))
    assert cursor_x == sorted(cursor_x) and len(set(cursor_x)) == 4

    root = _svg(curves_svg(curves, 0))
    drawn = {e.get("data-name") for e in _by_class(root, "curve")}
    top = clearance_axis(MARGIN_MM)[1]
    near = {n for n in case.plan["structures"]
            if min(f["min_clearance_mm"][n] for f in case.plan["frames"]) <= top}
    far = set(case.plan["structures"]) - near
    assert far and near  # this case has both (the heart and the spine are far from a lateral path)
    assert drawn == {"LR", "AP", "SI", "|d|"} | near
    (note,) = _by_class(root, "far")
    assert note.text.startswith(f"more than {top:g} mm from the path in every frame: ")
    assert set(note.text.split(": ", 1)[1].split(", ")) == far
    # gating frames shaded in both panels, one band per gating frame
    assert len(_by_class(root, "gating")) == 2 * len(case.plan["summary"]["gating_frames"])
    # the value ticks are round numbers
    for tick in _by_class(root, "tick"):
        value = float(tick.text)
        assert value == pytest.approx(round(value * 4) / 4)


@pytest.mark.parametrize("low,high", [(0.0, 3.7), (-3.2, 3.7), (0.0, 24.0), (-1e-6, 2.5), (0.0, 113.0), (1.2, 1.2)])
def test_axis_ticks_cover_the_range_on_round_steps(low, high):
    bottom, top, ticks = nice_ticks(low, high)
    steps = np.diff(ticks)
    step = float(steps[0])
    assert np.allclose(steps, step)
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1.0, 2.0, 2.5, 5.0))
    assert 3 <= len(ticks) <= 8
    assert ticks[0] == bottom and ticks[-1] == top
    assert bottom <= low + 0.01 * step and top >= high - 0.01 * step
    if low < 0 < high:
        assert 0.0 in ticks


def test_a_long_cine_labels_every_few_frames():
    assert frame_ticks(tuple(range(4))) == [0, 1, 2, 3]
    assert frame_ticks(tuple(range(40))) == list(range(0, 40, 5))


# -- the MRML scene the views render (slicer-core) ----------------------------------------------------------
def test_the_scene_moves_target_path_colour_and_structures_with_the_frame(case, inputs):
    require_slicer()
    from MoDiffLib.mrml.planning import COLOR_BLOCKED, COLOR_CLEAR, COLOR_GATING, labelmap_from_node, markup_position
    from MoDiffLib.web.scene import ViewerScene

    colors = {STATUS_GATING: COLOR_GATING, STATUS_CLEAR: COLOR_CLEAR, STATUS_BLOCKED: COLOR_BLOCKED}
    state = ViewerState(inputs)
    with make_scene() as hs:
        scene = ViewerScene(hs.scene, state)
        assert set(scene.models) == set(case.plan["structures"])
        values = [v for _, v, _ in state.structures]
        for t, frame in enumerate(case.plan["frames"]):
            assert scene.select_frame(t) == t and scene.selected_frame == t
            target = markup_position(scene.plan_nodes.target)
            assert target == pytest.approx(frame["target_ras"], abs=1e-3)
            path = scene.plan_nodes.path
            end = [0.0, 0.0, 0.0]
            path.GetNthControlPointPositionWorld(1, end)
            assert end == pytest.approx(frame["target_ras"], abs=1e-3)
            assert path.GetDisplayNode().GetSelectedColor() == pytest.approx(colors[expected_status(frame)])
            shown = labelmap_from_node(scene.labels).array
            risks = np.where(np.isin(inputs.risk.labels[t], values), inputs.risk.labels[t], 0)
            assert np.array_equal(shown, risks)  # this frame's structures, the others' labels left out
        scene.set_path_visible(False)
        for t in range(4):
            scene.select_frame(t)
            assert not scene.plan_nodes.path.GetDisplayNode().GetVisibility()
            assert not scene.plan_nodes.target.GetDisplayNode().GetVisibility()
        scene.set_path_visible(True)
        assert scene.plan_nodes.path.GetDisplayNode().GetVisibility()


# -- the command line, where the page is not started -----------------------------------------------------------
def test_a_missing_cine_or_a_bad_port_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["view", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("modiff: error: the cine '") and "does not exist" in err and "\n" not in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["view", str(tmp_path), "--port", "70000"])
    assert exc.value.code == 2
    assert "argument --port: must be a whole number from 0 to 65535, got 70000" in capsys.readouterr().err


WEB_MODULES = ("trame", "trame_slicer", "trame_vuetify", "slicer", "slicer_layer_dm")


@pytest.mark.skipif(all(importlib.util.find_spec(m) for m in WEB_MODULES),
                    reason="the web extra is installed here (test_web_browser.py runs the viewer)")
def test_without_the_web_extra_the_command_names_it(case, capsys):
    assert cli.main(["view", str(case.folder)]) == 2
    err = capsys.readouterr().err.strip()
    if not all(importlib.util.find_spec(m) for m in WEB_MODULES[:4]):
        assert err == ("modiff: error: modiff view needs the web extra (trame): pip install -e '.[web]' in the "
                       "MoDiff folder, then pip install --no-deps slicer-layer-dm (README: Web viewer)")
    else:
        assert err == "modiff: error: modiff view needs slicer-layer-dm (trame-slicer's views): " \
                      "pip install --no-deps slicer-layer-dm"


def test_the_command_line_and_the_state_logic_load_no_web_package():
    """The core install stays lean: ``modiff --help`` and MoDiffLib.web's state logic import no trame."""
    code = ("import sys; from MoDiffLib import cli, web; from MoDiffLib.web import curves; cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'trame', 'trame_slicer', 'trame_vuetify', "
            "'wslink', 'aiohttp', 'slicer'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_frame_0_label_map_follows_the_plans_motion_in_the_scene(case, tmp_path):
    """A generated cine's usual case: the structures of frame 0, moved by the plan's motion fields."""
    require_slicer()
    from MoDiffLib.io import write_volume
    from MoDiffLib.mrml.planning import labelmap_from_node
    from MoDiffLib.volume import Volume
    from MoDiffLib.web.scene import ViewerScene

    labels = read_sequence(case.folder / "labels.seq.nrrd")
    labels0 = tmp_path / "labels0.nrrd"
    write_volume(Volume(labels.frames[0], labels.geometry, "labels0"), labels0)
    inputs = load_inputs(case.cine, labels=labels0)
    assert not inputs.risk.per_frame and inputs.fields is not None and inputs.notes == []
    with make_scene() as hs:
        scene = ViewerScene(hs.scene, ViewerState(inputs))
        motion = scene.plan_nodes.motion
        assert scene.labels.GetTransformNodeID() == motion.GetID()
        assert {m.GetTransformNodeID() for m in scene.models.values()} == {motion.GetID()}
        assert labelmap_from_node(scene.labels).array.any()
        # a point of frame 0 lands where the plan's fields carry it in each frame
        target0 = np.array(case.plan["frames"][0]["target_ras"])
        for t, frame in enumerate(case.plan["frames"]):
            scene.select_frame(t)
            moved = motion.GetTransformToParent().TransformPoint(target0.tolist())
            assert moved == pytest.approx(frame["target_ras"], abs=0.05)
    # without the motion fields the viewer says the structures stay where they are in frame 0
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(case.cine, bare / "frames.seq.nrrd")
    shutil.copytree(case.plan_dir, bare / "frames-plan")
    (bare / "frames-plan" / "motion.seq.nrrd").unlink()
    still = load_inputs(bare / "frames.seq.nrrd", labels=labels0)
    assert still.fields is None
    assert any("drawn where they are in frame 0" in note for note in still.notes)
