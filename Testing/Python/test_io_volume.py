"""3D volume files: exact round trips in RAS, DICOM series, and a clear error for every bad input."""

import os
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from MoDiffLib import InputError, OutputError, Volume, VolumeSequence
from MoDiffLib.io import VECTOR_SPACE_KEY, read_volume, write_sequence, write_volume
from MoDiffLib.io.nrrd_io import read_header

SPACING = (0.7, 0.9, 2.5)
ORIGIN_RAS = (-63.25, 41.5, -17.75)
SHAPE = (6, 7, 8)  # (K, J, I)


def oblique_direction() -> np.ndarray:
    """A rotation about two axes (S by 30 degrees, then R by -20 degrees): no axis is aligned."""
    a, b = np.deg2rad(-20.0), np.deg2rad(30.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def make_volume(dtype=np.int16, vector=False) -> Volume:
    rng = np.random.default_rng(7)
    shape = SHAPE + ((3,) if vector else ())
    if np.issubdtype(dtype, np.integer):
        array = rng.integers(-1024, 3000, size=shape).astype(dtype)
    else:
        array = (rng.normal(size=shape) * 100).astype(dtype)
    return Volume.from_array(array, SPACING, ORIGIN_RAS, oblique_direction(), name="ct")


def assert_same_volume(read: Volume, written: Volume) -> None:
    assert read.array.dtype == written.array.dtype
    assert read.array.shape == written.array.shape
    np.testing.assert_array_equal(read.array, written.array)
    np.testing.assert_allclose(read.geometry.ijk_to_ras(), written.geometry.ijk_to_ras(), atol=1e-5, rtol=0)


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz", ".mha"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_round_trip_keeps_voxels_type_and_oblique_geometry(tmp_path, suffix, dtype):
    volume = make_volume(dtype)
    path = write_volume(volume, tmp_path / f"ct{suffix}")
    read = read_volume(path)
    assert_same_volume(read, volume)
    assert read.name == "ct"
    assert os.listdir(tmp_path) == [f"ct{suffix}"]  # no temporary file left behind


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_vector_volume_round_trip(tmp_path, suffix):
    field = make_volume(np.float32, vector=True)
    path = write_volume(field, tmp_path / f"field{suffix}")
    read = read_volume(path, allow_vector=True)
    assert read.is_vector
    assert_same_volume(read, field)


def test_vector_nrrd_records_ras_values(tmp_path):
    path = write_volume(make_volume(np.float32, vector=True), tmp_path / "field.nrrd")
    header = read_header(path)
    assert header.keyvalues[VECTOR_SPACE_KEY] == "RAS"
    assert header.kinds[0] == "vector"


def test_allow_vector_still_reads_scalar_volumes(tmp_path):
    path = write_volume(make_volume(), tmp_path / "ct.nrrd")
    assert not read_volume(path, allow_vector=True).is_vector


def test_nifti_written_has_the_ras_affine_nibabel_sees(tmp_path):
    """nibabel (RAS natively) is an independent check of the LPS flip on the write side."""
    volume = make_volume()
    path = write_volume(volume, tmp_path / "ct.nii.gz")
    image = nib.load(path)
    np.testing.assert_allclose(image.affine, volume.geometry.ijk_to_ras(), atol=1e-5)
    data = np.asanyarray(image.dataobj)
    assert data[1, 2, 3] == volume.array[3, 2, 1]  # nibabel indexes [i, j, k]


def test_nifti_from_nibabel_is_read_with_its_ras_affine(tmp_path):
    """The read side: a file whose geometry was written by nibabel, not by MoDiff."""
    affine = np.eye(4)
    affine[:3, :3] = oblique_direction() * np.array(SPACING)
    affine[:3, 3] = ORIGIN_RAS
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)  # (I, J, K)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "nb.nii")
    read = read_volume(tmp_path / "nb.nii")
    np.testing.assert_allclose(read.geometry.ijk_to_ras(), affine, atol=1e-5)
    assert read.array.shape == (3, 5, 4)
    assert read.array[2, 1, 3] == data[3, 1, 2]


def test_detached_nrrd_header_and_mhd_are_read(tmp_path):
    volume = make_volume()
    image = sitk.ReadImage(str(write_volume(volume, tmp_path / "ct.nrrd")))
    for name in ("ct2.nhdr", "ct3.mhd"):
        sitk.WriteImage(image, str(tmp_path / name))
        assert_same_volume(read_volume(tmp_path / name), volume)


