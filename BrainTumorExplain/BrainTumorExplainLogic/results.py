"""One run's results in the scene: a subject-hierarchy folder beside the input holding the tumour segmentation
(segments with BraTS colours and standard terminology, plus a 1/2/4 label map), heatmaps (Grad-CAM, uncertainty,
entropy) with our own colour tables and transparent low values, and concept masks as label maps.

Every volume is placed on the reference input's exact IJK→RAS (:func:`volumes.add_volume_from_canonical`).
Input nodes are only read. :class:`RunOutputs` is a transaction: if anything fails — or the caller cancels by
raising — every node it added (and its folder) is removed, so no half-made result is left in the scene.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import slicer

from .library import ensure_library_importable
from .volumes import add_volume_from_canonical, nodes_of_class, remove_nodes

ensure_library_importable()
from BrainTumorExplainLib.labels import BRATS2021, LabelConvention  # noqa: E402

# Segment per class index: name, colour (BraTS as Slicer shows it), DICOM CID 7168 code. NCR and NET share the
# necrosis concept, as CID 7168 prescribes for non-enhancing tumour.
TUMOUR_SEGMENTS: dict[int, tuple[str, tuple[float, float, float], str]] = {
    1: ("Necrosis/non-enhancing core", (0.86, 0.16, 0.16), "SCT^6574001^Necrosis"),
    2: ("Edema", (0.2, 0.75, 0.25), "SCT^79654002^Edema"),
    3: ("Enhancing tumor", (1.0, 0.85, 0.1), "NCIt^C113842^Enhancing Lesion"),
}
TERMINOLOGY_CATEGORY = "SCT^49755003^Morphologically Altered Structure"
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"

# Colour maps as piecewise-linear RGB ramps (position 0..1, r, g, b): no colour files needed, same in every Slicer.
COLOUR_MAPS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "heat": ((0.0, 0.0, 0.0, 0.0), (0.35, 0.9, 0.0, 0.0), (0.7, 1.0, 0.8, 0.0), (1.0, 1.0, 1.0, 0.9)),  # Grad-CAM
    "uncertainty": ((0.0, 0.2, 0.0, 0.0), (0.5, 0.85, 0.1, 0.1), (1.0, 1.0, 0.6, 0.6)),  # reds, as Figure 7
    "entropy": ((0.0, 0.05, 0.0, 0.25), (0.5, 0.6, 0.1, 0.6), (1.0, 1.0, 0.75, 0.3)),
}


def terminology_entry(class_index: int) -> str:
    """Slicer's terminology string for a tumour class (1 NCR/NET, 2 ED, 3 ET)."""
    return "~".join([TERMINOLOGY_CONTEXT, TERMINOLOGY_CATEGORY, TUMOUR_SEGMENTS[class_index][2], "^^",
                     ANATOMY_CONTEXT, "^^", "^^"])


