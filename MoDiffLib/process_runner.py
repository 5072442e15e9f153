"""Run a MoDiff command as a background process, follow its progress, cancel it cleanly.

The Slicer module never runs the models in Slicer's own process: it starts ``modiff generate``
(and ``modiff plan``) as a child process (so a crash, an out-of-memory kill or a cancel cannot take Slicer down, and
the GUI stays responsive), and this module follows it.

Progress protocol (``--progress json``; the contract between the CLI and its callers)
------------------------------------------------------------------------------------
The command prints one JSON object per line on **stdout**, nothing else on stdout::

    {"event": "progress", "stage": "tddm", "label": "Generating motion fields (TDDM)", "step": 3,
     "total": 8, "fraction": 0.42, "message": ""}
    ...
    {"event": "done", "output": "/tmp/x/cine.seq.nrrd", "provenance": {"model": "...", ...}}

* A ``progress`` line is :meth:`MoDiffLib.progress.ProgressEvent.to_dict`. ``stage`` is a key of
  :data:`MoDiffLib.progress.STAGE_LABELS` and ``label`` what that table says for it (what the
  user is shown; :func:`MoDiffLib.progress.progress_text` makes the progress bar's line). The
  stages come in the order of the command's weight table: ``modiff generate`` runs its model's
  (:data:`~MoDiffLib.progress.LATENT_GENERATION`: ``load``, ``preprocess``, ``encode``,
  ``tddm``, ``i2v``, ``decode``, ``postprocess``; or :data:`~MoDiffLib.progress.MOTION_GENERATION`:
  ``load``, ``preprocess``, ``tddm``, ``fields``, ``warp``) and then ``write``; ``modiff plan``
  runs :data:`~MoDiffLib.progress.PLANNING` (``load``, ``motion``, ``plan``, ``write``).
  ``step``/``total`` count within the stage; ``fraction`` (0..1) is the overall progress, never
  decreases, and is 1 on the last progress line of a successful run (once the outputs are
  published); ``message`` says more for people, or is empty. Readers ignore keys they do not know.
* The last line of a successful run is the ``done`` event, with the written ``output`` path (and,
  from ``modiff generate``, ``outputs``: every path written, the cine first) and the
  ``provenance`` dictionary (model, model_version, frames, steps, seed, device, amplitude,
  elapsed_seconds, ...); the exit status is 0.
* A user error (bad input file, frame count out of range, ...) exits with status 2, and the
  last line on **stderr** is ``modiff: error: <one sentence>`` (see :mod:`MoDiffLib.cli`).
  Other failures exit non-zero with a traceback on stderr.
* On SIGTERM (cancel) the command stops, removes its temporaries and writes no output file: it
  exits with status 130, its last stderr line is ``modiff: cancelled: ...`` and it sends no
  ``done`` event, also when the signal comes while the outputs are being written (they complete
  under temporary names, which are then deleted; a command's outputs are published together or
  not at all). A SIGTERM that comes after the outputs were published changes nothing: they are
  complete, the command finishes (``done``, status 0) with a ``modiff: warning:`` line.

Lines on stdout that are not JSON objects are passed on as log lines, never treated as events.

Process tree and cancel
-----------------------
The child starts in its own session (POSIX: ``start_new_session``, so it leads a new process
group) or its own process group (Windows: ``CREATE_NEW_PROCESS_GROUP``, no console window).
:meth:`ProcessRunner.cancel` sends SIGTERM to the whole group and returns; if anything of the
group is still alive after a grace period, the next :meth:`~ProcessRunner.poll` (or
:meth:`~ProcessRunner.wait`) sends SIGKILL to the group; on Windows cancel ends the tree with
``taskkill /F /T``. Worker processes started by the command (data loaders, ...) die with it.
The grace period (:data:`DEFAULT_GRACE_S`) covers writing a large cine, so a child that is
cleaning up is not killed. The child is started with ``MODIFF_TEMP_TAG`` (see
:mod:`MoDiffLib.atomic`) set to a token of this run, so when a run that was killed (by the
runner or anything else) is over, the temporaries it left beside its outputs (``--out``,
``--motion-out``, ...) are removed, and no one else's.

A ``modiff`` child (POSIX) is started with SIGTERM and SIGINT blocked; it unblocks them once its
handlers are installed (:func:`MoDiffLib.atomic.cancel_on_signals`), so a cancel sent while it
is still starting (importing torch) is held by the kernel and handled then, and the child exits
130 like any cancelled run instead of dying by the signal.

Use from a GUI: call :meth:`ProcessRunner.poll` from a timer (it never blocks and delivers the
events in the caller's thread); to abandon a run, :meth:`ProcessRunner.stop` (returns at once;
a background thread finishes it). Use from a script: :meth:`ProcessRunner.wait`.
"""

