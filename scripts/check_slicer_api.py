#!/usr/bin/env python3
"""Check that every Slicer/CTK/VTK API the BrainTumorExplain module uses exists in each supported Slicer release.

Collects (with ``ast``) attribute chains rooted at ``slicer``/``ctk``/``vtk``, ``from slicer.X import Y`` names,
upper-case (VTK/MRML C++) method calls and ``vtk...`` class-name string literals from every ``.py`` file of the
module, looks each up in the curated table :data:`DECLARED_IN`, and greps the declaring Slicer headers / Python
files at each checked tag of a bare git mirror of Slicer's source. Writes a Markdown summary with ``--write``.

Usage::

    python scripts/check_slicer_api.py [--mirror /work/.mirror/Slicer+Slicer/repo] [--write docs/slicer-api.md]

For a CI test without the mirror: :func:`used_api` (the collection step) and :func:`documented_api` (the table of
``docs/slicer-api.md`` parsed back), with :func:`supported_since` to compare first versions.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOTS = ("slicer", "ctk", "vtk")
TAGS = ("v5.6.0", "v5.6.2", "v5.8.0", "v5.8.1", "v5.10.0")
DEFAULT_MIRROR = Path("/work/.mirror/Slicer+Slicer/repo")
REPO = Path(__file__).resolve().parents[1]
MODULE_FOLDER = REPO / "BrainTumorExplain"
COMMAND = "python scripts/check_slicer_api.py --write docs/slicer-api.md"

CLASS_NAME = re.compile(r"^(vtk|qMRML|qSlicer|ctk)[A-Z]\w*$")
VTK_CLASS_LITERAL = re.compile(r"^vtk[A-Z]\w*$")

# Markers for APIs that are not declared in Slicer's own tree.
VTK = "VTK"  # VTK itself (Slicer 5.6-5.10 bundle VTK 9.2+)
CTK = "CTK"  # commontk/CTK, a Slicer dependency
QT = "Qt"  # Qt itself, through PythonQt (QObject.connect, QCoreApplication.processEvents)
CLASS = "CLASS"  # a Slicer class: some */<Name>.h must exist in the tag's tree
UNCHECKED = (VTK, CTK, QT)

# Used API name → the Slicer files that declare it (any one suffices) and/or a marker above. Keys: class members
# ``Class.Member``; module-level Python API ``slicer.module.name``; members a module class inherits from a Slicer
# base ``self.name (Class)``; instance method calls the bare method name; classes the class name.
_MRML = "Libs/MRML/Core/"
_SCENE = [_MRML + "vtkMRMLScene.h"]
_SH = [_MRML + "vtkMRMLSubjectHierarchyNode.h"]
_SCALAR_DISPLAY = [_MRML + "vtkMRMLScalarVolumeDisplayNode.h"]
_DISPLAY = [_MRML + "vtkMRMLDisplayNode.h"]
_DISPLAYABLE = [_MRML + "vtkMRMLDisplayableNode.h"]
_NODE = [_MRML + "vtkMRMLNode.h"]
_SCRIPTED = [_MRML + "vtkMRMLScriptedModuleNode.h"]  # the parameter node under the parameterNodeWrapper
_VOLUME = [_MRML + "vtkMRMLVolumeNode.h"]
_STORAGE = [_MRML + "vtkMRMLStorageNode.h"]
_STORABLE = [_MRML + "vtkMRMLStorableNode.h"]
_COLOR = [_MRML + "vtkMRMLColorNode.h", _MRML + "vtkMRMLColorTableNode.h"]
_COMPOSITE = [_MRML + "vtkMRMLSliceCompositeNode.h"]
_SEGMENT = ["Libs/vtkSegmentationCore/vtkSegment.h"]
_SEGMENTATION = ["Libs/vtkSegmentationCore/vtkSegmentation.h"]
_SEG_NODE = [_MRML + "vtkMRMLSegmentationNode.h"]
_SEG_LOGIC = ["Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.h"]
_APP_LOGIC = ["Libs/MRML/Logic/vtkMRMLApplicationLogic.h", "Base/Logic/vtkSlicerApplicationLogic.h"]
_ABSTRACT_LOGIC = ["Libs/MRML/Logic/vtkMRMLAbstractLogic.h"]
_UTIL = ["Base/Python/slicer/util.py"]
_SLM = ["Base/Python/slicer/ScriptedLoadableModule.py"]
_PNW = "Base/Python/slicer/parameterNodeWrapper/"
_SLICERQT = ["Base/Python/slicer/slicerqt.py"]
_TRANSFORMABLE = [_MRML + "vtkMRMLTransformableNode.h"]
_TRANSFORM = [_MRML + "vtkMRMLTransformNode.h"]
# the markups node moved from the Markups module into MRML Core in 5.10: either header declares it
_MARKUPS = ["Modules/Loadable/Markups/MRML/vtkMRMLMarkupsNode.h", _MRML + "vtkMRMLMarkupsNode.h"]
_SLICE = [_MRML + "vtkMRMLSliceNode.h"]
_TERMINOLOGIES = "Modules/Loadable/Terminologies/Logic/"
_TERM_LOGIC = [_TERMINOLOGIES + "vtkSlicerTerminologiesModuleLogic.h"]
_TERM_ENTRY = [_TERMINOLOGIES + "vtkSlicerTerminologyEntry.h"]
_TERM_TYPE = [_MRML + "vtkCodedEntry.h"]  # the base of vtkSlicerTerminologyType and ...Category

DECLARED_IN: dict[str, list[str]] = {
    # classes (a header */<Name>.h in Slicer's tree), and VTK/CTK classes
    **{name: [CLASS] for name in (
        "vtkMRMLColorTableNode", "vtkMRMLDisplayableNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLScalarVolumeNode",
        "vtkMRMLLinearTransformNode", "vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsJsonStorageNode",
        "vtkMRMLSliceNode",
        "vtkMRMLScene", "vtkMRMLSegmentationNode", "vtkMRMLSliceCompositeNode", "vtkMRMLStorableNode",
        "vtkMRMLSubjectHierarchyNode", "vtkMRMLVolumeArchetypeStorageNode", "vtkMRMLVolumeNode",
        "vtkSlicerApplicationLogic", "vtkSlicerSegmentationsModuleLogic", "vtkSegment", "vtkSlicerTerminologyEntry",
        "vtkSlicerTerminologyType")},
    **{name: [VTK] for name in (
        "vtkCommand", "vtkCommand.ModifiedEvent", "vtkImageData", "vtkMatrix4x4", "vtkPNGWriter", "vtkStringArray",
        "vtkVector3d", "vtk.reference",
        "vtk.util.numpy_support", "vtk.util.numpy_support.numpy_to_vtk", "vtk.VTK_UNSIGNED_CHAR")},
    "ctkPathLineEdit": [CTK],
    "ctkPathLineEdit.Files": [CTK],
    "ctkPathLineEdit.Dirs": [CTK],
    "vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy": _SH,
    "vtkSegment.GetTerminologyEntryTagName": _SEGMENT,
    "vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode": _SEG_LOGIC,
    # Python API of the slicer package
    "slicer.app": _SLICERQT,
    "slicer.app.applicationLogic": ["Base/QTCore/qSlicerCoreApplication.h"],
    "slicer.app.connect": [QT],
    "slicer.app.processEvents": [QT],
    # slicer.modules.<name> is the module object; logic() is declared by every module's base class
    "slicer.modules.terminologies.logic": ["Base/QTCore/qSlicerAbstractCoreModule.h"],
    "slicer.mrmlScene": _SLICERQT,
    "slicer.mrmlScene.Clear": _SCENE,
    "slicer.mrmlScene.StartCloseEvent": _SCENE,
    "slicer.mrmlScene.EndCloseEvent": _SCENE,
    "slicer.i18n.tr": ["Base/Python/slicer/i18n.py"],
    "slicer.i18n.translate": ["Base/Python/slicer/i18n.py"],
    "slicer.parameterNodeWrapper.parameterNodeWrapper": [_PNW + "wrapper.py"],
    "slicer.parameterNodeWrapper.WithinRange": [_PNW + "validators.py"],
    "slicer.parameterNodeWrapper.Choice": [_PNW + "validators.py"],
    **{f"slicer.ScriptedLoadableModule.{name}": _SLM for name in (
        "ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
        "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleWidget.setup")},
    **{f"slicer.util.{name}": _UTIL for name in (
        "arrayFromVolume", "childWidgetVariables", "confirmOkCancelDisplay", "errorDisplay", "getNodesByClass",
        "loadUI", "mainWindow", "pip_install", "setSliceViewerLayers", "tryWithErrorDisplay",
        "updateVolumeFromArray", "VTKObservationMixin", "WaitCursor")},
    # members the module's classes inherit from Slicer's Python base classes
    "self.addObserver (BrainTumorExplainWidget)": _UTIL,
    "self.removeObserver (BrainTumorExplainWidget)": _UTIL,
    "self.removeObservers (BrainTumorExplainWidget)": _UTIL,
    "self.layout (BrainTumorExplainWidget)": _SLM,
    "self.parent (BrainTumorExplainWidget)": _SLM,
    "self.resourcePath (BrainTumorExplainWidget)": _SLM,
    "self.parent (BrainTumorExplain)": _SLM,
    "self.delayDisplay (BrainTumorExplainTest)": _SLM,
    # MRML / Slicer C++ methods called on instances
    "AddNode": _SCENE, "CreateNodeByClass": _SCENE, "IsNodePresent": _SCENE, "GetFirstNodeByName": _SCENE, "GetNodesByClass": _SCENE,
    "GetNumberOfNodes": _SCENE, "GetVersion": _SCENE, "SetVersion": _SCENE, "SetURL": _SCENE, "Import": _SCENE,
    "RemoveNode": _SCENE, "IsNodeClassRegistered": _SCENE, "RegisterNodeClass": _SCENE,
    "CreateFolderItem": _SH, "CreateItem": _SH, "GetItemByDataNode": _SH, "GetItemParent": _SH,
    "GetSceneItemID": _SH, "RemoveItem": _SH, "SetItemParent": _SH,
    "GetApplyThreshold": _SCALAR_DISPLAY, "GetAutoWindowLevel": _SCALAR_DISPLAY,
    "GetLowerThreshold": _SCALAR_DISPLAY, "GetWindowLevelMax": _SCALAR_DISPLAY,
    "GetWindowLevelMin": _SCALAR_DISPLAY, "SetApplyThreshold": _SCALAR_DISPLAY,
    "SetAutoWindowLevel": _SCALAR_DISPLAY, "SetLowerThreshold": _SCALAR_DISPLAY,
    "SetUpperThreshold": _SCALAR_DISPLAY, "SetWindowLevelMinMax": _SCALAR_DISPLAY,
    "GetColorNode": _DISPLAY, "SetAndObserveColorNodeID": _DISPLAY,
    "GetDisplayNode": _DISPLAYABLE, "GetNthDisplayNode": _DISPLAYABLE, "GetNumberOfDisplayNodes": _DISPLAYABLE,
    "CreateDefaultDisplayNodes": _DISPLAYABLE + [_MRML + "vtkMRMLScalarVolumeNode.h",
                                                 _MRML + "vtkMRMLLabelMapVolumeNode.h", *_SEG_NODE],
    "GetID": _NODE, "GetScene": _NODE, "SetName": _NODE,
    "HasParameter": _SCRIPTED, "GetParameter": _SCRIPTED, "UnsetParameter": _SCRIPTED,
    "GetName": _NODE + _SEGMENT,
    "CopyOrientation": _VOLUME, "GetIJKToRASMatrix": _VOLUME, "GetImageData": _VOLUME,
    "SetIJKToRASMatrix": _VOLUME, "SetAndObserveImageData": _VOLUME,
    "GetParentTransformNode": _TRANSFORMABLE, "GetTransformNodeID": _TRANSFORMABLE,
    "SetAndObserveTransformNodeID": _TRANSFORMABLE,
    "IsTransformToWorldLinear": _TRANSFORM, "GetMatrixTransformToWorld": _TRANSFORM,
    "SetMatrixTransformFromParent": _TRANSFORM,
    "LoadContextFromFile": _TERM_LOGIC, "GetLoadedTerminologyNames": _TERM_LOGIC,
    "DeserializeTerminologyEntry": _TERM_LOGIC, "GetNumberOfTypesInTerminologyCategory": _TERM_LOGIC,
    "GetNthTypeInTerminologyCategory": _TERM_LOGIC,
    "GetCategoryObject": _TERM_ENTRY, "GetTypeObject": _TERM_ENTRY, "GetTerminologyContextName": _TERM_ENTRY,
    "GetCodeValue": _TERM_TYPE, "GetCodingSchemeDesignator": _TERM_TYPE,
    "ReadData": _STORAGE, "WriteData": _STORAGE, "SetUseCompression": _STORAGE,
    "SetFileName": _STORAGE + [VTK],  # storage nodes, and vtkPNGWriter
    "GetStorageNode": _STORABLE, "SetAndObserveStorageNodeID": _STORABLE,
    "GetLookupTable": _COLOR, "GetNumberOfColors": _COLOR, "SetTypeToUser": _COLOR,
    "SetColor": [_MRML + "vtkMRMLColorTableNode.h"], "SetNumberOfColors": [_MRML + "vtkMRMLColorTableNode.h"],
    "SetBackgroundVolumeID": _COMPOSITE, "SetForegroundOpacity": _COMPOSITE, "SetForegroundVolumeID": _COMPOSITE,
    "SetLabelVolumeID": _COMPOSITE,
    "GetLabelValue": _SEGMENT, "GetTag": _SEGMENT, "SetTag": _SEGMENT, "GetTerminologyEntryTagName": _SEGMENT,
    "GetNthSegment": _SEGMENTATION, "GetNumberOfSegments": _SEGMENTATION,
    "GetSegmentation": _SEG_NODE, "SetReferenceImageGeometryParameterFromVolumeNode": _SEG_NODE,
    "SaveSceneToSlicerDataBundleDirectory": _APP_LOGIC, "UnpackSlicerDataBundle": _APP_LOGIC, "Zip": _APP_LOGIC,
    "SetMRMLScene": _ABSTRACT_LOGIC,
    "IsNodeClassRegistered": _SCENE, "RegisterNodeClass": _SCENE,
    "AddControlPoint": _MARKUPS, "GetNthControlPointPositionWorld": _MARKUPS, "GetNumberOfControlPoints": _MARKUPS,
    "SetLocked": _MARKUPS, "SetNthControlPointDescription": _MARKUPS, "SetNthControlPointLocked": _MARKUPS,
    "vtkMRMLSliceNode.JumpAllSlices": _SLICE, "vtkMRMLSliceNode.CenteredJumpSlice": _SLICE,
    # VTK's own methods (vtkObjectBase, vtkObject, vtkImageData, vtkDataSetAttributes, vtkMatrix4x4, vtkCollection,
    # vtkLookupTable, vtkImageWriter/vtkAlgorithm)
    **{name: [VTK] for name in (
        "IsA", "GetMTime", "GetDimensions", "SetDimensions", "GetNumberOfScalarComponents", "GetPointData",
        "SetScalars", "GetElement", "GetItemAsObject", "GetNumberOfItems", "GetTableValue",
        "GetNumberOfTableValues", "SetInputData", "Write", "UnRegister", "SetElement", "GetValue", "GetClassName",
        "GetNumberOfValues", "MultiplyPoint")},
}


# -- collection ----------------------------------------------------------------------------------------------------
@dataclass
class Use:
    """Where one API name is used, and whether some use calls it on the class (needs ``static``)."""

    places: list[str] = field(default_factory=list)
    class_call: bool = False


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` → ``["a", "b", "c"]``; None unless the expression is a plain attribute chain on a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def api_key(chain: list[str]) -> str:
    """The table key of a resolved chain: ``Class.Member`` from the first class name on, else the dotted chain."""
    for index, part in enumerate(chain[1:], start=1):
        if CLASS_NAME.match(part):
            return ".".join(chain[index:index + 2])
    return ".".join(chain)


def class_prefix(chain: list[str]) -> str | None:
    """The class name a chain goes through (``slicer.vtkFoo.Bar`` → ``vtkFoo``), if any."""
    return next((part for part in chain[1:] if CLASS_NAME.match(part)), None)


class Collector(ast.NodeVisitor):
    """Walks one file, resolving names bound by imports and simple assignments to ``slicer``/``ctk``/``vtk``."""

    def __init__(self, label: str, uses: dict[str, Use]) -> None:
        self.label, self.uses = label, uses
        # name → the chain it stands for; None: a non-Slicer module (``np``, ``qt``); []: any other local value
        self.scopes: list[dict[str, list[str] | None]] = [{}]
        self.classes: list[tuple[str, set[str]] | None] = []  # (class, own members) when it has a Slicer base

    def _add(self, key: str, line: int, class_call: bool = False) -> None:
        use = self.uses.setdefault(key, Use())
        place = f"{self.label}:{line}"
        if place not in use.places:
            use.places.append(place)
        use.class_call |= class_call

    def _resolve(self, node: ast.AST) -> list[str] | None:
        chain = _dotted(node)
        if chain is None:
            return None
        bound = next((scope[chain[0]] for scope in reversed(self.scopes) if chain[0] in scope), chain[:1])
        if not bound or bound[0] not in ROOTS:
            return None
        return [*bound, *chain[1:]]

    def _record_chain(self, chain: list[str], line: int, called: bool) -> None:
        while chain and chain[-1].startswith("__"):  # Base.__init__(self, ...) uses Base
            chain, called = chain[:-1], False
        if len(chain) < 2:
            return
        key, prefix = api_key(chain), class_prefix(chain)
        self._add(key, line, class_call=called and prefix is not None and key != prefix)
        if prefix is not None and key != prefix:
            self._add(prefix, line)

    def _bind(self, name: str, chain: list[str] | None) -> None:
        self.scopes[-1][name] = chain

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            chain = (parts if alias.asname else parts[:1]) if parts[0] in ROOTS else None
            self._bind(alias.asname or parts[0], chain)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = (node.module or "").split(".")
        for alias in node.names:
            if node.level or module[0] not in ROOTS:
                self._bind(alias.asname or alias.name, None)
                continue
            chain = [*module, alias.name]
            self._bind(alias.asname or alias.name, chain)
            self._record_chain(chain, node.lineno, called=False)

    def _visit_scope(self, node: ast.AST) -> None:
        self.scopes.append({})
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_scope

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        """A class with a Slicer base: its ``self.x`` uses of members it does not define are inherited API."""
        slicer_base = any(self._resolve(base) for base in node.bases)
        self.classes.append((node.name, _own_members(node)) if slicer_base else None)
        self._visit_scope(node)
        self.classes.pop()

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        chain = self._resolve(node.value) or self._getattr_chain(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name):
                self._bind(target.id, chain or [])

    def _getattr_chain(self, node: ast.AST) -> list[str] | None:
        """``getattr(slicer, "app", None)`` / ``hasattr(app, "applicationLogic")`` → the chain they name."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2):
            return None
        base, name = self._resolve(node.args[0]), node.args[1]
        if base is None or not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            return None
        return [*base, name.value]

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        chain = self._getattr_chain(node)
        if chain is not None:
            self._record_chain(chain, node.lineno, called=False)
        elif isinstance(func, ast.Name) and (resolved := self._resolve(func)) is not None:
            self._record_chain(resolved, node.lineno, called=True)  # an imported function, e.g. tr as _
        elif isinstance(func, ast.Attribute):
            resolved = self._resolve(func)
            if resolved is not None:
                self._record_chain(resolved, node.lineno, called=True)
                for argument in [*node.args, *(k.value for k in node.keywords)]:
                    self.visit(argument)
                return
            if func.attr[:1].isupper() and not self._foreign(func.value):
                self._add(func.attr, node.lineno)
        self.generic_visit(node)

    def _foreign(self, node: ast.AST) -> bool:
        """True when the receiver is rooted at an imported non-Slicer module (``subprocess.Popen``, ``qt.QTimer``)."""
        chain = _dotted(node)
        if chain is None:
            return False
        return next((scope[chain[0]] for scope in reversed(self.scopes) if chain[0] in scope), []) is None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = self._resolve(node)
        if chain is not None:
            self._record_chain(chain, node.lineno, called=False)
            return
        owner = self.classes[-1] if self.classes else None
        if (owner is not None and isinstance(node.value, ast.Name) and node.value.id == "self"
                and node.attr not in owner[1] and not node.attr.startswith("__")):
            self._add(f"self.{node.attr} ({owner[0]})", node.lineno)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and VTK_CLASS_LITERAL.match(node.value):
            self._add(node.value, node.lineno)


