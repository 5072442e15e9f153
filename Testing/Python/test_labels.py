"""Labels through time (issue 14 item 3): a frame-0 label map carried by the generated motion.

Library (:mod:`MoDiffLib.labelmap`, ``MotionPipeline.generate(labels=...)``), the command
(``modiff generate --labels``, its file read back by Slicer's own storage node) and Slicer's
segmentation files (written by Slicer's own segmentation storage node, read by MoDiff). The
scene side (segmentation sequence in the cine's browser, plot) is in the shared MRML scenarios.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from MoDiffLib import Volume
from MoDiffLib.errors import InputError
from MoDiffLib.io import read_sequence, write_volume
from MoDiffLib.labelmap import LabelMap, check_label_map, check_label_values, label_volumes_ml, read_label_map
from MoDiffLib.motion.propagate import dice
from MoDiffLib.volume import Geometry

sys.path.insert(0, os.path.dirname(__file__))
from slicer_headless import make_scene, require_slicer  # noqa: E402

SHAPE = (64, 64, 32)


@pytest.fixture(scope="module")
def case():
    from MoDiffLib.datasets import PHANTOM_SEEDS
    from MoDiffLib.phantom import make_phantom

    return make_phantom("lung", num_frames=5, seed=PHANTOM_SEEDS["test"].start + 1, shape_ijk=SHAPE)


@pytest.fixture(scope="module")
def carried(case):
    from MoDiffLib.pipelines import load_pipeline

    pipe = load_pipeline(None, kind="lung")
    frame0 = Volume(case.frames.frames[0], case.frames.geometry, "phantom")
    labels0 = LabelMap(Volume(case.labels.frames[0], case.frames.geometry, "labels"), case.label_names)
    return pipe.generate(frame0, case.frames.num_frames, seed=0, device="cpu", labels=labels0)


def modiff(*args):
    return subprocess.run([sys.executable, "-m", "MoDiffLib", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


# -- what a label map is ------------------------------------------------------------------------
@pytest.mark.parametrize("array, message", [
    (np.full((3, 3, 3), 1.5, np.float32), "fractional"),
    (np.full((3, 3, 3), -1, np.int16), "negative"),
    (np.zeros((3, 3, 3), np.uint8), "empty"),
    (np.full((3, 3, 3), np.nan, np.float32), "NaN"),
    (np.ones((2, 3, 3, 3), np.uint8), "3D"),
    (np.arange(27 * 20, dtype=np.int32).reshape(20, 3, 9), "different labels"),
])
def test_what_is_not_a_label_map_is_refused_in_one_line(array, message):
    with pytest.raises(InputError, match=message):
        check_label_values(array, "seg.nrrd")


def test_whole_number_floats_become_the_smallest_unsigned_type():
    assert check_label_values(np.array([[[0.0, 3.0, 300.0]]]), "x").dtype == np.uint16
    assert check_label_values(np.array([[[0, 1, 2]]], np.int64), "x").dtype == np.uint8


def test_a_crop_on_the_input_lattice_is_placed_exactly_and_another_grid_is_refused():
    grid = Geometry(shape_kji=(8, 9, 10), spacing=(0.7, 0.8, 2.5), origin_ras=(-3.0, 4.0, 10.0))
    crop_grid = Geometry(shape_kji=(3, 4, 5), spacing=(0.7, 0.8, 2.5), origin_ras=grid.ijk_to_ras_points(np.array([2.0, 1.0, 4.0])))
    crop = np.ones((3, 4, 5), np.uint8) * 4
    placed = check_label_map(Volume(crop, crop_grid, "crop"), grid).volume.array
    assert placed.shape == (8, 9, 10) and placed.sum() == crop.sum()
    assert (placed[4:7, 1:5, 2:7] == 4).all()  # (k, j, i) = index (i=2, j=1, k=4) onwards
    off = Geometry(shape_kji=(3, 4, 5), spacing=(0.7, 0.8, 2.5), origin_ras=(-2.65, 4.0, 10.0))  # half a voxel
    with pytest.raises(InputError, match="not on the voxel grid"):
        check_label_map(Volume(crop, off, "off"), grid)
    beyond = Geometry(shape_kji=(3, 4, 5), spacing=(0.7, 0.8, 2.5), origin_ras=grid.ijk_to_ras_points(np.array([8.0, 0, 0])))
    with pytest.raises(InputError, match="outside the input"):
        check_label_map(Volume(crop, beyond, "beyond"), grid)


# -- carried by the generated motion --------------------------------------------------------------
def test_carried_labels_lie_on_the_true_anatomy_of_every_frame(case, carried):
    labels = carried.labels
    assert labels.num_frames == case.frames.num_frames and labels.geometry.is_close(case.frames.geometry, 1e-6)
    np.testing.assert_array_equal(labels.frames[0], case.labels.frames[0])
    for t in range(1, labels.num_frames):
        for name in ("lung_right", "lung_left", "liver", "heart"):
            v = next(k for k, n in case.label_names.items() if n == name)
            score = dice(labels.frames[t] == v, case.labels.frames[t] == v)
            assert score > 0.9, f"frame {t}: {name} Dice {score:.3f}"
    # at end-inhale the carried liver is nearer the truth than a still copy of frame 0 would be
    liver = next(k for k, n in case.label_names.items() if n == "liver")
    mid = labels.num_frames // 2
    moved = dice(labels.frames[mid] == liver, case.labels.frames[mid] == liver)
    still = dice(case.labels.frames[0] == liver, case.labels.frames[mid] == liver)
    assert moved > still + 0.02, (moved, still)


def test_carried_labels_move_with_the_cine(carried):
    """The labels follow the frames they came with: the carried lungs are the cine's air in every frame."""
    for t in range(carried.labels.num_frames):
        lung = np.isin(carried.labels.frames[t], [2, 3])
        air = carried.sequence.frames[t][lung] < -400
        assert air.mean() > 0.95, f"frame {t}: only {air.mean():.1%} of the carried lungs is lung in the cine"


