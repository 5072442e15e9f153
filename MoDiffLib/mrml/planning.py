"""A puncture plan as Slicer overlays that follow the cine while it plays.

:func:`show_plan` adds (or, on a re-run, refills) these nodes for a cine's sequence browser
(:func:`~MoDiffLib.mrml.cine.build_cine`); the computation lives in :mod:`MoDiffLib.planning`
and :mod:`MoDiffLib.motion`, this module only turns its results into nodes:

* **motion**: a transform sequence synchronised in the cine's browser. With motion fields it
  holds one grid transform per frame whose *to-parent* displacement is the Lagrangian field
  ``u_t`` on the frame-0 grid (:mod:`MoDiffLib.motion.fields`), so anything placed on frame 0
  under the browser's proxy transform is shown where that tissue is in the current frame.
  Without fields (or with ``motion="translation"``) it holds one linear transform per frame
  that moves by the target's displacement.
* **target**: a fiducial at the planned (frame-0) target under the proxy transform: it moves
  with the motion during playback; its world position in frame ``t`` is ``plan.frames[t].target_ras``.
* **entry**: a fiducial at the (still) entry point.
* **path**: a line sequence (entry -> target of each frame) with a display-node sequence beside
  it, both synchronised in the browser: the proxy line shows the path of the current frame in
  green (gating frame), amber (clear of the risk structures, but the target is outside the
  tolerance) or red (the path crosses a structure or comes closer than the margin).
* **trajectory**: a curve through the target's positions in all frames.
* **table**: one row per frame (target, displacement, path length and angle, clearance per
  structure, clear / gating).

Every node gets the attributes ``MoDiff.PlanRole`` and ``MoDiff.PlanBrowserID``; running again
for the same browser reuses the nodes, so the scene holds one plan per cine. Positions are in
the cine's own (local) RAS: the overlays go under the parent transform of the cine's proxy
volume, as the cine itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from ..errors import InputError
from ..motion.fields import MotionFields
from ..planning.analysis import PuncturePlan
from ..volume import Geometry, Volume
from .cine import ATTRIBUTE_PREFIX, _nodes_of_class
from .volumes import _array_of, _numpy_to_matrix, ijk_to_ras_of

ROLE_ATTRIBUTE = ATTRIBUTE_PREFIX + "PlanRole"
BROWSER_ATTRIBUTE = ATTRIBUTE_PREFIX + "PlanBrowserID"
#: Path colours (RGB 0..1): gating frame, clear but target out of tolerance, blocked.
COLOR_GATING = (0.10, 0.80, 0.20)
COLOR_CLEAR = (1.00, 0.70, 0.00)
COLOR_BLOCKED = (0.90, 0.10, 0.10)
COLOR_TARGET = (1.00, 1.00, 0.20)
COLOR_ENTRY = (0.20, 0.60, 1.00)
MOTION_MODES = ("auto", "grid", "translation")


@dataclass
class PlanNodes:
    """The nodes of one plan (proxies are the nodes the views show; the sequences hold all frames)."""

    browser: object
    entry: object
    target: object
    path: object
    trajectory: object
    table: object
    motion: object
    path_sequence: object
    path_display_sequence: object
    motion_sequence: object


# -- small helpers ------------------------------------------------------------------------------------
def path_color(frame) -> tuple[float, float, float]:
    """Colour of the path in a frame of the plan (see the module docstring)."""
    if frame.gating:
        return COLOR_GATING
    return COLOR_CLEAR if frame.clear else COLOR_BLOCKED


def _check_browser(browser):
    if browser is None or not hasattr(browser, "IsA") or not browser.IsA("vtkMRMLSequenceBrowserNode"):
        raise InputError(f"expected a sequence browser node, got {type(browser).__name__}")
    master = browser.GetMasterSequenceNode()
    if master is None or master.GetNumberOfDataNodes() == 0:
        raise InputError(f"sequence browser '{browser.GetName()}' plays no frames")
    return master


def select_frame(browser, index: int) -> int:
    """Show frame ``index`` of the cine (playback stops): what the 'go to recommended frame' button does.

    Raises:
        InputError: not a browser, or no such frame.
    """
    master = _check_browser(browser)
    count = master.GetNumberOfDataNodes()
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < count:
        raise InputError(f"frame {index!r} does not exist; the cine has frames 0 to {count - 1}")
    browser.SetPlaybackActive(False)
    browser.SetSelectedItemNumber(int(index))
    return int(index)


def markup_position(node, index: int = 0, what: str = "point") -> np.ndarray:
    """World RAS position (3,) of control point ``index`` of a markups node (InputError if missing)."""
    if node is None or not hasattr(node, "IsA") or not node.IsA("vtkMRMLMarkupsNode"):
        raise InputError(f"the {what} must be a markups node with a placed point")
    if node.GetNumberOfControlPoints() <= index:
        raise InputError(f"place the {what} first ('{node.GetName()}' has no point {index + 1})")
    p = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(index, p)
    return np.array(p, dtype=float)


def world_to_cine(browser, point_ras) -> np.ndarray:
    """A world RAS point (e.g. a markup placed in the views) in the cine's own coordinates.

    Where the cine's proxy volume sits under a parent transform (as its input volume does), the
    plan is computed in the untransformed coordinates of the frames; this undoes that transform.
    """
    master = _check_browser(browser)
    p = np.asarray(point_ras, dtype=float)
    proxy = browser.GetProxyNode(master)
    parent = proxy.GetParentTransformNode() if proxy is not None else None
    if parent is None:
        return p
    from_world = vtk.vtkGeneralTransform()
    parent.GetTransformFromWorld(from_world)
    return np.array(from_world.TransformPoint(*[float(c) for c in p]), dtype=float)


def cine_geometry(browser) -> Geometry:
    """The voxel grid of the frames of the cine played by ``browser`` (InputError if they are not volumes)."""
    master = _check_browser(browser)
    first = master.GetNthDataNode(0)
    if first is None or not first.IsA("vtkMRMLVolumeNode") or first.GetImageData() is None:
        raise InputError(f"sequence '{master.GetName()}' does not hold volumes; planning needs a cine of images")
    dims = first.GetImageData().GetDimensions()
    return Geometry.from_ijk_to_ras((dims[2], dims[1], dims[0]), ijk_to_ras_of(first))


def labelmap_from_node(node) -> Volume:
    """A label map volume node (or any scalar volume holding labels) as a :class:`Volume`."""
    if node is None or not hasattr(node, "IsA") or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"the risk structures must be a label map volume, got {type(node).__name__}")
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"label map '{node.GetName()}' has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"label map '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel")
    dims = image.GetDimensions()
    geometry = Geometry.from_ijk_to_ras((dims[2], dims[1], dims[0]), ijk_to_ras_of(node))
    return Volume(_array_of(node), geometry, node.GetName() or "labels")


def label_names_of(node) -> dict[int, str]:
    """Label value -> name from the colour table of a label map node (values present in it only)."""
    names: dict[int, str] = {}
    display = node.GetDisplayNode() if node is not None else None
    colors = display.GetColorNode() if display is not None else None
    if colors is None:
        return names
    values = np.unique(_array_of(node))
    for value in values:
        v = int(value)
        if v <= 0:
            continue
        name = colors.GetColorName(v) if v < colors.GetNumberOfColors() else ""
        if name and name.lower() not in ("(none)", "invalid", "background"):
            names[v] = name
    return names


def _tag(node, role: str, browser) -> None:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetAttribute(BROWSER_ATTRIBUTE, browser.GetID())


def find_plan_nodes(scene, browser) -> dict[str, object]:
    """Role -> node of the plan made for ``browser`` (empty if none)."""
    found = {}
    for node in _nodes_of_class(scene, "vtkMRMLNode"):
        if node.GetAttribute(BROWSER_ATTRIBUTE) == browser.GetID() and node.GetAttribute(ROLE_ATTRIBUTE):
            found[node.GetAttribute(ROLE_ATTRIBUTE)] = node
    return found


def _node(scene, existing: dict, role: str, class_name: str, name: str, browser):
    node = existing.get(role)
    if node is not None and not node.IsA(class_name):
        scene.RemoveNode(node)
        node = None
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
        _tag(node, role, browser)
    return node


def _fill_sequence(sequence, master, data_nodes: list) -> None:
    """Replace the items of ``sequence`` by ``data_nodes`` at the master's index values (deep copies)."""
    was = sequence.StartModify()
    try:
        sequence.RemoveAllDataNodes()
        sequence.SetIndexName(master.GetIndexName())
        sequence.SetIndexUnit(master.GetIndexUnit())
        sequence.SetIndexType(master.GetIndexType())
        for t, node in enumerate(data_nodes):
            sequence.SetDataNodeAtValue(node, master.GetNthIndexValue(t))
    finally:
        sequence.EndModify(was)


