"""Scenarios of MoDiff's MRML glue, shared by pytest and by Slicer's self-test.

Each ``scenario_*`` function takes an MRML scene with the Sequences module logic attached
(``slicer.mrmlScene`` inside Slicer; a headless ``slicer-core`` scene under pytest), builds its
own small data, runs the code a user would run and checks the nodes a user would look at.
A failed check raises ``AssertionError`` (explicitly, so it also fails under ``python -O``).

The cine in these scenarios is a synthetic :class:`~MoDiffLib.volume.VolumeSequence` standing
in for model output: the glue does not care where the frames come from.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from MoDiffLib.errors import InputError, OutputError
from MoDiffLib.mrml import (
    DEFAULT_PLAYBACK_FPS,
    INPUT_ID_ATTRIBUTE,
    build_cine,
    ijk_to_ras_of,
    node_from_volume,
    save_cine,
    sequence_from_node,
    show_in_slice_views,
    volume_from_node,
)
from MoDiffLib.volume import Geometry, Volume, VolumeSequence

#: A provenance dictionary shaped like the one ``modiff generate`` reports.
PROVENANCE = {
    "model": "lung-tiny",
    "model_version": "0.1.0",
    "frames": 4,
    "steps": 8,
    "seed": 1234,
    "device": "cpu",
    "amplitude": 12.5,
    "elapsed_seconds": 3.25,
}


def check(condition, message: str) -> None:
    """Assert that survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


def expect_error(error_type, function, *args, **kwargs):
    """Call ``function`` and check that it raises ``error_type``; return the exception."""
    try:
        function(*args, **kwargs)
    except error_type as exc:
        return exc
    raise AssertionError(f"{getattr(function, '__name__', function)} did not raise {error_type.__name__}")


