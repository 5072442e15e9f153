"""The module's background jobs (MoDiffLib.mrml.jobs) and what they check first, without Qt (slicer-core).

The shared scenarios (``scenario_job_*`` in MoDiffTesting/mrml_scenarios.py, run by test_mrml_glue.py
and by Slicer's self-test) cover a generation, a cancel, a plan and refused requests. Here: what
a user sees when things go wrong -- the child's own error line, a missing model that says where
to put it, a GPU out of memory that moves an ``auto`` run to the CPU -- and the one frame limit.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from slicer_headless import make_scene, require_slicer

slicer = require_slicer()

from MoDiffTesting import mrml_scenarios  # noqa: E402
from MoDiffLib.errors import InputError  # noqa: E402
from MoDiffLib.frame_limits import MIN_FRAMES, check_frame_count, frame_range, max_frames  # noqa: E402
from MoDiffLib.mrml.jobs import CPU_FALLBACK_NOTICE, generate_job, gpu_out_of_memory  # noqa: E402
from MoDiffLib.mrml.requests import generate_request  # noqa: E402
from MoDiffLib.process_runner import ProcessFailedError  # noqa: E402
from MoDiffLib.registry import REGISTRY_FILE, default_model, list_models, resolve_model  # noqa: E402


@pytest.fixture
def scene():
    with make_scene() as hs:
        yield hs.scene


# -- the frame limit --------------------------------------------------------------------------------
def test_frame_range_is_each_models_checkpoint_limit():
    """For every installed registered model, the range is MIN_FRAMES..the checkpoint config's max_frames
    (read from config.json itself), and the registry's copy agrees."""
    checked = 0
    for entry in list_models():
        folder, _ = resolve_model(entry.name, verify=False)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        assert frame_range(entry.name) == (MIN_FRAMES, config["max_frames"]), entry.name
        assert entry.max_frames == config["max_frames"], f"{REGISTRY_FILE} disagrees with {folder}/config.json"
        assert max_frames(folder) == config["max_frames"], "a model folder path reads the same config"
        checked += 1
    assert checked >= 2
    assert frame_range() == frame_range(default_model().name)


def test_frame_limit_of_a_model_that_is_not_installed_and_of_bad_models(tmp_path, monkeypatch):
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"models": [{
        "name": "modiff-absent", "version": "1.0.0", "title": "absent", "kind": "lung", "modality": "CT",
        "max_frames": 7, "sampling_steps": 4, "url": "https://models.invalid/modiff-absent.zip"}]}))
    monkeypatch.setenv("MODIFF_REGISTRY", str(registry))
    monkeypatch.setenv("MODIFF_CACHE_DIR", str(tmp_path / "cache"))
    assert frame_range("modiff-absent") == (MIN_FRAMES, 7)  # no config to read: the registry's value
    with pytest.raises(InputError, match="no model named 'no-such-model'"):
        frame_range("no-such-model")
    with pytest.raises(InputError, match="does not exist"):
        frame_range(tmp_path / "no" / "folder")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="unusable"):
        frame_range(broken)


def test_check_frame_count_bounds():
    assert check_frame_count(MIN_FRAMES, 12, "m") == MIN_FRAMES and check_frame_count(12, 12, "m") == 12
    for bad in (MIN_FRAMES - 1, 13):
        with pytest.raises(InputError, match=f"between {MIN_FRAMES} and 12 for model 'm', got {bad}"):
            check_frame_count(bad, 12, "m")


# -- what the panel shows when a run cannot start or fails ---------------------------------------------
def test_a_missing_model_names_the_folder_to_put_it_in(scene, tmp_path, monkeypatch):
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"models": [{
        "name": "modiff-absent", "version": "1.0.0", "title": "absent", "kind": "lung", "modality": "CT",
        "max_frames": 7, "sampling_steps": 4, "url": "https://models.invalid/modiff-absent.zip"}]}))
    monkeypatch.setenv("MODIFF_REGISTRY", str(registry))
    monkeypatch.setenv("MODIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MODIFF_MODELS_DIR", raising=False)
    input_node = mrml_scenarios.add_input(scene)
    with pytest.raises(InputError) as error:
        generate_request(input_node, 3, model="modiff-absent")
    message = str(error.value)
    assert str(tmp_path / "cache" / "modiff-absent") in message, message
    assert "config.json" in message and "modiff models --download modiff-absent" in message
    monkeypatch.setenv("MODIFF_MODELS_DIR", str(tmp_path / "offline"))
    with pytest.raises(InputError, match=str(tmp_path / "offline" / "modiff-absent")):
        generate_request(input_node, 3, model="modiff-absent")