def _own_members(node: ast.ClassDef) -> set[str]:
    """Names a class defines itself: its methods and class attributes, and every ``self.x`` it assigns."""
    own = {item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
    own |= {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)
            and isinstance(item.target, ast.Name)}
    for item in ast.walk(node):
        targets = item.targets if isinstance(item, ast.Assign) else [getattr(item, "target", None)]
        own |= {t.attr for t in targets if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                and t.value.id == "self"}
    return own


def collect(module_folder: Path) -> dict[str, Use]:
    """Every used API name of the ``.py`` files under ``module_folder``, with where and how it is used."""
    module_folder = Path(module_folder)
    uses: dict[str, Use] = {}
    for path in sorted(module_folder.rglob("*.py")):
        label = path.relative_to(module_folder).as_posix()
        Collector(label, uses).visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return dict(sorted(uses.items(), key=lambda item: item[0].lower()))


def used_api(module_folder: str | Path = MODULE_FOLDER) -> dict[str, list[str]]:
    """API name → the ``file:line`` places (relative to ``module_folder``) that use it."""
    return {name: use.places for name, use in collect(Path(module_folder)).items()}




# -- looking names up in Slicer's source ---------------------------------------------------------------------------
class Mirror:
    """Read-only access to one bare git mirror of Slicer's source: tree listings and file texts, cached."""

    def __init__(self, git_dir: Path) -> None:
        self.git_dir = Path(git_dir)
        self._trees: dict[str, set[str]] = {}
        self._texts: dict[tuple[str, str], str | None] = {}

    def _git(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", f"--git-dir={self.git_dir}", *args], capture_output=True, text=True)

    def has_tag(self, tag: str) -> bool:
        return self._git("rev-parse", "--verify", "--quiet", f"refs/tags/{tag}").returncode == 0

    def tree(self, tag: str) -> set[str]:
        if tag not in self._trees:
            self._trees[tag] = set(self._git("ls-tree", "-r", "--name-only", tag).stdout.splitlines())
        return self._trees[tag]

    def text(self, tag: str, path: str) -> str | None:
        if (tag, path) not in self._texts:
            shown = self._git("show", f"{tag}:{path}") if path in self.tree(tag) else None
            self._texts[tag, path] = shown.stdout if shown is not None and shown.returncode == 0 else None
        return self._texts[tag, path]


def member_name(key: str) -> str:
    """The identifier a file must declare for a table key: ``self.addObserver (Widget)`` → ``addObserver``."""
    return key.split(" ", 1)[0].rsplit(".", 1)[-1]


def _strip_comments(source: str) -> str:
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.DOTALL)
    return re.sub(r"//.*", "", source)


