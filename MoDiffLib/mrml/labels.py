"""Labels through time in a Slicer scene: a frame-0 label map or segmentation in, a segmentation
sequence that plays with the cine out, and the volume of every segment per frame as a plot.

* :func:`labels_from_node` -- a label map volume node (names from its colour table) or a
  segmentation node (exported on the input volume's grid, names and colours of its segments) as
  a :class:`~MoDiffLib.labelmap.LabelMap` checked against the input.
* :func:`show_labels` -- the labels of every frame (:func:`MoDiffLib.motion.transfer.carry_labels`,
  ``modiff generate --labels``) as a sequence of segmentation nodes synchronised in the cine's
  browser, so the proxy segmentation shows the current frame's labels while the cine plays;
  every frame holds the same segments (same IDs, names and colours; a segment's ID is
  ``label_<value>``), so display settings a user changes survive playback. Beside it a table of
  the volume (mL) of each segment per frame and a plot chart of those curves.

Every node gets the attributes ``MoDiff.LabelsRole`` and ``MoDiff.LabelsBrowserID``; running
again for the same browser refills the same nodes. The segmentation proxy goes under the cine
proxy's parent transform, as the cine itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import slicer
import vtk

from ..errors import InputError
from ..labelmap import LabelMap, check_label_map, label_volumes_ml
from ..volume import Geometry, Volume, VolumeSequence
from .cine import ATTRIBUTE_PREFIX, _nodes_of_class
from .planning import _remove_with_helpers, label_names_of, labelmap_from_node
from .volumes import ijk_to_ras_of, set_node_voxels

ROLE_ATTRIBUTE = ATTRIBUTE_PREFIX + "LabelsRole"
BROWSER_ATTRIBUTE = ATTRIBUTE_PREFIX + "LabelsBrowserID"
#: Name of the table column holding the frame number.
FRAME_COLUMN = "frame"


@dataclass
class LabelNodes:
    """The nodes :func:`show_labels` made for one cine.

    Attributes:
        sequence: ``vtkMRMLSequenceNode`` of segmentation nodes, one per frame.
        proxy: the browser's proxy segmentation (the current frame's labels).
        table: ``vtkMRMLTableNode``: column ``frame`` then one column per segment (mL).
        chart: ``vtkMRMLPlotChartNode`` with one series per segment.
    """

    sequence: object
    proxy: object
    table: object
    chart: object


def segment_id(value: int) -> str:
    """The segment ID of label ``value`` in every frame (stable, so per-segment display settings hold)."""
    return f"label_{int(value)}"


def segment_mask(segmentation_node, segment: str, reference_node) -> np.ndarray:
    """The voxels of one segment on ``reference_node``'s grid, (K, J, I) bool."""
    scene = segmentation_node.GetScene() or reference_node.GetScene()
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment)
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__segment__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, exported,
                                                                                       reference_node):
            raise InputError(f"segment '{segment}' of '{segmentation_node.GetName()}' could not be exported")
        return labelmap_from_node(exported).array > 0
    finally:
        scene.RemoveNode(exported)


# -- input ----------------------------------------------------------------------------------------
def _segmentation_to_label_map(node, reference_node) -> LabelMap:
    """A segmentation node's segments as one label map on ``reference_node``'s grid (value i+1 =
    the i-th segment); overlapping segments are refused (one voxel, one label)."""
    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise InputError(f"segmentation '{node.GetName()}' has no segments")
    scene = node.GetScene()
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{node.GetName()} export")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, exported, reference_node):
            raise InputError(f"segmentation '{node.GetName()}' could not be exported on the grid of "
                             f"'{reference_node.GetName()}'")
        volume = labelmap_from_node(exported)
        covered = sum(int(np.count_nonzero(segment_mask(node, i, reference_node))) for i in ids)
        if covered != int(np.count_nonzero(volume.array)):
            raise InputError(f"segmentation '{node.GetName()}' has overlapping segments; one voxel can carry one "
                             "label only: remove the overlap (Segment Editor: 'Logical operators') or give one "
                             "segment at a time")
    finally:
        scene.RemoveNode(exported)
    names, colors = {}, {}
    for value, sid in enumerate(ids, start=1):
        segment = segmentation.GetSegment(sid)
        names[value] = segment.GetName()
        colors[value] = tuple(float(c) for c in segment.GetColor())
    return LabelMap(Volume(volume.array, volume.geometry, node.GetName()), names, colors)


