"""Scenarios of MoDiff's MRML glue, shared by pytest and by Slicer's self-test.

Each ``scenario_*`` function takes an MRML scene with the Sequences module logic attached
(``slicer.mrmlScene`` inside Slicer; a headless ``slicer-core`` scene under pytest), builds its
own small data, runs the code a user would run and checks the nodes a user would look at.
A failed check raises ``AssertionError`` (explicitly, so it also fails under ``python -O``).

The cine in most scenarios is a synthetic :class:`~MoDiffLib.volume.VolumeSequence` standing
in for model output: the glue does not care where the frames come from. The ``scenario_job_*``
ones run what the module's Apply and Plan buttons run (:mod:`MoDiffLib.mrml.jobs`): the real
``modiff generate`` / ``modiff plan`` as a child process (Slicer's Python inside Slicer).
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
    cine_warnings,
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
    # the generator's warnings (e.g. an input unlike the training data) travel with the cine
    check(cine_warnings(sequence_node) == [], f"a cine without warnings reads {cine_warnings(sequence_node)}")
    warned, _ = build_cine(scene, seq, input_node, dict(PROVENANCE, warnings=["frame 0 is unlike the training inputs"]))
    check(cine_warnings(warned) == ["frame 0 is unlike the training inputs"],
          f"the generator's warning was lost: {cine_warnings(warned)}")


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



# -- puncture planning overlays ------------------------------------------------------------------------
def make_plan_case(frames: int = 6, geometry: Geometry | None = None):
    """A synthetic cine with known motion and a risk structure beside the path: ``(seq, fields, entry, target, risk)``.

    The motion is an affine field (exact under any linear interpolation) that breathes as
    ``sin^2(pi t / frames)``: up to 4 mm superior with some LR/AP shear and expansion. A small
    "vessel" sits 2.5 mm beside the middle of the path on frame 0 and moves with the tissue while
    the entry stays still, so the clearance changes from frame to frame.
    """
    from MoDiffLib.motion import MotionFields
    from MoDiffLib.planning import risk_structures

    g = geometry or oblique_geometry((12, 18, 20))
    volume = make_volume(g)
    seq = make_sequence(volume, frames=frames)
    centres = g.voxel_centers_ras()
    centre = centres.reshape(-1, 3).mean(axis=0)
    shear = np.array([[0.04, 0.0, 0.02], [0.0, 0.05, 0.0], [0.10, 0.03, 0.06]])
    offset = np.array([0.8, -0.6, 4.0])
    breathing = np.sin(np.pi * np.arange(frames) / frames) ** 2
    field = (centres - centre) @ shear.T + offset
    displacements = (breathing[:, None, None, None, None] * field[None]).astype(np.float32)
    fields = MotionFields(displacements, g, {"method": "synthetic"})

    entry = g.ijk_to_ras_points(np.array([2.0, 2.0, 2.0]))
    target = g.ijk_to_ras_points((np.array(g.shape_kji[::-1], dtype=float) - 1.0) * np.array([0.6, 0.55, 0.6]))
    direction = (target - entry) / np.linalg.norm(target - entry)
    side = np.cross(direction, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    vessel_centre = entry + 0.55 * (target - entry) + 2.5 * side
    labels = np.zeros(g.shape_kji, dtype=np.uint8)
    labels[np.linalg.norm(centres - vessel_centre, axis=-1) <= 1.3] = 5
    check(np.count_nonzero(labels) > 0, "the synthetic vessel has no voxels")
    risk = risk_structures(Volume(labels, g, "risk"), g, frames, {5: "vessels"})
    return seq, fields, entry, target, risk


def _plan_with_split_margin(fields, entry, target, risk):
    """A plan whose margin and tolerance split the frames into all three kinds: gating (clear, target near
    its planned position), clear but target too far, and blocked (so the colour checks mean something)."""
    from MoDiffLib.planning import plan_puncture

    probe = plan_puncture(fields, entry, target, risk, margin_mm=0.0, tolerance_mm=100.0)
    clearances = sorted({round(f.min_clearance_mm["vessels"], 3) for f in probe.frames})
    displacements = sorted({round(f.displacement_norm_mm, 3) for f in probe.frames})
    check(len(clearances) >= 3 and len(displacements) >= 3,
          f"the synthetic motion gives too few distinct frames: {clearances}, {displacements}")
    margin = 0.5 * (clearances[1] + clearances[2])
    tolerance = 0.5 * (displacements[-2] + displacements[-1])
    plan = plan_puncture(fields, entry, target, risk, margin_mm=margin, tolerance_mm=tolerance)
    kinds = {("gating" if f.gating else "clear" if f.clear else "blocked") for f in plan.frames}
    check(kinds == {"gating", "clear", "blocked"}, f"the synthetic plan lacks a kind of frame: {kinds}")
    return plan


def _world(node, index: int) -> np.ndarray:
    p = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(index, p)
    return np.array(p)


def _add_plan_cine(scene, frames: int = 6, transform=None):
    seq, fields, entry, target, risk = make_plan_case(frames)
    input_node = add_input(scene, Volume(seq.frames[0], seq.geometry, "CT"))
    if transform is not None:
        input_node.SetAndObserveTransformNodeID(transform.GetID())
    sequence_node, browser = build_cine(scene, seq, input_node, PROVENANCE)
    plan = _plan_with_split_margin(fields, entry, target, risk)
    return sequence_node, browser, plan, fields


def scenario_plan_overlays_follow_the_cine(scene) -> None:
    """Target, path, trajectory, table and motion of a plan are in the scene; stepping the cine's browser
    moves the target to the planned position of that frame and colours the path by its safety."""
    from MoDiffLib.mrml.planning import COLOR_BLOCKED, ROLE_ATTRIBUTE, path_color, select_frame, show_plan, table_values

    _, browser, plan, fields = _add_plan_cine(scene)
    n = plan.num_frames
    nodes = show_plan(scene, plan, browser, fields)
    for role in ("entry", "target", "path", "trajectory", "table", "motion"):
        node = getattr(nodes, role)
        check(node is not None and node.GetScene() is scene, f"no {role} node in the scene")
        check(node.GetAttribute(ROLE_ATTRIBUTE) == role, f"{role} node is not tagged as such")
    check(nodes.motion.IsA("vtkMRMLGridTransformNode"), f"motion proxy is a {nodes.motion.GetClassName()}")
    check(nodes.target.GetTransformNodeID() == nodes.motion.GetID(), "the target does not follow the motion transform")
    check(nodes.entry.GetTransformNodeID() is None, "the entry moves (it must stay still)")
    for sequence in (nodes.motion_sequence, nodes.path_sequence, nodes.path_display_sequence):
        check(browser.IsSynchronizedSequenceNodeID(sequence.GetID()), f"{sequence.GetName()} is not synchronised")
        check(sequence.GetNumberOfDataNodes() == n, f"{sequence.GetName()} has {sequence.GetNumberOfDataNodes()} items")

    track = plan.target_track()
    check(nodes.trajectory.GetNumberOfControlPoints() == n, f"trajectory has {nodes.trajectory.GetNumberOfControlPoints()} points")
    for t in range(n):
        check(np.abs(_world(nodes.trajectory, t) - track[t]).max() < 1e-6, f"trajectory point {t} is not the target of frame {t}")

    violating = [f.index for f in plan.frames if not f.clear]
    safe = [f.index for f in plan.frames if f.clear]
    check(violating and safe, f"the scenario needs safe and violating frames (violating: {violating})")
    entry = np.asarray(plan.entry_ras)
    for t in list(range(n)) + [0, n - 1, 1]:
        browser.SetSelectedItemNumber(t)
        target_world = _world(nodes.target, 0)
        check(np.abs(target_world - track[t]).max() < 1e-3,
              f"frame {t}: target shown at {target_world}, planned at {track[t]}")
        path = browser.GetProxyNode(nodes.path_sequence)
        check(path.GetID() == nodes.path.GetID(), "the path proxy changed identity while browsing")
        check(np.abs(_world(path, 0) - entry).max() < 1e-6, f"frame {t}: the path does not start at the entry")
        check(np.abs(_world(path, 1) - track[t]).max() < 1e-6, f"frame {t}: the path does not end at the target")
        color = tuple(round(c, 6) for c in path.GetDisplayNode().GetSelectedColor())
        expected = tuple(round(c, 6) for c in path_color(plan.frames[t]))
        check(color == expected, f"frame {t}: path colour {color}, expected {expected}")
        check((color == tuple(round(c, 6) for c in COLOR_BLOCKED)) == (t in violating),
              f"frame {t}: the path colour does not say whether the margin is violated")

    columns = table_values(nodes.table)
    check(nodes.table.GetNumberOfRows() == n, f"table has {nodes.table.GetNumberOfRows()} rows, expected {n}")
    check(columns["frame"] == list(range(n)), f"table frames {columns['frame']}")
    for axis, name in enumerate(("target R", "target A", "target S")):
        check(np.allclose(columns[name], track[:, axis], atol=1e-4), f"table column {name} differs from the plan")
    check(np.allclose(columns["path length"], [f.path_length_mm for f in plan.frames], atol=1e-4), "table path lengths differ")
    check(np.allclose(columns["clearance vessels"], [f.min_clearance_mm["vessels"] for f in plan.frames], atol=1e-4),
          "table clearances differ")
    check(columns["clear"] == ["yes" if f.clear else "no" for f in plan.frames], "table clear column differs")

    recommended = plan.recommended_frame
    check(recommended is not None, "the scenario plan has no recommended frame")
    select_frame(browser, recommended)
    check(browser.GetSelectedItemNumber() == recommended, "select_frame did not select the recommended frame")
    check(np.abs(_world(nodes.target, 0) - track[recommended]).max() < 1e-3, "target not at the recommended position")
    expect_error(InputError, select_frame, browser, n)
    expect_error(InputError, select_frame, browser, -1)


def scenario_plan_rerun_replaces(scene) -> None:
    """Planning again for the same cine refills the same nodes (no new nodes) with the new values;
    a cine under a parent transform carries the overlays with it."""
    from MoDiffLib.mrml.planning import find_plan_nodes, show_plan
    from MoDiffLib.planning import plan_puncture

    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "table shift")
    matrix = np.eye(4)
    matrix[:3, 3] = [10.0, -5.0, 2.5]
    shift.SetMatrixTransformToParent(_vtk_matrix(matrix))
    sequence_node, browser, plan, fields = _add_plan_cine(scene, transform=shift)
    first = show_plan(scene, plan, browser, fields)
    count = scene.GetNumberOfNodes()
    ids = {role: node.GetID() for role, node in find_plan_nodes(scene, browser).items()}
    browser.SetSelectedItemNumber(2)
    check(np.abs(_world(first.target, 0) - (plan.target_track()[2] + matrix[:3, 3])).max() < 1e-3,
          "the target does not follow the cine's parent transform")
    from MoDiffLib.mrml.planning import world_to_cine

    check(np.abs(world_to_cine(browser, np.asarray(plan.entry_ras) + matrix[:3, 3]) - plan.entry_ras).max() < 1e-6,
          "a point placed in the views is not brought back to the cine's coordinates")

    moved_target = np.asarray(plan.target_ras) + np.array([0.5, 0.3, -0.4])
    second_plan = plan_puncture(fields, plan.entry_ras, moved_target, None, tolerance_mm=1.0)
    second = show_plan(scene, second_plan, browser, fields)
    check(scene.GetNumberOfNodes() == count, f"re-running added nodes: {count} -> {scene.GetNumberOfNodes()}")
    check({role: node.GetID() for role, node in find_plan_nodes(scene, browser).items()} == ids,
          "re-running did not reuse the plan's nodes")
    check(browser.GetSelectedItemNumber() == 0, "re-running did not show frame 0")
    track = second_plan.target_track()
    for t in range(second_plan.num_frames):
        browser.SetSelectedItemNumber(t)
        check(np.abs(_world(second.target, 0) - (track[t] + matrix[:3, 3])).max() < 1e-3,
              f"frame {t}: the re-planned target is not where the new plan puts it")
        check(np.abs(_world(second.path, 1) - (track[t] + matrix[:3, 3])).max() < 1e-3,
              f"frame {t}: the re-planned path does not end at the new target")
    check(second.table.GetNumberOfRows() == second_plan.num_frames, "table rows not rebuilt")
    check("clearance vessels" not in [second.table.GetColumnName(c) for c in range(second.table.GetNumberOfColumns())],
          "the table keeps a column of the previous plan")

    # switching from grid transforms to translations replaces the motion proxy, still without piling up
    third = show_plan(scene, second_plan, browser, fields, motion="translation")
    check(scene.GetNumberOfNodes() == count, f"switching the motion mode added nodes: {count} -> {scene.GetNumberOfNodes()}")
    check(third.motion.IsA("vtkMRMLLinearTransformNode"), "translation mode did not give linear transforms")
    check(third.target.GetTransformNodeID() == third.motion.GetID(), "the target lost its motion transform")
    check(sum(1 for role in find_plan_nodes(scene, browser) if role == "motion") == 1, "two motion proxies")
    browser.SetSelectedItemNumber(3)
    check(np.abs(_world(third.target, 0) - (track[3] + matrix[:3, 3])).max() < 1e-3,
          "frame 3: the translated target is not at the planned position")
    ids = {role: node.GetID() for role, node in find_plan_nodes(scene, browser).items()}

    # a second cine gets its own plan; the first one is left alone
    _, other_browser, other_plan, other_fields = _add_plan_cine(scene)
    before = scene.GetNumberOfNodes()
    show_plan(scene, other_plan, other_browser, other_fields)
    check(scene.GetNumberOfNodes() > before, "no nodes added for another cine")
    check({role: node.GetID() for role, node in find_plan_nodes(scene, browser).items()} == ids,
          "planning another cine changed the first cine's plan")


def scenario_plan_bad_inputs_leave_scene_unchanged(scene) -> None:
    """A plan for another frame count, fields on another grid or frame count, an unknown motion mode or a
    node that is not a browser: InputError before the scene changes."""
    from MoDiffLib.motion import MotionFields
    from MoDiffLib.mrml.planning import markup_position, select_frame, show_plan

    _, browser, plan, fields = _add_plan_cine(scene, frames=6)
    _, _, short_plan, short_fields = _add_plan_cine(scene, frames=8)
    shifted = fields.geometry.ijk_to_ras()
    shifted[2, 3] += 2.0
    moved_fields = MotionFields(fields.displacements, Geometry.from_ijk_to_ras(fields.geometry.shape_kji, shifted), {})
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "no points")
    count = scene.GetNumberOfNodes()
    ids = sorted(scene.GetNthNode(i).GetID() for i in range(count))
    expect_error(InputError, show_plan, scene, short_plan, browser, fields)
    expect_error(InputError, show_plan, scene, plan, browser, short_fields)
    expect_error(InputError, show_plan, scene, plan, browser, moved_fields)
    expect_error(InputError, show_plan, scene, plan, browser, None, motion="grid")
    expect_error(InputError, show_plan, scene, plan, browser, fields, motion="warp")
    expect_error(InputError, show_plan, scene, plan, browser, fields, grid_step=0)
    expect_error(InputError, show_plan, scene, plan, None, fields)
    expect_error(InputError, show_plan, scene, plan, browser.GetMasterSequenceNode(), fields)
    expect_error(InputError, show_plan, scene, {"frames": []}, browser, fields)
    expect_error(InputError, select_frame, browser, 1.5)
    expect_error(InputError, select_frame, None, 0)
    expect_error(InputError, markup_position, empty, 0, "target")
    expect_error(InputError, markup_position, None, 0, "entry")
    check(scene.GetNumberOfNodes() == count, f"a failed call changed the node count: {count} -> {scene.GetNumberOfNodes()}")
    check(sorted(scene.GetNthNode(i).GetID() for i in range(count)) == ids, "a failed call replaced nodes")


def scenario_bundled_model_end_to_end(scene) -> None:
    """The bundled lung model turns a held-out phantom volume node into a moving cine (small N, few steps).

    Needs torch (the module installs it on first Apply). The phantom is at the model's own
    resolution and 2 sampling steps are used, so this runs in seconds on a CPU.
    """
    from MoDiffLib.datasets import PHANTOM_SEEDS
    from MoDiffLib.phantom import make_phantom
    from MoDiffLib.pipelines import load_pipeline
    from MoDiffLib.registry import default_model

    default = default_model("lung").name
    pipeline = load_pipeline(None, kind="lung")  # checksums verified
    check(pipeline.source == default, f"the default lung model is {pipeline.source}, not {default}")
    case = make_phantom("lung", num_frames=3, seed=PHANTOM_SEEDS["test"].start, shape_ijk=(64, 64, 32))
    input_node = add_input(scene, case.frames.frame(0), name="phantom")
    volume = volume_from_node(input_node)
    result = pipeline.generate(volume, 3, steps=2, seed=0, device="cpu", amplitude=25.0)
    sequence_node, _ = build_cine(scene, result.sequence, input_node, result.provenance)
    check(sequence_node.GetNumberOfDataNodes() == 3, "the cine has 3 frames")
    frames = [_array(sequence_node.GetNthDataNode(t)) for t in range(3)]
    check(np.array_equal(frames[0], volume.array), "frame 0 is the input, voxel for voxel")
    moved = np.abs(frames[1].astype(np.float32) - frames[0]) > 50.0  # HU
    check(0.001 < moved.mean() < 0.3, f"frame 1 moves part of the anatomy, not nothing or everything ({moved.mean():.4f})")
    check(sequence_node.GetAttribute("MoDiff.Model") == default, "the provenance names the model")
    check(sequence_node.GetAttribute("MoDiff.Transfer") == "warp", "the provenance names the motion transfer")



# -- labels through time --------------------------------------------------------------------------
def _moving_labels(geometry: Geometry, frames: int) -> np.ndarray:
    """Two structures: a block moving one voxel along i per frame, and a still one (value 7)."""
    out = np.zeros((frames, *geometry.shape_kji), dtype=np.uint8)
    for t in range(frames):
        out[t, 1:4, 1:4, t:t + 3] = 2
        out[t, 3:5, 4:6, 5:7] = 7
    return out


def _label_input(scene, input_node, array: np.ndarray, names: dict[int, str]):
    """A label map node of ``array`` on the input's grid with a colour table naming its labels."""
    from MoDiffLib.mrml.volumes import set_node_voxels

    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "structures")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(max(names) + 1)
    for v in range(max(names) + 1):
        colors.SetColor(v, names.get(v, ""), 0.1 * (v % 10), 0.5, 1.0 - 0.1 * (v % 10), 1.0 if v in names else 0.0)
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "structures")
    set_node_voxels(node, array, ijk_to_ras_of(input_node))
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    return node