def test_overwrite_replaces_and_default_refuses(tmp_path):
    path = write_volume(make_volume(), tmp_path / "ct.nrrd")
    with pytest.raises(OutputError, match="already exists"):
        write_volume(make_volume(np.float32), path)
    write_volume(make_volume(np.float32), path, overwrite=True)
    assert read_volume(path).array.dtype == np.float32


# -- DICOM ---------------------------------------------------------------------------------------


def write_dicom_series(folder, hu, spacing, origin_lps, direction_lps, series_uid, skip=(), description="CT"):
    """Write ``hu`` (K, J, I) as one CT slice file per k, with the geometry in the DICOM tags."""
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = np.asarray(direction_lps)
    for k in range(hu.shape[0]):
        if k in skip:
            continue
        position = np.asarray(origin_lps) + d[:, 2] * spacing[2] * k
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0060": "CT",
            "0008|103e": description,
            "0010|0010": "Phantom^Test",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10g}" for v in position),
            "0020|0037": "\\".join(f"{v:.10g}" for v in [*d[:, 0], *d[:, 1]]),
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",  # row spacing (along j), then column (along i)
            "0018|0050": str(spacing[2]),
        }
        image = sitk.GetImageFromArray(hu[k])
        image.SetSpacing(spacing[:2])
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}-{k:03d}.dcm"))
        writer.Execute(image)


def lps_direction() -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0]) @ oblique_direction()


def ct_values(shape=(5, 6, 7)) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) * 9 - 1000).astype(np.int16)


def test_dicom_series_folder_gives_ras_geometry_and_hu(tmp_path):
    hu = ct_values()
    origin_lps = np.array([120.5, -80.25, 33.0])
    write_dicom_series(tmp_path / "ct", hu, SPACING, origin_lps, lps_direction(), "1.2.826.0.1.3680043.2.1125.7.1")
    read = read_volume(tmp_path / "ct")
    assert read.array.dtype == np.int16
    np.testing.assert_array_equal(read.array, hu)
    expected = Volume.from_array(hu, SPACING, origin_lps * [-1, -1, 1], oblique_direction())
    np.testing.assert_allclose(read.geometry.ijk_to_ras(), expected.geometry.ijk_to_ras(), atol=1e-5)
    assert read.name == "ct"


def test_dicom_folder_with_two_series_reads_the_larger_or_the_one_asked(tmp_path):
    hu = ct_values()
    write_dicom_series(tmp_path / "mixed", hu, SPACING, (0, 0, 0), np.eye(3), "1.2.3.10")
    write_dicom_series(tmp_path / "mixed", hu[:3] + 5, SPACING, (0, 0, 0), np.eye(3), "1.2.3.20", description="scout")
    assert read_volume(tmp_path / "mixed").array.shape[0] == 5
    np.testing.assert_array_equal(read_volume(tmp_path / "mixed", series_uid="1.2.3.20").array, hu[:3] + 5)
    with pytest.raises(InputError, match="no DICOM series 9.9.9"):
        read_volume(tmp_path / "mixed", series_uid="9.9.9")


def test_dicom_folder_with_equal_series_asks_which(tmp_path):
    hu = ct_values()
    write_dicom_series(tmp_path / "tie", hu, SPACING, (0, 0, 0), np.eye(3), "1.2.3.10")
    write_dicom_series(tmp_path / "tie", hu, SPACING, (0, 0, 0), np.eye(3), "1.2.3.20", description="second")
    with pytest.raises(InputError, match=r"several DICOM series.*1\.2\.3\.10.*1\.2\.3\.20.*--series-uid UID"):
        read_volume(tmp_path / "tie")
    np.testing.assert_array_equal(read_volume(tmp_path / "tie", series_uid="1.2.3.20").array, hu)


def test_dicom_series_with_a_missing_slice_is_rejected_without_itk_warnings(tmp_path, capfd):
    write_dicom_series(tmp_path / "gap", ct_values(), SPACING, (0, 0, 0), np.eye(3), "1.2.3.30", skip=(2,))
    capfd.readouterr()
    with pytest.raises(InputError, match="unevenly spaced"):
        read_volume(tmp_path / "gap")
    assert capfd.readouterr().err == ""  # ITK's "missing slices" warning would come first


