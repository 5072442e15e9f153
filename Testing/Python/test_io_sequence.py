"""4D cines: Slicer .seq.nrrd and 4D NIfTI round trips, hand-made files, and bad input."""

import gzip
import os
import subprocess
import sys
import textwrap
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from MoDiffLib import Geometry, InputError, OutputError, VolumeSequence
from MoDiffLib.io import read_sequence, write_sequence, write_volume
from MoDiffLib.io.nrrd_io import read_header
from MoDiffLib.volume import Volume

SPACING = (0.7, 0.9, 2.5)
ORIGIN_RAS = (12.5, -40.25, 77.0)
SHAPE = (5, 6, 7)  # (K, J, I)


def oblique_direction() -> np.ndarray:
    a, b = np.deg2rad(25.0), np.deg2rad(-40.0)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ ry


def geometry() -> Geometry:
    return Geometry(SHAPE, SPACING, ORIGIN_RAS, oblique_direction())


def make_sequence(dtype=np.int16, vector=False, frames=4, **index) -> VolumeSequence:
    rng = np.random.default_rng(3)
    shape = (frames,) + SHAPE + ((3,) if vector else ())
    if np.issubdtype(dtype, np.integer):
        data = rng.integers(-1000, 2000, size=shape).astype(dtype)
    else:
        data = (rng.normal(size=shape) * 10).astype(dtype)
    index = index or {"index_name": "time", "index_unit": "s", "index_values": [f"{0.25 * t:g}" for t in range(frames)]}
    return VolumeSequence(data, geometry(), "cine", **index)


def assert_same_sequence(read: VolumeSequence, written: VolumeSequence, index=True) -> None:
    assert read.frames.dtype == written.frames.dtype
    assert read.frames.shape == written.frames.shape
    np.testing.assert_array_equal(read.frames, written.frames)
    np.testing.assert_allclose(read.geometry.ijk_to_ras(), written.geometry.ijk_to_ras(), atol=1e-5, rtol=0)
    if index:
        assert (read.index_name, read.index_unit, read.index_values) == (
            written.index_name,
            written.index_unit,
            written.index_values,
        )


# -- .seq.nrrd -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_seq_nrrd_round_trip(tmp_path, dtype, compress):
    seq = make_sequence(dtype)
    path = write_sequence(seq, tmp_path / "cine.seq.nrrd", compress=compress)
    read = read_sequence(path)
    assert_same_sequence(read, seq)
    assert read.name == "cine"
    assert read_header(path).encoding == ("gzip" if compress else "raw")
    assert os.listdir(tmp_path) == ["cine.seq.nrrd"]


def test_seq_nrrd_vector_round_trip(tmp_path):
    seq = make_sequence(np.float32, vector=True, frames=3)
    read = read_sequence(write_sequence(seq, tmp_path / "fields.seq.nrrd"))
    assert_same_sequence(read, seq)


def test_seq_nrrd_text_index_values_survive_spaces_and_quotes(tmp_path):
    values = ["end exhale", "50% 'in'", '<a> "b"', "peak"]
    seq = make_sequence(frames=4, index_name="breathing phase", index_unit="%", index_values=values)
    read = read_sequence(write_sequence(seq, tmp_path / "phases.seq.nrrd"))
    assert read.index_values == values
    assert (read.index_name, read.index_unit) == ("breathing phase", "%")


def header_lines(path) -> list[str]:
    """The header of a NRRD file with attached data as text, read without any NRRD library."""
    return path.read_bytes().split(b"\n\n", 1)[0].decode("ascii").splitlines()


