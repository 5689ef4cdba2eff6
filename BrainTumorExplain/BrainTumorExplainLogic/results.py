"""One run's results in the scene: a subject-hierarchy folder beside the input holding the tumour segmentation
(segments with BraTS colours and standard terminology, plus a 1/2/4 label map), heatmaps (Grad-CAM, uncertainty,
entropy) with our own colour tables and transparent low values, and concept masks as label maps.

Every volume is placed on the reference input's exact IJK→RAS (:func:`volumes.add_volume_from_canonical`).
Input nodes are only read. :class:`RunOutputs` is a transaction: if anything fails — or the caller cancels by
raising — every node it added (and its folder) is removed, so no half-made result is left in the scene.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import slicer
import vtk

from .library import ensure_library_importable
from .volumes import add_volume_from_canonical, new_node, nodes_of_class, remove_nodes, world_ijk_to_ras

ensure_library_importable()
from BrainTumorExplainLib.data.labels import BRATS2021, LabelConvention  # noqa: E402

# Segment per class index: name, colour (BraTS as Slicer shows it), type code. NCR and NET share the necrosis
# concept, as DICOM CID 7168 does for non-enhancing tumour. The codes live in our own terminology context
# (BrainTumorExplain.term.json, registered with Slicer's Terminologies logic): Slicer's DICOM master list has
# Necrosis and Edema but no enhancing lesion (checked in v5.6.0 to v5.10.0), so that context cannot name ET.
TUMOUR_SEGMENTS: dict[int, tuple[str, tuple[float, float, float], str]] = {
    1: ("Necrosis/non-enhancing core", (0.86, 0.16, 0.16), "SCT^6574001^Necrosis"),
    2: ("Edema", (0.2, 0.75, 0.25), "SCT^79654002^Edema"),
    3: ("Enhancing tumor", (1.0, 0.85, 0.1), "NCIt^C113842^Enhancing Lesion"),
}
# Review regions: a ramp of cool colours (cycled), none of them a tumour class's
REVIEW_COLOURS = ((0.0, 0.9, 0.9), (0.3, 0.55, 1.0), (0.75, 0.4, 1.0), (0.0, 0.7, 0.5), (0.6, 0.85, 1.0))
TERMINOLOGY_FILE = Path(__file__).resolve().with_name("BrainTumorExplain.term.json")
TERMINOLOGY_CONTEXT = "BrainTumorExplain - BraTS glioma sub-regions"
TERMINOLOGY_CATEGORY = "SCT^49755003^Morphologically Altered Structure"
ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"  # Slicer's own, in every version
ANATOMY_REGION = "SCT^12738006^Brain"

# Colour maps as piecewise-linear RGB ramps (position 0..1, r, g, b): no colour files needed, same in every Slicer.
COLOUR_MAPS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "heat": ((0.0, 0.0, 0.0, 0.0), (0.35, 0.9, 0.0, 0.0), (0.7, 1.0, 0.8, 0.0), (1.0, 1.0, 1.0, 0.9)),  # Grad-CAM
    "uncertainty": ((0.0, 0.2, 0.0, 0.0), (0.5, 0.85, 0.1, 0.1), (1.0, 1.0, 0.6, 0.6)),  # reds, as Figure 7
    "entropy": ((0.0, 0.05, 0.0, 0.25), (0.5, 0.6, 0.1, 0.6), (1.0, 1.0, 0.75, 0.3)),
}


def terminology_entry(class_index: int) -> str:
    """Slicer's serialised terminology entry for a tumour class (1 NCR/NET, 2 ED, 3 ET): context~category~type~
    modifier~anatomic context~region~region modifier, the format of every supported version."""
    return "~".join([TERMINOLOGY_CONTEXT, TERMINOLOGY_CATEGORY, TUMOUR_SEGMENTS[class_index][2], "^^",
                     ANATOMY_CONTEXT, ANATOMY_REGION, "^^"])


def register_terminology(terminologies_logic) -> str:
    """Load our terminology context into Slicer's Terminologies logic once (desktop:
    ``slicer.modules.terminologies.logic()``); returns its name."""
    loaded = vtk.vtkStringArray()
    terminologies_logic.GetLoadedTerminologyNames(loaded)
    if TERMINOLOGY_CONTEXT not in {loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())}:
        if not terminologies_logic.LoadContextFromFile(str(TERMINOLOGY_FILE)):
            raise ValueError(f"{TERMINOLOGY_FILE}: Slicer could not load the module's terminology")
    return TERMINOLOGY_CONTEXT


def terminology_resolves(terminologies_logic, entry: str) -> bool:
    """True when a serialised entry's type is in its context's category as loaded in ``terminologies_logic`` —
    what Slicer's terminology selector needs to show the segment's meaning."""
    parsed = slicer.vtkSlicerTerminologyEntry()
    if not terminologies_logic.DeserializeTerminologyEntry(entry, parsed):
        return False
    context, category, wanted = parsed.GetTerminologyContextName(), parsed.GetCategoryObject(), parsed.GetTypeObject()
    found = slicer.vtkSlicerTerminologyType()
    for index in range(terminologies_logic.GetNumberOfTypesInTerminologyCategory(context, category)):
        if (terminologies_logic.GetNthTypeInTerminologyCategory(context, category, index, found)
                and (found.GetCodingSchemeDesignator(), found.GetCodeValue())
                == (wanted.GetCodingSchemeDesignator(), wanted.GetCodeValue())):
            return True
    return False


def colour_table(scene, name: str, created: list | None = None):
    """The scene's ``BrainTumorExplain <name>`` colour table (256 entries), made once and reused; a new one is
    recorded in ``created`` before it joins the scene."""
    if name not in COLOUR_MAPS:
        raise ValueError(f"unknown colour map {name!r}; expected one of {', '.join(COLOUR_MAPS)}")
    node_name = f"BrainTumorExplain {name}"
    existing = scene.GetFirstNodeByName(node_name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    stops = np.array(COLOUR_MAPS[name])
    table = new_node(scene, "vtkMRMLColorTableNode", node_name, [] if created is None else created)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    positions = np.linspace(0, 1, 256)
    rgb = np.stack([np.interp(positions, stops[:, 0], stops[:, c]) for c in (1, 2, 3)], axis=1)
    for index, (r, g, b) in enumerate(rgb):
        table.SetColor(index, f"{index}", r, g, b, 1.0)
    return table


class ReferenceGeometry:
    """What a run was computed on: the reference volume's world IJK→RAS and voxel dimensions when the run started.
    Results go back only onto a reference that still has both."""

    def __init__(self, node) -> None:
        self.name = node.GetName()
        self.ijk_to_ras = world_ijk_to_ras(node)
        self.dimensions = tuple(node.GetImageData().GetDimensions())

    def check(self, node) -> None:
        image = node.GetImageData()
        if image is None or tuple(image.GetDimensions()) != self.dimensions:
            raise ValueError(f"{node.GetName()!r} has other voxels than when the analysis started "
                             f"({self.dimensions}); run it again on the volume as it is now")
        if not np.allclose(world_ijk_to_ras(node), self.ijk_to_ras, rtol=0, atol=1e-6):
            raise ValueError(f"{node.GetName()!r} was moved, resampled or given another spacing or origin since the "
                             "analysis started; its results would land in the wrong place — run it again")


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

    def __init__(self, scene, reference_node, folder_name: str, expected: "ReferenceGeometry | None" = None) -> None:
        if reference_node is None or not reference_node.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError("the reference input must be a scalar volume node")
        if not scene.IsNodePresent(reference_node):
            raise ValueError(f"the reference volume {reference_node.GetName()!r} is no longer in the scene: the "
                             "results were computed on it and have nowhere to go")
        if expected is not None:
            expected.check(reference_node)
        self.scene, self.reference = scene, reference_node
        self.hierarchy = _subject_hierarchy(scene)
        parent = self.hierarchy.GetItemParent(self.hierarchy.GetItemByDataNode(reference_node)) \
            if self.hierarchy.GetItemByDataNode(reference_node) else self.hierarchy.GetSceneItemID()
        self.folder = self.hierarchy.CreateFolderItem(parent, folder_name)
        self.nodes: list = []
        self._made_tables: list = []
        self.review_points = None  # the review point list, once added (the panel steps through it)

    # -- transaction ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "RunOutputs":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.discard()

    def discard(self) -> None:
        """Remove every node this run added, and its folder."""
        remove_nodes(self.scene, self._made_tables + self.nodes)
        self.nodes.clear()
        self._made_tables.clear()
        self.review_points = None
        if self.folder:
            self.hierarchy.RemoveItem(self.folder, False, True)  # the folder and its items (nodes are gone)
            self.folder = 0

    def _keep(self, node):
        """Put a node this run recorded into the run's folder."""
        self.hierarchy.SetItemParent(_item_of(self.hierarchy, node, self.folder), self.folder)
        return node

    def _table(self, name: str):
        return colour_table(self.scene, name, self._made_tables)

    # -- outputs -------------------------------------------------------------------------------------------------
    def add_labelmap(self, canonical: np.ndarray, name: str):
        """An integer or boolean array (canonical ``(z, y, x)``) as a label map on the reference geometry."""
        canonical = np.asarray(canonical)
        if canonical.dtype == bool:
            canonical = canonical.astype(np.uint8)
        return self._keep(add_volume_from_canonical(self.scene, self.reference, canonical, name, labelmap=True,
                                                    created=self.nodes))

    def add_registration(self, from_parent_lps: np.ndarray, name: str):
        """A co-registration as a linear transform node: ``from_parent_lps`` (4×4, LPS) maps a point of the
        reference to the same anatomy in the moving sequence, ITK's convention, which is Slicer's "from parent" —
        so the node, applied to that sequence's volume, lays it over the reference. Only added: no node is moved."""
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS ↔ RAS
        ras = flip @ np.asarray(from_parent_lps, dtype=float) @ flip
        matrix = vtk.vtkMatrix4x4()
        for row in range(4):
            for column in range(4):
                matrix.SetElement(row, column, float(ras[row, column]))
        node = new_node(self.scene, "vtkMRMLLinearTransformNode", name, self.nodes)
        node.SetMatrixTransformFromParent(matrix)
        return self._keep(node)

    def add_segmentation(self, classes: np.ndarray, name: str = "Tumour segmentation",
                         convention: LabelConvention = BRATS2021):
        """Class indices (0..3, canonical) → a segmentation node (three named, coloured segments with
        terminology, reference geometry = the input) and a label map with the convention's values (1/2/4)."""
        labelmap, segmentation = self._segments(
            convention.from_classes(np.asarray(classes)), name,
            {convention.codes[c]: (segment_name, rgb) for c, (segment_name, rgb, _) in TUMOUR_SEGMENTS.items()})
        value_to_class = {convention.codes[c]: c for c in TUMOUR_SEGMENTS}
        segments = segmentation.GetSegmentation()
        for index in range(segments.GetNumberOfSegments()):
            segment = segments.GetNthSegment(index)
            # the tag itself: vtkSegment.SetTerminology, which sets it, exists only from Slicer 5.10
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(),
                           terminology_entry(value_to_class[segment.GetLabelValue()]))
        return segmentation, labelmap

    def add_review(self, review: np.ndarray, regions: list[dict], name: str = "Review"):
        """The review regions of a run (``review``: canonical label map, region n = rank n; ``regions``: the
        summary's, ranked) as a segmentation ``<name> regions`` with one segment per region, named ``Review n``,
        and a locked point list ``<name> points`` the user steps through: point n at region n's place — its voxel
        (i, j, k) through the reference's own IJK→RAS, under the reference's transform, so it moves with it —
        labelled ``Review n`` and described by why the region is listed."""
        if not regions:
            return None, None  # nothing to review: no empty nodes
        segments = {region["rank"]: (f"Review {region['rank']}", REVIEW_COLOURS[(region["rank"] - 1)
                                                                                % len(REVIEW_COLOURS)])
                    for region in regions}
        segmentation = self._segments(np.asarray(review), f"{name} regions", segments)[1]
        points = self._keep(new_node(self.scene, "vtkMRMLMarkupsFiducialNode", f"{name} points", self.nodes))
        points.SetAndObserveTransformNodeID(self.reference.GetTransformNodeID())
        points.CreateDefaultDisplayNodes()
        ijk_to_ras = vtk.vtkMatrix4x4()
        self.reference.GetIJKToRASMatrix(ijk_to_ras)
        for region in regions:
            ras = ijk_to_ras.MultiplyPoint([float(v) for v in region["place"]["ijk"]] + [1.0])[:3]
            index = points.AddControlPoint(vtk.vtkVector3d(*ras), f"Review {region['rank']}")
            points.SetNthControlPointDescription(index, region["why"])
            points.SetNthControlPointLocked(index, True)
        points.SetLocked(True)
        self.review_points = points
        return segmentation, points

    def _segments(self, values: np.ndarray, name: str, segments: dict[int, tuple[str, tuple[float, float, float]]]):
        """A canonical label map ``<name> labels`` whose colour table names and colours each value of
        ``segments`` (value → name, rgb), and the segmentation ``name`` Slicer imports from it (segment names and
        colours from that table; reference geometry and transform the reference's)."""
        labelmap = self.add_labelmap(values, f"{name} labels")
        colours = new_node(self.scene, "vtkMRMLColorTableNode", f"{name} colours", self._made_tables)
        colours.SetTypeToUser()
        colours.SetNumberOfColors(max(segments) + 1)
        for value in range(max(segments) + 1):
            colours.SetColor(value, "", 0.0, 0.0, 0.0, 0.0)
        for value, (segment_name, rgb) in segments.items():
            colours.SetColor(value, segment_name, *rgb, 1.0)
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
        segmentation = self._keep(new_node(self.scene, "vtkMRMLSegmentationNode", name, self.nodes))
        segmentation.SetAndObserveTransformNodeID(self.reference.GetTransformNodeID())
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(self.reference)
        segmentation.CreateDefaultDisplayNodes()
        # static: no module logic of our own bound to the scene (it would register node classes and converter
        # rules again on every run)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise ValueError(f"Slicer could not turn {labelmap.GetName()!r} into segments")
        return labelmap, segmentation

    def add_heatmap(self, canonical: np.ndarray, name: str, colour: str = "heat", transparent_below: float = 0.1):
        """A float map (canonical) as a scalar volume with a BrainTumorExplain colour table, windowed to its own
        range; values below ``transparent_below`` × its maximum are not drawn, so it overlays the FLAIR cleanly."""
        canonical = np.asarray(canonical, dtype=np.float32)
        if not np.isfinite(canonical).all():
            raise ValueError(f"{name}: the map has NaN or infinite values")
        node = self._keep(add_volume_from_canonical(self.scene, self.reference, canonical, name, created=self.nodes))
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(self._table(colour).GetID())
        peak = float(canonical.max()) if canonical.size else 0.0
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, peak if peak > 0 else 1.0)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(transparent_below * peak if peak > 0 else 1.0)
        display.SetUpperThreshold(max(peak, 1.0) * 10)
        return node


