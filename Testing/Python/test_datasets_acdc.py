"""ACDC loader on tiny files in ACDC's exact layout: splits, ED->ES frames, labels, geometry, errors."""

import nibabel as nib
import numpy as np
import pytest

from fixtures_datasets import (
    ACDC_SHAPE_XYZ,
    ACDC_SPACING,
    acdc_frame_value,
    acdc_labels,
    make_acdc,
    make_acdc_patient,
)
from MoDiffLib import InputError
from MoDiffLib import io as mio
from MoDiffLib.datasets import ACDC_SPLITS, ACDCDataset, frames_ed_to_es


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("acdc")
    return make_acdc(root, {1: dict(num_frames=8, ed=2, es=6, group="HCM"), 2: {}, 90: {}, 91: {}, 100: {},
                            101: dict(with_gt=False)})


def cine_values(patient, frames0):
    """Expected (T, K, J, I) voxels of the fixture cine for 0-based cine frames ``frames0``."""
    x, y, z = ACDC_SHAPE_XYZ
    ramp = (np.arange(x * y * z).reshape(x, y, z) % 7).transpose(2, 1, 0)
    return np.stack([ramp + acdc_frame_value(patient, t) for t in frames0])


def test_default_splits_follow_the_uvinet_protocol(acdc_root):
    assert ACDC_SPLITS["train"] == range(1, 91) and ACDC_SPLITS["test"] == range(91, 101)
    assert ACDCDataset(acdc_root).case_ids == ["patient001", "patient002", "patient090"]
    assert ACDCDataset(acdc_root, split="test").case_ids == ["patient091", "patient100"]
    assert ACDCDataset(acdc_root, split="all").case_ids == [
        "patient001", "patient002", "patient090", "patient091", "patient100", "patient101"]
    assert ACDCDataset(acdc_root, patients=[2, 101]).case_ids == ["patient002", "patient101"]


def test_root_may_be_the_parent_database_or_training_folder(acdc_root):
    everything = ["patient001", "patient002", "patient090", "patient091", "patient100", "patient101"]
    assert ACDCDataset(acdc_root / "database", split="all").case_ids == everything
    assert ACDCDataset(acdc_root / "database" / "training", split="all").case_ids == everything[:5]
    assert ACDCDataset(acdc_root / "database" / "training", split="test").case_ids == ["patient091", "patient100"]
    assert ACDCDataset(acdc_root / "database" / "testing", split="all").case_ids == ["patient101"]


def test_ed_to_es_frames_with_labels_at_their_frame_index(acdc_root):
    case = ACDCDataset(acdc_root)[0]  # patient001: 8 frames, ED 2, ES 6 (1-based)
    assert case.case_id == "patient001"
    assert case.num_frames == 5
    np.testing.assert_array_equal(case.frames.frames, cine_values(1, [1, 2, 3, 4, 5]))
    assert sorted(case.labels) == [0, 4]
    np.testing.assert_array_equal(case.labels[0].array, acdc_labels(1, 1).transpose(2, 1, 0))  # ED: large LV
    np.testing.assert_array_equal(case.labels[4].array, acdc_labels(5, 1).transpose(2, 1, 0))  # ES: small LV
    assert (case.labels[0].array == 3).sum() > (case.labels[4].array == 3).sum()
    assert case.labels[0].array.dtype == np.uint8
    assert case.meta["ed_frame"] == 0 and case.meta["es_frame"] == 4
    assert case.meta["source_frames"] == [2, 3, 4, 5, 6] and case.meta["num_source_frames"] == 8
    assert case.meta["group"] == "HCM" and case.meta["height_cm"] == 184.0 and case.meta["weight_kg"] == 95.0
    assert case.landmarks is None
    # the motion strength is the signed EF of the LV labels (label 3: 18 voxels at ED, 3 at ES)
    assert case.amplitude == pytest.approx(100.0 * (18 - 3) / 18) and case.meta["ef_pct"] == case.amplitude
    # ED -> ES is part of a cycle: each frame's phase from ED over the cine's 8 frames
    assert case.meta["whole_cycle"] is False
    assert case.meta["frame_phases"] == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])


def test_all_frames_keep_labels_at_their_cine_index(acdc_root):
    case = ACDCDataset(acdc_root, frames="all")[0]
    assert case.num_frames == 8
    np.testing.assert_array_equal(case.frames.frames, cine_values(1, range(8)))
    assert sorted(case.labels) == [1, 5]


def test_es_before_ed_wraps_around_the_cycle(tmp_path):
    make_acdc(tmp_path, {7: dict(num_frames=6, ed=5, es=2)})
    case = ACDCDataset(tmp_path)[0]
    np.testing.assert_array_equal(case.frames.frames, cine_values(7, [4, 5, 0, 1]))
    assert sorted(case.labels) == [0, 3] and case.meta["ed_frame"] == 0 and case.meta["es_frame"] == 3
    assert frames_ed_to_es(4, 1, 6) == [4, 5, 0, 1]
    assert frames_ed_to_es(0, 11, 30) == list(range(12))


def test_geometry_is_the_qform_grid_that_itk_and_slicer_use(acdc_root):
    """ACDC's sform has unit scales; the true grid is the qform's (1.5625 x 1.5625 x 10 mm here)."""
    case = ACDCDataset(acdc_root)[0]
    g = case.frames.geometry
    np.testing.assert_allclose(g.spacing, ACDC_SPACING, rtol=1e-6)
    np.testing.assert_allclose(g.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-9)
    assert g.shape_kji == ACDC_SHAPE_XYZ[::-1]
    # The ED frame file read by MoDiffLib.io (as Slicer reads it) lies on the same grid, same voxels.
    folder = acdc_root / "database" / "training" / "patient001"
    ed_file = mio.read_volume(folder / "patient001_frame02.nii.gz")
    assert ed_file.geometry.is_close(g, atol_mm=1e-4)
    np.testing.assert_array_equal(ed_file.array, case.frames.frames[0])
    assert case.labels[0].geometry.is_close(g, atol_mm=1e-4)


