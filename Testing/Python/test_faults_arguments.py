"""Every failure a user can cause by an argument is one clear line, never a traceback or a
silently changed value: :class:`InputError` in the library, ``modiff: error: ...`` and exit
status 2 on the command line.

The library checks run on a tiny untrained pipeline whose ``resolve_device`` is made to fail, so a
check that lets a bad value through shows up as "work started" rather than as a slow generation.
"""

import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from MoDiffLib import Cancelled, InputError, cli, pipeline as pipeline_module, registry
from MoDiffLib.pipeline import MAX_SEED, MoDiffPipeline, check_generate_request, check_seed
from MoDiffLib.progress import check_callbacks

sys.path.insert(0, os.path.dirname(__file__))
from test_pipeline import oblique_ct, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return MoDiffPipeline.from_config(tiny_config())


@pytest.fixture
def no_work(monkeypatch):
    """Any generation that gets past validation fails loudly instead of running."""
    def started(_device):
        raise AssertionError("validation let the request through and work started")

    monkeypatch.setattr(pipeline_module, "resolve_device", started)


# -- library: generate's arguments ---------------------------------------------------------------
@pytest.mark.parametrize("name, value, shown", [
    ("num_frames", 3.9, "3.9"), ("num_frames", True, "True"), ("num_frames", "4", "'4'"), ("num_frames", None, "None"),
    ("steps", 1.7, "1.7"), ("steps", False, "False"), ("steps", np.float32(2.0), "np.float32(2.0) (float32)"),
])
def test_frame_count_and_steps_must_be_integers(tiny, no_work, name, value, shown):
    args = {"num_frames": 3, "steps": None, name: value}
    with pytest.raises(InputError, match=rf"{name}.* must be an integer, got {re.escape(shown)}"):
        tiny.generate(oblique_ct(), args["num_frames"], steps=args["steps"])


@pytest.mark.parametrize("steps", [0, -1, 10**6])
def test_steps_out_of_range_is_an_error_not_the_default(tiny, no_work, steps):
    with pytest.raises(InputError, match=rf"steps .* between 1 and \d+, got {steps}"):
        tiny.generate(oblique_ct(), 3, steps=steps)


def test_numpy_integers_are_accepted_and_none_steps_is_the_default(tiny):
    n, steps = check_generate_request(tiny.config, oblique_ct(), np.int64(3), np.int32(2))
    assert (n, steps) == (3, 2) and type(n) is int and type(steps) is int
    assert check_generate_request(tiny.config, oblique_ct(), 3, None) == (3, tiny.config.sampling_steps)
    assert check_seed(np.uint32(MAX_SEED)) == MAX_SEED and type(check_seed(np.int64(5))) is int


@pytest.mark.parametrize("volume, expected", [
    (np.zeros((8, 16, 16), np.int16), r"got an array of shape \(8, 16, 16\) and dtype int16; a bare array has no geometry.*Volume.from_array"),
    (None, r"got None \(NoneType\)"),
    ("ct.nrrd", r"got 'ct.nrrd' \(str\); read the file first with MoDiffLib.io.read_volume"),
])
def test_volume_must_be_a_volume(tiny, no_work, volume, expected):
    with pytest.raises(InputError, match=r"volume must be a MoDiffLib.volume.Volume, " + expected) as info:
        tiny.generate(volume, 3)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**64, 1.5, True, "7", None])
def test_seed_must_be_a_32_bit_integer(tiny, no_work, seed):
    with pytest.raises(InputError, match=r"seed must be an integer"):
        tiny.generate(oblique_ct(), 3, seed=seed)


@pytest.mark.parametrize("progress, cancel, expected", [
    ("bar", None, r"progress must be None or a callable.*'bar'"),
    (None, True, r"cancel must be None, a threading.Event or a callable, got True"),
    (None, False, r"cancel must be None, a threading.Event or a callable, got False"),
    (None, "stop", r"cancel must be None, a threading.Event .* got 'stop'"),
])
def test_progress_and_cancel_must_be_callbacks(tiny, no_work, progress, cancel, expected):
    with pytest.raises(InputError, match=expected):
        tiny.generate(oblique_ct(), 3, progress=progress, cancel=cancel)


def test_a_callable_cancel_is_honoured():
    event = threading.Event()
    assert check_callbacks(None, event) is event and check_callbacks(print, None) is None
    flag = {"stop": False}
    adapted = check_callbacks(None, lambda: flag["stop"])
    assert not adapted.is_set()
    flag["stop"] = True
    assert adapted.is_set()


def test_a_callable_cancel_stops_generation(tiny):
    # Set from the start: the run stops after its first stage (moving the networks), before sampling.
    with pytest.raises(Cancelled):
        tiny.generate(oblique_ct(), 3, device="cpu", cancel=lambda: True)


