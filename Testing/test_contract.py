"""The run contract: explain and each analysis's own verb write the same volumes for the same case, model, seed
and options (one writer per analysis), the progress protocol, the summary schema — and the wheel carries the Slicer
logic that writes scene.mrb."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_EXPLAIN

from BrainTumorExplainLib.app.cli import main
from BrainTumorExplainLib.app.contract import (
    STAGES,
    SUMMARY_SCHEMA,
    event_line,
    gradcam_file,
    parse_event,
    read_summary,
)
from BrainTumorExplainLib.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
# The 3 mm test phantom stays at 3 mm (the networks were trained at 1 mm): this tests the contract, not accuracy.
FAST = ["--model", "resunet", "--device", "cpu", "--no-resample", "--seed", "0"]
LAYERS = "enc2,dec1"


@pytest.fixture(scope="module")
def runs(small_phantom, tmp_path_factory):
    """One dissection, one explain with it, and each analysis's own verb on the same case and settings."""
    case = str(small_phantom.flair.parent)
    root = tmp_path_factory.mktemp("contract")
    assert main(["dissect", "--data", case, *FAST[:5], "--layers", LAYERS, "--out", str(root / "dissect")]) == 0
    assert main(["explain", case, *FAST_EXPLAIN, "--seed", "0", "--dissection",
                 str(root / "dissect" / "dissection.json"), "--no-scene",
                 "--progress", "json", "--out", str(root / "explain")]) == 0
    assert main(["segment", case, *FAST[:5], "--out", str(root / "segment.nii.gz")]) == 0
    assert main(["uncertainty", case, *FAST, "--full", "-T", "2", "--out", str(root / "uncertainty")]) == 0
    assert main(["gradcam", case, *FAST[:5], "--layers", LAYERS, "--out", str(root / "gradcam")]) == 0
    return root, small_phantom.case_id


def _same_bytes(a: Path, b: Path) -> None:
    assert a.is_file() and b.is_file(), (a, b)
    assert filecmp.cmp(a, b, shallow=False), f"{a} and {b} differ"


def test_segmentation_verb_and_explain_write_the_same_file(runs):
    root, _ = runs
    _same_bytes(root / "segment.nii.gz", root / "explain" / "segmentation.nii.gz")


def test_uncertainty_verb_and_explain_write_the_same_maps(runs):
    root, _ = runs
    for name in ("uncertainty", "entropy", "mutual_information"):
        _same_bytes(root / "uncertainty" / f"{name}.nii.gz", root / "explain" / f"{name}.nii.gz")
    verb = json.loads((root / "uncertainty" / "summary.json").read_text())
    assert verb["passes"] == read_summary(root / "explain")["uncertainty"]["passes"]


def test_gradcam_verb_and_explain_write_the_same_maps(runs):
    root, _ = runs
    names = sorted(p.name for p in (root / "explain" / "gradcam").iterdir())
    assert names == sorted(gradcam_file(layer, c) for layer in LAYERS.split(",") for c in ("ncr", "ed", "et"))
    for name in names:
        _same_bytes(root / "gradcam" / "resunet" / name, root / "explain" / "gradcam" / name)


def test_dissect_and_explain_write_the_same_concept_masks(runs):
    root, case_id = runs
    names = sorted(p.name for p in (root / "explain" / "concepts").iterdir())
    assert names and names == sorted(p.name for p in (root / "dissect" / "concepts" / case_id).iterdir())
    for name in names:
        _same_bytes(root / "dissect" / "concepts" / case_id / name, root / "explain" / "concepts" / name)


def test_featviz_verb_and_explain_make_the_same_pre_images(runs, tmp_path):
    root, _ = runs
    with np.load(root / "explain" / "featviz" / "detectors.npz") as made:
        targets = [str(t) for t in made["targets"]]
        explained = {key: made[key] for key in made.files}
    no_case = [option for option in FAST if option != "--no-resample"]  # featviz reads no case
    assert main(["featviz", *no_case, "--filters", ",".join(targets), "--steps", "3", "--size", "32",
                 "--out", str(tmp_path / "featviz")]) == 0
    layers = "+".join(sorted({t.split(":")[0] for t in targets}))
    with np.load(tmp_path / "featviz" / f"featviz_{layers}.npz") as verb:
        assert sorted(verb.files) == sorted(explained)
        for key in verb.files:
            np.testing.assert_array_equal(verb[key], explained[key])


def test_progress_events_and_the_summary_schema(runs, capsys):
    root, _ = runs
    summary = read_summary(root / "explain")
    assert summary["schema"] == SUMMARY_SCHEMA and list(summary["seconds"]) == list(STAGES)
    assert parse_event(event_line("stage_finished", stage="gradcam", seconds=1.5)) == {
        "event": "stage_finished", "stage": "gradcam", "seconds": 1.5}
    assert parse_event("[gradcam] 1.5 s") is None and parse_event("{not json") is None
    broken = root / "old"
    broken.mkdir()
    (broken / "summary.json").write_text(json.dumps({"schema": 0}))
    with pytest.raises(InputError, match="summary schema 0"):
        read_summary(broken)


