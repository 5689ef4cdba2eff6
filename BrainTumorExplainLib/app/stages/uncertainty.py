"""Test-time-dropout uncertainty: the maps on the case's own grid, their summary, the figures (paper §5)."""

from __future__ import annotations

from pathlib import Path

from ..contract import figure_file, uncertainty_file

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
    analysis, with ``model``'s deterministic control beside it (``error_analysis.control``; ``probabilities``: its
    deterministic prediction, when already made)."""
    from ...analyses.uncertainty import deterministic_control, uncertainty_error_analysis

    used = volume.passes[volume.passes > 0]
    summary = {"method": METHODS[volume.method], "source": SOURCES[volume.method], "mode": mode, "seed": seed,
               "passes": {"min": int(used.min()), "mean": round(float(used.mean()), 1), "max": int(used.max())}}
    if case.labels is not None:
        summary["error_analysis"] = uncertainty_error_analysis(volume, case)
        if model is not None:
            summary["error_analysis"]["control"] = deterministic_control(model, case, probabilities=probabilities)
    return summary


def draw(volume, case, summary: dict, uncertainty_png: Path, errors_png: Path, title: str) -> None:
    from ..figures import error_by_uncertainty, uncertainty_figure

    uncertainty_figure(case, volume.labels, volume.variance, uncertainty_png, title=title)
    if "error_analysis" in summary:
        error_by_uncertainty(summary["error_analysis"], errors_png)


def compute(run):
    """The ensemble's disagreement when members are given; else the paper's test-time dropout for its 2D networks;
    for a described 3D network, dropout when it has some (8 passes when quick), else the 8 mirrorings."""
    from ...analyses.uncertainty import ensemble_uncertainty, uncertainty_volume
    from ...analyses.volume import volume_uncertainty
    from ...models.volume import DescribedNetwork

    config = run.config
    if run.ensemble:
        return ensemble_uncertainty(list(run.ensemble.values()), run.case, progress=run.progress)
    if isinstance(run.model, DescribedNetwork):
        return volume_uncertainty(run.model, run.case, passes=8 if run.quick else config.passes, seed=config.seed,
                                  progress=run.progress)
    return uncertainty_volume(run.model, run.case, passes=config.passes, quick=run.quick, seed=config.seed,
                              progress=run.progress)


def run(run) -> None:
    config = run.config
    volume = compute(run)
    write_maps(volume, run.case, run.work, run.config.full_resolution)
    summary = summarise(volume, run.case, mode_of(volume, run.quick, config.passes), config.seed, run.model,
                        run.handed_on.get("probabilities"))
    run.handed_on["uncertainty"] = volume  # for the review
    if run.ensemble:
        summary["members"] = list(run.ensemble)  # weights files, or an nnU-Net folder's folds
    draw(volume, run.case, summary, run.figure("uncertainty"), run.figure("error_by_uncertainty"),
         run.title("ground truth | prediction | uncertainty"))
    run.summary["uncertainty"] = summary


def mode_of(volume, quick: bool, passes: int) -> str:
    """How the spread was sampled, as the summary says it: the flips, the members, quick dropout, or T passes
    (how many: ``passes`` of the summary)."""
    return volume.method if volume.method in ("flips", "ensemble") else "quick" if quick else f"T={passes}"