def header_declares(source: str, name: str, need_static: bool) -> tuple[bool, bool]:
    """(declared, static where it has to be) of ``name`` in a C++ header: as a method, an enum value, a VTK
    Set/Get/Boolean macro or a Qt property."""
    code = _strip_comments(source)
    n = re.escape(name)
    patterns = [rf"\b{n}\s*\(", rf"^\s*{n}\s*(=|,|$)", rf"\benum\b[^;]*[{{,]\s*{n}\s*(=|,|}})",  # one per line, or inline
                rf"Q_PROPERTY\([^)]*\b{n}\b"]
    for prefix, macro in (("Set", r"vtkSet\w*Macro"), ("Get", r"vtkGet\w*Macro")):
        if name.startswith(prefix) and len(name) > 3:
            patterns.append(rf"{macro}\s*\(\s*{re.escape(name[3:])}\s*[,)]")
    for suffix in ("On", "Off"):
        if name.endswith(suffix):
            patterns.append(rf"vtkBooleanMacro\s*\(\s*{re.escape(name[:-len(suffix)])}\s*,")
    lines = code.splitlines()
    hits = [i for i, line in enumerate(lines) if any(re.search(p, line) for p in patterns)]
    if not need_static or not hits:
        return bool(hits), True
    static = any(re.search(r"\bstatic\b", " ".join(lines[max(i - 1, 0):i + 1])) for i in hits)
    return True, static


