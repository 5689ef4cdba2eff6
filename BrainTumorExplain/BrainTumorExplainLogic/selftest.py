"""The checks that both the desktop self-test (``BrainTumorExplainTest``) and the slicer-core pytest run.

``check_results_push`` needs no torch and runs everywhere, the extension build machines included. The full round
trip (``check_explain_round_trip``: explain the case in the background process, push, verify) needs PyTorch and
minutes of CPU, so in desktop Slicer it runs only when asked for, as SlicerMONAIAuto3DSeg's ``testLogic``: set
``BRAINTUMOREXPLAIN_TEST_LOGIC=1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import slicer

from .explainrun import ExplainProcess, add_run_outputs, panel_config
from .library import ensure_library_importable
from .results import TUMOUR_SEGMENTS, RunOutputs, register_terminology, terminology_resolves
from .volumes import canonical_array, ijk_to_ras, load_case_nodes, nodes_of_class

ensure_library_importable()
from BrainTumorExplainLib.app.contract import read_summary  # noqa: E402
from BrainTumorExplainLib.data.case import NAMING_CONVENTION  # noqa: E402

QUICK_CHECK = panel_config(model="resunet", quick=True, layers="enc1,dec1", featviz_steps=5, featviz_size=32)
LOGIC_TEST_VARIABLE = "BRAINTUMOREXPLAIN_TEST_LOGIC"


def logic_test_enabled(environment: Mapping[str, str] = os.environ) -> bool:
    """The explain round trip runs in the desktop self-test only when ``BRAINTUMOREXPLAIN_TEST_LOGIC`` is set (not
    empty, not 0): the extension build machines have no PyTorch."""
    return environment.get(LOGIC_TEST_VARIABLE, "").strip() not in ("", "0")


def _input_snapshot(nodes) -> dict:
    return {m: (node.GetImageData().GetMTime(), ijk_to_ras(node).copy()) for m, node in nodes.volumes.items()}


def _assert_untouched(nodes, before: dict) -> None:
    for modality, node in nodes.volumes.items():
        assert node.GetImageData().GetMTime() == before[modality][0], f"{modality} input was modified"
        assert np.array_equal(ijk_to_ras(node), before[modality][1]), f"{modality} input was moved"


def _assert_on_reference(run: RunOutputs, reference) -> None:
    expected = ijk_to_ras(reference)
    for node in run.nodes:
        if node.IsA("vtkMRMLVolumeNode"):
            assert np.array_equal(ijk_to_ras(node), expected), f"{node.GetName()} is off the FLAIR's geometry"
    segmentations = {n.GetName(): n for n in run.nodes if n.IsA("vtkMRMLSegmentationNode")}
    assert set(segmentations) <= {"Tumour segmentation", "Review regions"}, list(segmentations)
    segments = segmentations["Tumour segmentation"].GetSegmentation()
    names = {segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())}
    assert names and names <= {entry[0] for entry in TUMOUR_SEGMENTS.values()}, names
    if "Review regions" in segmentations:  # one segment and one point per region to review
        review = segmentations["Review regions"].GetSegmentation()
        assert run.review_points.GetNumberOfControlPoints() == review.GetNumberOfSegments() > 0


def check_results_push(scene, case_folder: str | Path, terminologies_logic=None) -> None:
    """Without torch: load the case, push its ground truth and a heatmap as one run, check the geometry, the
    segments (and their terminology, when Slicer's Terminologies logic is given), untouched inputs; then discard
    the run and check that nothing of it is left."""
    nodes = load_case_nodes(scene, case_folder)
    assert nodes.labels is not None, f"{case_folder}: the check needs a case with labels"
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)  # the scene's own (desktop Slicer has it)
    flair, before, count = nodes.volumes["flair"], _input_snapshot(nodes), scene.GetNumberOfNodes()
    convention = NAMING_CONVENTION[nodes.files.naming or "brats2021"]
    classes = convention.to_classes(canonical_array(nodes.labels))
    with RunOutputs(scene, flair, "self-test push") as run:
        segmentation, _ = run.add_segmentation(classes, convention=convention)
        run.add_heatmap(classes.astype(np.float32), "self-test heatmap")
    _assert_on_reference(run, flair)
    if terminologies_logic is not None:
        register_terminology(terminologies_logic)
        segments = segmentation.GetSegmentation()
        for index in range(segments.GetNumberOfSegments()):
            segment = segments.GetNthSegment(index)
            entry = _terminology(segment)
            assert terminology_resolves(terminologies_logic, entry), entry
    _assert_untouched(nodes, before)
    run.discard()
    assert scene.GetNumberOfNodes() == count, "the discarded run left nodes behind"


def _terminology(segment) -> str:
    """A segment's terminology tag (``GetTag`` returns it through an output argument in C++)."""
    import vtk

    value = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


def check_explain_round_trip(scene, case_folder: str | Path, settings=QUICK_CHECK, python: str | None = None,
                             idle: Callable[[], None] | None = None) -> dict:
    """Explain ``case_folder`` from its nodes; raise ``AssertionError`` unless every output is in one folder on
    the FLAIR's exact geometry with the tumour segments, and the inputs are untouched. Returns the summary.
    ``idle``: called while waiting (desktop: ``slicer.app.processEvents``, so the GUI stays alive)."""
    nodes = load_case_nodes(scene, case_folder)
    flair, before, count_before = nodes.volumes["flair"], _input_snapshot(nodes), scene.GetNumberOfNodes()
    process = ExplainProcess(dict(nodes.volumes), settings, python)
    try:
        status = process.wait(timeout=1800, idle=idle)
        assert status.error is None, status.error or status.log[-2000:]
        assert status.fraction == 1.0, status.log[-2000:]
        run, overlays = add_run_outputs(scene, process.out, flair, "self-test run", process.geometry)
        summary = read_summary(process.out)
    finally:
        process.cleanup()
    assert not process.folder.exists(), "the run's temporary folder was left behind"
    _assert_on_reference(run, flair)
    assert {"uncertainty", "entropy", "mutual_information"} <= set(overlays)
    assert scene.GetNumberOfNodes() > count_before
    _assert_untouched(nodes, before)
    made = [node for node in nodes_of_class(scene, "vtkMRMLSegmentationNode") if node not in run.nodes]
    assert not made, f"segmentations outside the run's folder: {[node.GetName() for node in made]}"
    return summary
