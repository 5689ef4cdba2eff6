"""``explain``: every analysis of the paper on one case, written on the case's own grid, with figures, a JSON summary
and a self-contained HTML report.

Stages (:data:`contract.STAGES`, each timed): load → segmentation → test-time-dropout uncertainty (quick by default
on CPU) → Grad-CAM for every layer and tumour class → concept masks of the model's best detectors (from its saved
dissection) → feature visualisations of those filters → ``scene.mrb`` (by the Slicer module's logic, in a child
process) → report. The analyses are the modules of :mod:`app.stages`. Scores, the uncertainty–error AUROC and the
detectors' IoU on this case need ground truth and are reported when the case has it.

Every option and input is checked before any work (the case is read, the model, its layers and the dissection
loaded, the scene's prerequisites found). The run writes into a private folder beside ``OUT`` and publishes it as
``OUT`` only when every stage succeeded and every file reads back (:class:`outputs.OutputFolder`), so a failed or
interrupted run never leaves something that looks like a result, two runs never mix, and an input is never written
over.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..analyses.dissection import Dissection, load_shipped_dissection
from ..data.case import CaseError, CaseFiles
from ..data.domain import case_domain_check
from ..data.registration import coregistration_state
from ..errors import UsageError
from ..models.interface import analysed
from ..models.registry import SHIPPED_BUNDLES, load_ensemble, load_model
from ..models.space import prepare_case, space_summary, training_intensities, training_spacing
from ..models.volume import fold_members
from ..outputs import OutputFolder
from ..version import __version__
from . import stages
from .contract import (
    ATLAS,
    BRAIN_MASK,
    REGISTRATION,
    REPORT,
    STAGES,
    SUMMARY,
    SUMMARY_SCHEMA,
    Progress,
    registration_file,
)
from .figures import montage_slices
from .report import write_report
from .settings import ExplainConfig, resolve_device, resolve_quick

__all__ = ["STAGES", "ExplainConfig", "explain"]


def explain(source: str | Path | CaseFiles, out: str | Path, config: ExplainConfig = ExplainConfig(),
            progress: str | None = "text", network: "Network | None" = None) -> dict:
    """Run every analysis on one case and write OUT (see the module notes); returns the summary.
    ``progress``: ``text`` (people), ``json`` (one event per line, for programs) or None (silent). ``network``: the
    config's network, already loaded (:func:`load_network`; a cohort loads it once)."""
    progress = progress or None
    clock = Progress(progress)
    with clock.stage("load"):  # everything that can be refused, before any work or output
        run, folder = _load(source, out, config, progress is not None, network)
    with folder as work:
        run.work = work
        write_preprocessing(run.case.as_read, run.handed_on["preprocessing"], work)
        for analysis in stages.ANALYSES:
            with clock.stage(analysis.NAME):
                analysis.run(run)
        with clock.stage("scene"):
            stages.scene.run(run)
        with clock.stage("report"):
            run.summary["seconds"] = clock.seconds
            write_report(run.summary, work, work / REPORT, stages.report_figures())
        run.summary["seconds"] = clock.seconds
        (work / SUMMARY).write_text(json.dumps(run.summary, indent=2) + "\n")
    clock.finished(Path(out))
    return run.summary


@dataclass(frozen=True)
class Network:
    """What explain runs on, loaded and checked once: the network, its ensemble members (files or folds), the
    dissection whose thresholds make the concept masks, and the device."""

    model: object
    members: dict
    dissection: object
    device: object


def load_network(config: ExplainConfig) -> Network:
    """The config's network on its device, with its members, its layers checked and its dissection."""
    device = resolve_device(config.device)
    model = load_model(config.model, config.weights, device, config.trust_bundle, config.folds)
    members = dict(zip(config.ensemble_files(), load_ensemble(config.model, config.ensemble_files(), device,
                                                              config.trust_bundle))) if config.ensemble \
        else fold_members(model)
    check_choices(model, config.layers, config.classes)
    return Network(model, members, _dissection(model, config), device)