from __future__ import annotations

import atexit
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
from typing import Callable, Mapping

from .atomic import TEMP_TAG_ENV, remove_temporaries
from .errors import Cancelled, InputError, MoDiffError

#: Prefix of the user-error line the ``modiff`` command prints on stderr.
ERROR_PREFIX = "modiff: error: "
#: Prefix of the line a cancelled ``modiff`` command prints last on stderr.
CANCELLED_PREFIX = "modiff: cancelled"
#: Exit status of a cancelled ``modiff`` command (nothing of the run was published).
CANCELLED_EXIT_STATUS = 130
#: The signals a ``modiff`` child is started with blocked (see the module docstring).
_HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Seconds between SIGTERM and SIGKILL when cancelling. A cancelled command stops computing within
#: one step, but a write that is under way completes before its temporary is deleted: a 185 MB
#: cine takes about 4 s to write on two busy cores (gzip level 1), so 60 s covers cines of some
#: 3 GB. A child that exits sooner ends the wait sooner; the grace only bounds a stuck one.
DEFAULT_GRACE_S = 60.0
#: After the child exited, how long to wait for its pipes to close (a grandchild may hold them).
_PIPE_CLOSE_WAIT_S = 2.0
#: After SIGKILL, how long to wait for the killed group to vanish before removing its temporaries.
_KILLED_GROUP_WAIT_S = 2.0
#: How often the thread that finishes a stopped run looks at it.
_FINISH_POLL_S = 0.05
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


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def error_message(stderr_lines: list[str], returncode: int | None) -> str:
    """The one line to show for a failed run: the ``modiff: error:`` message if there is one."""
    lines = [line.strip() for line in stderr_lines if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX):]
    if returncode is not None and returncode < 0:
        name = _signal_name(-returncode)
        hint = " (the computer may have run out of memory)" if name == "SIGKILL" else ""
        return f"the process was killed by {name}{hint}"
    if lines:
        return lines[-1]
    return f"the process failed with exit status {returncode}"


def cancel_message(stderr_lines: list[str], returncode: int | None) -> str | None:
    """The message of a run that was cancelled by anything but this runner, else ``None``.

    A ``modiff`` command cancelled by a signal exits 130 with a ``modiff: cancelled`` line; one
    that got SIGTERM or SIGINT before it could handle it (while Python started, before it can
    have written anything) was ended by that signal.
    """
    if returncode == CANCELLED_EXIT_STATUS:
        for line in reversed([line.strip() for line in stderr_lines]):
            if line.startswith(CANCELLED_PREFIX):
                return line[len(CANCELLED_PREFIX):].lstrip(": ") or "cancelled"
        return "the process was cancelled (exit status 130)"
    if returncode is not None and returncode < 0 and -returncode in _HELD_SIGNALS:
        return f"the process was stopped by {_signal_name(-returncode)} before it started its work; nothing was written"
    return None


