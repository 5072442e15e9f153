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
import threading
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


def wait_for_handler(proc: subprocess.Popen | ProcessRunner, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
    """Wait until ``proc`` catches ``sig`` (Linux ``SigCgt``): ``modiff`` installed its handlers."""
    status = Path(f"/proc/{proc.pid}/status")
    if not status.exists():
        pytest.skip("needs /proc to see when the handlers are installed")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            lines = status.read_text().splitlines()
        except FileNotFoundError:  # it ended (and was reaped)
            break
        caught = next((line.split()[1] for line in lines if line.startswith("SigCgt:")), "0")
        if int(caught, 16) >> (sig - 1) & 1:
            return
        proc.poll()
        if proc.returncode is not None:
            break
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
    """A tiny model, and an input of noise (which compresses badly) so that writing its cine takes a moment."""
    folder = tmp_path_factory.mktemp("generate")
    model = MoDiffPipeline.from_config(tiny_config()).save_pretrained(folder / "tiny")
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 400, size=(24, 112, 112)).astype(np.int16)
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


# -- a command's outputs are one unit ----------------------------------------------------------------
def wait_until(condition, proc_or_runner, what: str, timeout: float = 120.0) -> None:
    """Poll ``condition()`` every 2 ms until it holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        proc_or_runner.poll()
        if proc_or_runner.returncode is not None:
            break
        time.sleep(0.002)
    pytest.fail(f"{what} never happened")


@pytest.fixture(scope="module")
def lung_frame(tmp_path_factory):
    """Frame 0 of a small lung phantom, for the bundled motion model (which also returns its motion)."""
    from MoDiffLib.phantom import make_phantom

    path = tmp_path_factory.mktemp("lung") / "frame0.nrrd"
    write_volume(make_phantom("lung", num_frames=2, seed=200001, shape_ijk=(64, 64, 32)).frames.frame(0), path)
    return path


@pytest.mark.parametrize("overwrite", [False, True])
def test_runner_cancel_while_the_motion_is_written_publishes_neither_output(tmp_path, lung_frame, overwrite):
    # The cine is complete and the motion fields are being written: the moment that used to leave
    # the cine in place (published before the next output was written).
    out, motion = tmp_path / "cine.seq.nrrd", tmp_path / "motion.seq.nrrd"
    if overwrite:
        out.write_bytes(b"the previous cine")
        motion.write_bytes(b"the previous motion")
    command = [sys.executable, "-m", "MoDiffLib", "generate", str(lung_frame), "--frames", "6", "--model",
               "modiff-lung-motion", "--out", str(out), "--motion-out", str(motion), "--device", "cpu",
               "--progress", "json"] + (["--overwrite"] if overwrite else [])
    runner = ProcessRunner(command, env=child_environment()).start()
    # (the writer of the staged motion writes it under a temporary name of its own: "..motion.partial-*")
    wait_until(lambda: any(".motion.partial-" in n for n in temporaries(tmp_path)), runner,
               f"writing the motion: {runner.stderr_text}")
    assert any(n.startswith(".cine.partial-") for n in temporaries(tmp_path))  # the cine is staged, not published
    runner.cancel()
    with pytest.raises(Cancelled):
        runner.wait(timeout=120)
    assert runner.returncode == 130, runner.stderr_text  # exited by itself, within the grace period
    assert runner.stderr_lines[-1].startswith("modiff: cancelled: SIGTERM received while writing")
    assert runner.done_event is None and runner.removed_temporaries == []
    if overwrite:
        assert sorted(os.listdir(tmp_path)) == ["cine.seq.nrrd", "motion.seq.nrrd"]
        assert out.read_bytes() == b"the previous cine" and motion.read_bytes() == b"the previous motion"
    else:
        assert os.listdir(tmp_path) == []


UNIT_WRITER = """
    import sys, time
    from pathlib import Path
    from MoDiffLib.atomic import atomic_outputs
    from MoDiffLib.errors import MoDiffError

    first, second, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    overwrite, me = sys.argv[4] == "1", sys.argv[5]
    try:
        with atomic_outputs(overwrite) as unit:
            unit.file(first).write_text(f"{first.name} by {me}")
            unit.file(second).write_text(f"{second.name} by {me}")
            print("staged", flush=True)
            while not go.exists():  # every writer holds its complete unit before any publishes
                time.sleep(0.001)
    except MoDiffError as e:
        print(f"modiff: error: {e}", file=sys.stderr)
        sys.exit(2)
