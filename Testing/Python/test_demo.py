"""``modiff demo``: the cine, its metrics and a puncture plan on it that ``modiff view DIR`` shows.

One real lung demo of 3 frames (the bundled model on a held-out phantom, as ``make demo`` runs
it with 10; about 10 s on 2 cores), read back as the viewer reads it.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from MoDiffLib import cli
from MoDiffLib.io import read_volume
from MoDiffLib.phantom.lung import NODULE_LABEL0
from MoDiffLib.web import ViewerState, load_inputs
from MoDiffLib.web.state import STATUS_GATING

FRAMES = 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Run ``modiff demo`` in-process; its output folder, stdout and the plan.json it wrote."""
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["demo", "--kind", "lung", "--frames", str(FRAMES), "--out", str(out)])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue(), json.loads((out / "plan" / "plan.json").read_text())


def test_the_demo_writes_the_cine_and_a_plan_on_a_nodule_from_the_skin(demo):
    out, stdout, stderr, plan = demo
    assert sorted(p.name for p in out.iterdir()) == ["cine.seq.nrrd", "input.nrrd", "labels0.nrrd", "plan",
                                                     "preview.png", "provenance.json", "summary.txt"]
    assert sorted(p.name for p in (out / "plan").iterdir()) == ["motion.seq.nrrd", "plan.json", "plan.png"]
    assert (out / "plan" / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plan["frames"]) == FRAMES

    # the target is a nodule of the phantom's frame-0 anatomy, the entry inside the body near its skin
    labels0 = read_volume(out / "labels0.nrrd")

    def label_at(p):
        i, j, k = np.rint(labels0.geometry.ras_to_ijk_points(np.asarray(p, dtype=float))).astype(int)
        return int(labels0.array[k, j, i])

    name = plan["source"]["target"]
    assert name.startswith("nodule_")
    assert label_at(plan["target_ras"]) == NODULE_LABEL0 + int(name.split("_")[1])  # the nodule's centre
    assert label_at(plan["entry_ras"]) != 0
    direction = np.subtract(plan["entry_ras"], plan["target_ras"])
    outside = np.asarray(plan["entry_ras"]) + 15.0 * direction / np.linalg.norm(direction)
    assert label_at(outside) == 0, "15 mm beyond the entry should be outside the body"

    # risks: the README's structures; the plan has a gating window and its line is printed
    assert set(plan["structures"]) >= {"vessels", "ribs", "heart", "aorta", "spine"}
    summary = plan["summary"]
    assert summary["gating_frames"] and summary["recommended_frame"] in summary["gating_frames"]
    line = next(ln for ln in stdout.splitlines() if ln.startswith("plan: "))
    assert f"gating frames {summary['gating_frames']}" in line and plan["source"]["target"] in line
    assert line in (out / "summary.txt").read_text()
    assert "Choosing a needle path" in stderr and "plan/motion.seq.nrrd" in stderr


def test_modiff_view_finds_the_demos_cine_plan_motion_and_risk_structures(demo, monkeypatch, tmp_path):
    out, _, _, plan = demo
    for cwd in (out.parent, out, tmp_path):  # the relative names in plan.json resolve from anywhere
        monkeypatch.chdir(cwd)
        inputs = load_inputs(out)
        assert inputs.cine_path == out / "cine.seq.nrrd" and inputs.cine.num_frames == FRAMES
        assert inputs.plan_path == out / "plan" and inputs.plan.num_frames == FRAMES
        assert inputs.fields is not None and inputs.fields.num_frames == FRAMES
        assert inputs.labels_path.resolve() == (out / "labels0.nrrd").resolve()
        assert set(inputs.risk.names.values()) == set(plan["structures"])
        assert inputs.notes == []
    state = ViewerState(inputs)
    for t, frame in enumerate(plan["frames"]):
        view = state.view(t)
        assert view.path.entry_ras == pytest.approx(plan["entry_ras"])
        assert view.target_ras == pytest.approx(frame["target_ras"])
        assert {s.name: s.clearance_mm for s in view.structures} == pytest.approx(frame["min_clearance_mm"])
    assert state.view(plan["summary"]["recommended_frame"]).status == STATUS_GATING