# -- test data ------------------------------------------------------------------------------------
def oblique_geometry(shape_kji=(5, 6, 7), left_handed: bool = False) -> Geometry:
    """An oblique (rotated about two axes), anisotropic, off-centre grid."""
    a, b = np.deg2rad(25.0), np.deg2rad(-10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    direction = rz @ rx
    if left_handed:
        direction[:, 2] *= -1.0
    return Geometry(shape_kji, spacing=(0.8, 1.1, 2.5), origin_ras=(-31.5, 12.25, 47.0), direction_ras=direction)


def make_volume(geometry: Geometry | None = None, dtype=np.int16, name: str = "CT") -> Volume:
    """A volume whose voxels all differ (so any axis swap or flip shows)."""
    g = geometry or oblique_geometry()
    values = np.arange(int(np.prod(g.shape_kji))).reshape(g.shape_kji) - 50
    return Volume(values.astype(dtype), g, name)


def make_sequence(volume: Volume, frames: int = 4, offset: float = 100.0) -> VolumeSequence:
    """``frames`` frames on the volume's grid: frame t = volume + t * offset (frame 0 = the input)."""
    stack = np.stack([volume.array + volume.array.dtype.type(t * offset) for t in range(frames)])
    return VolumeSequence(stack, volume.geometry, name=f"{volume.name} cine")


def add_input(scene, volume: Volume | None = None, name: str = "CT"):
    """An input volume node in ``scene`` (an oblique, anisotropic int16 volume by default)."""
    return node_from_volume(scene, volume or make_volume(name=name), name)


def _array(node) -> np.ndarray:
    from MoDiffLib.mrml.volumes import _array_of

    return _array_of(node)


# -- scenarios --------------------------------------------------------------------------------------
def scenario_volume_round_trip(scene) -> None:
    """Volume -> node -> Volume keeps voxels, scalar type and the exact IJK-to-RAS matrix."""
    for dtype in (np.int16, np.float32, np.uint8):
        volume = make_volume(dtype=dtype, name=f"input {np.dtype(dtype).name}")
        node = node_from_volume(scene, volume, volume.name)
        check(node.GetScene() is not None and node.GetDisplayNode() is not None, "node has no display node")
        check(np.abs(ijk_to_ras_of(node) - volume.geometry.ijk_to_ras()).max() < 1e-9, "IJK-to-RAS changed")
        back = volume_from_node(node)
        check(back.array.dtype == np.dtype(dtype), f"scalar type {back.array.dtype} != {np.dtype(dtype)}")
        check(np.array_equal(back.array, volume.array), "voxels changed on the round trip")
        check(back.geometry.is_close(volume.geometry, atol_mm=1e-9), "geometry changed on the round trip")
        check(back.name == volume.name, "name not kept")
        # The returned voxels are a copy: changing them leaves the node untouched.
        back.array[0, 0, 0] += 1
        check(_array(node)[0, 0, 0] == volume.array[0, 0, 0], "volume_from_node returned a view of the node's memory")


def scenario_cine_geometry(scene) -> None:
    """A volume node becomes a sequence of N frames with the input's geometry and frame numbers as index."""
    input_node = add_input(scene)
    volume = volume_from_node(input_node)
    seq = make_sequence(volume, frames=4)
    sequence_node, browser = build_cine(scene, seq, input_node, PROVENANCE)
    check(sequence_node.GetNumberOfDataNodes() == 4, f"{sequence_node.GetNumberOfDataNodes()} frames, expected 4")
    check(sequence_node.GetIndexName() == "frame", f"index name {sequence_node.GetIndexName()!r}")
    check(sequence_node.GetIndexUnit() == "", f"index unit {sequence_node.GetIndexUnit()!r}")
    check(sequence_node.GetIndexType() == sequence_node.NumericIndex, "index type is not numeric")
    values = [sequence_node.GetNthIndexValue(t) for t in range(4)]
    check(values == ["0", "1", "2", "3"], f"index values {values}")
    input_matrix = ijk_to_ras_of(input_node)
    for t in range(4):
        frame = sequence_node.GetNthDataNode(t)
        check(frame.GetClassName() == "vtkMRMLScalarVolumeNode", f"frame {t} is a {frame.GetClassName()}")
        check(np.abs(ijk_to_ras_of(frame) - input_matrix).max() < 1e-9, f"frame {t} IJK-to-RAS differs from the input's")
        check(np.array_equal(_array(frame), seq.frames[t]), f"frame {t} voxels differ")
        check(_array(frame).dtype == seq.frames.dtype, f"frame {t} scalar type changed")
    back = sequence_from_node(sequence_node)
    check(back.num_frames == 4 and back.index_name == "frame", "sequence_from_node lost frames or index")
    check(np.array_equal(back.frames, seq.frames), "sequence_from_node voxels differ")
    check(back.geometry.is_close(volume.geometry, atol_mm=1e-9), "sequence_from_node geometry differs")
    check(browser.GetMasterSequenceNode().GetID() == sequence_node.GetID(), "browser does not play the sequence")
    check(not show_in_slice_views(None), "show_in_slice_views(None) claimed to show something")


def scenario_browser_steps_frames(scene) -> None:
    """The browser loops at the default rate from frame 0; stepping it updates the proxy volume's voxels."""
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "table shift")
    input_node = add_input(scene)
    input_node.SetAndObserveTransformNodeID(transform.GetID())
    input_display = input_node.GetDisplayNode()
    input_display.SetAutoWindowLevel(False)
    input_display.SetWindowLevel(400.0, 40.0)
    seq = make_sequence(volume_from_node(input_node), frames=4)
    sequence_node, browser = build_cine(scene, seq, input_node, PROVENANCE)
    check(browser.GetPlaybackLooped(), "playback is not looped")
    check(abs(browser.GetPlaybackRateFps() - DEFAULT_PLAYBACK_FPS) < 1e-9, f"{browser.GetPlaybackRateFps()} fps")
    check(browser.GetSelectedItemNumber() == 0, f"selected item {browser.GetSelectedItemNumber()}, expected 0")
    check(browser.GetNumberOfItems() == 4, f"browser has {browser.GetNumberOfItems()} items")
    proxy = browser.GetProxyNode(sequence_node)
    check(proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode"), "no scalar volume proxy node")
    check(proxy.GetTransformNodeID() == transform.GetID(), "proxy does not follow the input's parent transform")
    check(np.abs(ijk_to_ras_of(proxy) - ijk_to_ras_of(input_node)).max() < 1e-9, "proxy geometry differs from input")
    proxy_display = proxy.GetDisplayNode()
    check(proxy_display is not None and not proxy_display.GetAutoWindowLevel(), "proxy window/level is automatic")
    check(abs(proxy_display.GetWindow() - 400.0) < 1e-6 and abs(proxy_display.GetLevel() - 40.0) < 1e-6,
          "proxy does not use the input's window/level")
    for t in [1, 2, 3, 0, 3]:
        browser.SetSelectedItemNumber(t)
        check(np.array_equal(_array(proxy), seq.frames[t]), f"proxy voxels are not frame {t}")
        check(proxy.GetTransformNodeID() == transform.GetID(), "proxy lost its transform while browsing")
    # Step past the last item: looped playback wraps around to frame 0.
    browser.SetSelectedItemNumber(3)
    browser.SelectNextItem()
    check(browser.GetSelectedItemNumber() == 0, "stepping past the last frame does not loop to frame 0")
    check(np.array_equal(_array(proxy), seq.frames[0]), "proxy voxels are not frame 0 after looping")


def scenario_provenance_attributes(scene) -> None:
    """Provenance, frame count and input ID are attributes of the sequence node."""
    input_node = add_input(scene)
    seq = make_sequence(volume_from_node(input_node), frames=4)
    sequence_node, browser = build_cine(scene, seq, input_node, dict(PROVENANCE, frames=99, note=None))
    expected = {
        "MoDiff.Model": "lung-tiny",
        "MoDiff.ModelVersion": "0.1.0",
        "MoDiff.NumberOfFrames": "4",  # from the sequence, not from the (wrong) provenance value
        "MoDiff.Steps": "8",
        "MoDiff.Seed": "1234",
        "MoDiff.Device": "cpu",
        "MoDiff.Amplitude": "12.5",
        "MoDiff.ElapsedSeconds": "3.25",
        "MoDiff.InputVolumeID": input_node.GetID(),
    }
    for name, value in expected.items():
        check(sequence_node.GetAttribute(name) == value, f"{name} = {sequence_node.GetAttribute(name)!r}, expected {value!r}")
    check(sequence_node.GetAttribute("MoDiff.Note") is None, "a None provenance value became an attribute")
    check(browser.GetAttribute(INPUT_ID_ATTRIBUTE) == input_node.GetID(), "browser does not name its input")


def scenario_rerun_replaces(scene) -> None:
    """Generating again for the same input replaces the cine: same nodes, new frames, new provenance."""
    input_node = add_input(scene)
    volume = volume_from_node(input_node)
    first_seq, first_browser = build_cine(scene, make_sequence(volume, frames=4), input_node, PROVENANCE)
    first_proxy = first_browser.GetProxyNode(first_seq)
    first_browser.SetSelectedItemNumber(2)
    count = scene.GetNumberOfNodes()
    ids = (first_seq.GetID(), first_browser.GetID(), first_proxy.GetID())

    second = make_sequence(volume, frames=6, offset=7.0)
    seq_node, browser = build_cine(scene, second, input_node, {"model": "heart-tiny", "steps": 4})
    check(scene.GetNumberOfNodes() == count, f"re-run added nodes: {count} -> {scene.GetNumberOfNodes()}")
    proxy = browser.GetProxyNode(seq_node)
    check((seq_node.GetID(), browser.GetID(), proxy.GetID()) == ids, "re-run did not reuse sequence, browser and proxy")
    check(seq_node.GetNumberOfDataNodes() == 6, "re-run did not replace the frames")
    check(browser.GetSelectedItemNumber() == 0, "re-run did not go back to frame 0")
    check(np.array_equal(_array(proxy), second.frames[0]), "proxy shows an old frame after the re-run")
    check(np.array_equal(_array(seq_node.GetNthDataNode(5)), second.frames[5]), "last frame not replaced")
    check(seq_node.GetAttribute("MoDiff.Model") == "heart-tiny", "provenance not replaced")
    check(seq_node.GetAttribute("MoDiff.Seed") is None, "stale provenance from the first run remains")
    check(seq_node.GetAttribute("MoDiff.NumberOfFrames") == "6", "frame count attribute not updated")

    # A second input gets its own cine; the first input's cine is left alone.
    other = add_input(scene, name="CT 2")
    before = scene.GetNumberOfNodes()
    other_seq, _ = build_cine(scene, make_sequence(volume_from_node(other), frames=2), other, PROVENANCE)
    check(other_seq.GetID() != seq_node.GetID(), "a different input overwrote the first cine")
    check(scene.GetNumberOfNodes() > before, "no nodes added for a new input")
    check(seq_node.GetNumberOfDataNodes() == 6, "first cine changed by the second input")

    # An explicitly chosen output sequence is filled, and re-using it adds nothing either.
    chosen = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "my cine")
    out_seq, out_browser = build_cine(scene, make_sequence(volume, frames=3), input_node, PROVENANCE, output_sequence=chosen)
    check(out_seq.GetID() == chosen.GetID() and out_seq.GetNumberOfDataNodes() == 3, "output sequence not filled")
    count = scene.GetNumberOfNodes()
    build_cine(scene, make_sequence(volume, frames=5), input_node, PROVENANCE, output_sequence=chosen)
    check(scene.GetNumberOfNodes() == count, "re-using the output sequence added nodes")
    check(chosen.GetNumberOfDataNodes() == 5, "output sequence not replaced")
    check(out_browser.GetProxyNode(chosen) is not None, "output sequence browser lost its proxy")


