"""Segmentation metrics on BraTS regions: Dice and the 95th-percentile Hausdorff distance (HD95) in mm.

Conventions (BraTS legacy, whole volume):

* both masks empty → Dice 1, HD95 0 (nothing to find, nothing found);
* exactly one empty → Dice 0, HD95 = the length of the image's diagonal in mm (373.13 mm on BraTS's 240×240×155
  1 mm grid, the value the BraTS evaluation toolkit reports), so a miss is the worst possible score, never NaN.

HD95 follows MONAI and medpy: the larger of the two directed 95th percentiles of surface-to-surface distances, where a
surface is the mask minus its 6-connected erosion and percentiles interpolate linearly (``numpy.percentile``).
Distances use the voxel spacing, so anisotropic grids are measured in mm.

Beside them, the BraTS 2023 lesion-wise scores (:mod:`lesions`: lesion Dice and HD95, TP/FP/FN lesions, voxel-wise
sensitivity and specificity), with that module's own conventions for empty regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from ..data.labels import REGIONS, region_mask
from .lesions import CHALLENGES, DEFAULT_CHALLENGE, LesionRule, LesionScores, lesion_wise


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice = 2|P ∩ G| / (|P| + |G|); 1.0 when both are empty."""
    prediction, truth = _as_masks(prediction, truth)
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def region_dice(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of WT, TC and ET between two class-index volumes (nothing else computed: no HD95)."""
    return {region: dice(region_mask(prediction, region), region_mask(truth, region)) for region in REGIONS}


def _as_masks(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground-truth shape {truth.shape}")
    return prediction, truth


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (see the module notes for empty masks)."""
    prediction, truth = _as_masks(prediction, truth)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != prediction.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {prediction.ndim}D mask")
    has_prediction, has_truth = prediction.any(), truth.any()
    if not has_prediction and not has_truth:
        return 0.0
    if not (has_prediction and has_truth):
        return float(np.linalg.norm(np.array(prediction.shape) * np.array(spacing)))
    # The nearest surface voxel of either mask lies inside the union's bounding box: crop there (exact, faster).
    both = np.argwhere(prediction | truth)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(both.min(0), both.max(0)))
    surface_p, surface_t = _surface(prediction[box]), _surface(truth[box])
    to_truth = ndimage.distance_transform_edt(~surface_t, sampling=spacing)[surface_p]
    to_prediction = ndimage.distance_transform_edt(~surface_p, sampling=spacing)[surface_t]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_prediction, 95)))


@dataclass(frozen=True)
class RegionMetric:
    """One score of a region: its key in the results, its table heading and digits, and how it is computed from a
    predicted and a true mask and the voxel spacing (mm)."""

    key: str
    heading: str
    digits: int
    compute: Callable[[np.ndarray, np.ndarray, tuple[float, ...]], float]


# Every score the project reports per region; a new metric is one entry here (scores, JSON, tables, means follow).
REGION_METRICS: tuple[RegionMetric, ...] = (
    RegionMetric("dice", "Dice", 3, lambda prediction, truth, spacing: dice(prediction, truth)),
    RegionMetric("hd95_mm", "HD95", 2, hd95),
)


# The lesion-wise values (lesions.LesionScores.as_dict keys) that tables show and cohorts average.
LESION_METRICS: tuple[tuple[str, str, int], ...] = (("lesion_dice", "L-Dice", 3), ("lesion_hd95_mm", "L-HD95", 2))
LESION_COUNTS = ("lesion_tp", "lesion_fp", "lesion_fn")  # summed over a cohort


@dataclass(frozen=True)
class RegionScore:
    region: str
    values: dict[str, float]  # metric key → value, for each of REGION_METRICS
    predicted_voxels: int
    truth_voxels: int
    lesions: LesionScores | None = None

    @property
    def dice(self) -> float:
        return self.values["dice"]

    @property
    def hd95_mm(self) -> float:
        return self.values["hd95_mm"]


def score_segmentation(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float],
                       lesion_rule: LesionRule | None = CHALLENGES[DEFAULT_CHALLENGE]) -> dict[str, RegionScore]:
    """Every metric of :data:`REGION_METRICS` for WT, TC and ET from two class-index volumes (0..3, see
    :mod:`labels`), and the lesion-wise scores under ``lesion_rule`` (None: not computed)."""
    scores = {}
    for region in REGIONS:
        p, t = region_mask(prediction, region), region_mask(truth, region)
        values = {metric.key: float(metric.compute(p, t, spacing)) for metric in REGION_METRICS}
        lesions = lesion_wise(p, t, spacing, lesion_rule) if lesion_rule is not None else None
        scores[region] = RegionScore(region, values, int(p.sum()), int(t.sum()), lesions)
    return scores


def scores_as_dict(scores: dict[str, RegionScore]) -> dict[str, dict[str, float]]:
    return {region: {**score.values, **(score.lesions.as_dict() if score.lesions else {}),
                     "predicted_voxels": score.predicted_voxels, "truth_voxels": score.truth_voxels}
            for region, score in scores.items()}


def format_scores(scores: dict[str, RegionScore]) -> str:
    lesions = all(score.lesions for score in scores.values())
    lines = [f"{'region':<8}" + "".join(f"{metric.heading:>10}" for metric in REGION_METRICS)
             + ("".join(f"{heading:>10}" for _, heading, _ in LESION_METRICS) + f"{'TP/FP/FN':>10}" if lesions else "")
             + f"{'pred vox':>11}{'true vox':>11}"]
    for score in scores.values():
        values = score.lesions.as_dict() if lesions else {}
        lines.append(f"{score.region:<8}" + "".join(f"{score.values[m.key]:>10.{m.digits}f}" for m in REGION_METRICS)
                     + ("".join(f"{values[key]:>10.{digits}f}" for key, _, digits in LESION_METRICS)
                        + f"{'/'.join(str(values[key]) for key in LESION_COUNTS):>10}" if lesions else "")
                     + f"{score.predicted_voxels:>11}{score.truth_voxels:>11}")
    return "\n".join(lines)
