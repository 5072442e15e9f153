"""The viewer's MRML scene: the cine, the plan overlays and the risk structures as Slicer nodes.

Built on the glue the Slicer module uses (:func:`~MoDiffLib.mrml.build_cine`,
:func:`~MoDiffLib.mrml.show_plan`), so the browser shows what the desktop module shows:

* the cine: a volume sequence in a sequence browser, whose proxy volume the slice views show;
* the plan: the path as a line markup per frame (green / amber / red by the frame's status, also
  projected into the slice views), the target as a fiducial moved by the plan's motion, the entry,
  and the target's trajectory as a curve;
* the risk structures: a label map (one per frame, or frame 0's carried by the plan's motion
  fields as a grid transform) for the slice views, and a surface model per structure (one per
  frame, or frame 0's under the same transform) for the 3D view, each in its structure's colour.

Per-frame nodes are sequences synchronised in the cine's browser, so selecting a frame
(:meth:`ViewerScene.select_frame`) moves everything at once.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from ..mrml import build_cine, select_frame, show_plan
from ..mrml.planning import PlanNodes
from ..mrml.volumes import _numpy_to_matrix, node_from_volume, set_node_voxels
from .state import ViewerState

#: Percentiles of frame 0 that set the cine's window (the same window in every frame: no flicker).
WINDOW_PERCENTILES = (1.0, 99.5)
#: Opacity of the risk structures in the slice views (fill) and the 3D view (surfaces). The surfaces
#: are opaque: trame-slicer's views render multisampled, and with a translucent model the 3D view
#: came back empty (no volume, no models) on the offscreen EGL renderer here.
LABEL_OPACITY = 0.5
MODEL_OPACITY = 1.0
#: Smoothing of the structure surfaces (windowed sinc; the voxel staircase is not anatomy).
SMOOTHING_ITERATIONS = 15
SMOOTHING_PASSBAND = 0.1


def _rgb(hex_color: str) -> tuple[float, float, float]:
    h = hex_color.lstrip("#")
    return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def structure_surface(labels: np.ndarray, value: int, ijk_to_ras: np.ndarray) -> vtk.vtkPolyData:
    """The smoothed surface (RAS mm, with normals) of the voxels of ``labels[k, j, i] == value``.

    Empty polydata when the structure has no voxels (it may leave the grid in some frames).
    """
    mask = np.ascontiguousarray(labels == value, dtype=np.uint8)
    if not mask.any():
        return vtk.vtkPolyData()
    from vtkmodules.util import numpy_support

    image = vtk.vtkImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.reshape(-1), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    surface = vtk.vtkDiscreteFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, 1)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(surface.GetOutputPort())
    smooth.SetNumberOfIterations(SMOOTHING_ITERATIONS)
    smooth.SetPassBand(SMOOTHING_PASSBAND)
    smooth.NormalizeCoordinatesOn()
    to_ras = vtk.vtkTransform()
    to_ras.SetMatrix(_numpy_to_matrix(np.asarray(ijk_to_ras, dtype=float)))
    moved = vtk.vtkTransformPolyDataFilter()
    moved.SetInputConnection(smooth.GetOutputPort())
    moved.SetTransform(to_ras)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(moved.GetOutputPort())
    normals.ConsistencyOn()
    normals.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(normals.GetOutput())
    # the label scalars the filter keeps would colour the model through a lookup table; the
    # structure's colour is the display node's
    out.GetPointData().SetScalars(None)
    return out


class ViewerScene:
    """The nodes of one viewer session in ``scene`` (see the module docstring).

    Args:
        scene: a MRML scene with the Sequences, Markups and Transforms logics attached (the
            trame-slicer app's, or a test's headless one).
        state: the viewer state (its inputs and the structures' colours).
    """

    def __init__(self, scene, state: ViewerState):
        self.scene = scene
        self.state = state
        inputs = state.inputs
        cine = inputs.cine
        name = inputs.cine_path.name.split(".")[0] or "cine"
        first = cine.frame(0)
        self.input_node = node_from_volume(scene, first, f"{name} frame 0")
        low, high = np.percentile(first.array, WINDOW_PERCENTILES)
        display = self.input_node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(float(low), float(high))
        display.SetVisibility(False)
        self.sequence, self.browser = build_cine(scene, cine, self.input_node, {"source": str(inputs.cine_path)})
        self.volume = self.browser.GetProxyNode(self.sequence)

        self.plan_nodes: PlanNodes | None = None
        if inputs.plan is not None:
            self.plan_nodes = show_plan(scene, inputs.plan, self.browser, inputs.fields)
            self._project_path_into_slices()
            # the curve's name would be drawn beside the target in every view; the points say enough
            self.plan_nodes.trajectory.GetDisplayNode().SetPropertiesLabelVisibility(False)
        self.color_table = None
        self.labels = None  # the label map node the slice views show
        self.models: dict[str, object] = {}  # structure name -> the model node the 3D view shows
        if inputs.risk is not None and state.structures:
            self._add_risk_structures()
        self.select_frame(state.frame)

    # -- building -----------------------------------------------------------------------------------------
    def _project_path_into_slices(self) -> None:
        """Show the whole path in every slice view (projected), not only where it cuts the slice."""
        sequence = self.plan_nodes.path_display_sequence
        displays = [sequence.GetNthDataNode(t) for t in range(sequence.GetNumberOfDataNodes())]
        for display in displays + [self.plan_nodes.path.GetDisplayNode()]:
            if display is not None:
                display.SetSliceProjection(True)
                display.SetSliceProjectionUseFiducialColor(True)
                display.SetSliceProjectionOpacity(1.0)

    def _synchronised_sequence(self, name: str, items: list) -> object:
        """A sequence of ``items`` (one per frame) played by the cine's browser; returns its proxy."""
        master = self.sequence
        sequence = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
        sequence.SetIndexName(master.GetIndexName())
        sequence.SetIndexUnit(master.GetIndexUnit())
        sequence.SetIndexType(master.GetIndexType())
        for t, item in enumerate(items):
            sequence.SetDataNodeAtValue(item, master.GetNthIndexValue(t))
        self.browser.AddSynchronizedSequenceNode(sequence)
        count = self.browser.GetNumberOfItems()
        self.browser.SetSelectedItemNumber(1 % count)  # the browser creates the proxy on a frame change
        self.browser.SetSelectedItemNumber(0)
        proxy = self.browser.GetProxyNode(sequence)
        if proxy is None:
            raise RuntimeError("the sequence browser created no proxy: is the Sequences logic attached to the scene?")
        proxy.SetName(name)
        return proxy

    def _add_risk_structures(self) -> None:
        risk = self.state.inputs.risk
        geometry = self.state.inputs.cine.geometry
        ijk_to_ras = geometry.ijk_to_ras()
        values = np.array([v for _, v, _ in self.state.structures])

        table = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "risk structures")
        table.SetTypeToUser()
        table.SetNumberOfColors(int(values.max()) + 1)
        table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        for v in range(1, int(values.max()) + 1):
            table.SetColor(v, "", 0.0, 0.0, 0.0, 0.0)
        for structure, v, color in self.state.structures:
            table.SetColor(v, structure, *_rgb(color), 1.0)
        self.color_table = table

        def only_risks(labels: np.ndarray) -> np.ndarray:
            return np.where(np.isin(labels, values), labels, 0).astype(np.int16)

        # a frame-0 map moves with the plan's motion fields (a grid transform), as the plan moved it
        motion = None
        if not risk.per_frame and self.plan_nodes is not None and self.state.inputs.fields is not None:
            motion = self.plan_nodes.motion

        if risk.per_frame:
            items = []
            for t in range(risk.labels.shape[0]):
                node = slicer.vtkMRMLLabelMapVolumeNode()
                set_node_voxels(node, only_risks(risk.labels[t]), ijk_to_ras)
                items.append(node)
            labels = self._synchronised_sequence("risk structures", items)
        else:
            labels = slicer.vtkMRMLLabelMapVolumeNode()
            labels.SetName("risk structures")
            set_node_voxels(labels, only_risks(risk.labels), ijk_to_ras)
            self.scene.AddNode(labels)
        if labels.GetDisplayNode() is None:
            labels.CreateDefaultDisplayNodes()
        labels.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
        if motion is not None:
            labels.SetAndObserveTransformNodeID(motion.GetID())
        self.labels = labels

        for structure, v, color in self.state.structures:
            if risk.per_frame:
                items = []
                for t in range(risk.labels.shape[0]):
                    item = slicer.vtkMRMLModelNode()
                    item.SetAndObservePolyData(structure_surface(risk.labels[t], v, ijk_to_ras))
                    items.append(item)
                model = self._synchronised_sequence(f"{structure} surface", items)
            else:
                model = self.scene.AddNewNodeByClass("vtkMRMLModelNode", f"{structure} surface")
                model.SetAndObservePolyData(structure_surface(risk.labels, v, ijk_to_ras))
            if model.GetDisplayNode() is None:
                model.CreateDefaultDisplayNodes()
            model_display = model.GetDisplayNode()
            model_display.SetScalarVisibility(False)
            model_display.SetColor(*_rgb(color))
            model_display.SetOpacity(MODEL_OPACITY)
            model_display.SetVisibility2D(False)  # the label map shows them in the slice views
            if motion is not None:
                model.SetAndObserveTransformNodeID(motion.GetID())
            self.models[structure] = model

    # -- showing --------------------------------------------------------------------------------------------
    def show_in_slice_views(self) -> int:
        """Show the cine and the risk label map in every slice view, centred on the plan's target
        (or the volume's centre); returns the number of slice views set.

        Call once the views exist (their slice and composite nodes are in the scene then).
        """
        composites = [self.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                      for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
        for composite in composites:
            composite.SetBackgroundVolumeID(self.volume.GetID())
            composite.SetLabelVolumeID(self.labels.GetID() if self.labels is not None else None)
            composite.SetLabelOpacity(LABEL_OPACITY)
        focus = self.state.inputs.plan.target_ras if self.state.inputs.plan is not None else (
            self.state.inputs.cine.geometry.ijk_to_ras_points(
                np.array([[(n - 1) / 2 for n in self.state.inputs.cine.geometry.shape_kji[::-1]]]))[0])
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").JumpSliceByOffsetting(*[float(c) for c in focus])
        return len(composites)

    def select_frame(self, index: int) -> int:
        """Show frame ``index`` in every view (cine, path, target, structures)."""
        return select_frame(self.browser, int(index))

    def side_view(self) -> str:
        """The side to look at the 3D view from so the path is seen across, not end-on: ``"right"``
        or ``"anterior"`` (whichever axis is more perpendicular to the path; ``"anterior"`` without a plan)."""
        plan = self.state.inputs.plan
        if plan is None:
            return "anterior"
        direction = np.asarray(plan.target_ras, float) - np.asarray(plan.entry_ras, float)
        direction /= max(float(np.linalg.norm(direction)), 1e-9)
        return "right" if abs(direction[0]) < abs(direction[1]) else "anterior"

    @property
    def selected_frame(self) -> int:
        return int(self.browser.GetSelectedItemNumber())

    def set_path_visible(self, visible: bool) -> None:
        """Show or hide the plan's overlays (path, target, entry, trajectory) in every view.

        The path's display is a per-frame sequence: its items are changed too, or the next frame
        would bring the path back.
        """
        if self.plan_nodes is None:
            return
        nodes = self.plan_nodes
        sequence = nodes.path_display_sequence
        displays = [sequence.GetNthDataNode(t) for t in range(sequence.GetNumberOfDataNodes())]
        displays.append(nodes.path.GetDisplayNode())
        for node in (nodes.entry, nodes.target, nodes.trajectory):
            displays.append(node.GetDisplayNode())
        for display in displays:
            if display is not None:
                display.SetVisibility(bool(visible))