def _read_with_slicer(scene, path: Path):
    """Read a .seq.nrrd as Slicer does when loading it: storage node + sequence node in the scene."""
    import slicer

    sequence_node = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "reloaded")
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    check(storage.ReadData(sequence_node), f"Slicer could not read {path}")
    return sequence_node


def scenario_save_and_reload(scene, folder: str | os.PathLike | None = None) -> None:
    """The saved .seq.nrrd is read back by Slicer's storage node with identical voxels, geometry and index."""
    with tempfile.TemporaryDirectory(prefix="modiff-mrml-") as tmp:
        folder = Path(folder or tmp)
        input_node = add_input(scene)
        seq = make_sequence(volume_from_node(input_node), frames=4)
        sequence_node, _ = build_cine(scene, seq, input_node, PROVENANCE)
        count = scene.GetNumberOfNodes()
        path = save_cine(sequence_node, folder / "cine.seq.nrrd")
        check(path.is_file(), "no file written")
        check(scene.GetNumberOfNodes() == count, "saving added nodes to the scene")
        check([p.name for p in folder.iterdir()] == ["cine.seq.nrrd"], f"left-over files: {list(folder.iterdir())}")
        expect_error(OutputError, save_cine, sequence_node, path)  # exists, no overwrite
        save_cine(sequence_node, path, overwrite=True)
        expect_error(InputError, save_cine, sequence_node, folder / "cine.mha")

        reloaded = _read_with_slicer(scene, path)
        check(reloaded.GetNumberOfDataNodes() == 4, f"{reloaded.GetNumberOfDataNodes()} frames read back")
        check(reloaded.GetIndexName() == "frame", f"index name read back as {reloaded.GetIndexName()!r}")
        check(reloaded.GetIndexUnit() == "", f"index unit read back as {reloaded.GetIndexUnit()!r}")
        values = [reloaded.GetNthIndexValue(t) for t in range(4)]
        check(values == ["0", "1", "2", "3"], f"index values read back as {values}")
        for t in range(4):
            frame = reloaded.GetNthDataNode(t)
            check(np.array_equal(_array(frame), seq.frames[t]), f"frame {t} voxels differ after reload")
            check(_array(frame).dtype == seq.frames.dtype, f"frame {t} scalar type changed on disk")
            check(np.abs(ijk_to_ras_of(frame) - ijk_to_ras_of(input_node)).max() < 1e-6, f"frame {t} geometry changed")


