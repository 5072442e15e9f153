"""NRRD files: pynrrd parses the header fields and writes files; MoDiff adds what pynrrd leaves out.

pynrrd (https://github.com/mhe/pynrrd), the field's NRRD library, parses every header field
(numbers, vectors, matrices, quoted lists) and writes header and data. Around it, this module adds:

* the header's extent: read here, at most 1 MiB up to the blank line, then handed to pynrrd one
  field at a time, so that an error names the field; ``key:=value`` pairs are kept apart from
  the fields (pynrrd puts both in one dictionary) and field names are case-insensitive, as in teem;
* the axis layout of a Slicer volume sequence (:func:`sequence_layout`) and the file's space as
  sign flips to RAS; geometry stays in the file's space here, converting it to RAS is the
  caller's job (:mod:`MoDiffLib.io.sequence_io`);
* the voxel data, read under a budget: the declared size is checked against the voxel budget and
  the data's size before any memory is taken (:func:`check_data_size`), a detached data file must
  be a regular file (:func:`data_source`), and compressed data is streamed into the declared size
  and no further. (pynrrd's ``read_data`` reads a data file to its end and decompresses all of it:
  a 345-byte header naming ``/dev/zero``, or a gzip bomb, would cost whatever they hold.)

The first axis varies fastest, so the data of ``sizes: I J K T`` is a C-ordered numpy array of
shape ``(T, K, J, I)``. Encodings ``raw``, ``gzip``, ``bzip2`` and ``ascii`` are read, attached or
in one detached file (``data file:``).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import nrrd
import numpy as np
from nrrd.errors import NRRDError
from nrrd.reader import _TYPEMAP_NRRD2NUMPY  # the specification's type names; pynrrd keeps the table private

from ..errors import InputError
from .decompress import DEFLATE_MAX_RATIO, decompress_into

#: NRRD ``space`` values -> sign flips that map the file's space to RAS.
_SPACE_TO_RAS_FLIP = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}
_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
              "ascii": "ascii", "text": "ascii", "txt": "ascii"}

#: Axis kinds that hold the components of one voxel (never a frame axis).
VECTOR_KINDS = {"vector", "3-vector", "covariant-vector", "3-gradient", "normal", "3-normal", "point"}
#: Axis kinds that may hold the frames of a sequence.
LIST_KINDS = {"list", "time"}

#: Per-axis fields of quoted strings.
_QUOTED_FIELDS = ("labels", "units", "space units")
_MAX_HEADER_BYTES = 1 << 20
_MAGIC = "NRRD0005"  # the newest version pynrrd reads; the file's own magic is checked separately


@dataclass
class NrrdHeader:
    """A parsed NRRD header.

    Attributes:
        path: the header file.
        fields: standard fields, names in lower case, values as pynrrd parses them (``sizes`` an
            int array, ``space directions`` a matrix with NaN rows for ``none``, ...).
        keyvalues: ``key:=value`` pairs, in file order.
        data_offset: byte offset of attached data in ``path`` (unused for detached data).
    """

    path: Path
    fields: dict[str, Any]
    keyvalues: dict[str, str] = field(default_factory=dict)
    data_offset: int = 0

    def _require(self, name: str) -> Any:
        if name not in self.fields:
            raise InputError(f"NRRD file '{self.path}' has no '{name}' field")
        return self.fields[name]

    @property
    def dimension(self) -> int:
        dim = self._require("dimension")
        if dim < 1:
            raise InputError(f"NRRD file '{self.path}' has dimension {dim}")
        return dim

    @property
    def sizes(self) -> list[int]:
        sizes = [int(s) for s in np.atleast_1d(self._require("sizes"))]
        if len(sizes) != self.dimension or min(sizes) < 1:
            raise InputError(f"NRRD file '{self.path}' has sizes {sizes} for dimension {self.dimension}")
        return sizes

    @property
    def dtype(self) -> np.dtype:
        """The voxel type, in the file's byte order (which, as in teem, multi-byte binary data must state)."""
        name = " ".join(self._require("type").lower().split())
        code = _TYPEMAP_NRRD2NUMPY.get(name, "V")
        if code == "V":  # "block" (opaque records) or no NRRD type at all
            raise InputError(f"NRRD file '{self.path}' has voxel type '{name}', which MoDiff cannot read")
        dtype = np.dtype(code)
        if dtype.itemsize > 1 and self.encoding != "ascii":
            endian = self.fields.get("endian", "").strip().lower()
            if endian not in ("little", "big"):
                what = f"an unknown byte order '{endian}'" if endian else "no 'endian' field"
                raise InputError(f"NRRD file '{self.path}' has {what}; its '{name}' voxels need one")
            dtype = dtype.newbyteorder("<" if endian == "little" else ">")
        return dtype

    @property
    def encoding(self) -> str:
        enc = self._require("encoding").strip().lower()
        if enc not in _ENCODINGS:
            raise InputError(f"NRRD file '{self.path}' uses encoding '{enc}', which MoDiff cannot read")
        return _ENCODINGS[enc]

    @property
    def kinds(self) -> list[str]:
        if "kinds" not in self.fields:
            return [""] * self.dimension
        kinds = [k.lower() for k in self.fields["kinds"]]
        if len(kinds) != self.dimension:
            raise InputError(f"NRRD file '{self.path}' lists {len(kinds)} kinds for {self.dimension} axes")
        return kinds

    def _per_axis_strings(self, name: str) -> list[str]:
        values = self.fields.get(name, [])
        return list(values) if len(values) == self.dimension else [""] * self.dimension

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
            # pynrrd gives a matrix with NaN rows for "none" (a list with None from pynrrd 2 on)
            out = [None if row is None or np.all(np.isnan(row)) else np.asarray(row, float)
                   for row in self.fields["space directions"]]
            if len(out) != self.dimension:
                raise InputError(f"NRRD file '{self.path}' lists {len(out)} space directions for {self.dimension} axes")
            if any(v is not None and (v.shape != (3,) or not np.all(np.isfinite(v))) for v in out):
                raise InputError(f"NRRD file '{self.path}' has space directions that are not 3D vectors")
            return out
        spacings = list(self.fields.get("spacings", []))
        kinds = self.kinds
        out = []
        found = 0  # spatial axes so far; the n-th one points along the n-th world axis
        for axis in range(self.dimension):
            if kinds[axis] not in ("", "domain", "space") or found == 3:
                out.append(None)
                continue
            s = spacings[axis] if axis < len(spacings) else 1.0
            vec = np.zeros(3)
            vec[found] = s if np.isfinite(s) and s > 0 else 1.0
            out.append(vec)
            found += 1
        return out

    @property
    def space_origin(self) -> np.ndarray:
        origin = np.asarray(self.fields.get("space origin", np.zeros(3)), dtype=float)
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
    """Parse the header of a ``.nrrd`` or ``.nhdr`` file (never its data).

    Raises:
        InputError: the file is missing, is not a NRRD file, or its header is malformed (the
            message names the field).
    """
    p = Path(path)
    lines = []
    try:
        with open(p, "rb") as f:
            magic = f.readline(64)
            if not magic.startswith(b"NRRD000"):
                raise InputError(f"'{p}' is not a NRRD file (it does not start with the 'NRRD000' magic line)")
            offset = len(magic)
            while True:
                raw = f.readline(_MAX_HEADER_BYTES)
                offset += len(raw)
                if offset > _MAX_HEADER_BYTES:
                    raise InputError(f"NRRD file '{p}' has no end of header within {_MAX_HEADER_BYTES} bytes")
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if not line.strip():
                    break  # blank line: attached data follows; end of file: a detached header ends
                if not line.startswith("#"):
                    lines.append(line)
    except FileNotFoundError:
        raise InputError(f"file '{p}' does not exist") from None
    except IsADirectoryError:
        raise InputError(f"'{p}' is a folder, not a NRRD file") from None
    except OSError as e:
        raise InputError(f"cannot read '{p}': {e.strerror or e}") from None
    try:
        nrrd.read_header([magic.decode("ascii", errors="replace").strip()])  # a version pynrrd reads
    except NRRDError as e:
        raise InputError(f"NRRD file '{p}': {e}") from None
    fields: dict[str, Any] = {}
    keyvalues: dict[str, str] = {}
    for line in lines:
        kv, fv = line.find(":="), line.find(": ")
        if kv >= 0 and (fv < 0 or kv < fv):
            keyvalues[_unescape_key(line[:kv])] = _unescape_key(line[kv + 2 :])
            continue
        if fv < 0:
            raise InputError(f"NRRD file '{p}' has a malformed header line: {line[:60]!r}")
        name, value = line[:fv].strip().lower(), line[fv + 2 :].strip()
        if name in _QUOTED_FIELDS:  # teem's only escape there is \"; pynrrd's shlex also takes \\
            value = re.sub(r'\\(?!")', r"\\\\", value)
        if name in fields:
            raise InputError(f"NRRD file '{p}' has two '{name}' fields")
        try:
            fields[name] = nrrd.read_header([_MAGIC, f"{name}: {value}"])[name]
        except (NRRDError, ValueError, KeyError) as e:
            raise InputError(f"NRRD file '{p}' has an invalid '{name}' field ({e})") from None
    return NrrdHeader(p, fields, keyvalues, offset)


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
    fields = header.fields
    if "data file" not in fields and "datafile" not in fields:
        return DataSource(header.path, header.data_offset, 0, 0)
    name = fields.get("data file", fields.get("datafile", "")).strip()
    if not name or name.split()[0].upper() == "LIST" or len(name.split()) > 1:
        raise InputError(f"NRRD file '{header.path}' spreads its data over several files; MoDiff reads one")
    data_path = Path(name) if Path(name).is_absolute() else header.path.parent / name
    line_skip = fields.get("line skip", fields.get("lineskip", 0))
    byte_skip = fields.get("byte skip", fields.get("byteskip", 0))
    if line_skip < 0 or byte_skip < -1:
        raise InputError(f"NRRD file '{header.path}' has an invalid 'line skip' or 'byte skip'")
    if not data_path.exists():
        raise InputError(f"NRRD file '{header.path}' points to data file '{data_path}', which does not exist")
    if not data_path.is_file():
        raise InputError(
            f"NRRD file '{header.path}' points to data file '{data_path}', which is not a regular file"
        )
    return DataSource(data_path, 0, line_skip, byte_skip)