def _remove_with_helpers(scene, node) -> None:
    """Remove ``node`` and its storage and display nodes from ``scene`` (if still there)."""
    helpers = []
    if hasattr(node, "GetStorageNode") and node.GetStorageNode() is not None:
        helpers.append(node.GetStorageNode())
    if hasattr(node, "GetNumberOfDisplayNodes"):
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    for n in [node] + helpers:
        if n is not None and n.GetScene() is scene:
            scene.RemoveNode(n)


def _synchronise(browser, sequence) -> None:
    if not browser.IsSynchronizedSequenceNodeID(sequence.GetID()):
        browser.AddSynchronizedSequenceNode(sequence)


def _refresh(browser, frame: int) -> None:
    """Make the browser copy the (new) items of its sequences into the proxies, at ``frame``."""
    count = browser.GetNumberOfItems()
    if count > 1:
        browser.SetSelectedItemNumber((frame + 1) % count)
    browser.SetSelectedItemNumber(frame)


# -- transforms -----------------------------------------------------------------------------------------
def grid_transform_node(fields: MotionFields, t: int, step: int = 1):
    """A (not yet added) grid transform node whose to-parent displacement is ``u_t`` on the frame-0 grid.

    ``step`` > 1 keeps every step-th grid point per axis (smaller scenes; the field is smooth).
    """
    g = fields.geometry
    u = np.ascontiguousarray(fields.displacements[t][::step, ::step, ::step], dtype=np.float32)
    image = vtk.vtkImageData()
    image.SetDimensions(u.shape[2], u.shape[1], u.shape[0])
    image.SetOrigin(*g.origin_ras)
    image.SetSpacing(*(s * step for s in g.spacing))
    vectors = numpy_support.numpy_to_vtk(u.reshape(-1, 3), deep=True, array_type=vtk.VTK_FLOAT)
    vectors.SetNumberOfComponents(3)
    vectors.SetName("displacement")
    image.GetPointData().SetScalars(vectors)
    direction = np.eye(4)
    direction[:3, :3] = g.direction
    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(image)
    grid.SetGridDirectionMatrix(_numpy_to_matrix(direction))
    grid.SetInterpolationModeToLinear()
    grid.SetDisplacementScale(1.0)
    grid.SetDisplacementShift(0.0)
    node = slicer.vtkMRMLGridTransformNode()
    node.SetAndObserveTransformToParent(grid)
    return node


