"""A user's own files: per-frame 3D series, labels beside images by name, sidecars, a single 4D file, errors."""

import json

import numpy as np
import pytest

from MoDiffLib import Geometry, InputError
from MoDiffLib import io as mio
from MoDiffLib.datasets import Folder4DDataset, open_dataset
from MoDiffLib.datasets.naming import frame_number, is_label_name, series_key
from MoDiffLib.volume import Volume, VolumeSequence

GEOMETRY = Geometry((4, 5, 6), (1.5, 1.5, 4.0), (-5.0, 6.0, 7.0))
LV_VOXELS = [20, 24, 16, 8, 4, 10, 18]  # per frame: largest at frame 1 (ED), smallest at frame 4 (ES)


def frame(value: float) -> Volume:
    return Volume(np.full(GEOMETRY.shape_kji, value, np.float32), GEOMETRY)


def lv_label(voxels: int, geometry: Geometry = GEOMETRY) -> Volume:
    a = np.zeros(geometry.shape_kji, np.uint8)
    a.reshape(-1)[:voxels] = 1
    a.reshape(-1)[-3:] = 2  # another structure, not the LV
    return Volume(a, geometry)


def write_series(folder, name="img_tf{}.nii.gz", labels="img_tf{}_gt.nii.gz", count=len(LV_VOXELS), sidecar=None):
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(count):
        mio.write_volume(frame(100.0 + t), folder / name.format(t))
        if labels:
            mio.write_volume(lv_label(LV_VOXELS[t]), folder / labels.format(t))
    if sidecar is not None:
        (folder / "case.json").write_text(json.dumps(sidecar))
    return folder


def test_names_say_label_frame_number_and_series():
    assert is_label_name("img_tf3_gt.nii.gz") and is_label_name("seg_tf3.nii.gz") and is_label_name("mask.nrrd")
    assert is_label_name("cine_labels.nii.gz") and is_label_name("patient001_frame01_gt.nii.gz")
    assert not is_label_name("img_tf3.nii.gz") and not is_label_name("segment_3.nii") and not is_label_name("gtx1.nii")
    assert frame_number("img_tf14.nii.gz") == 14 and frame_number("frame_007.nrrd") == 7 and frame_number("x.nii") is None
    assert series_key("img_tf3.nii.gz") == series_key("img_tf3_gt.nii.gz") == series_key("img_tf12.nii.gz") == "img_tf#"


def test_frames_are_ordered_by_the_number_in_the_name_and_labels_paired(tmp_path):
    # 0..10 written out of lexical order: img_tf10 sorts before img_tf2 by name, not by number
    write_series(tmp_path / "case1", count=7)
    mio.write_volume(frame(110.0), tmp_path / "case1" / "img_tf10.nii.gz")
    ds = Folder4DDataset(tmp_path / "case1")
    assert ds.case_ids == ["case1"] and ds.skipped == []
    case = ds[0]
    values = [float(f.mean()) for f in case.frames.frames]
    assert values == [100.0, 101.0, 102.0, 103.0, 104.0, 105.0, 106.0, 110.0]  # by number: 0..6, then 10
    assert case.meta["source_frames"] == list(range(8))  # no LV known: nothing rolled to an ED
    assert sorted(case.labels) == [0, 1, 2, 3, 4, 5, 6]  # frame 10 has no label map
    assert int((case.labels[1].array == 1).sum()) == 24 and case.labels[0].array.dtype == np.uint8
    # no label names given: no LV, no ED/ES/EF guessed -- and the case says why
    assert case.meta["ed_frame"] is None and case.amplitude is None
    assert "no label names" in case.meta["notes"][0]


def test_sidecar_names_the_lv_and_ed_es_ef_come_from_its_volume(tmp_path):
    folder = write_series(tmp_path / "p", sidecar={"labels": {"1": "lv", "2": "myocardium"}})
    case = Folder4DDataset(folder)[0]
    voxel_ml = float(np.prod(GEOMETRY.spacing)) / 1000.0
    assert case.meta["kind"] == "cardiac" and case.meta["label_names"] == {1: "lv", 2: "myocardium"}
    assert case.meta["ed_frame"] == 0 and case.meta["es_frame"] == 3  # source frames 1 and 4
    assert case.meta["source_frames"] == [1, 2, 3, 4, 5, 6, 0]
    assert case.meta["ef_pct"] == pytest.approx(100.0 * (24 - 4) / 24) and case.amplitude == case.meta["ef_pct"]
    assert case.meta["lv_volumes_ml"]["0"] == pytest.approx(24 * voxel_ml)
    assert case.meta["frame_phases"] == pytest.approx([t / 7 for t in range(7)]) and case.meta["whole_cycle"]


def test_sidecar_ed_es_ef_override_the_labels(tmp_path):
    folder = write_series(tmp_path / "p", labels="seg_tf{}.nii.gz",
                          sidecar={"kind": "cardiac", "labels": {"1": "LV blood pool"}, "ed": 0, "es": 3, "ef": 55.0})
    case = Folder4DDataset(folder)[0]
    assert case.meta["source_frames"] == list(range(7))  # ED at frame 0 already: nothing rolled
    assert (case.meta["ed_frame"], case.meta["es_frame"], case.amplitude) == (0, 3, 55.0)
    assert case.meta["ef_source"] == "sidecar" and sorted(case.labels) == list(range(7))  # seg_tf paired too