def check_data_size(header: NrrdHeader, max_values: int) -> DataSource:
    """Check the declared data against ``max_values`` and against the data file's size, from the
    header alone, so that a hostile header costs no memory; returns the data's :class:`DataSource`.

    Raw data must fit in the file; gzip data cannot expand more than
    :data:`~MoDiffLib.io.decompress.DEFLATE_MAX_RATIO` times; ASCII data needs at least one byte
    per value. (bzip2 has no useful bound.)

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
                f.seek(-count * dtype.itemsize, 2)  # -1: the data is the file's last bytes
            elif encoding == "raw" and byte_skip > 0:
                f.seek(byte_skip, 1)
            if encoding == "raw":
                array = np.fromfile(f, dtype=dtype, count=count)
                got = array.size
            elif encoding == "ascii":
                tokens = f.read().split()
                array = np.array(tokens[:count], dtype=np.float64).astype(dtype)
                got = len(tokens)
            else:  # byte skip counts decompressed bytes here
                array = np.empty(count, dtype=dtype)
                got = decompress_into(f, array, encoding, max(byte_skip, 0)) // dtype.itemsize
    except FileNotFoundError:
        raise InputError(f"NRRD file '{header.path}' points to data file '{data_path}', which does not exist") from None
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise InputError(f"NRRD file '{header.path}' has corrupt {encoding} data ({e})") from None
    if got < count:
        raise InputError(f"NRRD file '{header.path}' is truncated: it holds {got} of {count} voxel values")
    return array.astype(dtype.newbyteorder("="), copy=False).reshape(header.sizes[::-1])


# -- writing -------------------------------------------------------------------------------


def write_nrrd(
    f: BinaryIO,
    data: np.ndarray,
    fields: dict[str, Any],
    keyvalues: dict[str, str],
    compress_level: int | None,
) -> None:
    """Write ``data`` as a NRRD file with attached header to the open binary file ``f`` (pynrrd).

    Args:
        data: the voxels, C-ordered: NRRD's first (fastest) axis is the array's last, so an array of
            shape ``(T, K, J, I)`` is written as ``sizes: I J K T``. ``type``, ``dimension``,
            ``sizes`` and ``endian`` come from it.
        fields: standard fields in pynrrd's value types (``space directions`` a matrix with NaN rows
            for ``none``, ``labels`` a list of strings, ...); all text ASCII.
        keyvalues: pairs written as ``key:=value`` (keys that are not NRRD field names).
        compress_level: zlib level 1-9 for gzip encoding, or ``None`` for raw.
    """
    header = {name: _escape_quoted(value) if name in _QUOTED_FIELDS else value for name, value in fields.items()}
    header["encoding"] = "raw" if compress_level is None else "gzip"
    header.update((key, _escape_key(value)) for key, value in keyvalues.items())
    nrrd.write(f, np.ascontiguousarray(data), header, compression_level=compress_level or 1, index_order="C")


# -- escaping (pynrrd writes text as given and reads quoted lists with shlex) -----------------------


def _escape_quoted(values: list[str]) -> list[str]:
    """Entries of a quoted per-axis list as teem writes them: quotes escaped, backslashes as they are
    (so an entry cannot end with a backslash)."""
    return [v.replace('"', '\\"') for v in values]


def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape_key(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)
