"""explain end to end on a small phantom: every output on the case's grid, a self-contained report, runs never mixed,
and nothing left behind when a run fails."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BrainTumorExplainLib.app.cli import main
from conftest import FAST_EXPLAIN

FAST = FAST_EXPLAIN


def _grid(path):
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


@pytest.fixture(scope="module")
def explained(explained_phantom):
    return explained_phantom


def test_every_output_is_on_the_case_grid_and_named_as_documented(explained, small_phantom):
    out = explained
    reference = _grid(small_phantom.flair)
    volumes = ["segmentation", "uncertainty", "entropy", "mutual_information", "review"]
    for name in volumes:
        assert _grid(out / f"{name}.nii.gz") == reference
    gradcam = sorted(p.name for p in (out / "gradcam").iterdir())
    assert gradcam == sorted(f"{layer}_{c}.nii.gz" for layer in ("enc2", "dec1") for c in ("ncr", "ed", "et"))
    concepts = list((out / "concepts").glob("*.nii.gz"))
    assert concepts and all(_grid(p) == reference for p in concepts)
    assert all(re.fullmatch(r"[a-z0-9]+_\d+_(WT|TC|ET|ED|NCR|brain|WM|GM|CSF)\.nii\.gz", p.name) for p in concepts)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nii.gz")))
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    for png in ("figures/segmentation.png", "figures/uncertainty.png", "figures/gradcam.png", "figures/topdown.png",
                "figures/concepts.png", "figures/review.png", "featviz/detectors.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_maps_are_stored_as_levels_of_the_full_resolution_maps(explained, small_phantom, tmp_path):
    """The default run's Grad-CAM and uncertainty files: 8-bit levels on the same grid, each within half a level
    of the same run's float32 map (--full-resolution), and together smaller."""
    import nibabel

    full = tmp_path / "full"
    assert main(["explain", str(small_phantom.flair.parent), *FAST, "--full-resolution", "--no-scene",
                 "--out", str(full)]) == 0
    maps = [p.relative_to(full) for p in sorted((full / "gradcam").glob("*.nii.gz"))]
    maps += [f"{name}.nii.gz" for name in ("uncertainty", "entropy", "mutual_information")]
    for relative in maps:
        exact, stored = full / relative, explained / relative
        assert nibabel.load(str(exact)).get_data_dtype() == np.float32
        assert nibabel.load(str(stored)).get_data_dtype() == np.uint8, relative
        assert _grid(stored) == _grid(exact)
        exact, stored = (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in (exact, stored))
        assert np.abs(stored - exact).max() <= exact.max() / 255 / 2 * (1 + 1e-5) + 1e-12, relative
    assert sum((explained / m).stat().st_size for m in maps) < sum((full / m).stat().st_size for m in maps)


def test_summary_and_report_carry_the_numbers(explained):
    out = explained
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["scores"]) == {"WT", "TC", "ET"} and set(summary["baseline_scores"]) == {"WT", "TC", "ET"}
    assert summary["uncertainty"]["mode"] == "T=2"
    assert set(summary["uncertainty"]["error_analysis"]["maps"]) == {"uncertainty", "entropy", "mutual_information"}
    assert 0 <= summary["uncertainty"]["error_analysis"]["control"]["auroc"] <= 1
    assert list(summary["gradcam"]["localisation"]) == ["enc2", "dec1"]
    concepts = summary["concepts"]
    assert concepts["detectors"] and all("case_iou" in d and "control_iou" in d for d in concepts["detectors"])
    # the shipped dissection carries its controls: every detector beat its concept's best control by the margin
    assert {row["concept"] for row in concepts["controls"]} >= {d["concept"] for d in concepts["detectors"]}
    assert all(d["dataset_iou"] >= d["control_iou"] + concepts["margin"] - 1e-4 for d in concepts["detectors"])
    gradcam_controls = summary["gradcam"]["controls"]["targets"]
    assert set(gradcam_controls) == {"NCR/NET", "ED", "ET"}
    assert all(list(entry["layers"]) == ["enc2", "dec1"] for entry in gradcam_controls.values())
    review = summary["review"]
    assert review["lesions"] and {row["match"] for row in review["lesions"]} <= {"TP", "FP", "small", "FN"}
    assert all(set(row["gradcam"]) == {"NCR/NET", "ED", "ET"} for row in review["lesions"])
    assert all({"entropy", "deterministic entropy"} <= set(row["uncertainty"]) for row in review["lesions"])
    assert [region["rank"] for region in review["regions"]] == list(range(1, len(review["regions"]) + 1))
    masses = [region["uncertainty_mass"] for region in review["regions"]]
    assert masses == sorted(masses, reverse=True)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "review.nii.gz")))
    assert int(written.max()) == len(review["regions"])
    assert set(review["coverage"]["top"]) <= {"1", "3", "5", "10"} and "deterministic entropy" in \
        review["lesion_auroc"]["auroc"]
    assert {"load", "segmentation", "uncertainty", "gradcam", "concepts", "review", "featviz", "report"} \
        <= set(summary["seconds"])
    assert summary["versions"]["torch"]
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 6
    assert not re.search(r"""(src|href)=["']?(https?:|file:|/)""", report)  # self-contained: loads nothing
    assert "AUROC" in report and "Best detector per concept" in report
    control = summary["uncertainty"]["error_analysis"]["control"]  # the control on the maps' own errors, calibration
    assert f"on the same errors</td><td>{control['same_errors']['auroc']:.3f}" in report
    assert f"<td>one pass</td><td>{control['calibration']['ece']:.4f}" in report
    assert "Concepts against controls" in report and "Grad-CAM against controls" in report
    assert "Where to look" in report and report.count("<tr>") > len(review["lesions"]) + len(review["regions"])


