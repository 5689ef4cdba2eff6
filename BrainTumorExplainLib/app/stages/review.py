"""Where to look: every lesion with its match, uncertainty and explanations, and the ranked review regions
(:mod:`analyses.review`), on the case's input grid; ``review.nii.gz`` holds the regions (region n = rank n)."""

from __future__ import annotations

from ...analyses import review
from ...analyses.review import DETERMINISTIC_ENTROPY, CamStack, on_input_grid
from ...analyses.uncertainty import decision_entropy, deterministic_entropy, output_kind
from ..contract import REVIEW, figure_file, last_explained_layer
from ..figures import review_figure

NAME = "review"
FIGURES = ((figure_file("review"), "Where to look", "The review regions ranked first (no ground truth needed): "
            "uncertain voxels and predicted lesions the network is unsure of, ranked by their uncertainty mass; the "
            "region in cyan, the predicted tumour in yellow, the entropy in red."),)
SHOWN = 6  # regions drawn in the figure


def inputs(run) -> dict:
    """What the earlier stages handed on, on the input grid: the labels, the uncertainty maps with the
    deterministic entropy beside them, the Grad-CAM maps and the concept masks (released once read)."""
    case, handed = run.case, run.handed_on
    volume = handed.pop("uncertainty")
    maps = {name: on_input_grid(case, array) for name, array in volume.maps().items()}
    decision = on_input_grid(case, decision_entropy(volume.mean, output_kind(run.model)))
    probabilities = handed.pop("probabilities", None)
    if probabilities is not None:
        maps[DETERMINISTIC_ENTROPY] = on_input_grid(case, deterministic_entropy(run.model, probabilities))
    cams = handed.pop("gradcam", None)
    stack = None
    if cams is not None:
        names = {c: cams.name(c) for c in cams.classes}
        stack = CamStack(list(cams.layers), list(names.values()), last_explained_layer(list(cams.layers)),
                         {(layer, names[c]): on_input_grid(case, cam) for (layer, c), cam in cams.maps.items()})
    detectors = {name: on_input_grid(case, mask) for name, mask in handed.pop("concept_masks", {}).items()}
    return {"labels": handed.pop("labels_on_input"), "maps": maps, "decision": decision, "cams": stack,
            "detectors": detectors,
            "scores": handed.pop("lesion_scores", None)}


def run(run) -> None:
    as_read = run.case.as_read
    found = inputs(run)
    labels, maps, scores = found["labels"], found["maps"], found["scores"]
    rows = review.lesion_table(labels, as_read.grid, as_read.brain_mask, maps, scores, found["cams"],
                               found["detectors"])
    regions_map, regions = review.review_regions(labels, found["decision"], as_read.brain_mask, as_read.grid)
    as_read.grid.write(regions_map, run.work / REVIEW)
    summary = {"grid": "input", "ranked_by": review.RANKED_BY, "uncertain_nats": review.UNCERTAIN_NATS,
               "low_confidence_nats": review.LOW_CONFIDENCE_NATS, "concentrated": review.CONCENTRATED,
               "fires": review.FIRES, "lesions": [row.as_dict() for row in rows],
               "regions": [region.as_dict() for region in regions]}
    if scores is not None:
        summary["lesion_auroc"] = review.lesion_auroc(rows)
        summary["coverage"] = review.review_coverage(regions_map, labels, as_read.labels, as_read.brain_mask, scores,
                                                     as_read.grid.canonical_spacing, seed=run.config.seed)
    run.summary["review"] = summary
    review_figure(as_read, labels, found["decision"], regions_map, regions[:SHOWN], run.figure("review"),
                  review.UNCERTAIN_NATS, run.title("where to look"))