def jump_to_review_point(scene, points, index: int) -> tuple[float, float, float]:
    """Centre every slice view on point ``index`` of a review point list (its world position: the point list's
    transform applied); returns that position (RAS, mm)."""
    if not 0 <= index < points.GetNumberOfControlPoints():
        raise ValueError(f"{points.GetName()!r} has no point {index + 1} (it has {points.GetNumberOfControlPoints()})")
    position = [0.0, 0.0, 0.0]
    points.GetNthControlPointPositionWorld(index, position)
    return _centre_slice_views(scene, position)


def jump_to_voxel(scene, volume, ijk) -> tuple[float, float, float]:
    """Centre every slice view on voxel ``ijk`` (the file's and the node's IJK: a lesion's place in the summary) of
    ``volume`` — through its IJK→RAS and its parent transforms, where the user sees it; returns that position."""
    return _centre_slice_views(scene, (world_ijk_to_ras(volume) @ [*map(float, ijk), 1.0])[:3])


def _centre_slice_views(scene, position) -> tuple[float, float, float]:
    position = tuple(float(v) for v in position)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *position, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return position


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


def _register_markups_storage(scene) -> None:
    """Point lists are stored as markups JSON files: desktop Slicer's Markups module registers that storage class
    with the scene; a bare MRML scene (slicer-core) has to be told, else it saves and reads no points."""
    if not scene.IsNodeClassRegistered("vtkMRMLMarkupsJsonStorageNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLMarkupsJsonStorageNode())


def save_scene_bundle(scene, path: str | Path, slicer_version: str = "Slicer 5.8.1 33241") -> Path:
    """The whole scene as a Slicer data bundle (``.mrb``: the scene file plus every node's data).

    ``slicer_version`` is written into the scene so desktop Slicer does not warn of an unknown application.
    """
    path = Path(os.path.abspath(path))
    if path.suffix != ".mrb":
        raise ValueError(f"{path}: a scene bundle file must end in .mrb")
    path.parent.mkdir(parents=True, exist_ok=True)
    logic = application_logic(scene)
    work = Path(tempfile.mkdtemp(prefix="bte_mrb_"))
    here = os.getcwd()
    try:
        bundle = work / path.stem
        bundle.mkdir()
        if not scene.GetVersion():
            scene.SetVersion(slicer_version)
        _register_markups_storage(scene)
        if not logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None):
            raise ValueError(f"{path}: Slicer could not write the scene bundle")
        partial = path.with_name(path.name + ".partial")
        if not logic.Zip(str(partial), str(bundle)):
            partial.unlink(missing_ok=True)
            raise ValueError(f"{path}: could not zip the scene bundle")
        partial.replace(path)  # never a half-written .mrb under the final name
    finally:
        os.chdir(here)  # Slicer's zip changes the working directory
        shutil.rmtree(work, ignore_errors=True)
    return path


def open_scene_bundle(path: str | Path):
    """A new scene read from a ``.mrb`` (for checking what a bundle holds; desktop Slicer opens it directly).

    The bundle is unpacked into a temporary folder that is deleted once the scene has read its data; the process's
    working directory is left as it was (Slicer's unzip changes it)."""
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scene bundle")
    scene = slicer.vtkMRMLScene()
    _register_markups_storage(scene)
    logic = slicer.vtkSlicerApplicationLogic()
    logic.SetMRMLScene(scene)
    work = Path(tempfile.mkdtemp(prefix="bte_mrb_open_"))
    here = os.getcwd()
    try:
        mrml = logic.UnpackSlicerDataBundle(str(path), str(work))
        if not mrml:
            raise ValueError(f"{path}: not a Slicer data bundle (it does not unzip to a scene)")
        scene.SetURL(mrml)
        if not scene.Import():
            raise ValueError(f"{path}: Slicer could not read the scene in this bundle")
    finally:
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)
    return scene
