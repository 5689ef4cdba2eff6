"""``explain``: every analysis of the paper on one case, written on the case's own grid, with figures, a JSON summary
and a self-contained HTML report.

Stages (each timed): segmentation → test-time-dropout uncertainty (quick by default on CPU) → Grad-CAM for every
layer and tumour class → concept masks of the model's best detectors (from its saved dissection) → feature
visualisations of those filters → ``scene.mrb`` (by the Slicer module's logic, in a child process) → report. Scores, the uncertainty–error AUROC and the detectors' IoU on
this case need ground truth and are reported when the case has it.

Every option and input is checked before any work (the case is read, the model, its layers and the dissection loaded).
The run writes into a private folder beside ``OUT`` and publishes it as ``OUT`` only when every stage succeeded and
every file reads back (:class:`outputs.OutputFolder`), so a failed or interrupted run never leaves something that
looks like a result, two runs never mix, and an input is never written over.
"""

from __future__ import annotations

import json
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np

from . import __version__
from .case import CaseError, CaseFiles, load_case
from .errors import UsageError
from .labels import CLASS_KEYS, CLASS_NAMES
from .outputs import OutputFolder
from .settings import ExplainConfig, resolve_device

# explain's stages in order; it prints "[stage] …" at each start and "[stage] 12.3 s" at each end (the Slicer
# module's progress bar counts them)
STAGES = ("load", "segmentation", "uncertainty", "gradcam", "concepts", "featviz", "scene", "report")


