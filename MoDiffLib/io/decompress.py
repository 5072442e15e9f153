"""Decompression that never produces more than the caller's header declared.

Shared by the NRRD and NIfTI readers: the declared size is checked first (against the voxel
budget, and against :data:`DEFLATE_MAX_RATIO` times the compressed size), then the data is
streamed into an array of exactly that size, so a "gzip bomb" costs no more than its header says.
"""

from __future__ import annotations

import bz2
import zlib
from typing import BinaryIO

import numpy as np

#: Most bytes one byte of deflate data can expand to (deflate's limit is 1032:1, plus slack):
#: a gzip file shorter than ``declared / this`` cannot hold the data its header declares.
DEFLATE_MAX_RATIO = 1040

_PIECE_BYTES = 1 << 16


def decompress_into(f: BinaryIO, out: np.ndarray, encoding: str, skip: int = 0) -> int:
    """Stream-decompress ``f`` into the bytes of ``out``; return the number of bytes produced.

    Reading stops once ``out`` is full, so a stream that expands to more than declared costs no
    more than ``out``. Compressed input is fed in 64 KiB pieces, so one piece never expands to
    more than about 64 MiB, and ``out``'s pages are written only as data arrives (a truncated
    stream costs what it holds, not what was declared). Concatenated gzip members (and bzip2
    streams) are one stream, as gzip and bzip2 define.

    Args:
        f: the compressed data, positioned at its start.
        out: the array to fill (any dtype; its bytes are written).
        encoding: ``gzip`` or ``bzip2``.
        skip: decompressed bytes to drop before filling ``out`` (e.g. a NIfTI header).

    Raises:
        zlib.error, OSError, EOFError: corrupt data (callers turn these into an InputError).
    """
    target = out.view(np.uint8).reshape(-1)
    new = (lambda: zlib.decompressobj(wbits=47)) if encoding == "gzip" else bz2.BZ2Decompressor
    dec = new()
    pos = 0
    pending = b""
    while pos < target.size:
        data = pending or f.read(_PIECE_BYTES)
        pending = b""
        if not data:
            break
        piece = dec.decompress(data)
        if dec.eof:
            pending = dec.unused_data  # the next member starts here (or in the next read)
            dec = new()
        if skip:
            drop = min(skip, len(piece))
            piece, skip = piece[drop:], skip - drop
        n = min(len(piece), target.size - pos)
        target[pos : pos + n] = np.frombuffer(piece, dtype=np.uint8, count=n)
        pos += n
    return pos
