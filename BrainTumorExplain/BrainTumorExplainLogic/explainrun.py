"""The module's Apply: ``explain`` on the four input nodes in a background process, and its outputs back onto the
reference (FLAIR) node.

The analyses run in a child Python (``PythonSlicer`` in desktop Slicer), the way SlicerMONAIAuto3DSeg runs its
models: torch never loads into Slicer's process, the GUI never waits, and Cancel ends the child. ``PythonSlicer`` is
a launcher (CTKAppLauncher) that starts the real interpreter as *its* child, so the run is started in a process group
of its own (POSIX) or a new process group without a console window (Windows), and ending it ends the whole tree: the
group is signalled on POSIX, ``taskkill /T`` ends the tree on Windows. Only then are its files deleted.

The inputs reach it as NRRD files written from the nodes by a storage node of our own (the nodes and their storage
are untouched), with the geometry the user sees (a linear parent transform applied). The results come back onto the
reference node's exact IJK→RAS, under its transform, and only if the reference is still in the scene with the
geometry the run was computed on. Nothing is added to the scene until the run has finished, and then inside a
:class:`RunOutputs` transaction — a failed or cancelled run leaves no node behind.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import slicer
import vtk

from .library import ensure_library_importable, library_folder
from .results import ReferenceGeometry, RunOutputs
from .volumes import world_ijk_to_ras

ensure_library_importable()
from BrainTumorExplainLib.app.contract import (  # noqa: E402
    BRAIN_MASK,
    CONCEPTS,
    GRADCAM,
    REGISTRATION,
    REVIEW,
    SEGMENTATION,
    STAGES,
    gradcam_file,
    gradcam_key,
    last_explained_layer,
    parse_event,
    read_summary,
    uncertainty_file,
)
from BrainTumorExplainLib.app.settings import ExplainConfig  # noqa: E402
from BrainTumorExplainLib.data.case import MODALITIES, read_canonical, read_label_file  # noqa: E402
from BrainTumorExplainLib.data.labels import label_convention  # noqa: E402
from BrainTumorExplainLib.data.registration import read_linear_transform  # noqa: E402

# node-name tokens per modality, checked in this order (t1ce before t1, so "t1ce" never reads as T1)
MODALITY_TOKENS: dict[str, tuple[str, ...]] = {
    "flair": ("flair", "t2f"), "t1ce": ("t1ce", "t1c", "t1gd", "t1gad"), "t2": ("t2", "t2w"), "t1": ("t1", "t1n"),
}
HEATMAPS = (("uncertainty", "uncertainty"), ("entropy", "entropy"), ("mutual_information", "entropy"))
# Windows process creation flags (subprocess only defines them on Windows)
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
END_GRACE_S = 10.0  # SIGTERM lets the run remove its private folder; then the tree is killed


def panel_config(**settings) -> ExplainConfig:
    """The config the panel runs: the library's defaults, the panel's settings, and no scene file (the module
    pushes the results into its own scene)."""
    return ExplainConfig(**{**settings, "scene": False})


_OPTION = re.compile(r"(?:\b(pass |use ))?(?<![\w-])(--[a-z][a-z0-9-]*)")  # an option, and the verb before it


def panel_wording(message: str, controls: dict[str, str]) -> str:
    """``message`` — the library's, which names command-line options — with the options the panel offers named as
    its controls. ``controls``: setting (an :class:`ExplainConfig` field) → the control's label. "pass
    --trust-bundle" reads "tick 'Trust this network's code'", "use --device cpu" "choose 'Device' cpu"; an option
    the panel does not offer stays as it is."""
    from BrainTumorExplainLib.app.settings import option_flags

    named = {flag: (label, ExplainConfig.__dataclass_fields__[name].type == "bool")
             for name, label in controls.items() for flag in option_flags(name)}

    def reword(match: re.Match) -> str:
        verb, flag = match.groups()
        if flag not in named:
            return match.group(0)
        label, switch = named[flag]
        verb = {"pass ": "tick " if switch else "set ", "use ": "choose "}.get(verb or "", "")
        return f"{verb}'{label}'"

    return _OPTION.sub(reword, message)


def runs_own_code(folder: str) -> bool:
    """Whether the user's network folder can hold code that runs only when trusted (a MONAI bundle: its config
    expressions, a TorchScript network); an nnU-Net folder is read without running any."""
    from BrainTumorExplainLib.data.bundle_metadata import is_bundle

    return bool(folder) and is_bundle(folder)


def network_channels(folder: str) -> dict[str, int]:
    """Modality → the input channel of the user's network (a MONAI bundle folder or an nnU-Net trained-model folder)
    that takes it (a modality the network does not read is absent), from the folder's metadata, without PyTorch;
    ``ValueError`` naming the file when the folder is not a usable network."""
    from BrainTumorExplainLib.data.bundle_metadata import (
        input_channels,
        is_bundle,
        is_nnunet_folder,
        nnunet_input_channels,
    )
    from BrainTumorExplainLib.errors import InputError

    if not is_bundle(folder) and not is_nnunet_folder(folder):
        raise ValueError(f"{folder}: neither a MONAI bundle folder (configs/metadata.json) nor an nnU-Net "
                         "trained-model folder (plans.json, dataset.json)")
    try:
        channels = nnunet_input_channels(folder) if is_nnunet_folder(folder) else input_channels(folder)
    except InputError as error:
        raise ValueError(str(error)) from None
    if len(set(channels)) != len(channels):
        raise ValueError(f"{folder}: the network's input channels name one sequence twice ({', '.join(channels)})")
    return {modality: channels.index(modality) for modality in MODALITIES if modality in channels}


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
    volumes (not label maps) with voxels, all on the FLAIR's grid where the user sees them (parent transforms
    applied; non-linear or shearing ones refused)."""
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
                world_ijk_to_ras(node), world_ijk_to_ras(flair), atol=1e-4):
            raise ValueError(f"{modality.upper()} {node.GetName()!r} is not on the FLAIR's grid: resample it onto "
                             f"{flair.GetName()!r} first (module Resample Image (BRAINS) or Crop Volume)")