def test_testing_patients_without_ground_truth_have_no_labels(acdc_root):
    case = ACDCDataset(acdc_root, patients=[101])[0]
    assert case.labels is None and case.num_frames == 4


# -- bad input ---------------------------------------------------------------------------------


def test_folder_without_patients_names_the_layout(tmp_path):
    (tmp_path / "database" / "training").mkdir(parents=True)
    with pytest.raises(InputError, match="no patientNNN folders with Info.cfg under") as err:
        ACDCDataset(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ACDCDataset(tmp_path / "nowhere")


@pytest.mark.parametrize("key", ["ED", "ES"])
def test_info_cfg_without_ed_or_es_names_file_and_key(tmp_path, key):
    make_acdc(tmp_path, {3: dict(info_overrides={key: None})})
    with pytest.raises(InputError) as err:
        ACDCDataset(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "database" / "training" / "patient003" / "Info.cfg") in message
    assert f"'{key}:'" in message


def test_info_cfg_with_a_non_number_frame(tmp_path):
    make_acdc(tmp_path, {3: dict(info_overrides={"ES": "systole"})})
    with pytest.raises(InputError, match="'ES: systole' is not a frame number"):
        ACDCDataset(tmp_path)


def test_es_beyond_the_cine_is_refused(tmp_path):
    make_acdc(tmp_path, {3: dict(num_frames=6)})
    cfg = tmp_path / "database" / "training" / "patient003" / "Info.cfg"
    cfg.write_text(cfg.read_text().replace("ES: 4", "ES: 9"))
    with pytest.raises(InputError, match=r"ES: 9 is beyond the 6 frames"):
        ACDCDataset(tmp_path)


def test_nbframe_disagreeing_with_the_cine_names_both(tmp_path):
    make_acdc(tmp_path, {3: dict(num_frames=6, info_overrides={"NbFrame": "30"})})
    with pytest.raises(InputError, match=r"NbFrame: 30, but patient003_4d.nii.gz holds 6 frames"):
        ACDCDataset(tmp_path)


def test_label_on_another_grid_names_the_file(tmp_path):
    make_acdc(tmp_path, [3])
    bad = tmp_path / "database" / "training" / "patient003" / "patient003_frame04_gt.nii.gz"
    image = nib.load(bad)
    shifted = image.header.get_qform()
    shifted[:3, 3] += [0.0, 0.0, 5.0]  # half a slice off
    out = nib.Nifti1Image(np.asanyarray(image.dataobj), None, image.header)
    out.header.set_qform(shifted, code=1)
    out.header.set_sform(shifted, code=1)
    nib.save(out, bad)
    with pytest.raises(InputError, match="different grid") as err:
        ACDCDataset(tmp_path)
    assert str(bad) in str(err.value)


def test_missing_cine_names_the_expected_file(tmp_path):
    folder = make_acdc_patient(tmp_path / "database" / "training", 3)
    (folder / "patient003_4d.nii.gz").unlink()
    with pytest.raises(InputError, match="has no cine patient003_4d.nii.gz"):
        ACDCDataset(tmp_path)


def test_patient_folder_without_info_cfg_is_named(tmp_path):
    make_acdc(tmp_path, [3, 4])
    (tmp_path / "database" / "training" / "patient004" / "Info.cfg").unlink()
    with pytest.raises(InputError, match="patient004 has no Info.cfg"):
        ACDCDataset(tmp_path)


def test_split_without_its_patients_says_which_were_found(acdc_root):
    with pytest.raises(InputError, match=r"no ACDC patients of split 'train' \(patients 001-090\)") as err:
        ACDCDataset(acdc_root / "database" / "testing")
    assert "101" in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="validation"), "unknown ACDC split 'validation'"),
    (dict(frames="es_to_ed"), "frames must be 'ed_to_es', 'all' or 'cycle'"),
])
def test_unknown_options_are_refused(acdc_root, kwargs, match):
    with pytest.raises(InputError, match=match):
        ACDCDataset(acdc_root, **kwargs)


def test_cycle_frames_start_at_ed_and_keep_the_ed_es_labels(acdc_root):
    case = ACDCDataset(acdc_root, frames="cycle")[0]  # patient001: 8 frames, ED 2, ES 6 (1-based)
    assert case.meta["source_frames"] == [2, 3, 4, 5, 6, 7, 8, 1]
    np.testing.assert_array_equal(case.frames.frames, cine_values(1, [1, 2, 3, 4, 5, 6, 7, 0]))
    assert sorted(case.labels) == [0, 4] and case.meta["whole_cycle"] is True
    assert case.meta["frame_phases"] == pytest.approx([t / 8 for t in range(8)])
    assert case.meta["kind"] == "cardiac" and case.amplitude == pytest.approx(100.0 * 15 / 18)


def test_any_patient_number_is_read(tmp_path):
    make_acdc_patient(tmp_path / "database" / "training", 7)
    make_acdc_patient(tmp_path / "database" / "testing", 151)  # beyond every named split
    assert ACDCDataset(tmp_path, split="all").case_ids == ["patient007", "patient151"]
    assert ACDCDataset(tmp_path, split="train").case_ids == ["patient007"]
    assert ACDCDataset(tmp_path, patients=[151]).case_ids == ["patient151"]
