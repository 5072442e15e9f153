"""Run a MoDiff command as a background process, follow its progress, cancel it cleanly.

The Slicer module never runs the models in Slicer's own process: it starts ``modiff generate``
as a child process (so a crash, an out-of-memory kill or a cancel cannot take Slicer down, and
the GUI stays responsive), and this module follows it.

Progress protocol (``--progress json``; the contract between the CLI and its callers)
------------------------------------------------------------------------------------
The command prints one JSON object per line on **stdout**, nothing else on stdout::

    {"event": "progress", "stage": "tddm", "step": 3, "total": 8, "fraction": 0.42,
     "message": "motion fields, step 3 of 8"}
    ...
    {"event": "done", "output": "/tmp/x/cine.seq.nrrd", "provenance": {"model": "...", ...}}

* ``stage`` is one of :data:`STAGES` (in that order): ``load``, ``preprocess``, ``tddm``,
  ``i2v``, ``decode``, ``postprocess``, ``write``; ``step``/``total`` count within the stage;
  ``fraction`` (0..1) is the overall progress and never decreases; ``message`` is for people.
* The last line of a successful run is the ``done`` event, with the written ``output`` path and
  the ``provenance`` dictionary (model, model_version, frames, steps, seed, device, amplitude,
  elapsed_seconds, ...); the exit status is 0.
* A user error (bad input file, frame count out of range, ...) exits with status 2, and the
  last line on **stderr** is ``modiff: error: <one sentence>`` (see :mod:`MoDiffLib.cli`).
  Other failures exit non-zero with a traceback on stderr.
* On SIGTERM (cancel) the command stops, removes its temporaries and writes no output file: it
  exits with status 130 and sends no ``done`` event, also when the signal comes while the output
  is being written (the write completes under its temporary name, which is then deleted).

Lines on stdout that are not JSON objects are passed on as log lines, never treated as events.

Process tree and cancel
-----------------------
The child starts in its own session (POSIX: ``start_new_session``, so it leads a new process
group) or its own process group (Windows: ``CREATE_NEW_PROCESS_GROUP``, no console window).
:meth:`ProcessRunner.cancel` sends SIGTERM to the whole group and, if anything of the group is
still alive after a grace period, SIGKILL to the group; on Windows it ends the tree with
``taskkill /F /T``. Worker processes started by the command (data loaders, ...) die with it.
The grace period (:data:`DEFAULT_GRACE_S`) covers writing a large cine, so a child that is
cleaning up is not killed. The child is started with ``MODIFF_TEMP_TAG`` (see
:mod:`MoDiffLib.atomic`) set to a token of this run, so when a run that was killed (by the
runner or anything else) is over, the temporaries it left beside its outputs (``--out``,
``--motion-out``, ...) are removed, and no one else's.

Use from a GUI: call :meth:`ProcessRunner.poll` from a timer (it never blocks and delivers the
events in the caller's thread). Use from a script: :meth:`ProcessRunner.wait`.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from .atomic import TEMP_TAG_ENV, remove_temporaries
from .errors import Cancelled, MoDiffError

#: Stages of ``modiff generate``, in the order they run.
STAGES = ("load", "preprocess", "tddm", "i2v", "decode", "postprocess", "write")
#: What the GUI shows for each stage.
STAGE_LABELS = {
    "load": "Loading the input volume",
    "preprocess": "Preparing the volume",
    "tddm": "Generating motion fields (TDDM)",
    "i2v": "Generating frames (I2V)",
    "decode": "Decoding frames",
    "postprocess": "Restoring the input grid",
    "write": "Writing the cine",
}
#: Prefix of the user-error line the ``modiff`` command prints on stderr.
ERROR_PREFIX = "modiff: error: "
#: Seconds between SIGTERM and SIGKILL when cancelling. A cancelled command stops computing within
#: one step, but a write that is under way completes before its temporary is deleted: a 185 MB
#: cine takes about 4 s to write on two busy cores (gzip level 1), so 60 s covers cines of some
#: 3 GB. A child that exits sooner ends the wait sooner; the grace only bounds a stuck one.
DEFAULT_GRACE_S = 60.0
#: After the child exited, how long to wait for its pipes to close (a grandchild may hold them).
_PIPE_CLOSE_WAIT_S = 2.0
#: How many stderr lines to keep (the last ones).
_STDERR_LINES_KEPT = 2000

_IS_WINDOWS = os.name == "nt"


class ProcessFailedError(MoDiffError):
    """The command exited with an error; ``str(error)`` is the message to show the user.

    Attributes:
        returncode: the exit status (negative: killed by that signal, POSIX).
        stderr: the collected stderr text (the last lines).
    """

    def __init__(self, message: str, returncode: int | None, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def error_message(stderr_lines: list[str], returncode: int | None) -> str:
    """The one line to show for a failed run: the ``modiff: error:`` message if there is one."""
    lines = [line.strip() for line in stderr_lines if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX):]
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the computer may have run out of memory)" if name == "SIGKILL" else ""
        return f"the process was killed by {name}{hint}"
    if lines:
        return lines[-1]
    return f"the process failed with exit status {returncode}"


def progress_text(event: dict) -> tuple[int, str]:
    """Percentage (0..100) and a one-line description of a progress event, for a progress bar."""
    fraction = event.get("fraction")
    try:
        percent = int(round(100.0 * min(max(float(fraction), 0.0), 1.0)))
    except (TypeError, ValueError):
        percent = 0
    stage = str(event.get("stage", ""))
    text = STAGE_LABELS.get(stage, stage.capitalize() or "Working")
    step, total = event.get("step"), event.get("total")
    if isinstance(step, int) and isinstance(total, int) and total > 1:
        text += f" ({step}/{total})"
    message = event.get("message")
    if message:
        text += f": {message}"
    return percent, text


class ProcessRunner:
    """A command running in the background, with its JSON progress events and its stderr.

    Args:
        args: the command, a list of strings (no shell).
        on_event: called with each JSON event (a dict), in the thread that calls
            :meth:`poll` or :meth:`wait`.
        on_log: called with ``(stream, line)`` for stderr lines and non-JSON stdout lines
            (``stream`` is ``"stdout"`` or ``"stderr"``), in the same thread.
        env: environment of the child (default: this process's environment). ``PYTHONUNBUFFERED``
            is set so that progress lines arrive as they are printed.
        cwd: working folder of the child.
        grace_s: seconds :meth:`cancel` waits after SIGTERM before SIGKILL.
        outputs: the paths the command writes; the temporaries that a killed run left beside them
            are removed. Default: the values of the command's ``--out`` and ``--*-out`` options.
    """

    def __init__(
        self,
        args: list[str],
        on_event: Callable[[dict], None] | None = None,
        on_log: Callable[[str, str], None] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        outputs: list[str | os.PathLike] | None = None,
    ):
        if not args or not all(isinstance(a, (str, os.PathLike)) for a in args):
            raise ValueError(f"args must be a non-empty list of strings, got {args!r}")
        self.args = [os.fspath(a) for a in args]
        self.on_event = on_event
        self.on_log = on_log
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.setdefault("PYTHONIOENCODING", "utf-8")
        # Unique to this run: tags the child's temporaries so that only they are removed after a kill.
        self.temp_tag = uuid.uuid4().hex[:16]
        self.env[TEMP_TAG_ENV] = self.temp_tag
        self.cwd = cwd
        self.outputs = [Path(p) for p in (output_paths(self.args) if outputs is None else outputs)]
        #: Temporaries of this run that were removed once it was over (left by a killed child).
        self.removed_temporaries: list[Path] = []
        self.grace_s = float(grace_s)
        self.events: list[dict] = []
        self.done_event: dict | None = None
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES_KEPT)
        self._queue: queue.Queue = queue.Queue()
        self._process: subprocess.Popen | None = None
        self._open_streams = 0
        self._exit_time: float | None = None
        self._finished = False
        self._cancelled = False
        self._kill_timer: threading.Timer | None = None
        self._kill_done = threading.Event()
        self._start_time: float | None = None

    # -- state ------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def finished(self) -> bool:
        """True once the process exited and every line it wrote was delivered."""
        return self._finished

    @property
    def running(self) -> bool:
        return self.started and not self._finished

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def stderr_text(self) -> str:
        return "\n".join(self.stderr_lines)

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self._start_time is None else time.monotonic() - self._start_time

    # -- start ------------------------------------------------------------------------------------
    def start(self) -> "ProcessRunner":
        """Start the process (once); returns ``self``."""
        if self._process is not None:
            raise RuntimeError("the process was already started")
        options: dict = {}
        if _IS_WINDOWS:
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            options["start_new_session"] = True
        self._process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **options,
        )
        self._start_time = time.monotonic()
        self._open_streams = 2
        for name, stream in (("stdout", self._process.stdout), ("stderr", self._process.stderr)):
            threading.Thread(target=self._read, args=(name, stream), name=f"modiff-{name}", daemon=True).start()
        return self

    def _read(self, name: str, stream) -> None:
        try:
            for line in stream:
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((name, None))

    # -- delivering output ------------------------------------------------------------------------
    def _deliver(self, name: str, line: str | None) -> None:
        if line is None:
            self._open_streams -= 1
            return
        if name == "stderr":
            self.stderr_lines.append(line)
            if self.on_log is not None:
                self.on_log("stderr", line)
            return
        event = None
        text = line.strip()
        if text.startswith("{"):
            try:
                event = json.loads(text)
            except ValueError:
                event = None
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            self.events.append(event)
            if event["event"] == "done":
                self.done_event = event
            if self.on_event is not None:
                self.on_event(event)
        elif text and self.on_log is not None:
            self.on_log("stdout", line)

    def _update_finished(self) -> bool:
        if self._finished or self._process is None:
            return self._finished
        if self._process.poll() is not None and self._exit_time is None:
            self._exit_time = time.monotonic()
        if self._exit_time is None or not self._queue.empty():
            return False
        # Done once both pipes closed; a grandchild that keeps a pipe open does not hold us up for long.
        if self._open_streams > 0 and time.monotonic() - self._exit_time <= _PIPE_CLOSE_WAIT_S:
            return False
        # After a cancel, also wait until the whole process group is gone (or was SIGKILLed).
        if self._cancelled and not self._kill_done.is_set() and self._group_alive():
            return False
        if self._cancelled or self.returncode != 0:
            self._remove_temporaries()
        self._finished = True
        return True

    def _remove_temporaries(self) -> None:
        """Remove what a killed child left beside its outputs (a child that exits cleans up itself)."""
        if self._group_alive():
            return  # a surviving grandchild may still be writing: leave its files alone
        base = Path(self.cwd) if self.cwd is not None else Path.cwd()
        for folder in dict.fromkeys((base / p).parent for p in self.outputs):
            self.removed_temporaries += remove_temporaries(folder, self.temp_tag)

    def poll(self) -> bool:
        """Deliver the output that arrived so far, without blocking; True when the process is finished.

        Safe to call from a Qt timer: ``on_event``/``on_log`` run in the calling thread.
        """
        if self._process is None:
            raise RuntimeError("the process was not started")
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            self._deliver(name, line)
        return self._update_finished()

    def wait(self, timeout: float | None = None) -> dict | None:
        """Block until the process finished, delivering its events; then return as :meth:`result` does.

        Raises:
            TimeoutError: still running after ``timeout`` seconds (the process is left running).
            Cancelled, ProcessFailedError: see :meth:`result`.
        """
        if self._process is None:
            raise RuntimeError("the process was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"'{Path(self.args[0]).name}' still running after {timeout} s")
            try:
                name, line = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            self._deliver(name, line)
        return self.result()

    def result(self) -> dict | None:
        """The outcome of a finished run: the ``done`` event (``None`` if the command sent none).

        Raises:
            RuntimeError: the process has not finished yet.
            Cancelled: :meth:`cancel` was called.
            ProcessFailedError: non-zero exit; the message is the command's ``modiff: error:``
                line, else its last stderr line.
        """
        if not self._finished:
            raise RuntimeError("the process has not finished yet")
        if self._cancelled:
            raise Cancelled("cancelled by the user; no output was kept")
        if self.returncode != 0:
            raise ProcessFailedError(error_message(list(self.stderr_lines), self.returncode), self.returncode,
                                     self.stderr_text)
        return self.done_event

    # -- cancel -----------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the process and everything it started; returns at once.

        POSIX: SIGTERM goes to the process group now, SIGKILL after ``grace_s`` seconds if any
        of the group is still alive. Windows: ``taskkill /F /T`` ends the process tree at once.
        Call :meth:`wait` (or keep polling) to know when it is over.
        """
        if self._process is None or self._finished or self._cancelled:
            return
        self._cancelled = True
        if _IS_WINDOWS:
            # A console-less child cannot receive CTRL_BREAK, and taskkill /T finds the tree only
            # while the parent lives: kill the tree at once (outputs are written atomically anyway).
            self._kill_tree()
            return
        self._signal_group(signal.SIGTERM)
        self._kill_timer = threading.Timer(self.grace_s, self._kill_tree)
        self._kill_timer.daemon = True
        self._kill_timer.start()

    def _signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the child's process group; False if the group no longer exists."""
        try:
            os.killpg(self._process.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _group_alive(self) -> bool:
        if _IS_WINDOWS:
            return self._process.poll() is None
        return self._signal_group(0)

    def _kill_tree(self) -> None:
        try:
            if _IS_WINDOWS:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            elif self._group_alive():
                self._signal_group(signal.SIGKILL)
        finally:
            self._kill_done.set()

    def stop(self) -> None:
        """Cancel a running process and wait until its tree is gone, ignoring how it ended."""
        if self.running:
            self.cancel()
            try:
                self.wait(timeout=self.grace_s + 10.0)
            except (Cancelled, ProcessFailedError, TimeoutError):
                pass

    def __enter__(self) -> "ProcessRunner":
        return self if self.started else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- running the modiff command -------------------------------------------------------------------
def output_paths(args: list[str]) -> list[str]:
    """The values of the ``--out`` and ``--<something>-out`` options in a command line."""
    found = []
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if not (name == "--out" or (name.startswith("--") and name.endswith("-out"))):
            continue
        if eq:
            found.append(value)
        elif i + 1 < len(args):
            found.append(args[i + 1])
    return found


def python_executable() -> str:
    """The Python interpreter for child processes.

    In the Slicer application this is ``PythonSlicer`` (Slicer's Python with Slicer's
    environment, found on PATH as ``slicer.util.executePythonModule`` does, else next to the
    running executable); elsewhere the running interpreter, ``sys.executable``.
    """
    slicer_module = sys.modules.get("slicer")
    if slicer_module is not None and getattr(slicer_module, "app", None) is not None:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = Path(sys.executable).with_name("PythonSlicer.exe" if _IS_WINDOWS else "PythonSlicer")
        if candidate.exists():
            return str(candidate)
    return sys.executable


def library_folder() -> Path:
    """The folder that contains the ``MoDiffLib`` package (source tree or installed extension)."""
    return Path(__file__).resolve().parent.parent


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which ``python -m MoDiffLib`` finds this very copy of MoDiffLib."""
    env = dict(os.environ if base is None else base)
    folder = str(library_folder())
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([folder] + [p for p in paths if p != folder])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def generate_command(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    frames: int,
    model: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    amplitude: float | None = None,
    device: str = "auto",
    python: str | None = None,
) -> list[str]:
    """The ``modiff generate ... --progress json`` command line, run as ``python -m MoDiffLib``.

    Options left as ``None`` are not passed, so the command's (the model's) defaults apply.
    """
    command = [python or python_executable(), "-m", "MoDiffLib", "generate", os.fspath(input_path),
               "--frames", str(int(frames)), "--out", os.fspath(output_path)]
    if model:
        command += ["--model", str(model)]
    if steps is not None:
        command += ["--steps", str(int(steps))]
    if seed is not None:
        command += ["--seed", str(int(seed))]
    if amplitude is not None:
        command += ["--amplitude", repr(float(amplitude))]
    command += ["--device", str(device), "--progress", "json"]
    return command