def test_json_progress_is_one_event_per_line_on_stdout(small_phantom, tmp_path):
    result = subprocess.run([sys.executable, "-m", "BrainTumorExplainLib", "explain", str(small_phantom.flair.parent),
                             *FAST_EXPLAIN, "--layers", "dec1", "--featviz-steps", "2", "--no-scene",
                             "--progress", "json", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [parse_event(line) for line in result.stdout.splitlines()]
    assert events and None not in events  # nothing but events on stdout
    started = [e["stage"] for e in events if e["event"] == "stage_started"]
    finished = [e["stage"] for e in events if e["event"] == "stage_finished"]
    assert started == finished == list(STAGES) and events[-1]["event"] == "finished"


def test_a_wheel_installs_everything_explain_needs_for_its_scene(small_phantom, tmp_path):
    """From a non-editable install of the wheel (no checkout on the path), explain writes a scene.mrb that reopens
    with all its nodes: the Slicer logic is found by import."""
    pytest.importorskip("slicer")
    wheels = tmp_path / "wheels"
    import importlib.util

    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []  # offline when it can
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", *isolation, "-q",
                    "-w", str(wheels)], check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    dependencies = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (site / "dependencies.pth").write_text(f"{dependencies}\n")  # torch, slicer-core...: not this project's code
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    python = venv / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import BrainTumorExplainLib, BrainTumorExplainLogic; "
                            "print(BrainTumorExplainLib.__file__); print(BrainTumorExplainLogic.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True)
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    assert (site / "BrainTumorExplainLogic" / "BrainTumorExplain.term.json").is_file()
    assert (site / "BrainTumorExplainLib" / "weights" / "resunet.pt").is_file()
    shipped = json.loads((ROOT / "BrainTumorExplainLib" / "weights" / "segresnet3d.json").read_text())["files"]
    assert all((site / "BrainTumorExplainLib" / "weights" / "segresnet3d" / name).is_file() for name in shipped)
    out = tmp_path / "run"
    result = subprocess.run([str(python), "-m", "BrainTumorExplainLib", "explain", str(small_phantom.flair.parent),
                             *FAST_EXPLAIN, "--layers", "dec1", "--featviz-steps", "2", "--scene", "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    sys.path.insert(0, str(ROOT / "BrainTumorExplain"))
    from BrainTumorExplainLogic import nodes_of_class, open_scene_bundle

    scene = open_scene_bundle(out / "scene.mrb")
    names = {n.GetName() for n in nodes_of_class(scene, "vtkMRMLVolumeNode")}
    assert {f"{name} (test-time dropout)" for name in ("uncertainty", "entropy", "mutual_information")} <= names
    assert "Tumour segmentation labels" in names
    regions = json.loads((out / "summary.json").read_text())["review"]["regions"]
    assert {n.GetName() for n in nodes_of_class(scene, "vtkMRMLSegmentationNode")} \
        == {"Tumour segmentation"} | ({"Review regions"} if regions else set())
    shutil.rmtree(venv, ignore_errors=True)


def test_asking_for_a_scene_without_slicer_core_fails_before_any_work(small_phantom, tmp_path, monkeypatch, capsys):
    from BrainTumorExplainLib.app.stages import scene

    monkeypatch.setattr(scene, "unavailable", lambda: "slicer-core is not installed (pip install slicer-core)")
    assert main(["explain", str(small_phantom.flair.parent), *FAST, "--scene", "--out", str(tmp_path / "x")]) == 2
    captured = capsys.readouterr()
    assert "--scene: cannot write scene.mrb: slicer-core is not installed" in captured.err
    assert "[segmentation]" not in captured.out and not (tmp_path / "x").exists()


def test_an_option_is_one_field(small_phantom, tmp_path):
    """gradcam_target was added as one field of ExplainConfig (and its use in its stage): the command line, the
    arguments the panel passes and the summary follow from the field."""
    from BrainTumorExplainLib.analyses.dissection import load_shipped_dissection
    from BrainTumorExplainLib.app import stages
    from BrainTumorExplainLib.app.cli import build_parser
    from BrainTumorExplainLib.app.settings import ExplainConfig, config_from_arguments
    from BrainTumorExplainLib.data.case import load_case
    from BrainTumorExplainLib.models import load_pretrained

    config = ExplainConfig(model="resunet", layers="dec1", gradcam_target="logits")
    assert "--gradcam-target" in config.arguments()
    parsed = build_parser().parse_args(["explain", "case", "--out", "o", *config.arguments()])
    assert config_from_arguments(parsed) == config
    model = load_pretrained("resunet")
    run = stages.Run(load_case(small_phantom.flair.parent), model, config, load_shipped_dissection(model), tmp_path,
                     {}, quick=True, z=20, progress=False)
    stages.gradcam.run(run)
    assert run.summary["gradcam"]["target"] == "logits"
