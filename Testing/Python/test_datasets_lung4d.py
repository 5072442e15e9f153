"""TCIA 4D-Lung loader on tiny DICOM series in the NBIA layout: phases, HU, RAS grid, errors."""

import numpy as np
import pytest

from fixtures_datasets import (
    LUNG_ORIGIN_LPS,
    LUNG_SHAPE_KJI,
    LUNG_SPACING,
    lung_phase_hu,
    make_4dlung_study,
    write_dicom_series,
)
from MoDiffLib import InputError
from MoDiffLib.datasets import Lung4DDataset
from MoDiffLib.datasets.lung4d import gated_phase, series_group_key

ALL = [float(p) for p in range(0, 100, 10)]


@pytest.fixture(scope="module")
def lung_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lung")
    # I numbers deliberately out of phase order: the order must come from the percentages.
    scrambled = {p: n for p, n in zip(ALL, [12, 3, 9, 4, 11, 5, 10, 6, 8, 7])}
    make_4dlung_study(root, image_numbers=scrambled)
    return root


def expected_frames(phases):
    k = np.arange(LUNG_SHAPE_KJI[0])[:, None, None]
    return np.stack([np.broadcast_to(lung_phase_hu(p) + k, LUNG_SHAPE_KJI) for p in phases])


def test_phases_ordered_by_percentage_and_rtstruct_left_out(lung_root):
    ds = Lung4DDataset(lung_root, phases="all")
    assert ds.case_ids == ["100_HM10395_07-02-2003-NA-p4-14571"]
    case = ds[0]
    assert case.meta["phases_percent"] == ALL
    # HU (stored + 1024 with RescaleIntercept -1024), slices ordered inferior -> superior.
    np.testing.assert_array_equal(case.frames.frames, expected_frames(ALL))
    assert [d.split(", ")[-1] for d in case.meta["series_descriptions"]] == [f"{p:.1f}%A" for p in ALL]
    assert case.meta["patient"] == "100_HM10395" and case.meta["study"] == "07-02-2003-NA-p4-14571"
    assert len(ds.skipped) == 1 and "Gated 0.0A" in ds.skipped[0][0] and "RTSTRUCT" in ds.skipped[0][1]
    assert case.labels is None and case.landmarks is None


def test_default_is_phases_0_to_50(lung_root):
    case = Lung4DDataset(lung_root)[0]
    assert case.meta["phases_percent"] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    np.testing.assert_array_equal(case.frames.frames, expected_frames(ALL[:6]))
    assert Lung4DDataset(lung_root, phases=[50, 0])[0].meta["phases_percent"] == [0.0, 50.0]


def test_grid_is_converted_to_ras(lung_root):
    g = Lung4DDataset(lung_root)[0].frames.geometry
    np.testing.assert_allclose(g.spacing, LUNG_SPACING)
    lps = np.asarray(LUNG_ORIGIN_LPS)
    np.testing.assert_allclose(g.origin_ras, [-lps[0], -lps[1], lps[2]])  # the most inferior slice
    np.testing.assert_allclose(g.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-9)
    # k runs towards superior (+S), so the slice with the highest HU offset is the top one
    assert g.ijk_to_ras_points([0, 0, 3])[2] > g.ijk_to_ras_points([0, 0, 0])[2]


@pytest.mark.parametrize("sub", ["", "4D-Lung", "4D-Lung/100_HM10395", "4D-Lung/100_HM10395/07-02-2003-NA-p4-14571"])
def test_root_may_be_download_collection_patient_or_study(lung_root, sub):
    ds = Lung4DDataset(lung_root / sub if sub else lung_root)
    assert ds.case_ids == ["100_HM10395_07-02-2003-NA-p4-14571"]


def test_one_case_per_4dct_and_description_filter(tmp_path):
    make_4dlung_study(tmp_path, 100, "07-02-2003-NA-p4-14571", phases=ALL[:6], with_rtstruct=False)
    make_4dlung_study(tmp_path, 100, "07-09-2003-NA-p4-71044", phases=ALL[:6], with_rtstruct=False)
    make_4dlung_study(tmp_path, 100, "07-09-2003-NA-p4-71044", phases=ALL[:6], series="S100",
                      with_rtstruct=False)  # a second 4D series in the same study (e.g. a 4D-CBCT)
    make_4dlung_study(tmp_path, 101, "10-21-1997-NA-p4-86157", phases=ALL[:6], with_rtstruct=False)
    ds = Lung4DDataset(tmp_path)
    assert len(ds) == 4
    assert ds.case_ids[0] == "100_HM10395_07-02-2003-NA-p4-14571"
    assert ds.case_ids[-1] == "101_HM10395_10-21-1997-NA-p4-86157"
    assert any("s100" in c for c in ds.case_ids) and any("s300" in c for c in ds.case_ids[1:3])
    only = Lung4DDataset(tmp_path, description_filter="S300")
    assert len(only) == 3 and all("S100" not in c for c in only.case_ids)
    assert sum("does not match the filter" in reason for _, reason in only.skipped) == 6