@dataclass(frozen=True)
class RunStatus:
    stage: str  # the stage running now ("" before the first, "done" after a success)
    fraction: float  # finished stages / all stages
    finished: bool
    error: str | None  # the run's own one-line error, when it failed
    log: str  # everything it printed so far


# Slicer 5.6/5.8 run Python under the C locale, where text pipes decode as ASCII: the run speaks UTF-8, and a byte
# that is not is replaced rather than ending the reader
TEXT_PIPES = {"encoding": "utf-8", "errors": "replace"}


def child_environment() -> dict[str, str]:
    """The environment of a background run: Slicer's own, UTF-8 output, unbuffered, the library importable."""
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", PYTHONUTF8="1",
                PYTHONPATH=os.pathsep.join([str(library_folder()), os.environ.get("PYTHONPATH", "")]))


def process_options(platform: str = os.name) -> dict:
    """``subprocess.Popen`` options that make the run's whole process tree endable, and hide its console window
    on Windows (as ``slicer.util.launchConsoleProcess`` hides it), so that closing a console cannot kill it."""
    if platform == "nt":
        info = subprocess.STARTUPINFO() if hasattr(subprocess, "STARTUPINFO") else None
        if info is not None:
            info.dwFlags |= 1  # STARTF_USESHOWWINDOW
            info.wShowWindow = 0  # SW_HIDE
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW, "startupinfo": info}
    return {"start_new_session": True}  # its own session and process group: the launcher and python-real