def _load(source, out, config: ExplainConfig, bars: bool, network: Network | None = None
          ) -> tuple["stages.Run", OutputFolder]:
    """The run's inputs, read and checked, and its output folder, checked (nothing is written yet)."""
    files = source if isinstance(source, CaseFiles) else None
    if str(source).endswith(".npz"):
        raise CaseError(f"{source}: explain needs the case's image files (a folder or the four files), not a "
                        "saved case: the scene and the report refer to them")
    inputs = [source] if files is None else [files.flair, files.t1, files.t1ce, files.t2, files.seg, files.tissue]
    model_folder = config.model if Path(config.model).is_dir() else None
    mask_file = config.brain_mask if Path(config.brain_mask).is_file() else None
    folder = OutputFolder(out, [*inputs, config.weights, config.dissection, model_folder, mask_file,
                                *config.ensemble_files()], config.overwrite, "explain")
    scene = stages.scene.wanted(config.scene)
    network = network or load_network(config)
    model, device = network.model, network.device
    case, steps = prepare_case(source, model, config.coregister, config.resample, config.atlas, config.brain_mask)
    run = stages.Run(case, model, config, network.dissection, Path(),
                     _summary_start(case, model, config, device, steps),
                     quick=resolve_quick(config.quick, device.type),
                     z=montage_slices(case, 1)[0], progress=bars, ensemble=network.members)
    run.handed_on["scene"] = scene
    run.handed_on["preprocessing"] = steps
    return run, folder


def check_choices(model, layers: str, classes: str) -> None:
    """``--layers`` names layers of this network (module paths for a described network) and ``--classes`` its
    outputs (a described network's by its own names), before any work."""
    network = analysed(model)
    for flag, value, check in (("--layers", layers, network.layers), ("--classes", classes, network.targets)):
        try:
            check(value)
        except ValueError as error:
            raise UsageError(f"{flag} {value}: {error}") from None


def _dissection(model, config: ExplainConfig):
    """The dissection whose thresholds make the concept masks: the one given, or the model's shipped one; a bundle
    folder has none unless one is given (``dissect --model FOLDER`` makes it)."""
    if analysed(model).whole_case and not config.dissection and config.model not in SHIPPED_BUNDLES:
        return None
    analysed(model, "network dissection")  # refused for a TorchScript network, saying why
    dissection = Dissection.load(config.dissection) if config.dissection else load_shipped_dissection(model)
    dissection.check_model(model)
    return dissection


def _summary_start(case, model, config: ExplainConfig, device, steps) -> dict:
    roles = ("flair", "t1", "t1ce", "t2", "seg", "tissue")
    return {
        "schema": SUMMARY_SCHEMA, "version": __version__, "case": case.case_id,
        "model": Path(config.model).name if Path(config.model).is_dir() else config.model,
        "config": asdict(config), "device": device_name(device), "versions": library_versions(),
        "ground_truth": case.labels is not None,
        **preprocessing_summary(case.as_read, steps, training_spacing(model), training_intensities(model)),
        "network_space": space_summary(case, model),
        "inputs": {"files": {role: str(getattr(case.files, role)) if getattr(case.files, role) else None
                             for role in roles},
                   "naming": case.files.naming, "convention": case.label_convention.name},
    }


def preprocessing_summary(as_read, steps, spacing: tuple[float, float, float] | None = None,
                          intensities: dict | None = None) -> dict:
    """What ``summary.json`` (and ``preprocess``'s ``preprocessing.json``) say of the preprocessing of a case as read:
    ``coregistration``, ``preprocessing`` (each step, why, seconds) and ``domain`` (the checks after it, with the
    voxel size the network was trained at, ``spacing``, and its training cases' ``intensities``
    (:func:`models.space.training_intensities`), when there are)."""
    registrations = as_read.registrations

    return {"coregistration": {"ran": registrations is not None, "state": coregistration_state(registrations),
                               "why": steps.coregistration,
                               "sequences": {sequence: registration.to_dict()
                                             for sequence, registration in (registrations or {}).items()}},
            "preprocessing": {**steps.to_dict(), "steps": steps.lines()},
            "domain": case_domain_check(as_read, steps, spacing, intensities)}


def write_preprocessing(case, steps, work: Path) -> list[Path]:
    """What the preprocessing found, beside the results: each applied co-registration's transform as
    ``registration/<sequence>_to_<reference>.tfm`` and the head's pose against the atlas as
    ``registration/flair_to_atlas.tfm`` (ITK's text format, which 3D Slicer and every ITK tool read), and the brain
    mask when it is not the scan's own or its rim was cut (``brain_mask.nii.gz``, on the case's grid)."""
    import SimpleITK as sitk

    folder = work / REGISTRATION
    transforms = {registration_file(sequence, found.reference): found.transform()
                  for sequence, found in (case.registrations or {}).items() if found.applied}
    if steps.atlas_aligned:
        transforms[registration_file("flair", ATLAS)] = steps.alignment.rigid()
    written = []
    for name, transform in transforms.items():
        folder.mkdir(parents=True, exist_ok=True)
        written.append(folder / name)
        sitk.WriteTransform(transform, str(written[-1]))
    if steps.brain_mask != "as read" or (steps.brain_edge is not None and steps.brain_edge.cut):
        written.append(case.grid.write(case.brain_mask.astype(np.uint8), work / BRAIN_MASK))
    return written


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