def test_phase_parsing_from_descriptions_and_nbia_folder_names():
    assert gated_phase("P4^P100^S300^I00003, Gated, 40.0%A") == 40.0
    assert gated_phase("1.000000-P4P100S300I00008 Gated 50.0A-57212") == 50.0
    assert gated_phase("P4^P100^S100^I0, Gated, 0.0%") == 0.0
    assert gated_phase("CT Thorax 3.0 B31f") is None
    assert series_group_key("P4^P100^S300^I00003, Gated, 0.0%A") == series_group_key(
        "P4^P100^S300^I00012, Gated, 90.0%A")
    assert series_group_key("P4^P100^S300^I00003, Gated, 0.0%A") != series_group_key(
        "P4^P100^S100^I0, Gated, 0.0%")


# -- bad input ---------------------------------------------------------------------------------


def test_folder_without_gated_series(tmp_path):
    with pytest.raises(InputError, match="no gated 4DCT series under") as err:
        Lung4DDataset(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_missing_phase_names_the_study_and_phase(tmp_path):
    study = make_4dlung_study(tmp_path, phases=[p for p in ALL if p != 30.0])
    with pytest.raises(InputError, match=r"lacks phase\(s\) 30%") as err:
        Lung4DDataset(tmp_path)
    assert str(study) in str(err.value)
    assert len(Lung4DDataset(tmp_path, phases=[0, 40, 50])) == 1  # a selection without 30 % is complete
    with pytest.raises(InputError, match="has all the phases"):
        Lung4DDataset(tmp_path, skip_incomplete=True)


def test_skip_incomplete_keeps_the_complete_ones(tmp_path):
    make_4dlung_study(tmp_path, 100, phases=ALL[:6])
    make_4dlung_study(tmp_path, 102, "03-25-1998-NA-p4-57341", phases=ALL[:4])
    ds = Lung4DDataset(tmp_path, skip_incomplete=True)
    assert ds.case_ids == ["100_HM10395_07-02-2003-NA-p4-14571"]
    assert any("03-25-1998" in path and "40%, 50%" in reason for path, reason in ds.skipped)


def test_phase_with_other_pixel_spacing_is_refused_at_construction(tmp_path):
    study = make_4dlung_study(tmp_path, phases=ALL[:6], spacing_of={30.0: (0.8, 0.8, 3.0)})
    with pytest.raises(InputError, match="pixel spacing") as err:
        Lung4DDataset(tmp_path)
    assert "Gated 30.0A" in str(err.value) and str(study) in str(err.value)


def test_phase_on_a_shifted_grid_is_refused_when_loaded(tmp_path):
    origin = (LUNG_ORIGIN_LPS[0], LUNG_ORIGIN_LPS[1], LUNG_ORIGIN_LPS[2] + 3.0)
    make_4dlung_study(tmp_path, phases=ALL[:6], origin_of={20.0: origin})
    ds = Lung4DDataset(tmp_path)  # headers agree in size, spacing and orientation
    with pytest.raises(InputError, match="is not on the grid of phase 0%") as err:
        ds[0]
    assert "Gated 20.0A" in str(err.value)


def test_same_phase_twice_in_one_4dct_names_both(tmp_path):
    study = make_4dlung_study(tmp_path, phases=ALL[:6], with_rtstruct=False)
    tags = {"0008|0060": "CT", "0008|103e": "P4^P100^S300^I00099, Gated, 10.0%A", "0010|0020": "100_HM10395",
            "0020|000d": "2.25.1", "0020|000e": "2.25.99"}
    write_dicom_series(study / "1.000000-P4P100S300I00099 Gated 10.0A-12345", expected_frames([10.0])[0], tags)
    with pytest.raises(InputError, match="phase 10% appears twice") as err:
        Lung4DDataset(tmp_path)
    assert "I00099" in str(err.value) and "I00004" in str(err.value)


def test_unknown_phase_selection(tmp_path):
    make_4dlung_study(tmp_path, phases=ALL[:6])
    with pytest.raises(InputError, match="unknown phase selection 'inhale'"):
        Lung4DDataset(tmp_path, phases="inhale")
    with pytest.raises(InputError, match=r"phase percentages must lie in \[0, 100\)"):
        Lung4DDataset(tmp_path, phases=[0, 100])
