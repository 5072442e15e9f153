"""DIR-Lab loader on tiny raw files in DIR-Lab's layout: HU offset, phases, grid, landmarks in RAS."""

import json

import numpy as np
import pytest

from fixtures_datasets import dirlab_raw, make_dirlab_case
from MoDiffLib import InputError
from MoDiffLib.datasets import DIRLAB_4DCT_GEOMETRY, DIRLAB_HU_OFFSET, DirLabDataset

SIZE = (12, 10, 6)
SPACING = (1.16, 1.16, 2.5)


@pytest.fixture(scope="module")
def dirlab_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dirlab")
    make_dirlab_case(root, 2, SIZE, SPACING)
    return root


def landmarks_of(root, case, tag):
    path = root / f"Case{case}Pack" / "ExtremePhases" / f"Case{case}_300_{tag}_xyz.txt"
    return np.loadtxt(path)


def test_frames_are_hu_in_phase_order(dirlab_root):
    case = DirLabDataset(dirlab_root, phases="all")[0]
    assert case.case_id == "case2" and case.num_frames == 10
    assert case.meta["phases"] == [f"T{p}0" for p in range(10)]
    assert case.frames.frames.dtype == np.int16
    expected = np.stack([dirlab_raw(SIZE, p).astype(np.int32) - 1024 for p in range(10)])
    bright = case.frames.frames != expected
    assert bright.sum() == 1 and case.frames.frames[bright][0] == 2000  # the marker voxel of landmark 1
    np.testing.assert_array_equal(case.frames.frames[~bright], expected[~bright])
    assert DIRLAB_HU_OFFSET == 1024 and case.frames.frames[3].min() == -1000 + 30


def test_default_phases_t00_to_t50_with_landmark_rows(dirlab_root):
    case = DirLabDataset(dirlab_root)[0]
    assert case.meta["phases"] == ["T00", "T10", "T20", "T30", "T40", "T50"]
    assert len([n for n in case.landmarks if n.startswith("dirlab300_")]) == 300
    assert len([n for n in case.landmarks if n.startswith("dirlab75_")]) == 75
    track = case.landmarks["dirlab300_001"]
    assert track.shape == (6, 3)
    assert np.isfinite(track[[0, 5]]).all() and np.isnan(track[1:5]).all()
    assert np.isfinite(case.landmarks["dirlab75_01"]).all()


def test_landmarks_are_converted_to_ras_under_the_stated_orientation(dirlab_root):
    case = DirLabDataset(dirlab_root)[0]
    g = case.frames.geometry
    # voxel (1, 1, 1) = patient right-anterior-superior corner at the origin; x -> L, y -> P, z -> I
    np.testing.assert_allclose(g.direction, -np.eye(3))
    assert g.origin_ras == (0.0, 0.0, 0.0) and g.spacing == SPACING and g.shape_kji == SIZE[::-1]
    for tag, row in (("T00", 0), ("T50", 5)):
        xyz = landmarks_of(dirlab_root, 2, tag)
        got = np.stack([case.landmarks[f"dirlab300_{n + 1:03d}"][row] for n in range(300)])
        np.testing.assert_allclose(got, -(xyz - 1.0) * SPACING)
    # image and landmark conventions agree: landmark 1 sits on the bright voxel of T00
    ijk = np.rint(g.ras_to_ijk_points(case.landmarks["dirlab300_001"][0])).astype(int)
    assert case.frames.frames[0][ijk[2], ijk[1], ijk[0]] == 2000
    # slice index grows towards the feet, column index towards the patient's left
    assert g.ijk_to_ras_points([0, 0, 1])[2] < g.ijk_to_ras_points([0, 0, 0])[2]
    assert g.ijk_to_ras_points([1, 0, 0])[0] < g.ijk_to_ras_points([0, 0, 0])[0]


def test_published_grid_table():
    assert len(DIRLAB_4DCT_GEOMETRY) == 10
    assert DIRLAB_4DCT_GEOMETRY[1] == ((256, 256, 94), (0.97, 0.97, 2.5))
    assert DIRLAB_4DCT_GEOMETRY[2] == ((256, 256, 112), (1.16, 1.16, 2.5))
    assert DIRLAB_4DCT_GEOMETRY[10] == ((512, 512, 120), (0.97, 0.97, 2.5))
    assert all(DIRLAB_4DCT_GEOMETRY[c][0][:2] == (256, 256) for c in range(1, 6))
    assert all(DIRLAB_4DCT_GEOMETRY[c][0][:2] == (512, 512) for c in range(6, 11))
    assert all(s[2] == 2.5 and 0.97 <= s[0] <= 1.16 for _, s in DIRLAB_4DCT_GEOMETRY.values())


