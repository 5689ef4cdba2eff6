"""Layer-wise Grad-CAM: one map per (layer, class) on the case's own grid, localisation, the figures (§3.2)."""

from __future__ import annotations

from pathlib import Path

from ..contract import GRADCAM, figure_file, gradcam_file, gradcam_key

NAME = "gradcam"
FIGURES = (
    (figure_file("gradcam"), "Grad-CAM, layer by layer", "Where each layer looks for each class, input (left) to "
     "output (right)."),
    (figure_file("topdown"), "Top-down localisation, measured", "Share of each class's Grad-CAM inside its region per "
     "layer; dashed: a flat map."),
)


def write_maps(cams, case, folder: Path, progress: bool = False) -> list[Path]:
    """Every ``(layer, class)`` map as ``<layer>_<class>.nii.gz`` in ``folder`` (the ``gradcam`` verb writes them
    too)."""
    from ...progress import progress_bar

    return [case.grid.write(cam, Path(folder) / gradcam_file(layer, gradcam_key(cams.name(class_index))))
            for (layer, class_index), cam in progress_bar(cams.maps.items(), "write NIfTI" if progress else None,
                                                          unit="map")]


def summarise(cams, table) -> dict:
    from ...analyses.gradcam import localisation_as_dict

    return {"target": cams.target, "layers": cams.layers, "classes": [cams.name(c) for c in cams.classes],
            "localisation": localisation_as_dict(table)}


def run(run) -> None:
    from ...analyses.gradcam import localisation
    from ...errors import UsageError
    from ...models.description import require_hooks
    from ..figures import gradcam_montage, localisation_curves

    try:
        if hasattr(run.model, "description"):
            require_hooks(run.model.description, "Grad-CAM")
    except UsageError as unavailable:
        run.summary["gradcam"] = {"not_computed": str(unavailable)}
        return
    cams = compute(run)
    write_maps(cams, run.case, run.work / GRADCAM)
    table = localisation(cams, run.case)
    run.summary["gradcam"] = summarise(cams, table)
    names = [cams.name(c) for c in cams.classes]
    gradcam_montage(run.case, run.z, cams.slice_maps(run.z), cams.classes, run.figure("gradcam"),
                    title=run.title("Grad-CAM per layer (rows: class)"), names=names)
    localisation_curves({run.config.model: table}, run.figure("topdown"),
                        regions={name: cams.region(c) for name, c in zip(names, cams.classes)})


def compute(run):
    """Grad-CAM of the run's layers and classes: slice by slice for the paper's 2D networks, window by window for a
    described 3D network (every output channel, with its own target)."""
    from ...analyses.gradcam import gradcam_volume
    from ...analyses.volume import volume_gradcam
    from ...models.volume import DescribedNetwork

    if isinstance(run.model, DescribedNetwork):
        target = "logits" if run.config.gradcam_target == "logits" else "probabilities"
        return volume_gradcam(run.model, run.case, run.config.layers, target=target)
    return gradcam_volume(run.model, run.case, run.config.layers, run.config.classes, run.config.gradcam_target,
                          progress=run.progress)
