"""Data sets in general: phantom seed splits, folders of 4D files, the sequence protocol, specs."""

import pickle

import numpy as np
import pytest

from fixtures_datasets import make_4dlung_study, make_acdc, make_dirlab_case, write_4d_nifti
from MoDiffLib import InputError, VolumeSequence
from MoDiffLib import io as mio
from MoDiffLib.datasets import (
    PHANTOM_SEEDS,
    ACDCDataset,
    DirLabDataset,
    Folder4DDataset,
    Lung4DDataset,
    PhantomDataset,
    detect_layout,
    open_dataset,
    phantom_split_of,
)

SMALL = (16, 16, 8)  # a small phantom grid keeps these tests fast


# -- phantoms ---------------------------------------------------------------------------------


def test_phantom_seed_ranges_are_disjoint_and_documented():
    assert PHANTOM_SEEDS["train"] == range(0, 100_000)
    assert PHANTOM_SEEDS["val"] == range(100_000, 200_000)
    assert PHANTOM_SEEDS["test"] == range(200_000, 300_000)
    splits = list(PHANTOM_SEEDS.values())
    for a in range(len(splits)):
        for b in range(a + 1, len(splits)):
            assert not set(splits[a]) & set(splits[b])
    assert phantom_split_of(99_999) == "train" and phantom_split_of(100_000) == "val"
    assert phantom_split_of(250_000) == "test"
    with pytest.raises(InputError, match="outside every split"):
        phantom_split_of(300_000)


def test_phantom_datasets_of_different_splits_never_share_a_seed():
    train = PhantomDataset("lung", "train", num_cases=50, seed_base=99_950)  # the end of train
    val = PhantomDataset("lung", "val", num_cases=50)
    test = PhantomDataset("cardiac", "test", num_cases=50, seed_base=10)
    assert train.seeds[-1] == 99_999 and val.seeds[0] == 100_000 and test.seeds[0] == 200_010
    assert not (set(train.seeds) & set(val.seeds)) and not (set(val.seeds) & set(test.seeds))
    assert all(phantom_split_of(s) == "test" for s in test.seeds)
    assert test.case_ids[0] == "phantom_cardiac_200010"
    with pytest.raises(InputError, match="would leave the val seed range 100000..199999"):
        PhantomDataset("lung", "val", num_cases=10, seed_base=99_995)


def test_phantom_frame_counts_drawn_per_seed_are_reproducible():
    a = PhantomDataset("lung", "train", num_cases=30, num_frames=(6, 12))
    b = PhantomDataset("lung", "train", num_cases=30, num_frames=(6, 12))
    counts = [e.num_frames for e in a._entries]
    assert counts == [e.num_frames for e in b._entries]
    assert min(counts) >= 6 and max(counts) <= 12 and len(set(counts)) > 2


def test_phantom_case_record():
    ds = PhantomDataset("lung", "test", num_cases=2, num_frames=4, shape_ijk=SMALL, amplitude=18.0)
    case = ds[1]
    assert case.case_id == "phantom_lung_200001" and case.meta["seed"] == 200_001
    assert case.meta["split"] == "test" and case.meta["source"] == "phantom"
    assert case.num_frames == 4 and case.frames.geometry.shape_kji == SMALL[::-1]
    assert case.amplitude == pytest.approx(18.0) == case.meta["params"]["amplitude"]
    assert isinstance(case.labels, VolumeSequence) and case.labels.num_frames == 4
    assert case.landmarks and all(track.shape == (4, 3) for track in case.landmarks.values())
    assert case.meta["motion"].frames.shape[:4] == case.frames.frames.shape
    again = ds[1]
    np.testing.assert_array_equal(again.frames.frames, case.frames.frames)  # same seed, same case


def test_cardiac_phantom_amplitude_is_its_drawn_ejection_fraction():
    case = PhantomDataset("cardiac", "val", num_cases=1, num_frames=3, shape_ijk=SMALL)[0]
    assert case.case_id == "phantom_cardiac_100000" and case.meta["modality"] == "MR"
    assert case.amplitude == case.meta["params"]["amplitude"] and 15.0 <= case.amplitude <= 80.0
    assert case.labels.num_frames == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="brain"), "unknown phantom kind 'brain'"),
    (dict(kind="lung", split="holdout"), "unknown phantom split 'holdout'"),
    (dict(kind="lung", num_frames=1), "frame counts must lie in 2.."),
    (dict(kind="lung", num_frames=(8, 4)), "frame counts must lie in 2.."),
    (dict(kind="lung", num_frames=1000), "frame counts must lie in 2.."),
    (dict(kind="lung", num_cases=0), "at least one case"),
    (dict(kind="lung", start_phase=1.0), r"start_phase 1.0 out of range: it must be in \[0, 1\)"),
    (dict(kind="lung", amplitude=55.0), r"amplitude 55 out of range: the lung diaphragm SI excursion \(mm\) must be in \[0, 40\]"),
    (dict(kind="cardiac", amplitude=5.0), r"amplitude 5 out of range: the cardiac ejection fraction \(%\) must be in \[15, 80\]"),
    (dict(kind="lung", num_frames=64, shape_ijk=(256, 256, 128)), "too many voxels"),
])
def test_bad_phantom_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        PhantomDataset(**kwargs)


