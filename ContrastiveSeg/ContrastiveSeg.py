"""ContrastiveSeg: paint a structure on a few slices, press Segment, get the whole 3D segmentation.

A 2.5D U-Net with a contrastively pretrained encoder is fine-tuned on the painted slices and segments the volume.
All work happens in a child ``PythonSlicer`` process running the ContrastiveSegLib command line, so Slicer stays
responsive and a GPU crash cannot take it down; this file is only the Slicer front door:

- ``ContrastiveSegParameterNode``: per-scene choices, bound to the .ui through ``SlicerParameterName``.
- ``ContrastiveSegWidget``: thin; shows state and forwards clicks to the logic.
- ``ContrastiveSegLogic``: usable with no GUI (batch scripts):
  ``ContrastiveSegLogic().segment(volumeNode, segmentationNode, waitForCompletion=True)``, and
  ``ContrastiveSegLogic().pretrain(method="simclr", waitForCompletion=True)`` for self-supervised pretraining of
  an encoder on the scans in the scene (or a folder) that the next Segment starts from.
- The node <-> array bridge, the child-process runner and the runs themselves live in ``ContrastiveSegLib.slicer``.
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

try:
    import ContrastiveSegLib  # noqa: F401  (installed beside this file in the extension)
except ImportError:  # a source checkout added through "Additional module paths": the library is one folder up
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# Only light modules here: nothing below imports torch, MONAI or anything that may not be installed yet.
from ContrastiveSegLib.errors import InputError  # noqa: E402
from ContrastiveSegLib.options import (AXIS_LETTERS, DEFAULT_CONSISTENCY, DEFAULT_DEVICE, DEFAULT_PRESET,  # noqa: E402
                                       DEVICE_KINDS, PRESET_NAMES, PRETRAIN_STEPS, RANDOM_INIT, axis_index)
from ContrastiveSegLib.slicer import environment, panel  # noqa: E402
from ContrastiveSegLib.slicer.childrun import error_line, private_state_dir, remove_state_dirs  # noqa: E402
from ContrastiveSegLib.slicer.driver import RunDriver  # noqa: E402
from ContrastiveSegLib.slicer.pretraining import DEFAULT_METHOD, OFFERED_METHODS, scene_scans  # noqa: E402
from ContrastiveSegLib.slicer.runner import Progress, overall_fraction, python_executable  # noqa: E402
from ContrastiveSegLib.slicer.scoring import remove_run_files  # noqa: E402

DEFAULT_ENCODER = "default"
ENCODERS = [DEFAULT_ENCODER, *environment.shipped_encoder_names(), RANDOM_INIT]
DEVICES = list(DEVICE_KINDS)  # "cuda" with the GPU index box beside it makes "cuda:N"
AXIS_FROM_PAINT = "auto"  # the axis choice that lets the painted planes decide (no --axis)
SETTINGS_DEVICE = "ContrastiveSeg/Device"
SETTINGS_ENCODER_FILE = "ContrastiveSeg/PretrainedEncoder"  # the last encoder pretrained here, for new scenes
FROM_SCENE, FROM_FOLDER = "Scans in the scene", "A folder"


class ContrastiveSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ContrastiveSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["ContrastiveSeg developers"]
        self.parent.helpText = _(
            "Paint a structure on a few slices with the Segment Editor, choose the volume and the segmentation, "
            "press <b>Segment</b>: a network fine-tuned on your slices segments the whole volume. Correct a slice "
            "or two and press Segment again to refine: the run continues from the last model. 'Suggest next "
            "slice' shows where the model is least sure. Details: the 'Use in 3D Slicer' section of the README.")
        self.parent.acknowledgementText = _(
            "Contrastive pretraining implements SimCLR (Chen et al., ICML 2020), self-paced contrast with "
            "meta-labels (Peng et al., NeurIPS 2021), IDEAL (Basak et al., ICASSP 2023), LRC (Yan et al., MICCAI "
            "2023) and MixCL (Li et al., 2022); networks and losses are built on MONAI.")
        # The sample (the bundled MNI brain with 3 painted slices) goes into Sample Data once Slicer has started.
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Offer the bundled sample in the Sample Data module (ContrastiveSegLib.slicer.sample)."""
    import SampleData

    from ContrastiveSegLib.slicer.sample import register_sample

    def onLoaded(volumeNode, segmentationNode) -> None:
        # A first-time user lands in the module with the sample chosen: pressing Segment is all that is left.
        node = ContrastiveSegLogic().getParameterNode()
        node.inputVolume, node.inputSegmentation = volumeNode, segmentationNode
        slicer.util.selectModule("ContrastiveSeg")

    thumbnail = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "ContrastiveSeg.png")
    register_sample(SampleData.SampleDataLogic, lambda: slicer.mrmlScene, thumbnail, onLoaded)