def test_every_structure_stays_in_every_frame(case, carried):
    present0 = set(np.unique(case.labels.frames[0])) - {0}
    for t in range(carried.labels.num_frames):
        assert set(np.unique(carried.labels.frames[t])) - {0} == present0, f"frame {t} lost a structure"
    volumes = label_volumes_ml(carried.labels)
    assert set(volumes) == present0 and all(len(v) == carried.labels.num_frames for v in volumes.values())
    assert carried.provenance["labels"]["21"] == case.label_names[21]


# -- the command ------------------------------------------------------------------------------------
def test_generate_with_labels_writes_a_label_sequence_slicer_reads(case, tmp_path):
    slicer = require_slicer()
    write_volume(Volume(case.frames.frames[0], case.frames.geometry, "ct"), tmp_path / "ct.nrrd")
    write_volume(Volume(case.labels.frames[0], case.frames.geometry, "seg"), tmp_path / "seg.nrrd")
    r = modiff("generate", tmp_path / "ct.nrrd", "--frames", 5, "--out", tmp_path / "cine.seq.nrrd",
               "--labels", tmp_path / "seg.nrrd", "--progress", "json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert "propagate" in {e.get("stage") for e in events}
    done = events[-1]
    assert str(tmp_path / "labels.seq.nrrd") in done["outputs"]
    volumes = done["label_volumes_ml"]
    assert len(volumes) == len(set(np.unique(case.labels.frames[0])) - {0}) and all(len(v) == 5 for v in volumes.values())
    ours = read_sequence(tmp_path / "labels.seq.nrrd")
    with make_scene() as hs:
        node = hs.scene.AddNewNodeByClass("vtkMRMLSequenceNode")
        storage = slicer.vtkMRMLVolumeSequenceStorageNode()
        hs.scene.AddNode(storage)
        storage.SetFileName(str(tmp_path / "labels.seq.nrrd"))
        assert storage.ReadData(node) == 1
        assert node.GetNumberOfDataNodes() == 5
        for t in (0, 3):
            voxels = slicer.util.arrayFromVolume(node.GetNthDataNode(t))
            assert voxels.dtype == np.uint8
            np.testing.assert_array_equal(voxels, ours.frames[t])
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node.GetNthDataNode(0)), case.labels.frames[0])