# -- folders of 4D files ----------------------------------------------------------------------


@pytest.fixture()
def cine_folder(tmp_path):
    write_4d_nifti(tmp_path / "b_cine.nii.gz", 5, offset=10)
    write_4d_nifti(tmp_path / "a_cine.nii", 3)
    frames = np.stack([np.full((3, 4, 5), 100.0 + t, dtype=np.float32) for t in range(4)])
    sequence = VolumeSequence(frames, write_geometry())
    mio.write_sequence(sequence, tmp_path / "c_cine.seq.nrrd")
    mio.write_volume(sequence.frame(0), tmp_path / "single_frame.nii.gz")  # 3D: left out
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def write_geometry():
    from MoDiffLib import Geometry

    return Geometry((3, 4, 5), (1.5, 1.5, 4.0), (-5.0, 6.0, 7.0))


def test_folder_yields_every_4d_file(cine_folder):
    ds = Folder4DDataset(cine_folder)
    assert ds.case_ids == ["a_cine", "b_cine", "c_cine"]
    assert [p.split("/")[-1] for p, _ in ds.skipped] == ["single_frame.nii.gz"]
    a, b, c = ds[0], ds[1], ds[2]
    assert (a.num_frames, b.num_frames, c.num_frames) == (3, 5, 4)
    assert [float(f.mean()) for f in b.frames.frames] == [10.0, 11.0, 12.0, 13.0, 14.0]
    np.testing.assert_allclose(b.frames.geometry.origin_ras, (10.0, -20.0, 30.0))
    np.testing.assert_allclose(b.frames.geometry.spacing, (2.0, 2.0, 3.0))
    assert b.frames.geometry.shape_kji == (3, 4, 5)
    assert c.frames.geometry.is_close(write_geometry()) and float(c.frames.frames[3].mean()) == 103.0
    assert a.meta["source"] == "folder" and a.labels is None and a.landmarks is None


def test_folder_names_cases_by_subfolder(tmp_path):
    (tmp_path / "site1").mkdir()
    write_4d_nifti(tmp_path / "site1" / "cine.nii.gz", 2)
    # a folder without images of its own is a folder of case folders
    assert Folder4DDataset(tmp_path).case_ids == ["site1_cine"]
    assert Folder4DDataset(tmp_path, recursive=True).case_ids == ["site1_cine"]
    write_4d_nifti(tmp_path / "top.nii.gz", 2)  # images of its own: the sub-folders only with recursive
    assert Folder4DDataset(tmp_path).case_ids == ["top"]
    assert Folder4DDataset(tmp_path, recursive=True).case_ids == ["top", "site1_cine"]


def test_folder_without_4d_files_says_what_it_expected(tmp_path):
    mio.write_volume(VolumeSequence(np.zeros((1, 3, 4, 5), np.float32), write_geometry()).frame(0),
                     tmp_path / "one.nii.gz")
    with pytest.raises(InputError, match=r"no 4D files or frame series in .*\.seq\.nrrd.*left out: 1 file"):
        Folder4DDataset(tmp_path)


def test_case_records_check_labels_and_landmarks_against_the_frames():
    from MoDiffLib import Geometry, Volume
    from MoDiffLib.datasets import Case4D

    frames = VolumeSequence(np.zeros((3, 2, 3, 4), np.float32), Geometry((2, 3, 4)))
    label = Volume(np.zeros((2, 3, 4), np.uint8), Geometry((2, 3, 4)))
    assert Case4D("ok", frames, {2: label}, {"p": np.zeros((3, 3))}).num_frames == 3
    with pytest.raises(InputError, match="labels given for frame 3 of a 3-frame case"):
        Case4D("x", frames, {3: label})
    with pytest.raises(InputError, match="not on the frames' grid"):
        Case4D("x", frames, {0: Volume(label.array, Geometry((2, 3, 4), (2.0, 1.0, 1.0)))})
    with pytest.raises(InputError, match=r"landmark p has shape \(2, 3\), expected \(3, 3\)"):
        Case4D("x", frames, None, {"p": np.zeros((2, 3))})


