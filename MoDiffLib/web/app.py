"""The browser app of ``modiff view``: trame-slicer's views on the viewer's MRML scene, and the controls.

Three slice views (axial, coronal, sagittal) and a 3D view render server-side with slicer-core
(the same displayable managers as Slicer) and stream to the page as images; beside them a panel
with the frame slider, play / pause and step buttons, the timeline of frames with the gating
window, the per-frame numbers and the planning curves. The widgets only bind to trame state;
what a frame shows comes from :class:`~MoDiffLib.web.state.ViewerState`, the nodes from
:class:`~MoDiffLib.web.scene.ViewerScene`.

Everything the page loads is served by this process (trame, Vuetify and its icon font ship in the
wheels): the viewer works with no network. The page's elements that scripts and the browser test
use carry ids: ``modiff-frame`` (the frame read-out), ``modiff-prev`` / ``modiff-next`` /
``modiff-play``, ``modiff-path`` (the overlay switch), ``modiff-timeline``, ``modiff-curves``.
"""

from __future__ import annotations

import asyncio

from trame.app import TrameApp
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewDirection, ViewLayoutDefinition
from trame_vuetify.ui.vuetify3 import SinglePageLayout
from vtkmodules.vtkCommonCore import vtkLogger, vtkOutputWindow

from ..errors import InputError
from ..mrml import DEFAULT_PLAYBACK_FPS
from ..mrml.planning import COLOR_BLOCKED, COLOR_CLEAR, COLOR_GATING
from .curves import curves_svg
from .scene import ViewerScene
from .state import STATUS_BLOCKED, STATUS_CLEAR, STATUS_GATING, STATUS_NONE, ViewerState

#: The view layout: axial and 3D on top, coronal and sagittal below (the order of the views on the page).
LAYOUT_ID = "MoDiff"
VIEW_ORDER = ("Red", "ThreeD", "Green", "Yellow")
#: Slicer module logics the viewer needs besides those trame-slicer's SlicerApp registers.
EXTRA_LOGICS = ("vtkSlicerSequencesLogic", "vtkSlicerTransformLogic")
#: Volume rendering presets (Slicer's) for CT-like and other cines.
CT_PRESET = "CT-Chest-Contrast-Enhanced"
MR_PRESET = "MR-Default"
#: Frames whose lowest intensity is below this are CT (Hounsfield units: air is -1000).
CT_MIN_VALUE = -500.0
#: Frame rate the 3D view's volume rendering adapts its sampling to. Without a GPU (software
#: OpenGL) full-quality ray casting of a 64x64x32 cine took 1.1 s a frame on a busy 2-core machine;
#: adaptive sampling took 0.08 s, so playback keeps its pace.
VOLUME_RENDERING_FPS = 10.0


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


#: Timeline colour of each status: the path's colours (one place: the MRML glue's).
STATUS_COLORS = {STATUS_GATING: _hex(COLOR_GATING), STATUS_CLEAR: _hex(COLOR_CLEAR),
                 STATUS_BLOCKED: _hex(COLOR_BLOCKED), STATUS_NONE: "#9e9e9e"}
STATUS_TEXT = {STATUS_GATING: "gating: path clear, target within tolerance",
               STATUS_CLEAR: "path clear, target out of tolerance",
               STATUS_BLOCKED: "path blocked or closer than the margin", STATUS_NONE: "no plan"}


def viewer_layout() -> Layout:
    """Axial and 3D on top, coronal and sagittal below."""
    views = {"Red": ViewLayoutDefinition.axial_view(), "ThreeD": ViewLayoutDefinition.threed_view(),
             "Green": ViewLayoutDefinition.coronal_view(), "Yellow": ViewLayoutDefinition.sagittal_view()}
    rows = [Layout(LayoutDirection.Horizontal, [views[VIEW_ORDER[0]], views[VIEW_ORDER[1]]]),
            Layout(LayoutDirection.Horizontal, [views[VIEW_ORDER[2]], views[VIEW_ORDER[3]]])]
    return Layout(LayoutDirection.Vertical, rows)


def _quiet_vtk_warnings() -> None:
    """Show VTK's errors only. Its warnings here are not about the user's data: trame-slicer's VTK
    9.6 deprecations (once per view) and, without an X display, the X render window VTK tries
    before offscreen EGL. Errors go through the logger; the output window (which SlicerApp sets to
    print everything) would print each one twice."""
    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_ERROR)
    vtkOutputWindow.GetInstance().SetDisplayModeToNever()