def test_generate_refuses_bad_labels_before_writing_anything(case, tmp_path):
    write_volume(Volume(case.frames.frames[0], case.frames.geometry, "ct"), tmp_path / "ct.nrrd")
    other = Geometry(shape_kji=(10, 10, 10), spacing=(3.0, 3.0, 3.0), origin_ras=(0.0, 0.0, 0.0))
    write_volume(Volume(np.ones((10, 10, 10), np.uint8), other, "seg"), tmp_path / "other.nrrd")
    write_volume(Volume(case.frames.frames[0].astype(np.float32) + 0.25, case.frames.geometry, "ct"),
                 tmp_path / "image.nrrd")
    for labels, message in ((tmp_path / "other.nrrd", "not on the voxel grid"),
                            (tmp_path / "image.nrrd", "fractional"),
                            (tmp_path / "missing.nrrd", "does not exist")):
        r = modiff("generate", tmp_path / "ct.nrrd", "--frames", 3, "--out", tmp_path / "cine.seq.nrrd",
                   "--labels", labels, "--device", "cpu", "--progress", "none")
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") <= 2, r.stderr
        assert not (tmp_path / "cine.seq.nrrd").exists() and not (tmp_path / "labels.seq.nrrd").exists()
    r = modiff("generate", tmp_path / "ct.nrrd", "--frames", 3, "--out", tmp_path / "cine.seq.nrrd",
               "--labels-out", tmp_path / "l.seq.nrrd")
    assert r.returncode == 2 and "--labels FILE" in r.stderr


# -- Slicer's segmentation files ----------------------------------------------------------------------
def test_a_slicer_segmentation_file_brings_its_segment_names(tmp_path):
    slicer = require_slicer()
    from MoDiffLib.mrml.volumes import set_node_voxels

    grid = Geometry(shape_kji=(6, 7, 8), spacing=(1.0, 1.5, 2.0), origin_ras=(5.0, -3.0, 1.0))
    labels = np.zeros(grid.shape_kji, np.uint8)
    labels[1:3, 1:4, 2:6] = 1
    labels[4:6, 2:5, 1:3] = 2
    with make_scene() as hs:
        node = hs.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lm")
        set_node_voxels(node, labels, grid.ijk_to_ras())
        segmentation = hs.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(node, segmentation)
        for i, name in enumerate(("tumour", "vessel")):
            segmentation.GetSegmentation().GetNthSegment(i).SetName(name)
        storage = slicer.vtkMRMLSegmentationStorageNode()
        hs.scene.AddNode(storage)
        storage.SetFileName(str(tmp_path / "s.seg.nrrd"))
        assert storage.WriteData(segmentation) == 1
    label_map = read_label_map(tmp_path / "s.seg.nrrd")
    assert set(label_map.names.values()) == {"tumour", "vessel"}
    placed = check_label_map(label_map, grid)  # Slicer crops to the segments' extent: placed back exactly
    for value, name in placed.names.items():
        truth = labels == (1 if name == "tumour" else 2)
        np.testing.assert_array_equal(placed.volume.array == value, truth)


def test_overlapping_segments_are_refused_as_file_and_as_node(tmp_path):
    """One voxel carries one label: a segmentation with overlapping segments (two layers) is refused,
    one without overlap comes in with its segments' names."""
    slicer = require_slicer()
    from MoDiffLib.mrml import node_from_volume
    from MoDiffLib.mrml.labels import labels_from_node
    from MoDiffLib.mrml.volumes import set_node_voxels

    grid = Geometry(shape_kji=(6, 7, 8), spacing=(1.0, 1.5, 2.0), origin_ras=(5.0, -3.0, 1.0))
    a = np.zeros(grid.shape_kji, np.uint8)
    a[1:4, 1:4, 1:4] = 1
    b = np.zeros(grid.shape_kji, np.uint8)
    b[2:5, 2:5, 2:5] = 1  # overlaps a
    with make_scene() as hs:
        reference = node_from_volume(hs.scene, Volume(np.zeros(grid.shape_kji, np.int16), grid, "ct"), "ct")
        segmentation = hs.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        for name, mask in (("tumour", a), ("margin", b)):
            node = hs.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
            set_node_voxels(node, mask, grid.ijk_to_ras())
            assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(node, segmentation, name)
        with pytest.raises(InputError, match="overlapping"):
            labels_from_node(segmentation, reference)
        storage = slicer.vtkMRMLSegmentationStorageNode()
        hs.scene.AddNode(storage)
        storage.SetFileName(str(tmp_path / "two.seg.nrrd"))
        assert storage.WriteData(segmentation) == 1
        segmentation.GetSegmentation().RemoveSegment(segmentation.GetSegmentation().GetNthSegmentID(1))
        label_map = labels_from_node(segmentation, reference)
        assert label_map.named() == {1: "tumour"}
        np.testing.assert_array_equal(label_map.volume.array == 1, a == 1)
    with pytest.raises(InputError, match="layers of overlapping segments"):
        read_label_map(tmp_path / "two.seg.nrrd")
