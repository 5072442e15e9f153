"""The background process runner, with real child processes (``sys.executable -c ...``)."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from MoDiffLib.errors import Cancelled
from MoDiffLib.process_runner import (
    ProcessFailedError,
    ProcessRunner,
    cancel_message,
    child_environment,
    error_message,
    generate_command,
    library_folder,
    output_paths,
    python_executable,
    runs_modiff,
)
from MoDiffLib.progress import LATENT_GENERATION, then_write

posix_only = pytest.mark.skipif(os.name == "nt", reason="process groups and signals are POSIX here")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, dead but not yet reaped, counts as dead)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.joinpath("self").exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


FAKE_GENERATE = """
    import json, sys, time
    stages = ["load", "preprocess", "encode", "tddm", "i2v", "decode", "postprocess", "write"]
    for n, stage in enumerate(stages):
        print(json.dumps({"event": "progress", "stage": stage, "step": 1, "total": 1,
                          "fraction": (n + 1) / len(stages), "message": stage}))
    print("a stray log line that is not JSON")
    print("{not json either")
    print(json.dumps({"event": "done", "output": "/tmp/out.seq.nrrd", "provenance": {"model": "m", "seed": 3}}))
    print("warning: something", file=sys.stderr)
"""


def test_events_are_delivered_in_order_and_done_is_returned():
    events, logs = [], []
    runner = ProcessRunner(python(FAKE_GENERATE), on_event=events.append, on_log=lambda s, l: logs.append((s, l)))
    done = runner.start().wait(timeout=60)
    assert done == {"event": "done", "output": "/tmp/out.seq.nrrd", "provenance": {"model": "m", "seed": 3}}
    assert [e["stage"] for e in events if e["event"] == "progress"] == list(then_write(LATENT_GENERATION))
    assert events[-1]["event"] == "done" and runner.events == events
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert ("stdout", "a stray log line that is not JSON") in logs
    assert ("stdout", "{not json either") in logs
    assert ("stderr", "warning: something") in logs
    assert runner.returncode == 0 and runner.finished and not runner.running


def test_poll_never_blocks_and_delivers_events_as_they_come():
    code = """
        import json, time
        for i in range(3):
            print(json.dumps({"event": "progress", "stage": "tddm", "step": i + 1, "total": 3, "fraction": (i + 1) / 3}))
            time.sleep(0.3)
    """
    events = []
    runner = ProcessRunner(python(code), on_event=events.append).start()
    seen_partial = False
    slowest = 0.0
    while True:
        t0 = time.monotonic()
        finished = runner.poll()
        slowest = max(slowest, time.monotonic() - t0)
        if finished:
            break
        seen_partial = seen_partial or 0 < len(events) < 3
        time.sleep(0.02)
    assert slowest < 0.2, f"poll blocked for {slowest:.3f} s"
    assert seen_partial, "events arrived only at the end (buffered output?)"
    assert [e["step"] for e in events] == [1, 2, 3]
    assert runner.result() is None  # no done event: nothing to return, but no error either


def test_user_error_carries_the_modiff_error_line():
    code = """
        import sys
        print("Traceback-looking noise", file=sys.stderr)
        print("modiff: error: input volume 'x.nrrd' is a single slice", file=sys.stderr)
        sys.exit(2)
    """
    runner = ProcessRunner(python(code)).start()
    with pytest.raises(ProcessFailedError) as info:
        runner.wait(timeout=60)
    assert str(info.value) == "input volume 'x.nrrd' is a single slice"
    assert info.value.returncode == 2
    assert "Traceback-looking noise" in info.value.stderr


def test_crash_reports_its_last_stderr_line():
    runner = ProcessRunner(python("raise RuntimeError('CUDA out of memory')")).start()
    with pytest.raises(ProcessFailedError, match="RuntimeError: CUDA out of memory") as info:
        runner.wait(timeout=60)
    assert info.value.returncode == 1


def test_missing_executable_fails_at_start():
    with pytest.raises(OSError):
        ProcessRunner(["/nonexistent/modiff-python"]).start()


def test_wait_timeout_leaves_the_process_running_and_cancel_stops_it():
    runner = ProcessRunner(python("import time; time.sleep(60)"), grace_s=1.0).start()
    with pytest.raises(TimeoutError):
        runner.wait(timeout=0.3)
    assert runner.running and alive(runner.pid)
    runner.cancel()
    with pytest.raises(Cancelled):
        runner.wait(timeout=30)
    assert not alive(runner.pid)


@posix_only
def test_cancel_kills_child_and_grandchild_that_ignores_sigterm():
    # The child starts a grandchild that ignores SIGTERM, reports both PIDs, then works forever.
    code = """
        import json, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
        print(json.dumps({"event": "pids", "child": __import__("os").getpid(), "grandchild": grandchild.pid}))
        while True:
            time.sleep(0.1)
    """
    events = []
    runner = ProcessRunner(python(code), on_event=events.append, grace_s=0.5).start()
    deadline = time.monotonic() + 30
    while not events and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    assert events, "child did not report its PIDs"
    child, grandchild = events[0]["child"], events[0]["grandchild"]
    time.sleep(0.3)  # let the grandchild install its SIGTERM handler
    assert alive(child) and alive(grandchild)
    t0 = time.monotonic()
    runner.cancel()
    with pytest.raises(Cancelled):
        runner.wait(timeout=30)
    assert time.monotonic() - t0 < 10
    assert not alive(child), "child survived cancel"
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild), "grandchild survived cancel"
    assert runner.cancelled and runner.finished


@posix_only
def test_cancel_sends_sigterm_first_so_the_command_can_clean_up():
    code = """
        import signal, sys, time
        def stop(signum, frame):
            print("cleaned up", file=sys.stderr, flush=True)
            sys.exit(143)
        signal.signal(signal.SIGTERM, stop)
        print('{"event": "progress", "stage": "load", "step": 0, "total": 1, "fraction": 0.0}', flush=True)
        while True:
            time.sleep(0.05)
    """
    events = []
    runner = ProcessRunner(python(code), on_event=events.append, grace_s=10.0).start()
    while not events:
        runner.poll()
        time.sleep(0.02)
    t0 = time.monotonic()
    runner.cancel()
    with pytest.raises(Cancelled):
        runner.wait(timeout=30)
    assert time.monotonic() - t0 < 5, "cancel waited for SIGKILL although the process exited on SIGTERM"
    assert "cleaned up" in runner.stderr_text
    assert runner.returncode == 143


@posix_only
def test_killed_process_is_reported_as_killed():
    runner = ProcessRunner(python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")).start()
    with pytest.raises(ProcessFailedError, match="killed by SIGKILL .*memory"):
        runner.wait(timeout=60)


def test_child_runs_in_its_own_session():
    if os.name == "nt":
        pytest.skip("sessions are POSIX")
    code = "import os, json; print(json.dumps({'event': 'ids', 'sid': os.getsid(0), 'pid': os.getpid()}))"
    events = []
    ProcessRunner(python(code), on_event=events.append).start().wait(timeout=60)
    assert events[0]["sid"] == events[0]["pid"] != os.getsid(0)


def test_result_before_finish_and_double_start_are_errors():
    runner = ProcessRunner(python("import time; time.sleep(0.5)"))
    with pytest.raises(RuntimeError):
        runner.poll()
    runner.start()
    with pytest.raises(RuntimeError):
        runner.result()
    with pytest.raises(RuntimeError):
        runner.start()
    assert runner.wait(timeout=60) is None
    with pytest.raises(ValueError):
        ProcessRunner([])


def test_context_manager_cancels_a_running_process():
    with ProcessRunner(python("import time; time.sleep(60)"), grace_s=1.0) as runner:
        pid = runner.pid
        assert alive(pid)
    assert runner.cancelled and not alive(pid)


def test_error_message_fallbacks():
    assert error_message(["x", "modiff: error: bad frames", ""], 2) == "bad frames"
    assert error_message(["last words"], 1) == "last words"
    assert error_message([], 3) == "the process failed with exit status 3"
    if os.name != "nt":
        assert "SIGTERM" in error_message([], -15)


def test_cancel_messages_of_runs_cancelled_by_something_else():
    assert cancel_message(["x", "modiff: cancelled: SIGTERM received while writing 'a'; it was not written"], 130) \
        == "SIGTERM received while writing 'a'; it was not written"
    assert cancel_message([], 130) == "the process was cancelled (exit status 130)"
    assert cancel_message(["modiff: error: bad"], 2) is None and cancel_message([], 0) is None
    if os.name != "nt":
        assert "stopped by SIGTERM before it started" in cancel_message([], -15)
        assert cancel_message([], -9) is None  # a kill is a failure (out of memory?), not a cancel


def test_modiff_commands_are_recognised_for_holding_signals():
    assert runs_modiff([sys.executable, "-m", "MoDiffLib", "generate"]) and runs_modiff(["/usr/bin/modiff", "plan"])
    assert not runs_modiff(python("print(1)")) and not runs_modiff(["modifier"])
    assert ProcessRunner(generate_command("a.nrrd", "b.seq.nrrd", 3)).hold_signals
    assert not ProcessRunner(python("print(1)")).hold_signals


def test_a_failing_modiff_command_gives_its_error_line_not_an_exit_status(tmp_path):
    # The real command, as the Slicer module starts it: the panel shows exactly the error line.
    command = [sys.executable, "-m", "MoDiffLib", "plan", str(tmp_path / "missing.seq.nrrd"), "--entry=0,0,0",
               "--target=1,1,1", "--out", str(tmp_path / "plan"), "--progress", "json"]
    runner = ProcessRunner(command, env=child_environment()).start()
    with pytest.raises(ProcessFailedError) as info:
        runner.wait(timeout=120)
    last = [line for line in runner.stderr_lines if line.strip()][-1]
    assert info.value.returncode == 2 and last.startswith("modiff: error: ")
    assert str(info.value) == last[len("modiff: error: "):] and "missing.seq.nrrd" in str(info.value)
    assert "exit status" not in str(info.value)


def test_stop_of_a_finished_or_unstarted_run_calls_back_at_once():
    calls = []
    unstarted = ProcessRunner(python("print(1)"))
    unstarted.stop(on_finished=lambda: calls.append("unstarted"))
    done = ProcessRunner(python("print(1)")).start()
    done.wait(timeout=60)
    done.stop(on_finished=lambda: calls.append("done"))
    assert calls == ["unstarted", "done"] and not done.cancelled


def test_generate_command_follows_the_cli_contract(tmp_path):
    command = generate_command(tmp_path / "in.nrrd", tmp_path / "out.seq.nrrd", 10, model="lung", steps=8, seed=0,
                               amplitude=12.5, device="cpu", python="py")
    assert command == ["py", "-m", "MoDiffLib", "generate", str(tmp_path / "in.nrrd"), "--frames", "10",
                       "--out", str(tmp_path / "out.seq.nrrd"), "--model", "lung", "--steps", "8", "--seed", "0",
                       "--amplitude", "12.5", "--device", "cpu", "--progress", "json"]
    default = generate_command("in.nrrd", "out.seq.nrrd", 4)
    assert default[0] == python_executable() == sys.executable  # no Slicer application here
    assert "--model" not in default and "--steps" not in default and "--amplitude" not in default
    assert default[-4:] == ["--device", "auto", "--progress", "json"]


def test_generate_command_passes_end_and_known_frames_as_the_cli_reads_them(tmp_path):
    from MoDiffLib.commands.generate import parse_known
    from MoDiffLib.errors import InputError

    paths = {t: tmp_path / f"known-{t}.nrrd" for t in (6, 3)}
    for path in paths.values():
        path.write_bytes(b"")  # parse_known checks that the files exist
    command = generate_command("in.nrrd", "out.seq.nrrd", 10, known_paths=paths)
    assert "--end" not in command
    text = command[command.index("--known") + 1]
    assert text == f"3:{paths[3]},6:{paths[6]}"  # in frame order
    assert parse_known(text, 10) == {t: str(p) for t, p in sorted(paths.items())}
    end = generate_command("in.nrrd", "out.seq.nrrd", 10, end_path=tmp_path / "end.nrrd")
    assert end[end.index("--end") + 1] == str(tmp_path / "end.nrrd") and "--known" not in end
    with pytest.raises(InputError, match="comma"):
        generate_command("in.nrrd", "out.seq.nrrd", 10, known_paths={3: tmp_path / "a,b" / "known-3.nrrd"})


def test_child_environment_finds_this_library(tmp_path):
    env = child_environment({"PATH": os.environ.get("PATH", ""), "PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(library_folder()), "/elsewhere"]
    code = ("import json, importlib.util; "
            "print(json.dumps({'event': 'where', 'file': importlib.util.find_spec('MoDiffLib').origin}))")
    events = []
    # -S (no site-packages, so no installed copy) from an unrelated folder: only PYTHONPATH can find it.
    command = [sys.executable, "-S", "-c", code]
    ProcessRunner(command, on_event=events.append, env=env, cwd=tmp_path).start().wait(timeout=60)
    assert Path(events[0]["file"]).resolve().parent.parent == library_folder()
    assert (library_folder() / "MoDiffLib" / "process_runner.py").is_file()


def test_json_lines_survive_large_and_unicode_payloads():
    code = """
        import json
        print(json.dumps({"event": "done", "output": "/tmp/ünïcödé/ciné.seq.nrrd", "provenance": {"blob": "x" * 200000}}))
    """
    runner = ProcessRunner(python(code)).start()
    assert runner.wait(timeout=60) == {"event": "done", "output": "/tmp/ünïcödé/ciné.seq.nrrd",
                                       "provenance": {"blob": "x" * 200_000}}


def test_outputs_are_found_in_the_command_and_the_child_tags_its_temporaries(tmp_path):
    command = generate_command("in.nrrd", tmp_path / "cine.seq.nrrd", 4, python="py")
    assert output_paths(command) == [str(tmp_path / "cine.seq.nrrd")]
    assert output_paths(["m", "--motion-out=/a/m.seq.nrrd", "--spread-out", "s.seq.nrrd", "--outline", "x",
                         "--out"]) == ["/a/m.seq.nrrd", "s.seq.nrrd"]
    code = """
        import json, os
        from MoDiffLib.atomic import TEMP_TAG_ENV
        print(json.dumps({"event": "tag", "tag": os.environ.get(TEMP_TAG_ENV)}))
    """
    events = []
    runner = ProcessRunner(python(code), on_event=events.append, env=child_environment(), outputs=[tmp_path / "x"])
    runner.start().wait(timeout=60)
    other = ProcessRunner(python(code))
    assert events[0]["tag"] == runner.temp_tag != other.temp_tag and len(runner.temp_tag) == 16
    assert runner.outputs == [tmp_path / "x"]
