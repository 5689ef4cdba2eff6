"""The Slicer scene (``scene.mrb``) and the slice-view renders, built by the Slicer module's MRML logic
(``BrainTumorExplainLogic.bundle``, installed with the library) in a child process: the library never imports
Slicer. It needs slicer-core (or desktop Slicer's Python)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from ...errors import OutputError, UsageError
from ..contract import SCENE, figure_file

NAME = "scene"
FIGURES = (
    (figure_file("slice_uncertainty"), "As the slice view shows it", "The slice with the largest predicted tumour as "
     "scene.mrb shows it in Slicer: FLAIR, the uncertainty overlay at 50 % and the segmentation labels."),
    (figure_file("slice_gradcam"), "Grad-CAM of the last layer, as the slice view shows it", "The same slice with "
     "the Grad-CAM heatmap of the layer before the output (enhancing tumour when predicted) over the FLAIR."),
)


def unavailable() -> str | None:
    """Why no scene can be written here, or None when it can."""
    if importlib.util.find_spec("slicer") is None:
        return "slicer-core is not installed (pip install slicer-core)"
    if importlib.util.find_spec("BrainTumorExplainLogic") is None:
        return "the Slicer module's logic (BrainTumorExplainLogic) is not installed beside the library"
    return None


def wanted(scene: bool | None) -> bool:
    """Whether to write the scene: asked for (refused before any work when impossible), not asked for, or — by
    default — when slicer-core is there."""
    reason = unavailable()
    if scene and reason:
        raise UsageError(f"--scene: cannot write {SCENE}: {reason}")
    return bool(scene if scene is not None else reason is None)


def run_bundle(run_folder: Path, summary: dict, *arguments: str) -> subprocess.CompletedProcess:
    """``python -m BrainTumorExplainLogic.bundle RUN_FOLDER --summary - [arguments]`` with the run's summary on
    stdin; its CompletedProcess."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(importlib.util.find_spec("BrainTumorExplainLogic").origin).parents[1]),
         os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "BrainTumorExplainLogic.bundle", str(run_folder), "--summary", "-",
                           *arguments], input=json.dumps(summary), env=environment, capture_output=True, text=True)


def run(run) -> None:
    if not run.handed_on.get("scene"):
        run.summary["scene"] = "not written"
        return
    done = run_bundle(run.work, run.summary)
    if done.returncode != 0:
        (run.work / SCENE).unlink(missing_ok=True)
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise OutputError(f"{SCENE}: could not be written ({last})")
    run.summary["scene"] = SCENE