def test_part_of_a_cycle_needs_its_phases(tmp_path):
    folder = write_series(tmp_path / "p", count=4, labels=None, sidecar={"whole_cycle": False, "cycle_frames": 10})
    case = Folder4DDataset(folder)[0]
    assert case.meta["frame_phases"] == pytest.approx([0.0, 0.1, 0.2, 0.3]) and not case.meta["whole_cycle"]
    (folder / "case.json").write_text(json.dumps({"whole_cycle": False}))
    with pytest.raises(InputError, match="needs the frames' cycle 'phases' or 'cycle_frames'"):
        Folder4DDataset(folder)[0]


def test_case_subfolders_and_frame_style_names(tmp_path):
    write_series(tmp_path / "cases" / "patientA", count=3)
    write_series(tmp_path / "cases" / "patientB", name="frame_{:03d}.nrrd", labels="frame_{:03d}_label.nrrd", count=4)
    ds = open_dataset(f"folder:{tmp_path / 'cases'}")
    assert ds.case_ids == ["patientA", "patientB"]
    b = ds[1]
    assert b.num_frames == 4 and [float(f.mean()) for f in b.frames.frames] == [100.0, 101.0, 102.0, 103.0]
    assert sorted(b.labels) == [0, 1, 2, 3]
    assert type(open_dataset(str(tmp_path / "cases"))) is Folder4DDataset  # a bare folder: detected


def test_a_4d_file_with_its_4d_labels_and_an_unfit_label_left_out(tmp_path):
    frames = np.stack([np.full(GEOMETRY.shape_kji, 10.0 + t, np.float32) for t in range(5)])
    mio.write_sequence(VolumeSequence(frames, GEOMETRY), tmp_path / "cine.nii.gz")
    labels = np.stack([lv_label(LV_VOXELS[t]).array for t in range(5)]).astype(np.float32)
    mio.write_sequence(VolumeSequence(labels, GEOMETRY), tmp_path / "cine_seg.nii.gz")
    # a label file whose 4th axis holds slices (6 "frames" of one 2D slice each) does not fit: left out
    sliced = Geometry((1, 5, 6), (1.5, 1.5, 4.0), (-5.0, 6.0, 7.0))
    mio.write_sequence(VolumeSequence(np.zeros((6, 1, 5, 6), np.float32), sliced), tmp_path / "other_gt.nii.gz")
    (tmp_path / "cine.json").write_text(json.dumps({"labels": {"1": "lv_blood"}}))
    ds = open_dataset(str(tmp_path / "cine.nii.gz"))  # a 4D file given directly: one case
    assert ds.case_ids == ["cine"]
    case = ds[0]
    assert isinstance(case.labels, VolumeSequence) and case.labels.num_frames == 5
    assert case.meta["es_frame"] == 4 - 1 and case.meta["ed_frame"] == 0  # ED = source frame 1, ES = source 4
    whole = Folder4DDataset(tmp_path)
    assert whole.case_ids == ["cine"]
    assert [(p.split("/")[-1], "4th axis of slices" in r) for p, r in whole.skipped] == [("other_gt.nii.gz", True)]


@pytest.mark.parametrize("break_it, match", [
    ("odd_grid", "img_tf2.nii.gz is on another grid"),
    ("stray_label", "cannot pair the label map .*mask.nii.gz"),
    ("bad_sidecar", "unknown key\\(s\\) ES"),
    ("bad_ed", "'ed': 9 is beyond the 7 frames"),
    ("doubled", "frame number 3 appears twice"),
])
def test_what_cannot_be_paired_is_one_clear_error(tmp_path, break_it, match):
    folder = write_series(tmp_path / "p", sidecar={"labels": {"1": "lv"}})
    if break_it == "odd_grid":
        other = Geometry((4, 5, 6), (1.0, 1.5, 4.0), (-5.0, 6.0, 7.0))
        mio.write_volume(Volume(np.zeros(other.shape_kji, np.float32), other), folder / "img_tf2.nii.gz",
                         overwrite=True)
    elif break_it == "stray_label":
        mio.write_volume(lv_label(3), folder / "mask.nii.gz")
        mio.write_sequence(VolumeSequence(np.zeros((2,) + GEOMETRY.shape_kji, np.float32), GEOMETRY),
                           folder / "extra.nii.gz")  # two cases in the folder: the stray mask names neither
    elif break_it == "bad_sidecar":
        (folder / "case.json").write_text(json.dumps({"ES": 3}))
    elif break_it == "bad_ed":
        (folder / "case.json").write_text(json.dumps({"ed": 9}))
    elif break_it == "doubled":
        mio.write_volume(frame(0.0), folder / "img_tf03.nii.gz")
    with pytest.raises(InputError, match=match) as err:
        Folder4DDataset(folder)[0]
    assert "\n" not in str(err.value)