def scenario_left_handed_reload_same_anatomy(scene, folder: str | os.PathLike | None = None) -> None:
    """A left-handed input (k axis mirrored) is read back by Slicer as right-handed: k reversed, origin
    moved to the far slice, so every voxel keeps its RAS position and value (same anatomy, other order).
    """
    with tempfile.TemporaryDirectory(prefix="modiff-mrml-") as tmp:
        folder = Path(folder or tmp)
        geometry = oblique_geometry(left_handed=True)
        input_node = add_input(scene, make_volume(geometry))
        seq = make_sequence(volume_from_node(input_node), frames=2)
        sequence_node, _ = build_cine(scene, seq, input_node, PROVENANCE)
        reloaded = sequence_from_node(_read_with_slicer(scene, save_cine(sequence_node, folder / "lh.seq.nrrd")))
        g = reloaded.geometry
        check(np.linalg.det(g.direction) > 0, "Slicer kept a left-handed grid")
        # Each reloaded voxel centre maps to an integer voxel of the original grid with the same value.
        centres = g.voxel_centers_ras().reshape(-1, 3)
        ijk = np.rint(geometry.ras_to_ijk_points(centres)).astype(int)
        check(np.abs(geometry.ijk_to_ras_points(ijk) - centres).max() < 1e-6, "reloaded grid is not the same voxel lattice")
        for t in range(2):
            original = seq.frames[t][ijk[:, 2], ijk[:, 1], ijk[:, 0]]
            check(np.array_equal(reloaded.frames[t].reshape(-1), original), f"frame {t}: voxels moved in RAS")


