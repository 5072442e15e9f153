"""MoDiff: synthesise a 4D cine of respiratory or cardiac motion from one 3D volume (3D Slicer module).

The four classes of Slicer's scripted-module template, in order: module metadata (``MoDiff``),
GUI (``MoDiffWidget``), computation (``MoDiffLogic``), self-test (``MoDiffTest``).

The models never run inside Slicer's process: the logic checks the request, writes the input
volume to a temporary folder and runs ``PythonSlicer -m MoDiffLib generate ... --progress json``
in the background, then reads the cine it wrote and shows it as a sequence; planning runs
``modiff plan`` the same way. Both are one kind of job, :class:`MoDiffLib.mrml.jobs.SceneJob`,
which the logic starts and the widget follows with a timer. The logic shows no dialogs: it
raises or returns, and the widget asks and shows.
"""

import importlib
import logging
import os
import subprocess
import sys
import traceback
from typing import Annotated, Optional, Union


def _addLibraryFolderToPath():
    """Make ``MoDiffLib`` importable: beside this file (installed extension) or one folder up (source tree)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(folder, "MoDiffLib", "__init__.py")):
            if folder not in sys.path:
                sys.path.insert(0, folder)
            return folder
    return None


_addLibraryFolderToPath()

import qt  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from slicer import (  # noqa: E402
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _  # noqa: E402
from slicer.i18n import translate  # noqa: E402
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin  # noqa: E402

# Only Qt-free, numpy-only parts of MoDiffLib at load time: the module must load in a Slicer that
# lacks the generator's packages (scipy, torch, ...), which the first Apply offers to install.
from MoDiffLib.errors import Cancelled, InputError, MoDiffError  # noqa: E402
from MoDiffLib.frame_limits import MIN_FRAMES, frame_range  # noqa: E402
from MoDiffLib.process_runner import ProcessFailedError  # noqa: E402
from MoDiffLib.progress import progress_text  # noqa: E402

#: Python packages ``modiff plan`` needs besides what Slicer bundles: (import name, pip requirement).
PLANNING_PACKAGES = [
    ("nibabel", "nibabel"),
    ("nrrd", "pynrrd>=1.1,<2"),
    ("scipy", "scipy"),
    ("matplotlib", "matplotlib"),
]
#: Python packages ``modiff generate`` needs: the planner's and the models'. torch is installed
#: through the PyTorch extension when it is present (the build that matches the GPU driver).
REQUIRED_PACKAGES = [
    ("torch", "torch"),
    ("safetensors", "safetensors"),
    ("skimage", "scikit-image"),
] + PLANNING_PACKAGES
#: Compute devices (``modiff generate --device``; MoDiffLib.mrml.requests.DEVICES, which needs scipy to import).
DEVICES = ("auto", "cuda", "cpu")


#
# MoDiff
#


class MoDiff(ScriptedLoadableModule):
    """Module metadata shown in Slicer's module list and Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MoDiff")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Sequences")]
        self.parent.dependencies = ["Sequences"]
        self.parent.contributors = ["MoDiff contributors"]
        self.parent.helpText = _(
            "Turns one 3D volume (CT or MR) into a 4D cine of breathing or heartbeat motion, "
            "shown as a sequence you can play with the Sequences toolbar. "
            "Method: Mo-Diff image-to-video diffusion; a temporal differential diffusion model (TDDM) "
            "generates frame-to-frame difference fields from the input, and a latent video diffusion "
            "model generates the frames guided by them.<br><br>"
            "<b>Limits:</b> the motion is <i>synthetic</i>: a plausible motion for this anatomy learned "
            "from other patients, not a measurement of this patient. It is not a diagnosis and must not "
            "replace a 4D acquisition for treatment decisions. For research use only. "
            "Frame counts are limited to what the model was trained for; inputs are resampled to the "
            "model's grid and back, so fine detail may be smoothed.<br><br>"
            "Runs in a background process; Apply turns into Cancel while it runs. "
            "The first run offers to install PyTorch and the other Python packages it needs."
        )
        self.parent.acknowledgementText = _(
            "MoDiff implements the method of: X. You et al., <i>Temporal Differential Fields for 4D "
            "Motion Modeling via Image-to-Video Synthesis</i> (Mo-Diff), Shanghai Jiao Tong University and "
            "Technical University of Munich; reference code https://github.com/AlexYouXin/Mo-Diff. "
            "Please cite that paper when you use MoDiff in research."
        )


#
# MoDiffParameterNode
#