def python_declares(source: str, path: str, name: str) -> bool:
    """``def``/``class``/module-level assignment/``self.name =``/``setattr(x, "name", ...)`` of ``name``, or the
    module itself when the file is ``name.py`` (``name/__init__.py``)."""
    if Path(path).stem == name or path.endswith(f"/{name}/__init__.py"):
        return True
    n = re.escape(name)
    patterns = (rf"^\s*(async\s+)?def\s+{n}\b", rf"^\s*class\s+{n}\b", rf"^{n}\s*[:=]", rf"\bself\.{n}\s*=",
                rf"setattr\(\s*[\w.]+\s*,\s*[\"']{n}[\"']")
    return any(re.search(p, source, flags=re.MULTILINE) for p in patterns)


def declaring_paths(mirror: Mirror, tag: str, key: str, entry: list[str], need_static: bool) -> tuple[list, bool]:
    """The entry's Slicer files that declare ``key`` at ``tag``, and whether a class-level call finds it static."""
    name, found, static = member_name(key), [], False
    for path in entry:
        if path == CLASS:
            found += sorted(p for p in mirror.tree(tag) if p.endswith(f"/{name}.h"))
            static = True
            continue
        source = None if path in UNCHECKED else mirror.text(tag, path)
        if source is None:
            continue
        if path.endswith(".py"):
            ok, is_static = python_declares(source, path, name), True
        else:
            ok, is_static = header_declares(source, name, need_static)
        if ok:
            found.append(path)
            static |= is_static
    return found, static or not found


