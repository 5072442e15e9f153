"""Cancel and concurrent writers, with real processes and real signals: a cancelled run publishes
nothing (not even when the signal comes while the output is being written), replaces nothing,
leaves no temporary and exits with status 130; of two writers racing to one output exactly one
wins; the background runner's cancel leaves no temporary in the output folder.

The signals are sent when the temporary of the output appears in its folder, so they arrive
while the output is being written, the window that used to publish the output anyway.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from MoDiffLib import Volume
from MoDiffLib.errors import Cancelled
from MoDiffLib.io import write_volume
from MoDiffLib.pipeline import MoDiffPipeline
from MoDiffLib.process_runner import ProcessRunner, child_environment

sys.path.insert(0, os.path.dirname(__file__))
from test_pipeline import tiny_config  # noqa: E402

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")


def start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_environment(), **kw)


def script(code: str, *args) -> subprocess.Popen:
    return start(["-c", textwrap.dedent(code), *args])


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def wait_for_temporary(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """Poll ``folder`` until a temporary output appears (the write started); return its name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = temporaries(folder)
        if found:
            return found[0]
        if proc.poll() is not None:
            break
        time.sleep(0.002)
    out, err = proc.communicate(timeout=30)
    pytest.fail(f"no temporary appeared in {folder} (exit {proc.returncode}): {err[-2000:]}")


def wait_for_handler(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
    """Wait until ``proc`` catches ``sig`` (Linux ``SigCgt``): ``modiff`` installed its handlers."""
    status = Path(f"/proc/{proc.pid}/status")
    if not status.exists():
        pytest.skip("needs /proc to see when the handlers are installed")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        caught = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")), "0")
        if int(caught, 16) >> (sig - 1) & 1:
            return
        time.sleep(0.005)
    pytest.fail(f"the process never installed a handler for {signal.Signals(sig).name}")


# -- the library's writers -------------------------------------------------------------------------
WRITE_THEN_SIGNAL = """
    import os, signal, sys
    from pathlib import Path
    from MoDiffLib.atomic import atomic_dir, atomic_file, cancel_on_signals
    from MoDiffLib.errors import Cancelled

    kind, sig, overwrite, out = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3] == "1", Path(sys.argv[4])
    with cancel_on_signals():
        try:
            with (atomic_dir if kind == "dir" else atomic_file)(out, overwrite=overwrite) as tmp:
                target = tmp / "data.bin" if kind == "dir" else tmp
                target.write_bytes(b"first half ")
                os.kill(os.getpid(), sig)  # handled at once, in this thread, in the middle of the write
                with open(target, "ab") as f:
                    f.write(b"second half")
                print("write completed", flush=True)
        except Cancelled as e:
            print(f"cancelled: {e}", file=sys.stderr)
            sys.exit(130)
    print("published", flush=True)
"""


@pytest.mark.parametrize("kind, sig, overwrite", [
    ("file", "SIGTERM", False), ("file", "SIGINT", True), ("dir", "SIGTERM", True), ("dir", "SIGINT", False),
])
def test_a_signal_during_a_write_lets_it_finish_then_publishes_nothing(tmp_path, kind, sig, overwrite):
    out = tmp_path / ("case" if kind == "dir" else "cine.seq.nrrd")
    if overwrite:
        if kind == "dir":
            out.mkdir()
            (out / "data.bin").write_bytes(b"old")
        else:
            out.write_bytes(b"old")
    proc = script(WRITE_THEN_SIGNAL, kind, sig, int(overwrite), out)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "write completed" in stdout, "the signal interrupted the write instead of letting it clean up"
    assert "published" not in stdout
    assert f"{sig} received while writing '{out}'" in stderr
    assert temporaries(tmp_path) == []
    if overwrite:
        assert (out / "data.bin" if kind == "dir" else out).read_bytes() == b"old"
    else:
        assert not os.path.lexists(out)


RACING_WRITER = """
    import os, sys, time
    from pathlib import Path
    from MoDiffLib.atomic import atomic_dir, atomic_file
    from MoDiffLib.errors import OutputError

    kind, out, go, me = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    try:
        with (atomic_dir if kind == "dir" else atomic_file)(out) as tmp:
            (tmp / "who.txt" if kind == "dir" else tmp).write_text(me)
            print("ready", flush=True)
            while not go.exists():  # both writers hold a complete temporary before either publishes
                time.sleep(0.001)
    except OutputError as e:
        print(f"modiff: error: {e}", file=sys.stderr)
        sys.exit(2)
"""


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_two_processes_writing_one_output_exactly_one_wins(tmp_path, kind):
    out, go = tmp_path / "out" / ("case" if kind == "dir" else "cine.seq.nrrd"), tmp_path / "go"
    out.parent.mkdir()
    procs = [script(RACING_WRITER, kind, out, go, name) for name in ("A", "B")]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = "AB"[[code for code, _ in results].index(0)]
    loser_err = next(err for code, err in results if code == 2).strip()
    assert loser_err.count("\n") == 0 and "already exists" in loser_err
    assert (out / "who.txt" if kind == "dir" else out).read_text() == winner
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


# -- modiff generate and modiff phantom ------------------------------------------------------------
@pytest.fixture(scope="module")
def generate_inputs(tmp_path_factory):
    """A tiny model, and an input big enough (noise, 6 x 21 MB cine) that writing takes a while."""
    folder = tmp_path_factory.mktemp("generate")
    model = MoDiffPipeline.from_config(tiny_config()).save_pretrained(folder / "tiny")
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 400, size=(48, 192, 192)).astype(np.int16)
    write_volume(Volume.from_array(ct, spacing=(2.0, 2.0, 3.0)), folder / "ct.nrrd")
    return model, folder / "ct.nrrd"