@parameterNodeWrapper
class MoDiffParameterNode:
    """Panel state, saved with the scene.

    inputVolume - the 3D scalar volume to animate.
    numberOfFrames - frames of the cine, including the input as frame 0 (MIN_FRAMES .. the model's
        maximum, MoDiffLib.frame_limits; the panel's slider is bounded by the selected model).
    amplitude - motion strength in the model's unit (breathing depth in mm, or ejection fraction
        in %); 0 lets the model choose (population mean / unconditioned).
    model - name of a model from Resources/Models.json; empty = the first (default) one.
    device - "auto" (GPU if available, CPU if the GPU runs out of memory), "cuda" or "cpu".
    steps - sampling steps; 0 = the model's default.
    seed - random seed; the same seed and settings give the same cine.
    outputSequence - sequence to fill; none = create (and on re-runs reuse) one per input.
    labels - label map or segmentation of the input to carry through every frame (optional;
        motion models): a segmentation sequence plays with the cine, and a plot shows the
        volume of every segment per frame.
    trace - table of a breathing trace to follow (optional; lung motion models): the diaphragm S
        position (mm) per frame, or time (s) and position columns resampled over one cycle.
    endFrame - volume on the input's grid that becomes the cine's last frame (optional; motion
        models, not with a trace): two-frame mode, e.g. end-exhale input to end-inhale.
    knownFrames - sequence of volumes on the input's grid indexed by frame number, e.g. items at
        3 and 6 of 10 frames (optional; motion models, not with endFrame): partial mode, those
        frames are kept and the motion passes through them.

    Puncture planning:
    planCine - the cine (sequence) to plan on.
    planEntry, planTarget - point lists whose first point is the needle entry / the target (frame 0).
    planRisk - label map of the structures to avoid (optional), on the cine's grid.
    planMargin - clearance (mm) the path must keep from every risk structure.
    planTolerance - how far (mm) the target may be from its planned position in a gating frame.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    numberOfFrames: Annotated[int, Minimum(MIN_FRAMES)] = 10
    amplitude: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    model: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 1
    outputSequence: vtkMRMLSequenceNode
    labels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    trace: vtkMRMLTableNode
    endFrame: vtkMRMLScalarVolumeNode
    knownFrames: vtkMRMLSequenceNode
    planCine: vtkMRMLSequenceNode
    planEntry: vtkMRMLMarkupsFiducialNode
    planTarget: vtkMRMLMarkupsFiducialNode
    planRisk: vtkMRMLLabelMapVolumeNode
    planMargin: Annotated[float, WithinRange(0.0, 100.0)] = 5.0
    planTolerance: Annotated[float, WithinRange(0.0, 100.0)] = 3.0


#
# MoDiffWidget
#


def _sentence(text: str) -> str:
    """A library message ("the frame count must be ...") as the sentence a dialog shows."""
    text = str(text).strip()
    return text[:1].upper() + text[1:]


class _BackgroundTask:
    """One background job of the panel (generation or planning) and the widgets that show it.

    A timer polls the job (:class:`MoDiffLib.mrml.jobs.SceneJob`); its progress events drive the
    progress bar and status label, its notices (e.g. a move to the CPU) the status label; when
    it is over, ``showResult(job, result)`` gets what the job loaded into the scene and returns the
    status text. Cancel stops the job, which leaves the scene unchanged.
    """

    POLL_INTERVAL_MS = 200

    def __init__(self, statusLabel, progressBar, showResult, refresh, showError, lostMessage: str, failedMessage: str):
        self.statusLabel = statusLabel
        self.progressBar = progressBar
        self.showResult = showResult
        self.refresh = refresh
        self.showError = showError
        self.lostMessage = lostMessage
        self.failedMessage = failedMessage
        self.job = None
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.poll)

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self, job) -> None:
        self.job = job
        self.progressBar.value = 0
        self.progressBar.show()
        self.statusLabel.text = _("Starting...")
        self.refresh()
        self.timer.start()

    def onEvent(self, event) -> None:
        if event.get("event") == "progress":
            percent, text = progress_text(event)
            self.progressBar.value = percent
            self.statusLabel.text = text

    def onNotice(self, message: str) -> None:
        self.statusLabel.text = _sentence(message)

    def requestCancel(self) -> None:
        """Ask the job to stop; :meth:`poll` reports it when it has."""
        self.job.cancel()
        self.statusLabel.text = _("Cancelling...")

    def poll(self) -> None:
        job = self.job
        if job is None:
            self.timer.stop()
            return
        try:
            if not job.poll():
                return
        except Exception as exc:
            self.stop(cancel=True)
            self.progressBar.hide()
            self.refresh()
            self.showError(self.lostMessage, exc)
            return
        self.timer.stop()
        self.job = None
        try:
            self.statusLabel.text = self.showResult(job, job.finish())
        except Cancelled:
            self.statusLabel.text = _("Cancelled; nothing was added to the scene.")
        except Exception as exc:
            self.statusLabel.text = _("Failed.")
            self.showError(self.failedMessage, exc)
        finally:
            self.progressBar.hide()
            self.refresh()

    def stop(self, cancel: bool) -> None:
        """Stop polling; with ``cancel`` also stop the job and remove what it wrote (no widget is
        touched: this also runs while the panel is being torn down)."""
        self.timer.stop()
        job, self.job = self.job, None
        if job is not None and cancel:
            job.cancel()
            job.discard()


class MoDiffWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: wires widgets to the parameter node, asks the user, shows errors, and
    follows the logic's background jobs."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._deviceDetected = False
        self._generation = None  # _BackgroundTask, made in setup()
        self._planning = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MoDiff.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MoDiffLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for model in self.logic.availableModels():
            self.ui.modelComboBox.addItem(model["title"], model["name"])
        if self.ui.modelComboBox.count == 0:
            self.ui.modelComboBox.addItem(_("(no bundled model found)"), "")
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        # The slider (whole numbers, see the .ui) spans MIN_FRAMES to the selected model's maximum
        # (onModelChanged). It is wired by hand: the parameter node wrapper binds ctkSliderWidget to
        # float parameters only.
        self.ui.numberOfFramesSliderWidget.minimum = MIN_FRAMES
        self.ui.numberOfFramesSliderWidget.valueChanged.connect(self.onNumberOfFramesChanged)
        self.ui.advancedCollapsibleButton.contentsCollapsedChanged.connect(self.onAdvancedToggled)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.progressBar.hide()

        self._generation = _BackgroundTask(
            self.ui.statusLabel, self.ui.progressBar, self._finishGeneration, self._checkCanApply, self._showError,
            _("Lost track of the generation process."), _("Generation failed."))

        # puncture planning
        self.ui.planningCollapsibleButton.contentsCollapsedChanged.connect(self.onPlanningToggled)
        for selector, placeWidget in ((self.ui.planEntrySelector, self.ui.planEntryPlaceWidget),
                                      (self.ui.planTargetSelector, self.ui.planTargetPlaceWidget)):
            placeWidget.setMRMLScene(slicer.mrmlScene)
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
            placeWidget.setCurrentNode(selector.currentNode())
            selector.currentNodeChanged.connect(placeWidget.setCurrentNode)
        self.ui.planButton.clicked.connect(self.onPlanButton)
        self.ui.recommendedFrameButton.clicked.connect(self.onRecommendedFrameButton)
        self.ui.planProgressBar.hide()
        self._planning = _BackgroundTask(
            self.ui.planStatusLabel, self.ui.planProgressBar, self._finishPlanning, self._checkCanApply,
            self._showError, _("Lost track of the planning process."), _("Planning failed."))

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self._stopTasks()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._stopTasks()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node -----------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[MoDiffParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._showNumberOfFrames()  # before the model's range applies to it
            index = max(self.ui.modelComboBox.findData(self._parameterNode.model), 0)
            self.ui.modelComboBox.setCurrentIndex(index)
            self.onModelChanged(index)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._showNumberOfFrames()
        self._checkCanApply()

    def _showNumberOfFrames(self) -> None:
        if self._parameterNode:
            slider = self.ui.numberOfFramesSliderWidget
            wasBlocked = slider.blockSignals(True)
            slider.value = self._parameterNode.numberOfFrames
            slider.blockSignals(wasBlocked)

    def onNumberOfFramesChanged(self, value) -> None:
        if self._parameterNode and self._parameterNode.numberOfFrames != int(round(value)):
            self._parameterNode.numberOfFrames = int(round(value))

    def onModelChanged(self, index) -> None:
        name = self.ui.modelComboBox.itemData(index) or ""
        info = self.logic.modelInfo(name or None)
        if self._parameterNode and self._parameterNode.model != name:
            self._parameterNode.model = name
        try:
            minimum, maximum = self.logic.frameRange(name or None)
        except MoDiffError as exc:  # e.g. an unusable model folder: Apply reports it again
            self.ui.statusLabel.text = _sentence(exc)
        else:
            slider = self.ui.numberOfFramesSliderWidget
            slider.maximum = maximum
            if self._parameterNode and self._parameterNode.numberOfFrames > maximum:
                self._parameterNode.numberOfFrames = maximum  # e.g. a scene saved with a larger model
            slider.toolTip = _("Frames of the cine, frame 0 being the input ({minimum} to {maximum} for this model).").format(
                minimum=minimum, maximum=maximum)
        self.ui.amplitudeUnitLabel.text = self.logic.amplitudeLabel(info)
        amplitude = (info or {}).get("amplitude")
        if amplitude:
            self.ui.amplitudeSpinBox.setMaximum(float(amplitude.get("max", self.ui.amplitudeSpinBox.maximum)))
        if info and info.get("sampling_steps"):
            self.ui.stepsSpinBox.specialValueText = _("model default ({steps})").format(steps=info["sampling_steps"])

    def onAdvancedToggled(self, collapsed) -> None:
        if not collapsed and not self._deviceDetected:
            self._deviceDetected = True
            with slicer.util.WaitCursor():
                self.ui.detectedDeviceLabel.text = self.logic.detectDevice()

    def _checkCanApply(self) -> None:
        self._checkCanPlan()
        if self._generation is not None and self._generation.running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the generation; nothing is added to the scene.")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Generate cine")
        if self._parameterNode and self._parameterNode.inputVolume:
            self.ui.applyButton.toolTip = _("Generate the 4D cine of the input volume.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select an input volume.")
            self.ui.applyButton.enabled = False

    # -- Python packages -------------------------------------------------------------------------------
    def _ensurePackages(self, packages=REQUIRED_PACKAGES) -> bool:
        """Install the missing ones of ``packages`` after asking the user once; False if the user declined.

        torch comes from the PyTorch extension's installer when that extension is present (it
        picks the build that matches the GPU driver), else from pip, as the other packages.
        """
        missing = self.logic.missingPackages(packages)
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
            _("MoDiff needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
              "Download and install them now? This may take several minutes.").format(packages=", ".join(missing)),
            windowTitle=_("MoDiff"),
        ):
            return False
        with slicer.util.WaitCursor():
            if "torch" in missing:
                missing.remove("torch")
                self._installTorch()
            if missing:
                slicer.util.pip_install(missing)
        importlib.invalidate_caches()
        still = self.logic.missingPackages(packages)
        if still:
            raise InputError(f"these Python packages could not be installed: {', '.join(still)}; "
                             "the Python console shows why")
        return True

    @staticmethod
    def _installTorch() -> None:
        """torch through the PyTorch extension (PyTorchUtils) when it is installed, else pip."""
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.pip_install("torch")
            return
        # The user already agreed to the whole list: the extension must not ask a second time.
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
            raise InputError("PyTorch was not installed; install it in Utilities > PyTorch Utils and try again")

    # -- running --------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._generation.running:
            self._generation.requestCancel()
            self.ui.applyButton.enabled = False
            return
        try:
            if not self._ensurePackages():
                self.ui.statusLabel.text = _("Python packages not installed; nothing was generated.")
                return
            p = self._parameterNode
            job = self.logic.startGenerate(
                p.inputVolume,
                numberOfFrames=p.numberOfFrames,
                model=p.model or None,
                steps=p.steps or None,
                seed=p.seed,
                device=p.device,
                amplitude=p.amplitude or None,
                outputSequence=p.outputSequence,
                labelsNode=p.labels,
                traceNode=p.trace,
                endNode=p.endFrame,
                knownSequenceNode=p.knownFrames,
                onEvent=self._generation.onEvent,
                onNotice=self._generation.onNotice,
            )
        except Exception as exc:
            self._showError(_("Could not start the generation."), exc)
            return
        self._generation.start(job)

    def _finishGeneration(self, job, sequenceNode) -> str:
        """Show the finished generation's cine; the status text."""
        from MoDiffLib.mrml import cine_warnings, find_browser, show_in_slice_views

        show_in_slice_views(find_browser(slicer.mrmlScene, sequenceNode))
        labels = job.loaded.get("labels")
        if labels is not None:  # the segments' volume curves beside the views
            slicer.modules.plots.logic().ShowChartInLayout(labels.chart)
        status = _("Done: {frames} frames in {seconds:.0f} s.").format(
            frames=sequenceNode.GetNumberOfDataNodes(), seconds=job.elapsed_s
        )
        for notice in job.notices:  # e.g. the GPU ran out of memory and the CPU took over
            status += "\n" + _sentence(notice) + "."
        for warning in cine_warnings(sequenceNode):  # e.g. an input unlike the model's training data
            logging.warning(f"MoDiff: {warning}")
            status += "\n" + _("Warning: {warning}").format(warning=warning)
        return status

    def _stopTasks(self) -> None:
        for task in (self._generation, self._planning):
            if task is not None:
                task.stop(cancel=True)

    # -- puncture planning ---------------------------------------------------------------------------
    def onPlanningToggled(self, collapsed) -> None:
        """Opening the section: propose the latest cine of the input and point lists to place on frame 0."""
        if collapsed or not self._parameterNode:
            return
        p = self._parameterNode
        if not p.planCine and p.inputVolume:
            from MoDiffLib.mrml import find_cine

            p.planCine = find_cine(slicer.mrmlScene, p.inputVolume)
        if not p.planEntry:
            p.planEntry = self.logic.createPointList("Entry", (0.2, 0.6, 1.0))
        if not p.planTarget:
            p.planTarget = self.logic.createPointList("Target", (1.0, 1.0, 0.2))
        if p.planCine:
            try:
                self.logic.showFrame(p.planCine, 0)  # points are placed on frame 0
            except MoDiffError as exc:
                self.ui.planStatusLabel.text = _sentence(exc)

    def _checkCanPlan(self) -> None:
        if self._planning is not None and self._planning.running:
            self.ui.planButton.text = _("Cancel")
            self.ui.planButton.toolTip = _("Stop the planning; nothing is added to the scene.")
            self.ui.planButton.enabled = True
            return
        self.ui.planButton.text = _("Plan puncture")
        p = self._parameterNode
        ready = bool(p and p.planCine and p.planEntry and p.planTarget)
        self.ui.planButton.enabled = ready
        self.ui.planButton.toolTip = (
            _("Estimate the cine's motion and check the path entry -> target in every frame.") if ready
            else _("Select a cine and place the entry and the target.")
        )

    def onPlanButton(self) -> None:
        if self._planning.running:
            self._planning.requestCancel()
            self.ui.planButton.enabled = False
            return
        p = self._parameterNode
        try:
            if not self._ensurePackages(PLANNING_PACKAGES):
                self.ui.planStatusLabel.text = _("Python packages not installed; nothing was planned.")
                return
            job = self.logic.startPlan(p.planCine, p.planEntry, p.planTarget, p.planRisk,
                                       marginMm=p.planMargin, toleranceMm=p.planTolerance,
                                       onEvent=self._planning.onEvent)
        except Exception as exc:
            self._showError(_("Could not start the planning."), exc)
            return
        self.ui.planResultLabel.text = ""
        self.ui.recommendedFrameButton.enabled = False
        self._planning.start(job)

    def _finishPlanning(self, job, result) -> str:
        """Summarise the finished plan (its overlays are in the scene); the status text."""
        _nodes, plan = result
        self.ui.planResultLabel.text = self.logic.planSummaryText(plan)
        recommended = plan.recommended_frame
        self.ui.recommendedFrameButton.enabled = recommended is not None
        if recommended is not None:
            self.ui.recommendedFrameButton.text = _("Show recommended frame ({frame})").format(frame=recommended)
        return _("Done in {seconds:.0f} s.").format(seconds=job.elapsed_s)

    def onRecommendedFrameButton(self) -> None:
        try:
            self.logic.showRecommendedFrame(self._parameterNode.planCine)
        except Exception as exc:
            self._showError(_("Could not show the recommended frame."), exc)

    # -- errors ----------------------------------------------------------------------------------------
    def _showError(self, context: str, exc: Exception) -> None:
        """One dialog that says what went wrong in words the user can act on; details hold the rest."""
        if isinstance(exc, ProcessFailedError):
            # The child's own "modiff: error:" line; its stderr (traceback, log) as details.
            message = _sentence(exc)
            from MoDiffLib.mrml.jobs import gpu_out_of_memory

            if gpu_out_of_memory(exc.stderr):  # only with device "cuda": "auto" moves to the CPU itself
                message = _("The GPU ran out of memory. Choose fewer frames, or the CPU (Advanced > Device).")
            slicer.util.errorDisplay(message, windowTitle=_("MoDiff"), detailedText=exc.stderr)
        elif isinstance(exc, MoDiffError):
            # A user-level problem: the message is one sentence saying what to change.
            slicer.util.errorDisplay(_sentence(exc), windowTitle=_("MoDiff"))
        elif isinstance(exc, subprocess.CalledProcessError):
            # pip (package installation) failed: name what it tried, not its exit status.
            command = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd or []))
            slicer.util.errorDisplay(
                _("Installing Python packages failed; the Python console shows pip's messages."),
                windowTitle=_("MoDiff"), detailedText=f"{command}\n{exc.output or ''}{exc.stderr or ''}")
        else:
            logging.error(traceback.format_exc())
            slicer.util.errorDisplay(f"{context}\n{exc}", windowTitle=_("MoDiff"), detailedText=traceback.format_exc())