def test_a_failed_generation_shows_the_childs_error_line(scene, tmp_path):
    """The real ``modiff generate`` refuses a volume without air for the lung (CT) model: the job's
    error is the child's one-line ``modiff: error:`` message, not an exit status, and nothing is left."""
    input_node = mrml_scenarios.add_input(scene)  # values from -50 up: no air, so not a CT in HU
    count = scene.GetNumberOfNodes()
    model = default_model("lung").name
    job = generate_job(generate_request(input_node, 3, model=model, steps=1, device="cpu"), tmp_path).start()
    with pytest.raises(ProcessFailedError) as error:
        job.finish()
    assert error.value.returncode == 2
    line = next(line for line in reversed(error.value.stderr.splitlines()) if line.startswith("modiff: error:"))
    assert str(error.value) in line and "does not look like CT" in str(error.value)
    assert "exit status" not in str(error.value)
    assert scene.GetNumberOfNodes() == count and os.listdir(tmp_path) == []


#: A stand-in for the interpreter that runs ``-m MoDiffLib generate ...``: with any device but
#: ``cpu`` it fails as torch does when the GPU has no memory left (torch's own exception type
#: and message, as the CUDA caching allocator words it); with ``cpu`` it runs the real command.
OUT_OF_GPU_MEMORY = """\
import os, sys
args = sys.argv[1:]
if args[args.index("--device") + 1] != "cpu":
    import torch
    error = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    raise error("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 7.79 GiB "
                "of which 1.19 GiB is free.")
os.execv(sys.executable, [sys.executable] + args)
"""


def _interpreter(tmp_path: Path) -> str:
    script = tmp_path / "python-with-a-small-gpu"
    script.write_text(f"#!{sys.executable}\n" + OUT_OF_GPU_MEMORY)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_gpu_out_of_memory_moves_an_auto_run_to_the_cpu(scene, tmp_path):
    """device "auto" chose the GPU, which ran out of memory: the job runs the same request on the CPU,
    says so (notice, status, provenance), and the cine arrives as from any run."""
    (tmp_path / "bin").mkdir()
    python = _interpreter(tmp_path / "bin")
    root = tmp_path / "jobs"
    root.mkdir()
    input_node = mrml_scenarios.phantom_input(scene)
    model = default_model("lung").name
    request = generate_request(input_node, 3, model=model, steps=2, seed=0, device="auto")
    notices = []
    job = generate_job(request, root, python=python).start(on_notice=notices.append)
    assert job.cpu_fallback and job.command[job.command.index("--device") + 1] == "auto"
    sequence_node = job.finish()
    assert notices == [CPU_FALLBACK_NOTICE] and job.notices == [CPU_FALLBACK_NOTICE]
    assert job.command[job.command.index("--device") + 1] == "cpu"
    assert sequence_node.GetNumberOfDataNodes() == 3
    assert sequence_node.GetAttribute("MoDiff.Device") == "cpu"
    assert CPU_FALLBACK_NOTICE in sequence_node.GetAttribute("MoDiff.Notices")
    assert os.listdir(root) == []


def test_gpu_out_of_memory_with_cuda_chosen_is_an_error(scene, tmp_path):
    """The user chose "cuda": no silent move; the error says the GPU ran out of memory (the panel adds
    what to change) and the scene is unchanged."""
    (tmp_path / "bin").mkdir()
    root = tmp_path / "jobs"
    root.mkdir()
    input_node = mrml_scenarios.add_input(scene)
    count = scene.GetNumberOfNodes()
    request = generate_request(input_node, 3, model=default_model("lung").name, device="cuda")
    job = generate_job(request, root, python=_interpreter(tmp_path / "bin")).start()
    assert not job.cpu_fallback
    with pytest.raises(ProcessFailedError) as error:
        job.finish()
    assert gpu_out_of_memory(error.value.stderr) and "CUDA out of memory" in str(error.value)
    assert job.notices == [] and scene.GetNumberOfNodes() == count and os.listdir(root) == []


@pytest.mark.parametrize("text, expected", [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
    ("modiff: error: the frame count must be between 2 and 12 for model 'm', got 40", False),
    ("the process was killed by SIGKILL (the computer may have run out of memory)", False),
    ("", False),
])
def test_gpu_out_of_memory_is_told_from_other_failures(text, expected):
    assert gpu_out_of_memory(text) is expected


def test_a_discarded_job_returns_at_once_and_leaves_nothing(scene, tmp_path):
    """What the panel does when the scene closes during a run: discard returns without waiting for the
    child; once its process tree is gone, its folder is too, and the scene never changed."""
    import time

    input_node = mrml_scenarios.phantom_input(scene)
    ids = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    events = []
    request = generate_request(input_node, 3, model=default_model("lung").name, steps=2, device="cpu")
    job = generate_job(request, tmp_path).start(on_event=events.append)
    deadline = time.monotonic() + 120
    while not events and not job.poll():
        assert time.monotonic() < deadline, "no progress from the generator"
        time.sleep(0.05)
    started = time.monotonic()
    job.discard()
    assert time.monotonic() - started < 1.0, "discard waited for the child"
    assert job.runner.join(timeout=120), "the discarded child did not end"
    assert os.listdir(tmp_path) == [], f"left behind: {os.listdir(tmp_path)}"
    assert sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())) == ids
    with pytest.raises(RuntimeError, match="already finished"):
        job.finish()
