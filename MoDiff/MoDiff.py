"""MoDiff: synthesise a 4D cine of respiratory or cardiac motion from one 3D volume (3D Slicer module).

The four classes of Slicer's scripted-module template, in order: module metadata (``MoDiff``),
GUI (``MoDiffWidget``), computation (``MoDiffLogic``), self-test (``MoDiffTest``).

The models never run inside Slicer's process: the logic writes the input volume to a temporary
file and runs ``PythonSlicer -m MoDiffLib generate ... --progress json`` in the background
(:mod:`MoDiffLib.process_runner`), then reads the cine it wrote and shows it as a sequence
(:mod:`MoDiffLib.mrml`).
"""

import json
import logging
import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable
from typing import Annotated, Optional


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
    vtkMRMLSequenceNode,
)
from slicer.i18n import tr as _  # noqa: E402
from slicer.i18n import translate  # noqa: E402
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin  # noqa: E402

from MoDiffLib.errors import Cancelled, InputError, MoDiffError, OutputError  # noqa: E402
from MoDiffLib.process_runner import (  # noqa: E402
    ProcessFailedError,
    ProcessRunner,
    child_environment,
    generate_command,
    library_folder,
    progress_text,
)

#: Python packages the generator needs besides what Slicer bundles: (import name, pip requirement).
#: torch is installed through the PyTorch extension when it is present (right CUDA build).
REQUIRED_PACKAGES = [
    ("torch", "torch"),
    ("nibabel", "nibabel"),
    ("safetensors", "safetensors"),
    ("skimage", "scikit-image"),
    ("scipy", "scipy"),
    ("matplotlib", "matplotlib"),
]
#: Frame count limit when the model database says nothing (the paper's models pad to 16 frames).
DEFAULT_MAX_FRAMES = 16
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
    numberOfFrames - frames of the cine, including the input as frame 0 (2 .. the model's maximum).
    amplitude - motion strength in the model's unit (breathing depth in mm, or ejection fraction
        in %); 0 lets the model choose (population mean / unconditioned).
    model - name of a model from Resources/Models.json; empty = the first (default) one.
    device - "auto" (GPU if available), "cuda" or "cpu".
    steps - sampling steps; 0 = the model's default.
    seed - random seed; the same seed and settings give the same cine.
    outputSequence - sequence to fill; none = create (and on re-runs reuse) one per input.

    Puncture planning:
    planCine - the cine (sequence) to plan on.
    planEntry, planTarget - point lists whose first point is the needle entry / the target (frame 0).
    planRisk - label map of the structures to avoid (optional), on the cine's grid.
    planMargin - clearance (mm) the path must keep from every risk structure.
    planTolerance - how far (mm) the target may be from its planned position in a gating frame.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    numberOfFrames: Annotated[int, WithinRange(2, 64)] = 10
    amplitude: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    model: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 1
    outputSequence: vtkMRMLSequenceNode
    planCine: vtkMRMLSequenceNode
    planEntry: vtkMRMLMarkupsFiducialNode
    planTarget: vtkMRMLMarkupsFiducialNode
    planRisk: vtkMRMLLabelMapVolumeNode
    planMargin: Annotated[float, WithinRange(0.0, 100.0)] = 5.0
    planTolerance: Annotated[float, WithinRange(0.0, 100.0)] = 3.0


#
# MoDiffWidget
#


