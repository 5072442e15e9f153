"""MoDiff's MRML glue against real Slicer MRML (slicer-core): the shared scenarios plus unit checks.

The scenarios in ``mrml_scenarios.py`` are the same functions Slicer's self-test (``MoDiffTest``)
runs on ``slicer.mrmlScene``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from slicer_headless import make_scene, require_slicer

slicer = require_slicer()

from MoDiffTesting import mrml_scenarios  # noqa: E402
from MoDiffLib.errors import InputError  # noqa: E402
from MoDiffLib.mrml import build_cine, provenance_attributes, volume_from_node, write_volume_node  # noqa: E402
from MoDiffLib.process_runner import ProcessRunner, child_environment  # noqa: E402


@pytest.fixture
def scene():
    with make_scene() as hs:
        yield hs.scene


@pytest.mark.parametrize("scenario", mrml_scenarios.SCENARIOS, ids=lambda f: f.__name__)
def test_scenario(scenario, scene):
    scenario(scene)


def test_scenarios_fail_when_the_glue_is_wrong(scene, monkeypatch):
    """The scenarios are not vacuous: a glue that drops the last frame is caught."""
    from MoDiffLib.mrml import cine

    original = cine._fill_sequence

    def drop_last_frame(sequence_node, seq, ijk_to_ras):
        original(sequence_node, type(seq)(seq.frames[:-1], seq.geometry), ijk_to_ras)

    monkeypatch.setattr(cine, "_fill_sequence", drop_last_frame)
    with pytest.raises(AssertionError, match="frames"):
        mrml_scenarios.scenario_cine_geometry(scene)


def test_provenance_attribute_names_and_values():
    attributes = provenance_attributes(
        {"model": "m", "model_version": "1.2", "steps": 10, "seed": 0, "amplitude": 0.1, "use_ema": True,
         "ElapsedSeconds": 2.0, "window": [-1000, 400], "skipped": None}
    )
    assert attributes == {
        "MoDiff.Model": "m",
        "MoDiff.ModelVersion": "1.2",
        "MoDiff.Steps": "10",
        "MoDiff.Seed": "0",
        "MoDiff.Amplitude": "0.1",
        "MoDiff.UseEma": "true",
        "MoDiff.ElapsedSeconds": "2.0",
        "MoDiff.Window": "[-1000, 400]",
    }
    with pytest.raises(InputError):
        provenance_attributes(["model", "m"])


def test_build_cine_without_sequences_logic_is_reported():
    """A scene without the Sequences logic cannot make a proxy; that is a set-up error, not silence."""
    scene = slicer.vtkMRMLScene()
    input_node = mrml_scenarios.add_input(scene)
    seq = mrml_scenarios.make_sequence(mrml_scenarios.make_volume(), frames=2)
    with pytest.raises(RuntimeError, match="Sequences module logic"):
        build_cine(scene, seq, input_node, {})


def test_library_imports_without_slicer():
    """MoDiffLib (and the process runner) import without slicer/vtk; only MoDiffLib.mrml needs them."""
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('slicer', 'vtk', 'vtkmodules', 'qt', 'ctk'):\n"
        "        raise ImportError('blocked ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import MoDiffLib, MoDiffLib.process_runner\n"
        "try:\n"
        "    import MoDiffLib.mrml\n"
        "except ImportError as e:\n"
        "    print('mrml-needs-slicer', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "mrml-needs-slicer" in out.stdout



#: A stand-in for ``modiff generate INPUT --frames N --out OUT --progress json`` that follows the
#: process contract (MoDiffLib.process_runner) but "animates" by adding 10 * t to every voxel.
FAKE_GENERATOR = r"""
import json, sys, time
import numpy as np
from MoDiffLib.io import read_volume, write_sequence
from MoDiffLib.volume import VolumeSequence

input_path, frames, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stages = ["load", "preprocess", "tddm", "i2v", "decode", "postprocess", "write"]
def progress(n, message):
    print(json.dumps({"event": "progress", "stage": stages[n], "step": 1, "total": 1,
                      "fraction": (n + 1) / len(stages), "message": message}), flush=True)
volume = read_volume(input_path)
progress(0, volume.geometry.describe())
for n in range(1, 6):
    progress(n, "working")
seq = VolumeSequence(np.stack([volume.array + 10 * t for t in range(frames)]), volume.geometry, name="cine")
write_sequence(seq, out)
progress(6, out)
print(json.dumps({"event": "done", "output": out, "provenance": {"model": "fake", "frames": frames, "seed": 7}}))
"""


@pytest.mark.parametrize("left_handed", [False, True], ids=["right-handed", "left-handed"])
def test_slicer_input_to_cine_through_a_generator_process(scene, tmp_path, left_handed):
    """The module's data path with a stand-in generator: Slicer writes the input, a child process reads
    it with MoDiffLib.io and writes a .seq.nrrd, MoDiffLib.io reads that back, and the cine lands on
    the input's exact grid (build_cine refuses anything else)."""
    from MoDiffLib.io import read_sequence

    geometry = mrml_scenarios.oblique_geometry(left_handed=left_handed)
    input_node = mrml_scenarios.add_input(scene, mrml_scenarios.make_volume(geometry))
    input_path = write_volume_node(input_node, tmp_path / "input.nrrd")
    out = tmp_path / "cine.seq.nrrd"
    events = []
    runner = ProcessRunner([sys.executable, "-c", FAKE_GENERATOR, str(input_path), "5", str(out)],
                           on_event=events.append, env=child_environment())
    done = runner.start().wait(timeout=120)
    assert [e["stage"] for e in events if e["event"] == "progress"][-1] == "write"
    assert done["output"] == str(out) and out.is_file()

    seq = read_sequence(done["output"])
    sequence_node, browser = build_cine(scene, seq, input_node, done["provenance"])
    original = volume_from_node(input_node).array
    for t in range(5):
        frame = sequence_node.GetNthDataNode(t)
        assert np.array_equal(slicer.util.arrayFromVolume(frame), original + 10 * t)
    assert sequence_node.GetAttribute("MoDiff.Model") == "fake"
    assert sequence_node.GetAttribute("MoDiff.NumberOfFrames") == "5"
    browser.SetSelectedItemNumber(4)
    assert np.array_equal(slicer.util.arrayFromVolume(browser.GetProxyNode(sequence_node)), original + 40)


def test_show_in_slice_views_does_nothing_without_the_application(scene):
    """slicer-core has no slicer.app: showing is skipped (returns False) and the scene is not touched."""
    from MoDiffLib.mrml import show_in_slice_views

    assert getattr(slicer, "app", None) is None
    input_node = mrml_scenarios.add_input(scene)
    _, browser = build_cine(scene, mrml_scenarios.make_sequence(volume_from_node(input_node), 3), input_node, {})
    count, modified = scene.GetNumberOfNodes(), browser.GetMTime()
    assert show_in_slice_views(browser) is False
    assert scene.GetNumberOfNodes() == count and browser.GetMTime() == modified
