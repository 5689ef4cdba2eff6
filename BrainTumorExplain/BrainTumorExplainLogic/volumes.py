"""Case volumes in and out of the scene, with geometry copied exactly from the reference input.

A node's voxel order is not always the file's: for a left-handed direction matrix Slicer's reader reverses the
slice axis (k) to keep IJK right-handed. So the map between the library's canonical ``(z, y, x)`` arrays and a node
is derived from the node's own IJK→RAS, never assumed from the file. Results take the reference node's IJK→RAS
unchanged (``CopyOrientation``): oblique, flipped and anisotropic inputs included.

A volume under a linear parent transform is analysed where the user sees it: its world IJK→RAS (the transform times
its own) is what the analysis gets, and results go under the same transform with the reference's own IJK→RAS, so
they overlay it exactly and move with it. A non-linear or shearing transform is refused: harden it first.

Nodes are created, recorded in the caller's list and only then added to the scene, and every failure — an
interrupt included — removes what was recorded, so no orphan node is ever left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

from .library import ensure_library_importable

ensure_library_importable()
from BrainTumorExplainLib.data.case import MODALITIES, SAMPLE_CASE, CaseFiles, find_case_files  # noqa: E402
from BrainTumorExplainLib.data.grid import Reorientation  # noqa: E402
from BrainTumorExplainLib.data.imagefiles import check_image_file  # noqa: E402


@dataclass
class CaseNodes:
    """The nodes of one loaded case: a scalar volume per modality, and the labels as a label map if present."""

    case_id: str
    volumes: dict[str, "slicer.vtkMRMLScalarVolumeNode"]
    labels: "slicer.vtkMRMLLabelMapVolumeNode | None" = None
    files: CaseFiles | None = field(default=None, repr=False)


def _as_array(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(node) -> np.ndarray:
    """A volume node's own IJK→RAS matrix as a 4×4 array (parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return _as_array(matrix)


def world_ijk_to_ras(node) -> np.ndarray:
    """IJK→RAS where the user sees the volume: through its parent transforms, which must be linear and rigid or
    scaling (``ValueError`` naming the transform otherwise)."""
    local = ijk_to_ras(node)
    transform = node.GetParentTransformNode()
    if transform is None:
        return local
    if not transform.IsTransformToWorldLinear():
        raise ValueError(f"{node.GetName()!r} is under the non-linear transform {transform.GetName()!r}: harden it "
                         "first (Data module: right-click the volume, Harden transform) so that the analysis sees the "
                         "voxels where you see them")
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    world = _as_array(matrix) @ local
    axes = world[:3, :3] / np.linalg.norm(world[:3, :3], axis=0)
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-5):
        raise ValueError(f"{node.GetName()!r} is under the transform {transform.GetName()!r}, which shears its voxel "
                         "grid: harden it first (the volume is then resampled onto a regular grid)")
    return world


def nodes_of_class(scene, class_name: str) -> list:
    """Every node of a class in *this* scene (``slicer.util.getNodesByClass`` looks in ``slicer.mrmlScene``)."""
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def remove_nodes(scene, nodes) -> None:
    """Remove nodes with their display and storage nodes (used to leave nothing half-made behind)."""
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        if node.IsA("vtkMRMLDisplayableNode"):
            for display in [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]:
                if display is not None:
                    scene.RemoveNode(display)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is not None:
            scene.RemoveNode(node.GetStorageNode())
        scene.RemoveNode(node)


def new_node(scene, class_name: str, name: str, created: list):
    """A node of ``class_name`` named ``name``: recorded in ``created`` first, then added to ``scene``."""
    node = scene.CreateNodeByClass(class_name)
    node.UnRegister(None)  # CreateNodeByClass hands over a reference that Python's wrapper also holds
    node.SetName(name)
    created.append(node)
    scene.AddNode(node)
    return node


def _read_volume(scene, path: Path, name: str, class_name: str, created: list):
    check_image_file(path, name)  # ITK reads a truncated NIfTI as zeros: refuse it first
    node = new_node(scene, class_name, name, created)
    storage = new_node(scene, "vtkMRMLVolumeArchetypeStorageNode", f"{name} storage", created)
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        raise ValueError(f"{path}: Slicer could not read this file as a volume")
    node.CreateDefaultDisplayNodes()
    return node