def test_published_grid_is_used_without_a_sidecar(tmp_path):
    size, spacing = DIRLAB_4DCT_GEOMETRY[1]
    make_dirlab_case(tmp_path, 1, size, spacing, phases=(0, 5), sidecar=False, with_4d75=False)
    case = DirLabDataset(tmp_path, phases=[0, 50])[0]
    assert case.frames.geometry.shape_kji == (94, 256, 256)
    assert case.frames.geometry.spacing == (0.97, 0.97, 2.5)
    assert case.meta["geometry_source"] == "the published DIR-Lab table"
    assert np.isfinite(case.landmarks["dirlab300_300"]).all()


def test_case8_deploy_layout_and_unsuffixed_names(tmp_path):
    make_dirlab_case(tmp_path, 8, SIZE, SPACING, suffix="", pack="Case8Deploy", extreme_dir="extremePhases",
                     landmark_name="case8_dirLab300_{tag}_xyz.txt")
    make_dirlab_case(tmp_path, 3, SIZE, SPACING, suffix="-ssm")
    ds = DirLabDataset(tmp_path)
    assert ds.case_ids == ["case3", "case8"]
    assert np.isfinite(ds[1].landmarks["dirlab300_001"][[0, 5]]).all()
    assert DirLabDataset(tmp_path / "Case8Deploy").case_ids == ["case8"]  # a pack as root


# -- bad input ---------------------------------------------------------------------------------


def test_folder_without_images(tmp_path):
    with pytest.raises(InputError, match="no DIR-Lab images under") as err:
        DirLabDataset(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_file_size_not_matching_the_published_grid(tmp_path):
    make_dirlab_case(tmp_path, 1, SIZE, SPACING, sidecar=False)  # tiny files, but case 1 is 256x256x94
    with pytest.raises(InputError, match=r"case1_T00_s.img has 1440 bytes.*256x256x94.*dirlab_geometry.json"):
        DirLabDataset(tmp_path)


def test_missing_phase_image_is_named(tmp_path):
    make_dirlab_case(tmp_path, 2, SIZE, SPACING, phases=(0, 1, 2, 4, 5))
    with pytest.raises(InputError, match="lacks phase image.*T30"):
        DirLabDataset(tmp_path)
    assert DirLabDataset(tmp_path, phases=[0, 50])[0].num_frames == 2


def test_two_images_for_one_phase(tmp_path):
    pack = make_dirlab_case(tmp_path, 2, SIZE, SPACING)
    dirlab_raw(SIZE, 0).tofile(pack / "Images" / "case2_T00.img")
    with pytest.raises(InputError, match="2 images for T00"):
        DirLabDataset(tmp_path)


def test_landmarks_outside_the_grid_name_the_file(tmp_path):
    points = np.tile([[3, 4, 5]], (300, 1))
    points[7] = [3, 4, 60]  # beyond 6 slices
    make_dirlab_case(tmp_path, 2, SIZE, SPACING, landmarks_300=points)
    with pytest.raises(InputError, match="Case2_300_T00_xyz.txt has landmarks outside the 12x10x6 grid"):
        DirLabDataset(tmp_path)


def test_malformed_landmark_file(tmp_path):
    pack = make_dirlab_case(tmp_path, 2, SIZE, SPACING)
    (pack / "ExtremePhases" / "Case2_300_T50_xyz.txt").write_text("1 2 3\n4 five 6\n")
    with pytest.raises(InputError, match=r"Case2_300_T50_xyz.txt, line 2"):
        DirLabDataset(tmp_path)


def test_malformed_sidecar_names_the_file(tmp_path):
    pack = make_dirlab_case(tmp_path, 2, SIZE, SPACING)
    (pack / "dirlab_geometry.json").write_text(json.dumps({"size": [12, 10, 6]}))
    with pytest.raises(InputError, match="dirlab_geometry.json must be JSON like"):
        DirLabDataset(tmp_path)


def test_unpublished_case_needs_a_sidecar(tmp_path):
    make_dirlab_case(tmp_path, 11, SIZE, SPACING, sidecar=False)
    with pytest.raises(InputError, match="case 11 is not one of the published cases 1-10"):
        DirLabDataset(tmp_path)
