"""The panel itself (BrainTumorExplain.py's widget and logic class) on real MRML (slicer-core), with stand-ins only for
what cannot run here: Qt and CTK widgets (built from the module's own .ui file, with Qt's signal rules: a disabled
button does not click, a slider clamps its value to a new range, a combo box announces its current text), Slicer's
GUI helpers (dialogs, wait cursor, the application object) and the PyTorch extension. Slicer's own
ScriptedLoadableModuleLogic is read from a Slicer source mirror at each supported tag when one is here."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import subprocess
import sys
import time
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")  # slicer-core
ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "BrainTumorExplain"
MODULE_FILE = MODULE / "BrainTumorExplain.py"
UI_FILE = MODULE / "Resources" / "UI" / "BrainTumorExplain.ui"
SLICER_TAGS = ("v5.6.0", "v5.8.1", "v5.10.0")
sys.path.insert(0, str(MODULE))


def _mirror() -> Path:
    spec = importlib.util.spec_from_file_location("check_slicer_api_mirror", ROOT / "scripts" / "check_slicer_api.py")
    checker = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = checker
    spec.loader.exec_module(checker)
    return checker.DEFAULT_MIRROR


MIRROR = _mirror()


# -- Qt, as far as the panel uses it ---------------------------------------------------------------------------------
class Signal:
    """A Qt signal: slots run in connection order; an exception in a slot is printed by PythonQt (here: kept in
    ``console``) and the emitter goes on."""

    def __init__(self, console: list) -> None:
        self.slots, self.console = [], console

    def connect(self, slot) -> None:
        self.slots.append(slot)

    def emit(self, *args) -> None:
        for slot in list(self.slots):
            try:
                slot(*args)
            except Exception as error:  # what PythonQt does with a slot's exception: print it, go on
                self.console.append(error)


class Widget:
    SIGNALS: tuple[str, ...] = ()

    def __init__(self, name: str, properties: dict, console: list) -> None:
        self.objectName, self._properties = name, properties
        self.enabled = properties.get("enabled", True)
        self.visible = True
        self.text = properties.get("text", "")
        self.toolTip = properties.get("toolTip", "")
        for signal in self.SIGNALS:
            setattr(self, signal, Signal(console))

    def property(self, name: str):
        return self._properties.get(name)

    def setMRMLScene(self, scene) -> None:
        self.scene = scene


class PushButton(Widget):
    SIGNALS = ("clicked",)

    def click(self) -> None:
        if self.enabled:  # QAbstractButton.click: nothing on a disabled button
            self.clicked.emit()


class CheckBox(Widget):
    SIGNALS = ("toggled",)

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._checked = bool(self._properties.get("checked", False))

    @property
    def checked(self) -> bool:
        return self._checked

    @checked.setter
    def checked(self, value: bool) -> None:
        if bool(value) != self._checked:
            self._checked = bool(value)
            self.toggled.emit(self._checked)

    def click(self) -> None:
        if self.enabled:
            self.checked = not self.checked


class Label(Widget):
    pixmap = None

    def setPixmap(self, pixmap) -> None:
        self.pixmap = pixmap


class ComboBox(Widget):
    SIGNALS = ("currentTextChanged",)

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.items, self._index = [], -1

    def _select(self, index: int) -> None:
        if index != self._index:
            self._index = index
            self.currentTextChanged.emit(self.currentText)

    @property
    def currentText(self) -> str:
        return self.items[self._index] if self._index >= 0 else ""

    @currentText.setter
    def currentText(self, text: str) -> None:  # a non-editable combo box selects the item with this text
        if text in self.items:
            self._select(self.items.index(text))

    def count(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        self.items = []
        if self._index != -1:
            self._index = -1
            self.currentTextChanged.emit("")

    def addItems(self, texts) -> None:
        for text in texts:
            self.addItem(text)

    def addItem(self, text: str) -> None:
        self.items.append(text)
        if self._index == -1:  # the first item becomes the current one
            self._select(0)


class Slider(Widget):
    """QSlider: a new range clamps the value (announced when it changes)."""

    SIGNALS = ("valueChanged",)

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._minimum, self._maximum, self._value = 0, 99, 0

    def _set(self, value: int) -> None:
        value = min(max(int(value), self._minimum), self._maximum)
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    value = property(lambda self: self._value, _set)

    @property
    def maximum(self) -> int:
        return self._maximum

    @maximum.setter
    def maximum(self, value: int) -> None:
        self._maximum = int(value)
        self._minimum = min(self._minimum, self._maximum)
        self._set(self._value)


class SliderWidget(Widget):
    SIGNALS = ("valueChanged",)

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.value = float(self._properties.get("value", 0.0))


class LineEdit(Widget):
    SIGNALS = ("editingFinished",)


class PathLineEdit(Widget):
    SIGNALS = ("currentPathChanged",)

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._path, self.filters = "", None

    @property
    def currentPath(self) -> str:
        return self._path

    @currentPath.setter
    def currentPath(self, path: str) -> None:
        if path != self._path:
            self._path = path
            self.currentPathChanged.emit(path)


class TableWidget(Widget):
    SIGNALS = ("cellClicked",)

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.cells, self.headers, self.rows, self.columns = {}, [], 0, 0

    def clear(self) -> None:  # QTableWidget.clear: items and headers go, the row and column counts stay
        self.cells, self.headers = {}, []

    def setColumnCount(self, count: int) -> None:
        self.columns = count

    def setRowCount(self, count: int) -> None:
        self.rows = count
        self.cells = {cell: item for cell, item in self.cells.items() if cell[0] < count}

    def setHorizontalHeaderLabels(self, labels) -> None:
        self.headers = list(labels)

    def setItem(self, row: int, column: int, item) -> None:
        self.cells[row, column] = item

    def rowCount(self) -> int:
        return self.rows

    def selectRow(self, row: int) -> None:
        self.selected = row


class Value(Widget):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.value = self._properties.get("value", 0)


WIDGETS = {"QPushButton": PushButton, "QCheckBox": CheckBox, "QLabel": Label, "QComboBox": ComboBox,
           "QSlider": Slider, "ctkSliderWidget": SliderWidget, "QLineEdit": LineEdit, "ctkPathLineEdit": PathLineEdit,
           "QTableWidget": TableWidget, "QSpinBox": Value, "QProgressBar": Value}


def _ui_widgets(path: Path, console: list) -> SimpleNamespace:
    """Every named widget of a .ui file as a stand-in of its class, with the properties the file sets."""
    widgets = {}
    for element in ElementTree.parse(path).iter("widget"):
        properties = {}
        for prop in element.findall("property"):
            value = next(iter(prop), None)
            if value is None:
                continue
            text = value.text or ""
            kinds = {"bool": lambda: text == "true", "number": lambda: int(text), "double": lambda: float(text)}
            properties[prop.get("name")] = kinds.get(value.tag, lambda: text)()
        widgets[element.get("name")] = WIDGETS.get(element.get("class"), Widget)(element.get("name"), properties,
                                                                                console)
    return SimpleNamespace(**widgets)


class Timer:
    def __init__(self) -> None:
        self.active, self.interval = False, 0
        self.timeout = Signal([])

    def setInterval(self, ms: int) -> None:
        self.interval = ms

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


class Pixmap:
    def __init__(self, path: str = "") -> None:
        self.path = path

    def isNull(self) -> bool:
        return not self.path

    def scaledToWidth(self, width: int) -> Pixmap:
        return self


class TableItem:
    def __init__(self, text: str) -> None:
        self.text = text

    def setFlags(self, flags) -> None:
        self.flags = flags


def _qt() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QTimer, qt.QPixmap, qt.QTableWidgetItem = Timer, Pixmap, TableItem
    qt.Qt = SimpleNamespace(ItemIsSelectable=1, ItemIsEnabled=32)
    qt.QDesktopServices = SimpleNamespace(openUrl=lambda url: None)
    qt.QUrl = SimpleNamespace(fromLocalFile=lambda path: path)
    qt.QFileDialog = SimpleNamespace(getExistingDirectory=lambda *args: "")
    return qt


# -- Slicer's Python helpers that need the application ---------------------------------------------------------------
def _parameter_node_wrapper() -> types.ModuleType:
    """slicer.parameterNodeWrapper, as far as the panel uses it: typed fields with defaults, kept in a real
    vtkMRMLScriptedModuleNode (nodes as node references, other values as parameters), and its observer methods
    (wrapper.py)."""
    import ast

    module = types.ModuleType("slicer.parameterNodeWrapper")

    def parameterNodeWrapper(cls):
        defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}
        nodes = {name for name, kind in cls.__annotations__.items()
                 if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode)}

        class Wrapper:
            def __init__(self, parameterNode) -> None:
                object.__setattr__(self, "parameterNode", parameterNode)

            def __getattr__(self, name):
                if name in nodes:
                    return self.parameterNode.GetNodeReference(name)
                if name in defaults:
                    text = self.parameterNode.GetParameter(name)
                    return ast.literal_eval(text) if text else defaults[name]
                raise AttributeError(name)

            def __setattr__(self, name, value) -> None:
                if name in nodes:
                    self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                elif name in defaults:
                    self.parameterNode.SetParameter(name, repr(value))
                else:
                    raise AttributeError(f"{name} is not a parameter")

            def AddObserver(self, event, callback, priority=0.0):
                return self.parameterNode.AddObserver(event, callback, priority)

            def RemoveObserver(self, tag) -> None:
                self.parameterNode.RemoveObserver(tag)

            def connectParametersToGui(self, mapping):
                return object()

            def disconnectGui(self, tag) -> None:
                pass

        Wrapper.__name__ = cls.__name__
        return Wrapper

    module.parameterNodeWrapper = parameterNodeWrapper
    module.Choice = lambda choices: ("Choice", tuple(choices))
    module.WithinRange = lambda low, high: ("WithinRange", low, high)
    return module


def slicer_logic_class(tag: str | None):
    """Slicer's own ScriptedLoadableModuleLogic at ``tag`` (read from the mirror), or, without one, a stand-in with
    the same rule for the module name (the class name less 'Logic', as in v5.6.0 to v5.10.0)."""
    if tag is not None:
        source = subprocess.run(["git", f"--git-dir={MIRROR}", "show",
                                 f"{tag}:Base/Python/slicer/ScriptedLoadableModule.py"],
                                capture_output=True, text=True, check=True).stdout
        namespace = {"__name__": f"ScriptedLoadableModule_{tag}"}
        exec(compile(source, f"{tag}:ScriptedLoadableModule.py", "exec"), namespace)
        return namespace["ScriptedLoadableModuleLogic"]

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            self.moduleName = self.__class__.__name__.removesuffix("Logic")

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
                node.UnRegister(None)
                node.SetSingletonTag(self.moduleName)
                node.SetAttribute("ModuleName", self.moduleName)
                node = slicer.mrmlScene.AddNode(node)
            return node

    return ScriptedLoadableModuleLogic


def _mirror_tags() -> list[str]:
    if not MIRROR.is_dir():
        return []
    return [tag for tag in SLICER_TAGS if subprocess.run(["git", f"--git-dir={MIRROR}", "rev-parse", "--verify", "-q",
                                                          tag], capture_output=True).returncode == 0]


class Harness:
    """Installs the stand-ins, loads the module file, and records what the panel showed."""

    def __init__(self, monkeypatch, logic_tag: str | None = None) -> None:
        self.console: list[Exception] = []  # exceptions of slots, as PythonQt prints them
        self.errors: list[str] = []  # slicer.util.errorDisplay
        self.questions: list[str] = []  # slicer.util.confirmOkCancelDisplay
        self.answer = True
        self.pending: list = []  # user actions that slicer.app.processEvents delivers
        self.pip: list = []
        self.pip_effect = None  # what the stand-in pip_install changes (installed versions)
        qt = _qt()
        for name, module in (("qt", qt), ("ctk", types.ModuleType("ctk")),
                             ("slicer.parameterNodeWrapper", _parameter_node_wrapper()),
                             ("slicer.i18n", types.ModuleType("slicer.i18n"))):
            monkeypatch.setitem(sys.modules, name, module)
        sys.modules["ctk"].ctkPathLineEdit = SimpleNamespace(Files=1, Dirs=2)
        sys.modules["slicer.i18n"].tr = lambda text: text
        sys.modules["slicer.i18n"].translate = lambda context, text: text
        monkeypatch.setattr(slicer, "i18n", sys.modules["slicer.i18n"], raising=False)
        monkeypatch.setattr(slicer, "parameterNodeWrapper", sys.modules["slicer.parameterNodeWrapper"], raising=False)
        self.app = SimpleNamespace(processEvents=self.processEvents, connect=lambda *args: None,
                                   testingEnabled=lambda: False)
        monkeypatch.setattr(slicer, "app", self.app, raising=False)
        loadable = types.ModuleType("slicer.ScriptedLoadableModule")
        loadable.ScriptedLoadableModuleLogic = slicer_logic_class(logic_tag)
        loadable.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {
            "__init__": lambda self, parent: setattr(self, "parent", parent)})
        loadable.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
        loadable.ScriptedLoadableModuleTest = unittest.TestCase
        monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", loadable)
        monkeypatch.setattr(slicer, "ScriptedLoadableModule", loadable, raising=False)
        util = slicer.util
        monkeypatch.setattr(util, "loadUI", lambda path: Widget(str(path), {}, self.console))
        monkeypatch.setattr(util, "childWidgetVariables", lambda root: _ui_widgets(Path(root.objectName), self.console))
        monkeypatch.setattr(util, "errorDisplay", lambda text, **kwargs: self.errors.append(text))
        monkeypatch.setattr(util, "confirmOkCancelDisplay", self._confirm)
        monkeypatch.setattr(util, "WaitCursor", contextlib.nullcontext)
        monkeypatch.setattr(util, "tryWithErrorDisplay", self._try_with_error_display)
        monkeypatch.setattr(util, "setSliceViewerLayers", lambda **kwargs: None)
        monkeypatch.setattr(util, "mainWindow", lambda: None)
        monkeypatch.setattr(util, "pip_install", self._pip_install)
        spec = importlib.util.spec_from_file_location("BrainTumorExplain", MODULE_FILE)
        self.module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "BrainTumorExplain", self.module)
        spec.loader.exec_module(self.module)

    def _confirm(self, text, **kwargs) -> bool:
        self.questions.append(text)
        return self.answer

    def _pip_install(self, requirements) -> None:
        """slicer.util.pip_install: logProcessOutput calls processEvents on every line pip prints (util.py)."""
        self.pip.append(requirements)
        if self.pip_effect:
            self.pip_effect(requirements)
        for _line in range(3):
            self.app.processEvents()

    @contextlib.contextmanager
    def _try_with_error_display(self, message=None, show=True, waitCursor=False):
        """slicer.util.tryWithErrorDisplay (v5.6.0 to v5.10.0): show the error, then raise it again."""
        try:
            yield
        except Exception as error:
            if show:
                self.errors.append(f"{message}\n\n{error}" if message else str(error))
            raise

    def processEvents(self) -> None:
        pending, self.pending = self.pending, []
        for action in pending:
            action()


class ScriptedLoadableModuleWidget:
    """The parts of Slicer's widget base class the panel uses."""

    def __init__(self, parent=None) -> None:
        self.parent = parent or SimpleNamespace(isEntered=True)
        self.layout = SimpleNamespace(addWidget=lambda widget: None)

    def setup(self) -> None:
        pass

    def resourcePath(self, filename: str) -> str:
        return str(MODULE / "Resources" / filename)


