"""The module's Apply: ``explain`` on the four input nodes in a background process, and its outputs back onto the
reference (FLAIR) node.

The analyses run in a child Python (``PythonSlicer`` in desktop Slicer), the way SlicerMONAIAuto3DSeg runs its
models: torch never loads into Slicer's process, the GUI never waits, and Cancel ends the child. The inputs reach it
as NRRD files written from the nodes by a storage node of our own (the nodes and their storage are untouched); the
results come back with the reference node's exact IJK→RAS. Nothing is added to the scene until the run has finished,
and then inside a :class:`RunOutputs` transaction — a failed or cancelled run leaves no node behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import slicer

from .library import ensure_library_importable, library_folder
from .results import RunOutputs
from .volumes import ijk_to_ras

ensure_library_importable()
from BrainTumorExplainLib.case import MODALITIES, read_canonical, read_label_file  # noqa: E402
from BrainTumorExplainLib.explain import STAGES  # noqa: E402
from BrainTumorExplainLib.labels import CLASS_KEYS, CLASS_NAMES, label_convention  # noqa: E402

# node-name tokens per modality, checked in this order (t1ce before t1, so "t1ce" never reads as T1)
MODALITY_TOKENS: dict[str, tuple[str, ...]] = {
    "flair": ("flair", "t2f"), "t1ce": ("t1ce", "t1c", "t1gd", "t1gad"), "t2": ("t2", "t2w"), "t1": ("t1", "t1n"),
}
HEATMAPS = (("uncertainty", "uncertainty"), ("entropy", "entropy"), ("mutual_information", "entropy"))


@dataclass(frozen=True)
class RunSettings:
    """What the panel asks of ``explain`` (its command-line options)."""

    model: str = "resunet"
    weights: str = ""  # your own weights file; empty: the shipped ones
    device: str = "cpu"
    quick: bool = True
    passes: int = 100
    layers: str = "all"
    classes: str = "tumour"
    featviz_steps: int = 100
    seed: int = 0

    def arguments(self) -> list[str]:
        arguments = ["--model", self.model, "--device", self.device, "--quick" if self.quick else "--full",
                     "-T", str(self.passes), "--layers", self.layers, "--classes", self.classes,
                     "--featviz-steps", str(self.featviz_steps), "--seed", str(self.seed), "--no-scene"]
        return arguments + (["--weights", self.weights] if self.weights else [])


def assign_modalities(names: Sequence[str]) -> dict[str, list[str]]:
    """Modality → the node names that look like it (``flair``/``t2f``, ``t1ce``/``t1c``/``t1gd``, ``t2``/``t2w``,
    ``t1``/``t1n`` as a word of the name, any case). One name per modality: assign it; none or several: ask."""
    found: dict[str, list[str]] = {modality: [] for modality in MODALITIES}
    for name in names:
        words = set(re.split(r"[^a-z0-9]+", name.lower()))
        for modality, tokens in MODALITY_TOKENS.items():
            if words & set(tokens):
                found[modality].append(name)
                break
    return found


def check_input_nodes(nodes: dict[str, object]) -> None:
    """Raise ``ValueError`` naming the problem unless the four modalities are distinct single-component scalar
    volumes (not label maps) with voxels, all on the FLAIR's grid."""
    missing = [m for m in MODALITIES if nodes.get(m) is None]
    if missing:
        raise ValueError(f"choose a volume for {', '.join(m.upper() for m in missing)}")
    seen: dict[str, str] = {}
    for modality in MODALITIES:
        node = nodes[modality]
        if node.GetID() in seen:
            raise ValueError(f"{node.GetName()!r} is chosen as both {seen[node.GetID()].upper()} and "
                             f"{modality.upper()}: each sequence needs its own volume")
        seen[node.GetID()] = modality
        if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(f"{modality.upper()} {node.GetName()!r} is not a scalar volume (a label map or other "
                             "node cannot be an MRI sequence)")
        image = node.GetImageData()
        if image is None or min(image.GetDimensions()) < 2:
            raise ValueError(f"{modality.upper()} {node.GetName()!r} has no 3D voxel data")
        if image.GetNumberOfScalarComponents() != 1:
            raise ValueError(f"{modality.upper()} {node.GetName()!r} has {image.GetNumberOfScalarComponents()} "
                             "components per voxel; expected a single-component MRI volume")
    flair = nodes["flair"]
    for modality in MODALITIES[1:]:
        node = nodes[modality]
        if node.GetImageData().GetDimensions() != flair.GetImageData().GetDimensions() or not np.allclose(
                ijk_to_ras(node), ijk_to_ras(flair), atol=1e-4):
            raise ValueError(f"{modality.upper()} {node.GetName()!r} is not on the FLAIR's grid: resample it onto "
                             f"{flair.GetName()!r} first (module Resample Image (BRAINS) or Crop Volume)")


@dataclass(frozen=True)
class RunStatus:
    stage: str  # the stage running now ("" before the first, "done" after a success)
    fraction: float  # finished stages / all stages
    finished: bool
    error: str | None  # the run's own one-line error, when it failed
    log: str  # everything it printed so far