def scenario_labels_follow_the_cine(scene) -> None:
    """Labels of every frame become a segmentation sequence in the cine's browser: stepping the cine
    shows that frame's labels in the proxy segmentation (same segment IDs, names and colours in
    every frame), and the table and plot hold each segment's volume per frame; a re-run refills
    the same nodes."""
    from MoDiffLib.labelmap import label_volumes_ml
    from MoDiffLib.mrml.labels import (find_label_nodes, labels_from_node, segment_id, segment_mask, show_labels,
                                       table_volumes)

    frames = 4
    input_node = add_input(scene, make_volume(oblique_geometry((6, 7, 9))))
    volume = volume_from_node(input_node)
    moving = _moving_labels(volume.geometry, frames)
    label_node = _label_input(scene, input_node, moving[0], {2: "nodule", 7: "rib"})
    label_map = labels_from_node(label_node, input_node)
    check(label_map.named() == {2: "nodule", 7: "rib"}, f"label names {label_map.named()}")
    labels = VolumeSequence(moving, volume.geometry, name="labels", index_name="frame")
    sequence_node, browser = build_cine(scene, make_sequence(volume, frames), input_node, PROVENANCE)
    nodes = show_labels(scene, browser, labels, label_map)
    check(browser.IsSynchronizedSequenceNodeID(nodes.sequence.GetID()), "the labels are not synchronised with the cine")
    check(nodes.sequence.GetNumberOfDataNodes() == frames, f"{nodes.sequence.GetNumberOfDataNodes()} label frames")
    for t in [1, 3, 0, 2]:
        browser.SetSelectedItemNumber(t)
        proxy = browser.GetProxyNode(nodes.sequence)
        check(proxy is not None and proxy.IsA("vtkMRMLSegmentationNode"), "the labels' proxy is not a segmentation")
        segmentation = proxy.GetSegmentation()
        for value, name in ((2, "nodule"), (7, "rib")):
            segment = segmentation.GetSegment(segment_id(value))
            check(segment is not None and segment.GetName() == name, f"frame {t} lacks segment {name}")
            mask = segment_mask(proxy, segment_id(value), input_node)
            check(np.array_equal(mask, moving[t] == value), f"frame {t}: segment {name} is not that frame's labels")
    volumes = table_volumes(nodes.table)
    expected = label_volumes_ml(labels, [2, 7])
    check(sorted(volumes) == ["nodule", "rib"], f"table columns {sorted(volumes)}")
    check(np.allclose(volumes["nodule"], expected[2]) and np.allclose(volumes["rib"], expected[7]),
          "the volume table is not the labels' volumes")
    check(nodes.chart.GetNumberOfPlotSeriesNodes() == 2, "the plot has not one curve per segment")
    count = scene.GetNumberOfNodes()
    again = show_labels(scene, browser, labels, label_map)
    check(again.sequence.GetID() == nodes.sequence.GetID() and scene.GetNumberOfNodes() == count,
          "showing the labels again added nodes instead of refilling them")
    check(set(find_label_nodes(scene, browser)) == {"sequence", "table", "chart", "series:2", "series:7"},
          f"label nodes {sorted(find_label_nodes(scene, browser))}")


