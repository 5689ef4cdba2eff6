"""The command line: each verb end to end on small data, --help everywhere, and clean failures."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorExplainLib.cli import build_parser, main


def test_every_verb_has_help(capsys):
    verbs = build_parser()._subparsers._group_actions[0].choices
    assert {"demo", "phantom", "montage", "score"} <= set(verbs)
    for verb in verbs:
        with pytest.raises(SystemExit) as stop:
            main([verb, "--help"])
        assert stop.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_phantom_then_score_then_montage(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path), "--cases", "2", "--seed", "40", "--spacing", "4"]) == 0
    case = tmp_path / "Phantom_00040"
    assert (tmp_path / "Phantom_00041" / "Phantom_00041_t1ce.nii.gz").is_file()
    seg = case / "Phantom_00040_seg.nii.gz"
    assert main(["score", "--pred", str(seg), "--gt", str(seg), "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["WT"]["dice"] == 1.0 and scores["WT"]["hd95_mm"] == 0.0
    assert main(["montage", str(case), "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_against_another_case_is_imperfect(tmp_path, capsys):
    main(["phantom", "--out", str(tmp_path), "--cases", "2", "--seed", "40", "--spacing", "4"])
    a, b = (tmp_path / f"Phantom_0004{i}" / f"Phantom_0004{i}_seg.nii.gz" for i in (0, 1))
    assert main(["score", "--pred", str(a), "--gt", str(b)]) == 0
    table = capsys.readouterr().out
    wt_dice = float(next(line for line in table.splitlines() if line.startswith("WT")).split()[1])
    assert wt_dice < 0.9


def test_score_refuses_different_grids_and_bad_labels(tmp_path, capsys):
    labels = np.zeros((4, 5, 6), np.uint8)
    a, b = sitk.GetImageFromArray(labels), sitk.GetImageFromArray(labels)
    b.SetSpacing((2.0, 1.0, 1.0))
    sitk.WriteImage(a, str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(b, str(tmp_path / "b.nii.gz"))
    assert main(["score", "--pred", str(tmp_path / "a.nii.gz"), "--gt", str(tmp_path / "b.nii.gz")]) == 2
    assert "grid" in capsys.readouterr().err
    labels[0, 0, 0] = 3
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "c.nii.gz"))
    assert main(["score", "--pred", str(tmp_path / "c.nii.gz"), "--gt", str(tmp_path / "a.nii.gz")]) == 2
    assert "c.nii.gz: label values [3]" in capsys.readouterr().err


def test_module_entry_point_reports_errors_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "BrainTumorExplainLib", "montage", str(tmp_path / "none"),
                             "--out", str(tmp_path / "m.png")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "not a folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.png").exists()


def test_demo_segments_the_sample_with_the_shipped_network_and_scores_it(tmp_path, capsys):
    from BrainTumorExplainLib.case import SAMPLE_CASE

    assert main(["demo", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["case"] == "Phantom_01003" and summary["model"] == "denseunet"
    network, threshold = summary["scores"]["denseunet"], summary["scores"]["threshold"]
    assert set(network) == {"WT", "TC", "ET"}
    assert network["WT"]["dice"] > 0.85 and network["WT"]["dice"] > threshold["WT"]["dice"] + 0.1
    segmentation = sitk.ReadImage(str(tmp_path / "segmentation.nii.gz"))
    reference = sitk.ReadImage(str(SAMPLE_CASE / "Phantom_01003_flair.nii.gz"))
    assert segmentation.GetOrigin() == reference.GetOrigin()
    assert segmentation.GetDirection() == reference.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(segmentation))) <= {0, 1, 2, 4}
    assert (tmp_path / "montage.png").read_bytes()[:4] == b"\x89PNG"
    assert "summary:" in capsys.readouterr().out.splitlines()[-1]
