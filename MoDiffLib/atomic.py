"""Write outputs so that a crash, a cancel or an error never leaves a half-written file.

Files are written under a temporary name in the destination folder and renamed into place
only when complete (``os.replace`` is atomic on one file system). Output folders are built
under a temporary name and renamed the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import OutputError

#: Multi-part suffixes that file writers dispatch on; the temporary name keeps them.
_COMPOUND_SUFFIXES = (".seq.nrrd", ".nii.gz", ".mrk.json")


def split_suffix(path: str | os.PathLike) -> tuple[str, str]:
    """Split ``name.seq.nrrd`` into ``("name", ".seq.nrrd")`` (compound suffixes kept whole)."""
    name = Path(path).name
    for suffix in _COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    p = Path(name)
    return p.stem, p.suffix


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early, with a clear message, if ``path`` cannot be created.

    Raises:
        OutputError: the path exists (and ``overwrite`` is false), or its folder is missing
            or not writable.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputError(f"output '{p}' already exists (choose another name or pass --overwrite)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write '{p}': folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write '{p}': folder '{parent}' is not writable")
    return p


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    final = check_output_path(path, overwrite)
    stem, suffix = split_suffix(final)
    tmp = final.with_name(f".{stem}.partial-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"writer produced no file for '{final}'")
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it to ``path`` when the block succeeds.

    With ``overwrite`` an existing folder at ``path`` is replaced only after the new one is
    complete. On any exception the temporary folder is deleted.
    """
    final = check_output_path(path, overwrite)
    if final.exists() and not final.is_dir():
        raise OutputError(f"output '{final}' exists and is not a folder")
    tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
