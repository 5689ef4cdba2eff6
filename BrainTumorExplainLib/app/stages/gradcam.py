"""Layer-wise Grad-CAM: one map per (layer, class) on the case's own grid, localisation, the figures (§3.2)."""

from __future__ import annotations

from pathlib import Path

from ..contract import GRADCAM, figure_file, gradcam_file

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
    from ...data.labels import CLASS_KEYS
    from ...progress import progress_bar

    return [case.grid.write(cam, Path(folder) / gradcam_file(layer, CLASS_KEYS[class_index]))
            for (layer, class_index), cam in progress_bar(cams.maps.items(), "write NIfTI" if progress else None,
                                                          unit="map")]


def summarise(cams, table) -> dict:
    from ...analyses.gradcam import localisation_as_dict
    from ...data.labels import CLASS_NAMES

    return {"target": cams.target, "layers": cams.layers, "classes": [CLASS_NAMES[c] for c in cams.classes],
            "localisation": localisation_as_dict(table)}


def run(run) -> None:
    from ...analyses.gradcam import gradcam_volume, localisation
    from ..figures import gradcam_montage, localisation_curves

    cams = gradcam_volume(run.model, run.case, run.config.layers, run.config.classes, run.config.gradcam_target,
                          progress=run.progress)
    write_maps(cams, run.case, run.work / GRADCAM)
    table = localisation(cams, run.case)
    run.summary["gradcam"] = summarise(cams, table)
    gradcam_montage(run.case, run.z, cams.slice_maps(run.z), cams.classes, run.figure("gradcam"),
                    title=run.title("Grad-CAM per layer (rows: class)"))
    localisation_curves({run.config.model: table}, run.figure("topdown"))