@dataclass
class Result:
    """One used API name checked at every tag."""

    name: str
    use: Use
    entry: list[str] | None  # None: not in the curated table
    found: dict[str, list[str]] = field(default_factory=dict)  # tag → declaring Slicer files (checked names only)
    not_static: list[str] = field(default_factory=list)  # tags where a call on the class hits a non-static method

    @property
    def checked(self) -> bool:
        return self.entry is not None and any(path not in UNCHECKED for path in self.entry)

    @property
    def bad_tags(self) -> list[str]:
        return [tag for tag, paths in self.found.items() if not paths or tag in self.not_static]

    def since(self, tags: list[str]) -> str:
        """The first checked tag from which every later checked tag has it; ``missing`` if the newest lacks it."""
        if self.entry is None:
            return "unknown"
        if not self.checked:
            return "/".join(self.entry)
        bad = self.bad_tags
        if tags[-1] in bad:
            return "missing"
        last_bad = max((tags.index(tag) for tag in bad), default=-1)
        return tags[last_bad + 1]


def check(mirror: Mirror, uses: dict[str, Use], tags: list[str]) -> list[Result]:
    """Every used name looked up in :data:`DECLARED_IN` and, for Slicer-declared ones, at every tag."""
    results = []
    for name, use in uses.items():
        result = Result(name, use, DECLARED_IN.get(name))
        if result.checked:
            for tag in tags:
                paths, static = declaring_paths(mirror, tag, name, result.entry, use.class_call)
                result.found[tag] = paths
                if not static:
                    result.not_static.append(tag)
        results.append(result)
    return results