def scenario_labels_bad_inputs(scene) -> None:
    """Labels that cannot belong to the input fail with one sentence before the scene changes."""
    from MoDiffLib.mrml.labels import labels_from_node, show_labels

    input_node = add_input(scene, make_volume(oblique_geometry((6, 7, 9))))
    volume = volume_from_node(input_node)
    expect_error(InputError, labels_from_node, None, input_node)
    empty = _label_input(scene, input_node, np.zeros(volume.geometry.shape_kji, np.uint8), {1: "x"})
    expect_error(InputError, labels_from_node, empty, input_node)
    # a crop on the input's lattice (Slicer crops segmentations to their extent) is placed voxel for voxel
    crop = add_input(scene, make_volume(oblique_geometry((6, 7, 8))), name="crop")
    cropped = labels_from_node(_label_input(scene, crop, np.ones((6, 7, 8), np.uint8), {1: "x"}), input_node)
    check(cropped.volume.array[:, :, :8].all() and not cropped.volume.array[:, :, 8:].any(), "a crop was misplaced")
    # labels beyond the input, or on another lattice, are refused
    larger = add_input(scene, make_volume(oblique_geometry((6, 7, 12))), name="larger")
    expect_error(InputError, labels_from_node, _label_input(scene, larger, np.ones((6, 7, 12), np.uint8), {1: "x"}),
                 input_node)
    shifted = make_volume(oblique_geometry((6, 7, 9)))
    matrix = shifted.geometry.ijk_to_ras()
    matrix[:3, 3] += 0.5 * matrix[:3, 0]  # half a voxel along i
    half = add_input(scene, Volume(shifted.array, Geometry.from_ijk_to_ras((6, 7, 9), matrix), "half"), name="half")
    expect_error(InputError, labels_from_node, _label_input(scene, half, np.ones((6, 7, 9), np.uint8), {1: "x"}),
                 input_node)
    moving = _moving_labels(volume.geometry, 3)
    label_map = labels_from_node(_label_input(scene, input_node, moving[0], {2: "a", 7: "b"}), input_node)
    _, browser = build_cine(scene, make_sequence(volume, 4), input_node, PROVENANCE)
    count = scene.GetNumberOfNodes()
    expect_error(InputError, show_labels, scene, browser,
                 VolumeSequence(moving, volume.geometry, name="labels"), label_map)  # 3 frames for a 4-frame cine
    check(scene.GetNumberOfNodes() == count, "a refused label sequence changed the scene")



