"""Segmentation: labels on the case's own grid, the montage, and scores against ground truth when there is one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import SEGMENTATION, figure_file

NAME = "segmentation"
FIGURES = ((figure_file("segmentation"), "Segmentation", "The four sequences, the ground truth (when present) and "
            "the network's labels: NCR/NET red, edema green, enhancing tumour yellow."),)


def write_labels(labels: np.ndarray, case, path: Path) -> Path:
    """Class indices as a label file in the case's convention, on its own grid (``segment`` writes it too)."""
    return case.write_labels(labels, path)


def run(run) -> None:
    from ...models.inference import segment_case
    from ...scoring.baseline import threshold_segmentation
    from ...scoring.metrics import score_segmentation, scores_as_dict
    from ..figures import case_montage

    case = run.case
    labels = segment_case(run.model, case)
    write_labels(labels, case, run.work / SEGMENTATION)
    case_montage(case, run.figure("segmentation"), predicted=labels)
    if case.labels is not None:
        run.summary["scores"] = scores_as_dict(score_segmentation(labels, case.labels, case.spacing))
        run.summary["baseline_scores"] = scores_as_dict(  # what a non-learned threshold gets, for scale
            score_segmentation(threshold_segmentation(case), case.labels, case.spacing))