# -- the report and docs/slicer-api.md -----------------------------------------------------------------------------
def _places(places: list[str], per_file: int = 8) -> str:
    """``a.py:1``, ``a.py:5``, ``b.py:2`` → ``a.py:1,5; b.py:2`` (at most ``per_file`` lines a file)."""
    by_file: dict[str, list[str]] = {}
    for place in places:
        file, line = place.rsplit(":", 1)
        by_file.setdefault(file, []).append(line)
    parts = []
    for file, lines in by_file.items():
        more = f" (+{len(lines) - per_file})" if len(lines) > per_file else ""
        parts.append(f"{file}:{','.join(lines[:per_file])}{more}")
    return "; ".join(parts)


def _declared(result: Result) -> str:
    if result.entry is None:
        return "not in the curated table"
    if not result.checked:
        outside = {VTK: "VTK (not in Slicer's tree)", CTK: "CTK (not in Slicer's tree)"}
        return ", ".join(outside.get(p, p) for p in result.entry)
    paths = sorted({p for found in result.found.values() for p in found})
    shown = paths or [f"{p} (not declared there)" for p in result.entry if p not in UNCHECKED]
    extra = [p for p in result.entry if p in UNCHECKED]
    return ", ".join(f"`{p}`" if p in paths else p for p in shown + extra)