def test_dicom_single_slice_and_empty_folder_are_rejected(tmp_path):
    write_dicom_series(tmp_path / "one", ct_values((1, 6, 7)), SPACING, (0, 0, 0), np.eye(3), "1.2.3.40")
    with pytest.raises(InputError, match="single slice"):
        read_volume(tmp_path / "one")
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path / "none")


# -- bad input -----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"'.*nothere\.nrrd' does not exist"):
        read_volume(tmp_path / "nothere.nrrd")


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_text_file_with_an_image_suffix(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_text("these are meeting notes, not an image\n" * 20)
    with pytest.raises(InputError, match=r"notes.*(not a NRRD file|not a readable)"):
        read_volume(path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.nrrd").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_volume(tmp_path / "empty.nrrd")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"not a supported volume file.*\.nrrd.*DICOM"):
        read_volume(tmp_path / "photo.png")


@pytest.mark.parametrize("suffix", [".nrrd", ".nii"])
def test_2d_image(tmp_path, suffix):
    path = tmp_path / f"slice{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(path))
    with pytest.raises(InputError, match="2D image"):
        read_volume(path)


def test_4d_nifti_points_to_read_sequence(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.int16), np.eye(4)), tmp_path / "cine.nii.gz")
    with pytest.raises(InputError, match="4D.*read_sequence"):
        read_volume(tmp_path / "cine.nii.gz")


def test_seq_nrrd_points_to_read_sequence(tmp_path):
    frames = np.zeros((3,) + SHAPE, np.int16)
    seq = VolumeSequence(frames, make_volume().geometry)
    path = write_sequence(seq, tmp_path / "cine.seq.nrrd")
    with pytest.raises(InputError, match="time series of 3 volumes.*read_sequence"):
        read_volume(path)


def test_vector_image_when_scalar_expected(tmp_path):
    path = write_volume(make_volume(np.float32, vector=True), tmp_path / "field.mha")
    with pytest.raises(InputError, match="3 components per voxel"):
        read_volume(path)


def test_colour_image_is_refused_even_with_vectors_allowed(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5, 4), np.uint8), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgba.mha"))
    with pytest.raises(InputError, match="4 components"):
        read_volume(tmp_path / "rgba.mha", allow_vector=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_non_finite_voxels(tmp_path, bad, suffix):
    array = np.zeros((3, 4, 5), np.float32)
    array[1, 2, 3] = bad
    path = tmp_path / f"bad{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match=r"bad.*1 NaN or infinite"):
        read_volume(path)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz", ".mha"])
def test_truncated_file(tmp_path, suffix):
    """ITK reads truncated NIfTI as zeros without complaint; MoDiff must not."""
    path = tmp_path / f"cut{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(4096, dtype=np.float32).reshape(16, 16, 16)), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut"):
        read_volume(path)


# -- bad output ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct.png", "ct.mhd", "ct"])
def test_unsupported_output_type(tmp_path, name):
    with pytest.raises(OutputError, match=r"unsupported volume file type.*\.nrrd, \.nii, \.nii\.gz, \.mha"):
        write_volume(make_volume(), tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_output_folder_missing(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_volume(make_volume(), tmp_path / "no" / "ct.nrrd")


_FAILING_WRITE = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    from MoDiffLib import OutputError, Volume
    from MoDiffLib.io import write_volume

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # let write() fail with EFBIG instead of killing us
    volume = Volume.from_array(np.random.default_rng(0).normal(size=(64, 64, 64)).astype(np.float32))
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # the 1 MB volume fails mid-way
    try:
        write_volume(volume, sys.argv[1], overwrite=True)
    except OutputError as e:
        print(e)
        sys.exit(3)
    """
)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz", ".mha"])
def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, suffix):
    """A real mid-write failure: the file size limit makes the writer's write() fail (as a full disk)."""
    target = tmp_path / f"ct{suffix}"
    write_volume(make_volume(), target)
    before = target.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", _FAILING_WRITE, str(target)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "could not write" in result.stdout and target.name in result.stdout
    assert os.listdir(tmp_path) == [target.name]
    assert target.read_bytes() == before
