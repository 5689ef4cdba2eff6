"""Results into the scene on real MRML (slicer-core): segmentation with terminology, label values, heatmaps with our
colour tables, the run's subject-hierarchy folder, exact geometry on an awkward reference, no leftovers on failure,
and a .mrb bundle that reopens with everything."""

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
sys.path.insert(0, str(Path(__file__).parents[1] / "BrainTumorExplain"))

from BrainTumorExplainLogic import ijk_to_ras, load_case_nodes, node_reorientation, nodes_of_class  # noqa: E402
from BrainTumorExplainLogic.results import (  # noqa: E402
    TUMOUR_SEGMENTS,
    RunOutputs,
    open_scene_bundle,
    save_scene_bundle,
    show_overlay,
)
from conftest import oblique_direction, synthetic_case  # noqa: E402

from BrainTumorExplainLib.data.case import load_case  # noqa: E402


@pytest.fixture
def awkward_case(tmp_path):
    """Oblique, flipped, axis-permuted and anisotropic: the geometry that breaks naive code."""
    folder = tmp_path / "case"
    synthetic_case(folder, "Awkward", shape=(10, 14, 12), spacing=(0.8, 1.3, 2.2),
                   origin=(12.0, -40.0, 7.5), direction=oblique_direction(25.0, (1, -1, 1)))
    return folder


def _snapshot(node):
    return (slicer.util.arrayFromVolume(node).copy(), ijk_to_ras(node), node.GetStorageNode().GetFileName(),
            node.GetName())


def _node_count(scene) -> int:
    return scene.GetNumberOfNodes()


def test_segmentation_heatmap_and_hierarchy_on_an_awkward_reference(scene, awkward_case):
    nodes = load_case_nodes(scene, awkward_case)
    case = load_case(awkward_case)
    reference = nodes.volumes["flair"]
    before = {name: _snapshot(node) for name, node in nodes.volumes.items()}
    heat = np.random.default_rng(0).random(case.brain_mask.shape).astype(np.float32)
    with RunOutputs(scene, reference, "run 1") as run:
        segmentation, labelmap = run.add_segmentation(case.labels)
        heatmap = run.add_heatmap(heat, "Grad-CAM dec1 ET", colour="heat", transparent_below=0.25)
        concept = run.add_labelmap(case.labels > 0, "enc2 #17 WT")

    # geometry: every output volume has exactly the reference's IJK→RAS
    for node in (labelmap, heatmap, concept):
        np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(reference))
    role = segmentation.GetReferenceImageGeometryReferenceRole()
    assert segmentation.GetNodeReferenceID(role) == reference.GetID()
    # the segments themselves go back to the same voxels and values (1/2/4) on the reference grid
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    ids = [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(3)]
    import vtk

    id_list = vtk.vtkStringArray()
    for segment_id in ids:
        id_list.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation, id_list, exported, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
        labelmap.GetDisplayNode().GetColorNode())
    np.testing.assert_array_equal(ijk_to_ras(exported), ijk_to_ras(reference))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(exported), slicer.util.arrayFromVolume(labelmap))
    scene.RemoveNode(exported)

    # values round-trip: label map holds the file convention (1/2/4), the heatmap its floats
    reorient = node_reorientation(reference)
    np.testing.assert_array_equal(reorient.to_canonical(slicer.util.arrayFromVolume(labelmap)),
                                  case.label_convention.from_classes(case.labels))
    np.testing.assert_array_equal(reorient.to_canonical(slicer.util.arrayFromVolume(heatmap)), heat)
    assert set(np.unique(slicer.util.arrayFromVolume(labelmap))) == {0, 1, 2, 4}

    # segments: names, colours, terminology, label values
    segments = segmentation.GetSegmentation()
    found = {segments.GetNthSegment(i).GetLabelValue(): segments.GetNthSegment(i) for i in range(3)}
    for class_index, (name, colour, code) in TUMOUR_SEGMENTS.items():
        segment = found[case.label_convention.codes[class_index]]
        assert segment.GetName() == name
        np.testing.assert_allclose(segment.GetColor(), colour, atol=1 / 255)  # colour tables store 8 bits
        assert code in segment.GetTerminology() and "SCT^49755003^Morphologically Altered Structure" in segment.GetTerminology()

    # heatmap display: our colour table, low values transparent
    display = heatmap.GetDisplayNode()
    assert display.GetColorNode().GetName() == "BrainTumorExplain heat"
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.25 * heat.max())

    # hierarchy: the outputs sit in one folder, beside the input
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    folder = run.folder
    assert hierarchy.GetItemName(folder) == "run 1"
    children = {hierarchy.GetItemDataNode(hierarchy.GetItemByPositionUnderParent(folder, i)).GetName()
                for i in range(hierarchy.GetNumberOfItemChildren(folder))}
    assert children == {"Tumour segmentation", "Tumour segmentation labels", "Grad-CAM dec1 ET", "enc2 #17 WT"}

    # inputs untouched
    for name, node in nodes.volumes.items():
        after = _snapshot(node)
        np.testing.assert_array_equal(after[0], before[name][0])
        np.testing.assert_array_equal(after[1], before[name][1])
        assert after[2:] == before[name][2:]


