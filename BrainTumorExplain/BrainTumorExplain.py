"""BrainTumorExplain: open up brain-tumour segmentation networks (Natekar et al., Front. Comput. Neurosci. 2020).

This file is the Slicer module shell: module description, a thin widget over ``Resources/UI/BrainTumorExplain.ui``
and the self-test. Everything that touches MRML lives in the Qt-free ``BrainTumorExplainLogic`` package (tested on
slicer-core); the analyses run in a background ``PythonSlicer`` process, so torch never loads into Slicer itself.
Supported: Slicer 5.6, 5.8 and 5.10 (every Slicer call is checked against their source: docs/slicer-api.md).
"""

import importlib
import logging
import shutil
import time
from pathlib import Path
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from BrainTumorExplainLogic import (
    ExplainProcess,
    TorchProbe,
    add_gradcam_map,
    add_run_outputs,
    assign_modalities,
    ensure_library_importable,
    has_pytorch_extension,
    install_plan,
    jump_to_review_point,
    jump_to_voxel,
    load_case_nodes,
    missing_dependencies,
    network_channels,
    panel_config,
    panel_wording,
    register_terminology,
    runs_own_code,
    sample_data_source,
    show_overlay,
)
from BrainTumorExplainLogic.selftest import check_explain_round_trip, check_results_push, logic_test_enabled
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

ensure_library_importable()
from BrainTumorExplainLib.app.contract import last_explained_layer, read_summary  # noqa: E402  (no torch)
from BrainTumorExplainLib.app.report import (  # noqa: E402  (no torch)
    LESION_HEADER,
    REVIEW_HEADER,
    lesion_rows,
    preprocessing_lines,
    review_rows,
)
from BrainTumorExplainLib.app.settings import (  # noqa: E402  (no torch)
    DEVICE_CHOICES,
    GRADCAM_CLASS_CHOICES,
    MODEL_NAMES,
    UNCERTAINTY_MODES,
    ExplainConfig,
    uncertainty_mode,
)
from BrainTumorExplainLib.data.case import MODALITIES, SAMPLE_CASE  # noqa: E402  (numpy only at import)

POLL_MS = 500
DEFAULTS = ExplainConfig()
DEFAULT_UNCERTAINTY = uncertainty_mode(DEFAULTS.quick)  # auto: quick on a CPU, the full passes on a GPU


class BrainTumorExplain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Brain Tumor Explain")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]  # Slicer's own category
        self.parent.contributors = ["BrainTumorExplain developers"]
        self.parent.helpText = _(
            "Segment gliomas on the four BraTS MRI sequences (FLAIR, T1, T1ce, T2) and see how the network decides: "
            "concept masks per filter, layer-wise Grad-CAM, feature visualisation and test-time-dropout uncertainty."
        )
        self.parent.acknowledgementText = _(
            "Implements Natekar, Kori and Krishnamurthi, 'Demystifying brain tumor segmentation networks', 2020. "
            "The sample case is a phantom on the MNI ICBM152 2009a template (Copyright (C) 1993-2009 Louis Collins, "
            "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University)."
        )
        slicer.app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted() -> None:
    """Once the application is up: our segment terminology, and the sample case in the Sample Data module (each on
    its own: one failing must not stop the other)."""
    for step in (lambda: register_terminology(slicer.modules.terminologies.logic()), registerSampleData):
        try:
            step()
        except Exception:  # logged with its traceback; the module itself still works
            logging.exception("BrainTumorExplain: a startup step failed")


def registerSampleData() -> None:
    import SampleData

    thumbnail = Path(__file__).parent / "Resources" / "Icons" / f"{SAMPLE_CASE.name}.png"
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sample_data_source(thumbnail),
                                                               customDownloader=lambda source: loadSampleCase())


def loadSampleCase():
    """The Sample Data module's button (Sample Data's own download path would load the labels as a plain volume)."""
    with slicer.util.tryWithErrorDisplay(_("Could not load the sample case."), waitCursor=True):
        nodes = load_case_nodes(slicer.mrmlScene, SAMPLE_CASE)
        slicer.util.setSliceViewerLayers(background=nodes.volumes["flair"], label=nodes.labels, fit=True)
        return nodes


