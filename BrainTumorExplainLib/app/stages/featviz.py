"""Feature visualisation of the best detectors (activation maximisation, §4), without and with regularisers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...analyses.featviz import (
    FeatvizConfig,
    Regularisers,
    input_sequences,
    load_template,
    mean_template,
    regulariser_sweep,
    save_template,
    shipped_template_path,
    spatial_dims,
    visualise_filters,
    volume_template,
)
from ...data.case import load_case
from ...models.space import into_network_space
from ..contract import FEATVIZ
from ..figures import MODALITY_TITLES, featviz_montage, featviz_sweep

NAME = "featviz"
FIGURES = ((f"{FEATVIZ}/detectors.png", "What those filters respond to (activation maximisation)", "Pre-images that "
            "maximise each detector, without and with regularisers."),)


def write_visualisations(runs: dict, folder: Path, name: str, title: str, about: dict) -> list[Path]:
    """``<name>.npz`` (the pre-images and their targets), ``<name>.json`` (activations, settings) and ``<name>.png``
    in ``folder`` (the ``featviz`` verb writes them too)."""
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
    return {"unregularised": visualise_filters(model, targets, Regularisers.none(), config, progress=progress),
            "regularised": visualise_filters(model, targets, regularisers, config, template, progress=progress)}


def run(run) -> None:
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


def job(model, targets: list, config, regularisers, template, work: Path, shown_as: Path, *, model_name: str,
        layer: str | None = None, sweep: bool = False) -> None:
    """The ``featviz`` verb: the pre-images of ``targets`` ((layer, filter) pairs), unregularised and regularised,
    into ``work`` as ``featviz_<layer>.png/.npz/.json`` (published as ``shown_as``); with ``sweep``, the regulariser
    sweep of the first target (Figure 13) as ``sweep_<layer>_<filter>.png``."""
    runs = visualise(model, targets, config, regularisers, template, progress=True)
    layer = layer or "+".join(sorted({name for name, _ in targets}))
    for label, found in runs.items():
        print(f"{label}: mean activation " + ", ".join(
            f"#{k} {a:.2f} → {b:.2f}"
            for (_, k), a, b in zip(found.targets, found.start_activation, found.final_activation)))
    title = f"{model_name} {layer}: activation maximisation (left unregularised, right regularised)"
    write_visualisations(runs, work, f"featviz_{layer}", title, {"model": model_name})
    print(f"wrote {shown_as / f'featviz_{layer}.png'}")
    if sweep:
        first = targets[0][1]
        swept = regulariser_sweep(model, targets[0], template, config, regularisers)
        title = (f"{model_name} {layer} #{first}: one regulariser varied, the others as given "
                 f"({MODALITY_TITLES[runs['regularised'].sequences[0]]} channel)")
        featviz_sweep(swept, work / f"sweep_{layer}_{first}.png", title=title)
        print(f"wrote {shown_as / f'sweep_{layer}_{first}.png'}")


def template_job(folders: list[Path], target, model=None, size: int | None = None) -> None:
    """The ``template`` verb: the mean image of the cases in ``folders`` (read one at a time) — the z-scored
    sequences over every brain slice, or, for a 3D ``model``, its inputs over each case's brain box, resized to
    ``size`` per side — then written to ``target`` (an :class:`outputs.OutputFile`)."""
    volume = model is not None and spatial_dims(model) == 3
    case_ids: list[str] = []

    def cases():  # one case in memory at a time
        for folder in folders:
            case = load_case(folder)
            case_ids.append(case.case_id)
            yield into_network_space(case, model, True) if volume else case

    template = volume_template(cases(), model, size) if volume else mean_template(cases())
    with target.writing() as written:
        if volume:
            save_template(template, written, case_ids, input_sequences(model), model.architecture)
        else:
            save_template(template, written, case_ids)