@parameterNodeWrapper
class ContrastiveSegParameterNode:
    """Per-scene state of the module. Fields bound to widgets carry the same name as SlicerParameterName."""

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    outputSegmentation: vtkMRMLSegmentationNode  # None: a new segmentation node for each run
    encoder: Annotated[str, Choice(ENCODERS)] = DEFAULT_ENCODER
    # Paths are text ("" = not set), wired by hand (panel.PATH_FIELDS): a pathlib.Path parameter shows "." unset.
    encoderFile: str = ""
    device: Annotated[str, Choice(DEVICES)] = DEFAULT_DEVICE
    gpuIndex: Annotated[int, WithinRange(0, 15)] = 0
    preset: Annotated[str, Choice(list(PRESET_NAMES))] = DEFAULT_PRESET
    refineFromLastModel: bool = True
    showUncertainty: bool = False
    show3D: bool = False
    axis: Annotated[str, Choice([AXIS_FROM_PAINT, *AXIS_LETTERS])] = AXIS_FROM_PAINT
    steps: Annotated[int, WithinRange(0, 100000)] = 0
    seed: Annotated[int, WithinRange(0, 1000000)] = 0
    batchSize: Annotated[int, WithinRange(0, 1024)] = 0
    allowResampling: bool = False
    modelFile: str = ""
    # Pretraining: an encoder from unlabelled scans; on success it becomes encoderFile (the next Segment's).
    pretrainSource: Annotated[str, Choice([FROM_SCENE, FROM_FOLDER])] = FROM_SCENE
    pretrainFolder: str = ""
    pretrainMethod: Annotated[str, Choice(list(OFFERED_METHODS))] = DEFAULT_METHOD
    pretrainSteps: Annotated[int, WithinRange(1, 1000000)] = PRETRAIN_STEPS
    pretrainMinutes: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0  # 0: no time limit
    pretrainOutput: str = ""  # empty: a new file in the module's encoders folder
    # Not shown: what the last run left behind (refine from it, suggest the next slice from it).
    lastModelPath: str = ""
    lastModelSegments: str = ""
    lastProbabilitiesPath: str = ""


def _path_or_none(path) -> str | None:
    return panel.path_text(path) or None


def valid_device(value) -> str:
    """``value`` when it is one of DEVICES, else the default ("auto"): what a saved or chosen device setting may
    be."""
    return value if value in DEVICES else DEFAULT_DEVICE


class ContrastiveSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui to the parameter node and forwards clicks to the logic. No computation here."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedSegmentation = None
        self._summaryTimer = None
        self._summaryState = None
        self._shortcuts = []
        # Remarks of the current run that must stay visible, e.g. the child's "out of GPU memory: retrying with
        # batch size N" (the child halves its batch itself; the panel only reports).
        self._notes = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ContrastiveSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ContrastiveSegLogic()
        self._summaryTimer = qt.QTimer()
        self._summaryTimer.setSingleShot(True)
        self._summaryTimer.setInterval(700)  # refresh the summary once painting pauses
        self._summaryTimer.timeout.connect(self.updateSummary)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.predictButton.connect("clicked(bool)", self.onPredictButton)
        self.ui.suggestButton.connect("clicked(bool)", self.onSuggestButton)
        self.ui.saveModelButton.connect("clicked(bool)", self.onSaveModelButton)
        self.ui.pretrainButton.connect("clicked(bool)", self.onPretrainButton)
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        for widgetName, parameter in panel.PATH_FIELDS.items():
            getattr(self.ui, widgetName).connect("currentPathChanged(QString)",
                                                 lambda text, p=parameter: self.onPathChanged(p, text))
        for key, action in ((panel.SHORTCUT_SEGMENT, self.onSegmentShortcut),
                            (panel.SHORTCUT_SUGGEST, self.onSuggestShortcut), (panel.SHORTCUT_UNDO, self.onUndoButton)):
            shortcut = qt.QShortcut(qt.QKeySequence(key), self.parent)
            shortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)  # only in this panel: the editor keeps its keys
            shortcut.connect("activated()", action)
            self._shortcuts.append(shortcut)
        # "activated", not "currentIndexChanged": only the user's own choice is saved. Binding the parameter node
        # (connectGui) clears and refills this combo box, which changes its index before the setting is read.
        self.ui.deviceComboBox.connect("activated(int)", self.onDeviceChosen)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer closes the module (and itself): stop any run, remove this session's folder of run files."""
        self._summaryTimer.stop()
        self.removeObservers()
        self.logic.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.ui.deviceInfoLabel.text = environment.device_summary(self.logic.gpus())
        missing = environment.missing_requirements()
        self.ui.installButton.visible = bool(missing)
        self.ui.dependencyLabel.text = (_("Needs: ") + ", ".join(missing)) if missing else ""

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        if self._parameterNode:
            self.logic.forgetRunFiles(self._parameterNode)  # the scene's model and probabilities go with it
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        # The user's settings are read and the defaults filled in before the node is bound to the panel, so
        # nothing the binding does to the widgets can overwrite a setting before it is read.
        node = self.logic.getParameterNode()
        self.logic.setDefaults(node, slicer.mrmlScene,
                               device=slicer.util.settingsValue(SETTINGS_DEVICE, DEFAULT_DEVICE),
                               encoderFile=slicer.util.settingsValue(SETTINGS_ENCODER_FILE, ""))
        self.setParameterNode(node)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self.updateGui()

    # ------------------------------------------------------------------------------------------ display
    def updateGui(self, caller=None, event=None) -> None:
        node = self._parameterNode
        running = self.logic.isRunning()
        pretraining = running and self.logic.runKind == "pretrain"
        ready = bool(node and node.inputVolume and node.inputSegmentation)
        self.ui.segmentButton.text = _("Cancel") if running and not pretraining else _("Segment")
        self.ui.segmentButton.enabled = (running and not pretraining) or (not running and ready)
        self.ui.pretrainButton.text = _("Cancel") if pretraining else _("Pretrain")
        self.ui.pretrainButton.enabled = pretraining or not running  # no scan, no folder: one line on pressing
        self.ui.pretrainFolderLineEdit.enabled = bool(node and node.pretrainSource == FROM_FOLDER)
        self.ui.predictButton.enabled = not running and bool(node and node.inputVolume and
                                                             _path_or_none(node.modelFile))
        self.ui.saveModelButton.enabled = not running and bool(node and node.lastModelPath)
        self.ui.suggestButton.enabled = not running and self.logic.scoresReady(node)
        self.ui.undoButton.enabled = not running and self.logic.canUndo()
        cuda = bool(node and node.device == "cuda")
        self.ui.gpuIndexSpinBox.visible = self.ui.gpuIndexLabel.visible = cuda
        for widgetName, parameter in panel.PATH_FIELDS.items():
            widget = getattr(self.ui, widgetName)
            text = panel.path_text(getattr(node, parameter)) if node else ""
            if widget.currentPath != text:
                widget.currentPath = text
        self._observeSegmentation(node.inputSegmentation if node else None)
        state = panel.summary_state(node)
        if state != self._summaryState:  # volume, segmentation, axis or resampling changed
            self._summaryState = state
            self._scheduleSummary()

    def onPathChanged(self, parameter: str, text: str) -> None:
        if self._parameterNode and getattr(self._parameterNode, parameter) != panel.path_text(text):
            setattr(self._parameterNode, parameter, panel.path_text(text))

    def _observeSegmentation(self, segmentationNode) -> None:
        if segmentationNode is self._observedSegmentation:
            return
        # Painting fires SourceRepresentationModified (forwarded by the node), not the node's ModifiedEvent.
        events = [getattr(slicer.vtkSegmentation, name, None) or
                  getattr(slicer.vtkSegmentation, panel.LEGACY_EVENT_NAMES.get(name, name))
                  for name in panel.SUMMARY_EVENTS]
        for event in events:
            if self._observedSegmentation is not None:
                self.removeObserver(self._observedSegmentation, event, self._scheduleSummary)
            if segmentationNode is not None:
                self.addObserver(segmentationNode, event, self._scheduleSummary)
        self._observedSegmentation = segmentationNode
        self._scheduleSummary()

    def _scheduleSummary(self, caller=None, event=None) -> None:
        self._summaryTimer.start()

    def updateSummary(self) -> None:
        node = self._parameterNode
        ready = bool(node and node.inputVolume and node.inputSegmentation)
        running = self.logic.runKind if self.logic.isRunning() else None
        lines = None
        if ready and running is None:
            try:
                lines = self.logic.annotationSummary(node.inputVolume, node.inputSegmentation, node)
            except InputError as error:
                lines = [str(error)]
        self.ui.summaryLabel.text = _(panel.summary_text(ready, running, lines))

    def showStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #c0392b" if error else "")
        if error:
            logging.error(f"ContrastiveSeg: {text}")

    # ------------------------------------------------------------------------------------------ actions
    def onDeviceChosen(self, index: int) -> None:
        """The user picked a device: new scenes start from it."""
        qt.QSettings().setValue(SETTINGS_DEVICE, valid_device(self.ui.deviceComboBox.itemText(index)))

    def onInstallButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
            self.logic.installDependencies()
        self.enter()

    def _ensureDependencies(self) -> bool:
        if not environment.missing_requirements():
            return True
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
            if self.logic.installDependencies():
                return True
        self.showStatus(_("ContrastiveSeg needs PyTorch and MONAI: press 'Install dependencies'."), error=True)
        return False

    def _startOrCancel(self, launch) -> None:
        """The Segment and Pretrain buttons turn into Cancel while their run is going. Cancel returns at once;
        the run's timer finishes the clean-up and brings the panel back."""
        if self.logic.isRunning():
            self.showStatus(_("Cancelling..."))
            self.logic.cancel()
            return
        if self._ensureDependencies():
            self._start(launch)

    def onSegmentButton(self) -> None:
        node = self._parameterNode
        self._startOrCancel(lambda: self.logic.segmentFromParameterNode(node, progressCallback=self.onProgress,
                                                                        completedCallback=self.onCompleted))

    def onPredictButton(self) -> None:
        if not self._ensureDependencies():
            return
        node = self._parameterNode
        self._start(lambda: self.logic.predict(
            node.inputVolume, _path_or_none(node.modelFile), node.outputSegmentation,
            **self.logic.optionsFromParameterNode(node, training=False), progressCallback=self.onProgress,
            completedCallback=self.onCompleted))

    def _start(self, launch) -> None:
        self._notes = []
        self.ui.progressBar.value = 0
        self.showStatus(_("Starting..."))
        try:
            launch()
        except InputError as error:  # the user's input: one line in the panel
            self.showStatus(str(error), error=True)
        except Exception as error:  # noqa: BLE001 - anything else: one line here, the traceback in the log
            logging.exception("ContrastiveSeg: the run could not start")
            self.showStatus(error_line(error, "starting the run"), error=True)
        self.updateGui()
        self.updateSummary()

    def onProgress(self, progress: Progress) -> None:
        self.ui.progressBar.value = int(100 * overall_fraction(progress, self.logic.runKind))
        if "out of GPU memory" in progress.message and progress.message not in self._notes:
            self._notes.append(progress.message)
        self.showStatus(" ".join([progress.describe(), *self._notes]))

    def onCompleted(self, result) -> None:
        self.ui.progressBar.value = 100 if result.ok else 0
        text = result.message
        if result.ok:
            text = " ".join([_("Done in {seconds:.0f} s.").format(seconds=result.seconds), *self._notes,
                             *result.notes])
            if result.probabilities_path is not None:  # scored in a worker process: the panel stays free
                try:
                    self.logic.scoreUncertainty(self._parameterNode, completedCallback=self.onScored)
                except InputError as error:
                    text += " " + str(error)
        self.showStatus(text, error=not result.ok and not result.run.cancelled)
        self.updateGui()
        self.updateSummary()

    def onScored(self, outcome) -> None:
        if outcome.ok and outcome.uncertainty_node is not None:
            slicer.util.setSliceViewerLayers(foreground=outcome.uncertainty_node, foregroundOpacity=0.4)
        if outcome.ok and outcome.suggestion is not None:
            self.showStatus(" ".join([self.ui.statusLabel.text, _("Most uncertain slice: {index}.").format(
                index=outcome.suggestion[0])]))
        self.updateGui()

    def onUndoButton(self) -> None:
        if self.logic.isRunning() or not self.logic.canUndo():
            return
        self.showStatus(self.logic.undoLastResult())
        self.updateGui()
        self.updateSummary()

    def onSegmentShortcut(self) -> None:
        if self.ui.segmentButton.enabled:
            self.onSegmentButton()

    def onSuggestShortcut(self) -> None:
        if self.ui.suggestButton.enabled:
            self.onSuggestButton()

    def onSuggestButton(self) -> None:
        node = self._parameterNode
        try:
            plane, index, score = self.logic.suggestNextSlice(node.inputVolume, node.inputSegmentation, node)
        except InputError as error:
            self.showStatus(str(error), error=True)
            return
        self.showStatus(_("Annotate {plane} slice {index} next (uncertainty {score:.2f}).").format(
            plane=plane, index=index, score=score))

    def onPretrainButton(self) -> None:
        node = self._parameterNode
        self._startOrCancel(lambda: self.logic.pretrainFromParameterNode(node, progressCallback=self.onProgress,
                                                                         completedCallback=self.onPretrainCompleted))

    def onPretrainCompleted(self, result) -> None:
        self.ui.progressBar.value = 100 if result.ok else 0
        text = result.message
        if result.ok:
            text = _("Encoder written to {path} in {seconds:.0f} s; Segment now starts from it.").format(
                path=result.encoder_path, seconds=result.seconds)
            text = " ".join([text, *self._notes, *result.notes])
        self.showStatus(text, error=not result.ok and not result.run.cancelled)
        self.updateGui()

    def onSaveModelButton(self) -> None:
        path = qt.QFileDialog.getSaveFileName(None, _("Save the fine-tuned model"), "model.safetensors",
                                              "Model (*.safetensors)")
        if not path:
            return
        try:
            self.logic.saveModel(self._parameterNode, path)
        except InputError as error:  # a full disk, a folder without write access: one line, Slicer goes on
            self.showStatus(str(error), error=True)
            return
        self.showStatus(_("Model saved to {path}; use it with 'Predict only'.").format(path=path))


