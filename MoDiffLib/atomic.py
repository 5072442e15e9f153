"""Write outputs so that a crash, a cancel, an error or a concurrent writer never leaves a
half-written or silently replaced file.

Files are written under a temporary name in the destination folder and moved into place only
when complete; output folders are built under a temporary name and moved the same way.

* **No clobbering.** A new output is published with a no-replace operation (``renameat2`` with
  ``RENAME_NOREPLACE`` on Linux, ``os.rename`` on Windows, else a hard link for files and an
  exclusive ``mkdir`` reservation for folders), so of two writers racing to one path without
  ``overwrite`` exactly one succeeds and the other gets :class:`OutputError` "already exists".
  A symbolic link at the output path, dangling or not, is refused unless ``overwrite``; with
  ``overwrite`` the replacement stays atomic (the link itself is replaced, never its target).
* **Cancel is a state.** The process holds one cancel state (:func:`cancel_event`); the command
  line sets it on SIGTERM and SIGINT (:func:`cancel_on_signals`). Once it is set nothing is moved
  into place: the writers check it right before publishing, delete their temporary and raise
  :class:`Cancelled`. Signals that arrive during a write only set the state, so the write's own
  cleanup always runs; elsewhere they also stop work that does not poll the state
  (:class:`CancelledBySignal`), unless the command declared that it polls
  (:func:`cooperative_cancel`).
* **Leftovers can be attributed.** With ``MODIFF_TEMP_TAG`` set (the background runner sets it for
  its child), temporary names carry that tag, so whoever had to SIGKILL the writer can remove
  exactly its temporaries (:func:`remove_temporaries`) and no one else's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import threading
import uuid
from pathlib import Path
from typing import Iterator

from .errors import Cancelled, OutputError

#: Multi-part suffixes that file writers dispatch on; the temporary name keeps them.
_COMPOUND_SUFFIXES = (".seq.nrrd", ".nii.gz", ".mrk.json")
#: Environment variable whose value (1-32 lowercase letters or digits) is put into every temporary
#: name, so that the process which set it can find its child's temporaries after killing it.
TEMP_TAG_ENV = "MODIFF_TEMP_TAG"
_TAG_PATTERN = re.compile(r"[0-9a-z]{1,32}")
_IS_WINDOWS = os.name == "nt"


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
        self.writing: list[Path] = []  # atomic writes open in the main thread: signals must not interrupt them
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


def _cancel_reason() -> str:
    if _state.signal is None:
        return "cancel requested"
    try:
        return f"{signal.Signals(_state.signal).name} received"
    except ValueError:
        return f"signal {_state.signal} received"


def _on_signal(signum: int, _frame) -> None:
    # Record first: whatever happens next, no writer publishes after this point.
    _state.signal = signum
    _state.event.set()
    # Work that polls the state stops by itself, and an atomic write checks it when its write is
    # complete; interrupting either would only risk its cleanup. Anything else (computations that
    # never poll) is stopped at once, as Python's own Ctrl-C handler would.
    if not _state.polled and not _state.writing:
        raise CancelledBySignal(_cancel_reason())


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[threading.Event]:
    """Within the block, SIGTERM and SIGINT set the process's cancel state; yields that state.

    The command line wraps every command in this (once, in :func:`MoDiffLib.cli.main`). A signal
    outside an atomic write and outside :func:`cooperative_cancel` work also raises
    :class:`CancelledBySignal` (a ``KeyboardInterrupt``), so commands that never poll still stop
    promptly. The state belongs to the block: it is cleared on entry and on exit, and the previous
    handlers are restored on exit. Nested blocks share the outer one's state; outside the main
    thread (where signals cannot be handled) only the state is provided.
    """
    if _state.installed or threading.current_thread() is not threading.main_thread():
        yield _state.event
        return
    _state.event.clear()
    _state.signal = None
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    _state.installed += 1
    try:
        yield _state.event
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state.installed -= 1
        _state.polled = False
        _state.event.clear()
        _state.signal = None


def cooperative_cancel() -> threading.Event:
    """The process's cancel state, for a command that polls it from now on.

    After this call SIGTERM and SIGINT only set the state (no ``KeyboardInterrupt``): the caller
    passes it as ``cancel=`` to work that checks ``is_set()`` and stops within one step, and the
    atomic writers refuse to publish once it is set.
    """
    _state.polled = True
    return _state.event


@contextlib.contextmanager
def _shielded(final: Path) -> Iterator[None]:
    # Only the main thread runs signal handlers, so only its writes need shielding.
    main = threading.current_thread() is threading.main_thread()
    if main:
        _state.writing.append(final)
    try:
        yield
    finally:
        if main:
            _state.writing.pop()


def _check_not_cancelled(final: Path) -> None:
    if cancel_requested():
        # Name the output the user asked for, not a file inside a temporary folder.
        shown = _state.writing[0] if _state.writing else final
        raise Cancelled(f"{_cancel_reason()} while writing '{shown}'; it was not written")


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

    For a process that had to kill a writer (SIGKILL leaves no chance to clean up). A folder
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
                elif entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path)
                else:
                    path.unlink()
                handled.append(path)
            break
    return handled


# -- publishing ---------------------------------------------------------------------------------------
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


def _replace_dir(tmp: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``tmp``; the old folder is deleted afterwards."""
    if _rename2(tmp, final, _RENAME_EXCHANGE):
        # tmp now holds what was at final: the old folder, or a file that appeared meanwhile.
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return
    # Two renames: for a moment nothing is at ``final``, but the old folder survives under ``old``
    # until the new one is in place (and remove_temporaries moves it back after a kill).
    old = _temporary(final, "old")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        try:
            os.replace(old, final)
        except OSError:
            # Another writer published meanwhile: theirs is newer than the old folder.
            shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _publish_dir(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move the complete folder ``tmp`` to ``final``, replacing what is there only with ``overwrite``."""
    if not overwrite:
        try:
            _publish_new_dir(tmp, final)
        except FileExistsError:
            raise _exists_error(final) from None
        return
    # Writers that all overwrite may race; each step fails only because another one moved
    # something meanwhile, so retrying converges (the last one to publish wins).
    for attempt in range(5):
        try:
            if final.is_symlink():
                final.unlink()  # replace the link, never the folder it points to
            if os.path.lexists(final):
                _replace_dir(tmp, final)
            else:
                _publish_new_dir(tmp, final)
            return
        except OSError as e:
            racing = isinstance(e, (FileExistsError, FileNotFoundError)) or e.errno == errno.ENOTEMPTY
            if not racing or attempt == 4 or not tmp.is_dir():
                raise


def _exists_error(final: Path) -> OutputError:
    return OutputError(f"output '{final}' already exists (choose another name or pass --overwrite)")


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early, with a clear message, if ``path`` cannot be created.

    Raises:
        OutputError: something is at the path (a file, a folder or a symbolic link, even a dangling
            one) and ``overwrite`` is false, or its folder is missing or not writable.
    """
    p = Path(path)
    if not overwrite:
        if p.is_symlink():
            state = "" if p.exists() else " that points nowhere"
            raise OutputError(f"output '{p}' is a symbolic link{state} (remove it, choose another name or pass "
                              "--overwrite to replace the link)")
        if os.path.lexists(p):
            raise _exists_error(p)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write '{p}': folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write '{p}': folder '{parent}' is not writable")
    return p


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); move it to ``path`` on success.

    Without ``overwrite`` the move fails if anything appeared at ``path`` meanwhile (another
    writer), with :class:`OutputError`; with it, ``path`` is replaced atomically. On any exception,
    and when the process was cancelled (:class:`Cancelled`), the temporary file is removed and
    ``path`` is left untouched.
    """
    final = check_output_path(path, overwrite)
    stem, suffix = split_suffix(final)
    tmp = _temporary(final, "partial", suffix)
    with _shielded(final):
        try:
            yield tmp
            if not tmp.exists():
                raise OutputError(f"writer produced no file for '{final}'")
            _check_not_cancelled(final)
            if overwrite:
                if final.is_dir() and not final.is_symlink():
                    raise OutputError(f"output '{final}' is a folder; a file cannot replace it")
                os.replace(tmp, final)
            else:
                try:
                    _publish_new_file(tmp, final)
                except FileExistsError:
                    raise _exists_error(final) from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it to ``path`` when the block succeeds.

    Without ``overwrite`` the move fails if anything appeared at ``path`` meanwhile, with
    :class:`OutputError`; with it an existing folder (or a symbolic link) at ``path`` is replaced
    only after the new one is complete. On any exception, and when the process was cancelled
    (:class:`Cancelled`), the temporary folder is deleted.
    """
    final = check_output_path(path, overwrite)
    if os.path.lexists(final) and not final.is_symlink() and not final.is_dir():
        raise OutputError(f"output '{final}' exists and is not a folder")
    tmp = _temporary(final, "partial")
    with _shielded(final):
        tmp.mkdir()
        try:
            yield tmp
            _check_not_cancelled(final)
            _publish_dir(tmp, final, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
