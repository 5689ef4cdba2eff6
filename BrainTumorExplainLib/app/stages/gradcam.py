"""Layer-wise Grad-CAM: one map per (layer, class) on the case's own grid, localisation, the figures (§3.2)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ...analyses import CONTROL_SEED
from ...analyses.controls import random_weights
from ...analyses.gradcam import (
    gradcam_volume,
    localisation,
    localisation_as_dict,
    localisation_controls,
    raw_input_volume,
)
from ...analyses.sanity import cascading_randomisation
from ...errors import UsageError
from ...models.interface import analysed
from ...progress import progress_bar
from ..contract import GRADCAM, figure_file, gradcam_file, gradcam_key
from ..figures import cascade_figure, gradcam_montage, localisation_curves

NAME = "gradcam"
FIGURES = (
    (figure_file("gradcam"), "Grad-CAM, layer by layer", "Where each layer looks for each class, input (left) to "
     "output (right)."),
    (figure_file("topdown"), "Top-down localisation, measured", "Share of each class's Grad-CAM inside its region per "
     "layer (solid); dotted: the same architecture with random weights; dash-dot: the best raw input channel; "
     "dashed: a flat map."),
)


def write_maps(cams, case, folder: Path, progress: bool = False, full_resolution: bool = False) -> list[Path]:
    """Every ``(layer, class)`` map as ``<layer>_<class>.nii.gz`` in ``folder`` (the ``gradcam`` verb writes them
    too): 8-bit levels with the map's own scale, float32 with ``full_resolution`` (:meth:`ReferenceGrid.write`)."""
    return [case.grid.write(cam, Path(folder) / gradcam_file(layer, gradcam_key(cams.name(class_index))),
                            quantised=not full_resolution)
            for (layer, class_index), cam in progress_bar(cams.maps.items(), "write NIfTI" if progress else None,
                                                          unit="map")]


def summarise(cams, table) -> dict:
    return {"target": cams.target, "pool": cams.pool, "layers": cams.layers,
            "classes": [cams.name(c) for c in cams.classes], "localisation": localisation_as_dict(table)}


def run(run) -> None:
    try:
        analysed(run.model, "Grad-CAM")  # a TorchScript network has no hooks
    except UsageError as unavailable:
        run.summary["gradcam"] = {"not_computed": str(unavailable)}
        return
    config = run.config

    def compute_for(network, slices=None):
        return compute(network, run.case, config.layers, config.classes, config.gradcam_target, config.gradcam_pool,
                       slices=slices, progress=run.progress)

    cams = compute_for(run.model)
    run.handed_on["gradcam"] = cams  # for the review
    write_maps(cams, run.case, run.work / GRADCAM, full_resolution=config.full_resolution)
    table = localisation(cams, run.case)
    controls = control_localisation(run.model, run.case, cams, compute_for)
    run.summary["gradcam"] = {**summarise(cams, table), "controls": controls}
    names = [cams.name(c) for c in cams.classes]
    gradcam_montage(run.case, run.z, cams.slice_maps(run.z), cams.classes, run.figure("gradcam"),
                    title=run.title("Grad-CAM per layer (rows: class)"), names=names)
    localisation_curves({config.model: table}, run.figure("topdown"),
                        regions={name: cams.region(c) for name, c in zip(names, cams.classes)},
                        controls={config.model: controls})


def compute(model, case, layers: str, classes, target: str, pool: str, slices=None, progress: bool = False,
            batch_size: int = 8):
    """Grad-CAM of ``layers`` (names, or "all") for ``model`` — the ``explain`` stage and the ``gradcam`` verb both
    call this (:func:`analyses.gradcam.gradcam_volume`: a 2D network over ``slices``, default every brain slice, for
    ``classes``; a described 3D network over its windows, for every output channel)."""
    return gradcam_volume(model, case, layers, classes, target, slices=slices, batch_size=batch_size,
                          progress=progress, pool=pool)