@pytest.fixture
def harness(scene, monkeypatch):
    return Harness(monkeypatch)


@pytest.fixture
def panel(harness):
    """The module's widget after setup(), on the scene fixture's scene."""
    widget = harness.module.BrainTumorExplainWidget()
    widget.setup()
    yield widget
    widget.cleanup()


def _volume(scene, name: str, shape=(8, 10, 12)):
    array = np.random.default_rng(len(name)).random(shape).astype(np.float32)
    return slicer.util.addVolumeFromArray(array, name=name)


def _inputs(scene, widget) -> None:
    for modality in ("flair", "t1", "t1ce", "t2"):
        setattr(widget._parameterNode, modality, _volume(scene, f"case_{modality}"))


# -- the parameter node ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", _mirror_tags() or [None])
def test_the_parameter_node_is_found_under_the_modules_name(scene, monkeypatch, tag):
    """ScriptedLoadableModuleLogic names the module after its class, less 'Logic' (v5.6.0, v5.8.1, v5.10.0):
    the logic class must be <module>Logic for the parameter node to carry the module's name."""
    harness = Harness(monkeypatch, logic_tag=tag)
    module = harness.module
    base = sys.modules["slicer.ScriptedLoadableModule"].ScriptedLoadableModuleLogic
    logic_classes = [value for value in vars(module).values()
                     if isinstance(value, type) and issubclass(value, base) and value is not base]
    assert len(logic_classes) == 1
    logic = logic_classes[0]()
    assert logic.moduleName == module.BrainTumorExplain.__name__ == "BrainTumorExplain"
    node = logic.getParameterNode()
    assert node.GetAttribute("ModuleName") == "BrainTumorExplain"
    assert scene.GetSingletonNode("BrainTumorExplain", "vtkMRMLScriptedModuleNode") is node
    widget = module.BrainTumorExplainWidget()
    widget.setup()
    assert widget._parameterNode.parameterNode is node  # the panel binds that node
    widget.cleanup()


