"""Outputs that cannot be written are refused before any work, in one line, by the real command
line (issue 17): a folder where a file goes (or the reverse) even with ``--overwrite``, one path
for two outputs, a symbolic link at ``--out`` without ``--overwrite``; with ``--overwrite`` the
link itself is replaced, never what it points to.

"Before any work" is seen from outside: no progress event was printed and the run is short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_pipeline import oblique_ct, tiny_config  # noqa: E402


def run_modiff(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MoDiffLib", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("modiff: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr
    events = [json.loads(line)["event"] for line in result.stdout.splitlines() if line.startswith("{")]
    assert events == [], f"work started before the output was checked: {events}"


def test_generate_refuses_a_folder_at_out_even_with_overwrite_before_any_work(tmp_path):
    # A real input and model: the refusal used to come after the whole run.
    from MoDiffLib.io import write_volume
    from MoDiffLib.pipeline import MoDiffPipeline

    model = MoDiffPipeline.from_config(tiny_config()).save_pretrained(tmp_path / "tiny")
    write_volume(oblique_ct(), tmp_path / "ct.nrrd")
    out = tmp_path / "cine.seq.nrrd"
    out.mkdir()
    result = run_modiff("generate", tmp_path / "ct.nrrd", "--frames", 3, "--model", model, "--out", out,
                        "--overwrite", "--device", "cpu", "--progress", "json")
    assert_refused(result, f"output '{out}' is a folder; a file cannot replace it")
    assert out.is_dir()


def test_generate_refuses_one_path_for_two_outputs(tmp_path):
    out = tmp_path / "cine.seq.nrrd"
    result = run_modiff("generate", tmp_path / "ct.nrrd", "--frames", 3, "--out", out, "--motion-out",
                        tmp_path / "." / "cine.seq.nrrd", "--progress", "json")
    assert_refused(result, "is given for two outputs")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", [
    ["phantom", "--frames", "3"],
    ["plan", "{tmp}/cine.seq.nrrd", "--entry=0,0,0", "--target=1,1,1", "--progress", "json"],
])
def test_folder_outputs_refuse_a_file_even_with_overwrite_before_any_work(tmp_path, command):
    out = tmp_path / "result"
    out.write_text("a file the user keeps")
    result = run_modiff(*[c.format(tmp=tmp_path) for c in command], "--out", out, "--overwrite")
    assert_refused(result, f"output '{out}' exists and is not a folder")
    assert out.read_text() == "a file the user keeps"


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
def test_a_symlink_at_out_is_refused_and_with_overwrite_only_the_link_is_replaced(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("the link's target")
    for target in (tmp_path / "nowhere", kept):
        link = tmp_path / f"link-to-{target.name}"
        link.symlink_to(target, target_is_directory=True)
        state = " that points nowhere" if target.name == "nowhere" else ""
        assert_refused(run_modiff("phantom", "--frames", 3, "--out", link), f"is a symbolic link{state}")
        assert link.is_symlink()
    link = tmp_path / "link-to-kept"
    result = run_modiff("phantom", "--frames", 3, "--out", link, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not link.is_symlink() and (link / "frames.seq.nrrd").is_file()
    assert os.listdir(kept) == ["notes.txt"] and not (tmp_path / "nowhere").exists()
    assert sorted(os.listdir(tmp_path)) == ["kept", "link-to-kept", "link-to-nowhere"]


def test_bench_refuses_a_folder_as_its_json_file_before_measuring(tmp_path):
    result = run_modiff("bench", "--frames", 2, "--skip-motion", "--device", "cpu", "--json", tmp_path)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and lines == [f"modiff: error: output '{tmp_path}' is a folder; a file cannot "
                                                "replace it"], result.stderr
    assert result.stdout == ""  # the results are printed after the measuring: it never started