def scenario_bad_inputs_leave_scene_unchanged(scene) -> None:
    """No volume, a single slice, a label map, a vector volume or a mismatched cine: InputError, scene unchanged."""
    import slicer
    from MoDiffLib.mrml.volumes import set_node_voxels

    good = add_input(scene)
    volume = volume_from_node(good)
    seq = make_sequence(volume, frames=3)

    single_slice = node_from_volume(scene, make_volume(oblique_geometry((1, 6, 7))), "one slice")
    label_map = slicer.vtkMRMLLabelMapVolumeNode()
    label_map.SetName("labels")
    set_node_voxels(label_map, (volume.array > 0).astype(np.uint8), volume.geometry.ijk_to_ras())
    scene.AddNode(label_map)
    vector = slicer.vtkMRMLVectorVolumeNode()
    vector.SetName("rgb")
    vector.SetIJKToRASMatrix(_vtk_matrix(volume.geometry.ijk_to_ras()))
    vector.SetAndObserveImageData(_vector_image(volume.geometry.shape_kji))
    scene.AddNode(vector)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no voxels")
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "a model")
    existing_seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "unrelated sequence")

    count = scene.GetNumberOfNodes()
    ids = sorted(scene.GetNthNode(i).GetID() for i in range(count))
    messages = {}
    for label, node in [("none", None), ("single slice", single_slice), ("label map", label_map),
                        ("vector", vector), ("empty", empty), ("model", model)]:
        messages[label] = str(expect_error(InputError, volume_from_node, node))
        expect_error(InputError, build_cine, scene, seq, node, PROVENANCE)
    check("no input volume" in messages["none"], messages["none"])
    check("single slice" in messages["single slice"], messages["single slice"])
    check("label map" in messages["label map"], messages["label map"])
    check("vector" in messages["vector"], messages["vector"])

    shifted_matrix = volume.geometry.ijk_to_ras()
    shifted_matrix[0, 3] += 1.0  # 1 mm to the right
    shifted = Geometry.from_ijk_to_ras(volume.geometry.shape_kji, shifted_matrix)
    cropped = volume.array[:, :, :-1]
    wrong_shape = Volume(cropped, Geometry(cropped.shape, volume.geometry.spacing, volume.geometry.origin_ras,
                                           volume.geometry.direction_ras))
    for label, bad_seq in [("shifted by 1 mm", VolumeSequence(seq.frames, shifted)),
                           ("other shape", make_sequence(wrong_shape, frames=3)),
                           ("vector frames", VolumeSequence(np.zeros(seq.frames.shape + (3,), np.float32), seq.geometry)),
                           ("not a sequence", seq.frames)]:
        expect_error(InputError, build_cine, scene, bad_seq, good, PROVENANCE)
    expect_error(InputError, build_cine, scene, seq, good, "model=x")  # provenance must be a dict
    expect_error(InputError, build_cine, scene, seq, good, PROVENANCE, output_sequence=good)
    expect_error(InputError, node_from_volume, scene, Volume(np.zeros(volume.array.shape + (3,)), volume.geometry), "v")

    check(scene.GetNumberOfNodes() == count, f"a failed call changed the node count: {count} -> {scene.GetNumberOfNodes()}")
    check(sorted(scene.GetNthNode(i).GetID() for i in range(count)) == ids, "a failed call replaced nodes")
    check(existing_seq.GetNumberOfDataNodes() == 0, "a failed call filled a sequence")
    check(good.GetAttribute(INPUT_ID_ATTRIBUTE) is None, "a failed call tagged the input")


def _vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _vector_image(shape_kji):
    import vtk
    from vtkmodules.util import numpy_support

    image = vtk.vtkImageData()
    image.SetDimensions(shape_kji[2], shape_kji[1], shape_kji[0])
    rgb = np.zeros((int(np.prod(shape_kji)), 3), dtype=np.uint8)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(rgb, deep=True))
    return image


#: Every scenario, in the order the Slicer self-test runs them.
SCENARIOS = [
    scenario_volume_round_trip,
    scenario_cine_geometry,
    scenario_browser_steps_frames,
    scenario_provenance_attributes,
    scenario_rerun_replaces,
    scenario_save_and_reload,
    scenario_left_handed_reload_same_anatomy,
    scenario_bad_inputs_leave_scene_unchanged,
]