def test_runs_are_never_mixed_and_failures_leave_nothing(explained, small_phantom, capsys):
    out = explained
    before = (out / "summary.json").read_bytes()
    assert main(["explain", str(small_phantom.flair.parent), *FAST, "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and (out / "summary.json").read_bytes() == before
    failing = out.with_name("failing")
    assert main(["explain", str(small_phantom.flair.parent), *FAST, "--layers", "enc9",
                 "--out", str(failing)]) == 2
    assert "valid layers" in capsys.readouterr().err
    assert not failing.exists() and not failing.with_name("failing.partial").exists()


def test_the_headline_names_the_scores_the_controls_where_to_look_and_the_report(explained, small_phantom):
    from BrainTumorExplainLib.app.report import headline_lines

    summary = json.loads((explained / "summary.json").read_text())
    lines = headline_lines(summary, explained)
    assert lines[0] == f"case {small_phantom.case_id} against its ground truth (resunet):"
    assert "WT Dice" in lines[1] and "WT L-Dice" in lines[1]  # the legacy and the lesion-wise tables
    analysis = summary["uncertainty"]["error_analysis"]
    line = next(line for line in lines if line.startswith("uncertainty AUROC"))
    assert f"{analysis['control']['auroc']:.3f}, {analysis['control']['same_errors']['auroc']:.3f} on the sampled " \
           "prediction's errors" in line  # the control on its own errors and on those the maps are scored on
    assert line.endswith(f"(ECE) {analysis['calibration']['ece']:.4f} sampled, "
                         f"{analysis['control']['calibration']['ece']:.4f} one pass")
    assert any(line.startswith("concepts the network detects beyond its controls") for line in lines)
    assert sum(line.startswith("where to look: ") for line in lines) == (1 if summary.get("review") else 0)
    assert lines[-1] == f"report: {explained / 'report.html'}"


def test_the_slicer_benchmark_pushes_an_explain_run_into_a_scene(explained):
    """bench --only slicer on a real run folder: the push is timed and every output becomes a node."""
    pytest.importorskip("slicer")
    from BrainTumorExplainLib.testbed.bench import BenchConfig, bench_slicer

    (measurement,) = bench_slicer(None, None, BenchConfig(explain_run=explained), torch.device("cpu"))
    assert "skipped" not in measurement.details, measurement.details
    assert measurement.ours_s > 0 and measurement.details["nodes"] >= 8


def test_bad_input_is_one_clear_line(small_phantom, tmp_path, capsys):
    folder = small_phantom.flair.parent
    assert main(["explain", "--flair", str(small_phantom.flair), "--t1", str(small_phantom.t1),
                 "--model", "resunet", "--out", str(tmp_path / "x")]) == 2
    assert "missing modality: give --t1ce --t2" in capsys.readouterr().err
    assert main(["explain", str(folder), "--model", "unet3000", "--out", str(tmp_path / "y")]) == 2
    error = capsys.readouterr().err
    assert "--model unet3000: not a shipped network" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists()


def test_scene_bundle_reopens_with_every_output_on_the_input_geometry(explained, small_phantom):
    pytest.importorskip("slicer")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "BrainTumorExplain"))
    from BrainTumorExplainLogic import ijk_to_ras, nodes_of_class, open_scene_bundle

    out = explained
    assert json.loads((out / "summary.json").read_text())["scene"] == "scene.mrb"
    scene = open_scene_bundle(out / "scene.mrb")
    volumes = {n.GetName(): n for n in nodes_of_class(scene, "vtkMRMLVolumeNode")}
    flair = volumes[f"{small_phantom.case_id}_flair"]
    expected = {"uncertainty (test-time dropout)", "entropy (test-time dropout)",
                "mutual_information (test-time dropout)", "Tumour segmentation labels",
                "Grad-CAM dec1 NCR/NET", "Grad-CAM dec1 ED", "Grad-CAM dec1 ET"}
    assert expected <= set(volumes)
    concepts = [name for name in volumes if name.startswith("concept ")]
    assert len(concepts) == len(list((out / "concepts").glob("*.nii.gz")))
    for name in expected | set(concepts):
        np.testing.assert_allclose(ijk_to_ras(volumes[name]), ijk_to_ras(flair), atol=1e-9)
    segmentations = {node.GetName(): node for node in nodes_of_class(scene, "vtkMRMLSegmentationNode")}
    regions = json.loads((out / "summary.json").read_text())["review"]["regions"]
    assert set(segmentations) == {"Tumour segmentation"} | ({"Review regions"} if regions else set())
    assert segmentations["Tumour segmentation"].GetSegmentation().GetNumberOfSegments() >= 1
    points = nodes_of_class(scene, "vtkMRMLMarkupsFiducialNode")
    assert [node.GetNumberOfControlPoints() for node in points] == ([len(regions)] if regions else [])
    renders = [out / "figures" / name for name in ("slice_uncertainty.png", "slice_gradcam.png")]
    assert all(path.is_file() for path in renders) and renders[0].read_bytes() != renders[1].read_bytes()
    report = (out / "report.html").read_text()
    assert "As the slice view shows it" in report and 'alt="slice_gradcam.png"' in report