def test_seq_nrrd_header_has_the_slicer_layout(tmp_path):
    path = write_sequence(make_sequence(), tmp_path / "cine.seq.nrrd")
    lines = header_lines(path)
    for line in ["space: left-posterior-superior", "sizes: 7 6 5 4", "kinds: domain domain domain list",
                 'labels: "" "" "" "time"', 'units: "" "" "" "s"', "endian: little", "encoding: gzip",
                 "DataNodeClassName:=vtkMRMLScalarVolumeNode", "axis 3 index type:=numeric",
                 "axis 3 index values:=0 0.25 0.5 0.75"]:
        assert line in lines
    (directions,) = [ln for ln in lines if ln.startswith("space directions: ")]
    assert directions.endswith(") none") and directions.count("(") == 3
    h = read_header(path)
    assert h.sizes == [7, 6, 5, 4]
    assert h.kinds == ["domain", "domain", "domain", "list"]
    assert h.labels == ["", "", "", "time"] and h.units == ["", "", "", "s"]
    assert h.space_directions[3] is None
    assert h.keyvalues["axis 3 index values"] == "0 0.25 0.5 0.75"
    unordered = make_sequence(frames=3, index_name="t", index_unit="s", index_values=["2", "1", "5"])
    assert read_header(write_sequence(unordered, tmp_path / "u.seq.nrrd")).keyvalues["axis 3 index type"] == "text"
    # LPS on disk: the i direction in the file is the RAS one with R and A negated
    i_lps = np.array([float(v) for v in directions.split("(")[1].split(")")[0].split(",")])
    np.testing.assert_allclose(i_lps, [-1, -1, 1] * oblique_direction()[:, 0] * SPACING[0], atol=1e-12)
    np.testing.assert_allclose(h.space_directions[0], i_lps, rtol=0, atol=0)

    vector_path = write_sequence(make_sequence(np.float32, vector=True), tmp_path / "f.seq.nrrd")
    lines = header_lines(vector_path)
    assert "kinds: vector domain domain domain list" in lines and "sizes: 3 7 6 5 4" in lines
    assert any(ln.startswith("space directions: none (") and ln.endswith(") none") for ln in lines)
    assert "DataNodeClassName:=vtkMRMLVectorVolumeNode" in lines
    assert "axis 3 index values:=0 0.25 0.5 0.75" in lines  # Slicer does not count the component axis
    assert read_header(vector_path).kinds == ["vector", "domain", "domain", "domain", "list"]


def write_handmade_nrrd(path, header_lines, payload: bytes) -> None:
    path.write_bytes(("\n".join(["NRRD0004", *header_lines]) + "\n\n").encode() + payload)


def test_reads_old_slicer_layout_with_list_axis_first_and_ras_space(tmp_path):
    """A file written by hand (not by MoDiff): frames first, RAS space, big-endian raw data."""
    t, i, j, k = 2, 3, 2, 2
    values = np.arange(t * i * j * k, dtype=">i2")  # first axis (frames) varies fastest
    write_handmade_nrrd(
        tmp_path / "old.seq.nrrd",
        [
            "type: short",
            "dimension: 4",
            "space: right-anterior-superior",
            f"sizes: {t} {i} {j} {k}",
            "space directions: none (0,2,0) (-1.5,0,0) (0,0,3)",
            "kinds: list domain domain domain",
            'labels: "cardiac phase" "" "" ""',
            "endian: big",
            "encoding: raw",
            "space origin: (10,20,30)",
            "axis 0 index type:=text",
            "axis 0 index values:=ED ES%20late",
        ],
        values.tobytes(),
    )
    seq = read_sequence(tmp_path / "old.seq.nrrd")
    assert seq.frames.shape == (t, k, j, i)
    # voxel (frame f, i, j, k) is value f + t*(i + I*(j + J*k))
    assert seq.frames[1, 1, 0, 2] == 1 + t * (2 + i * (0 + j * 1))
    assert seq.index_name == "cardiac phase" and seq.index_values == ["ED", "ES late"]
    expected = np.array([[0, -1.5, 0, 10], [2, 0, 0, 20], [0, 0, 3, 30], [0, 0, 0, 1]])
    np.testing.assert_allclose(seq.geometry.ijk_to_ras(), expected, atol=1e-12)