@parameterNodeWrapper
class BrainTumorExplainParameterNode:
    """The panel's settings, saved with the scene. Combo boxes need ``Choice`` (Slicer's QComboBox connector);
    the choices and defaults are the library's (BrainTumorExplainLib.app.settings)."""

    flair: slicer.vtkMRMLScalarVolumeNode
    t1: slicer.vtkMRMLScalarVolumeNode
    t1ce: slicer.vtkMRMLScalarVolumeNode
    t2: slicer.vtkMRMLScalarVolumeNode
    model: Annotated[str, Choice(list(MODEL_NAMES))] = DEFAULTS.model
    weights: str = ""  # bound by hand: a path line edit
    network: str = ""  # bound by hand: a path line edit (a MONAI bundle folder), used instead of ``model``
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = DEFAULTS.device
    uncertainty: Annotated[str, Choice(list(UNCERTAINTY_MODES))] = DEFAULT_UNCERTAINTY
    passes: Annotated[int, WithinRange(2, 1000)] = DEFAULTS.passes
    layers: str = DEFAULTS.layers  # bound by hand on editingFinished: Slicer 5.6/5.8 rewrite a bound line edit per key
    classes: Annotated[str, Choice(list(GRADCAM_CLASS_CHOICES))] = DEFAULTS.classes
    full_resolution: bool = DEFAULTS.full_resolution


# combo-box parameter → its choices and its default (the library's)
CHOICE_PARAMETERS = {"model": (MODEL_NAMES, DEFAULTS.model), "device": (DEVICE_CHOICES, DEFAULTS.device),
                     "classes": (GRADCAM_CLASS_CHOICES, DEFAULTS.classes),
                     "uncertainty": (tuple(UNCERTAINTY_MODES), DEFAULT_UNCERTAINTY)}
# setting → the .ui widget whose text names it: the run's messages name command-line options, the panel its controls
CONTROLS = {"model": "formLabel5", "weights": "formLabel6", "trust_bundle": "trustBundleCheckBox",
            "device": "formLabel7", "quick": "formLabel8", "passes": "formLabel9", "layers": "formLabel10",
            "classes": "formLabel11", "full_resolution": "formLabel12"}


class BrainTumorExplainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin shell: reads the panel, calls the logic, shows what it returns."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._process = None  # the analysis running now
        self._ending = []  # cancelled analyses whose processes are still ending (onPoll deletes their files after)
        self._probe = None  # the PyTorch question being asked now
        self._installing = False  # Apply is installing what the analysis needs
        self._lastRun = None  # the last finished run's RunOutputs; its files (self._lastProcess) back the Results
        self._lastProcess = None
        self._overlays = {}
        self._layers = []
        self._lesions: list[dict] = []  # the last run's lesion table (summary["review"]["lesions"]), row by row
        self._reviewIndex = -1  # the review point the slice views were last centred on
        self._started = 0.0
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.onPoll)
        self._probeTimer = qt.QTimer()
        self._probeTimer.setInterval(POLL_MS)
        self._probeTimer.timeout.connect(self.onProbePoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainTumorExplain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainTumorExplainLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.loadSampleButton.clicked.connect(lambda: self.loadCase(SAMPLE_CASE))
        self.ui.loadFolderButton.clicked.connect(self.onLoadFolder)
        self.ui.weightsPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.weightsPathLineEdit.currentPathChanged.connect(self.onWeightsChanged)
        self.ui.networkPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.networkPathLineEdit.currentPathChanged.connect(self.onNetworkChanged)
        self._modalityLabels = {m: getattr(self.ui, f"formLabel{i}").text for i, m in enumerate(MODALITIES, 1)}
        self.ui.layersLineEdit.editingFinished.connect(self.onLayersChanged)
        self.ui.checkDeviceButton.clicked.connect(self.onCheckDevice)
        self.ui.applyButton.clicked.connect(self.onApply)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.overlayComboBox.currentTextChanged.connect(self.onOverlayChanged)
        self.ui.opacitySliderWidget.valueChanged.connect(self.onOverlayChanged)
        self.ui.gradcamLayerSlider.valueChanged.connect(self.onGradcamChanged)
        self.ui.gradcamClassComboBox.currentTextChanged.connect(self.onGradcamChanged)
        self.ui.openReportButton.clicked.connect(self.onOpenReport)
        self.ui.reviewTable.cellClicked.connect(self.onReviewClicked)
        self.ui.lesionTable.cellClicked.connect(self.onLesionClicked)
        self.ui.nextReviewButton.clicked.connect(self.onNextReview)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module cleanup and application exit: no analysis, probe or file outlives the panel (a run still ending
        is finished by its atexit handler)."""
        self.onCancel()
        self._timer.stop()
        self._probeTimer.stop()
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        self._forgetRun()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        """The panel stays bound to its parameter node (binding again on enter would, in Slicer 5.6/5.8, reset the
        combo boxes through the old connectors: connectGui returns no tag there to disconnect them with)."""

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self._forgetRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameters and inputs -----------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(BrainTumorExplainParameterNode(self.logic.getParameterNode()))
        self.autoAssignInputs()

    def setParameterNode(self, parameterNode) -> None:
        """Bind the panel to ``parameterNode`` once (a no-op when it is the bound one)."""
        if (self._parameterNode is not None and parameterNode is not None
                and self._parameterNode.parameterNode == parameterNode.parameterNode):
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._parameterNodeGuiTag = None
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._carryOverTheQuickCheckBox()
            self._resetUnknownChoices()
            # connectParametersToGui returns its tag in every supported version (connectGui only from 5.10)
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(self._boundWidgets())
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.ui.weightsPathLineEdit.currentPath = self._parameterNode.weights
            self.ui.networkPathLineEdit.currentPath = self._parameterNode.network
            self._showNetworkChannels()
            self.ui.layersLineEdit.text = self._parameterNode.layers
            self._checkCanApply()

    def _boundWidgets(self) -> dict:
        """Parameter name → the .ui widget that names it in its SlicerParameterName property."""
        return {widget.property("SlicerParameterName"): widget for widget in vars(self.ui).values()
                if hasattr(widget, "property") and widget.property("SlicerParameterName")}

    def _carryOverTheQuickCheckBox(self) -> None:
        """A scene saved before the uncertainty combo box keeps its choice: its "quick" check box (saved "True" or
        "False" by Slicer's bool serializer) becomes the quick or full mode, and the old parameter goes."""
        node = self._parameterNode.parameterNode
        if node.HasParameter("quick"):
            self._parameterNode.uncertainty = uncertainty_mode(node.GetParameter("quick") == "True")
            node.UnsetParameter("quick")

    def _resetUnknownChoices(self) -> None:
        """A scene saved by another version may hold a value the combo box does not offer: use the default."""
        for name, (choices, default) in CHOICE_PARAMETERS.items():
            if getattr(self._parameterNode, name) not in choices:
                setattr(self._parameterNode, name, default)

    def autoAssignInputs(self) -> None:
        """Fill empty modality slots from node names; say which names were ambiguous."""
        volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                   if n.GetClassName() == "vtkMRMLScalarVolumeNode"]  # what the selectors offer (no label maps)
        found = assign_modalities([n.GetName() for n in volumes])
        byName = {n.GetName(): n for n in volumes}
        notes = []
        for modality in MODALITIES:
            if getattr(self._parameterNode, modality) is not None:
                continue
            if len(found[modality]) == 1:
                setattr(self._parameterNode, modality, byName[found[modality][0]])
            elif len(found[modality]) > 1:
                notes.append(_("{m}: several candidates ({names}), please choose").format(
                    m=modality.upper(), names=", ".join(found[modality])))
        self.ui.inputsStatusLabel.text = "\n".join(notes)

    def _inputs(self) -> dict:
        return {m: getattr(self._parameterNode, m) for m in MODALITIES}

    def _checkCanApply(self, caller=None, event=None) -> None:
        inputs = self._inputs() if self._parameterNode else {}
        missing = [m.upper() for m in MODALITIES if inputs.get(m) is None]
        running = self._process is not None
        self.ui.applyButton.enabled = not missing and not running and not self._installing
        self.ui.cancelButton.enabled = running
        self.ui.applyButton.toolTip = (_("Choose {missing}").format(missing=", ".join(missing)) if missing
                                       else _("Segment and explain (runs in the background)"))

    def onWeightsChanged(self, path: str) -> None:
        if self._parameterNode:
            self._parameterNode.weights = path

    def onNetworkChanged(self, path: str) -> None:
        if self._parameterNode:
            self._parameterNode.network = path
        self.ui.trustBundleCheckBox.checked = False  # trust is given to one folder, and never saved with a scene
        self._showNetworkChannels()

    def _showNetworkChannels(self) -> None:
        """Label each input selector with the channel of the user's network that takes it (from the bundle's own
        channel names), or say why the folder is not a network this panel can run."""
        folder = self._parameterNode.network if self._parameterNode else ""
        channels, status = {}, ""
        if folder:
            try:
                channels = network_channels(folder)
                status = _("Your network reads {n} sequence(s), in its own channel order (shown beside each input); "
                           "it is used instead of the network above.").format(n=len(channels))
            except ValueError as error:
                status = _("Not usable: {reason}").format(reason=str(error))
        for i, modality in enumerate(MODALITIES, 1):
            label = self._modalityLabels[modality]
            if modality in channels:
                label = _("{label} (network input {channel})").format(label=label.rstrip(":"),
                                                                      channel=channels[modality]) + ":"
            elif channels:
                label = _("{label} (not read by the network)").format(label=label.rstrip(":")) + ":"
            getattr(self.ui, f"formLabel{i}").text = label
        self.ui.networkStatusLabel.text = status
        self.ui.modelComboBox.enabled = not channels
        self.ui.weightsPathLineEdit.enabled = not channels
        self.ui.trustBundleCheckBox.enabled = self.ui.trustBundleWarningLabel.visible = (
            bool(channels) and runs_own_code(folder))

    def onLayersChanged(self) -> None:
        if self._parameterNode:
            self._parameterNode.layers = self.ui.layersLineEdit.text.strip() or DEFAULTS.layers

    def onLoadFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("BraTS case folder"))
        if folder:
            self.loadCase(Path(folder))

    def loadCase(self, folder: Path) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the case."), waitCursor=True):
            nodes = load_case_nodes(slicer.mrmlScene, folder)
            for modality in MODALITIES:
                setattr(self._parameterNode, modality, nodes.volumes[modality])
            slicer.util.setSliceViewerLayers(background=nodes.volumes["flair"], label=nodes.labels, fit=True)
            self.ui.inputsStatusLabel.text = _("Loaded {case}: FLAIR, T1, T1ce, T2{labels}.").format(
                case=nodes.case_id, labels=_(" and labels") if nodes.labels else "")

    # -- device and dependencies ---------------------------------------------------------------------------------
    def onCheckDevice(self) -> None:
        """Ask the analysis interpreter about PyTorch in the background; the answer arrives in onProbePoll."""
        if self._probe is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not ask PyTorch.")):
            self._probe = TorchProbe(self.logic.pythonExecutable())
            self.ui.checkDeviceButton.enabled = False
            self.ui.deviceStatusLabel.text = _("Asking PyTorch…")
            self._probeTimer.start()

    def onProbePoll(self) -> None:
        try:
            answer = self._probe.poll()
        except TimeoutError as error:
            answer, message = None, _("PyTorch did not answer: {error}").format(error=error)
        else:
            if answer is None:
                return
            version, cuda = answer
            message = (_("PyTorch is not installed yet: it is installed on the first Apply, after you agree.")
                       if not version else
                       _("PyTorch {v}; {device}").format(v=version, device=_("CUDA GPU available") if cuda
                                                         else _("CPU only (no CUDA GPU seen)")))
        self._probeTimer.stop()
        self._probe = None
        self.ui.checkDeviceButton.enabled = True
        self.ui.deviceStatusLabel.text = message

    def ensureDependencies(self) -> bool:
        """Install what the analysis process lacks, or has older than the project's minimums, after asking; False
        (said in the panel) when it does not happen or does not work."""
        network = self._parameterNode.network if self._parameterNode else ""
        missing = missing_dependencies(network=network)
        plan = install_plan(missing, has_pytorch_extension())
        if plan is None:
            return True
        if not slicer.util.confirmOkCancelDisplay(plan.question, windowTitle=_("Install dependencies")):
            self.ui.statusLabel.text = _("Not started: the analysis needs {names}, which were not installed.").format(
                names=", ".join(missing))
            return False
        try:
            with slicer.util.WaitCursor():
                self.ui.statusLabel.text = _("Installing {names}… (this can take minutes)").format(
                    names=", ".join(missing))
                slicer.app.processEvents()
                if plan.torch == "extension":
                    import PyTorchUtils

                    # installs light-the-torch, then the build for this GPU; it imports torch into Slicer itself
                    # once (the analyses still run in the background process)
                    PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                  torchVersionRequirement=plan.torch_version)
                elif plan.torch == "pip":
                    slicer.util.pip_install([plan.torch_requirement])
                # lists: pip_install passes them on as arguments, no shell quoting of ">=" (Slicer 5.6-5.10)
                if plan.packages:
                    slicer.util.pip_install(list(plan.packages))
                if plan.without_dependencies:
                    slicer.util.pip_install(["--no-deps", *plan.without_dependencies])
        except Exception as error:  # pip and the PyTorch extension raise many kinds; each means: not installed
            self.ui.statusLabel.text = _("Installing failed: {error}").format(error=error)
            slicer.util.errorDisplay(_("Installing the dependencies failed: {error}").format(error=error))
            return False
        importlib.invalidate_caches()  # what pip just installed must be found
        still = missing_dependencies(network=network)
        if still:
            self.ui.statusLabel.text = _("Still missing or too old after installing: {names}. Restart Slicer and try "
                                         "again (PyTorch: its PyTorch Utils module installs a chosen version).").format(
                names=", ".join(f"{name} ({found})" if found else name for name, found in still.items()))
            return False
        return True

    # -- running -------------------------------------------------------------------------------------------------
    def onApply(self) -> None:
        # pip's output calls processEvents (slicer.util.logProcessOutput): a click on Apply can arrive mid-install
        if self._installing or self._process is not None:
            return
        self._installing = True
        self._checkCanApply()
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not install what the analysis needs.")):
                ready = self.ensureDependencies()  # asks first: no wait cursor over the question
        finally:
            self._installing = False
            self._checkCanApply()
        if not ready:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the analysis."), waitCursor=True):
            try:
                settings = self.logic.settings(self._parameterNode, trust=self.ui.trustBundleCheckBox.checked)
            except ValueError as error:  # the library's refusal, in command-line words
                raise ValueError(self._inPanelWords(str(error))) from None
            self._process = ExplainProcess(self._inputs(), settings, self.logic.pythonExecutable())
            self._started = time.time()
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting…")
            self._checkCanApply()
            self._timer.start()

    def onCancel(self) -> None:
        """Start ending the analysis and every process it started, and return: waiting here would freeze Slicer
        for the run's grace period and more; onPoll deletes its files once it has ended."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.request_cancel()
        self._ending.append(process)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Cancelling…")
        self._checkCanApply()
        self._timer.start()

    def onPoll(self) -> None:
        if self._ending:
            self._ending = [process for process in self._ending if not process.cancelled()]
            if not self._ending and self._process is None:
                self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene.")
        if self._process is None:
            if not self._ending:
                self._timer.stop()
            return
        status = self._process.poll()
        self.ui.progressBar.value = int(100 * status.fraction)
        elapsed = time.time() - self._started
        if not status.finished:
            self.ui.statusLabel.text = _("{stage}… ({seconds:.0f} s)").format(stage=status.stage or _("starting"),
                                                                            seconds=elapsed)
            return
        if not self._ending:
            self._timer.stop()
        process, self._process = self._process, None
        self._checkCanApply()
        if status.error:
            process.cleanup()
            error = self._inPanelWords(status.error)
            self.ui.statusLabel.text = _("Failed: {error}").format(error=error)
            slicer.util.errorDisplay(_("The analysis failed: {error}").format(error=error),
                                     detailedText=status.log[-5000:])
            return
        self._pushResults(process, elapsed)

    def _inPanelWords(self, message: str) -> str:
        return panel_wording(message, {name: getattr(self.ui, widget).text.rstrip(":")
                                       for name, widget in CONTROLS.items()})

    def _pushResults(self, process, elapsed: float) -> None:
        self._forgetRun()
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not add the results to the scene."), waitCursor=True):
                register_terminology(slicer.modules.terminologies.logic())  # if startup could not (idempotent)
                folderName = f"BrainTumorExplain {process.settings.model} {time.strftime('%H:%M')}"
                run, overlays = add_run_outputs(slicer.mrmlScene, process.out, process.reference, folderName,
                                                process.geometry)
                self._lastRun, self._lastProcess = run, process
                self.showResults(read_summary(process.out), overlays)
                self.ui.statusLabel.text = _("Done in {seconds:.0f} s.").format(seconds=elapsed)
        finally:
            if self._lastRun is None:  # the push failed (the transaction removed its nodes): drop the files too
                process.cleanup()
                self.ui.statusLabel.text = _("Finished, but the results could not be added to the scene.")

    def _forgetRun(self) -> None:
        """The last run's files go, and its results leave the panel; its nodes stay in the scene (they are the
        user's now)."""
        if self._lastProcess is not None:
            self._lastProcess.cleanup()
        self._lastRun = self._lastProcess = None
        self._overlays, self._layers, self._lesions, self._reviewIndex = {}, [], [], -1
        self.ui.overlayComboBox.clear()
        self.ui.gradcamClassComboBox.clear()
        self.ui.gradcamLayerSlider.maximum = 0
        self.ui.gradcamLayerLabel.text = ""
        for table in (self.ui.detectorsTable, self.ui.reviewTable, self.ui.lesionTable):
            fillTable(table, [], [])
        self.ui.featvizLabel.setPixmap(qt.QPixmap())
        self.ui.openReportButton.enabled = self.ui.nextReviewButton.enabled = False
        self.ui.preprocessingLabel.text = ""

    # -- results -------------------------------------------------------------------------------------------------
    def showResults(self, summary: dict, overlays: dict) -> None:
        self._overlays = overlays
        self.ui.overlayComboBox.clear()
        self.ui.overlayComboBox.addItems(list(overlays))
        gradcam = summary.get("gradcam", {})
        self._layers = gradcam.get("layers", [])
        # no class while the slider takes this run's range (its handler waits for one), then the first class: one
        # call, for the layer whose maps the run added
        self.ui.gradcamClassComboBox.clear()
        self.ui.gradcamLayerSlider.maximum = max(len(self._layers) - 1, 0)
        if self._layers:
            self.ui.gradcamLayerSlider.value = self._layers.index(last_explained_layer(self._layers))
        self.ui.gradcamClassComboBox.addItems(gradcam.get("classes", []))
        detectors = summary.get("concepts", {}).get("detectors", [])
        keys = ("concept", "layer", "filter", "dataset_iou", "control_iou", "case_iou")
        fillTable(self.ui.detectorsTable, [_("concept"), _("layer"), _("filter"), _("IoU (dissection set)"),
                                           _("best control's IoU"), _("IoU (this case)")],
                  [[str(entry.get(key, "—")) for key in keys] for entry in detectors])
        review = summary.get("review", {})
        fillTable(self.ui.reviewTable, REVIEW_HEADER, review_rows(review))
        fillTable(self.ui.lesionTable, LESION_HEADER, lesion_rows(review))
        self._lesions = review.get("lesions", [])
        self._reviewIndex = -1
        self.ui.nextReviewButton.enabled = self._lastRun.review_points is not None
        picture = self._lastProcess.out / "featviz" / "detectors.png"
        self.ui.featvizLabel.setPixmap(qt.QPixmap(str(picture)).scaledToWidth(360) if picture.is_file()
                                       else qt.QPixmap())
        self.ui.openReportButton.enabled = (self._lastProcess.out / "report.html").is_file()
        self.ui.preprocessingLabel.text = "\n".join(preprocessing_lines(summary))
        self.onOverlayChanged()

    def onOverlayChanged(self, *args) -> None:
        name = self.ui.overlayComboBox.currentText
        if self._lastRun is None or name not in self._overlays:
            return
        show_overlay(slicer.mrmlScene, self._lastProcess.reference, self._overlays[name],
                     opacity=self.ui.opacitySliderWidget.value)

    def onGradcamChanged(self, *args) -> None:
        """Show the chosen layer's Grad-CAM; a layer's map is added to the run's folder the first time it is seen."""
        if self._lastRun is None or not self._layers or not self.ui.gradcamClassComboBox.currentText:
            return
        layer = self._layers[self.ui.gradcamLayerSlider.value]
        className = self.ui.gradcamClassComboBox.currentText
        name = f"Grad-CAM {layer} {className}"
        self.ui.gradcamLayerLabel.text = name
        with slicer.util.tryWithErrorDisplay(_("Could not show this Grad-CAM map."), waitCursor=True):
            if name not in self._overlays:
                self._overlays[name] = add_gradcam_map(self._lastRun, self._lastProcess.out, layer, className)
                self.ui.overlayComboBox.addItem(name)
            self.ui.overlayComboBox.currentText = name

    def onReviewClicked(self, row: int, column: int = 0) -> None:
        """Centre the slice views on the review region of the clicked row."""
        points = self._lastRun.review_points if self._lastRun is not None else None
        if points is None or not 0 <= row < points.GetNumberOfControlPoints():
            return
        jump_to_review_point(slicer.mrmlScene, points, row)
        self._reviewIndex = row
        self.ui.reviewTable.selectRow(row)

    def onLesionClicked(self, row: int, column: int = 0) -> None:
        """Centre the slice views on the lesion of the clicked row (its place: a voxel of the reference volume)."""
        if self._lastProcess is None or not 0 <= row < len(self._lesions):
            return
        jump_to_voxel(slicer.mrmlScene, self._lastProcess.reference, self._lesions[row]["place"]["ijk"])
        self.ui.lesionTable.selectRow(row)

    def onNextReview(self) -> None:
        points = self._lastRun.review_points if self._lastRun is not None else None
        if points is not None and points.GetNumberOfControlPoints():
            self.onReviewClicked((self._reviewIndex + 1) % points.GetNumberOfControlPoints())

    def onOpenReport(self) -> None:
        if self._lastProcess is not None:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self._lastProcess.out / "report.html")))


