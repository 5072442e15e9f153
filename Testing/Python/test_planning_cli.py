"""``modiff plan``: the files it writes, its progress, and one-line errors that leave no output folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from MoDiffLib import cli
from MoDiffLib.commands.phantom import write_case
from MoDiffLib.io import read_sequence, write_sequence, write_volume
from MoDiffLib.motion import MotionFields
from MoDiffLib.phantom import make_phantom
from MoDiffLib.planning import plan_puncture, risk_structures, skin_entry
from MoDiffLib.volume import Geometry, Volume, VolumeSequence

RISKS = "vessels,ribs,heart,aorta,spine,liver"


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    """A small 4-frame lung phantom written as `modiff phantom` writes it, plus an entry and a target."""
    folder = tmp_path_factory.mktemp("plan-cli") / "case"
    folder.mkdir()
    case = make_phantom("lung", num_frames=4, seed=3, shape_ijk=(48, 48, 24))
    write_case(case, folder)
    write_volume(Volume(case.labels.frames[0], case.frames.geometry, "labels0"), folder / "labels0.nrrd")
    target = case.landmarks["nodule_1"][0]
    labels0 = Volume(case.labels.frames[0], case.frames.geometry)
    entry = skin_entry(labels0, target, [1.0, 0.0, 0.0]) if target[0] > 0 else skin_entry(labels0, target, [-1.0, 0.0, 0.0])
    assert entry is not None
    return folder, case, entry, target


def point(p) -> str:
    return ",".join(f"{c:.4f}" for c in p)


def run_plan(capsys, *args):
    code = cli.main(["plan", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_writes_json_and_png_with_the_documented_keys(case_dir, tmp_path, capsys):
    folder, case, entry, target = case_dir
    out = tmp_path / "plan"
    code, stdout, stderr = run_plan(
        capsys, folder / "frames.seq.nrrd", f"--entry={point(entry)}", f"--target={point(target)}",
        "--risk", folder / "labels.seq.nrrd", "--structures", RISKS, "--motion", folder / "motion.seq.nrrd",
        "--margin", "4", "--tolerance", "2.5", "--out", out)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "plan.png"]
    assert (out / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["frames"]) == 4
    for i, frame in enumerate(plan["frames"]):
        assert frame["index"] == i
        assert len(frame["target_ras"]) == 3 and len(frame["displacement_mm"]) == 3
        assert isinstance(frame["path_length_mm"], float) and isinstance(frame["clear"], bool)
        assert set(frame["min_clearance_mm"]) == set(RISKS.split(","))  # names from params.json beside the labels
    summary = plan["summary"]
    assert set(summary["amplitude_mm"]) == {"LR", "AP", "SI"}
    assert isinstance(summary["gating_frames"], list) and "recommended_frame" in summary
    assert plan["margin_mm"] == 4.0 and plan["tolerance_mm"] == 2.5
    # the same numbers as the library with the same inputs
    fields = MotionFields.from_sequence(case.motion)
    risk = risk_structures(case.labels, case.frames.geometry, 4, case.label_names, RISKS.split(","))
    expected = plan_puncture(fields, entry, target, risk, 4.0, 2.5)
    for got, want in zip(plan["frames"], expected.frames):
        np.testing.assert_allclose(got["target_ras"], want.target_ras, atol=1e-3)
        assert got["min_clearance_mm"] == pytest.approx(want.min_clearance_mm, abs=1e-3)
        assert got["clear"] == want.clear
    assert summary["gating_frames"] == expected.gating_frames
    assert "modiff plan: Checking the needle path (4/4): frame 3: " in stderr and "gating frames" in stdout


def test_plan_estimates_motion_saves_it_and_reports_json_progress(case_dir, tmp_path, capsys):
    folder, case, entry, target = case_dir
    out = tmp_path / "estimated"
    code, stdout, stderr = run_plan(
        capsys, folder / "frames.seq.nrrd", f"--entry={point(entry)}", f"--target={point(target)}",
        "--risk", folder / "labels0.nrrd", "--risk-names", "vessels=5,ribs=11", "--save-motion",
        "--progress", "json", "--out", out)
    assert code == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["output"] == str(out)
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["stage"] for e in progress if e["stage"] == "motion"] == ["motion"] * 3  # one per frame after 0
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert sorted(p.name for p in out.iterdir()) == ["motion.seq.nrrd", "plan.json", "plan.png"]
    motion = read_sequence(out / "motion.seq.nrrd")
    assert motion.frames.shape == (4, *case.frames.geometry.shape_kji, 3)
    plan = json.loads((out / "plan.json").read_text())
    # frame-0 labels with names given on the command line; the structures holding the entry/target are left out
    assert set(plan["structures"]) >= {"vessels", "ribs"}
    assert plan["motion"]["method"] == "demons-symmetric"
    truth = np.array(case.landmarks["nodule_1"])
    estimated = np.array([f["target_ras"] for f in plan["frames"]])
    assert np.abs(np.ptp(estimated, axis=0) - np.ptp(truth, axis=0)).max() < 1.5


def bad_requests(folder, entry, target, tmp_path):
    other_grid = Geometry((24, 48, 48), spacing=(7.2, 7.2, 10.7))
    write_volume(Volume(np.zeros((24, 48, 48), np.uint8), other_grid, "elsewhere"), tmp_path / "other.nrrd")
    cine = folder / "frames.seq.nrrd"
    good = [f"--entry={point(entry)}", f"--target={point(target)}"]
    return {
        "malformed entry": ([cine, "--entry=1,2", f"--target={point(target)}"], "three numbers"),
        "words": ([cine, "--entry=a,b,c", f"--target={point(target)}"], "three numbers"),
        "nan target": ([cine, f"--entry={point(entry)}", "--target=nan,0,0"], "NaN"),
        "outside": ([cine, f"--entry={point(entry)}", "--target=900,0,0"], "outside the volume"),
        "same point": ([cine, f"--entry={point(target)}", f"--target={point(target)}"], "different points"),
        "risk on another grid": ([cine, *good, "--risk", tmp_path / "other.nrrd"], "not on the grid of the cine"),
        "names without risk": ([cine, *good, "--risk-names", "vessels=5"], "need a risk label map"),
        "unknown structure": ([cine, *good, "--risk", folder / "labels0.nrrd", "--structures", "kidney"], "not in the risk"),
        "negative margin": ([cine, *good, "--margin", "-2"], "safety margin"),
        "missing cine": ([folder / "nope.seq.nrrd", *good], "does not exist"),
        "motion of another case": ([cine, *good, "--motion", folder / "frames.seq.nrrd"], "scalar frames"),
    }


BAD = ["malformed entry", "words", "nan target", "outside", "same point", "risk on another grid",
       "names without risk", "unknown structure", "negative margin", "missing cine", "motion of another case"]


@pytest.mark.parametrize("name", BAD)
def test_bad_requests_are_one_line_errors_and_write_nothing(name, case_dir, tmp_path, capsys):
    folder, case, entry, target = case_dir
    args, match = bad_requests(folder, entry, target, tmp_path)[name]
    out = tmp_path / "out"
    code, stdout, stderr = run_plan(capsys, *args, "--out", out)
    assert code == 2
    lines = [line for line in stderr.splitlines() if not line.startswith("modiff plan: ")]
    assert len(lines) == 1 and lines[0].startswith("modiff: error: ") and match in lines[0], stderr
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_plan_with_a_motion_spread_narrows_the_gating_window(case_dir, tmp_path, capsys):
    """With a 30 mm spread after frame 0 only frame 0 stays within 50 mm (0 + 2 x 30 > 50 elsewhere); a
    spread that does not match the cine is a one-line error before any work, and writes nothing."""
    folder, case, entry, target = case_dir
    g = case.frames.geometry
    level = np.array([0.0, 30.0, 30.0, 30.0], np.float32)
    write_sequence(VolumeSequence(np.broadcast_to(level[:, None, None, None], (4, *g.shape_kji)).copy(), g),
                   tmp_path / "spread.seq.nrrd")
    base = [folder / "frames.seq.nrrd", f"--entry={point(entry)}", f"--target={point(target)}",
            "--motion", folder / "motion.seq.nrrd", "--tolerance", "50"]
    code, _, stderr = run_plan(capsys, *base, "--out", tmp_path / "mean")
    assert code == 0, stderr
    mean = json.loads((tmp_path / "mean" / "plan.json").read_text())
    assert mean["summary"]["gating_frames"] == [0, 1, 2, 3] and mean["source"]["spread"] is None
    assert mean["summary"]["spread_factor"] is None and "motion uncertainty" not in stderr

    out = tmp_path / "spread"
    code, stdout, stderr = run_plan(capsys, *base, "--spread", tmp_path / "spread.seq.nrrd", "--out", out)
    assert code == 0, stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["summary"]["gating_frames"] == [0] and plan["summary"]["recommended_frame"] == 0
    assert [f["target_spread_mm"] for f in plan["frames"]] == pytest.approx(level.tolist(), abs=1e-4)
    assert plan["summary"]["spread_factor"] == 2.0 and plan["summary"]["max_target_spread_mm"] == pytest.approx(30.0)
    assert plan["source"]["spread"] == str(tmp_path / "spread.seq.nrrd")
    assert [f["target_ras"] for f in plan["frames"]] == [f["target_ras"] for f in mean["frames"]]
    assert "modiff plan: warning: 3 frames (1, 2, 3) dropped from the gating window because of motion uncertainty" in stderr
    assert "target spread up to 30.0 mm (x 2)" in stdout
    # a factor of 0 gates on the mean motion alone
    code, _, stderr = run_plan(capsys, *base, "--spread", tmp_path / "spread.seq.nrrd", "--spread-factor", "0",
                               "--out", tmp_path / "factor0")
    assert code == 0, stderr
    assert json.loads((tmp_path / "factor0" / "plan.json").read_text())["summary"]["gating_frames"] == [0, 1, 2, 3]

    write_sequence(VolumeSequence(np.zeros((3, *g.shape_kji), np.float32), g), tmp_path / "three.seq.nrrd")
    other = Geometry(g.shape_kji, g.spacing, (0.0, 0.0, 0.0), g.direction_ras)
    write_sequence(VolumeSequence(np.zeros((4, *g.shape_kji), np.float32), other), tmp_path / "moved.seq.nrrd")
    write_sequence(VolumeSequence(-np.ones((4, *g.shape_kji), np.float32), g), tmp_path / "negative.seq.nrrd")
    cine = [folder / "frames.seq.nrrd", f"--entry={point(entry)}", f"--target={point(target)}"]  # motion estimated
    for args, match in [
        (["--spread", tmp_path / "three.seq.nrrd"], f"the motion spread '{tmp_path / 'three.seq.nrrd'}' has 3 frames "
                                                    "but the cine has 4"),
        (["--spread", tmp_path / "moved.seq.nrrd"], "is not on the grid of the cine"),
        (["--spread", tmp_path / "negative.seq.nrrd"], "has negative values"),
        (["--spread", folder / "motion.seq.nrrd"], "holds vector frames"),
        (["--spread", tmp_path / "spread.seq.nrrd", "--spread-factor", "-1"], "spread factor (--spread-factor) must be"),
        (["--spread-factor", "3"], "--spread-factor needs a motion spread (--spread)"),
    ]:
        bad = tmp_path / "bad"
        code, stdout, stderr = run_plan(capsys, *cine, *args, "--out", bad)
        assert code == 2, stderr
        lines = [line for line in stderr.splitlines() if not line.startswith("modiff plan: ")]
        assert len(lines) == 1 and lines[0].startswith("modiff: error: ") and match in lines[0], stderr
        assert "modiff plan: motion" not in stderr  # refused before the motion estimation started
        assert not bad.exists() and not any(p.name.startswith(".bad") for p in tmp_path.iterdir())


def test_existing_output_needs_overwrite_and_is_replaced_whole(case_dir, tmp_path, capsys):
    folder, case, entry, target = case_dir
    out = tmp_path / "plan"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = [folder / "frames.seq.nrrd", f"--entry={point(entry)}", f"--target={point(target)}",
            "--motion", folder / "motion.seq.nrrd", "--out", out]
    code, _, stderr = run_plan(capsys, *args)
    assert code == 2 and "already exists" in stderr and (out / "old.txt").exists()
    code, _, stderr = run_plan(capsys, *args, "--overwrite")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "plan.png"]


def test_real_process_exit_status_and_default_output_folder(case_dir, tmp_path):
    """As a process: status 2 and one stderr line for a bad point; status 0 and CINE-plan/ by default."""
    folder, case, entry, target = case_dir
    cine = tmp_path / "cine.seq.nrrd"
    cine.write_bytes((folder / "frames.seq.nrrd").read_bytes())
    command = [sys.executable, "-m", "MoDiffLib", "plan", str(cine), "--target", point(target)]
    bad = subprocess.run(command + ["--entry", "1,2,x"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "modiff: error: --entry must be three numbers R,A,S in mm (e.g. 12.5,-40,-160), got '1,2,x'"]
    good = subprocess.run(command + [f"--entry={point(entry)}", "--motion", str(folder / "motion.seq.nrrd")],
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "cine-plan" / "plan.json").is_file()