def test_reads_gzip_sequence_with_slicer_5_layout_made_by_hand(tmp_path):
    frames = np.arange(3 * 2 * 2 * 2, dtype="<f4").reshape(3, 2, 2, 2)
    write_handmade_nrrd(
        tmp_path / "s.seq.nrrd",
        [
            "type: float",
            "dimension: 4",
            "space: left-posterior-superior",
            "sizes: 2 2 2 3",
            "space directions: (-1,0,0) (0,-1,0) (0,0,1) none",
            "kinds: domain domain domain list",
            'labels: "" "" "" "time"',
            'units: "" "" "" "ms"',
            "endian: little",
            "encoding: gzip",
            "space origin: (-5,-6,7)",
            "axis 3 index values:=0 40 80",
        ],
        gzip.compress(frames.tobytes()),
    )
    seq = read_sequence(tmp_path / "s.seq.nrrd")
    np.testing.assert_array_equal(seq.frames, frames)
    assert seq.geometry.origin_ras == (5.0, 6.0, 7.0)
    np.testing.assert_allclose(seq.geometry.direction, np.eye(3))
    assert (seq.index_name, seq.index_unit, seq.index_values) == ("time", "ms", ["0", "40", "80"])


def test_reads_the_fields_slicer_and_teem_write(tmp_path):
    """Comments, `measurement frame`, `space units`, `centerings`, upper-case field names and a
    big-endian gzip stream: accepted and, apart from the grid, ignored."""
    frames = np.arange(2 * 3 * 2 * 2, dtype=">f8").reshape(2, 3, 2, 2)  # (T, K, J, I)
    write_handmade_nrrd(
        tmp_path / "teem.seq.nrrd",
        [
            "# written by hand, as Slicer's storage node writes it",
            "type: double",
            "Dimension: 4",
            "space: left-posterior-superior",
            "sizes: 2 2 3 2",
            "space directions: (-2,0,0) (0,-2,0) (0,0,4) none",
            "kinds: domain domain domain list",
            "centerings: cell cell cell ???",
            'space units: "mm" "mm" "mm"',
            "measurement frame: (1,0,0) (0,1,0) (0,0,1)",
            "endian: big",
            "encoding: gz",
            "space origin: (10,20,30)",
            "# a comment between fields",
            "DICOM.PatientName:=Anonymous: the name:=kept whole",
            "axis 3 index values:=1.5 2.5",
        ],
        gzip.compress(frames.tobytes()),
    )
    seq = read_sequence(tmp_path / "teem.seq.nrrd")
    assert seq.frames.dtype == np.float64 and seq.frames.dtype.isnative
    np.testing.assert_array_equal(seq.frames, frames)
    assert seq.index_values == ["1.5", "2.5"] and seq.index_name == "frame"
    expected = np.array([[2, 0, 0, -10], [0, 2, 0, -20], [0, 0, 4, 30], [0, 0, 0, 1]])
    np.testing.assert_allclose(seq.geometry.ijk_to_ras(), expected, atol=1e-12)
    header = read_header(tmp_path / "teem.seq.nrrd")
    assert header.keyvalues["DICOM.PatientName"] == "Anonymous: the name:=kept whole"
    assert header.encoding == "gzip" and header.dimension == 4


def test_quotes_backslashes_and_percent_signs_survive_the_header(tmp_path):
    """pynrrd writes labels and key/value pairs as given; MoDiff escapes them as teem does."""
    values = ['a\\b', '"quoted"', "100%"]
    seq = make_sequence(frames=3, index_name='phase "ED\\ES"', index_unit="a.u.", index_values=values)
    path = write_sequence(seq, tmp_path / "q.seq.nrrd")
    read = read_sequence(path)
    assert (read.index_name, read.index_unit, read.index_values) == ('phase "ED\\ES"', "a.u.", values)
    lines = header_lines(path)
    assert 'labels: "" "" "" "phase \\"ED\\ES\\""' in lines  # teem escapes only quotes there
    assert 'axis 3 index values:=a\\\\b %22quoted%22 100%25' in lines  # and backslashes in key/values
    with pytest.raises(OutputError, match=r"index name 'x\\\\' ends with a backslash"):
        write_sequence(make_sequence(frames=2, index_name="x\\", index_unit="", index_values=["0", "1"]),
                       tmp_path / "x.seq.nrrd")