def fillTable(table, headers: list[str], rows: list[list[str]]) -> None:
    """A read-only QTableWidget with these column headers and rows of text."""
    table.clear()
    table.setColumnCount(len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.setRowCount(len(rows))
    for row, values in enumerate(rows):
        for column, value in enumerate(values):
            item = qt.QTableWidgetItem(value)
            item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
            table.setItem(row, column, item)


class BrainTumorExplainLogic(ScriptedLoadableModuleLogic):
    """Thin adapter from the panel's parameter node to the Qt-free logic package (the Qt-free package of the same
    name is never bound here: only names from it are imported). Slicer names the module, and so the parameter node,
    after this class, less 'Logic' (ScriptedLoadableModuleLogic, v5.6.0 to v5.10.0)."""

    @staticmethod
    def pythonExecutable() -> str:
        """The interpreter for the analysis process: PythonSlicer (Slicer's Python with its packages)."""
        return shutil.which("PythonSlicer") or shutil.which("PythonSlicer.exe") or "PythonSlicer"

    def settings(self, parameters, trust: bool = False) -> ExplainConfig:
        """The run the panel asks for; ``auto`` stays ``auto``: the analysis process picks the device itself, so
        Apply never waits for a PyTorch probe. ``trust``: run the user's network's own code (not a parameter: a
        scene from someone else must not turn it on)."""
        own = bool(parameters.network)
        return panel_config(model=parameters.network if own else parameters.model,
                            weights=None if own else parameters.weights or None, device=parameters.device,
                            quick=UNCERTAINTY_MODES[parameters.uncertainty], passes=parameters.passes,
                            layers=parameters.layers,
                            classes=parameters.classes, full_resolution=parameters.full_resolution,
                            trust_bundle=own and trust)


class BrainTumorExplainTest(ScriptedLoadableModuleTest):
    """The push check runs everywhere (no PyTorch needed); the full explain round trip of Testing/
    test_slicer_module.py only with BRAINTUMOREXPLAIN_TEST_LOGIC=1 (it needs PyTorch and minutes of CPU)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_results_reach_the_scene_on_the_input_geometry()
        self.setUp()
        self.test_explain_round_trip_on_the_sample_case()

    def test_results_reach_the_scene_on_the_input_geometry(self):
        check_results_push(slicer.mrmlScene, SAMPLE_CASE, slicer.modules.terminologies.logic())
        self.delayDisplay("Results pushed onto the sample case's geometry, with terminology, and removed cleanly")

    def test_explain_round_trip_on_the_sample_case(self):
        if not logic_test_enabled():
            self.delayDisplay("Explain round trip skipped: set BRAINTUMOREXPLAIN_TEST_LOGIC=1 to run it (needs PyTorch)")
            return
        self.delayDisplay("Explaining the sample case in a background process (a few minutes on a CPU)")
        summary = check_explain_round_trip(slicer.mrmlScene, SAMPLE_CASE,
                                           python=BrainTumorExplainLogic.pythonExecutable(),
                                           idle=slicer.app.processEvents)
        self.delayDisplay(f"Sample case explained: {summary['case']}, results on the FLAIR's geometry")