def labels_from_node(node, reference_node) -> LabelMap:
    """A label map volume node or a segmentation node as a label map of ``reference_node``'s grid.

    Args:
        node: ``vtkMRMLLabelMapVolumeNode`` (or a scalar volume holding labels) or
            ``vtkMRMLSegmentationNode``.
        reference_node: the input volume node (the cine's grid).

    Raises:
        InputError: another node type, no labels, overlapping segments, or a grid that is not the input's.
    """
    from .volumes import volume_from_node

    if node is None or not hasattr(node, "IsA"):
        raise InputError("select a label map or a segmentation to carry through the frames")
    reference = volume_from_node(reference_node)
    if node.IsA("vtkMRMLSegmentationNode"):
        label_map = _segmentation_to_label_map(node, reference_node)
    elif node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLVectorVolumeNode"):
        volume = labelmap_from_node(node)
        names = label_names_of(node)
        label_map = LabelMap(volume, names, _colors_of(node, names))
    else:
        raise InputError(f"'{node.GetName()}' is a {node.GetClassName()}; the labels must be a label map volume "
                         "or a segmentation")
    return check_label_map(label_map, reference.geometry, f"input volume '{reference_node.GetName()}'")


# -- output ---------------------------------------------------------------------------------------
def _tagged(scene, browser) -> dict[str, object]:
    found = {}
    for node in _nodes_of_class(scene, "vtkMRMLNode"):
        if node.GetAttribute(BROWSER_ATTRIBUTE) == browser.GetID() and node.GetAttribute(ROLE_ATTRIBUTE):
            found[node.GetAttribute(ROLE_ATTRIBUTE)] = node
    return found


def find_label_nodes(scene, browser) -> dict[str, object]:
    """Role (``sequence``, ``table``, ``chart``, ``series:<value>``) -> node of the labels shown for ``browser``."""
    return _tagged(scene, browser)


def _node(scene, existing: dict, role: str, class_name: str, name: str, browser):
    node = existing.get(role)
    if node is None or not node.IsA(class_name):
        node = scene.AddNewNodeByClass(class_name, name)
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.SetAttribute(BROWSER_ATTRIBUTE, browser.GetID())
    node.SetName(name)
    return node


#: Colours of labels that bring none (a label map file without a colour table): distinct hues.
FALLBACK_COLORS = ((0.90, 0.30, 0.25), (0.25, 0.60, 0.90), (0.30, 0.80, 0.35), (0.95, 0.75, 0.20),
                   (0.65, 0.40, 0.85), (0.20, 0.80, 0.80), (0.95, 0.50, 0.75), (0.60, 0.60, 0.60))


def _color_of(label_map: LabelMap, value: int) -> tuple[float, float, float]:
    if value in label_map.colors:
        return label_map.colors[value]
    return FALLBACK_COLORS[int(value) % len(FALLBACK_COLORS)]


def _colors_of(node, values) -> dict[int, tuple[float, float, float]]:
    """Label value -> RGB of a label map node's colour table (values it defines)."""
    display = node.GetDisplayNode()
    table = display.GetColorNode() if display is not None else None
    out = {}
    if table is None:
        return out
    for v in values:
        if 0 < v < table.GetNumberOfColors():
            rgba = [0.0, 0.0, 0.0, 0.0]
            table.GetColor(int(v), rgba)
            out[int(v)] = (float(rgba[0]), float(rgba[1]), float(rgba[2]))
    return out


def _frame_segmentation(template, array: np.ndarray, ijk_to_ras: np.ndarray, values: list[int], scene):
    """A segmentation node (not in the scene) holding ``array``'s labels in the template's segments."""
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    set_node_voxels(labelmap, array, ijk_to_ras)
    scene.AddNode(labelmap)  # the import needs the node in a scene (for its geometry)
    segmentation = slicer.vtkMRMLSegmentationNode()
    segmentation.GetSegmentation().DeepCopy(template.GetSegmentation())
    scene.AddNode(segmentation)
    try:
        ids = vtk.vtkStringArray()
        for v in range(1, max(values) + 1):
            ids.InsertNextValue(segment_id(v) if v in values else "")
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation, ids):
            raise RuntimeError("Slicer could not import a frame's labels into a segmentation")
        return segmentation
    finally:
        _remove_with_helpers(scene, labelmap)


def _fill_table(table, volumes: Mapping[int, list[float]], names: Mapping[int, str], num_frames: int) -> list[str]:
    """Fill ``table`` with the frame column and one column per label; returns the column names."""
    table.RemoveAllColumns()
    frame = vtk.vtkIntArray()
    frame.SetName(FRAME_COLUMN)
    for t in range(num_frames):
        frame.InsertNextValue(t)
    table.AddColumn(frame)
    columns, used = [], {FRAME_COLUMN}
    for value, curve in volumes.items():
        name = names[value] if names[value] not in used else f"{names[value]} ({value})"
        used.add(name)
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        for v in curve:
            column.InsertNextValue(float(v))
        table.AddColumn(column)
        table.SetColumnUnitLabel(name, "mL")
        columns.append(name)
    table.Modified()
    return columns


