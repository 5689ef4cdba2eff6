"""Feature visualisation of the best detectors (activation maximisation, §4), without and with regularisers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..contract import FEATVIZ

NAME = "featviz"
FIGURES = ((f"{FEATVIZ}/detectors.png", "What those filters respond to (activation maximisation)", "Pre-images that "
            "maximise each detector, without and with regularisers."),)


def write_visualisations(runs: dict, folder: Path, name: str, title: str, about: dict) -> list[Path]:
    """``<name>.npz`` (the pre-images and their targets), ``<name>.json`` (activations, settings) and ``<name>.png``
    in ``folder`` (the ``featviz`` verb writes them too)."""
    from ..figures import featviz_montage

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    targets = next(iter(runs.values())).targets
    np.savez_compressed(folder / f"{name}.npz", targets=np.array([f"{layer}:{k}" for layer, k in targets]),
                        **{f"{label}_images": run.images for label, run in runs.items()})
    (folder / f"{name}.json").write_text(json.dumps(
        {**about, **{label: run.to_dict() for label, run in runs.items()}}, indent=2) + "\n")
    return [folder / f"{name}.npz", folder / f"{name}.json", featviz_montage(runs, folder / f"{name}.png", title=title)]


def visualise(model, targets: list, config, regularisers, template, progress: bool = False) -> dict:
    """The two runs every figure compares: unregularised, and with ``regularisers`` (and the style template)."""
    from ...analyses.featviz import Regularisers, visualise_filters

    return {"unregularised": visualise_filters(model, targets, Regularisers.none(), config, progress=progress),
            "regularised": visualise_filters(model, targets, regularisers, config, template, progress=progress)}


def run(run) -> None:
    from ...analyses.featviz import (
        FeatvizConfig,
        Regularisers,
        load_template,
        shipped_template_path,
        spatial_dims,
        volume_template,
    )

    picks = run.handed_on.get("detectors")
    if not picks:
        run.summary["featviz"] = {"not_computed": "no concept detectors to visualise"}
        return
    volume = spatial_dims(run.model) == 3
    size = run.config.featviz_size_3d if volume else run.config.featviz_size
    config = FeatvizConfig(steps=run.config.featviz_steps, size=size, seed=run.config.seed)
    if volume:  # no dataset mean ships with a user's network: this case's own inputs stand in for it
        template, source = volume_template([run.case], run.model, size), "this case (a template of one)"
    else:
        template, source = load_template(shipped_template_path(), size), "the shipped phantom template"
    runs = visualise(run.model, picks, config, Regularisers(), template)
    write_visualisations(runs, run.work / FEATVIZ, "detectors", f"{run.config.model}: pre-images of the best "
                         "detectors (left unregularised, right regularised)", {"model": run.config.model})
    run.summary["featviz"] = {"template": source, **{label: entry.to_dict() for label, entry in runs.items()}}
