"""The command line: help lists commands, user errors are one line with a non-zero exit."""

import subprocess
import sys

import pytest

from MoDiffLib import cli


def run_modiff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MoDiffLib", *args], capture_output=True, text=True, timeout=600)


def test_help_lists_every_available_command():
    result = run_modiff("--help")
    assert result.returncode == 0
    for module in cli._load_commands():
        assert module.NAME in result.stdout


def test_unknown_command_fails():
    result = run_modiff("no-such-command")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr


def test_phantom_command_writes_a_complete_case(tmp_path):
    import json

    import numpy as np

    from MoDiffLib.io import read_sequence, read_volume
    from MoDiffLib.phantom import make_phantom

    out = tmp_path / "case"
    result = run_modiff("phantom", "--kind", "lung", "--frames", "4", "--seed", "5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "frame0.nrrd", "frames.seq.nrrd", "labels.seq.nrrd", "landmarks.json", "motion.seq.nrrd", "params.json",
        "trace.csv"]
    case = make_phantom("lung", num_frames=4, seed=5)
    frames = read_sequence(out / "frames.seq.nrrd")
    assert frames.num_frames == 4 and frames.geometry.is_close(case.frames.geometry)
    np.testing.assert_array_equal(frames.frames, case.frames.frames)
    np.testing.assert_array_equal(read_volume(out / "frame0.nrrd").array, case.frames.frames[0])
    motion = read_sequence(out / "motion.seq.nrrd")
    assert motion.frames.shape == (4, *case.frames.geometry.shape_kji, 3)
    np.testing.assert_allclose(motion.frames, case.motion.frames, atol=1e-6)
    landmarks = json.loads((out / "landmarks.json").read_text())
    assert landmarks["space"] == "RAS"
    for entry in landmarks["landmarks"]:
        np.testing.assert_allclose(entry["positions_ras"], case.landmarks[entry["name"]], atol=1e-3)
    params = json.loads((out / "params.json").read_text())
    assert params["seed"] == 5 and params["amplitude"] == case.params["amplitude"]


def test_phantom_command_bad_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "bad"
    result = run_modiff("phantom", "--frames", "1", "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("modiff: error:") and "frames" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    result = run_modiff("phantom", "--frames", "3", "--out", str(out))
    assert result.returncode == 2 and "already exists" in result.stderr


def test_bench_reports_every_stage_as_json(tmp_path):
    import json

    out = tmp_path / "bench.json"
    result = run_modiff("bench", "--model", "untrained:cardiac", "--frames", "2", "--steps", "1", "--skip-motion",
                        "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert json.loads(result.stdout) == report
    (row,) = report["runs"]
    assert row["frames"] == 2 and row["steps"] == 1 and row["device"] in ("cpu", "cuda")
    assert set(row["stages_s"]) == {"load", "preprocess", "encode", "tddm", "i2v", "decode", "postprocess"}
    assert all(v >= 0 for v in row["stages_s"].values()) and row["peak_rss_mib"] > 100
    assert set(report["parameters"]) == {"vae", "tddm", "i2v"} and min(report["parameters"].values()) > 0
    bad = run_modiff("bench", "--model", "untrained:cardiac", "--frames", "40", "--skip-motion")
    assert bad.returncode == 2 and "--frames must lie in 2..16" in bad.stderr