def test_detached_sequence_header_with_skips(tmp_path):
    frames = np.arange(3 * 2 * 2 * 2, dtype="<u2").reshape(3, 2, 2, 2)
    (tmp_path / "data.raw").write_bytes(b"junk line\n" + bytes(5) + frames.tobytes())
    (tmp_path / "cine.seq.nhdr").write_text(
        "NRRD0004\ntype: ushort\ndimension: 4\nsizes: 2 2 2 3\nkinds: domain domain domain list\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1) none\nendian: little\nencoding: raw\n"
        "data file: data.raw\nbyte skip: -1\n"
    )
    np.testing.assert_array_equal(read_sequence(tmp_path / "cine.seq.nhdr").frames, frames)
    (tmp_path / "cine.seq.nhdr").write_text(
        "NRRD0004\ntype: ushort\ndimension: 4\nsizes: 2 2 2 3\nkinds: domain domain domain list\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1) none\nendian: little\nencoding: raw\n"
        "data file: data.raw\nline skip: 1\nbyte skip: 5\n"
    )
    np.testing.assert_array_equal(read_sequence(tmp_path / "cine.seq.nhdr").frames, frames)


SEQ_HEADER = ["type: short", "dimension: 4", "sizes: 2 2 2 2", "kinds: domain domain domain list",
              "space directions: (1,0,0) (0,1,0) (0,0,1) none", "endian: little", "encoding: raw"]


@pytest.mark.parametrize("change, message", [
    (("endian: little", None), r"has no 'endian' field; its 'short' voxels need one"),
    (("endian: little", "endian: middle"), r"unknown byte order 'middle'"),
    (("sizes: 2 2 2 2", "sizes: 2 2 x 2"), r"invalid 'sizes' field \(could not convert"),
    (("space directions: (1,0,0) (0,1,0) (0,0,1) none", "space directions: (1,0,0) (0,1,0) (0,0,1 none"),
     r"invalid 'space directions' field \(Vector should be enclosed by parentheses"),
    (("space directions: (1,0,0) (0,1,0) (0,0,1) none", "space directions: (1,0,0) (0,1,0) (0,0) none"),
     r"invalid 'space directions' field \(Matrix should have same number of elements"),
    (("space directions: (1,0,0) (0,1,0) (0,0,1) none", "space directions: (1,0) (0,1) (1,1) none"),
     r"space directions that are not 3D vectors"),
    (("kinds: domain domain domain list", 'labels: "a" "b'), r"invalid 'labels' field \(No closing quotation"),
    (("encoding: raw", "encoding: hex"), r"uses encoding 'hex'"),
    (("type: short", "type: block"), r"voxel type 'block'"),
    (("type: short", "type: short\ntype: float"), r"has two 'type' fields"),
    (("dimension: 4", "dimension four"), r"malformed header line: 'dimension four'"),
])
def test_malformed_headers_name_the_field(tmp_path, change, message):
    old, new = change
    lines = [ln for ln in SEQ_HEADER if ln != old] + ([] if new is None else new.split("\n"))
    write_handmade_nrrd(tmp_path / "bad.seq.nrrd", lines, np.zeros(16, "<i2").tobytes())
    with pytest.raises(InputError, match=message) as e:
        read_sequence(tmp_path / "bad.seq.nrrd")
    assert "bad.seq.nrrd" in str(e.value) and "\n" not in str(e.value)


def test_single_byte_voxels_need_no_endian_and_newer_versions_are_refused(tmp_path):
    lines = [ln.replace("short", "uchar") for ln in SEQ_HEADER if not ln.startswith("endian")]
    write_handmade_nrrd(tmp_path / "u8.seq.nrrd", lines, bytes(range(16)))
    assert read_sequence(tmp_path / "u8.seq.nrrd").frames.dtype == np.uint8
    (tmp_path / "v6.seq.nrrd").write_bytes(b"NRRD0006\n" + "\n".join(SEQ_HEADER).encode() + b"\n\n" + bytes(32))
    with pytest.raises(InputError, match=r"v6\.seq\.nrrd': Unsupported NRRD file version"):
        read_sequence(tmp_path / "v6.seq.nrrd")


