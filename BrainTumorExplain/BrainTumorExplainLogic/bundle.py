"""An ``explain`` run folder → a Slicer scene bundle (``scene.mrb``), built with the module's own MRML logic.

The library must not import Slicer, so ``explain`` runs this file in a child process where ``slicer`` (slicer-core
headless, or desktop Slicer's Python) is importable::

    python -m BrainTumorExplainLogic.bundle RUN_FOLDER [--out RUN_FOLDER/scene.mrb]

(the case's files are read from the run's ``summary.json``).

The scene holds the four sequences, the segmentation (segments + 1/2/4 label map), the uncertainty, entropy and
mutual-information maps, the Grad-CAM map of the last layer before the head for each class (every layer's maps stay
in ``gradcam/`` as NIfTI; all of them would make the bundle gigabytes) and the concept masks — all in one
subject-hierarchy folder, every volume on the FLAIR's exact geometry, FLAIR in the background and the uncertainty as
the foreground overlay.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import SimpleITK as sitk

from .library import ensure_library_importable
from .results import RunOutputs, save_scene_bundle, show_overlay
from .volumes import load_case_nodes

ensure_library_importable()
from BrainTumorExplainLib.case import CaseFiles, load_case  # noqa: E402
from BrainTumorExplainLib.labels import CLASS_KEYS, CLASS_NAMES  # noqa: E402

HEATMAPS = (("uncertainty", "uncertainty"), ("entropy", "entropy"), ("mutual_information", "entropy"))


def _canonical(case, path: Path):
    return case.grid.to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


def build_scene_bundle(scene, run_folder: str | Path, out: str | Path) -> Path:
    """Load the run's case, add its outputs under one folder, set the overlay and write ``out`` (.mrb)."""
    run_folder = Path(run_folder)
    summary = json.loads((run_folder / "summary.json").read_text())
    inputs = summary["inputs"]
    case_source = CaseFiles(**{k: Path(v) if v else None for k, v in inputs["files"].items()},
                            case_id=summary["case"], naming=inputs["naming"])
    case = load_case(case_source, convention=inputs["convention"])
    nodes = load_case_nodes(scene, case_source)
    flair = nodes.volumes["flair"]
    with RunOutputs(scene, flair, f"BrainTumorExplain {summary['model']}") as run:
        segmentation, _ = run.add_segmentation(case.label_convention.to_classes(
            _canonical(case, run_folder / "segmentation.nii.gz")), convention=case.label_convention)
        overlays = {name: run.add_heatmap(_canonical(case, run_folder / f"{name}.nii.gz"), name, colour=colour)
                    for name, colour in HEATMAPS}
        gradcam = summary.get("gradcam", {})
        if gradcam.get("layers"):
            layer = [name for name in gradcam["layers"] if name != "head"][-1]
            for class_name in gradcam["classes"]:
                key = CLASS_KEYS[CLASS_NAMES.index(class_name)]
                run.add_heatmap(_canonical(case, run_folder / "gradcam" / f"{layer}_{key}.nii.gz"),
                                f"Grad-CAM {layer} {class_name}", colour="heat")
        for path in sorted((run_folder / "concepts").glob("*.nii.gz")):
            run.add_labelmap(_canonical(case, path) > 0, f"concept {path.name[:-len('.nii.gz')]}")
    show_overlay(scene, flair, overlays["uncertainty"], opacity=0.5)
    return save_scene_bundle(scene, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m BrainTumorExplainLogic.bundle", description=__doc__)
    parser.add_argument("run_folder", type=Path, help="an explain output folder")
    parser.add_argument("--out", type=Path, help="default: RUN_FOLDER/scene.mrb")
    args = parser.parse_args(argv)
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    try:
        path = build_scene_bundle(scene, args.run_folder, args.out or args.run_folder / "scene.mrb")
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