# -- background jobs (what Apply and Plan puncture run) ------------------------------------------------
#: Seconds a job scenario waits for its child process (a model load and a few steps on a busy CPU).
JOB_TIMEOUT_S = 300.0


def _node_ids(scene) -> list[str]:
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def _wait(job, on_poll=None) -> None:
    """Poll ``job`` as the panel's timer does until it is over (``on_poll()`` after each poll)."""
    import time

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not job.poll():
        if on_poll is not None:
            on_poll()
        check(time.monotonic() < deadline, f"the {job.what} job still runs after {JOB_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def phantom_input(scene):
    """A held-out lung phantom at the bundled lung model's resolution, as a volume node."""
    from MoDiffLib.datasets import PHANTOM_SEEDS
    from MoDiffLib.phantom import make_phantom

    case = make_phantom("lung", num_frames=3, seed=PHANTOM_SEEDS["test"].start, shape_ijk=(64, 64, 32))
    return add_input(scene, case.frames.frame(0), name="phantom")


def _point_list(scene, name: str, point=None):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    if point is not None:
        node.AddControlPoint(*[float(c) for c in point])
    return node


def scenario_job_bad_requests_start_nothing(scene) -> None:
    """Bad generate and plan requests fail with InputError before any file is written or process started."""
    from MoDiffLib.frame_limits import frame_range
    from MoDiffLib.mrml.jobs import generate_job, plan_job
    from MoDiffLib.mrml.requests import generate_request, plan_request
    from MoDiffLib.registry import default_model

    model = default_model().name
    low, high = frame_range(model)
    input_node = add_input(scene)
    label_map = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    seq, _fields, entry, target, _risk = make_plan_case(4)
    cine_input = add_input(scene, Volume(seq.frames[0], seq.geometry, "CT"), name="cine input")
    cine_node, _browser = build_cine(scene, seq, cine_input, {})
    no_points, entry_node = _point_list(scene, "Entry"), _point_list(scene, "Entry", entry)
    same_point, target_node = _point_list(scene, "Target", entry), _point_list(scene, "Target", target)
    outside = _point_list(scene, "Target", np.asarray(target) + 500.0)
    ids = _node_ids(scene)
    with tempfile.TemporaryDirectory(prefix="modiff-jobs-") as root:
        generate_cases = {
            "no volume": {"volume_node": None}, "a label map": {"volume_node": label_map},
            "too few frames": {"frames": low - 1}, "more frames than the model makes": {"frames": high + 1},
            "a fractional frame count": {"frames": 2.5}, "no sampling steps": {"steps": 0},
            "a negative seed": {"seed": -1}, "an unknown device": {"device": "tpu"},
            "a negative amplitude": {"amplitude": -1.0}, "an unknown model": {"model": "no-such-model"},
            "a missing model folder": {"model": os.path.join(root, "no", "model")},
            "an output that is no sequence": {"output_sequence": input_node},
        }
        messages = {}
        for what, change in generate_cases.items():
            arguments = dict({"volume_node": input_node, "frames": low, "model": model}, **change)
            messages[what] = str(expect_error(InputError, lambda: generate_job(generate_request(**arguments), root)))
        check(f"between {low} and {high}" in messages["more frames than the model makes"],
              f"the frame-count error does not name the model's range: {messages['more frames than the model makes']}")
        check("no-such-model" in messages["an unknown model"], messages["an unknown model"])
        plan_cases = {
            "no cine": (None, entry_node, target_node, {}),
            "a volume instead of a cine": (cine_input, entry_node, target_node, {}),
            "no entry placed": (cine_node, no_points, target_node, {}),
            "entry and target at one point": (cine_node, entry_node, same_point, {}),
            "a target outside the cine": (cine_node, entry_node, outside, {}),
            "a negative margin": (cine_node, entry_node, target_node, {"margin_mm": -1.0}),
            "a risk map without voxels": (cine_node, entry_node, target_node, {"risk_node": label_map}),
        }
        for what, (cine, entry_list, target_list, options) in plan_cases.items():
            expect_error(InputError, lambda: plan_job(plan_request(cine, entry_list, target_list, **options), root))
        check(os.listdir(root) == [], f"a refused request wrote files: {os.listdir(root)}")
    check(_node_ids(scene) == ids, "a refused request changed the scene")


def _generate(scene, root: str, events: list):
    from MoDiffLib.mrml.jobs import generate_job
    from MoDiffLib.mrml.requests import generate_request
    from MoDiffLib.registry import default_model

    input_node = phantom_input(scene)
    model = default_model("lung").name
    job = generate_job(generate_request(input_node, 3, model=model, steps=2, seed=0, device="cpu"), root)
    return input_node, model, job.start(on_event=events.append)


def scenario_job_generate_adds_the_cine(scene) -> None:
    """Apply's job: the bundled lung model runs as ``modiff generate``; the scene changes only when the
    job finishes, then holds the cine on the input's grid with the provenance; nothing is left on disk.

    Needs torch in the child's Python (the module installs it on first Apply).
    """
    from MoDiffLib.mrml import find_cine

    with tempfile.TemporaryDirectory(prefix="modiff-jobs-") as root:
        events: list = []
        input_node, model, job = _generate(scene, root, events)
        ids = _node_ids(scene)
        _wait(job, lambda: check(_node_ids(scene) == ids, "the scene changed while the generator ran"))
        sequence_node = job.finish()
        check(os.listdir(root) == [], f"the job left files behind: {os.listdir(root)}")
    found = find_cine(scene, input_node)
    check(found is not None and found.GetID() == sequence_node.GetID(), "the cine is not the one found for its input")
    check(sequence_node.GetNumberOfDataNodes() == 3, f"{sequence_node.GetNumberOfDataNodes()} frames, expected 3")
    first = sequence_node.GetNthDataNode(0)
    check(np.array_equal(_array(first), volume_from_node(input_node).array), "frame 0 is not the input, voxel for voxel")
    check(np.abs(ijk_to_ras_of(first) - ijk_to_ras_of(input_node)).max() < 1e-6, "the cine is not on the input's grid")
    for name, value in (("MoDiff.Model", model), ("MoDiff.Device", "cpu"), ("MoDiff.Seed", "0")):
        check(sequence_node.GetAttribute(name) == value, f"{name} = {sequence_node.GetAttribute(name)!r}, expected {value!r}")
    fractions = [e["fraction"] for e in events if e.get("event") == "progress"]
    check(fractions and all(b >= a for a, b in zip(fractions, fractions[1:])), f"progress went back: {fractions}")
    check(job.notices == [], f"a CPU run has notices: {job.notices}")


def scenario_job_generate_carries_labels(scene) -> None:
    """Apply with labels: ``modiff generate --labels`` carries the phantom's frame-0 labels through the
    generated motion; the lungs of every frame lie on the phantom's true lungs (the bundled lung
    model's motion is close to the truth there) and the plot has their volume per frame."""
    from MoDiffLib.datasets import PHANTOM_SEEDS
    from MoDiffLib.mrml.jobs import generate_job
    from MoDiffLib.mrml import find_browser
    from MoDiffLib.mrml.labels import segment_id, segment_mask
    from MoDiffLib.mrml.requests import generate_request
    from MoDiffLib.phantom import make_phantom
    from MoDiffLib.registry import default_model

    case = make_phantom("lung", num_frames=3, seed=PHANTOM_SEEDS["test"].start, shape_ijk=(64, 64, 32))
    input_node = add_input(scene, case.frames.frame(0), name="phantom")
    names = {v: n for v, n in case.label_names.items() if v in np.unique(case.labels.frames[0])}
    label_node = _label_input(scene, input_node, case.labels.frames[0], names)
    with tempfile.TemporaryDirectory(prefix="modiff-jobs-") as root:
        request = generate_request(input_node, 3, model=default_model("lung").name, seed=0, device="cpu",
                                   labels_node=label_node)
        job = generate_job(request, root).start()
        _wait(job)
        sequence_node = job.finish()
        check(os.listdir(root) == [], f"the job left files behind: {os.listdir(root)}")
    nodes = job.loaded.get("labels")
    check(nodes is not None, "the job loaded no labels")
    browser = find_browser(scene, sequence_node)
    lungs = [v for v, n in names.items() if n.startswith("lung")]
    for t in range(3):
        browser.SetSelectedItemNumber(t)
        proxy = browser.GetProxyNode(nodes.sequence)
        for v in lungs:
            mask = segment_mask(proxy, segment_id(v), input_node)
            truth = case.labels.frames[t] == v
            dice = 2.0 * np.count_nonzero(mask & truth) / max(1, np.count_nonzero(mask) + np.count_nonzero(truth))
            check(dice > 0.95, f"frame {t}: {names[v]} Dice {dice:.3f} against the phantom's true labels")
    check(nodes.chart.GetNumberOfPlotSeriesNodes() == len(names), "the plot has not one curve per structure")


def _trace_table(scene, values, with_time: bool = False):
    """A table node holding a breathing trace (diaphragm S in mm per frame), as a user would type it."""
    import vtk

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "breathing trace")
    columns = ([("time_s", [0.5 * t for t in range(len(values))])] if with_time else []) + [("diaphragm_s_mm", values)]
    for name, data in columns:
        column = vtk.vtkStringArray()  # the Tables module's default column type
        column.SetName(name)
        for v in data:
            column.InsertNextValue(f"{v:g}")
        table.AddColumn(column)
    return table