@dataclass(eq=False)
class _BackgroundTask:
    """One background process of the panel (generation or planning) and the widgets that show it.

    A timer polls the process; its JSON progress events drive the progress bar and status label;
    when it ends, ``finish(runner)`` turns its output into scene nodes and returns the status text.
    Cancel kills the process tree and ``discard(runner)`` removes what it wrote, so a cancelled or
    failed run leaves the scene unchanged.
    """

    POLL_INTERVAL_MS = 200

    logic: Any
    statusLabel: Any
    progressBar: Any
    finish: Callable
    discard: Callable
    refresh: Callable
    showError: Callable
    lostMessage: str
    failedMessage: str
    runner: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.poll)

    @property
    def running(self) -> bool:
        return self.runner is not None

    def start(self, runner: ProcessRunner) -> None:
        self.runner = runner
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

    def requestCancel(self) -> None:
        """Ask the process to stop; :meth:`poll` reports it when it has."""
        self.logic.cancel(self.runner)
        self.statusLabel.text = _("Cancelling...")

    def poll(self) -> None:
        runner = self.runner
        if runner is None:
            self.timer.stop()
            return
        try:
            if not runner.poll():
                return
        except Exception as exc:
            self.stop(cancel=True)
            self.progressBar.hide()
            self.refresh()
            self.showError(self.lostMessage, exc)
            return
        self.timer.stop()
        self.runner = None
        try:
            self.statusLabel.text = self.finish(runner)
        except Cancelled:
            self.statusLabel.text = _("Cancelled; nothing was added to the scene.")
        except Exception as exc:
            self.statusLabel.text = _("Failed.")
            self.showError(self.failedMessage, exc)
        finally:
            self.progressBar.hide()
            self.refresh()

    def stop(self, cancel: bool) -> None:
        """Stop polling; with ``cancel`` also stop the process and remove what it wrote (no widget
        is touched: this also runs while the panel is being torn down)."""
        self.timer.stop()
        runner, self.runner = self.runner, None
        if runner is not None and cancel:
            self.logic.cancel(runner)
            self.discard(runner)


class MoDiffWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: wires widgets to the parameter node and runs the logic in the background."""

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
        self.ui.advancedCollapsibleButton.contentsCollapsedChanged.connect(self.onAdvancedToggled)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.progressBar.hide()

        self._generation = _BackgroundTask(
            self.logic, self.ui.statusLabel, self.ui.progressBar, self._finishGeneration, self.logic.discard,
            self._checkCanApply, self._showError, _("Lost track of the generation process."), _("Generation failed."))

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
            self.logic, self.ui.planStatusLabel, self.ui.planProgressBar, self._finishPlanning, self.logic.discardPlan,
            self._checkCanPlan, self._showError, _("Lost track of the planning process."), _("Planning failed."))

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            index = max(self.ui.modelComboBox.findData(self._parameterNode.model), 0)
            self.ui.modelComboBox.setCurrentIndex(index)
            self.onModelChanged(index)
        self._checkCanApply()

    def onModelChanged(self, index) -> None:
        name = self.ui.modelComboBox.itemData(index) or ""
        info = self.logic.modelInfo(name or None)
        if self._parameterNode and self._parameterNode.model != name:
            self._parameterNode.model = name
        maxFrames = info["max_frames"] if info else DEFAULT_MAX_FRAMES
        self.ui.numberOfFramesSpinBox.setMaximum(maxFrames)
        self.ui.numberOfFramesSpinBox.toolTip = _("Frames of the cine, frame 0 being the input (2 to {maximum}).").format(
            maximum=maxFrames
        )
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

    def _checkCanApply(self, caller=None, event=None) -> None:
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

    # -- running --------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._generation.running:
            self._generation.requestCancel()
            self.ui.applyButton.enabled = False
            return
        try:
            if not self.logic.ensureDependencies(askConfirmation=True):
                self.ui.statusLabel.text = _("Python packages not installed; nothing was generated.")
                return
            p = self._parameterNode
            runner = self.logic.startGenerate(
                p.inputVolume,
                numberOfFrames=p.numberOfFrames,
                model=p.model or None,
                steps=p.steps or None,
                seed=p.seed,
                device=p.device,
                amplitude=p.amplitude or None,
                outputSequence=p.outputSequence,
                onEvent=self._generation.onEvent,
            )
        except Exception as exc:
            self._showError(_("Could not start the generation."), exc)
            return
        self._generation.start(runner)

    def _finishGeneration(self, runner: ProcessRunner) -> str:
        """Add the finished generation's cine to the scene and show it; the status text."""
        sequenceNode = self.logic.finishGenerate(runner)
        from MoDiffLib.mrml import cine_warnings, find_browser, show_in_slice_views

        show_in_slice_views(find_browser(slicer.mrmlScene, sequenceNode))
        status = _("Done: {frames} frames in {seconds:.0f} s.").format(
            frames=sequenceNode.GetNumberOfDataNodes(), seconds=runner.elapsed_s
        )
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
            self.logic.showFrame(p.planCine, 0)  # points are placed on frame 0

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
            runner = self.logic.startPlan(p.planCine, p.planEntry, p.planTarget, p.planRisk,
                                          marginMm=p.planMargin, toleranceMm=p.planTolerance,
                                          onEvent=self._planning.onEvent)
        except Exception as exc:
            self._showError(_("Could not start the planning."), exc)
            return
        self.ui.planResultLabel.text = ""
        self.ui.recommendedFrameButton.enabled = False
        self._planning.start(runner)

    def _finishPlanning(self, runner: ProcessRunner) -> str:
        """Add the finished plan's overlays to the scene and summarise it; the status text."""
        nodes, plan = self.logic.finishPlan(runner)
        self.ui.planResultLabel.text = self.logic.planSummaryText(plan)
        recommended = plan.recommended_frame
        self.ui.recommendedFrameButton.enabled = recommended is not None
        if recommended is not None:
            self.ui.recommendedFrameButton.text = _("Show recommended frame ({frame})").format(frame=recommended)
        return _("Done in {seconds:.0f} s.").format(seconds=runner.elapsed_s)

    def onRecommendedFrameButton(self) -> None:
        try:
            self.logic.showRecommendedFrame(self._parameterNode.planCine)
        except Exception as exc:
            self._showError(_("Could not show the recommended frame."), exc)

    def _showError(self, context: str, exc: Exception) -> None:
        if isinstance(exc, ProcessFailedError):
            # The generator's own message (its "modiff: error:" line), its full stderr as details.
            slicer.util.errorDisplay(str(exc), windowTitle=_("MoDiff"), detailedText=exc.stderr)
        elif isinstance(exc, MoDiffError):
            # A user-level problem: the message is one sentence saying what to change.
            slicer.util.errorDisplay(str(exc), windowTitle=_("MoDiff"))
        else:
            logging.error(traceback.format_exc())
            slicer.util.errorDisplay(f"{context}\n{exc}", windowTitle=_("MoDiff"), detailedText=traceback.format_exc())