# -- the sequence protocol (DataLoader, DistributedSampler, workers) ---------------------------


def test_datasets_are_plain_sequences_for_torch(cine_folder):
    import torch.utils.data as tud

    ds = Folder4DDataset(cine_folder)
    assert len(ds) == 3 and ds[-1].case_id == "c_cine"
    assert [c.case_id for c in ds] == ds.case_ids
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(TypeError):
        ds["a_cine"]
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers receive a pickled copy
    assert clone.case_ids == ds.case_ids and clone[1].num_frames == 5
    loader = tud.DataLoader(ds, batch_size=2, shuffle=False, collate_fn=list)
    assert [[c.case_id for c in batch] for batch in loader] == [["a_cine", "b_cine"], ["c_cine"]]
    parts = [list(tud.DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sorted(set(parts[0]) | set(parts[1])) == [0, 1, 2]


# -- specs --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    make_acdc(root / "acdc", [1, 95])
    make_4dlung_study(root / "lung", phases=[float(p) for p in range(0, 60, 10)])
    make_dirlab_case(root / "dirlab", 4, (8, 6, 4), (1.13, 1.13, 2.5))
    (root / "cines").mkdir()
    write_4d_nifti(root / "cines" / "x.nii.gz", 3)
    (root / "empty").mkdir()
    return root


def test_phantom_specs():
    ds = open_dataset("phantom:lung:20")
    assert isinstance(ds, PhantomDataset) and len(ds) == 20 and ds.kind == "lung" and ds.split == "train"
    held_out = open_dataset("phantom:cardiac:5:test")
    assert held_out.kind == "cardiac" and held_out.seeds == list(range(200_000, 200_005))
    assert open_dataset("phantom:lung:3", num_frames=(4, 6)).split == "train"


def test_path_specs_and_detected_layouts(layouts):
    cases = {
        "acdc": (ACDCDataset, layouts / "acdc"),
        "4dlung": (Lung4DDataset, layouts / "lung"),
        "dirlab": (DirLabDataset, layouts / "dirlab"),
        "folder": (Folder4DDataset, layouts / "cines"),
    }
    for prefix, (cls, path) in cases.items():
        assert type(open_dataset(f"{prefix}:{path}")) is cls
        assert detect_layout(path) == prefix
        assert type(open_dataset(str(path))) is cls
    assert open_dataset(f"acdc:{layouts / 'acdc'}", split="test").case_ids == ["patient095"]
    assert detect_layout(layouts / "lung" / "4D-Lung" / "100_HM10395") == "4dlung"
    assert detect_layout(layouts / "dirlab" / "Case4Pack") == "dirlab"
    assert detect_layout(layouts / "acdc" / "database" / "training") == "acdc"


@pytest.mark.parametrize("spec, match", [
    ("mri:/data", "unknown data set kind 'mri'"),
    ("", "empty data set spec"),
    ("phantom:lung", "must read phantom:KIND:N"),
    ("phantom:brain:3", "kind must be one of lung, cardiac"),
    ("phantom:lung:many", "N must be a positive whole number"),
    ("phantom:lung:0", "N must be a positive whole number"),
    ("phantom:lung:3:holdout", "split must be one of train, val, test"),
    ("acdc:", "names no folder"),
    ("/no/such/folder", "neither a data set spec nor an existing folder"),
])
def test_bad_specs(spec, match):
    with pytest.raises(InputError, match=match):
        open_dataset(spec)


def test_unknown_spec_lists_the_valid_forms():
    with pytest.raises(InputError) as err:
        open_dataset("nifti:/data")
    message = str(err.value)
    for form in ("phantom:KIND:N", "acdc:PATH", "4dlung:PATH", "dirlab:PATH", "folder:PATH", "folder path"):
        assert form in message


def test_undetectable_folder_names_the_layouts(layouts):
    with pytest.raises(InputError, match="cannot tell the data layout of") as err:
        open_dataset(str(layouts / "empty"))
    assert "ACDC" in str(err.value) and "DIR-Lab" in str(err.value) and "4D-Lung" in str(err.value)
    # a 4D file is a one-case data set, named or bare; another file is refused
    for spec in (str(layouts / "cines" / "x.nii.gz"), f"folder:{layouts / 'cines' / 'x.nii.gz'}"):
        single = open_dataset(spec)
        assert single.case_ids == ["x"] and single[0].num_frames == 3
    (layouts / "cines" / "notes.txt").write_text("no image")
    with pytest.raises(InputError, match="is not a 4D image file"):
        open_dataset(str(layouts / "cines" / "notes.txt"))
