"""The check that both the desktop self-test (``BrainTumorExplainTest``) and the slicer-core pytest run: load a
case as nodes, explain it in the background process, push the results, and verify them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .explainrun import ExplainProcess, RunSettings, add_run_outputs, run_summary
from .volumes import ijk_to_ras, load_case_nodes, nodes_of_class

QUICK_CHECK = RunSettings(model="resunet", quick=True, layers="enc1,dec1", featviz_steps=5)


def check_explain_round_trip(scene, case_folder: str | Path, settings: RunSettings = QUICK_CHECK,
                             python: str | None = None) -> dict:
    """Explain ``case_folder`` from its nodes; raise ``AssertionError`` unless every output is in one folder on
    the FLAIR's exact geometry with the three tumour segments, and the inputs are untouched. Returns the summary."""
    nodes = load_case_nodes(scene, case_folder)
    flair = nodes.volumes["flair"]
    before = {m: (node.GetImageData().GetMTime(), ijk_to_ras(node).copy()) for m, node in nodes.volumes.items()}
    count_before = scene.GetNumberOfNodes()
    process = ExplainProcess(dict(nodes.volumes), settings, python)
    try:
        status = process.wait(timeout=1800)
        assert status.error is None, status.error or status.log[-2000:]
        assert status.fraction == 1.0, status.log[-2000:]
        run, overlays = add_run_outputs(scene, process.out, flair, "self-test run")
        summary = run_summary(process.out)
    finally:
        process.cleanup()
    assert not process.folder.exists(), "the run's temporary folder was left behind"
    reference = ijk_to_ras(flair)
    for node in run.nodes:
        if node.IsA("vtkMRMLVolumeNode"):
            assert np.array_equal(ijk_to_ras(node), reference), f"{node.GetName()} is off the FLAIR's geometry"
    segmentations = [n for n in run.nodes if n.IsA("vtkMRMLSegmentationNode")]
    assert len(segmentations) == 1
    names = {segmentations[0].GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentations[0].GetSegmentation().GetNumberOfSegments())}
    assert names <= {"Necrosis/non-enhancing core", "Edema", "Enhancing tumor"} and names, names
    assert {"uncertainty", "entropy", "mutual_information"} <= set(overlays)
    assert scene.GetNumberOfNodes() > count_before
    for modality, node in nodes.volumes.items():  # inputs only read
        assert node.GetImageData().GetMTime() == before[modality][0], f"{modality} input was modified"
        assert np.array_equal(ijk_to_ras(node), before[modality][1])
    assert len(nodes_of_class(scene, "vtkMRMLSegmentationNode")) == 1
    return summary
