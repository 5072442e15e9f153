"""Files MoDiff writes open in Slicer identically, and files Slicer writes open in MoDiff identically.

Checked against slicer-core: Slicer's own storage nodes (``vtkMRMLVolumeSequenceStorageNode``,
``vtkMRMLVolumeArchetypeStorageNode``) in a headless scene.
"""

import numpy as np
import pytest
from slicer_headless import MODULE_LOGICS, make_scene, require_slicer

from MoDiffLib import Geometry, Volume, VolumeSequence
from MoDiffLib.io import read_sequence, read_volume, write_sequence, write_volume
from MoDiffLib.io.sequence_io import url_decode, url_encode

slicer = require_slicer()
import vtk  # noqa: E402 - the vtk slicer-core pins; only needed once slicer-core is present

SPACING = (0.7, 0.9, 2.5)
ORIGIN_RAS = (-31.5, 18.25, 64.0)
SHAPE = (5, 6, 7)  # (K, J, I)


def oblique_direction() -> np.ndarray:
    a, b = np.deg2rad(15.0), np.deg2rad(35.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return ry @ rx


def geometry() -> Geometry:
    return Geometry(SHAPE, SPACING, ORIGIN_RAS, oblique_direction())


def frames_data(dtype, vector, n=3) -> np.ndarray:
    rng = np.random.default_rng(11)
    shape = (n,) + SHAPE + ((3,) if vector else ())
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-1000, 2000, size=shape).astype(dtype)
    return (rng.normal(size=shape) * 10).astype(dtype)


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def to_vtk_matrix(a: np.ndarray):
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def slicer_volume_node(scene, array: np.ndarray, matrix: np.ndarray):
    """A Slicer volume node holding ``array`` (K, J, I[, 3]) with the given IJK-to-RAS."""
    cls = "vtkMRMLVectorVolumeNode" if array.ndim == 4 else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(to_vtk_matrix(matrix))
    return node


@pytest.fixture
def hs():
    with make_scene() as headless:
        yield headless


# -- the headless helper itself ------------------------------------------------------------------


def test_headless_scene_registers_logics_and_allows_browsers():
    previous = getattr(slicer, "mrmlScene", None)
    with make_scene() as h:
        assert slicer.mrmlScene is h.scene
        for name, class_name in MODULE_LOGICS + (("Colors", "vtkSlicerColorLogic"),):
            logic = h.app_logic.GetModuleLogic(name)
            assert logic is not None and logic.GetClassName() == class_name
            assert logic.GetMRMLScene() is h.scene
        assert h.scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") > 0
        # needs the Sequences logic: a bare scene cannot create a browser node
        sequence = h.scene.AddNewNodeByClass("vtkMRMLSequenceNode")
        volume = slicer.util.addVolumeFromArray(np.zeros(SHAPE, np.int16), name="frame")
        sequence.SetDataNodeAtValue(volume, "0")
        browser = h.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode")
        assert browser is not None
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
        assert browser.GetProxyNode(sequence) is not None
    assert getattr(slicer, "mrmlScene", None) is previous
    assert h.closed and not h.logics


# -- .seq.nrrd both ways ------------------------------------------------------------------------------


def test_index_value_encoding_matches_slicer():
    node = slicer.vtkMRMLScalarVolumeNode()  # URLEncodeString/URLDecodeString are vtkMRMLNode methods
    for text in ["end exhale", "50% 'in'", '<a> "b"', "a&b#c=d/e:f+g", "%2541", "plain"]:
        assert url_encode(text) == node.URLEncodeString(text)
        assert url_decode(node.URLEncodeString(text)) == text
    assert url_decode("%41%2541") == node.URLDecodeString("%41%2541")


@pytest.mark.parametrize("dtype, vector", [(np.int16, False), (np.float32, False), (np.float32, True)])
def test_slicer_reads_our_seq_nrrd_identically(hs, tmp_path, dtype, vector):
    seq = VolumeSequence(
        frames_data(dtype, vector), geometry(), index_name="time", index_unit="s", index_values=["0", "0.3", "0.6"]
    )
    path = write_sequence(seq, tmp_path / "cine.seq.nrrd")

    node = hs.scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    hs.scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    assert node.GetNumberOfDataNodes() == seq.num_frames
    assert (node.GetIndexName(), node.GetIndexUnit(), node.GetIndexTypeAsString()) == ("time", "s", "numeric")
    assert [node.GetNthIndexValue(t) for t in range(seq.num_frames)] == seq.index_values
    for t in range(seq.num_frames):
        frame = node.GetNthDataNode(t)
        assert frame.GetClassName() == ("vtkMRMLVectorVolumeNode" if vector else "vtkMRMLScalarVolumeNode")
        voxels = slicer.util.arrayFromVolume(frame)
        assert voxels.dtype == dtype
        np.testing.assert_array_equal(voxels, seq.frames[t])
        np.testing.assert_allclose(ijk_to_ras(frame), seq.geometry.ijk_to_ras(), atol=1e-5, rtol=0)


