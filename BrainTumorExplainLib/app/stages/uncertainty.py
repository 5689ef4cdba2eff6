"""Test-time-dropout uncertainty: the maps on the case's own grid, their summary, the figures (paper §5)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ...analyses.uncertainty import (
    brain_pearson,
    deterministic_control,
    ensemble_uncertainty,
    uncertainty_error_analysis,
    uncertainty_volume,
)
from ...version import __version__
from ..contract import SEGMENTATION, SUMMARY, figure_file, uncertainty_file
from ..figures import error_by_uncertainty, uncertainty_figure

NAME = "uncertainty"
METHODS = {"dropout": "test-time dropout (epistemic)",
           "flips": "test-time augmentation: the mirrorings (no dropout in the network)",
           "ensemble": "ensemble: the disagreement of several weight files of the network (an nnU-Net folder's "
                        "folds)"}
SOURCES = {"dropout": "test-time dropout", "flips": "test-time flips", "ensemble": "ensemble"}  # short, for map names
FIGURES = (
    (figure_file("uncertainty"), "Uncertainty", "Red where the samples disagree — test-time dropout passes, flips "
     "or ensemble members (the summary's uncertainty method says which); "
     "misclassified regions should be red."),
    (figure_file("error_by_uncertainty"), "Is the uncertainty where the errors are?", "Error rate of the prediction "
     "in ten equal bins of each uncertainty map, low to high."),
)


def write_maps(volume, case, folder: Path, full_resolution: bool = False) -> list[Path]:
    """``uncertainty``, ``entropy`` and ``mutual_information`` volumes into ``folder`` (the ``uncertainty`` verb
    writes them too): 8-bit levels with each map's own scale, float32 with ``full_resolution``."""
    return [case.grid.write(array, Path(folder) / uncertainty_file(name), quantised=not full_resolution)
            for name, array in volume.maps().items()]


def summarise(volume, case, mode: str, seed: int, model=None, probabilities=None) -> dict:
    """Method (test-time dropout, flips or an ensemble) and its short name (``source``, what the Slicer module names
    the maps by), mode, seed, passes (or members) per slice, and — with ground truth — the uncertainty-error
    analysis and the mean prediction's calibration, with ``model``'s deterministic control beside it
    (``error_analysis.control``, scored on its own errors and on the mean prediction's; ``probabilities``: its
    deterministic prediction, when already made)."""
    used = volume.passes[volume.passes > 0]
    summary = {"method": METHODS[volume.method], "source": SOURCES[volume.method], "mode": mode, "seed": seed,
               "passes": {"min": int(used.min()), "mean": round(float(used.mean()), 1), "max": int(used.max())}}
    if case.labels is not None:
        summary["error_analysis"] = uncertainty_error_analysis(volume, case, model=model)
        if model is not None:
            summary["error_analysis"]["control"] = deterministic_control(model, case, probabilities=probabilities,
                                                                         sampled_labels=volume.labels)
    return summary


def draw(volume, case, summary: dict, uncertainty_png: Path, errors_png: Path, title: str) -> None:
    uncertainty_figure(case, volume.labels, volume.variance, uncertainty_png, title=title)
    if "error_analysis" in summary:
        error_by_uncertainty(summary["error_analysis"], errors_png)


def compute(model, case, passes: int, quick: bool, seed: int, ensemble: dict | None = None, progress: bool = False,
            slices_per_batch: int | None = None, passes_per_forward: int | None = None):
    """The ``explain`` stage and the ``uncertainty`` verb both call this: the ensemble's disagreement when members
    (weights file → network) are given; else test-time dropout when the network has some (``passes``, or quick —
    :func:`analyses.uncertainty.uncertainty_volume` says how for each kind of network), else its mirrorings."""
    if ensemble:
        return ensemble_uncertainty(list(ensemble.values()), case, progress=progress)
    return uncertainty_volume(model, case, passes=passes, quick=quick, seed=seed, slices_per_batch=slices_per_batch,
                              passes_per_forward=passes_per_forward, progress=progress)