class ContrastiveSegLogic(ScriptedLoadableModuleLogic):
    """All the module does, usable without the GUI (``Slicer --no-main-window --python-script``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.job = None
        self.runKind = "segment"  # of the current (or last) run: segment, predict or pretrain
        self._timers = []  # one per run being followed (a run and its uncertainty worker)
        self._scoring = None  # the uncertainty worker of the last result (ContrastiveSegLib.slicer.scoring)
        self._undo = None  # how to take the last result back (ContrastiveSegLib.slicer.nodes.ResultUndo)
        self._gpus = None

    def getParameterNode(self):
        return ContrastiveSegParameterNode(super().getParameterNode())

    # --------------------------------------------------------------------------------- environment
    def gpus(self):
        if self._gpus is None:
            self._gpus = environment.detect_gpus()
        return self._gpus

    def installDependencies(self, confirm: bool = True) -> bool:
        """Install torch (PyTorch extension) and the pip packages, after one confirmation when ``confirm``
        (batch scripts pass False). Returns True when everything is installed."""
        if not confirm:
            return environment.install(lambda text: True)
        return environment.install(lambda text: slicer.util.confirmOkCancelDisplay(text, _("ContrastiveSeg")))

    def stateDirectory(self) -> pathlib.Path:
        """Where the last model and probabilities are kept between runs: this session's own folder in Slicer's
        temporary folder, which only this user can read (a patient's data; Slicer's folder may be shared)."""
        return private_state_dir(slicer.app.temporaryPath)

    def encoderDirectory(self) -> pathlib.Path:
        """Where pretrained encoders go unless a file is given (kept across sessions, unlike stateDirectory)."""
        return pathlib.Path(slicer.app.cachePath) / "ContrastiveSeg" / "encoders"

    # ------------------------------------------------------------------------------------- options
    def setDefaults(self, node, scene, device: str = DEFAULT_DEVICE, encoderFile: str = "") -> None:
        """Fill in what ``node`` has not chosen yet. For a new scene (no input volume): the saved ``device``, the
        first scan of ``scene`` (never a label map or a volume this module made) and the last pretrained encoder
        ``encoderFile`` when it still exists. In any scene: the first segmentation when none is chosen."""
        if not node.inputVolume:
            node.device = valid_device(device)
            node.inputVolume = self.firstScan(scene)
            if not _path_or_none(node.encoderFile) and encoderFile and pathlib.Path(encoderFile).is_file():
                node.encoderFile = str(encoderFile)  # the user's own pretrained encoder
        if not node.inputSegmentation:
            node.inputSegmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def firstScan(self, scene):
        """The first volume of ``scene`` that is a scan to segment (see ``scene_scans``), or None."""
        scans = scene_scans(scene)
        return scans[0] if scans else None

    def deviceFromParameterNode(self, node) -> str:
        return node.device if node.device != "cuda" else f"cuda:{node.gpuIndex}"

    def optionsFromParameterNode(self, node, training: bool = True) -> dict:
        """Keyword arguments of :meth:`segment` (``training``) or :meth:`predict` from the panel's choices."""
        device = self.deviceFromParameterNode(node)
        options = dict(device=device, showUncertainty=node.showUncertainty, show3D=node.show3D)
        if training:  # the batch size is a fine-tuning option: predict has none
            encoder = _path_or_none(node.encoderFile) or node.encoder
            options.update(encoder=None if encoder == DEFAULT_ENCODER else encoder, preset=node.preset,
                           steps=node.steps or None, seed=node.seed, batchSize=node.batchSize or None,
                           allowResampling=node.allowResampling,
                           axis=None if node.axis == AXIS_FROM_PAINT else axis_index(node.axis))
        return options

    def segmentFromParameterNode(self, node, **kwargs):
        """Segment with everything the panel shows; refine from the last model when asked and compatible."""
        initModel = None
        if node.refineFromLastModel and node.lastModelPath and pathlib.Path(node.lastModelPath).is_file():
            names = self.annotationSegmentNames(node.inputSegmentation)
            if names == node.lastModelSegments.split("\n"):
                initModel = node.lastModelPath
        return self.segment(node.inputVolume, node.inputSegmentation, node.outputSegmentation,
                            initModel=initModel, **self.optionsFromParameterNode(node), **kwargs)

    # ----------------------------------------------------------------------------------------- runs
    def segment(self, volumeNode, segmentationNode, outputSegmentationNode=None, *, encoder=None,
                device=DEFAULT_DEVICE, preset=DEFAULT_PRESET, steps=None, seed=0, axis=None,
                batchSize=None, initModel=None, probabilities=True, showUncertainty=False, show3D=False,
                allowResampling=False, adapt=None, consistency=DEFAULT_CONSISTENCY, waitForCompletion=False,
                progressCallback=None, completedCallback=None, timeout=None):
        """Fine-tune on the painted slices of ``segmentationNode`` and segment ``volumeNode``.

        The result goes to ``outputSegmentationNode`` (None: a new node; the input node itself: its segments
        are replaced and the painted slices remembered). Returns the :class:`JobResult` when
        ``waitForCompletion`` (batch scripts), else the running job; ``completedCallback(result)`` is called at
        the end either way. Raises InputError (one line) for unusable input before anything starts.
        """
        from ContrastiveSegLib.slicer.job import Job, JobOptions

        options = JobOptions(encoder=encoder, device=device, preset=preset, steps=steps, seed=seed, axis=axis,
                             batch_size=batchSize, init_model=initModel, probabilities=probabilities,
                             show_uncertainty=showUncertainty, resample=allowResampling, closed_surface=show3D,
                             adapt=adapt, consistency=consistency)
        job = Job("segment", volumeNode, segmentationNode, outputSegmentationNode, options,
                  state_dir=self.stateDirectory(), python=python_executable(),
                  env=slicer.util.startupEnvironment())
        return self._launch(job, "segment", waitForCompletion, progressCallback, completedCallback, timeout,
                            self._remember)

    def predict(self, volumeNode, modelPath, outputSegmentationNode=None, *, device=DEFAULT_DEVICE,
                showUncertainty=False, show3D=False, waitForCompletion=False, progressCallback=None,
                completedCallback=None, timeout=None):
        """Segment ``volumeNode`` with a saved model (no fine-tuning): the next patient's scan. There is no batch
        size here: ``contrastiveseg predict`` has none, and it halves its batch of slices itself when memory runs
        out."""
        from ContrastiveSegLib.slicer.job import Job, JobOptions

        options = JobOptions(device=device, probabilities=showUncertainty,
                             show_uncertainty=showUncertainty, closed_surface=show3D)
        job = Job("predict", volumeNode, None, outputSegmentationNode, options, model_path=modelPath,
                  state_dir=self.stateDirectory(), python=python_executable(),
                  env=slicer.util.startupEnvironment())
        return self._launch(job, "predict", waitForCompletion, progressCallback, completedCallback, timeout,
                            self._remember)

    def pretrainFromParameterNode(self, node, **kwargs):
        """Pretrain with what the Pretraining section shows: the scans in the scene, or the chosen folder."""
        folder = _path_or_none(node.pretrainFolder)
        if node.pretrainSource == FROM_FOLDER and folder is None:
            raise InputError(_("choose the folder of scans to pretrain on"))
        return self.pretrain(folder if node.pretrainSource == FROM_FOLDER else None, node.pretrainMethod,
                             _path_or_none(node.pretrainOutput), steps=node.pretrainSteps,
                             minutes=node.pretrainMinutes or None, device=self.deviceFromParameterNode(node),
                             **kwargs)

    def pretrain(self, data=None, method=DEFAULT_METHOD, outputPath=None, *, steps=None, minutes=None,
                 device=DEFAULT_DEVICE, batchSize=None, seed=0, waitForCompletion=False,
                 progressCallback=None, completedCallback=None, timeout=None):
        """Self-supervised pretraining of an encoder on unlabelled scans (``python -m ContrastiveSegLib pretrain``).

        ``data``: a volume node or a list of them (None: every scan in the scene), or a folder (str or path) that
        the CLI searches for NIfTI, NRRD, MHA and DICOM series. ``method``: one of ``OFFERED_METHODS`` (see
        docs/methods.md). ``outputPath``: the .safetensors file to write (None: a new file in
        :meth:`encoderDirectory`). ``steps`` / ``minutes``: the budget (neither: ``options.PRETRAIN_STEPS``;
        both: whichever ends first). On success the encoder becomes the parameter node's ``encoderFile`` (so
        Segment starts from it) and is remembered for new scenes. Returns the
        :class:`~ContrastiveSegLib.slicer.pretraining.PretrainOutcome` when ``waitForCompletion``, else the running
        job. Raises InputError (one line) for unusable input before anything starts; the CLI's refusals (an
        unknown method, too small a scan) come back as a failed result with its one-line message.
        """
        from ContrastiveSegLib.slicer.pretraining import PretrainOptions, PretrainRun, scene_scans

        if data is None:
            data = scene_scans(slicer.mrmlScene)
        elif not isinstance(data, (str, os.PathLike, list, tuple)):
            data = [data]  # one volume node
        options = PretrainOptions(method=method, steps=steps, minutes=minutes, device=device, batch_size=batchSize,
                                  seed=seed)
        output = outputPath or self.encoderDirectory() / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}.safetensors"
        job = PretrainRun(data, output, options, state_dir=self.stateDirectory(), python=python_executable(),
                          env=slicer.util.startupEnvironment())
        return self._launch(job, "pretrain", waitForCompletion, progressCallback, completedCallback, timeout,
                            self._rememberEncoder)

    def _launch(self, job, kind, wait, progressCallback, completedCallback, timeout, remember):
        if self.isRunning():
            raise InputError(_("a run is in progress; cancel it first"))
        if self._scoring is not None and self._scoring.running:
            self._scoring.cancel()  # the last result's uncertainty is about to be replaced
        job.prepare()
        self.runKind = kind
        if not wait:
            self.job = job

        def onEvent(event):
            if isinstance(event, Progress):
                if progressCallback:
                    progressCallback(event)
            else:
                logging.info(event)

        return self._follow(job, wait, onEvent, remember, completedCallback, timeout)

    def _follow(self, run, wait, onEvent, remember, completedCallback, timeout):
        """Run ``run`` to its end (``wait``: here, for batch scripts; else from a timer, and return it started)."""
        if wait:
            result = run.run(on_event=onEvent, timeout=timeout)
            remember(run, result)
            if completedCallback:
                completedCallback(result)
            return result
        run.start()
        # Every way the run ends (done, failed, cancelled, an error while reading the result) reaches
        # completedCallback through the driver; the timer only ticks it.
        self._startTimer(RunDriver(run, onEvent, remember, completedCallback))
        return run

    def _startTimer(self, driver):
        timer = qt.QTimer()
        timer.setInterval(200)

        def tick():
            if not driver.tick():
                timer.stop()
                if self.job is driver.job:
                    self.job = None

        timer.timeout.connect(tick)
        timer.start()
        self._timers = [t for t in self._timers if t.isActive()] + [timer]
        return timer

    def _remember(self, job, result) -> None:
        if not result.ok:
            logging.warning("ContrastiveSeg: " + result.message + "\n" + "\n".join(result.run.stderr_tail[-10:]))
            return
        node = self.getParameterNode()
        self._undo = result.undo
        if node.outputSegmentation is None and result.segmentation_node is not None:
            # The selector shows the node just made, so the next run replaces it instead of adding another.
            node.outputSegmentation = result.segmentation_node
        # Only the latest model and probabilities are kept in the temporary folder ("Save model" keeps others).
        for old, new in ((node.lastModelPath, result.model_path), (node.lastProbabilitiesPath,
                                                                   result.probabilities_path)):
            if old and new is not None and pathlib.Path(old) != new:
                remove_run_files(old)
        if result.model_path is not None:
            node.lastModelPath = str(result.model_path)
            node.lastModelSegments = "\n".join(s.name for s in result.annotation.segments)
        if result.probabilities_path is not None:
            node.lastProbabilitiesPath = str(result.probabilities_path)

    def _rememberEncoder(self, job, result) -> None:
        """Make a newly pretrained encoder the one Segment starts from, in this scene and in new ones."""
        if not result.ok:
            logging.warning("ContrastiveSeg: " + result.message + "\n" + "\n".join(result.run.stderr_tail[-10:]))
            return
        self.getParameterNode().encoderFile = str(result.encoder_path)
        qt.QSettings().setValue(SETTINGS_ENCODER_FILE, str(result.encoder_path))

    def isRunning(self) -> bool:
        return self.job is not None and self.job.running

    def cancel(self) -> None:
        """Ask the running job (and every process it started) to stop; returns at once, the run's timer does the
        rest and calls its completion callback. The scene stays as it was."""
        if self.job is not None:
            self.job.cancel()
        if self._scoring is not None and self._scoring.running:
            self._scoring.cancel()

    def cleanup(self) -> None:
        """The module closes (or Slicer does): stop any run and remove this session's folder of run files (the
        last model and probabilities); what the user saved stays."""
        for run in (self.job, self._scoring):
            if run is not None and run.running:
                run.cancel()
        self._undo = None
        remove_state_dirs()

    def forgetRunFiles(self, node) -> None:
        """The scene closes: remove the files its runs left (last model, probabilities and their scores)."""
        for text in (node.lastModelPath, node.lastProbabilitiesPath):
            if text:
                remove_run_files(text)
        node.lastModelPath = node.lastModelSegments = node.lastProbabilitiesPath = ""
        self._undo = None

    # ------------------------------------------------------------------------------------ undo
    def canUndo(self) -> bool:
        return self._undo is not None

    def undoLastResult(self) -> str:
        """Take the last result back (the segmentation as it was before that run, or no new node); returns the
        one line for the panel."""
        from ContrastiveSegLib.slicer import nodes

        if self._undo is None:
            return _("Nothing to undo.")
        undo, self._undo = self._undo, None
        node = self.getParameterNode()
        if undo.created and node.outputSegmentation is undo.node:
            node.outputSegmentation = None
        nodes.undo_result(undo)
        return _("The last result was taken back.")

    # ------------------------------------------------------------------------------ uncertainty
    def scoresReady(self, node) -> bool:
        from ContrastiveSegLib.slicer.scoring import scores_file

        return bool(node and node.lastProbabilitiesPath and scores_file(node.lastProbabilitiesPath).is_file())

    def scoreUncertainty(self, node=None, waitForCompletion=False, completedCallback=None, timeout=None):
        """Score the last result's uncertainty in a worker process (never on the main thread): the slice scores
        "Suggest next slice" uses and, when the panel shows it, the uncertainty volume (under the volume's parent
        transform). ``completedCallback(outcome)``: outcome.suggestion, outcome.uncertainty_node."""
        from ContrastiveSegLib.slicer.scoring import place_scores, scoring_run

        node = node or self.getParameterNode()
        volumeNode = node.inputVolume
        run = scoring_run(node.lastProbabilitiesPath, volumeNode, entropy=node.showUncertainty,
                          python=python_executable(), env=slicer.util.startupEnvironment())

        def remember(job, outcome):
            place_scores(outcome, volumeNode,
                         None if node.inputSegmentation is None else lambda: self._readAnnotation(node))

        self._scoring = None if waitForCompletion else run
        return self._follow(run, waitForCompletion, None, remember, completedCallback, timeout)

    # ------------------------------------------------------------------------------------- helpers
    def annotationSummary(self, volumeNode, segmentationNode, node=None) -> list[str]:
        """One line per segment: how many slices of which plane are painted. Raises InputError with why not."""
        from ContrastiveSegLib.slicer import nodes

        resample = bool(node and node.allowResampling)
        axis = None if node is None or node.axis == AXIS_FROM_PAINT else axis_index(node.axis)
        return nodes.read_annotation(segmentationNode, volumeNode, axis=axis, resample=resample).summary()

    def annotationSegmentNames(self, segmentationNode) -> list[str]:
        segmentation = segmentationNode.GetSegmentation()
        return [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())
                if segmentation.GetNthSegment(n).GetName().strip().lower() != "background"]

    def _readAnnotation(self, node):
        from ContrastiveSegLib.slicer import nodes

        return nodes.read_annotation(node.inputSegmentation, node.inputVolume, resample=node.allowResampling)

    def _suggest(self, node, scores):
        from ContrastiveSegLib.slicer.scoring import suggest_from_scores

        annotation = self._readAnnotation(node)
        index, score = suggest_from_scores(scores, annotation.axis, annotation.slices)
        return annotation, index, score

    def suggestNextSlice(self, volumeNode, segmentationNode, node=None, jump=True):
        """(plane, slice index, mean uncertainty) of the least certain slice not annotated yet; moves the slice
        views there (in world coordinates: through the volume's parent transform) when ``jump``. Uses the
        uncertainty scores of the last run (scored in a worker process; scored now, in one, if not yet)."""
        from ContrastiveSegLib.slicer import nodes
        from ContrastiveSegLib.slicer.scoring import read_scores

        node = node or self.getParameterNode()
        if not node.lastProbabilitiesPath or not pathlib.Path(node.lastProbabilitiesPath).is_file():
            raise InputError(_("run Segment first: the suggestion comes from the last result"))
        scores = read_scores(node.lastProbabilitiesPath)
        if scores is None:
            outcome = self.scoreUncertainty(node, waitForCompletion=True)
            if not outcome.ok:
                raise InputError(outcome.message)
            scores = outcome.scores
        annotation, index, score = self._suggest(_Inputs(node, volumeNode, segmentationNode), scores)
        if jump and hasattr(slicer.modules, "markups"):
            ras = nodes.slice_center_world(volumeNode, annotation.axis, index)
            slicer.modules.markups.logic().JumpSlicesToLocation(*ras, True)
        return annotation.plane, index, score

    def saveModel(self, node, path) -> None:
        """Copy the last fine-tuned model (and its segment names and colours) to ``path``. Raises InputError
        (one line) when it cannot be written; a partly written copy is removed."""
        from ContrastiveSegLib.slicer.job import segments_file

        source = pathlib.Path(node.lastModelPath)
        if not source.is_file():
            raise InputError(_("no fine-tuned model yet: run Segment first"))
        target = pathlib.Path(path)
        try:
            shutil.copyfile(source, target)
            shutil.copyfile(segments_file(source), segments_file(target))
        except OSError as error:
            for each in (target, segments_file(target)):
                each.unlink(missing_ok=True)
            raise InputError(_("could not save the model to {path}: {reason}").format(
                path=path, reason=error.strerror or error)) from None


class _Inputs:
    """The parameter node's choices with another volume and segmentation (suggestNextSlice's arguments)."""

    def __init__(self, node, volumeNode, segmentationNode) -> None:
        self.inputVolume, self.inputSegmentation = volumeNode, segmentationNode
        self.allowResampling = node.allowResampling


class ContrastiveSegTest(ScriptedLoadableModuleTest):
    """Light checks that run in every Slicer test (no torch needed). The full flow: Testing/Slicer."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_summary_of_painted_slices()

    def test_summary_of_painted_slices(self) -> None:
        import numpy as np

        volume = slicer.util.addVolumeFromArray(np.zeros((8, 10, 12), dtype=np.float32), name="Phantom")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Paint")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("", "Lesion", [1, 0, 0])
        mask = np.zeros((8, 10, 12), dtype=np.uint8)
        mask[3, 2:5, 2:6] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segmentId, volume)
        lines = ContrastiveSegLogic().annotationSummary(volume, segmentation)
        self.assertEqual(lines, ["Lesion: 1 axial slice (k = 3)"])
        self.delayDisplay("ContrastiveSeg summary test passed")
