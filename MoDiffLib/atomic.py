"""Write outputs so that a crash, a cancel, an error or a concurrent writer never leaves a
half-written file or silently replaced output.

Outputs are written under temporary names in their destination folders and moved into place
only when complete. The outputs of one command are one unit (:func:`atomic_outputs`): they are
all staged first and published together, in the order they were staged, once every one is
complete; if publishing fails or is cancelled midway, what this unit already published is taken
back (a new output is removed, a replaced one is put back). :func:`atomic_file` and
:func:`atomic_dir` are units of one output.

* **No clobbering.** A new output is published with a no-replace operation (``renameat2`` with
  ``RENAME_NOREPLACE`` on Linux, ``os.rename`` on Windows, else a hard link for files and an
  exclusive ``mkdir`` reservation for folders), so of two writers racing to one path without
  ``overwrite`` exactly one succeeds and the other gets :class:`OutputError` "already exists".
  A symbolic link at the output path, dangling or not, is refused unless ``overwrite``; with
  ``overwrite`` the link itself is replaced, never its target. A replacement exchanges the new
  and the old version in one step (``RENAME_EXCHANGE``; elsewhere the old one is first moved
  aside), so the old version survives until the whole unit is published.
* **Cancel is a state.** The process holds one cancel state (:func:`cancel_event`); the command
  line sets it on SIGTERM and SIGINT (:func:`cancel_on_signals`). Once it is set nothing is moved
  into place: a unit checks it before staging each output, before publishing and after each
  move, deletes its temporaries and raises :class:`Cancelled`. Signals that arrive while a unit
  is open only set the state, so its own cleanup always runs; elsewhere they also stop work that
  does not poll the state (:class:`CancelledBySignal`), unless the command declared that it polls
  (:func:`cooperative_cancel`) or already published its outputs (then it only has to report).
* **Leftovers can be attributed.** With ``MODIFF_TEMP_TAG`` set (the background runner sets it for
  its child), temporary names carry that tag, so whoever had to SIGKILL the writer can remove
  exactly its temporaries (:func:`remove_temporaries`) and no one else's. (A SIGKILL during the
  few renames of a unit's publishing can leave the unit partly published; nothing else can.)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import stat
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import Cancelled, MoDiffError, OutputError

#: Multi-part suffixes that file writers dispatch on; the temporary name keeps them.
_COMPOUND_SUFFIXES = (".seq.nrrd", ".nii.gz", ".mrk.json")
#: Environment variable whose value (1-32 lowercase letters or digits) is put into every temporary
#: name, so that the process which set it can find its child's temporaries after killing it.
TEMP_TAG_ENV = "MODIFF_TEMP_TAG"
_TAG_PATTERN = re.compile(r"[0-9a-z]{1,32}")
_IS_WINDOWS = os.name == "nt"
#: The signals that mean "cancel" (what the Slicer module's Cancel sends, and Ctrl-C).
CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def split_suffix(path: str | os.PathLike) -> tuple[str, str]:
    """Split ``name.seq.nrrd`` into ``("name", ".seq.nrrd")`` (compound suffixes kept whole)."""
    name = Path(path).name
    for suffix in _COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    p = Path(name)
    return p.stem, p.suffix


# -- the process's cancel state ---------------------------------------------------------------------
class _CancelState:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None  # the signal that set the event, if one did
        self.polled = False  # the running command polls the event: signals must not interrupt it
        # Output units open in the main thread (each the list of its outputs, outermost first):
        # signals must not interrupt them.
        self.writing: list[list[Path]] = []
        # Outputs that outermost units published inside cancel_on_signals(): the command's work is
        # done, so a signal no longer interrupts it.
        self.published: list[Path] = []
        self.installed = 0  # depth of cancel_on_signals() blocks


_state = _CancelState()


class CancelledBySignal(KeyboardInterrupt):
    """Raised by the signal handler to stop work that does not poll the cancel state.

    A ``KeyboardInterrupt`` so that ``except Exception`` does not swallow it and cleanup written
    for Ctrl-C runs; a subclass because CPython remembers an exact ``KeyboardInterrupt`` that
    passed through embedded code (extension modules run some while being imported) and then ends
    the process by SIGINT at exit, whatever exit status the command chose.
    """


def cancel_event() -> threading.Event:
    """The process's cancel state as a ``threading.Event`` (what ``generate(cancel=...)`` polls)."""
    return _state.event