def test_huge_declaration_and_gzip_bomb_cost_no_memory(tmp_path):
    """Checked before allocating (a 200-byte header declaring 10^11 values) and capped while
    decompressing (1 GiB of gzip members behind 128 KiB declared): tracemalloc sees what numpy and
    zlib take, at most one 64 KiB piece's expansion here."""
    huge = [ln.replace("sizes: 2 2 2 2", "sizes: 4096 4096 2048 3") for ln in SEQ_HEADER]
    write_handmade_nrrd(tmp_path / "huge.seq.nrrd", huge, bytes(100))
    declared = np.arange(32 * 32 * 32 * 2, dtype="<i2")
    bomb = [ln.replace("sizes: 2 2 2 2", "sizes: 32 32 32 2").replace("raw", "gzip") for ln in SEQ_HEADER]
    zeros = gzip.compress(bytes(64 << 20), 9)
    write_handmade_nrrd(tmp_path / "bomb.seq.nrrd", bomb, gzip.compress(declared.tobytes()) + zeros * 16)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"declares 103079215104 voxel values .* at most") as e:
            read_sequence(tmp_path / "huge.seq.nrrd")
        assert "\n" not in str(e.value)
        seq = read_sequence(tmp_path / "bomb.seq.nrrd")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(seq.frames.reshape(-1), declared)
    assert peak < 100 << 20, f"peak {peak} bytes"


def test_non_ascii_index_text_is_refused_before_writing(tmp_path):
    seq = make_sequence(frames=2, index_name="time", index_unit="\u00b5s", index_values=["0", "1"])
    with pytest.raises(OutputError, match=r"index unit 'µs' is not ASCII, as a NRRD header must be"):
        write_sequence(seq, tmp_path / "mu.seq.nrrd")
    assert os.listdir(tmp_path) == []


# -- 4D NIfTI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_nifti_round_trip_keeps_evenly_spaced_times(tmp_path, suffix, dtype):
    seq = make_sequence(dtype)
    path = write_sequence(seq, tmp_path / f"cine{suffix}")
    assert_same_sequence(read_sequence(path), seq)
    image = nib.load(path)  # independent reader: RAS affine and [i, j, k, t] order
    np.testing.assert_allclose(image.affine, seq.geometry.ijk_to_ras(), atol=1e-5)
    assert np.asanyarray(image.dataobj)[1, 2, 3, 2] == seq.frames[2, 3, 2, 1]
    assert image.header.get_xyzt_units() == ("mm", "sec")


def test_nifti_vector_round_trip_including_a_single_frame(tmp_path):
    for frames in (3, 1):
        seq = make_sequence(np.float32, vector=True, frames=frames)
        assert_same_sequence(read_sequence(write_sequence(seq, tmp_path / f"f{frames}.nii.gz")), seq)


def test_nifti_without_time_keeps_frame_numbers(tmp_path):
    seq = make_sequence(frames=3, index_name="phase", index_unit="", index_values=["ED", "mid", "ES"])
    read = read_sequence(write_sequence(seq, tmp_path / "cine.nii.gz"))
    assert_same_sequence(read, seq, index=False)
    assert (read.index_name, read.index_values) == ("frame", ["0", "1", "2"])


# -- bad input -------------------------------------------------------------------------------


def test_a_3d_file_is_not_a_sequence(tmp_path):
    volume = Volume(np.zeros(SHAPE, np.int16), geometry())
    for name in ("ct.nrrd", "ct.nii.gz"):
        path = write_volume(volume, tmp_path / name)
        with pytest.raises(InputError, match="single 3D volume, not a time series; read it with read_volume"):
            read_sequence(path)
    field = Volume(np.zeros(SHAPE + (3,), np.float32), geometry())
    for name in ("field.nrrd", "field.nii.gz"):
        path = write_volume(field, tmp_path / name)
        with pytest.raises(InputError, match="single 3D vector volume"):
            read_sequence(path)


def test_a_2d_file_is_not_a_sequence(tmp_path):
    write_handmade_nrrd(
        tmp_path / "slice.nrrd",
        ["type: short", "dimension: 2", "sizes: 2 2", "endian: little", "encoding: raw"],
        np.zeros(4, "<i2").tobytes(),
    )
    with pytest.raises(InputError, match="slice.nrrd' is a 2D image"):
        read_sequence(tmp_path / "slice.nrrd")