def sample_data_source(thumbnail: Path) -> dict:
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` for the shipped sample
    case (those every supported Slicer has; the caller adds ``customDownloader``, which loads it with
    :func:`load_case_nodes`). The files ship with the extension, so their URIs are local."""
    files = [SAMPLE_CASE / f"{SAMPLE_CASE.name}_{role}.nii.gz" for role in (*MODALITIES, "seg")]
    return {"category": "BrainTumorExplain", "sampleName": SAMPLE_CASE.name, "thumbnailFileName": str(thumbnail),
            "uris": [path.as_uri() for path in files], "fileNames": [path.name for path in files],
            "nodeNames": [path.name.split(".")[0] for path in files]}


def load_case_nodes(scene, source: str | Path | CaseFiles) -> CaseNodes:
    """Load a BraTS case folder (either naming) or explicit files as nodes named ``<case>_<modality>``.

    On any failure every node created so far is removed and ``ValueError`` names the file and the problem.
    """
    files = source if isinstance(source, CaseFiles) else find_case_files(source)
    created: list = []
    try:
        volumes = {
            m: _read_volume(scene, getattr(files, m), f"{files.case_id}_{m}", "vtkMRMLScalarVolumeNode", created)
            for m in MODALITIES
        }
        labels = None
        if files.seg is not None:
            labels = _read_volume(scene, files.seg, f"{files.case_id}_seg", "vtkMRMLLabelMapVolumeNode", created)
    except BaseException:
        remove_nodes(scene, created)
        raise
    return CaseNodes(files.case_id, volumes, labels, files)


def node_reorientation(node) -> Reorientation:
    """Transpose/flips between the node's ``(k, j, i)`` array and the canonical ``(z, y, x)`` order (of its world
    geometry: the one the analysis saw)."""
    directions = world_ijk_to_ras(node)[:3, :3]
    directions = directions / np.linalg.norm(directions, axis=0)
    lps = np.diag([-1.0, -1.0, 1.0]) @ directions  # ITK's convention, which Reorientation speaks
    return Reorientation.from_direction(tuple(lps.ravel()))


def canonical_array(node) -> np.ndarray:
    """A volume node's voxels in the canonical ``(z, y, x)`` order (a view where possible)."""
    return node_reorientation(node).to_canonical(slicer.util.arrayFromVolume(node))


def canonical_shape(node) -> tuple[int, int, int]:
    itk_shape = tuple(reversed(node.GetImageData().GetDimensions()))
    return tuple(itk_shape[a] for a in node_reorientation(node).axes)


def add_volume_from_canonical(scene, reference_node, canonical_array: np.ndarray, name: str, labelmap: bool = False,
                              created: list | None = None):
    """Add a library result (canonical ``(z, y, x)`` array) as a volume on the reference node's exact geometry, under
    the reference's parent transform.

    The reference node is the case's reference volume in the scene (the one the result was computed on).
    ``created``: the caller's transaction list, which gets the node before the scene does. On failure (an interrupt
    included) nothing is added and ``ValueError`` says what did not fit.
    """
    canonical_array = np.asarray(canonical_array)
    expected = canonical_shape(reference_node)
    if canonical_array.shape != expected:
        raise ValueError(f"result of shape {canonical_array.shape} does not fit reference node "
                         f"{reference_node.GetName()!r} (canonical shape {expected}): pass the node of the case's "
                         "reference volume")
    array = np.ascontiguousarray(node_reorientation(reference_node).from_canonical(canonical_array))
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    mine: list = []
    try:
        node = new_node(scene, class_name, name, mine)
        node.CopyOrientation(reference_node)
        node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
        slicer.util.updateVolumeFromArray(node, array)
        node.CreateDefaultDisplayNodes()
    except BaseException:
        remove_nodes(scene, mine)
        raise
    if created is not None:
        created.extend(mine)
    return node