def cancel_requested() -> bool:
    """True once the process was asked to cancel (by SIGTERM/SIGINT or :func:`request_cancel`)."""
    return _state.event.is_set()


def request_cancel() -> None:
    """Set the process's cancel state: no output is published from now on."""
    _state.event.set()


def cancel_reason() -> str:
    """What set the cancel state, for messages: ``"SIGTERM received"`` or ``"cancel requested"``."""
    if _state.signal is None:
        return "cancel requested"
    try:
        return f"{signal.Signals(_state.signal).name} received"
    except ValueError:
        return f"signal {_state.signal} received"


def published_outputs() -> list[Path]:
    """The outputs published inside the current :func:`cancel_on_signals` block (outermost units)."""
    return list(_state.published)


def _on_signal(signum: int, _frame) -> None:
    first = not _state.event.is_set()
    # Record first: whatever happens next, no writer publishes after this point.
    if first:
        _state.signal = signum
    _state.event.set()
    # Work that polls the state stops by itself, an open unit checks it before it publishes, and a
    # command that published its outputs only reports; interrupting any of them would only risk
    # their cleanup. Anything else (computations that never poll) is stopped at once, as Python's
    # own Ctrl-C handler would; a second signal does not interrupt the cleanup of the first.
    if first and not _state.polled and not _state.writing and not _state.published:
        raise CancelledBySignal(cancel_reason())


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[threading.Event]:
    """Within the block, SIGTERM and SIGINT set the process's cancel state; yields that state.

    The command line wraps every command in this (once, in :func:`MoDiffLib.cli.main`). A signal
    outside an output unit, outside :func:`cooperative_cancel` work and before the command
    published its outputs also raises :class:`CancelledBySignal` (a ``KeyboardInterrupt``), so
    commands that never poll still stop promptly.

    The two signals are also unblocked for the block (and the previous signal mask restored
    after it): the background runner starts its child with them blocked, so a cancel sent while
    the child is still starting is held by the kernel until the handlers are in place, and is
    then delivered here (raising ``CancelledBySignal`` on entry, before the body runs).

    The state belongs to the block: it is cleared on entry and on exit, and the previous handlers
    are restored on exit. Nested blocks share the outer one's state; outside the main thread
    (where signals cannot be handled) only the state is provided.
    """
    if _state.installed or threading.current_thread() is not threading.main_thread():
        yield _state.event
        return
    _state.event.clear()
    _state.signal = None
    _state.published.clear()
    previous = {sig: signal.signal(sig, _on_signal) for sig in CANCEL_SIGNALS}
    _state.installed += 1
    mask = None
    try:
        if hasattr(signal, "pthread_sigmask"):
            mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, CANCEL_SIGNALS)
        yield _state.event
    finally:
        if mask is not None:
            # Blocked again before the default handlers return: a signal after the command is
            # over (while the interpreter shuts down) then no longer ends it by that signal.
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state.installed -= 1
        _state.polled = False
        _state.published.clear()
        _state.event.clear()
        _state.signal = None


def cooperative_cancel() -> threading.Event:
    """The process's cancel state, for a command that polls it from now on.

    After this call SIGTERM and SIGINT only set the state (no ``KeyboardInterrupt``): the caller
    passes it as ``cancel=`` to work that checks ``is_set()`` and stops within one step, and the
    output units refuse to publish once it is set.
    """
    _state.polled = True
    return _state.event


@contextlib.contextmanager
def _shielded(paths: list[Path]) -> Iterator[bool]:
    """Register an open unit (its live list of outputs); yields whether it is the outermost one."""
    # Only the main thread runs signal handlers, so only its units need shielding.
    main = threading.current_thread() is threading.main_thread()
    outermost = main and not _state.writing
    if main:
        _state.writing.append(paths)
    try:
        yield outermost
    finally:
        if main:
            _state.writing.pop()


def _describe(paths: list[Path]) -> str:
    if len(paths) == 1:
        return f"'{paths[0]}'; it was not written"
    return ", ".join(f"'{p}'" for p in paths) + "; none of them was written"


def _check_not_cancelled(paths: list[Path]) -> None:
    if cancel_requested():
        # Name the outputs the user asked for, not files inside a temporary folder.
        shown = _state.writing[0] if _state.writing and _state.writing[0] else paths
        raise Cancelled(f"{cancel_reason()} while writing {_describe(shown)}")


# -- temporary names --------------------------------------------------------------------------------
def _temp_tag() -> str | None:
    tag = os.environ.get(TEMP_TAG_ENV, "")
    return tag if _TAG_PATTERN.fullmatch(tag) else None