def runs_modiff(args: list[str]) -> bool:
    """True if the command line runs ``modiff`` (``python -m MoDiffLib ...`` or a ``modiff`` executable)."""
    if not args:
        return False
    if Path(args[0]).stem.lower() == "modiff":
        return True
    return any(a == "-m" and b == "MoDiffLib" for a, b in zip(args, args[1:]))


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
        grace_s: seconds after :meth:`cancel`'s SIGTERM before SIGKILL.
        outputs: the paths the command writes; the temporaries that a killed run left beside them
            are removed. Default: the values of the command's ``--out`` and ``--*-out`` options.
        hold_signals: start the child with SIGTERM and SIGINT blocked (POSIX), for a command that
            unblocks them once it can handle them, as ``modiff`` does. Default: whether the
            command runs ``modiff`` (:func:`runs_modiff`). A command that never unblocks them
            is only stopped by the SIGKILL after ``grace_s``.
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
        hold_signals: bool | None = None,
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
        self.hold_signals = runs_modiff(self.args) if hold_signals is None else bool(hold_signals)
        #: Temporaries of this run that were removed once it was over (left by a killed child).
        self.removed_temporaries: list[Path] = []
        self.grace_s = float(grace_s)
        self.events: list[dict] = []
        self.done_event: dict | None = None
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES_KEPT)
        self._queue: queue.Queue = queue.Queue()
        self._arrived = threading.Event()  # set by the reader threads when a line is queued
        self._lock = threading.RLock()  # poll() may run in the caller's thread and in stop()'s
        self._process: subprocess.Popen | None = None
        self._open_streams = 0
        self._exit_time: float | None = None
        self._finished = threading.Event()
        self._cancelled = False
        self._cancel_time: float | None = None
        self._kill_time: float | None = None
        self._silent = False  # after stop(): nobody listens any more, callbacks are not called
        self._on_finished: list[Callable[[], None]] = []
        self._finisher: threading.Thread | None = None
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
        """True once the process exited, every line it wrote was delivered and its temporaries removed."""
        return self._finished.is_set()

    @property
    def running(self) -> bool:
        return self.started and not self.finished

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
        # The child inherits this thread's signal mask across fork and exec: blocked here for the
        # moment of the start, the cancel signals stay blocked in the child until it unblocks them.
        held = self.hold_signals and hasattr(signal, "pthread_sigmask")
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS) if held else None
        try:
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
        finally:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._start_time = time.monotonic()
        self._open_streams = 2
        for name, stream in (("stdout", self._process.stdout), ("stderr", self._process.stderr)):
            threading.Thread(target=self._read, args=(name, stream), name=f"modiff-{name}", daemon=True).start()
        return self

    def _read(self, name: str, stream) -> None:
        try:
            for line in stream:
                self._queue.put((name, line.rstrip("\r\n")))
                self._arrived.set()
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((name, None))
            self._arrived.set()

    # -- delivering output ------------------------------------------------------------------------
    def _deliver(self, name: str, line: str | None) -> None:
        if line is None:
            self._open_streams -= 1
            return
        if name == "stderr":
            self.stderr_lines.append(line)
            if self.on_log is not None and not self._silent:
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
            if self.on_event is not None and not self._silent:
                self.on_event(event)
        elif text and self.on_log is not None and not self._silent:
            self.on_log("stdout", line)

    def _update_finished(self) -> bool:
        if self._finished.is_set():
            return True
        now = time.monotonic()
        self._escalate(now)
        if self._process.poll() is not None and self._exit_time is None:
            self._exit_time = now
        if self._exit_time is None or not self._queue.empty():
            return False
        # Done once both pipes closed; a grandchild that keeps a pipe open does not hold us up for long.
        if self._open_streams > 0 and now - self._exit_time <= _PIPE_CLOSE_WAIT_S:
            return False
        # After a cancel, also wait until the whole process group is gone: SIGKILLed after the grace
        # period (by _escalate), and then given a moment to vanish.
        if self._cancelled and self._group_alive():
            if self._kill_time is None or now - self._kill_time <= _KILLED_GROUP_WAIT_S:
                return False
        if self._cancelled or self.returncode != 0:
            self._remove_temporaries()
        self._finished.set()
        callbacks, self._on_finished = self._on_finished, []
        for callback in callbacks:
            callback()
        return True

    def _escalate(self, now: float) -> None:
        """SIGKILL the group once the grace period after the cancel's SIGTERM is over."""
        if (self._cancelled and self._kill_time is None and self._cancel_time is not None
                and now - self._cancel_time >= self.grace_s):
            self._kill_time = now
            self._kill_tree()

    def _remove_temporaries(self) -> None:
        """Remove what a killed child left beside its outputs (a child that exits cleans up itself)."""
        if self._group_alive():
            return  # a surviving grandchild may still be writing: leave its files alone
        base = Path(self.cwd) if self.cwd is not None else Path.cwd()
        for folder in dict.fromkeys((base / p).parent for p in self.outputs):
            self.removed_temporaries += remove_temporaries(folder, self.temp_tag)

    def poll(self) -> bool:
        """Deliver the output that arrived so far, without blocking; True when the process is finished.

        Safe to call from a Qt timer: ``on_event``/``on_log`` run in the calling thread. After a
        cancel this also sends the SIGKILL once the grace period is over.
        """
        if self._process is None:
            raise RuntimeError("the process was not started")
        with self._lock:
            self._arrived.clear()
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
        if not self.join(timeout):
            raise TimeoutError(f"'{Path(self.args[0]).name}' still running after {timeout} s")
        return self.result()

    def join(self, timeout: float | None = None) -> bool:
        """Block until the process finished (delivering its events unless :meth:`stop` was called);
        True if it did within ``timeout`` seconds (``None``: no limit)."""
        if self._process is None:
            raise RuntimeError("the process was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._arrived.wait(_FINISH_POLL_S if left is None else min(_FINISH_POLL_S, left))
        return True

    def result(self) -> dict | None:
        """The outcome of a finished run: the ``done`` event (``None`` if the command sent none).

        Raises:
            RuntimeError: the process has not finished yet.
            Cancelled: :meth:`cancel` was called, or the command was cancelled otherwise (it exited
                with status 130, or was ended by SIGTERM/SIGINT before it could handle them).
            ProcessFailedError: any other non-zero exit; the message is the command's
                ``modiff: error:`` line, else its last stderr line.
        """
        if not self.finished:
            raise RuntimeError("the process has not finished yet")
        if self._cancelled:
            if self.returncode == 0:
                raise Cancelled("cancelled by the user after the command had finished writing its outputs")
            raise Cancelled("cancelled by the user; no output was kept")
        if self.returncode != 0:
            lines = list(self.stderr_lines)
            cancelled = cancel_message(lines, self.returncode)
            if cancelled is not None:
                raise Cancelled(cancelled)
            raise ProcessFailedError(error_message(lines, self.returncode), self.returncode, self.stderr_text)
        return self.done_event

    # -- cancel -----------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the process and everything it started; returns at once.

        POSIX: SIGTERM goes to the process group now; if any of the group is still alive
        ``grace_s`` seconds later, the next :meth:`poll`, :meth:`wait` or :meth:`join` (or the
        thread of :meth:`stop`) sends SIGKILL to the group. Windows: ``taskkill /F /T`` ends the
        process tree at once. Keep polling (or call :meth:`wait` or :meth:`stop`) to finish the run.
        """
        if self._process is None or self.finished or self._cancelled:
            return
        self._cancelled = True
        self._cancel_time = time.monotonic()
        if _IS_WINDOWS:
            # A console-less child cannot receive CTRL_BREAK, and taskkill /T finds the tree only
            # while the parent lives: kill the tree at once (outputs are written atomically anyway).
            self._kill_time = self._cancel_time
            self._kill_tree()
            return
        self._signal_group(signal.SIGTERM)

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
        if _IS_WINDOWS:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        elif self._group_alive():
            self._signal_group(signal.SIGKILL)

    def stop(self, on_finished: Callable[[], None] | None = None) -> None:
        """Cancel the run and forget it; returns at once (never blocks a GUI).

        A background thread finishes the run as :meth:`poll` would: SIGKILL after the grace
        period if the group is still alive, then the removal of its temporaries, then
        ``on_finished()`` (called in that thread; at once, in this one, if the run is already
        over). ``on_event`` and ``on_log`` are no longer called. If the interpreter exits first,
        the group is killed and the temporaries removed then (at exit). :meth:`join` waits.
        """
        with self._lock:
            if not self.running:
                if on_finished is not None:
                    on_finished()
                return
            if on_finished is not None:
                self._on_finished.append(on_finished)
            self._silent = True
            self.cancel()
            if self._finisher is None:
                self._finisher = threading.Thread(target=self._finish_in_background, name="modiff-stop", daemon=True)
                _stopping.add(self)
                self._finisher.start()

    def _finish_in_background(self) -> None:
        try:
            self.join()
        finally:
            _stopping.discard(self)

    def _finish_now(self, timeout: float) -> None:
        """At interpreter exit: kill the group without waiting for the grace period, then finish."""
        if self._cancel_time is not None:
            self._cancel_time -= self.grace_s
        self.join(timeout)

    def __enter__(self) -> "ProcessRunner":
        return self if self.started else self.start()

    def __exit__(self, *exc) -> None:
        # A script's with-block: leave only once the tree is gone and its temporaries removed.
        self.stop()
        if self.started:
            self.join()


#: Runs that stop() abandoned and that are not finished yet (finished at exit, see _finish_stopped).
_stopping: set[ProcessRunner] = set()


@atexit.register
def _finish_stopped() -> None:
    # Daemon threads die with the interpreter: finish what they would have finished (kill the
    # group, remove its temporaries) instead of leaving a child and its partial files behind.
    for runner in list(_stopping):
        runner._finish_now(timeout=_PIPE_CLOSE_WAIT_S + _KILLED_GROUP_WAIT_S)


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
    labels_path: str | os.PathLike | None = None,
    labels_out: str | os.PathLike | None = None,
    trace_path: str | os.PathLike | None = None,
    end_path: str | os.PathLike | None = None,
    known_paths: Mapping[int, str | os.PathLike] | None = None,
) -> list[str]:
    """The ``modiff generate ... --progress json`` command line, run as ``python -m MoDiffLib``.

    Options left as ``None`` are not passed, so the command's (the model's) defaults apply.
    ``end_path`` is ``--end`` (the last frame's file); ``known_paths`` (frame index -> file) is
    ``--known i:FILE,...``.
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
    if labels_path is not None:
        command += ["--labels", os.fspath(labels_path)]
        if labels_out is not None:
            command += ["--labels-out", os.fspath(labels_out)]
    if trace_path is not None:
        command += ["--trace", os.fspath(trace_path)]
    if end_path is not None:
        command += ["--end", os.fspath(end_path)]
    if known_paths:
        items = [f"{int(t)}:{os.fspath(path)}" for t, path in sorted(known_paths.items())]
        if any("," in os.fspath(path) for path in known_paths.values()):  # --known separates items by commas
            raise InputError(f"a known frame's path holds a comma, which --known cannot pass: {', '.join(items)}")
        command += ["--known", ",".join(items)]
    command += ["--device", str(device), "--progress", "json"]
    return command