class ExplainProcess:
    """One ``explain`` run in a child process on the given nodes; poll it from a timer, cancel it at any time.

    ``python``: the interpreter that runs the library (desktop Slicer: ``PythonSlicer``)."""

    def __init__(self, nodes: dict[str, object], settings: RunSettings, python: str | None = None) -> None:
        check_input_nodes(nodes)
        self.settings = settings
        self.reference = nodes["flair"]
        self.folder = Path(tempfile.mkdtemp(prefix="BrainTumorExplain-"))
        self.out = self.folder / "out"
        self._lines: list[str] = []
        try:
            case = self.folder / "case"
            case.mkdir()
            for modality, node in nodes.items():
                _write_node(node, case / f"input_{modality}.nrrd")
            environment = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
                [str(library_folder()), os.environ.get("PYTHONPATH", "")]))
            self.process = subprocess.Popen(
                [python or sys.executable, "-m", "BrainTumorExplainLib", "explain", str(case), "--out", str(self.out),
                 *settings.arguments()], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:  # tqdm's carriage-return updates arrive as parts of lines
            self._lines.extend(part for part in line.rstrip("\n").split("\r") if part.strip())

    def poll(self) -> RunStatus:
        finished = self.process.poll() is not None
        if finished:
            self._reader.join(timeout=5)
        lines = list(self._lines)
        started = [m.group(1) for m in (re.match(r"\[(\w+)\] …", line) for line in lines) if m]
        ended = {m.group(1) for m in (re.match(r"\[(\w+)\] [0-9.]+ s$", line) for line in lines) if m}
        error = None
        if finished and self.process.returncode != 0:
            errors = [line for line in lines if line.startswith("error:")]
            error = errors[-1][len("error:"):].strip() if errors else (lines[-1] if lines else "the run failed")
        stage = "done" if finished and error is None else (started[-1] if started else "")
        return RunStatus(stage, len(ended & set(STAGES)) / len(STAGES), finished, error, "\n".join(lines))

    def wait(self, timeout: float | None = None) -> RunStatus:
        self.process.wait(timeout)
        return self.poll()

    def cancel(self) -> None:
        """End the child (whatever it is doing) and delete everything it wrote."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def torch_status(python: str | None = None) -> tuple[str, bool]:
    """(torch version, CUDA available) as the analysis process sees them, asked in a child so that Slicer's own
    process never imports torch; ("", False) when torch is not installed there."""
    probe = ("import importlib.util, sys\n"
             "if importlib.util.find_spec('torch') is None: print(''); sys.exit()\n"
             "import torch; print(torch.__version__, int(torch.cuda.is_available()))")
    done = subprocess.run([python or sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    words = done.stdout.split()
    return (words[0], words[1] == "1") if len(words) == 2 else ("", False)


def _write_node(node, path: Path) -> None:
    """The node's voxels and geometry to ``path`` through a storage node of our own (the node stays untouched)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(node):
        raise ValueError(f"could not write {node.GetName()!r} for the analysis ({path})")


def run_summary(run_folder: Path) -> dict:
    return json.loads((Path(run_folder) / "summary.json").read_text())


def add_run_outputs(scene, run_folder: str | Path, reference_node, folder_name: str) -> tuple[RunOutputs, dict]:
    """Every output of an ``explain`` folder into one subject-hierarchy folder on ``reference_node``'s geometry:
    the segmentation (segments + label map), uncertainty, entropy and mutual information, the Grad-CAM map of the
    last layer before the head for each class, and the concept masks. Returns the run and its heatmap nodes."""
    run_folder = Path(run_folder)
    summary = run_summary(run_folder)
    convention = label_convention(summary["inputs"]["convention"])
    with RunOutputs(scene, reference_node, folder_name) as run:
        run.add_segmentation(read_label_file(run_folder / "segmentation.nii.gz", convention, "segmentation")[0],
                             convention=convention)
        overlays = {name: run.add_heatmap(read_canonical(run_folder / f"{name}.nii.gz", name)[0], name, colour=colour)
                    for name, colour in HEATMAPS}
        gradcam = summary.get("gradcam", {})
        if gradcam.get("layers"):
            layer = [name for name in gradcam["layers"] if name != "head"][-1]
            for class_name in gradcam["classes"]:
                overlays[f"Grad-CAM {layer} {class_name}"] = add_gradcam_map(run, run_folder, layer, class_name)
        for path in sorted((run_folder / "concepts").glob("*.nii.gz")):
            run.add_labelmap(read_canonical(path, "concept mask")[0] > 0, f"concept {path.name[:-len('.nii.gz')]}")
    return run, overlays


def add_gradcam_map(run: RunOutputs, run_folder: Path, layer: str, class_name: str):
    """One Grad-CAM map of the run (``gradcam/<layer>_<class>.nii.gz``) as a heatmap in the run's folder."""
    key = CLASS_KEYS[CLASS_NAMES.index(class_name)]
    path = Path(run_folder) / "gradcam" / f"{layer}_{key}.nii.gz"
    if not path.is_file():
        raise ValueError(f"no Grad-CAM map for layer {layer}, class {class_name} in this run")
    return run.add_heatmap(read_canonical(path, "Grad-CAM map")[0], f"Grad-CAM {layer} {class_name}", colour="heat")