def test_failure_or_cancel_inside_a_run_leaves_nothing(scene, awkward_case):
    nodes = load_case_nodes(scene, awkward_case)
    case = load_case(awkward_case)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)  # desktop Slicer always has one
    count = _node_count(scene)
    items = hierarchy.GetNumberOfItems()
    bad = np.full(case.brain_mask.shape, np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        with RunOutputs(scene, nodes.volumes["flair"], "failing run") as run:
            run.add_segmentation(case.labels)
            run.add_heatmap(bad, "broken")
    assert _node_count(scene) == count and hierarchy.GetNumberOfItems() == items
    with pytest.raises(ValueError, match="does not fit reference node"):
        with RunOutputs(scene, nodes.volumes["flair"], "wrong shape") as run:
            run.add_heatmap(np.zeros((3, 3, 3), np.float32), "small")
    assert _node_count(scene) == count and hierarchy.GetNumberOfItems() == items
    with pytest.raises(KeyboardInterrupt):  # a cancel raised from inside
        with RunOutputs(scene, nodes.volumes["flair"], "cancelled") as run:
            run.add_segmentation(case.labels)
            raise KeyboardInterrupt
    assert _node_count(scene) == count and hierarchy.GetNumberOfItems() == items
    with pytest.raises(ValueError, match="scalar volume"):
        RunOutputs(scene, None, "no reference")


def test_scene_bundle_reopens_with_every_node_and_geometry(scene, awkward_case, tmp_path):
    nodes = load_case_nodes(scene, awkward_case)
    case = load_case(awkward_case)
    reference = nodes.volumes["flair"]
    with RunOutputs(scene, reference, "run") as run:
        run.add_segmentation(case.labels)
        heatmap = run.add_heatmap(case.images[0].clip(0), "uncertainty", colour="uncertainty")
    show_overlay(scene, reference, heatmap, 0.4)
    bundle = save_scene_bundle(scene, tmp_path / "out" / "scene.mrb")
    assert bundle.is_file() and not list(bundle.parent.glob("*.partial"))
    assert reference.GetStorageNode().GetFileName().startswith(str(awkward_case))  # the input still points home
    reopened = open_scene_bundle(bundle)
    volumes = {n.GetName(): n for n in nodes_of_class(reopened, "vtkMRMLVolumeNode")}
    assert {"Awkward_flair", "Tumour segmentation labels", "uncertainty"} <= set(volumes)
    for name in ("Tumour segmentation labels", "uncertainty"):
        np.testing.assert_allclose(ijk_to_ras(volumes[name]), ijk_to_ras(reference), atol=1e-9)
    segmentations = nodes_of_class(reopened, "vtkMRMLSegmentationNode")
    assert len(segmentations) == 1 and segmentations[0].GetSegmentation().GetNumberOfSegments() == 3
    with pytest.raises(ValueError, match="must end in .mrb"):
        save_scene_bundle(scene, tmp_path / "scene.zip")


def test_rendered_slice_draws_heatmap_and_labels_exactly_on_the_tumour(scene, awkward_case, tmp_path):
    from BrainTumorExplainLogic.render import slice_composite, write_png

    nodes = load_case_nodes(scene, awkward_case)
    case = load_case(awkward_case)  # the library's own (SimpleITK) reading: an independent check of orientation
    tumour = case.labels > 0
    z = int(np.argmax(tumour.sum(axis=(1, 2))))
    assert tumour[z].any() and not tumour[z].all()
    flair = nodes.volumes["flair"]
    with RunOutputs(scene, flair, "render") as run:
        _, labelmap = run.add_segmentation(case.labels)
        heatmap = run.add_heatmap(np.where(tumour, 1.0, 0.0).astype(np.float32), "heat on the tumour")
    plain = slice_composite(flair, z)
    composite = slice_composite(flair, z, heatmap, 0.5, labelmap)
    heat_only = slice_composite(flair, z, heatmap, 1.0)
    # colour is added exactly where the tumour is, in the library's canonical order, on this oblique flipped grid
    np.testing.assert_array_equal(np.any(composite != plain, axis=2), tumour[z])
    np.testing.assert_array_equal(np.any(heat_only != plain, axis=2), tumour[z])
    top = heatmap.GetDisplayNode().GetColorNode().GetLookupTable().GetTableValue(255)[:3]
    np.testing.assert_array_equal(heat_only[tumour[z]], np.round(np.array(top) * 255).astype(np.uint8)[None].repeat(
        int(tumour[z].sum()), axis=0))
    with pytest.raises(ValueError, match="outside"):
        slice_composite(flair, 10_000)
    path = write_png(composite, tmp_path / "slice.png")
    import vtk
    from vtk.util import numpy_support

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()

    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    back = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
    np.testing.assert_array_equal(back, composite)  # first row at the top, as shown


def test_a_coregistration_becomes_a_transform_node_that_lays_the_sequence_over_the_reference(scene, awkward_case,
                                                                                              tmp_path):
    """A .tfm as explain writes it (ITK: reference point → moving point, LPS) becomes a linear transform node whose
    "to parent" takes each point of the moving sequence's anatomy (RAS) back onto the reference's; nothing else in
    the scene moves, and a failed run takes the node away with the rest."""
    import SimpleITK as sitk
    import vtk

    from BrainTumorExplainLib.data.registration import read_linear_transform

    euler = sitk.Euler3DTransform()
    euler.SetCenter((10.0, -5.0, 3.0))
    euler.SetRotation(0.05, -0.03, 0.02)
    euler.SetTranslation((2.0, -1.0, 3.0))
    path = tmp_path / "t1_to_flair.tfm"
    sitk.WriteTransform(euler, str(path))
    nodes = load_case_nodes(scene, awkward_case)
    reference = nodes.volumes["flair"]
    with RunOutputs(scene, reference, "run") as run:
        node = run.add_registration(read_linear_transform(path), "registration t1 → flair")
    to_parent = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(to_parent)
    matrix = np.array([[to_parent.GetElement(r, c) for c in range(4)] for r in range(4)])
    for fixed_lps in ((0.0, 0.0, 0.0), (30.0, -12.0, 45.0)):
        moving_lps = euler.TransformPoint(fixed_lps)
        moving_ras = np.array([-moving_lps[0], -moving_lps[1], moving_lps[2], 1.0])
        back = matrix @ moving_ras
        np.testing.assert_allclose(back[:3], [-fixed_lps[0], -fixed_lps[1], fixed_lps[2]], atol=1e-6)
    assert all(volume.GetParentTransformNode() is None for volume in nodes.volumes.values())

    count = _node_count(scene)
    with pytest.raises(RuntimeError):
        with RunOutputs(scene, reference, "failed run") as run:
            run.add_registration(read_linear_transform(path), "registration t2 → flair")
            raise RuntimeError("cancelled")
    assert _node_count(scene) == count


def test_review_regions_and_points_land_where_the_library_placed_them(scene, awkward_case):
    """The review list in the scene: one named segment per region on the reference geometry, and a locked point per
    region at the RAS the library computed from the file (SimpleITK) — also when the reference sits under a
    transform — that centres the slice views on it."""
    import vtk

    from BrainTumorExplainLib.analyses.review import place_of
    from BrainTumorExplainLogic.results import jump_to_review_point, jump_to_voxel

    nodes = load_case_nodes(scene, awkward_case)
    case = load_case(awkward_case)
    reference = nodes.volumes["flair"]
    review = np.zeros(case.brain_mask.shape, dtype=np.uint8)
    review[2:5, 3:7, 2:6] = 1
    review[6:9, 8:12, 7:11] = 2
    places = [place_of(np.argwhere(review == rank), case.grid) for rank in (1, 2)]
    regions = [{"rank": rank, "why": f"reason {rank}", "place": {"ijk": list(place.ijk)}}
               for rank, place in enumerate(places, start=1)]
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 5.0)
    matrix.SetElement(2, 3, -3.0)
    shift.SetMatrixTransformToParent(matrix)
    reference.SetAndObserveTransformNodeID(shift.GetID())
    for slice_name in ("Red", "Green", "Yellow"):
        slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode", slice_name)
        slice_node.SetLayoutName(slice_name)
    with RunOutputs(scene, reference, "run") as run:
        segmentation, points = run.add_review(review, regions)
    assert run.review_points is points and points.GetLocked()
    segments = segmentation.GetSegmentation()
    assert {segments.GetNthSegment(i).GetName(): segments.GetNthSegment(i).GetLabelValue()
            for i in range(segments.GetNumberOfSegments())} == {"Review 1": 1, "Review 2": 2}
    labels = scene.GetFirstNodeByName("Review regions labels")
    np.testing.assert_array_equal(ijk_to_ras(labels), ijk_to_ras(reference))
    np.testing.assert_array_equal(node_reorientation(reference).to_canonical(slicer.util.arrayFromVolume(labels)),
                                  review)
    assert points.GetTransformNodeID() == shift.GetID()
    for index, place in enumerate(places):
        assert points.GetNthControlPointLabel(index) == f"Review {index + 1}"
        assert points.GetNthControlPointDescription(index) == f"reason {index + 1}"
        world = [0.0, 0.0, 0.0]
        points.GetNthControlPointPositionWorld(index, world)
        np.testing.assert_allclose(world, np.array(place.ras) + [5.0, 0.0, -3.0], atol=0.01)  # Place: 2 decimals
        assert jump_to_review_point(scene, points, index) == pytest.approx(tuple(world))
        # a lesion row's place (the same voxel) through the reference node: the same spot
        assert jump_to_voxel(scene, reference, place.ijk) == pytest.approx(tuple(world), abs=0.01)
        for slice_name in ("Red", "Green", "Yellow"):
            slice_to_ras = scene.GetFirstNodeByName(slice_name).GetSliceToRAS()
            np.testing.assert_allclose([slice_to_ras.GetElement(r, 3) for r in range(3)], world, atol=1e-6)
    with pytest.raises(ValueError, match="no point 3"):
        jump_to_review_point(scene, points, 2)
    with RunOutputs(scene, reference, "calm run") as calm:
        assert calm.add_review(np.zeros_like(review), []) == (None, None)  # nothing to review: no empty nodes
    assert not calm.nodes