class TreeEnd:
    """Ending ``process`` and every process it started without waiting for them: SIGTERM now (the run removes its
    private folder and lock on it), SIGKILL once ``grace_s`` (default :data:`END_GRACE_S`) has passed; poll
    :meth:`done` — from a GUI timer — until they are gone. Windows: ``taskkill /T /F`` ends the tree at once."""

    ZOMBIE_WAIT_S = 5.0  # after SIGKILL: processes that are only zombies no one reaps hold no CPU, memory or files

    def __init__(self, process: subprocess.Popen, grace_s: float | None = None) -> None:
        self.process = process
        self.deadline = time.monotonic() + (END_GRACE_S if grace_s is None else grace_s)
        self.killed_at: float | None = None
        if os.name == "nt":
            subprocess.run(["taskkill", "/PID", str(process.pid), "/T", "/F"], capture_output=True,
                           creationflags=CREATE_NO_WINDOW, timeout=30)
        else:
            _signal_group(process.pid, signal.SIGTERM)

    def done(self) -> bool:
        """Whether the process has ended and its group is gone; sends SIGKILL once the grace has passed."""
        now = time.monotonic()
        ended = self.process.poll() is not None
        if ended and (os.name == "nt" or not _group_alive(self.process.pid)):
            return True
        if self.killed_at is None and now >= self.deadline and os.name != "nt":
            _signal_group(self.process.pid, signal.SIGKILL)  # cannot be refused
            self.killed_at = now
        return ended and self.killed_at is not None and now - self.killed_at > self.ZOMBIE_WAIT_S


def end_process_tree(process: subprocess.Popen, grace_s: float | None = None) -> None:
    """End ``process`` and every process it started, and return when they are gone (:class:`TreeEnd`, waited for;
    ``subprocess.TimeoutExpired`` when the process outlives even SIGKILL by 30 s)."""
    ending = TreeEnd(process, grace_s)
    limit = ending.deadline + 30.0 + TreeEnd.ZOMBIE_WAIT_S
    while not ending.done():
        if time.monotonic() > limit:
            raise subprocess.TimeoutExpired(process.args, 30.0)
        time.sleep(0.05)


