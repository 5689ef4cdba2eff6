"""The command line: each verb end to end on small data, --help everywhere, and clean failures."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorExplainLib.app.cli import build_parser, main

# The 3 mm test phantom stays at 3 mm (the networks were trained at 1 mm): the verbs, not accuracy, are under test.
RESUNET = ["--model", "resunet", "--no-resample"]


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


def _same_grid(path, reference):
    image, ref = sitk.ReadImage(str(path)), sitk.ReadImage(str(reference))
    return (image.GetSize() == ref.GetSize() and np.allclose(image.GetSpacing(), ref.GetSpacing())
            and np.allclose(image.GetOrigin(), ref.GetOrigin())
            and np.allclose(image.GetDirection(), ref.GetDirection()))


def test_gradcam_writes_maps_on_the_case_grid_montage_and_curves(small_phantom, tmp_path, capsys):
    case = small_phantom.flair.parent
    out = tmp_path / "gc"
    assert main(["gradcam", str(case), *RESUNET, "--layers", "enc1,head", "--classes", "et",
                 "--slices", "20", "--out", str(out)]) == 0
    maps = sorted(p.name for p in (out / "resunet").glob("*.nii.gz"))
    assert maps == ["enc1_et.nii.gz", "head_et.nii.gz"]
    assert _same_grid(out / "resunet" / "head_et.nii.gz", small_phantom.flair)
    table = json.loads((out / "resunet" / "localisation.json").read_text())["localisation"]
    assert set(table["head"]["ET"]) == {"brain", "WT", "TC", "ET"}
    for png in (out / "resunet" / "gradcam_z20.png", out / "topdown.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sane = tmp_path / "sanity"  # issue 41: the cascading-randomisation check of the same maps
    assert main(["gradcam", str(case), *RESUNET, "--layers", "enc1,head", "--classes", "et", "--no-volume",
                 "--slices", "20,24", "--sanity", "--out", str(sane)]) == 0
    assert "sanity check: with the output layer random" in capsys.readouterr().out
    found = json.loads((sane / "resunet" / "sanity.json").read_text())
    assert found["randomised"][0] == "head" and found["slices"] == 1 and len(found["spearman"]["enc1"]["ET"]) == 10
    assert (sane / "resunet" / "sanity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fresh = tmp_path / "refused"
    assert main(["gradcam", str(case), *RESUNET, "--layers", "enc7", "--out", str(fresh)]) == 2
    assert "valid layers: enc1" in capsys.readouterr().err
    assert main(["gradcam", str(case), *RESUNET, "--classes", "5", "--out", str(fresh)]) == 2
    assert main(["gradcam", str(case), *RESUNET, "--slices", "999", "--out", str(fresh)]) == 2
    assert main(["gradcam", str(case), *RESUNET, "--out", str(out)]) == 2  # a result is never mixed
    assert "exists" in capsys.readouterr().err and not fresh.exists()


def test_ablate_zeroes_filters_one_at_a_time_or_together(small_phantom, tmp_path, capsys):
    """Issue 44: the ablate verb writes each filter's effect on the case's segmentation; a bad --filters is one error
    line and writes nothing."""
    case = small_phantom.flair.parent
    out = tmp_path / "ablation"
    assert main(["ablate", str(case), *RESUNET, "--filters", "enc1:0,head:1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    found = json.loads((out / "ablation.json").read_text())
    assert [row["filters"] for row in found["rows"]] == [[["enc1", 0]], [["head", 1]]]
    assert set(found["intact"]) == {"WT", "TC", "ET"} and "enc1 #0: " in printed and "Dice change WT" in printed
    together = tmp_path / "together"
    assert main(["ablate", str(case), *RESUNET, "--layer", "head", "--filters", "1,2,3", "--together",
                 "--out", str(together)]) == 0
    row = json.loads((together / "ablation.json").read_text())["rows"][0]
    assert len(row["filters"]) == 3 and row["agreement"]["WT"] < 1  # the tumour logits set to 0: labels change
    bad = tmp_path / "bad"
    assert main(["ablate", str(case), *RESUNET, "--filters", "enc1:x", "--out", str(bad)]) == 2
    assert "layer:index pairs" in capsys.readouterr().err and not bad.exists()


def test_dissect_writes_thresholds_tables_masks_and_figure(small_phantom, tmp_path, capsys):
    out = tmp_path / "dis"
    assert main(["dissect", "--data", str(small_phantom.flair.parent), *RESUNET, "--layers", "enc2,dec1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "detectors (IoU ≥ 0.04 and ≥ the best control + 0.05) per concept per layer" in printed
    assert "best IoU per concept:  trained  random weights       raw input  learned" in printed
    saved = json.loads((out / "dissection.json").read_text())
    assert saved["architecture"] == "resunet" and list(saved["layers"]) == ["enc2", "dec1"]
    assert list(saved["controls"]["random weights"]["layers"]) == ["enc2", "dec1"]
    assert list(saved["controls"]["raw input"]["layers"]) == ["input"]
    assert len(saved["control_table"]) == len(saved["concepts"]) and saved["control_seed"] == 0
    assert (out / "tables" / "enc2.csv").read_text().startswith("filter,best_concept,iou,control_iou,detector,")
    assert (out / "tables" / "controls.csv").read_text().startswith("concept,trained_layer,trained_filter,")
    masks = list((out / "concepts" / small_phantom.case_id).glob("*.nii.gz"))
    assert masks and all(_same_grid(p, small_phantom.flair) for p in masks)
    assert len(masks) == len({row["concept"] for row in json.loads((out / "detectors.json").read_text())["detectors"]})
    assert (out / "dissection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["dissect", "--data", str(tmp_path / "nothing"), "--model", "resunet", "--out",
                 str(tmp_path / "dis2")]) == 2
    assert "data folder does not exist" in capsys.readouterr().err


def test_uncertainty_writes_maps_figures_and_auroc(small_phantom, tmp_path, capsys):
    """Quick on a CPU without being told, as explain decides it (settings.resolve_quick)."""
    out = tmp_path / "ttd"
    assert main(["uncertainty", str(small_phantom.flair.parent), *RESUNET, "--device", "cpu", "-T", "4",
                 "--agreement", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "agreement with T=4" in printed and "AUROC for misclassified brain voxels" in printed
    assert "control (entropy of one deterministic pass (no sampling))" in printed
    for name in ("segmentation", "uncertainty", "entropy", "mutual_information"):
        assert _same_grid(out / f"{name}.nii.gz", small_phantom.flair)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nii.gz")))
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "quick" and 8 <= summary["passes"]["mean"] <= 16
    assert set(summary["error_analysis"]["maps"]) == {"uncertainty", "entropy", "mutual_information"}
    assert set(summary["agreement_with_full"]["pearson_r"]) == {"uncertainty", "entropy", "mutual_information"}
    for png in ("uncertainty.png", "error_by_uncertainty.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_featviz_and_template(small_phantom, tmp_path, capsys):
    template = tmp_path / "template.npz"
    assert main(["template", "--data", str(small_phantom.flair.parent), "--out", str(template)]) == 0
    out = tmp_path / "fv"
    assert main(["featviz", "--model", "resunet", "--layer", "enc1", "--filters", "0,3", "--steps", "4", "--size",
                 "32", "--template", str(template), "--sweep", "--out", str(out)]) == 0
    assert "regularised: mean activation #0" in capsys.readouterr().out
    for png in ("featviz_enc1.png", "sweep_enc1_0.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out / "featviz_enc1.npz") as saved:
        assert saved["regularised_images"].shape == (2, 4, 32, 32)
    assert main(["featviz", "--model", "resunet", "--layer", "enc1", "--filters", "99", "--steps", "2", "--size",
                 "32", "--out", str(tmp_path / "fv2")]) == 2
    assert "filter 99 out of range for layer enc1" in capsys.readouterr().err


def test_a_single_case_verb_says_how_the_case_was_prepared_and_warns_on_stderr(small_phantom, tmp_path, capsys):
    """segment (as every single-case verb, through report.preparation_lines): each preparation step on stdout; the
    3 mm phantom's coarse voxels against the 1 mm network as one warning line naming the case, on stderr."""
    assert main(["segment", str(small_phantom.flair.parent), "--model", "resunet", "--device", "cpu", "--out",
                 str(tmp_path / "labels.nii.gz")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("co-registration: ") and "brain mask: " in out
    coarse = [line for line in err.splitlines() if "coarser" in line]
    assert len(coarse) == 1 and coarse[0].startswith(f"warning: {small_phantom.case_id}: voxels of 3 × 3 × 3 mm")


def test_no_layer_name_is_refused_for_a_3d_network_too():
    """--layers ',' names no layer: refused before any work for a described (3D) network as for a 2D one."""
    from BrainTumorExplainLib.app.explain import check_choices
    from BrainTumorExplainLib.errors import UsageError
    from BrainTumorExplainLib.models import load_model

    for name in ("segresnet3d", "resunet"):
        with pytest.raises(UsageError):
            check_choices(load_model(name), ",", "tumour")


def test_the_command_line_only_parses():
    """Issue 38: each verb's options are the fields of its settings (app.verbs, and the config of its analysis),
    each given to its job (app.jobs) as parsed; cli.py holds nothing else."""
    import argparse
    import dataclasses
    from pathlib import Path

    from BrainTumorExplainLib.app import cli

    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(verbs) == set(cli.VERBS)
    for verb, (job, settings) in cli.VERBS.items():
        fields = {setting.name for kind in settings for setting in dataclasses.fields(kind)}
        options = {action.dest for action in verbs[verb]._actions if action.dest != "help"}
        assert options and options <= fields, (verb, options - fields)
        assert job.__module__ == "BrainTumorExplainLib.app.jobs"
    assert len(Path(cli.__file__).read_text().splitlines()) <= 400