#
# MoDiffLogic
#


class MoDiffLogic(ScriptedLoadableModuleLogic):
    """Cines from volume nodes and puncture plans on cines; no GUI code, no dialogs (usable from the
    Python console and tests): bad input raises InputError, what to ask the user is the widget's.

    Generation and planning run as :class:`MoDiffLib.mrml.jobs.SceneJob` s: ``startGenerate`` /
    ``startPlan`` check the request and start the job; ``job.poll()`` follows it,
    ``job.finish()`` adds the result to the scene, ``job.cancel()`` stops it. ``generate`` and
    ``plan`` do all of that, blocking. Example::

        logic = slicer.util.getModuleLogic("MoDiff")
        sequenceNode = logic.generate(getNode("CTChest"), numberOfFrames=10, device="cpu")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._models = None

    def getParameterNode(self):
        return MoDiffParameterNode(super().getParameterNode())

    # -- models -----------------------------------------------------------------------------------------
    def availableModels(self) -> list:
        """Registered models (``MoDiffLib.registry``: Resources/Models.json plus user registries),
        each a dict with at least name, title, kind, sampling_steps. An unreadable registry gives an
        empty list and a warning (the command line then reports the problem on Apply)."""
        if self._models is None:
            import dataclasses

            from MoDiffLib.registry import list_models

            try:
                self._models = [dataclasses.asdict(entry) for entry in list_models()]
            except MoDiffError as exc:
                logging.warning(f"MoDiff: cannot read the model registry: {exc}")
                self._models = []
        return self._models

    def modelInfo(self, name=None):
        """The Models.json entry of ``name`` (``None``: the default, first one), or None if unknown."""
        models = self.availableModels()
        if not name:
            return models[0] if models else None
        return next((m for m in models if m["name"] == name), None)

    @staticmethod
    def frameRange(model=None) -> tuple:
        """``(fewest, most)`` frames ``model`` makes (``None``: the default model), from MoDiffLib.frame_limits."""
        return frame_range(model)

    @staticmethod
    def amplitudeLabel(info) -> str:
        """Unit text of the amplitude for a model: its amplitude unit, else by kind (breathing / cardiac)."""
        amplitude = (info or {}).get("amplitude") or {}
        if amplitude.get("unit"):
            what = str(amplitude.get("name", "")).replace("_", " ")
            return f"{amplitude['unit']} ({what}); 0 = auto" if what else f"{amplitude['unit']}; 0 = auto"
        kind = str((info or {}).get("kind", "")).lower()
        if kind in ("lung", "respiratory", "breathing"):
            return _("mm breathing depth (diaphragm travel); 0 = auto")
        if kind in ("cardiac", "heart"):
            return _("% ejection fraction; 0 = auto")
        return _("0 = auto")

    # -- Python packages ----------------------------------------------------------------------------------
    @staticmethod
    def missingPackages(packages=REQUIRED_PACKAGES) -> list:
        """pip requirements of ``packages`` (default: all that generation needs) that are not
        importable (checked without importing them)."""
        import importlib.util

        return [requirement for module, requirement in packages if importlib.util.find_spec(module) is None]

    def _checkPackages(self, packages=REQUIRED_PACKAGES) -> None:
        missing = self.missingPackages(packages)
        if missing:
            raise InputError(f"missing Python packages: {', '.join(missing)}; press Apply (or Plan puncture) in the "
                             "MoDiff module to install them")

    def detectDevice(self) -> str:
        """A line for the panel: which device 'auto' would use."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return _("PyTorch not installed yet (offered on the first run)")
        try:
            import torch

            if torch.cuda.is_available():
                return _("GPU: {name} (the CPU takes over if it runs out of memory)").format(
                    name=torch.cuda.get_device_name(0))
            return _("CPU only (no CUDA GPU found; generation will be slower)")
        except Exception as exc:  # a broken torch install must not break the panel
            return _("PyTorch cannot be loaded: {error}").format(error=exc)

    @staticmethod
    def _temporaryFolder():
        app = getattr(slicer, "app", None)
        folder = app.temporaryPath if app is not None else None
        return folder if folder and os.path.isdir(folder) else None

    # -- generation -----------------------------------------------------------------------------------------
    def startGenerate(self, volumeNode, numberOfFrames=10, model=None, steps=None, seed=None, device="auto",
                      amplitude=None, outputSequence=None, onEvent=None, onLog=None, onNotice=None, labelsNode=None,
                      traceNode=None, endNode=None, knownSequenceNode=None):
        """Check the request and start generating in the background; returns the running SceneJob.

        Poll it (``job.poll()`` from a timer; ``onEvent`` receives the progress events, ``onNotice``
        e.g. a move to the CPU), then ``job.finish()`` returns the sequence node. The scene is not
        touched until then. With ``labelsNode`` (a label map or segmentation of the input) the
        labels are carried through every frame: ``job.loaded["labels"]`` then holds the
        segmentation sequence, the volume table and the plot chart (MoDiffLib.mrml.labels.LabelNodes).
        With ``traceNode`` (a table node: diaphragm position per frame) the motion follows that
        breathing trace (``modiff generate --trace``). With ``endNode`` (a volume on the input's grid)
        it becomes the last frame (``--end``); with ``knownSequenceNode`` (a sequence of volumes
        indexed by frame number, e.g. 3 and 6 of 10) those frames are kept and the motion passes
        through them (``--known``).

        Raises:
            InputError: invalid inputs, a missing model or missing Python packages (nothing was started).
        """
        self._checkPackages()
        from MoDiffLib.mrml.jobs import generate_job
        from MoDiffLib.mrml.requests import generate_request

        request = generate_request(volumeNode, numberOfFrames, model, steps, seed, device, amplitude, outputSequence,
                                   labels_node=labelsNode, trace_node=traceNode, end_node=endNode,
                                   known_sequence_node=knownSequenceNode)
        return generate_job(request, self._temporaryFolder()).start(onEvent, onLog, onNotice)

    def generate(self, volumeNode, numberOfFrames=10, model=None, steps=None, seed=None, device="auto",
                 amplitude=None, outputSequence=None, onEvent=None, labelsNode=None, traceNode=None, endNode=None,
                 knownSequenceNode=None):
        """Generate a cine of ``volumeNode`` and add it to its scene (blocking); returns the sequence node.

        Inputs are checked first: bad input raises InputError and leaves the scene unchanged.
        With ``labelsNode`` the labels' nodes are found with ``MoDiffLib.mrml.labels.find_label_nodes``.
        """
        return self.startGenerate(volumeNode, numberOfFrames, model, steps, seed, device, amplitude, outputSequence,
                                  onEvent, labelsNode=labelsNode, traceNode=traceNode, endNode=endNode,
                                  knownSequenceNode=knownSequenceNode).finish()

    # -- puncture planning ----------------------------------------------------------------------------------
    def createPointList(self, name, color=None):
        """A new, empty point list for the user to place one point in (entry or target)."""
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", slicer.mrmlScene.GenerateUniqueName(name))
        node.CreateDefaultDisplayNodes()
        if color is not None:
            node.GetDisplayNode().SetSelectedColor(*color)
        return node

    def showFrame(self, cineSequenceNode, index: int) -> int:
        """Show frame ``index`` of the cine (stops playback)."""
        from MoDiffLib.mrml import select_frame
        from MoDiffLib.mrml.requests import browser_of

        return select_frame(browser_of(cineSequenceNode), index)

    def showRecommendedFrame(self, cineSequenceNode) -> int:
        """Show the frame the last plan of this cine recommends (one click in the panel)."""
        from MoDiffLib.mrml import recommended_frame_of
        from MoDiffLib.mrml.requests import browser_of

        browser = browser_of(cineSequenceNode)
        frame = recommended_frame_of(browser.GetScene(), browser)
        if frame is None:
            raise InputError("the plan of this cine recommends no frame (no gating window); plan again with other points")
        return self.showFrame(cineSequenceNode, frame)

    def startPlan(self, cineSequenceNode, entryNode, targetNode, riskLabelNode=None, marginMm=5.0, toleranceMm=3.0,
                  onEvent=None, onLog=None):
        """Check the request and start ``modiff plan`` on the cine in the background; returns the running SceneJob.

        Poll it, then ``job.finish()`` returns ``(PlanNodes, PuncturePlan)``. The scene is not touched until then.

        Raises:
            InputError: invalid inputs or missing Python packages (nothing was started).
        """
        self._checkPackages(PLANNING_PACKAGES)
        from MoDiffLib.mrml.jobs import plan_job
        from MoDiffLib.mrml.requests import plan_request

        request = plan_request(cineSequenceNode, entryNode, targetNode, riskLabelNode, marginMm, toleranceMm)
        return plan_job(request, self._temporaryFolder()).start(onEvent, onLog)

    def plan(self, cineSequenceNode, entryNode, targetNode, riskLabelNode=None, marginMm=5.0, toleranceMm=3.0,
             onEvent=None):
        """Plan a puncture on the cine and show the overlays (blocking); returns ``(PlanNodes, PuncturePlan)``."""
        return self.startPlan(cineSequenceNode, entryNode, targetNode, riskLabelNode, marginMm, toleranceMm,
                              onEvent).finish()

    @staticmethod
    def planSummaryText(plan) -> str:
        """A few lines for the panel: motion amplitude, gating frames, recommended frame, warnings."""
        s = plan.summary
        a = s["amplitude_mm"]
        lines = [
            _("Target motion: LR {lr:.1f} mm, AP {ap:.1f} mm, SI {si:.1f} mm").format(lr=a["LR"], ap=a["AP"], si=a["SI"]),
            _("Path clear in frames: {frames}").format(frames=", ".join(map(str, s["clear_frames"])) or _("none")),
            _("Gating frames: {frames}").format(frames=", ".join(map(str, s["gating_frames"])) or _("none")),
            _("Recommended frame: {frame}").format(
                frame=s["recommended_frame"] if s["recommended_frame"] is not None else _("none")),
        ]
        return "\n".join(lines + list(s.get("warnings", [])))