def _missing(result: Result) -> str:
    notes = [f"{tag} (not static)" if tag in result.not_static and result.found[tag] else tag
             for tag in result.bad_tags]
    return ", ".join(notes) if notes else ("—" if result.checked else "not checked")


# What the collection cannot tie to a Slicer class, read by hand in the same tags (behaviour, not only existence).
BY_HAND = (
    "Read by hand in the same tags, beyond existence: the parameter-node wrapper's `connectParametersToGui` "
    "returns the tag `disconnectGui` needs in every version (`Base/Python/slicer/parameterNodeWrapper/wrapper.py`), "
    "while `connectGui` returns it only from 5.10 — so the panel binds with `connectParametersToGui`, once per "
    "parameter node; `QLineEditToStrConnector` rewrites its line edit on every change before 5.10, so the Grad-CAM "
    "layers field is bound by hand; the `QComboBox` connector needs `Choice` and fills the combo itself "
    "(`guiConnectors.py`); `SampleData.SampleDataLogic.registerCustomSampleDataSource` takes the keyword arguments "
    "the module passes in 5.6 and 5.10 and calls `customDownloader(source)` from its button "
    "(`Modules/Scripted/SampleData/SampleData.py`); the terminology file follows the schema "
    "`LoadContextFromFile` reads (`vtkSlicerTerminologiesModuleLogic.cxx`); `slicer.util.exit(status)` from "
    "`--python-script` ends Slicer with that status; PyTorchUtils' `installTorch(askConfirmation=False)` raises on "
    "failure and imports torch into Slicer once it has installed it; `slicer.util.pip_install` passes a list on as "
    "pip's arguments (a string is split by `shlex`) in 5.6.0, 5.8.1 and 5.10.0 (`Base/Python/slicer/util.py`), which "
    "the `--no-deps` install of an nnU-Net folder's networks' package relies on.")


