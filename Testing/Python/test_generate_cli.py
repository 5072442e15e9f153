"""``modiff generate``: the process contract the Slicer module relies on."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from MoDiffLib import Volume
from MoDiffLib.io import read_sequence, write_volume
from MoDiffLib.pipeline import MoDiffPipeline
from MoDiffLib.progress import LATENT_GENERATION

sys.path.insert(0, os.path.dirname(__file__))
from test_pipeline import oblique_ct, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return MoDiffPipeline.from_config(tiny_config()).save_pretrained(tmp_path_factory.mktemp("m") / "tiny")


def modiff(*args, **kw):
    return subprocess.run([sys.executable, "-m", "MoDiffLib", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def test_json_progress_lines_and_output_with_input_geometry(tmp_path, model_dir):
    vol = oblique_ct()
    write_volume(vol, tmp_path / "ct.nrrd")
    out = tmp_path / "cine.seq.nrrd"
    r = modiff("generate", tmp_path / "ct.nrrd", "--frames", 4, "--model", model_dir, "--out", out, "--progress", "json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    # the pipeline's stages, then the writing of the cine (the table of MoDiffLib.progress)
    assert [*LATENT_GENERATION, "write"] == list(dict.fromkeys(e["stage"] for e in progress))
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] == pytest.approx(1.0)
    done = events[-1]
    assert done["event"] == "done" and done["output"] == str(out) and done["provenance"]["frames"] == 4
    seq = read_sequence(out)
    assert seq.num_frames == 4 and seq.geometry.is_close(vol.geometry, atol_mm=1e-5)
    np.testing.assert_array_equal(seq.frames[0], vol.array)


@pytest.mark.parametrize("case, message", [
    ("2d", "single slice"),
    ("nan", "NaN"),
    ("frames", "between 2 and 6"),
    ("suffix", "must end with"),
])
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, model_dir, case, message):
    path, frames, out = tmp_path / "in.nrrd", 3, tmp_path / "cine.seq.nrrd"
    if case == "2d":
        write_volume(Volume.from_array(np.arange(64, dtype=np.int16).reshape(1, 8, 8) - 1000), path)
    elif case == "nan":
        import SimpleITK as sitk

        a = np.full((4, 8, 8), -1000.0, np.float32)
        a[1, 1, 1] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
    else:
        write_volume(oblique_ct(), path)
    if case == "frames":
        frames = 9
    if case == "suffix":
        out = tmp_path / "cine.png"
    r = modiff("generate", path, "--frames", frames, "--model", model_dir, "--out", out, "--progress", "none")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modiff: error:") and message in lines[0], r.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd"]


def test_sigterm_cancels_within_a_step_and_writes_nothing(tmp_path, model_dir):
    write_volume(oblique_ct(), tmp_path / "ct.nrrd")
    out = tmp_path / "cine.seq.nrrd"
    proc = subprocess.Popen([sys.executable, "-m", "MoDiffLib", "generate", str(tmp_path / "ct.nrrd"), "--frames", "6",
                             "--steps", "1000", "--model", str(model_dir), "--out", str(out), "--progress", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until sampling is under way
        if json.loads(line).get("stage") == "tddm":
            break
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = proc.wait(timeout=120)
    assert rc == 130 and time.monotonic() - t0 < 60
    assert "cancel" in proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd"]