def _temporary(final: Path, kind: str, suffix: str = "") -> Path:
    """``.<name>.<kind>-[<tag>-]<random><suffix>`` beside ``final`` (``kind``: partial or old)."""
    tag = _temp_tag()
    token = uuid.uuid4().hex[:8]
    stem = split_suffix(final)[0] if suffix else final.name
    return final.with_name(f".{stem}.{kind}-{tag + '-' if tag else ''}{token}{suffix}")


def remove_temporaries(folder: str | os.PathLike, tag: str) -> list[Path]:
    """Remove the temporaries that writers with ``MODIFF_TEMP_TAG=tag`` left in ``folder``.

    For a process that had to kill a writer (SIGKILL leaves no chance to clean up). A version
    moved aside while being replaced (``.<name>.old-<tag>-*``) is moved back if nothing took its
    place, so an interrupted replacement never loses the old output. Returns the paths handled.
    """
    if not _TAG_PATTERN.fullmatch(tag):
        raise ValueError(f"not a temporary tag: {tag!r}")
    handled = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return handled
    for entry in entries:
        name = entry.name
        if not name.startswith("."):
            continue
        for kind in ("partial", "old"):
            marker = f".{kind}-{tag}-"
            cut = name.rfind(marker)
            if cut < 0:
                continue
            path = Path(entry.path)
            final = path.with_name(name[1:cut])
            with contextlib.suppress(OSError):
                if kind == "old" and not os.path.lexists(final):
                    os.rename(path, final)
                else:
                    _remove(path)
                handled.append(path)
            break
    return handled


def _remove(path: Path) -> None:
    """Delete a file, a symbolic link (never what it points to) or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# -- moving into place ------------------------------------------------------------------------------
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
#: errno values that mean "this kernel or file system cannot do that", not "it failed".
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EPERM, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
                errno.EOPNOTSUPP}


def _load_renameat2():
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the kernel or file system lacks it.

    Raises:
        FileExistsError: ``RENAME_NOREPLACE`` and ``dst`` exists. OSError: any other failure.
    """
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