def job(models: dict, case, classes, slices: list[int], work: Path, shown_as: Path, *, layers: str, target: str,
        pool: str, batch_size: int = 8, volume: bool = True, full_resolution: bool = False,
        sanity: bool = False) -> None:
    """The ``gradcam`` verb: for each network of ``models`` (name → network), the montages of ``slices`` into
    ``work/<name>/`` and — with ``volume`` — every map on the case's grid, ``localisation.json`` with its controls,
    and the top-down curves of all of them (``work/topdown.png``); with ``sanity``, the cascading-randomisation
    check (:func:`sanity_check`); ``shown_as``: where ``work`` is published."""

    # Volume mode computes every brain slice (and any montage slice outside the brain) in one pass; the montages are
    # cut from it. Without it, the montage slices only.
    computed = sorted(set(case.brain_slices().tolist()) | set(slices)) if volume else slices
    tables, controls = {}, {}
    for name, model in models.items():
        out = work / name

        def compute_for(network, chosen):
            return compute(network, case, layers, classes, target, pool, slices=chosen, progress=True,
                           batch_size=batch_size)

        cams = compute_for(model, computed)
        if sanity:
            sanity_check(model, case, cams, out, shown_as / name, target, pool)
        for z in slices:
            png = gradcam_montage(case, z, cams.slice_maps(z), cams.classes, out / f"gradcam_z{z}.png",
                                  title=f"{case.case_id} · {name} · Grad-CAM ({target}) per layer, rows: class",
                                  names=[cams.name(c) for c in cams.classes])
            print(f"wrote {shown_as / png.relative_to(work)}")
        if not volume:
            continue
        write_maps(cams, case, out, progress=True, full_resolution=full_resolution)
        tables[name] = localisation(cams, case)
        controls[name] = control_localisation(model, case, cams, compute_for)
        (out / "localisation.json").write_text(json.dumps(
            {"case": case.case_id, "model": name, **summarise(cams, tables[name]), "controls": controls[name]},
            indent=2) + "\n")
        print(f"wrote {len(cams.maps)} maps and localisation.json to {shown_as / name}")
    if tables:
        localisation_curves(tables, work / "topdown.png", controls=controls)
        print(f"wrote {shown_as / 'topdown.png'}")


def sanity_check(model, case, cams, out: Path, shown_as: Path, target: str, pool: str) -> dict:
    """:func:`analyses.sanity.cascading_randomisation` of ``cams``' layers and classes over the control slices (a 2D
    network's every 4th computed slice), written as ``sanity.json`` and ``sanity.png`` into ``out``."""
    slices = analysed(model).control_slices(cams.slices)
    found = cascading_randomisation(model, case, cams.layers, cams.classes, slices, target=target, pool=pool)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sanity.json").write_text(json.dumps({"case": case.case_id, **found}, indent=1) + "\n")
    cascade_figure(found, out / "sanity.png", f"{case.case_id}: Grad-CAM under cascading randomisation")
    first = [values[0] for per_class in found["spearman"].values() for values in per_class.values()]
    known = [rho for rho in first if rho is not None]
    zero = f", {len(first) - len(known)} of {len(first)} maps all zero" if len(known) < len(first) else ""
    print(f"sanity check: with the output layer random, the maps' rank correlation with the trained ones is "
          f"{np.median(known):.2f} (median over layers and classes{zero}; near 1 would mean they do not explain the "
          f"network); wrote {shown_as / 'sanity.json'}" if known else "sanity check: every map became all zero")
    return found


def control_localisation(model, case, cams, compute) -> dict:
    """The localisation of ``cams`` (``model``'s Grad-CAM of ``case``) beside its controls
    (:mod:`analyses.controls`): the same Grad-CAM of the architecture with random weights — ``compute(network,
    slices)`` makes it — and the raw input channels, against the trained maps over the same slices (a 2D network's
    every 4th, to keep the cost at a quarter of the maps': :meth:`models.interface.AnalysedNetwork.control_slices`)."""

    network = analysed(model)
    slices = network.control_slices(cams.slices)
    random_table = localisation(compute(random_weights(model, CONTROL_SEED), slices), case)
    raw_table = localisation(raw_input_volume(network.input_channels(case), network.channel_names, slices), case)
    trained_table = localisation(replace(cams, slices=slices), case)
    regions = {cams.name(c): cams.region(c) for c in cams.classes}
    return localisation_controls(trained_table, random_table, raw_table, regions, CONTROL_SEED, len(slices))