#
# MoDiffTest
#


class MoDiffTest(ScriptedLoadableModuleTest):
    """Self-test: the shared MRML scenarios (the module's test package, MoDiffTesting/mrml_scenarios.py,
    which pytest runs too) on slicer.mrmlScene, plus the logic's own checks. Run from the Self Tests
    module or with
    ``Slicer --testing --python-code "import slicer.testing; slicer.testing.runUnitTest(['MoDiff'])"``.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (
            self.test_volume_round_trip,
            self.test_cine_geometry,
            self.test_browser_steps_frames,
            self.test_provenance_attributes,
            self.test_rerun_replaces,
            self.test_save_and_reload,
            self.test_left_handed_reload_same_anatomy,
            self.test_bad_inputs_leave_scene_unchanged,
            self.test_logic_rejects_bad_input_before_running,
            self.test_labels_follow_the_cine,
            self.test_labels_bad_inputs,
            self.test_plan_overlays_follow_the_cine,
            self.test_plan_rerun_replaces,
            self.test_plan_bad_inputs_leave_scene_unchanged,
            self.test_logic_rejects_bad_plan_requests,
            self.test_job_bad_requests_start_nothing,
            self.test_bundled_model_end_to_end,
            self.test_job_generate_adds_the_cine,
            self.test_job_generate_carries_labels,
            self.test_job_generate_follows_a_trace_table,
            self.test_job_generate_passes_through_known_frames,
            self.test_job_generate_ends_at_the_end_frame,
            self.test_known_frames_bad_inputs,
            self.test_job_generate_cancel_leaves_scene_unchanged,
            self.test_job_plan_shows_the_plan,
        ):
            self.setUp()
            test()

    @staticmethod
    def _scenarios():
        """The shared scenarios: the module's test package, installed beside this file."""
        from MoDiffTesting import mrml_scenarios

        return mrml_scenarios

    def _withPackages(self, scenario) -> None:
        """Run a scenario that needs the generator's Python packages, or say why it is skipped."""
        missing = MoDiffLogic.missingPackages()
        if missing:
            self.delayDisplay(f"Skipped {scenario.__name__}: Python packages {', '.join(missing)} are not installed "
                              "(the first Apply offers them)")
            return
        scenario(slicer.mrmlScene)

    def test_volume_round_trip(self):
        self._scenarios().scenario_volume_round_trip(slicer.mrmlScene)

    def test_cine_geometry(self):
        self._scenarios().scenario_cine_geometry(slicer.mrmlScene)

    def test_browser_steps_frames(self):
        self._scenarios().scenario_browser_steps_frames(slicer.mrmlScene)

    def test_provenance_attributes(self):
        self._scenarios().scenario_provenance_attributes(slicer.mrmlScene)

    def test_rerun_replaces(self):
        self._scenarios().scenario_rerun_replaces(slicer.mrmlScene)

    def test_save_and_reload(self):
        self._scenarios().scenario_save_and_reload(slicer.mrmlScene)

    def test_left_handed_reload_same_anatomy(self):
        self._scenarios().scenario_left_handed_reload_same_anatomy(slicer.mrmlScene)

    def test_bad_inputs_leave_scene_unchanged(self):
        self._scenarios().scenario_bad_inputs_leave_scene_unchanged(slicer.mrmlScene)

    def test_logic_rejects_bad_input_before_running(self):
        """The logic's generate refuses bad requests with InputError before any process starts; the scene is unchanged."""
        if MoDiffLogic.missingPackages():  # the logic asks for the packages before it checks inputs
            self.delayDisplay("Skipped the logic input checks: Python packages are not installed")
            return
        scenarios = self._scenarios()
        inputNode = scenarios.add_input(slicer.mrmlScene)
        logic = MoDiffLogic()
        low, high = logic.frameRange()
        count = slicer.mrmlScene.GetNumberOfNodes()
        for kwargs in ({"volumeNode": None}, {"numberOfFrames": low - 1}, {"numberOfFrames": high + 1},
                       {"steps": 0}, {"seed": -1}, {"device": "tpu"}, {"amplitude": -1.0}, {"model": "no-such-model"}):
            arguments = dict({"volumeNode": inputNode}, **kwargs)
            with self.assertRaises(InputError, msg=str(kwargs)):
                logic.generate(**arguments)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("MoDiff logic input checks passed")

    def test_labels_follow_the_cine(self):
        self._scenarios().scenario_labels_follow_the_cine(slicer.mrmlScene)

    def test_labels_bad_inputs(self):
        self._scenarios().scenario_labels_bad_inputs(slicer.mrmlScene)

    def test_plan_overlays_follow_the_cine(self):
        self._scenarios().scenario_plan_overlays_follow_the_cine(slicer.mrmlScene)

    def test_plan_rerun_replaces(self):
        self._scenarios().scenario_plan_rerun_replaces(slicer.mrmlScene)

    def test_plan_bad_inputs_leave_scene_unchanged(self):
        self._scenarios().scenario_plan_bad_inputs_leave_scene_unchanged(slicer.mrmlScene)

    def test_logic_rejects_bad_plan_requests(self):
        """The logic's plan refuses missing or bad points and a non-cine before any process starts."""
        if MoDiffLogic.missingPackages(PLANNING_PACKAGES):
            self.delayDisplay("Skipped the logic planning checks: Python packages are not installed")
            return
        scenarios = self._scenarios()
        from MoDiffLib.mrml import build_cine

        seq, _fields, entry, target, _risk = scenarios.make_plan_case(4)
        inputNode = scenarios.add_input(slicer.mrmlScene, scenarios.Volume(seq.frames[0], seq.geometry, "CT"))
        cineNode, _browser = build_cine(slicer.mrmlScene, seq, inputNode, {})
        logic = MoDiffLogic()
        entryNode = logic.createPointList("Entry")
        targetNode = logic.createPointList("Target")
        count = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InputError):  # no points placed yet
            logic.plan(cineNode, entryNode, targetNode)
        entryNode.AddControlPoint(*entry)
        targetNode.AddControlPoint(*entry)
        with self.assertRaises(InputError):  # entry equal to target
            logic.plan(cineNode, entryNode, targetNode)
        targetNode.SetNthControlPointPosition(0, *target)
        with self.assertRaises(InputError):  # not a cine
            logic.plan(None, entryNode, targetNode)
        with self.assertRaises(InputError):  # negative margin
            logic.plan(cineNode, entryNode, targetNode, marginMm=-1.0)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("MoDiff planning input checks passed")

    def test_job_bad_requests_start_nothing(self):
        self._withPackages(self._scenarios().scenario_job_bad_requests_start_nothing)

    def test_bundled_model_end_to_end(self):
        self._withPackages(self._scenarios().scenario_bundled_model_end_to_end)

    def test_job_generate_adds_the_cine(self):
        self._withPackages(self._scenarios().scenario_job_generate_adds_the_cine)

    def test_job_generate_carries_labels(self):
        self._withPackages(self._scenarios().scenario_job_generate_carries_labels)

    def test_job_generate_follows_a_trace_table(self):
        self._withPackages(self._scenarios().scenario_job_generate_follows_a_trace_table)

    def test_job_generate_passes_through_known_frames(self):
        self._withPackages(self._scenarios().scenario_job_generate_passes_through_known_frames)

    def test_job_generate_ends_at_the_end_frame(self):
        self._withPackages(self._scenarios().scenario_job_generate_ends_at_the_end_frame)

    def test_known_frames_bad_inputs(self):
        self._withPackages(self._scenarios().scenario_known_frames_bad_inputs)

    def test_job_generate_cancel_leaves_scene_unchanged(self):
        self._withPackages(self._scenarios().scenario_job_generate_cancel_leaves_scene_unchanged)

    def test_job_plan_shows_the_plan(self):
        self._withPackages(self._scenarios().scenario_job_plan_shows_the_plan)