def test_missing_unsupported_and_non_image_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_sequence(tmp_path / "gone.seq.nrrd")
    (tmp_path / "cine.mha").write_bytes(b"x")
    with pytest.raises(InputError, match=r"not a supported sequence file.*\.seq\.nrrd"):
        read_sequence(tmp_path / "cine.mha")
    (tmp_path / "notes.seq.nrrd").write_text("not an image at all\n")
    with pytest.raises(InputError, match="not a NRRD file"):
        read_sequence(tmp_path / "notes.seq.nrrd")
    (tmp_path / "notes.nii.gz").write_text("not an image at all\n")
    with pytest.raises(InputError, match="notes.nii.gz"):
        read_sequence(tmp_path / "notes.nii.gz")
    (tmp_path / "empty.seq.nrrd").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_sequence(tmp_path / "empty.seq.nrrd")


@pytest.mark.parametrize("name", ["cut.seq.nrrd", "raw.seq.nrrd", "cut.nii.gz", "cut.nii"])
def test_truncated_sequence(tmp_path, name):
    path = write_sequence(make_sequence(np.float32), tmp_path / name, compress=not name.startswith("raw"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="truncated"):
        read_sequence(path)


def test_nan_frame_is_rejected_with_the_file_named(tmp_path):
    frames = np.zeros((2, 2, 2, 2), "<f4")
    frames[1, 0, 1, 1] = np.nan
    write_handmade_nrrd(
        tmp_path / "nan.seq.nrrd",
        ["type: float", "dimension: 4", "sizes: 2 2 2 2", "space directions: (1,0,0) (0,1,0) (0,0,1) none",
         "kinds: domain domain domain list", "endian: little", "encoding: raw"],
        frames.tobytes(),
    )
    with pytest.raises(InputError, match=r"nan\.seq\.nrrd' frame 1 contains 1 NaN"):
        read_sequence(tmp_path / "nan.seq.nrrd")


# -- bad output ------------------------------------------------------------------------------------


def test_write_refusals_leave_no_file(tmp_path):
    seq = make_sequence()
    with pytest.raises(OutputError, match=r"unsupported sequence file type.*\.seq\.nrrd, \.nii, \.nii\.gz"):
        write_sequence(seq, tmp_path / "cine.mha")
    bad = make_sequence(frames=2, index_name="t", index_unit="", index_values=["a\nb", "c"])
    with pytest.raises(OutputError, match="control characters"):
        write_sequence(bad, tmp_path / "bad.seq.nrrd")
    repeated = make_sequence(frames=3, index_name="t", index_unit="", index_values=["0", "1", "0"])
    with pytest.raises(OutputError, match="index values repeat.*merge"):
        write_sequence(repeated, tmp_path / "repeated.seq.nrrd")
    assert os.listdir(tmp_path) == []
    path = write_sequence(seq, tmp_path / "cine.seq.nrrd")
    with pytest.raises(OutputError, match="already exists"):
        write_sequence(seq, path)
    write_sequence(make_sequence(np.float32), path, overwrite=True)
    assert read_sequence(path).frames.dtype == np.float32


_FAILING_WRITE = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    from MoDiffLib import Geometry, OutputError, VolumeSequence
    from MoDiffLib.io import write_sequence

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # let write() fail with EFBIG instead of killing us
    frames = np.random.default_rng(0).normal(size=(4, 32, 32, 32)).astype(np.float32)
    seq = VolumeSequence(frames, Geometry((32, 32, 32)))
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # the 0.5 MB cine fails mid-way
    try:
        write_sequence(seq, sys.argv[1], overwrite=True)
    except OutputError as e:
        print(e)
        sys.exit(3)
    """
)


@pytest.mark.parametrize("suffix", [".seq.nrrd", ".nii.gz"])
def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, suffix):
    target = tmp_path / f"cine{suffix}"
    write_sequence(make_sequence(frames=2), target)
    before = target.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", _FAILING_WRITE, str(target)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "could not write" in result.stdout
    assert os.listdir(tmp_path) == [target.name]
    assert target.read_bytes() == before