class Timings:
    """Wall time per stage, printed as it goes."""

    def __init__(self, progress: bool) -> None:
        self.seconds: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}: add it to STAGES")
        if self.progress:
            print(f"[{name}] …", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        if self.progress:
            print(f"[{name}] {self.seconds[name]:.1f} s", flush=True)


def explain(source: str | Path | CaseFiles, out: str | Path, config: ExplainConfig = ExplainConfig(),
            progress: bool = True) -> dict:
    """Run every analysis on one case and write OUT (see the module notes); returns the summary."""
    from .activations import resolve_layers
    from .baseline import threshold_segmentation
    from .dissection import (CONCEPTS, Dissection, concept_masks, filter_concept_masks, ground_truth_of,
                             load_shipped_dissection)
    from .featviz import (FeatvizConfig, Regularisers, load_template, shipped_template_path,
                          visualise_filters)
    from .figures import (case_montage, concept_montage, error_by_uncertainty, featviz_montage, gradcam_montage,
                          localisation_curves, montage_slices, uncertainty_figure)
    from .gradcam import gradcam_volume, localisation, localisation_as_dict
    from .inference import segment_case
    from .metrics import score_segmentation, scores_as_dict
    from .models import load_pretrained, load_weights
    from .report import write_report
    from .uncertainty import uncertainty_error_analysis, uncertainty_volume

    timings = Timings(progress)
    with timings.stage("load"):  # everything that can be refused, before any work or output
        files = source if isinstance(source, CaseFiles) else None
        if str(source).endswith(".npz"):
            raise CaseError(f"{source}: explain needs the case's image files (a folder or the four files), not a "
                            "saved case: the scene and the report refer to them")
        inputs = [source] if files is None else [files.flair, files.t1, files.t1ce, files.t2, files.seg, files.tissue]
        folder = OutputFolder(out, [*inputs, config.weights, config.dissection], config.overwrite, "explain")
        device = resolve_device(config.device)
        case = load_case(source)
        model = (load_weights(config.weights, architecture=config.model, device=device) if config.weights
                 else load_pretrained(config.model, device=device))
        try:
            resolve_layers(model, config.layers)
        except ValueError as error:
            raise UsageError(f"--layers {config.layers}: {error}") from None
        dissection = Dissection.load(config.dissection) if config.dissection else load_shipped_dissection(model)
        dissection.check_model(model)
    quick = config.quick if config.quick is not None else device.type == "cpu"
    summary: dict = {
        "version": __version__, "case": case.case_id, "model": config.model, "config": asdict(config),
        "device": device_name(device), "versions": library_versions(), "ground_truth": case.labels is not None,
        "inputs": {"files": {role: str(path) if path else None for role, path in
                             (("flair", case.files.flair), ("t1", case.files.t1), ("t1ce", case.files.t1ce),
                              ("t2", case.files.t2), ("seg", case.files.seg), ("tissue", case.files.tissue))},
                   "naming": case.files.naming, "convention": case.label_convention.name},
    }
    with folder as work:
        figures = work / "figures"
        z = montage_slices(case, 1)[0]
        with timings.stage("segmentation"):
            labels = segment_case(model, case)
            case.write_labels(labels, work / "segmentation.nii.gz")
            case_montage(case, figures / "segmentation.png", predicted=labels)
            if case.labels is not None:
                summary["scores"] = scores_as_dict(score_segmentation(labels, case.labels, case.spacing))
                summary["baseline_scores"] = scores_as_dict(  # what a non-learned threshold gets, for scale
                    score_segmentation(threshold_segmentation(case), case.labels, case.spacing))
        with timings.stage("uncertainty"):
            volume = uncertainty_volume(model, case, passes=config.passes, quick=quick, seed=config.seed,
                                        progress=progress)
            for name, array in volume.maps().items():
                case.grid.write(array, work / f"{name}.nii.gz")
            uncertainty_figure(case, volume.labels, volume.variance, figures / "uncertainty.png",
                               title=f"{case.case_id} · {config.model}: ground truth | prediction | uncertainty")
            used = volume.passes[volume.passes > 0]
            summary["uncertainty"] = {"mode": "quick" if quick else f"T={config.passes}", "seed": config.seed,
                                      "mean_passes": round(float(used.mean()), 1)}
            if case.labels is not None:
                analysis = uncertainty_error_analysis(volume, case)
                summary["uncertainty"]["error_analysis"] = analysis
                error_by_uncertainty(analysis, figures / "error_by_uncertainty.png")
            del volume
        with timings.stage("gradcam"):
            cams = gradcam_volume(model, case, config.layers, config.classes, progress=progress)
            for (layer, class_index), cam in cams.maps.items():
                case.grid.write(cam, work / "gradcam" / f"{layer}_{CLASS_KEYS[class_index]}.nii.gz")
            table = localisation(cams, case)
            summary["gradcam"] = {"target": cams.target, "layers": cams.layers,
                                  "classes": [CLASS_NAMES[c] for c in cams.classes],
                                  "localisation": localisation_as_dict(table)}
            gradcam_montage(case, z, cams.slice_maps(z), cams.classes, figures / "gradcam.png",
                            title=f"{case.case_id} · {config.model}: Grad-CAM per layer (rows: class)")
            localisation_curves({config.model: table}, figures / "topdown.png")
            del cams
        with timings.stage("concepts"):
            best = dissection.best_detectors()
            picks = [(row["layer"], row["filter"]) for row in best.values()]
            masks = filter_concept_masks(model, case, dissection, picks) if picks else {}
            detectors = []
            carried = ground_truth_of(case)[1]
            have = [concept for concept in best if CONCEPTS[concept][1] in carried]
            truth = dict(zip(have, concept_masks(case, have))) if have else {}
            for concept, row in best.items():
                mask = masks[(row["layer"], row["filter"])]
                case.grid.write(mask.astype(np.uint8),
                                work / "concepts" / f"{row['layer']}_{row['filter']}_{concept}.nii.gz")
                entry = {**row, "dataset_iou": round(row["iou"], 4)}
                del entry["iou"]
                if concept in truth:
                    union = int((mask | truth[concept]).sum())
                    entry["case_iou"] = round(int((mask & truth[concept]).sum()) / union, 4) if union else 0.0
                detectors.append(entry)
            summary["concepts"] = {"dissection_cases": len(dissection.cases), "quantile": dissection.quantile,
                                   "detectors": detectors}
            if detectors:
                panels = [(f"{d['layer']} #{d['filter']}: {d['concept']}", masks[(d["layer"], d["filter"])][z],
                           truth[d["concept"]][z] if d["concept"] in truth else None) for d in detectors]
                concept_montage(case, z, panels,
                                figures / "concepts.png",
                                title=f"{case.case_id} z={z} · {config.model}: best detector per concept")
        with timings.stage("featviz"):
            if picks:
                featviz_config = FeatvizConfig(steps=config.featviz_steps, size=config.featviz_size, seed=config.seed)
                template = load_template(shipped_template_path(), config.featviz_size)
                runs = {"unregularised": visualise_filters(model, picks, Regularisers.none(), featviz_config),
                        "regularised": visualise_filters(model, picks, Regularisers(), featviz_config, template)}
                featviz_montage(runs, work / "featviz" / "detectors.png",
                                title=f"{config.model}: pre-images of the best detectors (left unregularised, "
                                      f"right regularised)")
                summary["featviz"] = {label: run.to_dict() for label, run in runs.items()}
        summary_path = work / "summary.json"
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")  # the scene builder reads it
        with timings.stage("scene"):
            summary["scene"] = _scene_bundle(work) if config.scene else "not written (--no-scene)"
        summary["seconds"] = timings.seconds
        with timings.stage("report"):
            write_report(summary, work, work / "report.html")
        summary["seconds"] = timings.seconds
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


MODULE_FOLDER = Path(__file__).resolve().parents[1] / "BrainTumorExplain"  # the Slicer module, in a checkout


def _scene_bundle(run_folder: Path) -> str:
    """``scene.mrb`` built by the Slicer module's MRML logic in a child process (the library never imports
    Slicer). Without slicer-core, or outside a checkout, the run goes on and says why there is no scene."""
    import warnings

    reason = scene_bundle_unavailable()
    if reason is None:
        done = run_scene_bundle(run_folder)
        if done.returncode == 0:
            return "scene.mrb"
        (run_folder / "scene.mrb").unlink(missing_ok=True)
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ValueError(f"building scene.mrb failed: {last}")
    warnings.warn(reason)
    return reason


def scene_bundle_unavailable() -> str | None:
    """Why no scene can be built here, or None when slicer-core and the module are both present."""
    import importlib.util

    if importlib.util.find_spec("slicer") is None:
        return "not written: slicer-core is not installed (pip install slicer-core)"
    if not (MODULE_FOLDER / "BrainTumorExplainLogic" / "bundle.py").is_file():
        return f"not written: the Slicer module is not beside the library ({MODULE_FOLDER})"
    return None


def run_scene_bundle(run_folder: Path, *arguments: str):
    """``python -m BrainTumorExplainLogic.bundle RUN_FOLDER [arguments]`` in a child process; its CompletedProcess."""
    import os
    import subprocess
    import sys

    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(MODULE_FOLDER), str(MODULE_FOLDER.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "BrainTumorExplainLogic.bundle", str(run_folder), *arguments],
                          env=environment, capture_output=True, text=True)


def device_name(device) -> str:
    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def library_versions() -> dict[str, str]:
    import scipy
    import torch

    try:
        import SimpleITK
        simpleitk = SimpleITK.Version_VersionString()
    except ImportError:  # a saved case (.npz) needs no SimpleITK
        simpleitk = "not installed"
    return {"BrainTumorExplainLib": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "SimpleITK": simpleitk}