def translation_node(displacement) -> object:
    """A (not yet added) linear transform node translating by ``displacement`` (RAS mm)."""
    matrix = np.eye(4)
    matrix[:3, 3] = np.asarray(displacement, dtype=float)
    node = slicer.vtkMRMLLinearTransformNode()
    node.SetMatrixTransformToParent(_numpy_to_matrix(matrix))
    return node


# -- table ----------------------------------------------------------------------------------------------
def plan_table_columns(plan: PuncturePlan) -> list[tuple[str, str, list]]:
    """``[(column name, unit, values per frame)]`` of the per-frame table."""
    frames = plan.frames
    columns: list[tuple[str, str, list]] = [
        ("frame", "", [f.index for f in frames]),
        ("target R", "mm", [f.target_ras[0] for f in frames]),
        ("target A", "mm", [f.target_ras[1] for f in frames]),
        ("target S", "mm", [f.target_ras[2] for f in frames]),
        ("displacement LR", "mm", [f.displacement_mm[0] for f in frames]),
        ("displacement AP", "mm", [f.displacement_mm[1] for f in frames]),
        ("displacement SI", "mm", [f.displacement_mm[2] for f in frames]),
        ("displacement", "mm", [f.displacement_norm_mm for f in frames]),
        ("path length", "mm", [f.path_length_mm for f in frames]),
        ("path angle", "deg", [f.angle_deg for f in frames]),
    ]
    for name in plan.structures:
        values = [f.min_clearance_mm.get(name) for f in frames]
        columns.append((f"clearance {name}", "mm", [float("nan") if v is None else v for v in values]))
    columns += [
        ("clear", "", ["yes" if f.clear else "no" for f in frames]),
        ("gating", "", ["yes" if f.gating else "no" for f in frames]),
    ]
    return columns