# -- Apply and the dependency install --------------------------------------------------------------------------------
def _versions(monkeypatch, **fake) -> dict:
    """Installed versions as the dependency check sees them: ``fake`` (project → version, None: not installed) over
    this environment's."""
    from BrainTumorExplainLogic import library

    real = library.installed_version
    versions = {project.replace("_", "-"): version for project, version in fake.items()}
    monkeypatch.setattr(library, "installed_version",
                        lambda module, project: versions[project] if project in versions else real(module, project))
    return versions


def _stand_in_python(tmp_path: Path, body: str) -> str:
    """An interpreter for the background run that only does ``body``."""
    path = tmp_path / "python-stand-in"
    path.write_text(f"#!{sys.executable}\nimport sys, time, signal\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_a_click_on_apply_during_the_install_starts_no_second_install_or_run(scene, panel, harness, monkeypatch):
    """pip's output calls processEvents on every line, so a click on Apply is delivered mid-install: Apply is
    disabled first, and a click that still arrives starts nothing."""
    _versions(monkeypatch, PyYAML=None)  # missing, and still missing after the stand-in pip
    _inputs(scene, panel)
    assert panel.ui.applyButton.enabled
    seen = []

    def click_again() -> None:  # the user, impatient, while pip prints
        seen.append(panel.ui.applyButton.enabled)
        panel.ui.applyButton.click()
        panel.onApply()  # and a click queued before Apply was disabled

    harness.pending = [click_again, click_again]
    panel.ui.applyButton.click()
    assert seen == [False, False]
    assert len(harness.questions) == 1 and harness.pip == [["PyYAML>=5.4"]]
    assert panel._process is None and not harness.console
    assert "PyYAML>=5.4" in panel.ui.statusLabel.text and "Still missing" in panel.ui.statusLabel.text
    assert panel.ui.applyButton.enabled  # back once the install is over


def test_an_older_pytorch_is_upgraded_through_the_pytorch_extension_to_the_projects_minimum(scene, panel, harness,
                                                                                             monkeypatch, tmp_path):
    """torch 2.4 (another extension's) does not pass: PyTorchUtils' installTorch gets the project's minimum, in the
    call shape the module has always used (SlicerPyTorch's own module cannot run here: a stand-in records it)."""
    versions = _versions(monkeypatch, torch="2.4.1+cu121", monai="1.3.0")
    calls = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append((askConfirmation, torchVersionRequirement))
            versions["torch"] = "2.7.1+cu126"

    extension = types.ModuleType("PyTorchUtils")
    extension.__spec__ = importlib.machinery.ModuleSpec("PyTorchUtils", None)
    extension.PyTorchUtilsLogic = PyTorchUtilsLogic
    monkeypatch.setitem(sys.modules, "PyTorchUtils", extension)
    harness.pip_effect = lambda requirements: versions.update(monai="1.4.0")
    monkeypatch.setattr(harness.module.BrainTumorExplainLogic, "pythonExecutable",
                        staticmethod(lambda: _stand_in_python(tmp_path, "sys.exit(3)")))
    _inputs(scene, panel)
    panel.ui.applyButton.click()
    assert "2.4.1+cu121" in harness.questions[0] and "2.6 or newer" in harness.questions[0]
    assert calls == [(False, ">=2.6")] and harness.pip == [["monai>=1.4"]]
    assert panel._process is not None  # installed: the run started
    panel.onCancel()


# -- the results -----------------------------------------------------------------------------------------------------
CLASSES = ("NCR", "ED", "ET")


def _show_run(scene, widget, folder: Path, layers: list[str], review_points=None) -> dict:
    """A finished run as the panel shows it: the overlays add_run_outputs gives (real volumes: the maps and the
    Grad-CAM of the run's last explained layer per class), a summary with every table filled, its files."""
    from BrainTumorExplainLib.app.contract import last_explained_layer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text("<html></html>")
    (folder / "featviz").mkdir(exist_ok=True)
    (folder / "featviz" / "detectors.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    last = last_explained_layer(layers)
    overlays = {name: _volume(scene, name) for name in ("uncertainty", *(f"Grad-CAM {last} {c}" for c in CLASSES))}
    region = {"rank": 1, "uncertainty_mass": 48.0, "volume_mm3": 120.0, "mean_entropy": 0.4,
              "place": {"ras": [1.0, 2.0, 3.0], "ijk": [4, 5, 6]},
              "why": "uncertain"}
    lesion = {"region": "WT", "number": 1, "match": 1, "volume_mm3": 900.0, "dice": 0.8, "place": {"ijk": [3, 7, 2]},
              "uncertainty": {"entropy": {"mean": 0.1}}, "gradcam": {}, "detectors": {}}
    summary = {"gradcam": {"layers": list(layers), "classes": list(CLASSES)},
               "concepts": {"detectors": [{"concept": "WT", "layer": last, "filter": 3}]},
               "review": {"regions": [region], "lesions": [lesion]},
               "preprocessing": {"steps": ["brain mask: the scan's own"]}}
    widget._lastRun = SimpleNamespace(review_points=review_points)
    widget._lastProcess = SimpleNamespace(out=folder, reference=_volume(scene, "flair"), cleanup=lambda: None)
    widget.showResults(summary, overlays)
    return overlays


def test_a_run_with_fewer_layers_shows_its_own_last_layer(scene, panel, harness, tmp_path):
    """showResults after a run of 14 layers: a run of 3 must not look up the old slider position among its layers
    (IndexError in the console), nor add a Grad-CAM map nobody asked for (a network without a 'head' layer)."""
    _show_run(scene, panel, tmp_path / "a", [f"block{i}" for i in range(13)] + ["head"])
    assert panel.ui.gradcamLayerSlider.value == 12 and panel.ui.gradcamLayerLabel.text == "Grad-CAM block12 NCR"
    for layers, shown in ((["enc1", "dec1", "head"], "dec1"), (["enc1", "enc2", "dec1"], "dec1")):
        volumes = scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")
        overlays = _show_run(scene, panel, tmp_path / shown, layers)
        assert not harness.console and not harness.errors, (harness.console, harness.errors)
        assert panel.ui.gradcamLayerSlider.maximum == 2 and panel.ui.gradcamLayerLabel.text == f"Grad-CAM {shown} NCR"
        # the run's own maps and its FLAIR: no map added by the panel
        assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == volumes + len(overlays) + 1
        assert panel.ui.overlayComboBox.currentText == f"Grad-CAM {shown} NCR"


def test_closing_the_scene_leaves_no_results_of_the_last_run_in_the_panel(scene, panel, harness, tmp_path):
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Review points")
    _show_run(scene, panel, tmp_path / "run", ["enc1", "dec1", "head"], review_points=points)
    ui = panel.ui
    assert ui.overlayComboBox.count() and ui.gradcamClassComboBox.count() and ui.openReportButton.enabled
    assert ui.detectorsTable.rowCount() == ui.reviewTable.rowCount() == ui.lesionTable.rowCount() == 1
    assert ui.nextReviewButton.enabled and not ui.featvizLabel.pixmap.isNull() and ui.preprocessingLabel.text
    scene.Clear(0)  # File > Close Scene
    assert not harness.console
    assert ui.overlayComboBox.count() == ui.gradcamClassComboBox.count() == 0 and not panel._overlays
    assert ui.gradcamLayerSlider.maximum == 0 and not ui.gradcamLayerLabel.text and not panel._layers
    for table in (ui.detectorsTable, ui.reviewTable, ui.lesionTable):
        assert table.rowCount() == 0 and not table.cells
    assert ui.featvizLabel.pixmap.isNull() and not ui.preprocessingLabel.text
    assert not ui.openReportButton.enabled and not ui.nextReviewButton.enabled
    ui.nextReviewButton.click()
    ui.openReportButton.click()
    assert not harness.console


def test_a_click_on_a_lesion_row_centres_the_slice_views_on_that_lesion(scene, panel, harness, tmp_path):
    from BrainTumorExplainLogic.volumes import world_ijk_to_ras

    for name in ("Red", "Green", "Yellow"):
        scene.AddNewNodeByClass("vtkMRMLSliceNode", name).SetLayoutName(name)
    _show_run(scene, panel, tmp_path / "run", ["enc1", "dec1", "head"])
    panel.ui.lesionTable.cellClicked.emit(0, 2)
    expected = (world_ijk_to_ras(panel._lastProcess.reference) @ [3.0, 7.0, 2.0, 1.0])[:3]
    for name in ("Red", "Green", "Yellow"):
        slice_to_ras = scene.GetFirstNodeByName(name).GetSliceToRAS()
        np.testing.assert_allclose([slice_to_ras.GetElement(r, 3) for r in range(3)], expected, atol=1e-6)
    assert panel.ui.lesionTable.selected == 0 and not harness.console
    panel.ui.lesionTable.cellClicked.emit(5, 0)  # no such row: nothing happens
    assert not harness.console


# -- Cancel ----------------------------------------------------------------------------------------------------------
STUBBORN = ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # a run that does not end on SIGTERM
            "open(sys.argv[sys.argv.index('--out') + 1] + '.ready', 'w').close()\n"
            "time.sleep(120)")


def _start_stubborn_run(scene, panel, harness, monkeypatch, tmp_path):
    from BrainTumorExplainLogic import explainrun

    monkeypatch.setattr(explainrun, "END_GRACE_S", 1.0)  # SIGKILL after a second, not ten
    python = _stand_in_python(tmp_path, STUBBORN)
    monkeypatch.setattr(harness.module.BrainTumorExplainLogic, "pythonExecutable", staticmethod(lambda: python))
    _inputs(scene, panel)
    panel.ui.applyButton.click()
    process = panel._process
    assert process is not None and panel.ui.cancelButton.enabled, harness.errors
    ready = Path(str(process.out) + ".ready")
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the stand-in run never started"
    return process


def _poll_until_cancelled(panel, process, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while process.folder.exists() and time.monotonic() < deadline:
        started = time.monotonic()
        panel._timer.timeout.emit()  # the panel's timer
        assert time.monotonic() - started < 0.5, "a poll froze the panel"
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["Cancel", "scene close"])
def test_cancel_and_scene_close_return_at_once_and_the_timer_finishes_the_run(scene, panel, harness, monkeypatch,
                                                                               tmp_path, how):
    """A run that ignores SIGTERM: Cancel (or closing the scene) returns at once, the timer kills it after the grace
    period and then deletes its files; Apply is available meanwhile."""
    process = _start_stubborn_run(scene, panel, harness, monkeypatch, tmp_path)
    started = time.monotonic()
    if how == "Cancel":
        panel.ui.cancelButton.click()
    else:
        scene.Clear(0)
    assert time.monotonic() - started < 0.5, f"{how} waited for the run to end"
    assert panel._process is None and not panel.ui.cancelButton.enabled and panel._timer.active
    assert process.process.poll() is None and "Cancelling" in panel.ui.statusLabel.text
    assert panel.ui.applyButton.enabled == (how == "Cancel")  # a closed scene takes the inputs with it
    _poll_until_cancelled(panel, process)
    assert process.process.poll() is not None and not process.folder.exists()
    assert "Cancelled" in panel.ui.statusLabel.text and not panel._timer.active
    assert not harness.console and not harness.errors


# -- your own network's code -----------------------------------------------------------------------------------------
def _bundle(folder: Path) -> Path:
    (folder / "configs").mkdir(parents=True)
    metadata = {"network_data_format": {"inputs": {"image": {"channel_def": {
        "0": "FLAIR", "1": "T1", "2": "T1c", "3": "T2"}}}}}
    (folder / "configs" / "metadata.json").write_text(__import__("json").dumps(metadata))
    return folder


def _trust_refusal() -> str:
    """The library's own refusal of a bundle whose config holds an expression."""
    from BrainTumorExplainLib.errors import InputError
    from BrainTumorExplainLib.models.bundle import build_network

    with pytest.raises(InputError) as refused:
        build_network({"_target_": "$import os"}, Path("configs/inference.json"))
    assert "--trust-bundle" in str(refused.value)
    return str(refused.value)


def test_trusting_a_bundle_is_offered_in_the_panel_with_a_plain_warning(scene, panel, harness, tmp_path):
    ui = panel.ui
    assert not ui.trustBundleCheckBox.enabled and not ui.trustBundleWarningLabel.visible
    ui.networkPathLineEdit.currentPath = str(_bundle(tmp_path / "bundle"))
    assert ui.trustBundleCheckBox.enabled and ui.trustBundleWarningLabel.visible
    assert "read, change or send any file" in ui.trustBundleWarningLabel.text
    assert "--trust-bundle" not in panel.logic.settings(panel._parameterNode, trust=ui.trustBundleCheckBox.checked
                                                        ).arguments()
    ui.trustBundleCheckBox.click()
    assert "--trust-bundle" in panel.logic.settings(panel._parameterNode, trust=ui.trustBundleCheckBox.checked
                                                    ).arguments()
    assert not hasattr(panel._parameterNode, "trust_bundle")  # never saved with the scene
    nnunet = tmp_path / "Dataset1" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    nnunet.mkdir(parents=True)
    (nnunet / "plans.json").write_text("{}")
    (nnunet / "dataset.json").write_text('{"channel_names": {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"}}')
    ui.networkPathLineEdit.currentPath = str(nnunet)  # another folder: trust is not carried over; nnU-Net runs none
    assert not ui.trustBundleCheckBox.checked and not ui.trustBundleCheckBox.enabled
    ui.networkPathLineEdit.currentPath = ""
    assert "--trust-bundle" not in panel.logic.settings(panel._parameterNode, trust=True).arguments()


def test_float32_maps_are_a_panel_setting_passed_on_as_full_resolution(scene, panel, harness):
    assert "--full-resolution" not in panel.logic.settings(panel._parameterNode).arguments()
    assert panel.ui.fullResolutionCheckBox.property("SlicerParameterName") == "full_resolution"  # the binding
    panel._parameterNode.full_resolution = True  # as Slicer's connector sets it when the box is ticked
    assert "--full-resolution" in panel.logic.settings(panel._parameterNode).arguments()


def test_uncertainty_sampling_defaults_to_the_librarys_auto_so_a_gpu_gets_the_full_passes(scene, panel, harness):
    """The panel once ticked "quick" by default, so a GPU user silently got quick mode; its default is now the
    library's (quick on a CPU only, decided in the analysis process), and quick and full are each a choice."""
    arguments = panel.logic.settings(panel._parameterNode).arguments()
    assert panel._parameterNode.uncertainty == "auto" and "--quick" not in arguments and "--full" not in arguments
    assert panel.ui.uncertaintyComboBox.property("SlicerParameterName") == "uncertainty"  # the binding
    for mode, flag in (("quick", "--quick"), ("full", "--full")):
        panel._parameterNode.uncertainty = mode  # as Slicer's connector sets it when the combo box changes
        assert flag in panel.logic.settings(panel._parameterNode).arguments()


@pytest.mark.parametrize("saved,mode", [("True", "quick"), ("False", "full")])
def test_a_scene_saved_with_the_quick_check_box_keeps_its_choice(scene, harness, saved, mode):
    """Scenes saved before the combo box hold a "quick" bool parameter (Slicer's BoolSerializer: "True"/"False",
    v5.6.0–v5.10.0): the panel reads it as the matching mode and drops it."""
    node = harness.module.BrainTumorExplainLogic().getParameterNode()
    node.SetParameter("quick", saved)
    widget = harness.module.BrainTumorExplainWidget()
    widget.setup()
    try:
        assert widget._parameterNode.uncertainty == mode and not node.HasParameter("quick")
        assert (("--quick" if mode == "quick" else "--full")
                in widget.logic.settings(widget._parameterNode).arguments())  # what the run is given
    finally:
        widget.cleanup()


def test_the_panels_errors_name_its_controls_not_command_line_options(scene, panel, harness, monkeypatch, tmp_path):
    refusal = _trust_refusal()
    python = _stand_in_python(tmp_path, f"print({'error: ' + refusal!r}, file=sys.stderr)\nsys.exit(2)")
    monkeypatch.setattr(harness.module.BrainTumorExplainLogic, "pythonExecutable", staticmethod(lambda: python))
    _inputs(scene, panel)
    panel.ui.networkPathLineEdit.currentPath = str(_bundle(tmp_path / "bundle"))
    panel.ui.applyButton.click()
    process = panel._process
    process.wait(timeout=60)
    panel._timer.timeout.emit()
    assert "tick 'Trust this network's code'" in panel.ui.statusLabel.text
    assert "tick 'Trust this network's code'" in harness.errors[-1]
    assert "--" not in panel.ui.statusLabel.text and "--" not in harness.errors[-1]
    panel._parameterNode.layers = " "  # what a scene may hold: refused before any run, in the panel's words
    panel.ui.applyButton.click()
    assert "'Grad-CAM layers': give 'all' or layer names" in harness.errors[-1] and "--" not in harness.errors[-1]
    assert panel._process is None