def _signal_group(group: int, number: int) -> None:
    try:
        os.killpg(group, number)
    except ProcessLookupError:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ExplainProcess:
    """One ``explain`` run in a child process on the given nodes; poll it from a timer, cancel it at any time.

    ``python``: the interpreter that runs the library (desktop Slicer: ``PythonSlicer``)."""

    def __init__(self, nodes: dict[str, object], settings: ExplainConfig, python: str | None = None) -> None:
        check_input_nodes(nodes)
        self.settings = settings
        self.reference = nodes["flair"]
        self.geometry = ReferenceGeometry(self.reference)
        self.folder = Path(tempfile.mkdtemp(prefix="BrainTumorExplain-"))
        self.out = self.folder / "out"
        self._events: list[dict] = []  # the run's progress events (its stdout, one JSON object a line)
        self._log: list[str] = []  # everything else it says (its stderr: progress bars, warnings, the error line)
        self.process: subprocess.Popen | None = None
        self._ending: TreeEnd | None = None  # a cancel under way (request_cancel)
        try:
            case = self.folder / "case"
            case.mkdir()
            for modality, node in nodes.items():
                write_node(node, case / f"input_{modality}.nrrd")
            self.process = subprocess.Popen(
                [python or sys.executable, "-m", "BrainTumorExplainLib", "explain", str(case), "--out", str(self.out),
                 *settings.arguments(), "--progress", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=child_environment(), **TEXT_PIPES, **process_options())
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        atexit.register(self.cancel)  # Slicer quits: no run outlives it
        self._readers = [threading.Thread(target=self._read_events, daemon=True),
                         threading.Thread(target=self._read_log, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_events(self) -> None:
        for line in self.process.stdout:
            event = parse_event(line)
            if event is not None:
                self._events.append(event)
            elif line.strip():
                self._log.append(line.rstrip("\n"))

    def _read_log(self) -> None:
        for line in self.process.stderr:  # tqdm's carriage-return updates arrive as parts of lines
            self._log.extend(part for part in line.rstrip("\n").split("\r") if part.strip())

    def poll(self) -> RunStatus:
        finished = self.process.poll() is not None
        if finished:
            for reader in self._readers:
                reader.join(timeout=5)
        events, lines = list(self._events), list(self._log)
        started = [event["stage"] for event in events if event["event"] == "stage_started"]
        ended = {event["stage"] for event in events if event["event"] == "stage_finished"}
        error = None
        if finished and self.process.returncode != 0:
            errors = [line for line in lines if line.startswith("error:")]
            error = errors[-1][len("error:"):].strip() if errors else (lines[-1] if lines else "the run failed")
        stage = "done" if finished and error is None else (started[-1] if started else "")
        return RunStatus(stage, len(ended & set(STAGES)) / len(STAGES), finished, error, "\n".join(lines))

    def wait(self, timeout: float | None = None, idle: Callable[[], None] | None = None) -> RunStatus:
        """Wait for the end of the run; ``idle`` is called between polls (desktop: ``slicer.app.processEvents``,
        so the GUI stays alive)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.process.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the analysis did not finish within {timeout} s")
            if idle is not None:
                idle()
            time.sleep(0.1)
        return self.poll()

    def cancel(self) -> None:
        """End the run's whole process tree (whatever it is doing), then delete everything it wrote; returns when
        that is done (at exit; the panel uses :meth:`request_cancel`)."""
        if self.process is not None and self.process.poll() is None:
            end_process_tree(self.process)
        self.cleanup()

    def request_cancel(self) -> None:
        """Start ending the run's whole process tree and return at once; :meth:`cancelled`, polled, finishes."""
        if self._ending is None and self.process is not None and self.process.poll() is None:
            self._ending = TreeEnd(self.process)

    def cancelled(self) -> bool:
        """After :meth:`request_cancel`: whether the tree has ended; then its files are deleted too."""
        if self._ending is not None and not self._ending.done():
            return False
        self.cleanup()
        return True

    def cleanup(self) -> None:
        """Delete the run's files; a run still going is ended first (it would go on writing into them)."""
        if self.process is not None and self.process.poll() is None:
            end_process_tree(self.process)
        atexit.unregister(self.cancel)
        shutil.rmtree(self.folder, ignore_errors=True)


class TorchProbe:
    """Which PyTorch the analysis process would see, asked in a child process so that Slicer's own process never
    imports torch and never waits: ``poll()`` from a timer until it returns a result."""

    SCRIPT = ("import importlib.util, sys\n"
              "if importlib.util.find_spec('torch') is None: print(''); sys.exit()\n"
              "import torch; print(torch.__version__, int(torch.cuda.is_available()))")

    def __init__(self, python: str | None = None, timeout_s: float = 120.0) -> None:
        self._started = time.monotonic()
        self.timeout_s = timeout_s
        self.process = subprocess.Popen([python or sys.executable, "-c", self.SCRIPT], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=child_environment(), **TEXT_PIPES,
                                        **process_options())

    def poll(self) -> tuple[str, bool] | None:
        """None while asking; then (torch version or "" when not installed, CUDA available). Raises
        ``TimeoutError`` when the child takes longer than ``timeout_s`` (it is ended)."""
        if self.process.poll() is None:
            if time.monotonic() - self._started > self.timeout_s:
                end_process_tree(self.process, grace_s=1.0)
                raise TimeoutError(f"PyTorch did not answer within {self.timeout_s:.0f} s")
            return None
        words = self.process.stdout.read().split()
        return (words[0], words[1] == "1") if len(words) == 2 else ("", False)

    def cancel(self) -> None:
        if self.process.poll() is None:
            end_process_tree(self.process, grace_s=1.0)


def write_node(node, path: Path) -> None:
    """The node's voxels to ``path`` with the geometry the user sees (through its linear parent transform), via a
    temporary node that shares the voxels and a storage node of our own: the input node itself is untouched."""
    world = world_ijk_to_ras(node)
    view = slicer.vtkMRMLScalarVolumeNode()
    view.SetName(node.GetName())
    view.SetAndObserveImageData(node.GetImageData())
    ijk_to_ras = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            ijk_to_ras.SetElement(row, column, world[row, column])
    view.SetIJKToRASMatrix(ijk_to_ras)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(view):
        raise ValueError(f"could not write {node.GetName()!r} for the analysis ({path})")


def add_run_outputs(scene, run_folder: str | Path, reference_node, folder_name: str,
                    expected: ReferenceGeometry | None = None, summary: dict | None = None
                    ) -> tuple[RunOutputs, dict]:
    """Every output of an ``explain`` folder into one subject-hierarchy folder on ``reference_node``'s geometry:
    the segmentation (segments + label map), uncertainty, entropy and mutual information (named with their kind:
    test-time dropout, flips or an ensemble), the Grad-CAM map of the last layer before the head for each class,
    the concept masks, the brain mask when the preprocessing made one, and each transform it found
    (co-registrations, the atlas pose) as a transform node, and the review regions as a segmentation and a point
    list (:meth:`RunOutputs.add_review`; ``run.review_points``). ``expected``: the reference's geometry when the run
    started — refused if the node changed since. ``summary``: the run's (default: its summary.json). Returns the
    run and its heatmap nodes."""
    run_folder = Path(run_folder)
    summary = summary or read_summary(run_folder)
    convention = label_convention(summary["inputs"]["convention"])
    with RunOutputs(scene, reference_node, folder_name, expected) as run:
        run.add_segmentation(read_label_file(run_folder / SEGMENTATION, convention, "segmentation")[0],
                             convention=convention)
        source = summary.get("uncertainty", {}).get("source")  # which kind of uncertainty: in every map's name
        overlays = {name: run.add_heatmap(read_canonical(run_folder / uncertainty_file(name), name)[0],
                                          f"{name} ({source})" if source else name, colour=colour)
                    for name, colour in HEATMAPS}
        gradcam = summary.get("gradcam", {})
        if gradcam.get("layers"):
            layer = last_explained_layer(gradcam["layers"])
            for class_name in gradcam["classes"]:
                overlays[f"Grad-CAM {layer} {class_name}"] = add_gradcam_map(run, run_folder, layer, class_name)
        for path in sorted((run_folder / CONCEPTS).glob("*.nii.gz")):
            run.add_labelmap(read_canonical(path, "concept mask")[0] > 0, f"concept {path.name[:-len('.nii.gz')]}")
        if (run_folder / BRAIN_MASK).is_file():  # the brain the network saw, when it is not the scan's own
            preprocessing = summary.get("preprocessing", {})
            source = preprocessing.get("brain_mask", {}).get("source", "")
            if (preprocessing.get("brain_edge") or {}).get("cut"):
                source += ", its partial-volume rim cut"
            run.add_labelmap(read_canonical(run_folder / BRAIN_MASK, "brain mask")[0] > 0, f"brain mask ({source})")
        if "review" in summary and (run_folder / REVIEW).is_file():
            run.add_review(read_canonical(run_folder / REVIEW, "review regions")[0], summary["review"]["regions"])
        for path in sorted((run_folder / REGISTRATION).glob("*.tfm")):  # co-registrations, to inspect and apply
            run.add_registration(read_linear_transform(path), f"registration {path.stem.replace('_to_', ' → ')}")
    return run, overlays


def add_gradcam_map(run: RunOutputs, run_folder: Path, layer: str, class_name: str):
    """One Grad-CAM map of the run (``gradcam/<layer>_<class>.nii.gz``) as a heatmap in the run's folder."""
    path = Path(run_folder) / GRADCAM / gradcam_file(layer, gradcam_key(class_name))
    if not path.is_file():
        raise ValueError(f"no Grad-CAM map for layer {layer}, class {class_name} in this run")
    return run.add_heatmap(read_canonical(path, "Grad-CAM map")[0], f"Grad-CAM {layer} {class_name}", colour="heat")