def scenario_job_generate_follows_a_trace_table(scene) -> None:
    """Apply with a breathing-trace table: ``modiff generate --trace`` follows it (the cine's provenance
    holds the descent of every frame); a table of the wrong length or a latent model is refused
    before anything runs."""
    import json

    from MoDiffLib.mrml.jobs import generate_job
    from MoDiffLib.mrml.requests import generate_request
    from MoDiffLib.registry import default_model

    input_node = phantom_input(scene)
    model = default_model("lung").name
    trace = _trace_table(scene, [0.0, -12.0, -4.0])  # 12 mm of descent at frame 1
    expect_error(InputError, generate_request, input_node, 4, model=model, trace_node=trace)  # 3 values, 4 frames
    expect_error(InputError, generate_request, input_node, 3, model="modiff-lung-phantom", trace_node=trace)
    with tempfile.TemporaryDirectory(prefix="modiff-jobs-") as root:
        job = generate_job(generate_request(input_node, 3, model=model, seed=0, device="cpu", trace_node=trace), root)
        check("--trace" in job.command, f"the trace is not passed to the generator: {job.command}")
        job.start()
        _wait(job)
        sequence_node = job.finish()
    recorded = json.loads(sequence_node.GetAttribute("MoDiff.Trace") or "null")
    check(recorded is not None and np.allclose(recorded, [0.0, 12.0, 4.0], atol=1e-3),
          f"the cine did not follow the trace: MoDiff.Trace = {recorded}")