"""


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_unit_whose_second_move_fails_takes_back_the_first(tmp_path, overwrite):
    first, second = tmp_path / "cine.seq.nrrd", tmp_path / "motion.seq.nrrd"
    go = tmp_path.parent / f"{tmp_path.name}-go"
    if overwrite:
        first.write_text("the previous cine")
    proc = script(UNIT_WRITER, first, second, go, int(overwrite), "A")
    assert proc.stdout.readline().strip() == "staged", proc.stderr.read()
    # Meanwhile another program takes the second path: a file (no overwrite: "already exists"), or
    # a folder (which a file never replaces, even with overwrite).
    if overwrite:
        second.mkdir()
    else:
        second.write_text("theirs")
    go.touch()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and stderr.count("\n") == 1, stderr
    assert ("a file cannot replace it" if overwrite else "already exists") in stderr
    if overwrite:  # the first output was replaced, then put back
        assert first.read_text() == "the previous cine"
        assert sorted(os.listdir(tmp_path)) == ["cine.seq.nrrd", "motion.seq.nrrd"] and second.is_dir()
    else:  # the first output was published, then removed
        assert os.listdir(tmp_path) == ["motion.seq.nrrd"] and second.read_text() == "theirs"


def test_two_units_racing_in_opposite_orders_never_mix(tmp_path):
    a, b, go = tmp_path / "a.seq.nrrd", tmp_path / "b.seq.nrrd", tmp_path.parent / f"{tmp_path.name}-go"
    procs = {"X": script(UNIT_WRITER, a, b, go, 0, "X"), "Y": script(UNIT_WRITER, b, a, go, 0, "Y")}
    for p in procs.values():
        assert p.stdout.readline().strip() == "staged", p.stderr.read()
    go.touch()
    codes = {me: p.wait(timeout=60) for me, p in procs.items()}
    assert temporaries(tmp_path) == []
    winners = [me for me, code in codes.items() if code == 0]
    assert all(code in (0, 2) for code in codes.values()) and len(winners) <= 1, codes
    if winners:  # the winner's unit is complete; nothing of the loser's remains
        assert a.read_text() == f"a.seq.nrrd by {winners[0]}" and b.read_text() == f"b.seq.nrrd by {winners[0]}"
    else:  # each took back what it had published when its other move failed
        assert os.listdir(tmp_path) == []


PUBLISH_THEN_SIGNAL = """
    import os, signal, sys, time
    from pathlib import Path
    from MoDiffLib.atomic import atomic_file, cancel_on_signals, cancel_requested

    with cancel_on_signals():
        with atomic_file(Path(sys.argv[1])) as tmp:
            tmp.write_text("complete")
        os.kill(os.getpid(), signal.SIGTERM)  # after the outputs were published
        end = time.monotonic() + 0.2
        while time.monotonic() < end:  # reporting: work that polls nothing
            pass
        print(f"reported; cancel requested: {cancel_requested()}", flush=True)
"""


def test_a_cancel_after_the_outputs_were_published_lets_the_command_report(tmp_path):
    out = tmp_path / "cine.seq.nrrd"
    proc = script(PUBLISH_THEN_SIGNAL, out)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert stdout.strip() == "reported; cancel requested: True"
    assert out.read_text() == "complete" and os.listdir(tmp_path) == [out.name]


# -- a cancel while modiff starts -------------------------------------------------------------------
def signal_bits(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0], 16) for k, _, v in (line.partition(":") for line in lines)
            if k in ("SigBlk", "SigCgt", "ShdPnd")}


def test_runner_cancel_while_modiff_starts_is_held_until_its_handlers_then_exits_130(tmp_path):
    out = tmp_path / "case"
    runner = ProcessRunner([sys.executable, "-m", "MoDiffLib", "phantom", "--frames", "4", "--out", str(out)],
                           env=child_environment())
    assert runner.hold_signals
    runner.start()
    if not Path(f"/proc/{runner.pid}/status").exists():
        pytest.skip("needs /proc to see the child's signal state")
    runner.cancel()  # Python is still starting: no handler yet
    bits, term = signal_bits(runner.pid), 1 << (signal.SIGTERM - 1)
    assert bits["SigBlk"] & term and bits["ShdPnd"] & term and not bits["SigCgt"] & term, bits
    with pytest.raises(Cancelled):
        runner.wait(timeout=60)
    assert runner.returncode == 130, runner.stderr_text  # handled, not ended by the signal
    assert runner.stderr_lines[-1] == "modiff: cancelled: SIGTERM received; no output was written"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("when", ["starting", "working"])
def test_a_sigterm_from_elsewhere_is_reported_as_a_cancel_not_a_crash(tmp_path, when):
    # Not the runner's cancel (a user's kill, a shutdown): while Python starts (no handler, the
    # signal not held: it ends the process before anything was written) or once modiff runs.
    out = tmp_path / "case"
    runner = ProcessRunner([sys.executable, "-m", "MoDiffLib", "phantom", "--frames", "4", "--out", str(out)],
                           env=child_environment(), hold_signals=False).start()
    if when == "working":
        wait_for_handler(runner)
    os.killpg(runner.pid, signal.SIGTERM)
    with pytest.raises(Cancelled) as info:
        runner.wait(timeout=60)
    if when == "starting":
        assert runner.returncode == -signal.SIGTERM
        assert str(info.value) == "the process was stopped by SIGTERM before it started its work; nothing was written"
    else:
        assert runner.returncode == 130 and str(info.value) == "SIGTERM received; no output was written"
    assert not runner.cancelled and os.listdir(tmp_path) == []


# -- stopping a run never blocks ----------------------------------------------------------------------
def test_runner_stop_returns_at_once_then_kills_after_the_grace_and_removes_temporaries(tmp_path):
    out = tmp_path / "cine.seq.nrrd"
    command = [sys.executable, "-c", textwrap.dedent(SLOW_WRITER), "--out", str(out), "120", "1"]
    events, finished = [], threading.Event()
    runner = ProcessRunner(command, on_event=events.append, env=child_environment(), grace_s=1.0).start()
    wait_until(lambda: events and temporaries(tmp_path), runner, "the write")
    seen = len(events)
    t0 = time.monotonic()
    runner.stop(on_finished=finished.set)
    assert time.monotonic() - t0 < 0.2, "stop() blocked"
    assert runner.cancelled and not finished.is_set()
    assert finished.wait(timeout=30), "the stopped run was never finished"
    assert time.monotonic() - t0 >= 1.0  # SIGKILL only after the grace period
    assert runner.finished and runner.returncode == -signal.SIGKILL
    assert runner.removed_temporaries and os.listdir(tmp_path) == []
    assert len(events) == seen  # nobody listens after stop()
