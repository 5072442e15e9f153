"""SHA-256 checksums of model files: one file's digest, and a folder checked against expected digests.

Below both the model registry and the checkpoint loader, which each verify model folders with it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

from .errors import InputError


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (for the model registry's checksums)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cannot compute the checksum of '{p}': no such file")
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksums(folder: Path, sha256: Mapping[str, str], what: str, against: str = "the registry") -> None:
    """Check each named file's SHA-256; a missing or mismatching file is a one-line InputError.

    Args:
        folder: the model folder.
        sha256: file name -> expected hex digest.
        what: how the message names the model, e.g. ``model 'modiff-lung-motion'``.
        against: where the expected digests come from, for the message.
    """
    for filename, expected in sha256.items():
        f = folder / filename
        if not f.is_file():
            raise InputError(f"{what}: file '{f}' is missing")
        if sha256_file(f) != str(expected).lower():
            raise InputError(
                f"{what}: checksum of '{f}' does not match {against} (file damaged, truncated or replaced); "
                "re-install, re-download or re-save the model"
            )