def _frame_node(volume: Volume):
    """A scalar volume node of ``volume`` outside any scene (as a sequence item is)."""
    import slicer
    from MoDiffLib.mrml.volumes import set_node_voxels

    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(volume.name)
    set_node_voxels(node, volume.array, volume.geometry.ijk_to_ras())
    return node


def _known_sequence(scene, items: dict, name: str = "known frames", numeric: bool = True):
    """A sequence node holding ``items`` (index value -> Volume), as a user builds "a Sequence with gaps"
    (a text index keeps values such as ``2`` and ``2.0`` apart; a numeric one merges them)."""
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("frame")
    sequence.SetIndexType(sequence.NumericIndex if numeric else sequence.TextIndex)
    for value, volume in items.items():
        sequence.SetDataNodeAtValue(_frame_node(volume), str(value))
    return sequence


def _lung_case(frames: int):
    from MoDiffLib.datasets import PHANTOM_SEEDS
    from MoDiffLib.phantom import make_phantom

    return make_phantom("lung", num_frames=frames, seed=PHANTOM_SEEDS["test"].start, shape_ijk=(64, 64, 32))


def _run_generate(request, root: str):
    from MoDiffLib.mrml.jobs import generate_job

    job = generate_job(request, root)
    job.start()
    _wait(job)
    sequence_node = job.finish()
    check(os.listdir(root) == [], f"the job left files behind: {os.listdir(root)}")
    return job, sequence_node


