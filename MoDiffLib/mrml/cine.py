"""A generated :class:`~MoDiffLib.volume.VolumeSequence` as a cine in Slicer's Sequences module.

A cine is three nodes: a ``vtkMRMLSequenceNode`` holding one scalar volume per frame (index
name ``"frame"``, numeric index values ``0 .. N-1``, no unit: the values are frame numbers, not
seconds), a ``vtkMRMLSequenceBrowserNode`` that plays it (looped, :data:`DEFAULT_PLAYBACK_FPS`),
and the browser's proxy volume node, which shows the selected frame in the views.

Provenance (model, steps, seed, device, ...) is stored as node attributes named
``MoDiff.<Key>`` on the sequence node, so a saved scene records how the cine was made.
``MoDiff.InputVolumeID`` (on the sequence and the browser) ties a cine to its input; running
again for the same input reuses these nodes instead of adding new ones.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import slicer

from ..atomic import split_suffix
from ..errors import InputError
from ..volume import Geometry, VolumeSequence
from .volumes import _array_of, check_volume_node, ijk_to_ras_of, set_node_voxels, write_with_storage_node

#: Prefix of every node attribute MoDiff sets.
ATTRIBUTE_PREFIX = "MoDiff."
#: Attribute holding the ID of the input volume a cine was generated from.
INPUT_ID_ATTRIBUTE = ATTRIBUTE_PREFIX + "InputVolumeID"
#: Attribute holding the frame count (always set from the sequence itself).
FRAMES_ATTRIBUTE = ATTRIBUTE_PREFIX + "NumberOfFrames"
#: Name and unit of the sequence index: frame numbers, no physical unit.
INDEX_NAME = "frame"
INDEX_UNIT = ""
#: Playback rate of a new cine (frames per second); a breathing cycle of 10 frames takes 2 s.
DEFAULT_PLAYBACK_FPS = 5.0
#: Largest difference (mm, per matrix entry) tolerated between the cine's and the input's geometry.
GEOMETRY_TOLERANCE_MM = 1e-3
#: File endings :func:`save_cine` writes (single-file NRRD, so the rename is atomic).
CINE_SUFFIXES = (".seq.nrrd", ".nrrd")

#: Provenance keys with a name that does not follow from CamelCasing the key.
_KEY_ALIASES = {
    "frames": "NumberOfFrames",
    "num_frames": "NumberOfFrames",
    "number_of_frames": "NumberOfFrames",
    "elapsed_s": "ElapsedSeconds",
    "elapsed": "ElapsedSeconds",
    "input_volume_id": "InputVolumeID",
}


# -- provenance ---------------------------------------------------------------------------------
def _attribute_key(key: str) -> str:
    key = str(key)
    if key.startswith(ATTRIBUTE_PREFIX):
        key = key[len(ATTRIBUTE_PREFIX):]
    if key in _KEY_ALIASES:
        return _KEY_ALIASES[key]
    parts = [p for p in re.split(r"[_\s\-]+", key) if p]
    if not parts:
        raise InputError(f"provenance key {key!r} is empty")
    return "".join(p[:1].upper() + p[1:] for p in parts)


def _attribute_value(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return json.dumps(value, sort_keys=True, default=str)


def provenance_attributes(provenance: Mapping) -> dict[str, str]:
    """Node attributes for a provenance dictionary.

    Keys become ``MoDiff.<CamelCase>`` (``model_version`` -> ``MoDiff.ModelVersion``, ``steps`` ->
    ``MoDiff.Steps``; keys already in CamelCase are kept); values become strings (numbers as
    Python writes them, booleans as ``true``/``false``, lists and dicts as JSON). ``None`` values
    are left out.
    """
    if not isinstance(provenance, Mapping):
        raise InputError(f"provenance must be a dictionary, got {type(provenance).__name__}")
    attributes = {}
    for key, value in provenance.items():
        if value is None:
            continue
        attributes[ATTRIBUTE_PREFIX + _attribute_key(key)] = _attribute_value(value)
    return attributes


def cine_warnings(sequence_node) -> list[str]:
    """The warnings the generator recorded on a cine (``MoDiff.Warnings``; e.g. an input unlike the
    model's training data), an empty list when there are none or they cannot be read."""
    text = sequence_node.GetAttribute(ATTRIBUTE_PREFIX + "Warnings") if sequence_node is not None else None
    try:
        values = json.loads(text) if text else []
    except ValueError:
        return [text]
    return [str(v) for v in values] if isinstance(values, list) else [str(values)]


def _clear_modiff_attributes(node) -> None:
    for name in list(node.GetAttributeNames() or ()):
        if name.startswith(ATTRIBUTE_PREFIX):
            node.RemoveAttribute(name)


# -- finding existing results ---------------------------------------------------------------------
def _nodes_of_class(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def find_cine(scene, input_node):
    """The sequence node of the latest cine generated from ``input_node``, or ``None``."""
    if input_node is None or input_node.GetID() is None:
        return None
    matches = [
        n for n in _nodes_of_class(scene, "vtkMRMLSequenceNode") if n.GetAttribute(INPUT_ID_ATTRIBUTE) == input_node.GetID()
    ]
    return matches[-1] if matches else None


def find_browser(scene, sequence_node):
    """The first sequence browser whose master sequence is ``sequence_node``, or ``None``."""
    for browser in _nodes_of_class(scene, "vtkMRMLSequenceBrowserNode"):
        master = browser.GetMasterSequenceNode()
        if master is not None and master.GetID() == sequence_node.GetID():
            return browser
    return None


# -- building -----------------------------------------------------------------------------------
def _check_sequence_for_input(seq: VolumeSequence, input_node, shape_kji: tuple[int, int, int]) -> np.ndarray:
    """Check that ``seq`` is a scalar cine on the input's grid; return the input's IJK-to-RAS."""
    if not isinstance(seq, VolumeSequence):
        raise InputError(f"expected a VolumeSequence, got {type(seq).__name__}")
    if seq.frames.ndim != 4:
        raise InputError(f"{seq.name} holds vector frames; a cine needs scalar frames")
    ijk_to_ras = ijk_to_ras_of(input_node)
    input_geometry = Geometry.from_ijk_to_ras(shape_kji, ijk_to_ras)
    if seq.geometry.shape_kji != shape_kji:
        raise InputError(
            f"{seq.name} has frames of {seq.geometry.describe()} but the input volume is "
            f"{input_geometry.describe()}; the cine must be on the input's voxel grid"
        )
    if not seq.geometry.is_close(input_geometry, atol_mm=GEOMETRY_TOLERANCE_MM):
        difference = np.abs(seq.geometry.ijk_to_ras() - ijk_to_ras).max()
        raise InputError(
            f"{seq.name} is not positioned like the input volume (IJK-to-RAS matrices differ by up to "
            f"{difference:.4g} mm); the cine must be on the input's voxel grid"
        )
    return ijk_to_ras


def _fill_sequence(sequence_node, seq: VolumeSequence, ijk_to_ras: np.ndarray) -> None:
    """Replace the sequence's items by the frames of ``seq`` (frame numbers as index values)."""
    was_modifying = sequence_node.StartModify()
    try:
        sequence_node.RemoveAllDataNodes()
        sequence_node.SetIndexName(INDEX_NAME)
        sequence_node.SetIndexUnit(INDEX_UNIT)
        sequence_node.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
        for t in range(seq.num_frames):
            frame = slicer.vtkMRMLScalarVolumeNode()
            frame.SetName(f"{sequence_node.GetName()} frame {t}")
            # Shallow here: SetDataNodeAtValue deep-copies the node into the sequence.
            set_node_voxels(frame, seq.frames[t], ijk_to_ras, deep=False)
            sequence_node.SetDataNodeAtValue(frame, str(t))
    finally:
        sequence_node.EndModify(was_modifying)


def _match_display(proxy, input_node) -> None:
    """Show every frame with the input's window/level (no per-frame auto window: no flicker)."""
    source = input_node.GetDisplayNode()
    target = proxy.GetDisplayNode()
    if source is None or target is None:
        return
    if not (source.IsA("vtkMRMLScalarVolumeDisplayNode") and target.IsA("vtkMRMLScalarVolumeDisplayNode")):
        return
    target.SetAutoWindowLevel(False)
    target.SetWindowLevel(source.GetWindow(), source.GetLevel())
    if source.GetColorNodeID():
        target.SetAndObserveColorNodeID(source.GetColorNodeID())


def build_cine(scene, seq: VolumeSequence, input_node, provenance: Mapping, output_sequence=None):
    """Show ``seq`` as a cine of ``input_node`` in ``scene``; return ``(sequenceNode, browserNode)``.

    Every frame becomes a scalar volume with the input's exact IJK-to-RAS matrix; the browser
    plays looped at :data:`DEFAULT_PLAYBACK_FPS` with frame 0 selected; the proxy volume follows
    the input's parent transform and window/level. Provenance becomes ``MoDiff.*`` attributes of
    the sequence node (plus ``MoDiff.NumberOfFrames`` and ``MoDiff.InputVolumeID``).

    Re-running replaces the previous result: the frames go into ``output_sequence`` if given,
    else into the cine already generated from this input (found by ``MoDiff.InputVolumeID``),
    and its browser and proxy are reused, so the scene holds one cine per input.

    Everything is checked before the scene is touched: on error the scene is unchanged.

    Raises:
        InputError: bad input node, a sequence not on the input's grid, bad provenance, or an
            ``output_sequence`` that is not a sequence node of ``scene``.
    """
    shape = check_volume_node(input_node)
    ijk_to_ras = _check_sequence_for_input(seq, input_node, shape)
    attributes = provenance_attributes(provenance)
    if output_sequence is not None and (
        not hasattr(output_sequence, "IsA") or not output_sequence.IsA("vtkMRMLSequenceNode")
    ):
        raise InputError(f"the output must be a sequence node, got {type(output_sequence).__name__}")
    if output_sequence is not None and output_sequence.GetScene() is not scene:
        raise InputError(f"output sequence '{output_sequence.GetName()}' is not in this scene")
    if input_node.GetScene() is not scene:
        raise InputError(f"input volume '{input_node.GetName()}' is not in this scene")

    if not scene.IsNodeClassRegistered("vtkMRMLSequenceBrowserNode"):
        raise RuntimeError(
            "this scene has no sequence browser nodes: the Sequences module logic is not attached to it"
        )

    input_id = input_node.GetID()
    sequence_node = output_sequence if output_sequence is not None else find_cine(scene, input_node)
    if sequence_node is None:
        sequence_node = scene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{input_node.GetName()} MoDiff")

    _fill_sequence(sequence_node, seq, ijk_to_ras)
    _clear_modiff_attributes(sequence_node)
    for name, value in attributes.items():
        sequence_node.SetAttribute(name, value)
    sequence_node.SetAttribute(FRAMES_ATTRIBUTE, str(seq.num_frames))
    sequence_node.SetAttribute(INPUT_ID_ATTRIBUTE, input_id)

    browser = find_browser(scene, sequence_node)
    if browser is None:
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{sequence_node.GetName()} browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence_node.GetID())
    browser.SetAttribute(INPUT_ID_ATTRIBUTE, input_id)
    browser.SetPlaybackActive(False)
    browser.SetPlaybackRateFps(DEFAULT_PLAYBACK_FPS)
    browser.SetPlaybackLooped(True)
    browser.SetSelectedItemNumber(0)

    proxy = browser.GetProxyNode(sequence_node)
    if proxy is None:
        raise RuntimeError(
            "the sequence browser created no proxy volume: the Sequences module logic is not attached to this scene"
        )
    proxy.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    _match_display(proxy, input_node)
    return sequence_node, browser


# -- reading back ---------------------------------------------------------------------------------
def sequence_from_node(sequence_node) -> VolumeSequence:
    """The frames of a volume sequence node as a :class:`VolumeSequence` (voxels copied).

    Raises:
        InputError: not a sequence node, no frames, frames that are not scalar volumes, or
            frames on different grids.
    """
    if sequence_node is None or not hasattr(sequence_node, "IsA") or not sequence_node.IsA("vtkMRMLSequenceNode"):
        raise InputError(f"expected a sequence node, got {type(sequence_node).__name__}")
    count = sequence_node.GetNumberOfDataNodes()
    if count == 0:
        raise InputError(f"sequence '{sequence_node.GetName()}' has no frames")
    frames, geometry = [], None
    for t in range(count):
        node = sequence_node.GetNthDataNode(t)
        shape = check_volume_node(node, what=f"frame {t} of sequence '{sequence_node.GetName()}'")
        g = Geometry.from_ijk_to_ras(shape, ijk_to_ras_of(node))
        if geometry is None:
            geometry = g
        elif not g.is_close(geometry, atol_mm=GEOMETRY_TOLERANCE_MM):
            raise InputError(
                f"frame {t} of sequence '{sequence_node.GetName()}' ({g.describe()}) is not on the grid of frame 0 "
                f"({geometry.describe()})"
            )
        frames.append(_array_of(node))
    return VolumeSequence(
        np.stack(frames),
        geometry,
        name=sequence_node.GetName() or "sequence",
        index_name=sequence_node.GetIndexName() or "",
        index_unit=sequence_node.GetIndexUnit() or "",
        index_values=[sequence_node.GetNthIndexValue(t) for t in range(count)],
    )


# -- saving ---------------------------------------------------------------------------------------
def save_cine(sequence_node, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a volume sequence to one 4D ``.seq.nrrd`` file with Slicer's volume sequence writer.

    The file appears only when complete (written under a temporary name, then renamed). The
    scene is not changed (no storage node is added).

    Raises:
        InputError: not a volume sequence with frames, or an unsupported file ending.
        OutputError: the file exists (without ``overwrite``), or writing failed.
    """
    if sequence_node is None or not hasattr(sequence_node, "IsA") or not sequence_node.IsA("vtkMRMLSequenceNode"):
        raise InputError(f"expected a sequence node, got {type(sequence_node).__name__}")
    if sequence_node.GetNumberOfDataNodes() == 0:
        raise InputError(f"sequence '{sequence_node.GetName()}' has no frames to save")
    for t in range(sequence_node.GetNumberOfDataNodes()):
        check_volume_node(sequence_node.GetNthDataNode(t), what=f"frame {t} of sequence '{sequence_node.GetName()}'")
    suffix = split_suffix(path)[1].lower()
    if suffix not in CINE_SUFFIXES:
        raise InputError(f"a cine is saved as .seq.nrrd, got '{Path(path).name}'")
    return write_with_storage_node(slicer.vtkMRMLVolumeSequenceStorageNode(), sequence_node, path, overwrite,
                                   f"sequence '{sequence_node.GetName()}'")


# -- showing --------------------------------------------------------------------------------------
def show_in_slice_views(browser_node) -> bool:
    """In the Slicer application: show the cine's proxy in the slice views and the browser toolbar.

    Without a GUI (``slicer-core``, or Slicer started without a main window) nothing is done.

    Returns:
        True if the views were updated.
    """
    app = getattr(slicer, "app", None)
    if app is None or browser_node is None:
        return False
    layout_manager = app.layoutManager() if hasattr(app, "layoutManager") else None
    if layout_manager is None:
        return False
    proxy = browser_node.GetProxyNode(browser_node.GetMasterSequenceNode())
    if proxy is None:
        return False
    slicer.util.setSliceViewerLayers(background=proxy, fit=True)
    sequences = getattr(getattr(slicer, "modules", None), "sequences", None)
    if sequences is not None:
        sequences.setToolBarActiveBrowserNode(browser_node)
        sequences.showSequenceBrowser(browser_node)
    return True