def test_slicer_keeps_our_frame_order_for_unsorted_numeric_index(hs, tmp_path):
    """Slicer sorts a numeric index; MoDiff writes such values as text so frames keep their order."""
    frames = np.arange(3, dtype=np.int16)[:, None, None, None] * np.ones((3,) + SHAPE, np.int16)
    seq = VolumeSequence(frames, geometry(), index_values=["2", "1", "5"])
    path = write_sequence(seq, tmp_path / "unsorted.seq.nrrd")
    node = hs.scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    hs.scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    assert [node.GetNthIndexValue(t) for t in range(3)] == ["2", "1", "5"]
    assert [int(slicer.util.arrayFromVolume(node.GetNthDataNode(t))[0, 0, 0]) for t in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("dtype, vector", [(np.int16, False), (np.float32, True)])
def test_we_read_slicer_seq_nrrd_identically(hs, tmp_path, dtype, vector):
    frames = frames_data(dtype, vector)
    index_values = ["end exhale", "mid 50%", "end inhale"]
    node = hs.scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    node.SetIndexName("breathing phase")
    node.SetIndexUnit("")
    node.SetIndexType(node.TextIndex)
    volume = slicer_volume_node(hs.scene, frames[0], geometry().ijk_to_ras())
    for t, value in enumerate(index_values):
        slicer.util.updateVolumeFromArray(volume, frames[t])
        node.SetDataNodeAtValue(volume, value)  # deep copy
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    hs.scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "slicer.seq.nrrd"))
    storage.SetUseCompression(1)
    assert storage.WriteData(node) == 1

    seq = read_sequence(tmp_path / "slicer.seq.nrrd")
    assert seq.num_frames == 3
    assert seq.frames.dtype == dtype
    np.testing.assert_array_equal(seq.frames, frames)
    np.testing.assert_allclose(seq.geometry.ijk_to_ras(), geometry().ijk_to_ras(), atol=1e-5, rtol=0)
    assert (seq.index_name, seq.index_values) == ("breathing phase", index_values)


def test_quotes_and_backslashes_in_the_header_agree_with_slicer_both_ways(hs, tmp_path):
    """pynrrd writes header text as given; MoDiff escapes labels and key/values as teem reads them."""
    name, values = 'phase "ED\\ES\\\\2"', ["a\\b", '"c"', "50% d\\\\"]
    seq = VolumeSequence(frames_data(np.int16, False), geometry(), index_name=name, index_values=values)
    ours = write_sequence(seq, tmp_path / "ours.seq.nrrd", compress=False)
    node = hs.scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    hs.scene.AddNode(storage)
    storage.SetFileName(str(ours))
    assert storage.ReadData(node) == 1
    assert node.GetIndexName() == name
    assert [node.GetNthIndexValue(t) for t in range(3)] == values

    storage.SetFileName(str(tmp_path / "slicer.seq.nrrd"))
    storage.SetUseCompression(0)  # encoding: raw
    assert storage.WriteData(node) == 1
    back = read_sequence(tmp_path / "slicer.seq.nrrd")
    assert (back.index_name, back.index_values) == (name, values)
    np.testing.assert_array_equal(back.frames, seq.frames)


# -- 3D volumes both ways ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_slicer_reads_our_volume_identically(hs, tmp_path, suffix, dtype):
    volume = Volume(frames_data(dtype, False, n=1)[0], geometry(), "ct")
    path = write_volume(volume, tmp_path / f"ct{suffix}")
    node = hs.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    hs.scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    voxels = slicer.util.arrayFromVolume(node)
    assert voxels.dtype == dtype
    np.testing.assert_array_equal(voxels, volume.array)
    np.testing.assert_allclose(ijk_to_ras(node), volume.geometry.ijk_to_ras(), atol=1e-5, rtol=0)


def test_slicer_reads_our_vector_nrrd_identically(hs, tmp_path):
    field = Volume(frames_data(np.float32, True, n=1)[0], geometry(), "field")
    path = write_volume(field, tmp_path / "field.nrrd")
    node = hs.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    hs.scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), field.array)
    np.testing.assert_allclose(ijk_to_ras(node), field.geometry.ijk_to_ras(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_we_read_slicer_volume_identically(hs, tmp_path, suffix):
    array = frames_data(np.int16, False, n=1)[0]
    node = slicer_volume_node(hs.scene, array, geometry().ijk_to_ras())
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    hs.scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / f"slicer{suffix}"))
    assert storage.WriteData(node) == 1
    read = read_volume(tmp_path / f"slicer{suffix}")
    assert read.array.dtype == np.int16
    np.testing.assert_array_equal(read.array, array)
    np.testing.assert_allclose(read.geometry.ijk_to_ras(), geometry().ijk_to_ras(), atol=1e-5, rtol=0)


def test_left_handed_grid_is_the_same_image_in_slicer(hs, tmp_path):
    """Slicer forces a right-handed IJK on reading (it reverses k); every RAS point keeps its value."""
    left = Geometry(SHAPE, SPACING, ORIGIN_RAS, oblique_direction() @ np.diag([1.0, 1.0, -1.0]))
    volume = Volume(frames_data(np.int16, False, n=1)[0], left, "ct")
    path = write_volume(volume, tmp_path / "left.nrrd")
    node = hs.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    hs.scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    voxels = slicer.util.arrayFromVolume(node)
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    ras = np.stack([i, j, k], axis=-1) @ ijk_to_ras(node)[:3, :3].T + ijk_to_ras(node)[:3, 3]
    ours = np.rint(left.ras_to_ijk_points(ras)).astype(int)  # (..., [i, j, k]) in our grid
    np.testing.assert_array_equal(voxels, volume.array[ours[..., 2], ours[..., 1], ours[..., 0]])
    np.testing.assert_array_equal(voxels, volume.array[::-1])  # what Slicer does: k reversed