def colour_table(scene, name: str):
    """The scene's ``BrainTumorExplain <name>`` colour table (256 entries), made once and reused."""
    if name not in COLOUR_MAPS:
        raise ValueError(f"unknown colour map {name!r}; expected one of {', '.join(COLOUR_MAPS)}")
    node_name = f"BrainTumorExplain {name}"
    existing = scene.GetFirstNodeByName(node_name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    stops = np.array(COLOUR_MAPS[name])
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", node_name)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    positions = np.linspace(0, 1, 256)
    rgb = np.stack([np.interp(positions, stops[:, 0], stops[:, c]) for c in (1, 2, 3)], axis=1)
    for index, (r, g, b) in enumerate(rgb):
        table.SetColor(index, f"{index}", r, g, b, 1.0)
    return table


def _subject_hierarchy(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)


def _item_of(hierarchy, node, parent: int) -> int:
    """The node's subject-hierarchy item (desktop Slicer makes one per node; headless MRML does not)."""
    item = hierarchy.GetItemByDataNode(node)
    return item if item else hierarchy.CreateItem(parent, node)


class RunOutputs:
    """Adds one run's results under a new subject-hierarchy folder beside ``reference_node``; use as a context
    manager so a failure (or a cancel raised inside) removes everything added::

        with RunOutputs(scene, flair_node, "ResUnet 2026-11-26 15:04") as run:
            run.add_segmentation(classes)
            run.add_heatmap(cam, "Grad-CAM dec1 ET", colour="heat")
    """

    def __init__(self, scene, reference_node, folder_name: str) -> None:
        if reference_node is None or not reference_node.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError("the reference input must be a scalar volume node")
        self.scene, self.reference = scene, reference_node
        self.hierarchy = _subject_hierarchy(scene)
        parent = self.hierarchy.GetItemParent(self.hierarchy.GetItemByDataNode(reference_node)) \
            if self.hierarchy.GetItemByDataNode(reference_node) else self.hierarchy.GetSceneItemID()
        self.folder = self.hierarchy.CreateFolderItem(parent, folder_name)
        self.nodes: list = []
        self._made_tables: list = []

    # -- transaction ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "RunOutputs":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.discard()

    def discard(self) -> None:
        """Remove every node this run added, and its folder."""
        remove_nodes(self.scene, self.nodes + self._made_tables)
        self.nodes.clear()
        self._made_tables.clear()
        if self.folder:
            self.hierarchy.RemoveItem(self.folder, False, True)  # the folder and its items (nodes are gone)
            self.folder = 0

    def _keep(self, node):
        self.nodes.append(node)
        self.hierarchy.SetItemParent(_item_of(self.hierarchy, node, self.folder), self.folder)
        return node

    def _table(self, name: str):
        before = self.scene.GetFirstNodeByName(f"BrainTumorExplain {name}")
        table = colour_table(self.scene, name)
        if before is None:
            self._made_tables.append(table)
        return table

    # -- outputs -------------------------------------------------------------------------------------------------
    def add_labelmap(self, canonical: np.ndarray, name: str):
        """An integer or boolean array (canonical ``(z, y, x)``) as a label map on the reference geometry."""
        canonical = np.asarray(canonical)
        if canonical.dtype == bool:
            canonical = canonical.astype(np.uint8)
        return self._keep(add_volume_from_canonical(self.scene, self.reference, canonical, name, labelmap=True))

    def add_segmentation(self, classes: np.ndarray, name: str = "Tumour segmentation",
                         convention: LabelConvention = BRATS2021):
        """Class indices (0..3, canonical) → a segmentation node (three named, coloured segments with
        terminology, reference geometry = the input) and a label map with the convention's values (1/2/4)."""
        classes = np.asarray(classes)
        labelmap = self.add_labelmap(convention.from_classes(classes), f"{name} labels")
        colours = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{name} colours")
        self._made_tables.append(colours)
        colours.SetTypeToUser()
        colours.SetNumberOfColors(max(convention.codes) + 1)
        for value in range(max(convention.codes) + 1):
            colours.SetColor(value, "", 0.0, 0.0, 0.0, 0.0)
        for class_index, (segment_name, rgb, _) in TUMOUR_SEGMENTS.items():
            colours.SetColor(convention.codes[class_index], segment_name, *rgb, 1.0)
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
        segmentation = self._keep(self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name))
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(self.reference)
        segmentation.CreateDefaultDisplayNodes()
        logic = slicer.vtkSlicerSegmentationsModuleLogic()
        logic.SetMRMLScene(self.scene)
        if not logic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise ValueError(f"Slicer could not turn {labelmap.GetName()!r} into segments")
        value_to_class = {convention.codes[c]: c for c in TUMOUR_SEGMENTS}
        segments = segmentation.GetSegmentation()
        for index in range(segments.GetNumberOfSegments()):
            segment = segments.GetNthSegment(index)
            segment.SetTerminology(terminology_entry(value_to_class[segment.GetLabelValue()]))
        return segmentation, labelmap

    def add_heatmap(self, canonical: np.ndarray, name: str, colour: str = "heat", transparent_below: float = 0.1):
        """A float map (canonical) as a scalar volume with a BrainTumorExplain colour table, windowed to its own
        range; values below ``transparent_below`` × its maximum are not drawn, so it overlays the FLAIR cleanly."""
        canonical = np.asarray(canonical, dtype=np.float32)
        if not np.isfinite(canonical).all():
            raise ValueError(f"{name}: the map has NaN or infinite values")
        node = self._keep(add_volume_from_canonical(self.scene, self.reference, canonical, name))
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(self._table(colour).GetID())
        peak = float(canonical.max()) if canonical.size else 0.0
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, peak if peak > 0 else 1.0)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(transparent_below * peak if peak > 0 else 1.0)
        display.SetUpperThreshold(max(peak, 1.0) * 10)
        return node


def show_overlay(scene, background, foreground=None, opacity: float = 0.5, label=None) -> None:
    """Every slice view: ``background`` (the FLAIR) under ``foreground`` (a heatmap) at ``opacity``, and a label
    map on top; segmentation nodes show by themselves."""
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity)
        composite.SetLabelVolumeID(label.GetID() if label is not None else None)


def application_logic(scene):
    """Slicer's application logic in the desktop app; headless, a fresh one bound to ``scene``."""
    app = getattr(slicer, "app", None)
    if app is not None and hasattr(app, "applicationLogic"):
        return app.applicationLogic()
    logic = slicer.vtkSlicerApplicationLogic()
    logic.SetMRMLScene(scene)
    return logic


def save_scene_bundle(scene, path: str | Path, slicer_version: str = "Slicer 5.8.1 33241") -> Path:
    """The whole scene as a Slicer data bundle (``.mrb``: the scene file plus every node's data).

    ``slicer_version`` is written into the scene so desktop Slicer does not warn of an unknown application.
    """
    path = Path(path)
    if path.suffix != ".mrb":
        raise ValueError(f"{path}: a scene bundle file must end in .mrb")
    path.parent.mkdir(parents=True, exist_ok=True)
    logic = application_logic(scene)
    work = Path(tempfile.mkdtemp(prefix="bte_mrb_"))
    try:
        bundle = work / path.stem
        bundle.mkdir()
        if not scene.GetVersion():
            scene.SetVersion(slicer_version)
        if not logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None):
            raise ValueError(f"{path}: Slicer could not write the scene bundle")
        partial = path.with_name(path.name + ".partial")
        if not logic.Zip(str(partial), str(bundle)):
            partial.unlink(missing_ok=True)
            raise ValueError(f"{path}: could not zip the scene bundle")
        partial.replace(path)  # never a half-written .mrb under the final name
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def open_scene_bundle(path: str | Path):
    """A new scene read from a ``.mrb`` (for checking what a bundle holds; desktop Slicer opens it directly)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scene bundle")
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerApplicationLogic()
    logic.SetMRMLScene(scene)
    work = Path(tempfile.mkdtemp(prefix="bte_mrb_open_"))
    mrml = logic.UnpackSlicerDataBundle(str(path), str(work))
    if not mrml:
        raise ValueError(f"{path}: not a Slicer data bundle")
    scene.SetURL(mrml)
    if not scene.Import():
        raise ValueError(f"{path}: Slicer could not read the scene in this bundle")
    return scene
