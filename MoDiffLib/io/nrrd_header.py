"""A small NRRD codec: header parsing, the axis layout of volume sequences, and data blocks.

SimpleITK reads and writes 3D NRRD volumes well, but it cannot represent a Slicer volume
sequence (``.seq.nrrd``): ITK folds the ``list`` axis of frames into pixel components. This
module reads and writes such files directly, following the NRRD format specification
(http://teem.sourceforge.net/nrrd/format.html):

* the header is text: a magic line ``NRRD000n``, ``field: value`` lines, ``key:=value`` lines
  and ``#`` comments, ended by an empty line (attached data) or the end of a ``.nhdr`` file;
* the first axis varies fastest, so the data of ``sizes: I J K T`` is a C-ordered numpy array
  of shape ``(T, K, J, I)``;
* supported encodings: ``raw``, ``gzip``, ``bzip2``, ``ascii``; data attached or in one
  detached file (``data file:``).

Geometry stays in the file's space here (``space directions`` as written); converting to RAS
is the caller's job (:mod:`MoDiffLib.io.sequence_io`).
"""

from __future__ import annotations

import bz2
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from ..errors import InputError

#: NRRD type names (lower case, all spellings of the specification) -> numpy dtype.
_TYPES: dict[str, str] = {}
for _names, _dtype in [
    (("signed char", "int8", "int8_t"), "i1"),
    (("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
    (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
    (("int", "signed int", "int32", "int32_t"), "i4"),
    (("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    (
        ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
        "i8",
    ),
    (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
    (("float",), "f4"),
    (("double",), "f8"),
]:
    for _name in _names:
        _TYPES[_name] = _dtype

#: numpy dtype -> the canonical NRRD type name written (as teem and Slicer write it).
_TYPE_NAMES = {
    "i1": "signed char",
    "u1": "unsigned char",
    "i2": "short",
    "u2": "unsigned short",
    "i4": "int",
    "u4": "unsigned int",
    "i8": "long long int",
    "u8": "unsigned long long int",
    "f4": "float",
    "f8": "double",
}

#: NRRD ``space`` values -> sign flips that map the file's space to RAS.
_SPACE_TO_RAS_FLIP = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}

#: Axis kinds that hold the components of one voxel (never a frame axis).
VECTOR_KINDS = {"vector", "3-vector", "covariant-vector", "3-gradient", "normal", "3-normal", "point"}
#: Axis kinds that may hold the frames of a sequence.
LIST_KINDS = {"list", "time"}

_MAX_HEADER_BYTES = 1 << 20
_CHUNK_BYTES = 16 << 20
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_VECTOR = re.compile(r"\(([^)]*)\)|none", re.IGNORECASE)


@dataclass
class NrrdHeader:
    """A parsed NRRD header.

    Attributes:
        path: the header file.
        fields: standard fields, names in lower case, values as written.
        keyvalues: ``key:=value`` pairs, in file order.
        data_offset: byte offset of attached data in ``path`` (unused for detached data).
    """

    path: Path
    fields: dict[str, str]
    keyvalues: dict[str, str] = field(default_factory=dict)
    data_offset: int = 0

    # -- basic fields -----------------------------------------------------------------
    def _require(self, name: str) -> str:
        if name not in self.fields:
            raise InputError(f"NRRD file '{self.path}' has no '{name}' field")
        return self.fields[name]

    @property
    def dimension(self) -> int:
        try:
            dim = int(self._require("dimension"))
        except ValueError:
            raise InputError(f"NRRD file '{self.path}' has an invalid 'dimension' field") from None
        if dim < 1:
            raise InputError(f"NRRD file '{self.path}' has dimension {dim}")
        return dim

    @property
    def sizes(self) -> list[int]:
        try:
            sizes = [int(s) for s in self._require("sizes").split()]
        except ValueError:
            raise InputError(f"NRRD file '{self.path}' has an invalid 'sizes' field") from None
        if len(sizes) != self.dimension or min(sizes) < 1:
            raise InputError(f"NRRD file '{self.path}' has sizes {sizes} for dimension {self.dimension}")
        return sizes

    @property
    def dtype(self) -> np.dtype:
        name = " ".join(self._require("type").lower().split())
        if name not in _TYPES:
            raise InputError(f"NRRD file '{self.path}' has voxel type '{name}', which MoDiff cannot read")
        code = _TYPES[name]
        if code[1] != "1":
            endian = self.fields.get("endian", "little").strip().lower()
            if endian not in ("little", "big"):
                raise InputError(f"NRRD file '{self.path}' has an unknown byte order '{endian}'")
            code = ("<" if endian == "little" else ">") + code
        return np.dtype(code)

    @property
    def encoding(self) -> str:
        enc = self._require("encoding").strip().lower()
        aliases = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}
        aliases.update({"ascii": "ascii", "text": "ascii", "txt": "ascii"})
        if enc not in aliases:
            raise InputError(f"NRRD file '{self.path}' uses encoding '{enc}', which MoDiff cannot read")
        return aliases[enc]

    # -- per-axis fields --------------------------------------------------------------
    def _per_axis_strings(self, name: str) -> list[str]:
        if name not in self.fields:
            return [""] * self.dimension
        values = [_unescape_quoted(v) for v in _QUOTED.findall(self.fields[name])]
        if len(values) != self.dimension:
            return [""] * self.dimension
        return values

    @property
    def kinds(self) -> list[str]:
        if "kinds" not in self.fields:
            return [""] * self.dimension
        kinds = [k.lower() for k in self.fields["kinds"].split()]
        if len(kinds) != self.dimension:
            raise InputError(f"NRRD file '{self.path}' lists {len(kinds)} kinds for {self.dimension} axes")
        return kinds

    @property
    def labels(self) -> list[str]:
        return self._per_axis_strings("labels")

    @property
    def units(self) -> list[str]:
        return self._per_axis_strings("units")

    @property
    def space_to_ras_flip(self) -> np.ndarray:
        """Signs mapping the file's space to RAS (a missing ``space`` is read as LPS, as ITK does)."""
        space = self.fields.get("space", "left-posterior-superior").strip().lower()
        if space not in _SPACE_TO_RAS_FLIP:
            raise InputError(
                f"NRRD file '{self.path}' uses space '{space}'; MoDiff reads only RAS, LAS and LPS anatomical spaces"
            )
        return np.array(_SPACE_TO_RAS_FLIP[space])

    @property
    def space_directions(self) -> list[np.ndarray | None]:
        """One 3-vector per axis (in the file's space), ``None`` for non-spatial axes.

        Without a ``space directions`` field, the ``spacings`` field (or 1 mm) gives an axis-aligned
        grid on the first three axes whose kind allows space.
        """
        if "space directions" in self.fields:
            out: list[np.ndarray | None] = []
            for match in _VECTOR.finditer(self.fields["space directions"]):
                if match.group(1) is None:
                    out.append(None)
                    continue
                try:
                    vec = np.array([float(v) for v in match.group(1).split(",")])
                except ValueError:
                    raise InputError(f"NRRD file '{self.path}' has an invalid 'space directions' field") from None
                if vec.shape != (3,) or not np.all(np.isfinite(vec)):
                    raise InputError(f"NRRD file '{self.path}' has space directions that are not 3D vectors")
                out.append(vec)
            if len(out) != self.dimension:
                raise InputError(
                    f"NRRD file '{self.path}' lists {len(out)} space directions for {self.dimension} axes"
                )
            return out
        spacings = self.fields.get("spacings", "").split()
        kinds = self.kinds
        out = []
        found = 0  # spatial axes so far; the n-th one points along the n-th world axis
        for axis in range(self.dimension):
            if kinds[axis] not in ("", "domain", "space") or found == 3:
                out.append(None)
                continue
            try:
                s = float(spacings[axis]) if axis < len(spacings) else 1.0
            except ValueError:
                s = 1.0
            vec = np.zeros(3)
            vec[found] = s if np.isfinite(s) and s > 0 else 1.0
            out.append(vec)
            found += 1
        return out

    @property
    def space_origin(self) -> np.ndarray:
        text = self.fields.get("space origin")
        if text is None:
            return np.zeros(3)
        match = _VECTOR.search(text)
        try:
            origin = np.array([float(v) for v in match.group(1).split(",")])  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            raise InputError(f"NRRD file '{self.path}' has an invalid 'space origin' field") from None
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise InputError(f"NRRD file '{self.path}' has a space origin that is not a finite 3D point")
        return origin


@dataclass(frozen=True)
class SequenceLayout:
    """Where the spatial, frame and component axes of a NRRD file are (NRRD axis numbers).

    ``list_axis`` is ``None`` for a single 3D volume, ``vector_axis`` is ``None`` for scalar voxels.
    """

    spatial_axes: tuple[int, int, int]
    list_axis: int | None
    vector_axis: int | None


def sequence_layout(header: NrrdHeader) -> SequenceLayout:
    """Find the three spatial axes, the frame (list) axis and the component axis of a file.

    Slicer 5 writes frames on the last axis (``kinds: domain domain domain list``, or
    ``vector domain domain domain list`` for vector voxels); older Slicer versions wrote them
    first (``list domain domain domain``); both are accepted.

    Raises:
        InputError: the axes cannot be told apart or are not 3 spatial axes plus at most one
            frame axis and one component axis.
    """
    if header.dimension < 3:
        raise InputError(f"'{header.path}' is a {header.dimension}D image; MoDiff needs 3D volumes")
    directions = header.space_directions
    kinds = header.kinds
    sizes = header.sizes
    spatial = [a for a, d in enumerate(directions) if d is not None]
    if len(spatial) != 3:
        raise InputError(
            f"NRRD file '{header.path}' has {len(spatial)} spatial axes; MoDiff needs 3D volumes"
        )
    others = [a for a, d in enumerate(directions) if d is None]
    if len(others) > 2:
        raise InputError(f"NRRD file '{header.path}' has {len(others)} non-spatial axes; at most 2 are supported")
    list_axis = vector_axis = None
    if len(others) == 1:
        (axis,) = others
        if kinds[axis] in VECTOR_KINDS or (kinds[axis] not in LIST_KINDS and axis == 0 and sizes[axis] == 3):
            vector_axis = axis
        else:
            list_axis = axis
    elif len(others) == 2:
        a, b = others
        if kinds[a] in LIST_KINDS and kinds[b] not in LIST_KINDS:
            list_axis, vector_axis = a, b
        elif kinds[b] in LIST_KINDS and kinds[a] not in LIST_KINDS:
            list_axis, vector_axis = b, a
        elif kinds[a] in VECTOR_KINDS and kinds[b] not in VECTOR_KINDS:
            vector_axis, list_axis = a, b
        elif kinds[b] in VECTOR_KINDS and kinds[a] not in VECTOR_KINDS:
            vector_axis, list_axis = b, a
        else:
            raise InputError(
                f"NRRD file '{header.path}' has two non-spatial axes and its 'kinds' do not say which holds frames"
            )
    return SequenceLayout(tuple(spatial), list_axis, vector_axis)  # type: ignore[arg-type]


# -- reading -------------------------------------------------------------------------------


def read_header(path: str | Path) -> NrrdHeader:
    """Parse the header of a ``.nrrd`` or ``.nhdr`` file.

    Raises:
        InputError: the file is missing, is not a NRRD file, or its header is malformed.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.readline(64)
            if not magic.startswith(b"NRRD000"):
                raise InputError(f"'{p}' is not a NRRD file (it does not start with the 'NRRD000' magic line)")
            fields: dict[str, str] = {}
            keyvalues: dict[str, str] = {}
            offset = len(magic)
            while True:
                raw = f.readline(_MAX_HEADER_BYTES)
                offset += len(raw)
                if offset > _MAX_HEADER_BYTES:
                    raise InputError(f"NRRD file '{p}' has no end of header within {_MAX_HEADER_BYTES} bytes")
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if not raw or not line.strip():
                    break  # blank line: attached data follows; EOF: a detached header ends
                if line.startswith("#"):
                    continue
                kv = line.find(":=")
                fv = line.find(": ")
                if kv >= 0 and (fv < 0 or kv < fv):
                    keyvalues[_unescape_key(line[:kv])] = _unescape_key(line[kv + 2 :])
                elif fv >= 0:
                    fields[line[:fv].strip().lower()] = line[fv + 2 :].strip()
                else:
                    raise InputError(f"NRRD file '{p}' has a malformed header line: {line[:60]!r}")
    except FileNotFoundError:
        raise InputError(f"file '{p}' does not exist") from None
    except IsADirectoryError:
        raise InputError(f"'{p}' is a folder, not a NRRD file") from None
    except OSError as e:
        raise InputError(f"cannot read '{p}': {e.strerror or e}") from None
    return NrrdHeader(p, fields, keyvalues, offset)


#: Most bytes one byte of deflate data can expand to (deflate's limit is 1032:1, plus slack):
#: a gzip file shorter than ``declared / this`` cannot hold the data its header declares.
DEFLATE_MAX_RATIO = 1040


@dataclass(frozen=True)
class DataSource:
    """Where the voxel data of a NRRD file is: the file, the byte offset, and the skips."""

    path: Path
    offset: int
    line_skip: int
    byte_skip: int


def data_source(header: NrrdHeader) -> DataSource:
    """The file holding the data (attached, or the one ``data file``) and where it starts.

    Raises:
        InputError: the data is spread over several files, the data file is missing or is not a
            regular file (a device such as ``/dev/zero`` never ends), or the skips are invalid.
    """
    if "data file" not in header.fields and "datafile" not in header.fields:
        return DataSource(header.path, header.data_offset, 0, 0)
    name = header.fields.get("data file", header.fields.get("datafile", "")).strip()
    if not name or name.split()[0].upper() == "LIST" or len(name.split()) > 1:
        raise InputError(f"NRRD file '{header.path}' spreads its data over several files; MoDiff reads one")
    data_path = Path(name) if Path(name).is_absolute() else header.path.parent / name
    try:
        line_skip = int(header.fields.get("line skip", header.fields.get("lineskip", "0")))
        byte_skip = int(header.fields.get("byte skip", header.fields.get("byteskip", "0")))
    except ValueError:
        raise InputError(f"NRRD file '{header.path}' has an invalid 'line skip' or 'byte skip'") from None
    if not data_path.exists():
        raise InputError(f"NRRD file '{header.path}' points to data file '{data_path}', which does not exist")
    if not data_path.is_file():
        raise InputError(
            f"NRRD file '{header.path}' points to data file '{data_path}', which is not a regular file"
        )
    return DataSource(data_path, 0, max(line_skip, 0), byte_skip)


def check_data_size(header: NrrdHeader, max_values: int) -> DataSource:
    """Check the declared data against ``max_values`` and against the data file's size, from the
    header alone, so that a hostile header costs no memory; returns the data's :class:`DataSource`.

    Raw data must fit in the file; gzip data cannot expand more than :data:`DEFLATE_MAX_RATIO`
    times; ASCII data needs at least one byte per value. (bzip2 has no useful bound.)

    Raises:
        InputError: more values than ``max_values``, data that cannot fit in its file, or any
            :func:`data_source` problem.
    """
    sizes = header.sizes
    count = int(np.prod(sizes, dtype=object))  # Python ints: 32767^4 must not overflow
    if count > max_values:
        raise InputError(
            f"NRRD file '{header.path}' declares {count} voxel values (sizes {' '.join(map(str, sizes))}); "
            f"MoDiff reads at most {max_values}"
        )
    source = data_source(header)
    encoding = header.encoding
    need = count * header.dtype.itemsize
    available = source.path.stat().st_size - source.offset - max(source.byte_skip, 0)
    if encoding == "raw":
        fits = need <= available
    elif encoding == "gzip":
        fits = need <= available * DEFLATE_MAX_RATIO
    elif encoding == "ascii":
        fits = count <= available
    else:
        fits = True
    if not fits:
        where = f"its data file '{source.path}'" if source.path != header.path else "the file"
        raise InputError(
            f"NRRD file '{header.path}' is truncated: its header declares {count} voxel values ({need} bytes, "
            f"{encoding}) but {where} holds {max(available, 0)} bytes of data"
        )
    return source


def read_data(header: NrrdHeader, max_values: int) -> np.ndarray:
    """Read the voxel data: a C-ordered array of shape ``reversed(sizes)`` in native byte order.

    The declared size is checked first (:func:`check_data_size`), so memory is only taken for
    data that is there and within ``max_values``.

    Raises:
        InputError: too many values, the data is truncated, corrupt, or its file is missing.
    """
    source = check_data_size(header, max_values)
    dtype = header.dtype
    count = int(np.prod(header.sizes, dtype=np.int64))
    encoding = header.encoding
    data_path, byte_skip = source.path, source.byte_skip
    try:
        with open(data_path, "rb") as f:
            f.seek(source.offset)
            for _ in range(source.line_skip):
                f.readline()
            if encoding == "raw" and byte_skip == -1:
                f.seek(-count * dtype.itemsize, 2)
            elif encoding == "raw" and byte_skip > 0:
                f.seek(byte_skip, 1)
            if encoding == "raw":
                array = np.fromfile(f, dtype=dtype, count=count)
                got = array.size
            elif encoding == "ascii":
                tokens = f.read().split()
                array = np.array(tokens[:count], dtype=np.float64).astype(dtype)
                got = len(tokens)
            else:
                array = np.empty(count, dtype=dtype)
                got = decompress_into(f, array, encoding, max(byte_skip, 0)) // dtype.itemsize
    except FileNotFoundError:
        raise InputError(f"NRRD file '{header.path}' points to data file '{data_path}', which does not exist") from None
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise InputError(f"NRRD file '{header.path}' has corrupt {encoding} data ({e})") from None
    if got < count:
        raise InputError(f"NRRD file '{header.path}' is truncated: it holds {got} of {count} voxel values")
    return array.astype(dtype.newbyteorder("="), copy=False).reshape(header.sizes[::-1])


def decompress_into(f: BinaryIO, out: np.ndarray, encoding: str, skip: int = 0) -> int:
    """Stream-decompress ``f`` into the bytes of ``out``; return the number of bytes produced.

    Reading stops once ``out`` is full, so a stream that expands to more than its header declares
    (a "gzip bomb") costs no more than ``out``. Compressed input is fed in 64 KiB pieces, so one
    piece never expands to more than about 64 MiB, and ``out``'s pages are written only as data
    arrives (a truncated stream costs what it holds, not what was declared). Concatenated gzip
    members (and bzip2 streams) are one stream, as gzip and bzip2 define.

    Args:
        f: the compressed data, positioned at its start.
        out: the array to fill (any dtype; its bytes are written).
        encoding: ``gzip`` or ``bzip2``.
        skip: decompressed bytes to drop before filling ``out`` (e.g. a NIfTI header).
    """
    target = out.view(np.uint8).reshape(-1)
    new = (lambda: zlib.decompressobj(wbits=47)) if encoding == "gzip" else bz2.BZ2Decompressor
    dec = new()
    pos = 0
    pending = b""
    while pos < target.size:
        data = pending or f.read(1 << 16)
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


# -- writing -------------------------------------------------------------------------------


def nrrd_type_name(dtype: np.dtype) -> str:
    """The NRRD ``type`` name of a numpy dtype (ValueError for types NRRD lacks)."""
    code = np.dtype(dtype).str[1:]
    if code not in _TYPE_NAMES:
        raise ValueError(f"NRRD cannot store voxels of type {np.dtype(dtype)}")
    return _TYPE_NAMES[code]


def format_vector(values: Iterable[float]) -> str:
    """``(a,b,c)`` with shortest round-trip floats, as in ``space origin``."""
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def quote(text: str) -> str:
    """A per-axis string field entry: ``"text"`` with quotes and backslashes escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_nrrd(
    f: BinaryIO,
    fields: list[tuple[str, str]],
    keyvalues: list[tuple[str, str]],
    blocks: Iterable[np.ndarray],
    compress_level: int | None,
) -> None:
    """Write a NRRD file with attached data to the open binary file ``f``.

    Args:
        fields: ``(name, value)`` standard fields in order; ``encoding`` and ``endian`` are added.
        keyvalues: ``(key, value)`` pairs written as ``key:=value``.
        blocks: C-contiguous arrays whose bytes, concatenated, are the data (first axis fastest).
            All must have the same little-endian dtype.
        compress_level: zlib level 1-9 for gzip encoding, or ``None`` for raw.
    """
    lines = ["NRRD0004", "# Complete NRRD file format specification at:"]
    lines += ["# http://teem.sourceforge.net/nrrd/format.html"]
    lines += [f"{name}: {value}" for name, value in fields]
    lines += ["endian: little", f"encoding: {'raw' if compress_level is None else 'gzip'}"]
    lines += [f"{_escape_key(k)}:={_escape_key(v)}" for k, v in keyvalues]
    f.write(("\n".join(lines) + "\n\n").encode("utf-8"))
    comp = None if compress_level is None else zlib.compressobj(compress_level, zlib.DEFLATED, 31)
    for block in blocks:
        flat = np.ascontiguousarray(block).reshape(-1).view(np.uint8)
        for start in range(0, flat.size, _CHUNK_BYTES):
            piece = flat[start : start + _CHUNK_BYTES]
            f.write(piece.data if comp is None else comp.compress(piece.data))
    if comp is not None:
        f.write(comp.flush())


# -- escaping --------------------------------------------------------------------------------


def _unescape_quoted(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape_key(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)