def markdown(results: list[Result], tags: list[str]) -> str:
    """docs/slicer-api.md: what was checked and how, then one row per used API name."""
    intro = (
        "# Slicer API used by the module\n\n"
        f"Every Slicer, CTK and VTK API that the `.py` files under `BrainTumorExplain/` use (attribute chains on "
        "`slicer`/`ctk`/`vtk`, `from slicer.X import Y` names, members inherited from Slicer's Python base classes, "
        "upper-case VTK/MRML method calls and `vtk…` class-name strings) was looked up in the curated table of "
        "`scripts/check_slicer_api.py` and, where Slicer itself declares it, found by grepping the declaring header "
        f"or Python file of Slicer's source at the tags {', '.join(tags)}. *Since* is the first checked tag from "
        "which every later checked tag declares it (`missing`: the newest tag lacks it); VTK and CTK APIs are not "
        "in Slicer's tree and are not checked (Slicer 5.6-5.10 bundle VTK 9.2+). Signatures, argument types and "
        "behaviour are not checked. This file is generated: regenerate it with "
        f"`{COMMAND}` (needs a git mirror of Slicer's source with its tags, `--mirror`).\n\n"
        + BY_HAND + "\n\n")
    rows = ["| API | Declared in | Since | Missing in | Used in |", "|---|---|---|---|---|"]
    for result in results:
        cells = [f"`{result.name}`", _declared(result), result.since(tags), _missing(result),
                 _places(result.use.places)]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return intro + "\n".join(rows) + "\n"


def print_report(results: list[Result], tags: list[str]) -> int:
    """Print problems and a summary; the exit status (1 when a name is missing anywhere or not in the table)."""
    unknown = [r for r in results if r.entry is None]
    missing = [r for r in results if r.bad_tags]
    stale = sorted(set(DECLARED_IN) - {r.name for r in results})
    for result in missing:
        print(f"MISSING {result.name}: {_missing(result)}; declared in {', '.join(result.entry)}; "
              f"used at {_places(result.use.places)}")
    for result in unknown:
        print(f"NOT IN TABLE {result.name}: used at {_places(result.use.places)}")
    if stale:
        print(f"note: table entries no longer used: {', '.join(stale)}")
    checked = sum(r.checked for r in results)
    print(f"{len(results)} API names used; {checked} checked at {', '.join(tags)}; {len(missing)} missing in some "
          f"tag; {len(unknown)} not in the curated table")
    return 1 if missing or unknown else 0


# -- reading docs/slicer-api.md back (for CI, without the mirror) --------------------------------------------------
def documented_api(markdown_path: str | Path) -> dict[str, str]:
    """API name → its *Since* cell without the ``v``: ``"5.6.0"``, ``"5.10.0"``; ``"VTK"``/``"CTK"`` (not
    checked); ``"missing"`` (the newest checked tag lacks it); ``"unknown"`` (not in the curated table)."""
    documented: dict[str, str] = {}
    for line in Path(markdown_path).read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 5 and cells[0].startswith("`") and cells[0].endswith("`"):
            since = cells[2]
            documented[cells[0][1:-1]] = since[1:] if re.fullmatch(r"v\d+(\.\d+)*", since) else since
    return documented


def supported_since(first_version: str, oldest: str = "5.6.0") -> bool:
    """True when a :func:`documented_api` version is no later than ``oldest``, or the API is VTK's/CTK's."""
    if first_version in UNCHECKED:
        return True
    if not re.fullmatch(r"\d+(\.\d+)*", first_version):
        return False
    return tuple(map(int, first_version.split("."))) <= tuple(map(int, oldest.split(".")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR, help="bare git mirror of Slicer's source")
    parser.add_argument("--write", type=Path, help="write the Markdown table here (e.g. docs/slicer-api.md)")
    parser.add_argument("--module", type=Path, default=MODULE_FOLDER, help="the scripted module's folder")
    parser.add_argument("--tags", nargs="+", default=list(TAGS), help="Slicer tags to check, oldest first")
    args = parser.parse_args(argv)
    mirror = Mirror(args.mirror)
    absent = [tag for tag in args.tags if not mirror.has_tag(tag)]
    if absent:
        print(f"error: {args.mirror} has no tag {', '.join(absent)}", file=sys.stderr)
        return 2
    results = check(mirror, collect(args.module), args.tags)
    status = print_report(results, args.tags)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(markdown(results, args.tags), encoding="utf-8")
        print(f"wrote {args.write}")
    return status


if __name__ == "__main__":
    sys.exit(main())