def show_labels(scene, browser, labels: VolumeSequence, label_map: LabelMap) -> LabelNodes:
    """Show the labels of every frame as a segmentation sequence synchronised with the cine of ``browser``.

    Args:
        scene: the scene of the cine.
        browser: the cine's ``vtkMRMLSequenceBrowserNode`` (:func:`~MoDiffLib.mrml.cine.build_cine`).
        labels: (T, K, J, I) labels on the cine's grid, T = the cine's frames (``result.labels``,
            or ``labels.seq.nrrd`` read back).
        label_map: the frame-0 labels with their names and colours (``result.label_map``).

    Returns:
        the :class:`LabelNodes`; the browser shows the current frame's labels at once.

    Raises:
        InputError: labels that are not the cine's frames or grid. Everything is checked before
            the scene is touched.
    """
    master = browser.GetMasterSequenceNode() if browser is not None else None
    if master is None or master.GetNumberOfDataNodes() == 0:
        raise InputError("the labels must be shown with a cine: its browser has no sequence")
    frames = np.asarray(labels.frames)
    if frames.ndim != 4:
        raise InputError(f"{labels.name} holds vectors, not labels")
    if frames.shape[0] != master.GetNumberOfDataNodes():
        raise InputError(f"the labels have {frames.shape[0]} frames and the cine {master.GetNumberOfDataNodes()}")
    first = master.GetNthDataNode(0)
    dims = first.GetImageData().GetDimensions()
    cine_geometry = Geometry.from_ijk_to_ras((dims[2], dims[1], dims[0]), ijk_to_ras_of(first))
    if not labels.geometry.is_close(cine_geometry, atol_mm=1e-3):
        raise InputError(f"the labels ({labels.geometry.describe()}) are not on the cine's grid "
                         f"({cine_geometry.describe()})")
    values = [v for v in label_map.values if v > 0]
    if not values:
        raise InputError(f"label map '{label_map.volume.name}' holds no labels")
    names = label_map.named()
    existing = find_label_nodes(scene, browser)

    # frame 0's segments, names and colours: the template of every frame
    template = slicer.vtkMRMLSegmentationNode()
    for v in values:
        template.GetSegmentation().AddEmptySegment(segment_id(v), names[v], _color_of(label_map, v))
    ijk_to_ras = labels.geometry.ijk_to_ras()
    sequence = _node(scene, existing, "sequence", "vtkMRMLSequenceNode", f"{master.GetName()} labels", browser)
    was = sequence.StartModify()
    try:
        sequence.RemoveAllDataNodes()
        sequence.SetIndexName(master.GetIndexName())
        sequence.SetIndexUnit(master.GetIndexUnit())
        sequence.SetIndexType(master.GetIndexType())
        for t in range(frames.shape[0]):
            segmentation = _frame_segmentation(template, frames[t], ijk_to_ras, values, scene)
            try:
                sequence.SetDataNodeAtValue(segmentation, master.GetNthIndexValue(t))  # copied into the sequence
            finally:
                _remove_with_helpers(scene, segmentation)
    finally:
        sequence.EndModify(was)
    if not browser.IsSynchronizedSequenceNodeID(sequence.GetID()):
        browser.AddSynchronizedSequenceNode(sequence)
    current = browser.GetSelectedItemNumber()
    count = browser.GetNumberOfItems()
    if count > 1:  # make the browser copy the new items into the proxy
        browser.SetSelectedItemNumber((current + 1) % count)
    browser.SetSelectedItemNumber(max(current, 0))
    proxy = browser.GetProxyNode(sequence)
    if proxy is None:
        raise RuntimeError("the sequence browser created no proxy segmentation")
    proxy.SetName(f"{master.GetName()} labels")
    cine_proxy = browser.GetProxyNode(master)
    if cine_proxy is not None:
        proxy.SetAndObserveTransformNodeID(cine_proxy.GetTransformNodeID())
    if proxy.GetDisplayNode() is None:
        proxy.CreateDefaultDisplayNodes()

    volumes = label_volumes_ml(labels, values)
    table = _node(scene, existing, "table", "vtkMRMLTableNode", f"{master.GetName()} label volumes", browser)
    columns = _fill_table(table, volumes, names, frames.shape[0])
    chart = _node(scene, existing, "chart", "vtkMRMLPlotChartNode", f"{master.GetName()} label volumes", browser)
    chart.RemoveAllPlotSeriesNodeIDs()
    chart.SetTitle("Volume per frame")
    chart.SetXAxisTitle("frame")
    chart.SetYAxisTitle("volume (mL)")
    for (value, _), column in zip(volumes.items(), columns):
        series = _node(scene, existing, f"series:{value}", "vtkMRMLPlotSeriesNode", column, browser)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(FRAME_COLUMN)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetColor(*_color_of(label_map, value))
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    for role, node in existing.items():  # series of labels no longer present
        if role.startswith("series:") and int(role.split(":", 1)[1]) not in volumes:
            scene.RemoveNode(node)
    return LabelNodes(sequence, proxy, table, chart)


def table_volumes(table) -> dict[str, list[float]]:
    """Column name -> values of a label volume table (the ``frame`` column excluded)."""
    out: dict[str, list[float]] = {}
    for c in range(table.GetNumberOfColumns()):
        name = table.GetColumnName(c)
        if name == FRAME_COLUMN:
            continue
        column = table.GetTable().GetColumn(c)
        out[name] = [column.GetValue(r) for r in range(column.GetNumberOfTuples())]
    return out