def scenario_job_generate_passes_through_known_frames(scene) -> None:
    """Apply with known frames (a sequence with gaps: items at 0, 3 and 6 of 8 frames): ``modiff generate
    --known`` keeps frames 3 and 6 voxel for voxel, the item at 0 is the input's own frame and is left
    out, and the frames between are generated (they are neither the input nor a known frame)."""
    import json

    from MoDiffLib.mrml.requests import generate_request
    from MoDiffLib.registry import default_model

    case = _lung_case(8)
    frames = {t: case.frames.frame(t) for t in (0, 3, 6)}
    input_node = add_input(scene, frames[0], name="phantom")
    known = _known_sequence(scene, frames)
    with tempfile.TemporaryDirectory(prefix="modiff-jobs-") as root:
        request = generate_request(input_node, 8, model=default_model("lung").name, seed=0, device="cpu",
                                   known_sequence_node=known)
        check(sorted(request.known) == [3, 6], f"the request holds frames {sorted(request.known)}, expected [3, 6]")
        job, sequence_node = _run_generate(request, root)
    check("--known" in job.command, f"the known frames are not passed to the generator: {job.command}")
    check(sequence_node.GetNumberOfDataNodes() == 8, f"{sequence_node.GetNumberOfDataNodes()} frames, expected 8")
    cine = [_array(sequence_node.GetNthDataNode(t)) for t in range(8)]
    check(np.array_equal(cine[0], frames[0].array), "frame 0 is not the input, voxel for voxel")
    for t in (3, 6):
        check(cine[t].dtype == frames[t].array.dtype and np.array_equal(cine[t], frames[t].array),
              f"frame {t} is not the known frame, voxel for voxel (max difference "
              f"{np.abs(cine[t].astype(float) - frames[t].array).max():g})")
    for t in (1, 2, 4, 5, 7):
        check(not any(np.array_equal(cine[t], frames[k].array) for k in frames), f"frame {t} is a copy of a given frame")
    given = json.loads(sequence_node.GetAttribute("MoDiff.GivenFrames") or "null")
    check(given is not None and given.get("mode") == "partial" and given.get("given_frames") == [3, 6],
          f"the cine does not record the partial mode: MoDiff.GivenFrames = {given}")


def scenario_job_generate_ends_at_the_end_frame(scene) -> None:
    """Apply with an end frame: ``modiff generate --end`` makes it the cine's last frame, voxel for voxel,
    and the frames before it are generated."""
    import json

    from MoDiffLib.mrml.requests import generate_request
    from MoDiffLib.registry import default_model

    case = _lung_case(8)
    input_node = add_input(scene, case.frames.frame(0), name="phantom")
    end = case.frames.frame(4)  # half way through the phantom's 8-frame cycle
    end_node = add_input(scene, end, name="end-inhale")
    with tempfile.TemporaryDirectory(prefix="modiff-jobs-") as root:
        request = generate_request(input_node, 5, model=default_model("lung").name, seed=0, device="cpu",
                                   end_node=end_node)
        job, sequence_node = _run_generate(request, root)
    check("--end" in job.command, f"the end frame is not passed to the generator: {job.command}")
    check(sequence_node.GetNumberOfDataNodes() == 5, f"{sequence_node.GetNumberOfDataNodes()} frames, expected 5")
    last = _array(sequence_node.GetNthDataNode(4))
    check(np.array_equal(last, end.array), "the last frame is not the end frame, voxel for voxel")
    for t in (1, 2, 3):
        frame = _array(sequence_node.GetNthDataNode(t))
        check(not np.array_equal(frame, end.array) and not np.array_equal(frame, case.frames.frames[0]),
              f"frame {t} is a copy of the input or of the end frame")
    given = json.loads(sequence_node.GetAttribute("MoDiff.GivenFrames") or "null")
    check(given is not None and given.get("mode") == "two-frame" and given.get("given_frames") == [4],
          f"the cine does not record the two-frame mode: MoDiff.GivenFrames = {given}")