@pytest.mark.parametrize("overwrite", [False, True])
def test_generate_sigterm_while_writing_exits_130_and_publishes_nothing(tmp_path, generate_inputs, overwrite):
    model, ct = generate_inputs
    out = tmp_path / "cine.seq.nrrd"
    extra = []
    if overwrite:
        out.write_bytes(b"the previous cine")
        extra = ["--overwrite"]
    proc = start(["-m", "MoDiffLib", "generate", ct, "--frames", 6, "--model", model, "--out", out,
                  "--progress", "json", "--device", "cpu", *extra])
    wait_for_temporary(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    events = [json.loads(line)["event"] for line in stdout.splitlines() if line.strip()]
    assert "done" not in events and events, stdout
    assert stderr.strip().splitlines()[-1].startswith("modiff: cancelled"), stderr
    assert temporaries(tmp_path) == []
    if overwrite:
        assert out.read_bytes() == b"the previous cine"
    else:
        assert not out.exists()


@pytest.mark.parametrize("when", ["computing", "writing"])
def test_phantom_sigterm_leaves_no_folder_and_no_hidden_partial(tmp_path, when):
    out = tmp_path / "case"
    proc = start(["-m", "MoDiffLib", "phantom", "--frames", 4, "--out", out])
    if when == "writing":
        assert wait_for_temporary(tmp_path, proc).startswith(".case.partial-")
    else:  # the phantom is being computed: work that polls nothing is stopped at once
        wait_for_handler(proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.startswith("modiff: cancelled") and stderr.count("\n") == 1, stderr
    assert ".partial-" not in stderr  # the message names the output, not a temporary
    assert list(tmp_path.iterdir()) == []


# -- the background runner ---------------------------------------------------------------------------
SLOW_WRITER = """
    import json, signal, sys, time
    from pathlib import Path
    from MoDiffLib.atomic import atomic_file, cancel_on_signals, cooperative_cancel
    from MoDiffLib.errors import Cancelled

    out, seconds, ignore_sigterm = Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    with cancel_on_signals():
        cooperative_cancel()
        if ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stuck child, that only SIGKILL stops
        try:
            with atomic_file(out) as tmp, open(tmp, "wb") as f:
                print(json.dumps({"event": "progress", "stage": "write", "fraction": 1.0}), flush=True)
                end = time.monotonic() + seconds
                while time.monotonic() < end:  # a long write, like gzipping a large cine
                    f.write(b"x" * 65536)
                    time.sleep(0.01)
        except Cancelled as e:
            print(f"modiff: cancelled: {e}", file=sys.stderr)
            sys.exit(130)
    print(json.dumps({"event": "done", "output": str(out)}), flush=True)
"""


def run_and_cancel(tmp_path: Path, seconds: float, ignore_sigterm: bool, **runner_options) -> ProcessRunner:
    out = tmp_path / "cine.seq.nrrd"
    command = [sys.executable, "-c", textwrap.dedent(SLOW_WRITER), "--out", str(out), str(seconds),
               str(int(ignore_sigterm))]
    events = []
    runner = ProcessRunner(command, on_event=events.append, env=child_environment(), **runner_options).start()
    deadline = time.monotonic() + 60
    while not events and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.01)
    assert events, runner.stderr_text
    assert temporaries(tmp_path), "the child is not writing"
    runner.cancel()
    with pytest.raises(Cancelled):
        runner.wait(timeout=120)
    return runner


def test_runner_cancel_during_a_long_write_waits_for_the_cleanup(tmp_path):
    # The write goes on for 6 s after the cancel: longer than the old 5 s grace, which SIGKILLed
    # such a child and left its temporary behind.
    runner = run_and_cancel(tmp_path, seconds=6.0, ignore_sigterm=False)
    assert runner.returncode == 130, runner.stderr_text  # exited by itself, not killed
    assert "SIGTERM received while writing" in runner.stderr_text
    assert runner.done_event is None
    assert list(tmp_path.iterdir()) == [] and runner.removed_temporaries == []


def test_runner_removes_what_its_killed_child_left_and_nothing_else(tmp_path):
    other = tmp_path / ".cine.partial-0123abcd.seq.nrrd"  # another writer's write in progress
    other.write_bytes(b"not ours")
    runner = run_and_cancel(tmp_path, seconds=120.0, ignore_sigterm=True, grace_s=0.5)
    assert runner.returncode == -signal.SIGKILL
    assert [p.name for p in runner.removed_temporaries] and all(
        f".partial-{runner.temp_tag}-" in p.name for p in runner.removed_temporaries)
    assert [p.name for p in tmp_path.iterdir()] == [other.name] and other.read_bytes() == b"not ours"