def _fill_table(table_node, plan: PuncturePlan) -> None:
    table = vtk.vtkTable()
    for name, unit, values in plan_table_columns(plan):
        if values and isinstance(values[0], str):
            array = vtk.vtkStringArray()
            for v in values:
                array.InsertNextValue(v)
        elif name == "frame":
            array = vtk.vtkIntArray()
            for v in values:
                array.InsertNextValue(int(v))
        else:
            array = vtk.vtkDoubleArray()
            for v in values:
                array.InsertNextValue(float(v))
        array.SetName(name)
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)
    for name, unit, _ in plan_table_columns(plan):
        if unit:
            table_node.SetColumnUnitLabel(name, unit)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetLocked(True)


def table_values(table_node) -> dict[str, list]:
    """Column name -> values of a table node (to read a plan table back)."""
    table = table_node.GetTable()
    out = {}
    for c in range(table.GetNumberOfColumns()):
        array = table.GetColumn(c)
        out[array.GetName()] = [array.GetValue(r) for r in range(table.GetNumberOfRows())]
    return out


# -- markups ----------------------------------------------------------------------------------------------
def _set_points(node, points, labels=None) -> None:
    was = node.StartModify()
    try:
        node.RemoveAllControlPoints()
        for n, p in enumerate(points):
            node.AddControlPoint(vtk.vtkVector3d(*[float(c) for c in p]), labels[n] if labels else "")
    finally:
        node.EndModify(was)


def _style(node, color, labels: bool = True) -> None:
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetSelectedColor(*color)
    display.SetColor(*color)
    display.SetActiveColor(*color)
    display.SetPointLabelsVisibility(labels)


def _line(entry, target, color) -> tuple:
    line = slicer.vtkMRMLMarkupsLineNode()
    for i in range(line.GetNumberOfMeasurements()):  # the length is in the table; a detached node has no unit
        line.GetNthMeasurement(i).SetEnabled(False)
    line.AddControlPoint(vtk.vtkVector3d(*[float(c) for c in entry]), "entry")
    line.AddControlPoint(vtk.vtkVector3d(*[float(c) for c in target]), "target")
    line.SetLocked(True)
    display = slicer.vtkMRMLMarkupsDisplayNode()
    display.SetSelectedColor(*color)
    display.SetColor(*color)
    display.SetActiveColor(*color)
    display.SetPointLabelsVisibility(False)
    display.SetPropertiesLabelVisibility(False)
    display.SetLineThickness(0.5)
    return line, display