def scenario_known_frames_bad_inputs(scene) -> None:
    """Known frames and end frames the panel refuses before anything runs, each with one line that says
    what is wrong: a fractional or out-of-range index value, a frame given twice, a frame on another
    grid, an empty sequence, both modes at once, an end frame with a breathing trace, a latent model."""
    from MoDiffLib.mrml.jobs import generate_job
    from MoDiffLib.mrml.requests import generate_request
    from MoDiffLib.registry import default_model

    model = default_model("lung").name
    input_node = add_input(scene)
    volume = volume_from_node(input_node)
    other = make_volume(oblique_geometry((5, 6, 8)), name="other grid")
    end_node = add_input(scene, make_sequence(volume, 2).frame(1), name="end")
    trace = _trace_table(scene, [0.0, -12.0, -4.0, -2.0])
    cases = {
        "a fractional index": ({"known_sequence_node": _known_sequence(scene, {2.5: volume})}, ["'2.5'", "whole number"]),
        "an index out of range": ({"known_sequence_node": _known_sequence(scene, {4: volume})}, ["frame 4", "1 to 3", "4 frames"]),
        "an index given twice": ({"known_sequence_node": _known_sequence(scene, {2: volume, "2.0": volume}, numeric=False)},
                                 ["frame 2 twice"]),
        "a text index": ({"known_sequence_node": _known_sequence(scene, {"inhale": volume}, numeric=False)},
                         ["'inhale'", "whole number"]),
        "a frame on another grid": ({"known_sequence_node": _known_sequence(scene, {2: other})}, ["known frame 2", "grid"]),
        "an empty sequence": ({"known_sequence_node": _known_sequence(scene, {})}, ["no frame besides frame 0"]),
        "only frame 0": ({"known_sequence_node": _known_sequence(scene, {0: volume})}, ["no frame besides frame 0"]),
        "both modes": ({"known_sequence_node": _known_sequence(scene, {2: volume}), "end_node": end_node}, ["not both"]),
        "an end frame on another grid": ({"end_node": add_input(scene, other, name="other end")}, ["end frame", "frame 3", "grid"]),
        "an end frame with a trace": ({"end_node": end_node, "trace_node": trace}, ["trace", "end frame"]),
        "a label map as the end frame": ({"end_node": scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lm")}, ["end frame", "label map"]),
        "known frames with a latent model": ({"known_sequence_node": _known_sequence(scene, {2: volume}),
                                              "model": "modiff-lung-phantom"}, ["known frames", "motion model"]),
    }
    ids = _node_ids(scene)
    with tempfile.TemporaryDirectory(prefix="modiff-jobs-") as root:
        for what, (options, words) in cases.items():
            options = {"model": model, **options}
            error = expect_error(InputError, lambda: generate_job(generate_request(input_node, 4, **options), root))
            message = str(error)
            check("\n" not in message, f"{what}: the message is not one line: {message!r}")
            for word in words:
                check(word in message, f"{what}: {word!r} is not in the message {message!r}")
        check(os.listdir(root) == [], f"a refused request wrote files: {os.listdir(root)}")
    check(_node_ids(scene) == ids, "a refused request changed the scene")


def scenario_job_generate_cancel_leaves_scene_unchanged(scene) -> None:
    """Cancel (the Apply button while it runs) stops ``modiff generate``: finishing raises Cancelled, the
    scene is as it was before the run and the job's folder is gone."""
    import time

    from MoDiffLib.errors import Cancelled

    with tempfile.TemporaryDirectory(prefix="modiff-jobs-") as root:
        events: list = []
        _input_node, _model, job = _generate(scene, root, events)
        ids = _node_ids(scene)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not events:  # cancel once the child is working, as a user would
            check(not job.poll(), "the generation ended before it reported any progress")
            check(time.monotonic() < deadline, "the generation reported no progress")
            time.sleep(0.05)
        job.cancel()
        expect_error(Cancelled, job.finish)
        check(os.listdir(root) == [], f"a cancelled job left files behind: {os.listdir(root)}")
    check(_node_ids(scene) == ids, "a cancelled generation changed the scene")


def scenario_job_plan_shows_the_plan(scene) -> None:
    """Plan puncture's job: ``modiff plan`` estimates the cine's motion in a child process; its plan
    becomes overlays for the cine, with the points and risk structure names the panel gave."""
    import slicer
    from MoDiffLib.mrml.jobs import plan_job
    from MoDiffLib.mrml.planning import find_plan_nodes, table_values
    from MoDiffLib.mrml.requests import plan_request
    from MoDiffLib.mrml.volumes import set_node_voxels

    seq, _fields, entry, target, risk = make_plan_case(4)
    input_node = add_input(scene, Volume(seq.frames[0], seq.geometry, "CT"))
    cine_node, browser = build_cine(scene, seq, input_node, {})
    risk_node = slicer.vtkMRMLLabelMapVolumeNode()
    set_node_voxels(risk_node, risk.labels, seq.geometry.ijk_to_ras())
    scene.AddNode(risk_node)
    risk_node.CreateDefaultDisplayNodes()
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "risk colours")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(6)
    colors.SetColor(5, "vessels", 1.0, 0.0, 0.0, 1.0)
    risk_node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    entry_node, target_node = _point_list(scene, "Entry", entry), _point_list(scene, "Target", target)
    request = plan_request(cine_node, entry_node, target_node, risk_node, margin_mm=1.0, tolerance_mm=2.0)
    with tempfile.TemporaryDirectory(prefix="modiff-jobs-") as root:
        events: list = []
        job = plan_job(request, root).start(on_event=events.append)
        ids = _node_ids(scene)
        _wait(job, lambda: check(_node_ids(scene) == ids, "the scene changed while the planning ran"))
        nodes, plan = job.finish()
        check(os.listdir(root) == [], f"the job left files behind: {os.listdir(root)}")
    check(plan.num_frames == 4, f"the plan has {plan.num_frames} frames, expected 4")
    check(np.abs(np.asarray(plan.entry_ras) - entry).max() < 1e-6 and np.abs(np.asarray(plan.target_ras) - target).max() < 1e-6,
          "the plan is not for the points placed")
    check(list(plan.structures) == ["vessels"], f"the risk structures are {list(plan.structures)}, expected ['vessels']")
    check(set(find_plan_nodes(scene, browser)) >= {"entry", "target", "path", "table", "motion"},
          f"plan nodes missing: {sorted(find_plan_nodes(scene, browser))}")
    check(nodes.table.GetNumberOfRows() == 4, f"the table has {nodes.table.GetNumberOfRows()} rows")
    check(table_values(nodes.table)["frame"] == [0, 1, 2, 3], "the table does not list the cine's frames")
    track = plan.target_track()
    for t in range(4):
        browser.SetSelectedItemNumber(t)
        check(np.abs(_world(nodes.target, 0) - track[t]).max() < 1e-3, f"frame {t}: the target is not where the plan puts it")
    check(events and events[-1].get("event") == "done", "the planning did not report that it was done")


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
    scenario_plan_overlays_follow_the_cine,
    scenario_plan_rerun_replaces,
    scenario_plan_bad_inputs_leave_scene_unchanged,
    scenario_labels_follow_the_cine,
    scenario_labels_bad_inputs,
    scenario_bundled_model_end_to_end,
    scenario_job_bad_requests_start_nothing,
    scenario_job_generate_adds_the_cine,
    scenario_job_generate_carries_labels,
    scenario_job_generate_follows_a_trace_table,
    scenario_job_generate_passes_through_known_frames,
    scenario_job_generate_ends_at_the_end_frame,
    scenario_known_frames_bad_inputs,
    scenario_job_generate_cancel_leaves_scene_unchanged,
    scenario_job_plan_shows_the_plan,
]
