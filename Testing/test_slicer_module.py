"""The module's Apply path on real MRML (slicer-core): input checks, the background explain process, its cancel,
and the results pushed onto the FLAIR's geometry — the same check the desktop self-test runs."""

import sys
import time
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")  # slicer-core; part of the [test] extra, so this runs in CI
sys.path.insert(0, str(Path(__file__).parents[1] / "BrainTumorExplain"))

from BrainTumorExplainLogic import ExplainProcess, assign_modalities, check_input_nodes, load_case_nodes, panel_config  # noqa: E402
from BrainTumorExplainLogic.selftest import QUICK_CHECK, check_explain_round_trip  # noqa: E402

from BrainTumorExplainLib.app.cli import build_parser  # noqa: E402
from BrainTumorExplainLib.app.settings import config_from_arguments  # noqa: E402


def test_modalities_are_assigned_from_node_names_and_ambiguity_is_reported():
    names = ["BraTS-GLI-00001-000-t2f", "BraTS-GLI-00001-000-t1c", "BraTS-GLI-00001-000-t1n",
             "BraTS-GLI-00001-000-t2w", "Segmentation"]
    assert assign_modalities(names) == {"flair": [names[0]], "t1": [names[2]], "t1ce": [names[1]], "t2": [names[3]]}
    found = assign_modalities(["case_T1CE", "case_T1", "case_flair", "flair copy", "t2 axial"])
    assert found["t1ce"] == ["case_T1CE"] and found["t1"] == ["case_T1"] and found["t2"] == ["t2 axial"]
    assert found["flair"] == ["case_flair", "flair copy"]  # two candidates: the panel flags it and asks
    assert assign_modalities(["MPRAGE"]) == {"flair": [], "t1": [], "t1ce": [], "t2": []}


def test_the_panel_run_is_the_config_explain_parses_back():
    settings = panel_config(model="simunet", weights="/w.pt", device="cuda", quick=False, passes=20, layers="dec1",
                            classes="ed,et", featviz_steps=7, seed=3)
    args = build_parser().parse_args(["explain", "case", "--out", "out", *settings.arguments()])
    assert config_from_arguments(args) == settings and settings.scene is False


def test_bad_inputs_are_refused_by_name_before_anything_is_made(scene, small_phantom, tmp_path):
    nodes = load_case_nodes(scene, small_phantom.flair.parent)
    volumes = dict(nodes.volumes)
    count = scene.GetNumberOfNodes()
    cases = [
        ({**volumes, "t1ce": None}, "choose a volume for T1CE"),
        ({**volumes, "t2": volumes["flair"]}, "chosen as both FLAIR and T2"),
        ({**volumes, "t1": nodes.labels}, "not a scalar volume"),
    ]
    moved = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "shifted T2")
    moved.Copy(volumes["t2"])
    moved.SetAndObserveImageData(volumes["t2"].GetImageData())
    moved.SetOrigin(5.0, 0.0, 0.0)
    cases.append(({**volumes, "t2": moved}, "not on the FLAIR's grid"))
    count = scene.GetNumberOfNodes()
    for chosen, message in cases:
        with pytest.raises(ValueError, match=message):
            ExplainProcess(chosen, QUICK_CHECK)
        assert scene.GetNumberOfNodes() == count
    with pytest.raises(ValueError, match="not a scalar volume"):
        check_input_nodes({**volumes, "flair": scene.AddNewNodeByClass("vtkMRMLModelNode", "model")})


def test_explain_from_nodes_round_trip(scene, small_phantom):
    from dataclasses import replace

    # The 3 mm test phantom stays at 3 mm (the network was trained at 1 mm): the round trip, not accuracy, is tested.
    summary = check_explain_round_trip(scene, small_phantom.flair.parent, replace(QUICK_CHECK, resample=False))
    assert summary["gradcam"]["layers"] == ["enc1", "dec1"]
    assert summary["network_space"]["off_space"].startswith("voxel size (3.0, 3.0, 3.0) mm")


def test_cancel_ends_the_process_and_leaves_no_files_and_no_nodes(scene, small_phantom):
    nodes = load_case_nodes(scene, small_phantom.flair.parent)
    count = scene.GetNumberOfNodes()
    process = ExplainProcess(dict(nodes.volumes), panel_config(quick=False, passes=100, device="cpu"))
    time.sleep(2)
    assert not process.poll().finished
    process.cancel()
    assert process.process.poll() is not None and not process.folder.exists()
    assert scene.GetNumberOfNodes() == count


def test_a_failing_run_reports_its_own_error_line(scene, small_phantom, tmp_path):
    from BrainTumorExplainLib.errors import UsageError

    with pytest.raises(UsageError, match="--model no_such_net: not a shipped network"):
        panel_config(model="no_such_net")  # refused in the panel, before any process starts
    nodes = load_case_nodes(scene, small_phantom.flair.parent)
    missing = tmp_path / "no_such_weights.pt"
    process = ExplainProcess(dict(nodes.volumes), panel_config(model="resunet", weights=str(missing)))
    try:
        status = process.wait(timeout=300)
    finally:
        process.cleanup()
    assert status.finished and status.error and "no_such_weights.pt" in status.error
    assert status.stage != "done" and status.fraction < 1
