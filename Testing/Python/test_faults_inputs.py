"""Hostile input files (issue 17): sizes are validated before memory is taken, in one line.

Each file is crafted small (a header declaring a huge grid, a gzip bomb, a detached ``/dev/zero``,
a zero voxel size, a model config with a 1024^3 grid) and run through ``read_volume`` and through
the real CLI in a child process, whose peak memory is measured with ``os.wait4``.
"""

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from MoDiffLib import InputError
from MoDiffLib.io import read_sequence, read_volume
from MoDiffLib.registry import RESOURCES_DIR, find_model

#: Peak resident memory a failing child may reach: a normal `modiff generate` start-up imports
#: torch (about 0.4-0.6 GB measured); the faults cost 3-6 GB before the fixes.
MAX_CHILD_RSS_BYTES = 1.5 * 2**30


def nifti_header_bytes(shape, dtype=np.float32, pixdim=(1.0, 1.0, 1.0)) -> bytes:
    """A 352-byte single-file NIfTI-1 header (plus the empty extension flag) declaring ``shape``."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["pixdim"][1:4] = pixdim
    header["vox_offset"] = 352
    header["magic"] = b"n+1"
    return header.binaryblock + b"\0\0\0\0"


def modiff_child(*args) -> tuple[int, str, int]:
    """Run ``python -m MoDiffLib ARGS``; return (exit status, stderr, peak RSS in bytes of that child)."""
    proc = subprocess.Popen([sys.executable, "-m", "MoDiffLib", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def assert_one_line_error(status: int, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("modiff: error:"), err
    for word in words:
        assert word in lines[0], err


# -- the hostile files -----------------------------------------------------------------------------


def huge_nifti(folder: Path) -> Path:
    """A bare 356-byte header declaring 1100^3 float32 (5.3 GB)."""
    path = folder / "huge.nii"
    path.write_bytes(nifti_header_bytes((1100, 1100, 1100)))
    return path


def short_nifti(folder: Path) -> Path:
    """A bare header declaring 1000^3 uint8 (1 GB, within the voxel budget) and no data."""
    path = folder / "short.nii"
    path.write_bytes(nifti_header_bytes((1000, 1000, 1000), np.uint8))
    return path


def gzip_bomb(folder: Path) -> Path:
    """A .nii.gz of ~2.6 MB that expands to 2.6 GB: a 1100^3 header, then zeros, streamed in gzip
    members (concatenated members are one gzip stream), so making it takes well under a second."""
    path = folder / "bomb.nii.gz"
    zeros = gzip.compress(bytes(64 << 20), compresslevel=9)  # 64 MiB of zeros, ~64 KB compressed
    with open(path, "wb") as f:
        f.write(gzip.compress(nifti_header_bytes((1100, 1100, 1100), np.int16)))
        for _ in range(40):
            f.write(zeros)
    return path


def small_declared_bomb(folder: Path) -> Path:
    """A .nii.gz declaring 64^3 int16 followed by 2.6 GB of zeros: only the declared bytes are read."""
    path = folder / "tail.nii.gz"
    zeros = gzip.compress(bytes(64 << 20), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(nifti_header_bytes((64, 64, 64), np.int16) + bytes(64**3 * 2)))
        for _ in range(40):
            f.write(zeros)
    return path


def nrrd_dev_zero(folder: Path) -> Path:
    path = folder / "zero.nhdr"
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 512 512 512\nencoding: raw\n"
                    "space directions: (1,0,0) (0,1,0) (0,0,1)\ndata file: /dev/zero\n")
    return path


def nrrd_32767(folder: Path) -> Path:
    path = folder / "huge.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 32767 32767 32767\nencoding: gzip\n"
                     b"space directions: (1,0,0) (0,1,0) (0,0,1)\n\n" + zlib.compress(b"\0" * 1000))
    return path


def zero_pixdim(folder: Path) -> Path:
    path = folder / "flat.nii"
    data = (np.arange(4 * 5 * 6, dtype=np.int16) - 1000).tobytes()
    path.write_bytes(nifti_header_bytes((4, 5, 6), np.int16, pixdim=(1.0, 0.0, 2.0)) + data)
    return path


# -- library ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (huge_nifti, "declares 1331000000 voxels (1100x1100x1100)"),
    (short_nifti, "truncated: its header declares 1000000000 bytes"),
    (gzip_bomb, "declares 1331000000 voxels"),
    (nrrd_dev_zero, "'/dev/zero', which is not a regular file"),
    (nrrd_32767, "declares 35181150961663 voxels"),
    (zero_pixdim, "voxel size 0 along axis j (pixdim[2]"),
])
def test_read_volume_refuses_from_the_header(tmp_path, make, message):
    with pytest.raises(InputError) as e:
        read_volume(make(tmp_path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_truncated_nifti_within_the_budget_is_refused_by_size(tmp_path):
    path = tmp_path / "short.nii"
    path.write_bytes(nifti_header_bytes((64, 64, 64), np.int16) + bytes(1000))
    with pytest.raises(InputError, match=r"truncated: its header declares 524288 bytes .* holds 1000"):
        read_volume(path)


def test_data_beyond_the_declared_size_is_not_decompressed(tmp_path):
    volume = read_volume(small_declared_bomb(tmp_path))
    assert volume.array.shape == (64, 64, 64) and not volume.array.any()


def test_sequences_get_the_same_checks(tmp_path):
    path = tmp_path / "cine.nii"
    path.write_bytes(nifti_header_bytes((800, 800, 800, 30)))
    with pytest.raises(InputError, match="declares 15360000000 voxel values"):
        read_sequence(path)
    seq = tmp_path / "cine.nhdr"
    seq.write_text("NRRD0004\ntype: short\ndimension: 4\nsizes: 64 64 64 3\nencoding: raw\nkinds: domain domain "
                   "domain list\nspace directions: (1,0,0) (0,1,0) (0,0,1) none\ndata file: /dev/zero\n")
    with pytest.raises(InputError, match="not a regular file"):
        read_sequence(seq)


# -- the command line, in a child process ----------------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (huge_nifti, "declares 1331000000 voxels"),
    (short_nifti, "truncated"),
    (gzip_bomb, "declares 1331000000 voxels"),
    (nrrd_dev_zero, "not a regular file"),
    (zero_pixdim, "voxel size 0 along axis j"),
])
def test_cli_refuses_in_one_line_with_little_memory(tmp_path, make, message):
    status, err, rss = modiff_child("generate", make(tmp_path), "--frames", 3, "--out", tmp_path / "c.seq.nrrd",
                                    "--progress", "none")
    assert_one_line_error(status, err, message)
    assert rss < MAX_CHILD_RSS_BYTES, f"peak RSS {rss / 2**30:.2f} GB"


def test_model_config_with_a_huge_grid_fails_at_load(tmp_path):
    bundled = RESOURCES_DIR / find_model("modiff-lung-motion").path
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(bundled / "model.safetensors", model / "model.safetensors")
    config = json.loads((bundled / "config.json").read_text())
    config["grid"]["shape_kji"] = [1024, 1024, 1024]
    (model / "config.json").write_text(json.dumps(config))
    # a folder saved with its manifest (as save_checkpoint writes it), so only the grid check speaks
    from MoDiffLib.models.checkpoint import sha256_file
    (model / "checksums.json").write_text(json.dumps(
        {"sha256": {name: sha256_file(model / name) for name in ("config.json", "model.safetensors")}}))
    image = tmp_path / "ct.nii"
    image.write_bytes(nifti_header_bytes((8, 8, 8), np.int16) + (np.full(512, -1000, np.int16)).tobytes())
    status, err, rss = modiff_child("generate", image, "--frames", 3, "--model", model, "--out",
                                    tmp_path / "c.seq.nrrd", "--progress", "none")
    assert_one_line_error(status, err, "grid.shape_kji", "1073741824 voxels")
    assert rss < MAX_CHILD_RSS_BYTES, f"peak RSS {rss / 2**30:.2f} GB"


def test_cli_series_uid_chooses_between_equal_series(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_io_volume import ct_values, write_dicom_series

    folder = tmp_path / "tie"
    write_dicom_series(folder, ct_values(), (1.0, 1.0, 2.0), (0, 0, 0), np.eye(3), "1.2.3.10")
    write_dicom_series(folder, ct_values() + 5, (1.0, 1.0, 2.0), (0, 0, 0), np.eye(3), "1.2.3.20")
    status, err, _ = modiff_child("generate", folder, "--frames", 3, "--out", tmp_path / "c.seq.nrrd",
                                  "--progress", "none")
    assert_one_line_error(status, err, "1.2.3.10", "1.2.3.20", "--series-uid UID")
    status, err, _ = modiff_child("generate", folder, "--series-uid", "9.9", "--frames", 3, "--out",
                                  tmp_path / "c.seq.nrrd", "--progress", "none")
    assert_one_line_error(status, err, "no DICOM series 9.9")
    status, err, _ = modiff_child("generate", folder, "--series-uid", "1.2.3.20", "--frames", 3, "--out",
                                  tmp_path / "c.seq.nrrd", "--progress", "none")
    assert status == 0, err
    np.testing.assert_array_equal(read_sequence(tmp_path / "c.seq.nrrd").frames[0], ct_values() + 5)
