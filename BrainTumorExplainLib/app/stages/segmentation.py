"""Segmentation: labels on the case's own grid, the montage, and scores against ground truth when there is one
(on the input's grid, against the input's labels, when the case was resampled into the network's space)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...models.inference import network_outputs, segment_input
from ...scoring.baseline import threshold_segmentation
from ...scoring.metrics import score_segmentation, scores_as_dict
from ..contract import SEGMENTATION, figure_file
from ..figures import case_montage

NAME = "segmentation"
FIGURES = ((figure_file("segmentation"), "Segmentation", "The four sequences, the ground truth (when present) and "
            "the network's labels: NCR/NET red, edema green, enhancing tumour yellow."),)


def segment(model, case, path: Path, progress: bool = False, outputs=None) -> tuple[np.ndarray, np.ndarray]:
    """Segment ``case`` and write the labels on its input grid in its convention (``segment`` does this too);
    returns the labels on the grid the network saw and on the input grid (:func:`models.inference.segment_input`;
    ``outputs``: the network's, when already computed)."""
    labels, on_input = segment_input(model, case, progress=progress, outputs=outputs)
    case.as_read.write_labels(on_input, path)
    return labels, on_input


def run(run) -> None:
    case, as_read = run.case, run.case.as_read
    outputs = network_outputs(run.model, case)
    labels, on_input = segment(run.model, case, run.work / SEGMENTATION, outputs=outputs)
    run.handed_on["probabilities"] = outputs[0]  # the deterministic prediction: the uncertainty's control
    run.handed_on["labels_on_input"] = on_input
    case_montage(case, run.figure("segmentation"), predicted=labels)
    if as_read.labels is not None:
        scores = score_segmentation(on_input, as_read.labels, as_read.spacing)
        run.handed_on["lesion_scores"] = {region: score.lesions for region, score in scores.items()}
        run.summary["scores"] = scores_as_dict(scores)
        run.summary["baseline_scores"] = scores_as_dict(  # what a non-learned threshold gets, for scale
            score_segmentation(threshold_segmentation(as_read), as_read.labels, as_read.spacing))