class ViewerApp(TrameApp):
    """The trame app of one viewer session.

    Args:
        state: the viewer state (inputs loaded).
        server: a trame server (default: trame's own).
        volume_rendering: start with the cine volume-rendered in the 3D view.
    """

    def __init__(self, state: ViewerState, server=None, volume_rendering: bool = True):
        super().__init__(server)
        import slicer

        self.viewer = state
        self.slicer_app = SlicerApp()
        _quiet_vtk_warnings()
        # the logics must outlive the app: a logic whose last Python reference goes is deleted
        self._logics = [self.slicer_app.register_module_logic(getattr(slicer, name)()) for name in EXTRA_LOGICS]
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout(LAYOUT_ID, viewer_layout())
        self.layout_manager.set_layout(LAYOUT_ID)

        self.scene = ViewerScene(self.slicer_app.scene, state)
        self._show_volume(volume_rendering)
        self._play_task: asyncio.Task | None = None

        s = self.state
        s.trame__title = "MoDiff viewer"
        s.num_frames = state.num_frames
        s.frame = state.frame
        s.playing = False
        s.show_path = state.has_plan
        s.volume_rendering = volume_rendering
        s.has_plan = state.has_plan
        s.has_recommended = state.recommended_frame is not None
        s.description = state.describe()
        s.structures = [{"name": n, "color": c} for n, _, c in state.structures]
        self._publish()
        s.change("frame")(self._on_frame)
        s.change("show_path")(self._on_show_path)
        s.change("volume_rendering")(self._on_volume_rendering)
        s.change("playing")(self._on_playing)
        self._build_ui()

    # -- the scene in the views --------------------------------------------------------------------------
    def _show_volume(self, volume_rendering: bool) -> None:
        import slicer

        volume = self.scene.volume
        low = float(self.viewer.inputs.cine.frames[0].min())
        preset = CT_PRESET if low < CT_MIN_VALUE else MR_PRESET
        self.slicer_app.display_manager.show_volume(volume, vr_preset=preset, do_reset_views=True)
        self.slicer_app.volume_rendering.get_vr_display_node(volume).SetVisibility(volume_rendering)
        self.scene.show_in_slice_views()
        side = ViewDirection.RIGHT if self.scene.side_view() == "right" else ViewDirection.ANTERIOR
        for view in self.slicer_app.view_manager.get_threed_views():
            view.rotate_to_view_direction(side)
            view_node = view.get_view_node()
            view_node.SetVolumeRenderingQuality(slicer.vtkMRMLViewNode.Adaptive)
            view_node.SetExpectedFPS(VOLUME_RENDERING_FPS)

    # -- state -> scene --------------------------------------------------------------------------------------
    def _publish(self) -> None:
        """Copy what the current frame shows into the trame state (the UI binds to it)."""
        view = self.viewer.view()
        s = self.state
        s.frame_label = f"frame {view.index} of {view.num_frames - 1}"
        s.status = view.status
        s.status_text = STATUS_TEXT[view.status]
        s.status_color = STATUS_COLORS[view.status]
        s.timeline = [{"index": c.index, "color": STATUS_COLORS[c.status], "current": c.current,
                       "recommended": c.recommended, "status": c.status} for c in self.viewer.timeline()]
        numbers = []
        if view.path is not None:
            d = view.displacement_mm
            numbers.append(f"target displacement {view.displacement_norm_mm:.1f} mm (LR {d[0]:+.1f}, AP {d[1]:+.1f}, "
                           f"SI {d[2]:+.1f})")
            numbers.append(f"path length {view.path.length_mm:.1f} mm, angle {view.path.angle_deg:.1f} deg")
        for st in view.structures:
            if st.clearance_mm is not None:
                numbers.append(f"{st.name}: {'crossed' if st.crossed else f'{st.clearance_mm:.1f} mm clear'}")
        s.numbers = numbers
        s.curves_svg = curves_svg(self.viewer.curves(), view.index)

    def _on_frame(self, frame, **_):
        try:
            index = self.viewer.set_frame(frame)
        except InputError:  # a slider value between updates: show the frame the state holds
            index = self.viewer.frame
        self.scene.select_frame(index)
        self._publish()

    def _on_show_path(self, show_path, **_):
        self.scene.set_path_visible(bool(show_path))

    def _on_volume_rendering(self, volume_rendering, **_):
        display = self.slicer_app.volume_rendering.get_vr_display_node(self.scene.volume)
        if display is not None:
            display.SetVisibility(bool(volume_rendering))

    def _on_playing(self, playing, **_):
        if playing:
            self.viewer.play()
            if self._play_task is None or self._play_task.done():
                self._play_task = asyncio.ensure_future(self._play())
        else:
            self.viewer.pause()

    async def _play(self) -> None:
        """Advance a frame every 1/fps seconds while playing (the views follow through the state)."""
        while self.viewer.playing:
            await asyncio.sleep(1.0 / DEFAULT_PLAYBACK_FPS)
            if self.viewer.tick():
                with self.state:
                    self.state.frame = self.viewer.frame

    # -- controls --------------------------------------------------------------------------------------------
    def step(self, delta: int) -> None:
        self.state.playing = False
        self.state.frame = self.viewer.step(delta)

    def go_to_recommended(self) -> None:
        frame = self.viewer.go_to_recommended()
        if frame is not None:
            self.state.playing = False
            self.state.frame = frame

    # -- page ---------------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        with SinglePageLayout(self.server) as self.ui:
            self.ui.title.set_text("MoDiff viewer")
            self.ui.icon.hide()
            self.ui.footer.hide()
            with self.ui.toolbar:
                v3.VSpacer()
                html.Span("{{ description[0] }}", classes="text-body-2 mr-4")
            with self.ui.content:
                with html.Div(style="display: flex; height: calc(100vh - 64px); width: 100%;"):
                    with html.Div(id="modiff-views", style="flex: 1; display: flex; min-width: 0;"):
                        self.layout_manager.initialize_layout_grid(self.ui)
                    with html.Div(id="modiff-panel",
                                  style="width: 460px; padding: 8px 12px; overflow-y: auto; font-size: 13px;"):
                        self._controls()
                        self._timeline()
                        self._frame_numbers()
                        html.Div(id="modiff-curves", v_html=("curves_svg",), style="margin-top: 8px;")

    def _controls(self) -> None:
        with html.Div(style="display: flex; align-items: center; gap: 4px;"):
            v3.VBtn(icon="mdi-skip-previous", id="modiff-prev", size="small", click=(self.step, "[-1]"),
                    title="previous frame")
            v3.VBtn(icon=("playing ? 'mdi-pause' : 'mdi-play'",), id="modiff-play", size="small",
                    click="playing = !playing", title="play / pause")
            v3.VBtn(icon="mdi-skip-next", id="modiff-next", size="small", click=(self.step, "[1]"),
                    title="next frame")
            html.Span("{{ frame_label }}", id="modiff-frame", classes="ml-2", style="white-space: nowrap;")
            v3.VSpacer()
            v3.VBtn("recommended", id="modiff-recommended", size="small", variant="tonal",
                    disabled=("!has_recommended",), click=self.go_to_recommended,
                    title="go to the recommended frame (middle of the longest gating window)")
        v3.VSlider(v_model=("frame",), min=0, max=("num_frames - 1",), step=1, hide_details=True,
                   density="compact", id="modiff-slider", thumb_label=True)
        with html.Div(style="display: flex; gap: 12px;"):
            v3.VSwitch(v_model=("show_path",), label="path and target", id="modiff-path", density="compact",
                       hide_details=True, color="green", disabled=("!has_plan",))
            v3.VSwitch(v_model=("volume_rendering",), label="volume rendering", id="modiff-vr", density="compact",
                       hide_details=True)

    def _timeline(self) -> None:
        html.Div("frames (green: gating window)", classes="text-caption mt-2")
        with html.Div(id="modiff-timeline", style="display: flex; gap: 2px; margin: 2px 0 6px 0;"):
            html.Div(
                "{{ cell.index }}",
                v_for="cell in timeline",
                key="cell.index",
                click="frame = cell.index",
                title=("`frame ${cell.index}: ${cell.status}${cell.recommended ? ' (recommended)' : ''}`",),
                classes="modiff-cell",
                raw_attrs=[':data-status="cell.status"', ':data-current="cell.current"'],
                style=("{ flex: 1, textAlign: 'center', cursor: 'pointer', color: 'white', fontSize: '11px', "
                       "lineHeight: '22px', background: cell.color, borderRadius: '3px', "
                       "outline: cell.current ? '3px solid #e6550d' : 'none', "
                       "fontWeight: cell.recommended ? 'bold' : 'normal' }",),
            )

    def _frame_numbers(self) -> None:
        with html.Div(id="modiff-status", style="display: flex; align-items: center; gap: 6px;"):
            html.Span(style=("{ width: '12px', height: '12px', borderRadius: '6px', background: status_color }",))
            html.Span("{{ status_text }}")
        with html.Div(classes="text-body-2 mt-1"):
            html.Div("{{ line }}", v_for="line in numbers", key="line")
        with html.Div(style="display: flex; flex-wrap: wrap; gap: 8px; margin-top: 4px;"):
            with html.Span(v_for="s in structures", key="s.name",
                           style="display: inline-flex; align-items: center; gap: 3px;"):
                html.Span(style=("{ width: '10px', height: '10px', background: s.color }",))
                html.Span("{{ s.name }}")
        with html.Div(classes="text-caption mt-1", style="color: #666;"):
            html.Div("{{ line }}", v_for="line in description.slice(1)", key="line")