# -- the plan ------------------------------------------------------------------------------------------
def show_plan(scene, plan: PuncturePlan, browser, fields: MotionFields | None = None, motion: str = "auto",
              grid_step: int = 1, name: str | None = None) -> PlanNodes:
    """Add the overlays of ``plan`` to the cine played by ``browser`` (see the module docstring).

    Args:
        scene: the MRML scene of the browser.
        plan: the result of :func:`~MoDiffLib.planning.plan_puncture` for this cine.
        browser: the cine's sequence browser (its master sequence has one item per plan frame).
        fields: the motion fields of the plan (same frames, the cine's grid); needed for
            ``motion="grid"``.
        motion: ``"grid"`` (grid transforms of the fields), ``"translation"`` (the target's
            displacement) or ``"auto"`` (grid when fields are given).
        grid_step: keep every ``grid_step``-th grid point of the fields per axis.
        name: base name of the nodes (default: the cine's name + " plan").

    Returns:
        The plan's nodes; the browser shows frame 0.

    Raises:
        InputError: everything is checked before the scene changes: a browser that is not in
            ``scene`` or plays another number of frames, fields that do not match, unknown mode.
    """
    master = _check_browser(browser)
    if browser.GetScene() is not scene:
        raise InputError(f"sequence browser '{browser.GetName()}' is not in this scene")
    if not isinstance(plan, PuncturePlan):
        raise InputError(f"expected a PuncturePlan, got {type(plan).__name__}")
    count = master.GetNumberOfDataNodes()
    if plan.num_frames != count:
        raise InputError(f"the plan has {plan.num_frames} frames but the cine '{master.GetName()}' has {count}")
    if motion not in MOTION_MODES:
        raise InputError(f"unknown motion mode {motion!r}; choose one of {', '.join(MOTION_MODES)}")
    if motion == "auto":
        motion = "grid" if fields is not None else "translation"
    if motion == "grid":
        if not isinstance(fields, MotionFields):
            raise InputError("grid transforms need the motion fields of the plan")
        if fields.num_frames != count:
            raise InputError(f"the motion fields have {fields.num_frames} frames but the cine has {count}")
        first = master.GetNthDataNode(0)
        if first is not None and first.IsA("vtkMRMLVolumeNode") and first.GetImageData() is not None:
            grid = cine_geometry(browser)
            if not grid.is_close(fields.geometry, atol_mm=1e-3):
                raise InputError(
                    f"the motion fields ({fields.geometry.describe()}) are not on the grid of the cine "
                    f"({grid.describe()})"
                )
    if isinstance(grid_step, bool) or not isinstance(grid_step, (int, np.integer)) or grid_step < 1:
        raise InputError(f"grid_step must be a whole number >= 1, got {grid_step!r}")
    if not scene.IsNodeClassRegistered("vtkMRMLSequenceBrowserNode"):
        raise RuntimeError("this scene has no Sequences module logic; a plan cannot follow the cine")

    base = name or f"{master.GetName()} plan"
    existing = find_plan_nodes(scene, browser)
    master_proxy = browser.GetProxyNode(master)
    parent_id = master_proxy.GetTransformNodeID() if master_proxy is not None else None
    entry = np.asarray(plan.entry_ras, dtype=float)
    track = plan.target_track()

    # motion: one transform per frame, synchronised with the cine
    motion_sequence = _node(scene, existing, "motion_sequence", "vtkMRMLSequenceNode", f"{base} motion", browser)
    if motion == "grid":
        items = [grid_transform_node(fields, t, int(grid_step)) for t in range(count)]
    else:
        items = [translation_node(track[t] - track[0]) for t in range(count)]
    for t, item in enumerate(items):
        item.SetName(f"{base} motion {t}")
        _tag(item, "motion", browser)  # the browser copies the attributes of an item into the proxy
    old_proxy = existing.get("motion")
    if old_proxy is not None and not old_proxy.IsA(items[0].GetClassName()):
        # grid <-> linear: the browser would add a proxy of the new class beside the old one
        if browser.IsSynchronizedSequenceNodeID(motion_sequence.GetID()):
            browser.RemoveSynchronizedSequenceNode(motion_sequence.GetID())
        _remove_with_helpers(scene, old_proxy)
    _fill_sequence(motion_sequence, master, items)
    motion_sequence.SetAttribute(ATTRIBUTE_PREFIX + "PlanMotion", motion)

    # path: a line per frame and its colour per frame
    path_sequence = _node(scene, existing, "path_sequence", "vtkMRMLSequenceNode", f"{base} path", browser)
    display_sequence = _node(scene, existing, "path_display_sequence", "vtkMRMLSequenceNode", f"{base} path display",
                             browser)
    lines, displays = zip(*[_line(entry, track[t], path_color(f)) for t, f in enumerate(plan.frames)])
    for t, (line, display) in enumerate(zip(lines, displays)):
        line.SetName(f"{base} path {t}")
        display.SetName(f"{base} path display {t}")
        _tag(line, "path", browser)
        _tag(display, "path_display", browser)
    _fill_sequence(path_sequence, master, list(lines))
    _fill_sequence(display_sequence, master, list(displays))

    for sequence in (motion_sequence, path_sequence, display_sequence):
        _synchronise(browser, sequence)
    _refresh(browser, 0)

    motion_proxy = browser.GetProxyNode(motion_sequence)
    path_proxy = browser.GetProxyNode(path_sequence)
    display_proxy = browser.GetProxyNode(display_sequence)
    if motion_proxy is None or path_proxy is None or display_proxy is None:
        raise RuntimeError("the sequence browser created no proxy nodes: is the Sequences logic attached to the scene?")
    for node, role, label in ((motion_proxy, "motion", "motion"), (path_proxy, "path", "path"),
                              (display_proxy, "path_display", "path display")):
        node.SetName(f"{base} {label}")
        _tag(node, role, browser)
    # the path proxy shows the colour of the current frame: its display node is the display proxy
    if path_proxy.GetDisplayNodeID() != display_proxy.GetID():
        old = [path_proxy.GetNthDisplayNode(i) for i in range(path_proxy.GetNumberOfDisplayNodes())]
        path_proxy.SetAndObserveDisplayNodeID(display_proxy.GetID())
        for node in old:
            if node is not None and node is not display_proxy and node.GetScene() is scene:
                scene.RemoveNode(node)
    motion_proxy.SetAndObserveTransformNodeID(parent_id)
    path_proxy.SetAndObserveTransformNodeID(parent_id)

    # fiducials and the trajectory
    entry_node = _node(scene, existing, "entry", "vtkMRMLMarkupsFiducialNode", f"{base} entry", browser)
    _set_points(entry_node, [entry], ["entry"])
    entry_node.SetAndObserveTransformNodeID(parent_id)
    _style(entry_node, COLOR_ENTRY)
    target_node = _node(scene, existing, "target", "vtkMRMLMarkupsFiducialNode", f"{base} target", browser)
    _set_points(target_node, [track[0]], ["target"])
    target_node.SetAndObserveTransformNodeID(motion_proxy.GetID())
    _style(target_node, COLOR_TARGET)
    for node in (entry_node, target_node):
        node.SetLocked(True)
    trajectory = _node(scene, existing, "trajectory", "vtkMRMLMarkupsCurveNode", f"{base} trajectory", browser)
    _set_points(trajectory, track, [str(f.index) for f in plan.frames])
    trajectory.SetCurveTypeToLinear()
    trajectory.SetAndObserveTransformNodeID(parent_id)
    trajectory.SetLocked(True)
    _style(trajectory, COLOR_TARGET, labels=False)

    table = _node(scene, existing, "table", "vtkMRMLTableNode", f"{base} table", browser)
    _fill_table(table, plan)

    summary = plan.summary
    for node in (motion_sequence, table):
        node.SetAttribute(ATTRIBUTE_PREFIX + "PlanRecommendedFrame",
                          "" if summary["recommended_frame"] is None else str(summary["recommended_frame"]))
        node.SetAttribute(ATTRIBUTE_PREFIX + "PlanGatingFrames", ",".join(str(i) for i in summary["gating_frames"]))
    select_frame(browser, 0)
    return PlanNodes(browser=browser, entry=entry_node, target=target_node, path=path_proxy, trajectory=trajectory,
                     table=table, motion=motion_proxy, path_sequence=path_sequence,
                     path_display_sequence=display_sequence, motion_sequence=motion_sequence)


def recommended_frame_of(scene, browser) -> int | None:
    """The recommended frame stored with the plan of ``browser`` (None: no plan or no gating window)."""
    table = find_plan_nodes(scene, browser).get("table")
    value = table.GetAttribute(ATTRIBUTE_PREFIX + "PlanRecommendedFrame") if table is not None else None
    return int(value) if value else None
