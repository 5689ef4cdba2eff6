"""An ``explain`` run folder → a Slicer scene bundle (``scene.mrb``), built with the module's own MRML logic.

The library must not import Slicer, so ``explain`` runs this file in a child process where ``slicer`` (slicer-core
headless, or desktop Slicer's Python) is importable::

    python -m BrainTumorExplainLogic.bundle RUN_FOLDER [--summary FILE|-] [--out RUN_FOLDER/scene.mrb]

(the case's files are named in the run's summary: ``RUN_FOLDER/summary.json``, or the one given — ``-`` reads it
from stdin, as ``explain`` passes it before its summary is written).

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
import time
from pathlib import Path

from .explainrun import add_run_outputs
from .library import ensure_library_importable
from .render import slice_composite, write_png
from .results import save_scene_bundle, show_overlay
from .volumes import canonical_array, load_case_nodes

ensure_library_importable()
from BrainTumorExplainLib.app.contract import SCENE, figure_file, read_summary  # noqa: E402
from BrainTumorExplainLib.data.case import CaseFiles  # noqa: E402


def push_run_outputs(scene, run_folder: str | Path, summary: dict | None = None) -> None:
    """Load the run's case from its files and add every output under one folder, uncertainty over the FLAIR; render
    the slice views of the uncertainty (with the segmentation) and of the last layer's Grad-CAM into ``figures/``."""
    run_folder = Path(run_folder)
    summary = summary or read_summary(run_folder)
    inputs = summary["inputs"]
    nodes = load_case_nodes(scene, CaseFiles(**{k: Path(v) if v else None for k, v in inputs["files"].items()},
                                             case_id=summary["case"], naming=inputs["naming"]))
    flair = nodes.volumes["flair"]
    run, overlays = add_run_outputs(scene, run_folder, flair, f"BrainTumorExplain {summary['model']}",
                                    summary=summary)
    show_overlay(scene, flair, overlays["uncertainty"], opacity=0.5)
    labels = next(node for node in run.nodes if node.IsA("vtkMRMLLabelMapVolumeNode"))
    z = int(canonical_array(labels).astype(bool).sum(axis=(1, 2)).argmax())  # the largest predicted tumour
    write_png(slice_composite(flair, z, overlays["uncertainty"], 0.5, labels),
              run_folder / figure_file("slice_uncertainty"))
    gradcam = [name for name in overlays if name.startswith("Grad-CAM")]
    if gradcam:  # the enhancing tumour's map when there is one, else the first class's
        chosen = next((name for name in gradcam if name.endswith(" ET")), gradcam[0])
        write_png(slice_composite(flair, z, overlays[chosen], 0.6), run_folder / figure_file("slice_gradcam"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m BrainTumorExplainLogic.bundle", description=__doc__)
    parser.add_argument("run_folder", type=Path, help="an explain output folder")
    parser.add_argument("--summary", help="the run's summary: a JSON file, or - for stdin (default: "
                        "RUN_FOLDER/summary.json)")
    parser.add_argument("--out", type=Path, help="default: RUN_FOLDER/scene.mrb")
    parser.add_argument("--timings", type=Path, help="also write the push and save times (s) and node count, as JSON")
    args = parser.parse_args(argv)
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    try:
        start = time.perf_counter()
        summary = None
        if args.summary:
            summary = json.loads(sys.stdin.read() if args.summary == "-" else Path(args.summary).read_text())
        push_run_outputs(scene, args.run_folder, summary)
        pushed = time.perf_counter()
        path = save_scene_bundle(scene, args.out or args.run_folder / SCENE)
        if args.timings:
            args.timings.write_text(json.dumps({"push_s": pushed - start, "save_s": time.perf_counter() - pushed,
                                                "nodes": scene.GetNumberOfNodes()}))
    except (ValueError, OSError, KeyError) as error:  # our logic's errors name the file and the problem
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