# -- command line ------------------------------------------------------------------------------
def run_modiff(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("MODIFF_MODELS_DIR", "MODIFF_REGISTRY")}
    return subprocess.run([sys.executable, "-m", "MoDiffLib", *args], capture_output=True, text=True, timeout=300,
                          env={**environ, **env})


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("modiff: error:"), result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["generate", "ct.nrrd", "--out", "c.seq.nrrd", "--frames", "ten"], ["--frames", "'ten'"]),
    (["generate", "ct.nrrd", "--out", "c.seq.nrrd", "--seed", "18446744073709551616"],
     ["--seed", f"0 to {2**32 - 1}", "18446744073709551616"]),
    (["generate", "ct.nrrd", "--out", "c.seq.nrrd", "--seed", "-3"], ["--seed", "-3"]),
    (["generate", "ct.nrrd", "--out", "c.seq.nrrd", "--no-such-option"], ["--no-such-option"]),
    (["generate", "ct.nrrd"], ["required", "--out"]),
    ([], ["required", "COMMAND"]),
])
def test_argument_errors_are_one_line_with_status_2(tmp_path, args, fragments):
    result = run_modiff(*args)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "c.seq.nrrd").exists()


def test_zero_steps_on_the_cli_is_refused_not_the_default(tmp_path, tiny):
    from MoDiffLib.io import write_volume

    model = tiny.save_pretrained(tmp_path / "tiny-model")
    write_volume(oblique_ct(), tmp_path / "ct.nrrd")
    out = tmp_path / "cine.seq.nrrd"
    result = run_modiff("generate", str(tmp_path / "ct.nrrd"), "--model", str(model), "--out", str(out),
                        "--frames", "3", "--steps", "0", "--device", "cpu", "--progress", "none")
    assert_one_line_error(result, "steps", "got 0")
    assert not out.exists()


def test_the_cli_seed_range_is_the_librarys():
    assert cli.MAX_SEED == MAX_SEED == 2**32 - 1


# -- registry and cache ------------------------------------------------------------------------
def entry(**changes):
    base = {"name": "m", "version": "1.0", "title": "m", "kind": "lung", "modality": "CT", "max_frames": 8,
            "sampling_steps": 4, "url": "http://127.0.0.1:9/m.zip"}
    return {k: v for k, v in {**base, **changes}.items() if v is not ...}


MALFORMED = [
    ({"models": [1]}, r"model entry 1 must be an object.*got 1"),
    ({"models": [entry(), "m2"]}, r"model entry 2 must be an object.*got \"m2\""),
    ({"models": [entry(url=5)]}, r"model entry 1 'm': 'url' must be a string or null, got 5"),
    ({"models": [entry(name=...)]}, r"model entry 1 lacks name"),
    ({"models": [entry(name=7)]}, r"model entry 1: 'name' must be a string, got 7"),
    ({"models": [entry(max_frames=True)]}, r"'max_frames' must be an integer, got true"),
    ({"models": [entry(sha256={"config.json": 3})]}, r"'sha256' must map file names to hex strings"),
    ({"models": [entry(name="../x")]}, r"'name' must be a non-empty name without '/'"),
    ({"models": {}}, r"must be an object with a 'models' list"),
]


@pytest.mark.parametrize("data, expected", MALFORMED)
def test_malformed_registry_names_the_file_and_the_entry(tmp_path, monkeypatch, data, expected):
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("MODIFF_REGISTRY", str(path))
    with pytest.raises(InputError, match=expected) as info:
        registry.list_models()
    assert str(path) in str(info.value)


@pytest.mark.parametrize("data, expected", [MALFORMED[0], MALFORMED[2]])
def test_malformed_registry_is_one_line_on_the_cli(tmp_path, data, expected):
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(data))
    result = run_modiff("models", MODIFF_REGISTRY=str(path))
    assert_one_line_error(result, str(path))


def test_registry_that_is_a_folder_is_one_line(tmp_path):
    result = run_modiff("models", MODIFF_REGISTRY=str(tmp_path))
    assert_one_line_error(result, "MODIFF_REGISTRY", str(tmp_path), "cannot be read")


def test_cache_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    monkeypatch.setenv("MODIFF_CACHE_DIR", str(cache))
    with pytest.raises(InputError, match=r"MODIFF_CACHE_DIR '.*cache' is a file, not a folder"):
        registry.user_cache_dir()
    result = run_modiff("models", MODIFF_CACHE_DIR=str(cache))
    assert_one_line_error(result, "MODIFF_CACHE_DIR", str(cache), "is a file")


def test_download_into_an_unusable_cache_is_one_line(tmp_path):
    # A cache below a file can never be created (unlike permission bits, this holds for root too).
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = tmp_path / "extra.json"
    path.write_text(json.dumps({"models": [entry()]}))
    result = run_modiff("models", "--download", "m", MODIFF_REGISTRY=str(path), MODIFF_CACHE_DIR=str(blocker / "sub"))
    assert_one_line_error(result, "MODIFF_CACHE_DIR", "cannot hold downloaded models")