def run(run) -> None:
    config = run.config
    volume = compute(run.model, run.case, config.passes, run.quick, config.seed, run.ensemble, run.progress)
    write_maps(volume, run.case, run.work, run.config.full_resolution)
    summary = summarise(volume, run.case, mode_of(volume, run.quick, config.passes), config.seed, run.model,
                        run.handed_on.get("probabilities"))
    run.handed_on["uncertainty"] = volume  # for the review
    if run.ensemble:
        summary["members"] = list(run.ensemble)  # weights files, or an nnU-Net folder's folds
    draw(volume, run.case, summary, run.figure("uncertainty"), run.figure("error_by_uncertainty"),
         run.title("ground truth | prediction | uncertainty"))
    run.summary["uncertainty"] = summary


def job(model, case, work: Path, shown_as: Path, *, model_name: str, passes: int, quick: bool, seed: int,
        members: dict | None = None, agreement: bool = False, full_resolution: bool = False,
        slices_per_batch: int | None = None, passes_per_forward: int | None = None) -> dict:
    """The ``uncertainty`` verb: :func:`compute`, then the labels of the mean prediction, the maps, the figures and
    ``summary.json`` into ``work`` (published as ``shown_as``); with ``agreement`` (when quick), the full ``passes``
    too and the Pearson r of the two runs' maps in the brain. ``members``: weights file → network, an ensemble."""

    def timed(quick: bool):
        start = time.perf_counter()
        result = compute(model, case, passes, quick, seed, members, progress=True, slices_per_batch=slices_per_batch,
                         passes_per_forward=passes_per_forward)
        return result, time.perf_counter() - start

    volume, seconds = timed(quick)
    mode = mode_of(volume, quick, passes)
    summary = {"version": __version__, "case": case.case_id, "model": model_name,
               **summarise(volume, case, mode, seed, model), "seconds": round(seconds, 2)}
    if members:
        summary["members"] = list(members)
    case.write_labels(volume.labels, work / SEGMENTATION)
    write_maps(volume, case, work, full_resolution)
    print(f"{mode}: {summary['passes']['mean']} passes per slice on average, {seconds:.1f} s")
    if quick and agreement and not members:
        full, full_seconds = timed(False)
        summary["agreement_with_full"] = {"passes": passes, "seconds": round(full_seconds, 2), "pearson_r": {
            name: round(brain_pearson(array, full.maps()[name], case.brain_mask), 4)
            for name, array in volume.maps().items()}}
        print(f"agreement with T={passes} ({full_seconds:.1f} s), Pearson r in the brain: "
              + ", ".join(f"{k} {v:.4f}" for k, v in summary["agreement_with_full"]["pearson_r"].items()))
    draw(volume, case, summary, work / "uncertainty.png", work / "error_by_uncertainty.png",
         f"{case.case_id} · {model_name} · {summary['source']} ({mode}): ground truth | prediction | uncertainty")
    if "error_analysis" in summary:
        analysis = summary["error_analysis"]
        print(f"AUROC for misclassified brain voxels: {auroc_text(analysis)} (error rate "
              f"{analysis['error_rate']:.4f}); {control_text(analysis)}")
    (work / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {shown_as}")
    return summary


def auroc_text(analysis: dict) -> str:
    """Each uncertainty map's AUROC for misclassified voxels, as text (``summary.uncertainty.error_analysis``)."""
    return ", ".join(f"{name} {entry['auroc']:.3f}" for name, entry in analysis["maps"].items())


def control_text(analysis: dict) -> str:
    """The deterministic control beside the uncertainty AUROCs (analyses.uncertainty.deterministic_control), on the
    mean prediction's errors where it was scored on them, and the two predictions' calibration."""
    control = analysis.get("control")
    if not control:
        return "no control"
    text = f"control ({control['map']}) {control['auroc']:.3f}"
    if "same_errors" in control:
        text += f", {control['same_errors']['auroc']:.3f} on the sampled prediction's errors"
    if "calibration" in analysis and "calibration" in control:
        text += (f"; calibration error (ECE) {analysis['calibration']['ece']:.4f} sampled, "
                 f"{control['calibration']['ece']:.4f} one pass")
    return text


def mode_of(volume, quick: bool, passes: int) -> str:
    """How the spread was sampled, as the summary says it: the flips, the members, quick dropout, or T passes
    (how many: ``passes`` of the summary)."""
    return volume.method if volume.method in ("flips", "ensemble") else "quick" if quick else f"T={passes}"