def _publish_new_file(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final`` only if nothing is there (FileExistsError otherwise)."""
    if _IS_WINDOWS:
        os.rename(tmp, final)  # Windows' rename never replaces
        return
    # renameat2 first: a link + unlink leaves a second name behind if the process dies in between.
    if _rename2(tmp, final, _RENAME_NOREPLACE):
        return
    try:
        os.link(tmp, final)  # atomic and exclusive: EEXIST if anything (even a dangling link) is there
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _UNSUPPORTED | {errno.EMLINK}:
            raise
        raise OutputError(
            f"cannot create '{final}' safely: this file system offers neither an exclusive rename nor hard "
            f"links ({e.strerror}), so a file written there at the same time could be replaced; pass "
            "--overwrite (overwrite=True) to write it anyway"
        ) from None
    os.unlink(tmp)


def _publish_new_dir(tmp: Path, final: Path) -> None:
    """Move the folder ``tmp`` to ``final`` only if nothing is there (FileExistsError otherwise)."""
    if _IS_WINDOWS:
        os.rename(tmp, final)
        return
    if _rename2(tmp, final, _RENAME_NOREPLACE):
        return
    # Folders cannot be hard-linked. Reserve the name instead: mkdir is exclusive (EEXIST if
    # anything is there), and POSIX rename of a folder onto an *empty* folder replaces it
    # atomically, so only the writer that made the reservation fills it. (A lock file would need
    # every writer, including other programs, to honour it; the reservation needs nothing.)
    os.mkdir(final)
    try:
        os.rename(tmp, final)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.rmdir(final)  # only if it is still our empty reservation
        if isinstance(e, OSError) and e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            # Another writer with overwrite filled the name meanwhile.
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final)) from None
        raise


def _publish_new(tmp: Path, final: Path, folder: bool) -> None:
    (_publish_new_dir if folder else _publish_new_file)(tmp, final)


def _swap_in(tmp: Path, final: Path, folder: bool) -> Path:
    """Put ``tmp`` at ``final`` (which exists) and return where the previous version now is."""
    if _rename2(tmp, final, _RENAME_EXCHANGE):
        return tmp  # one step: the previous version (file, folder or link) now has tmp's name
    # Two steps: for a moment nothing is at ``final``, but the previous version survives under
    # ``old`` (and remove_temporaries moves it back after a kill).
    old = _temporary(final, "old")
    os.rename(final, old)
    try:
        _publish_new(tmp, final, folder)
    except BaseException:
        try:
            _publish_new(old, final, old.is_dir() and not old.is_symlink())
        except OSError:
            _remove(old)  # another writer published meanwhile: theirs is newer than the old version
        raise
    return old


def _exists_error(final: Path) -> OutputError:
    return OutputError(f"output '{final}' already exists (choose another name or pass --overwrite)")


def _check_replaceable(final: Path, folder: bool | None) -> None:
    try:
        mode = os.lstat(final).st_mode  # one look: another writer may be moving it right now
    except FileNotFoundError:
        return
    if folder is None or stat.S_ISLNK(mode):
        return  # a link is replaced itself, whatever it points to
    if not folder and stat.S_ISDIR(mode):
        raise OutputError(f"output '{final}' is a folder; a file cannot replace it")
    if folder and not stat.S_ISDIR(mode):
        raise OutputError(f"output '{final}' exists and is not a folder")


def check_output_path(path: str | os.PathLike, overwrite: bool = False, folder: bool | None = None) -> Path:
    """Fail early, with a clear message, if ``path`` cannot be created.

    Args:
        path: the output.
        overwrite: whether an existing output may be replaced.
        folder: the output is a folder (True) or a file (False); then what is at the path must be
            of the same kind to be replaced. ``None``: not checked.

    Raises:
        OutputError: something is at the path (a file, a folder or a symbolic link, even a dangling
            one) and ``overwrite`` is false, or it is of the other kind; or its folder is missing or
            not writable.
    """
    p = Path(path)
    if not overwrite:
        if p.is_symlink():
            state = "" if p.exists() else " that points nowhere"
            raise OutputError(f"output '{p}' is a symbolic link{state} (remove it, choose another name or pass "
                              "--overwrite to replace the link)")
        if os.path.lexists(p):
            raise _exists_error(p)
    _check_replaceable(p, folder)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write '{p}': folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write '{p}': folder '{parent}' is not writable")
    return p


# -- output units -------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Staged:
    final: Path
    tmp: Path
    folder: bool
    published: tuple[int, int] | None = None  # identity of what this unit put at ``final``
    previous: Path | None = None  # where the version it replaced is, until the unit is complete
    kept: bool = False  # the previous version could not be put back and stays at ``previous``


class OutputUnit:
    """The outputs of one command, staged under temporary names and published together.

    Made by :func:`atomic_outputs`. Call :meth:`file` or :meth:`folder` once per output, in the
    order they are to be published, and write the output to the path returned.
    """

    def __init__(self, overwrite: bool) -> None:
        self.overwrite = overwrite
        self._staged: list[_Staged] = []
        self.paths: list[Path] = []  #: the outputs, in staging order

    def file(self, path: str | os.PathLike) -> Path:
        """Stage the file ``path``; returns the temporary path (same suffix, same folder) to write."""
        final = self._check(path, folder=False)
        return self._add(final, _temporary(final, "partial", split_suffix(final)[1]), folder=False)

    def folder(self, path: str | os.PathLike) -> Path:
        """Stage the folder ``path``; returns the (created, empty) temporary folder to fill."""
        final = self._check(path, folder=True)
        tmp = _temporary(final, "partial")
        tmp.mkdir()
        return self._add(final, tmp, folder=True)

    def _check(self, path: str | os.PathLike, folder: bool) -> Path:
        final = check_output_path(path, self.overwrite, folder)
        if any(os.path.abspath(p) == os.path.abspath(final) for p in self.paths):
            raise OutputError(f"output '{final}' is given for two outputs; give each its own path")
        self.paths.append(final)
        _check_not_cancelled(self.paths)  # no work for an output that will not be published
        return final

    def _add(self, final: Path, tmp: Path, folder: bool) -> Path:
        self._staged.append(_Staged(final, tmp, folder))
        return tmp

    # -- publishing ----------------------------------------------------------------------------------
    def _publish(self) -> None:
        for s in self._staged:
            if not os.path.lexists(s.tmp):
                raise OutputError(f"writer produced no file for '{s.final}'")
        _check_not_cancelled(self.paths)
        done: list[_Staged] = []
        try:
            for s in self._staged:
                self._publish_one(s)
                done.append(s)
                _check_not_cancelled(self.paths)  # a signal during the moves takes them all back
        except BaseException as exc:
            problems = [p for s in reversed(done) if (p := self._take_back(s))]
            if problems:
                detail = f"{exc}; " + "; ".join(problems)
                if isinstance(exc, MoDiffError):
                    raise type(exc)(detail) from None
                if isinstance(exc, Exception):
                    raise OutputError(detail) from exc
            raise
        for s in done:
            if s.previous is not None:
                _remove(s.previous)

    def _publish_one(self, s: _Staged) -> None:
        identity = _identity(s.tmp)
        if not self.overwrite:
            try:
                _publish_new(s.tmp, s.final, s.folder)
            except FileExistsError:
                raise _exists_error(s.final) from None
            s.published = identity
            return
        # Writers that all overwrite may race; each step fails only because another one moved
        # something meanwhile, so retrying converges (the last one to publish wins).
        for attempt in range(5):
            try:
                if os.path.lexists(s.final):
                    _check_replaceable(s.final, s.folder)
                    s.previous = _swap_in(s.tmp, s.final, s.folder)
                else:
                    _publish_new(s.tmp, s.final, s.folder)
                s.published = identity
                return
            except OutputError:
                raise
            except OSError as e:
                racing = isinstance(e, (FileExistsError, FileNotFoundError)) or e.errno == errno.ENOTEMPTY
                if not racing or attempt == 4 or not os.path.lexists(s.tmp):
                    raise

    @staticmethod
    def _take_back(s: _Staged) -> str | None:
        """Undo the publishing of ``s``; returns what could not be undone, if anything."""
        try:
            if s.previous is None:
                if _identity(s.final) == s.published:  # still ours (no one replaced it meanwhile)
                    aside = _temporary(s.final, "partial")
                    os.rename(s.final, aside)
                    _remove(aside)
                return None
            if _rename2(s.previous, s.final, _RENAME_EXCHANGE):
                _remove(s.previous)  # now holds what this unit had put in place
            else:
                ours = _temporary(s.final, "partial")
                os.rename(s.final, ours)
                os.rename(s.previous, s.final)
                _remove(ours)
            s.previous = None
            return None
        except OSError as e:
            s.kept = True
            return f"'{s.final}' was already replaced and could not be put back ({e.strerror}); the previous " \
                   f"version is kept as '{s.previous}'"

    def _discard(self) -> None:
        for s in self._staged:
            if not (s.kept and s.previous == s.tmp):
                _remove(s.tmp)


@contextlib.contextmanager
def atomic_outputs(overwrite: bool = False) -> Iterator[OutputUnit]:
    """A unit of outputs, published together when the block succeeds; yields the :class:`OutputUnit`.

    Example::

        with atomic_outputs(overwrite) as unit:
            write_sequence(cine, unit.file(out))
            write_sequence(motion, unit.file(motion_out))

    Nothing is moved into place before the block ends. Then, unless the process was cancelled,
    the outputs are published in staging order; each is new (no-replace: :class:`OutputError`
    "already exists" if anything appeared at its path meanwhile) or, with ``overwrite``,
    exchanged for what is there. On any exception, on a cancel (:class:`Cancelled`, also one that
    arrives between two moves) and on a failure of any move, the outputs this unit already
    published are taken back (a new one removed only if it is still the one this unit put there,
    a replaced one put back; if that fails the message says where the previous version is kept),
    and every temporary is deleted. Signals that arrive while the block runs (main thread) only
    set the cancel state.
    """
    unit = OutputUnit(overwrite)
    with _shielded(unit.paths) as outermost:
        try:
            yield unit
            unit._publish()
        except BaseException:
            unit._discard()
            raise
    if outermost and _state.installed:
        _state.published.extend(unit.paths)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); move it to ``path`` on success.

    A unit of one file (:func:`atomic_outputs`): without ``overwrite`` the move fails if anything
    appeared at ``path`` meanwhile (another writer), with :class:`OutputError`; with it, ``path``
    is replaced atomically (a folder there is refused). On any exception, and when the process was
    cancelled (:class:`Cancelled`), the temporary file is removed and ``path`` is left untouched.
    """
    with atomic_outputs(overwrite) as unit:
        yield unit.file(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it to ``path`` when the block succeeds.

    A unit of one folder (:func:`atomic_outputs`): without ``overwrite`` the move fails if anything
    appeared at ``path`` meanwhile, with :class:`OutputError`; with it an existing folder (or a
    symbolic link) at ``path`` is replaced only after the new one is complete. On any exception,
    and when the process was cancelled (:class:`Cancelled`), the temporary folder is deleted.
    """
    with atomic_outputs(overwrite) as unit:
        yield unit.folder(path)