#
# MoDiffLogic
#


@dataclass
class _GenerateJob:
    """What startGenerate leaves for finishGenerate (per runner)."""

    runner: Any
    scene: Any
    inputNode: Any
    outputSequence: Any
    tempDir: str
    outputPath: str
    requested: dict


@dataclass
class _PlanJob:
    """What startPlan leaves for finishPlan (per runner)."""

    runner: Any
    scene: Any
    browser: Any
    tempDir: str
    outputDir: str


class MoDiffLogic(ScriptedLoadableModuleLogic):
    """Generation of a cine from a volume node; no GUI code (usable from the Python console and tests).

    Example::

        logic = slicer.util.getModuleLogic("MoDiff")
        sequenceNode = logic.generate(getNode("CTChest"), numberOfFrames=10, device="cpu")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._jobs = {}
        self._planJobs = {}
        self._models = None

    def getParameterNode(self):
        return MoDiffParameterNode(super().getParameterNode())

    # -- models -----------------------------------------------------------------------------------------
    def availableModels(self) -> list:
        """Registered models (``MoDiffLib.registry``: Resources/Models.json plus user registries),
        each a dict with at least name, title, kind, max_frames. An unreadable registry gives an
        empty list and a warning (the command line then reports the problem on Apply)."""
        if self._models is None:
            import dataclasses

            from MoDiffLib.errors import MoDiffError
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

    # -- dependencies -------------------------------------------------------------------------------------
    @staticmethod
    def missingPackages() -> list:
        """pip requirements of REQUIRED_PACKAGES that are not importable (checked without importing them)."""
        import importlib.util

        return [requirement for module, requirement in REQUIRED_PACKAGES if importlib.util.find_spec(module) is None]

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install missing Python packages (after asking); False if the user declined or torch was not installed.

        torch comes from the PyTorch extension's installer when that extension is present (it picks
        the CUDA build matching the GPU driver), else from ``slicer.util.pip_install``.
        """
        missing = self.missingPackages()
        if not missing:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("MoDiff needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
              "Download and install them now? This may take several minutes.").format(packages=", ".join(missing)),
            windowTitle=_("MoDiff"),
        ):
            return False
        with slicer.util.WaitCursor():
            if "torch" in missing:
                missing.remove("torch")
                try:
                    import PyTorchUtils
                except ImportError:
                    PyTorchUtils = None
                if PyTorchUtils is not None:
                    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                        return False
                else:
                    slicer.util.pip_install("torch")
            if missing:
                slicer.util.pip_install(missing)
        import importlib

        importlib.invalidate_caches()
        still = self.missingPackages()
        if still:
            raise InputError(f"these Python packages could not be installed: {', '.join(still)}")
        return True

    def detectDevice(self) -> str:
        """A line for the panel: which device 'auto' would use."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return _("PyTorch not installed yet (offered on the first run)")
        try:
            import torch

            if torch.cuda.is_available():
                return _("GPU: {name}").format(name=torch.cuda.get_device_name(0))
            return _("CPU only (no CUDA GPU found; generation will be slower)")
        except Exception as exc:  # a broken torch install must not break the panel
            return _("PyTorch cannot be loaded: {error}").format(error=exc)

    # -- generation -----------------------------------------------------------------------------------------
    def validateInputs(self, volumeNode, numberOfFrames=10, model=None, steps=None, seed=None, device="auto",
                       amplitude=None, outputSequence=None) -> dict:
        """Check everything before anything runs; returns the normalised request.

        Raises:
            InputError: with one sentence saying what to change.
        """
        from MoDiffLib.mrml import check_volume_node

        check_volume_node(volumeNode)
        if volumeNode.GetScene() is None:
            raise InputError(f"input volume '{volumeNode.GetName()}' is not in a scene")
        info = self.modelInfo(model)
        if model and info is None and not os.path.exists(str(model)):
            names = ", ".join(m["name"] for m in self.availableModels()) or "none bundled"
            raise InputError(f"unknown model '{model}' (available: {names}; or give a checkpoint path)")
        maxFrames = info["max_frames"] if info else DEFAULT_MAX_FRAMES
        if isinstance(numberOfFrames, bool) or not isinstance(numberOfFrames, int):
            raise InputError(f"the number of frames must be a whole number, got {numberOfFrames!r}")
        if not 2 <= numberOfFrames <= maxFrames:
            raise InputError(f"the number of frames must be between 2 and {maxFrames} for this model, got {numberOfFrames}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise InputError(f"the number of sampling steps must be a positive whole number, got {steps!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
            raise InputError(f"the seed must be a whole number from 0 to 2^32-1, got {seed!r}")
        if device not in DEVICES:
            raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        if amplitude is not None:
            try:
                amplitude = float(amplitude)
            except (TypeError, ValueError):
                raise InputError(f"the amplitude must be a number, got {amplitude!r}") from None
            if not amplitude == amplitude or amplitude < 0 or amplitude == float("inf"):
                raise InputError(f"the amplitude must be a finite number of at least 0, got {amplitude}")
            limits = (info or {}).get("amplitude") or {}
            if "min" in limits and "max" in limits and not float(limits["min"]) <= amplitude <= float(limits["max"]):
                raise InputError(
                    f"the amplitude must lie between {limits['min']} and {limits['max']} {limits.get('unit', '')} "
                    f"for this model (0 = automatic), got {amplitude:g}"
                )
        if outputSequence is not None and not outputSequence.IsA("vtkMRMLSequenceNode"):
            raise InputError(f"the output must be a sequence node, got a {outputSequence.GetClassName()}")
        return {"model": model or (info["name"] if info else None), "frames": numberOfFrames, "steps": steps,
                "seed": seed, "device": device, "amplitude": amplitude}

    def startGenerate(self, volumeNode, numberOfFrames=10, model=None, steps=None, seed=None, device="auto",
                      amplitude=None, outputSequence=None, onEvent=None, onLog=None) -> ProcessRunner:
        """Start generating in the background; returns the running :class:`ProcessRunner`.

        Poll it (``runner.poll()`` from a timer; ``onEvent`` receives the progress events), then call
        :meth:`finishGenerate` with it to get the sequence node. The scene is not touched until then.

        Raises:
            InputError: invalid inputs or missing Python packages (nothing was started).
        """
        request = self.validateInputs(volumeNode, numberOfFrames, model, steps, seed, device, amplitude, outputSequence)
        missing = self.missingPackages()
        if missing:
            raise InputError(
                f"missing Python packages: {', '.join(missing)}; press Apply in the MoDiff module to install them"
            )
        from MoDiffLib.mrml import write_volume_node

        tempDir = tempfile.mkdtemp(prefix="MoDiff-", dir=self._temporaryFolder())
        try:
            inputPath = write_volume_node(volumeNode, os.path.join(tempDir, "input.nrrd"))
            outputPath = os.path.join(tempDir, "cine.seq.nrrd")
            command = generate_command(inputPath, outputPath, request["frames"], model=request["model"],
                                       steps=request["steps"], seed=request["seed"], amplitude=request["amplitude"],
                                       device=request["device"])
            logging.info("MoDiff: running " + " ".join(command))
            runner = ProcessRunner(command, on_event=onEvent, on_log=onLog or self._log, env=child_environment())
            runner.start()
        except BaseException:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        self._jobs[id(runner)] = _GenerateJob(runner, volumeNode.GetScene(), volumeNode, outputSequence, tempDir,
                                              outputPath, request)
        return runner

    def finishGenerate(self, runner: ProcessRunner):
        """Wait for ``runner`` (returns at once if it finished), read its cine and show it; returns the sequence node.

        The temporary files are removed whatever happens.

        Raises:
            Cancelled: the run was cancelled. ProcessFailedError: the generator failed (the message
            is its error line). InputError/OutputError: the result cannot be used.
        """
        job = self._jobs.pop(id(runner), None)
        if job is None:
            raise ValueError("this runner was not started by this logic, or was already finished")
        try:
            done = runner.wait()
            outputPath = str((done or {}).get("output") or job.outputPath)
            if not os.path.isfile(outputPath):
                raise OutputError("the generator finished without writing a cine")
            from MoDiffLib.io import read_sequence
            from MoDiffLib.mrml import build_cine

            sequence = read_sequence(outputPath)
            provenance = {k: v for k, v in job.requested.items() if v is not None}
            provenance.update((done or {}).get("provenance") or {})  # what actually ran wins
            provenance.setdefault("elapsed_seconds", round(runner.elapsed_s, 2))
            if job.inputNode.GetScene() is None:
                raise InputError("the input volume was removed from the scene while the cine was generated")
            sequenceNode, _browserNode = build_cine(job.scene, sequence, job.inputNode, provenance, job.outputSequence)
            return sequenceNode
        finally:
            shutil.rmtree(job.tempDir, ignore_errors=True)

    def generate(self, volumeNode, numberOfFrames=10, model=None, steps=None, seed=None, device="auto",
                 amplitude=None, outputSequence=None, onEvent=None):
        """Generate a cine of ``volumeNode`` and add it to its scene (blocking); returns the sequence node.

        Inputs are validated first: bad input raises InputError and leaves the scene unchanged.
        """
        runner = self.startGenerate(volumeNode, numberOfFrames, model, steps, seed, device, amplitude,
                                    outputSequence, onEvent)
        try:
            runner.wait()
        except (Cancelled, ProcessFailedError):
            pass  # finishGenerate raises it again after cleaning up
        except BaseException:  # e.g. KeyboardInterrupt: stop the process tree, clean up
            self.cancel(runner)
            self.discard(runner)
            raise
        return self.finishGenerate(runner)

    def cancel(self, runner: ProcessRunner) -> None:
        """Stop a run started by :meth:`startGenerate` (returns at once; see ProcessRunner.cancel)."""
        runner.cancel()

    def discard(self, runner: ProcessRunner) -> None:
        """Forget a run without reading its result (after a cancel); removes its temporary files."""
        job = self._jobs.pop(id(runner), None)
        if job is not None:
            runner.stop()
            shutil.rmtree(job.tempDir, ignore_errors=True)

    # -- puncture planning ----------------------------------------------------------------------------------
    @staticmethod
    def _browserOf(cineSequenceNode):
        from MoDiffLib.mrml import find_browser

        if cineSequenceNode is None or not cineSequenceNode.IsA("vtkMRMLSequenceNode"):
            raise InputError("select the cine (a sequence node) to plan on")
        scene = cineSequenceNode.GetScene()
        browser = find_browser(scene, cineSequenceNode) if scene is not None else None
        if browser is None:
            raise InputError(f"the cine '{cineSequenceNode.GetName()}' is not played by a sequence browser")
        return browser

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

        return select_frame(self._browserOf(cineSequenceNode), index)

    def showRecommendedFrame(self, cineSequenceNode) -> int:
        """Show the frame the last plan of this cine recommends (one click in the panel)."""
        from MoDiffLib.mrml import recommended_frame_of

        browser = self._browserOf(cineSequenceNode)
        frame = recommended_frame_of(browser.GetScene(), browser)
        if frame is None:
            raise InputError("the plan of this cine recommends no frame (no gating window); plan again with other points")
        return self.showFrame(cineSequenceNode, frame)

    def validatePlan(self, cineSequenceNode, entryNode, targetNode, riskLabelNode=None, marginMm=5.0, toleranceMm=3.0):
        """Check a planning request before anything runs; returns (browser, entry, target, risk volume or None, names).

        Points are the first control points of the point lists, in the cine's coordinates.

        Raises:
            InputError: one sentence saying what to change.
        """
        from MoDiffLib.mrml import cine_geometry, label_names_of, labelmap_from_node, markup_position, world_to_cine
        from MoDiffLib.planning import check_entry_and_target, check_length_mm, risk_structures

        browser = self._browserOf(cineSequenceNode)
        if cineSequenceNode.GetNumberOfDataNodes() < 2:
            raise InputError("the cine has fewer than two frames; there is no motion to plan over")
        geometry = cine_geometry(browser)
        entry = world_to_cine(browser, markup_position(entryNode, 0, "entry point"))
        target = world_to_cine(browser, markup_position(targetNode, 0, "target point"))
        entry, target = check_entry_and_target(entry, target, geometry)
        check_length_mm(marginMm, "safety margin")
        check_length_mm(toleranceMm, "target tolerance")
        risk, names = None, {}
        if riskLabelNode is not None:
            risk = labelmap_from_node(riskLabelNode)
            names = label_names_of(riskLabelNode)
            risk_structures(risk, geometry, cineSequenceNode.GetNumberOfDataNodes(), names, None, entry, target)
        return browser, entry, target, risk, names

    def startPlan(self, cineSequenceNode, entryNode, targetNode, riskLabelNode=None, marginMm=5.0, toleranceMm=3.0,
                  onEvent=None, onLog=None) -> ProcessRunner:
        """Start ``modiff plan`` on the cine in the background; returns the running :class:`ProcessRunner`.

        Poll it, then call :meth:`finishPlan` with it. The scene is not touched until then.

        Raises:
            InputError: invalid inputs (nothing was started).
        """
        from MoDiffLib.commands.plan import plan_command
        from MoDiffLib.io import write_volume
        from MoDiffLib.mrml import save_cine

        browser, entry, target, risk, names = self.validatePlan(cineSequenceNode, entryNode, targetNode, riskLabelNode,
                                                                marginMm, toleranceMm)
        tempDir = tempfile.mkdtemp(prefix="MoDiff-plan-", dir=self._temporaryFolder())
        try:
            cinePath = save_cine(cineSequenceNode, os.path.join(tempDir, "cine.seq.nrrd"))
            riskPath = namesPath = None
            if risk is not None:
                riskPath = write_volume(risk, os.path.join(tempDir, "risk.nrrd"))
                if names:
                    namesPath = os.path.join(tempDir, "risk_names.json")
                    with open(namesPath, "w", encoding="utf-8") as f:
                        json.dump({str(k): v for k, v in names.items()}, f)
            outputDir = os.path.join(tempDir, "plan")
            command = plan_command(cinePath, outputDir, entry, target, riskPath, namesPath, marginMm, toleranceMm)
            logging.info("MoDiff: running " + " ".join(command))
            runner = ProcessRunner(command, on_event=onEvent, on_log=onLog or self._log, env=child_environment())
            runner.start()
        except BaseException:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        self._planJobs[id(runner)] = _PlanJob(runner, cineSequenceNode.GetScene(), browser, tempDir, outputDir)
        return runner

    def finishPlan(self, runner: ProcessRunner):
        """Wait for ``runner``, read its plan and motion, show the overlays; returns ``(PlanNodes, PuncturePlan)``.

        The temporary files are removed whatever happens.
        """
        job = self._planJobs.pop(id(runner), None)
        if job is None:
            raise ValueError("this runner was not started by startPlan, or was already finished")
        try:
            runner.wait()
            planPath = os.path.join(job.outputDir, "plan.json")
            if not os.path.isfile(planPath):
                raise OutputError("the planning finished without writing plan.json")
            from MoDiffLib.io import read_sequence
            from MoDiffLib.motion import MotionFields
            from MoDiffLib.mrml import show_plan
            from MoDiffLib.planning import PuncturePlan

            with open(planPath, encoding="utf-8") as f:
                plan = PuncturePlan.from_dict(json.load(f))
            motionPath = os.path.join(job.outputDir, "motion.seq.nrrd")
            fields = MotionFields.from_sequence(read_sequence(motionPath)) if os.path.isfile(motionPath) else None
            if job.browser.GetScene() is None:
                raise InputError("the cine was removed from the scene while the plan was computed")
            nodes = show_plan(job.scene, plan, job.browser, fields)
            return nodes, plan
        finally:
            shutil.rmtree(job.tempDir, ignore_errors=True)

    def plan(self, cineSequenceNode, entryNode, targetNode, riskLabelNode=None, marginMm=5.0, toleranceMm=3.0,
             onEvent=None):
        """Plan a puncture on the cine and show the overlays (blocking); returns ``(PlanNodes, PuncturePlan)``."""
        runner = self.startPlan(cineSequenceNode, entryNode, targetNode, riskLabelNode, marginMm, toleranceMm, onEvent)
        try:
            runner.wait()
        except (Cancelled, ProcessFailedError):
            pass  # finishPlan raises it again after cleaning up
        except BaseException:
            self.cancel(runner)
            self.discardPlan(runner)
            raise
        return self.finishPlan(runner)

    def discardPlan(self, runner: ProcessRunner) -> None:
        """Forget a planning run without reading its result (after a cancel); removes its temporary files."""
        job = self._planJobs.pop(id(runner), None)
        if job is not None:
            runner.stop()
            shutil.rmtree(job.tempDir, ignore_errors=True)

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

    @staticmethod
    def _temporaryFolder():
        app = getattr(slicer, "app", None)
        folder = app.temporaryPath if app is not None else None
        return folder if folder and os.path.isdir(folder) else None

    @staticmethod
    def _log(stream, line) -> None:
        (logging.warning if stream == "stderr" else logging.info)(f"modiff: {line}")


#
# MoDiffTest
#


class MoDiffTest(ScriptedLoadableModuleTest):
    """Self-test: the shared MRML scenarios (Testing/Python/mrml_scenarios.py) on slicer.mrmlScene,
    plus the logic's input checks. Run from the Self Tests module or with
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
            self.test_plan_overlays_follow_the_cine,
            self.test_plan_rerun_replaces,
            self.test_plan_bad_inputs_leave_scene_unchanged,
            self.test_logic_rejects_bad_plan_requests,
            self.test_bundled_model_end_to_end,
        ):
            self.setUp()
            test()

    @staticmethod
    def _scenarios():
        """The shared scenarios module: Testing/Python beside this file (extension) or one folder up (source)."""
        here = os.path.dirname(os.path.abspath(__file__))
        for folder in (os.path.join(here, "Testing", "Python"), os.path.join(os.path.dirname(here), "Testing", "Python")):
            if os.path.isfile(os.path.join(folder, "mrml_scenarios.py")):
                if folder not in sys.path:
                    sys.path.insert(0, folder)
                import mrml_scenarios

                return mrml_scenarios
        raise RuntimeError("mrml_scenarios.py not found beside the MoDiff module")

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
        """Bad requests fail with InputError before any process starts, and the scene is unchanged."""
        scenarios = self._scenarios()
        inputNode = scenarios.add_input(slicer.mrmlScene)
        logic = MoDiffLogic()
        count = slicer.mrmlScene.GetNumberOfNodes()
        for kwargs in ({"volumeNode": None}, {"numberOfFrames": 1}, {"numberOfFrames": 10_000},
                       {"steps": 0}, {"seed": -1}, {"device": "tpu"}, {"amplitude": -1.0}):
            arguments = dict({"volumeNode": inputNode}, **kwargs)
            with self.assertRaises(InputError, msg=str(kwargs)):
                logic.generate(**arguments)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.assertEqual(logic._jobs, {})
        self.delayDisplay("MoDiff logic input checks passed")

    def test_plan_overlays_follow_the_cine(self):
        self._scenarios().scenario_plan_overlays_follow_the_cine(slicer.mrmlScene)

    def test_plan_rerun_replaces(self):
        self._scenarios().scenario_plan_rerun_replaces(slicer.mrmlScene)

    def test_plan_bad_inputs_leave_scene_unchanged(self):
        self._scenarios().scenario_plan_bad_inputs_leave_scene_unchanged(slicer.mrmlScene)

    def test_bundled_model_end_to_end(self):
        missing = MoDiffLogic.missingPackages()
        if missing:
            self.delayDisplay(f"Skipped the bundled-model test: Python packages {', '.join(missing)} are not installed")
            return
        self._scenarios().scenario_bundled_model_end_to_end(slicer.mrmlScene)

    def test_logic_rejects_bad_plan_requests(self):
        """Missing or bad points, a risk map on another grid: InputError before any process starts."""
        scenarios = self._scenarios()
        from MoDiffLib.mrml import build_cine

        seq, fields, entry, target, risk = scenarios.make_plan_case(4)
        inputNode = scenarios.add_input(slicer.mrmlScene, scenarios.Volume(seq.frames[0], seq.geometry, "CT"))
        cineNode, _browser = build_cine(slicer.mrmlScene, seq, inputNode, {})
        logic = MoDiffLogic()
        entryNode = logic.createPointList("Entry")
        targetNode = logic.createPointList("Target")
        count = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InputError):  # no points placed yet
            logic.startPlan(cineNode, entryNode, targetNode)
        entryNode.AddControlPoint(*entry)
        targetNode.AddControlPoint(*entry)
        with self.assertRaises(InputError):  # entry equal to target
            logic.startPlan(cineNode, entryNode, targetNode)
        targetNode.SetNthControlPointPosition(0, *(target + 500.0))
        with self.assertRaises(InputError):  # target outside the volume
            logic.startPlan(cineNode, entryNode, targetNode)
        targetNode.SetNthControlPointPosition(0, *target)
        with self.assertRaises(InputError):  # not a cine
            logic.startPlan(None, entryNode, targetNode)
        with self.assertRaises(InputError):  # negative margin
            logic.startPlan(cineNode, entryNode, targetNode, marginMm=-1.0)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.assertEqual(logic._planJobs, {})
        self.delayDisplay("MoDiff planning input checks passed")
