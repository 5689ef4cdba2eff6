"""Lesion-wise Dice and HD95 as the BraTS challenges rank since 2023, with lesion counts, sensitivity and specificity.

The challenge's published algorithm (github.com/rachitsaluja/BraTS-2023-Metrics, ``metrics.py``), on one region's
predicted and true masks:

1. **Ground-truth lesions**: the 26-connected components of the true mask, merged where they fall into one
   26-connected component of the true mask dilated ``dilation`` times by the 18-neighbourhood (3 for gliomas), so
   fragments of one lesion count once.
2. **Matching**: the predicted 26-connected components that touch a lesion dilated the same way are its matches; the
   lesion's Dice and HD95 are those of the lesion against the union of its matches (none: Dice 0, HD95 374 mm).
   Predicted components that touch no lesion are false positives (Dice 0, HD95 374 each).
3. **Volume threshold**: lesions of at most ``min_volume_mm3`` (50 mm³, i.e. 50 voxels at 1 mm, for gliomas) are left
   out of the means and the TP/FN counts — a prediction that touches only such a lesion is not a false positive
   either.
4. The case's lesion-wise Dice (and HD95) is the sum over the remaining lesions plus 0 (374) per false positive,
   divided by their count; nothing to score at all (no lesion, no false positive): Dice 1, HD95 0.

The HD95 here is the challenge's: DeepMind's ``surface-distance`` robust Hausdorff, where each direction's 95th
percentile is taken over surface elements weighted by their area (MONAI's sub-voxel edges,
``monai.metrics.utils.get_mask_edges`` with a spacing, give the elements and areas), the larger direction
reported. It is *not* :func:`metrics.hd95`, the legacy voxel-surface HD95 this project reports beside it (a ball of
radius 10 voxels against its two-step 26-neighbourhood dilation: 3.46 mm legacy, 3.00 mm here; Testing/test_lesions.py).
Sensitivity and specificity are voxel-wise over the whole volume, as the challenge computes
them (GaNDLF's definitions).

The PyPI ``brats-evaluation`` package (0.0.10, read from its source) is another evaluator, not this algorithm: it
wraps Panoptica, matches predicted and true components one to one (maximum bipartite matching on Dice) without merging
lesions by dilation, and its glioma configuration reads label 3 as ET and label 4 as resection cavity — so a BraTS
2021 file (ET = 4) silently loses its enhancing tumour. Here label files are read in either convention first
(:mod:`data.labels`, ``--labels``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

MISS_HD95_MM = 374.0  # the challenge's HD95 of a missed or false-positive lesion
_CONNECTED_26 = np.ones((3, 3, 3), dtype=bool)
_DILATION_18 = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LesionRule:
    """How lesions are merged and which are scored: a BraTS challenge's parameters (:data:`CHALLENGES`)."""

    dilation: int = 3  # iterations of the 18-neighbourhood dilation
    min_volume_mm3: float = 50.0  # lesions of at most this volume are not scored


# The BraTS 2023 challenges' parameters, as its metrics code sets them.
CHALLENGES: dict[str, LesionRule] = {
    "BraTS-GLI": LesionRule(3, 50.0), "BraTS-SSA": LesionRule(3, 50.0), "BraTS-PED": LesionRule(3, 50.0),
    "BraTS-MEN": LesionRule(1, 50.0), "BraTS-MET": LesionRule(1, 2.0),
}
DEFAULT_CHALLENGE = "BraTS-GLI"


@dataclass(frozen=True)
class Lesion:
    """One ground-truth lesion (after merging): its volume, the predicted components it matched, its scores."""

    volume_mm3: float
    matches: tuple[int, ...]  # labels of the predicted components touching it (dilated)
    dice: float
    hd95_mm: float
    scored: bool  # above the volume threshold


@dataclass(frozen=True)
class LesionScores:
    dice: float
    hd95_mm: float
    tp: int  # scored lesions with a match
    fp: int  # predicted components touching no lesion
    fn: int  # scored lesions without a match
    sensitivity: float
    specificity: float
    lesions: tuple[Lesion, ...]
    false_positive_volumes_mm3: tuple[float, ...]
    # The labellings the scores came from, inside ``box`` (the crop of the volume that holds every lesion): predicted
    # 26-connected components (``Lesion.matches`` are their labels) and merged ground-truth lesions (label i + 1 is
    # ``lesions[i]``); None when both masks are empty.
    box: tuple[slice, ...] | None = field(default=None, repr=False, compare=False)
    predicted_labels: np.ndarray | None = field(default=None, repr=False, compare=False)
    lesion_labels: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, float | int]:
        return {"lesion_dice": self.dice, "lesion_hd95_mm": self.hd95_mm, "lesion_tp": self.tp,
                "lesion_fp": self.fp, "lesion_fn": self.fn, "sensitivity": self.sensitivity,
                "specificity": self.specificity}


def robust_hausdorff(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...],
                     percent: float = 95.0) -> float:
    """The challenge's HD95 (mm): per direction, the distance below which ``percent`` % of the surface *area* lies,
    the larger direction reported; ``inf`` when exactly one mask is empty (the challenge then scores 374), 0 when
    both are."""
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if not prediction.any() and not truth.any():
        return 0.0
    if not prediction.any() or not truth.any():
        return float("inf")
    spacing = tuple(float(s) for s in spacing)
    edges_p, edges_t, areas_p, areas_t = get_mask_edges(prediction, truth, spacing=spacing)
    to_truth = get_surface_distance(edges_p, edges_t, spacing=spacing)
    to_prediction = get_surface_distance(edges_t, edges_p, spacing=spacing)
    return float(max(_area_percentile(to_truth, areas_p[edges_p], percent),
                     _area_percentile(to_prediction, areas_t[edges_t], percent)))


def _area_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """The smallest distance at which the cumulative share of surface area reaches ``percent`` %."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order], dtype=np.float64)
    index = int(np.searchsorted(cumulative / cumulative[-1], percent / 100.0))
    return float(distances[order][min(index, len(order) - 1)])


def lesion_wise(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float],
                rule: LesionRule = CHALLENGES[DEFAULT_CHALLENGE]) -> LesionScores:
    """Lesion-wise scores of one region's bool masks (see the module notes); ``spacing`` in mm, per array axis."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground-truth shape {truth.shape}")
    voxel_mm3 = float(np.prod(spacing))
    sensitivity, specificity = _voxel_rates(prediction, truth)
    union = prediction | truth
    if not union.any():
        return LesionScores(1.0, 0.0, 0, 0, 0, sensitivity, specificity, (), ())
    # Every lesion, dilation and match lies inside the union's box grown by the dilation (+1 so a dilated lesion never
    # reaches the border): crop there, exactly as on the whole volume, far faster.
    found = np.argwhere(union)
    margin = rule.dilation + 1
    box = tuple(slice(max(lo - margin, 0), hi + margin + 1) for lo, hi in zip(found.min(0), found.max(0)))
    prediction, truth = prediction[box], truth[box]
    predicted, _ = ndimage.label(prediction, structure=_CONNECTED_26)
    lesions_of = _merged_lesions(truth, rule.dilation)
    lesions, touched = [], set()
    for index in range(1, int(lesions_of.max()) + 1):
        lesion = lesions_of == index
        reach = ndimage.binary_dilation(lesion, structure=_DILATION_18, iterations=rule.dilation) \
            if rule.dilation else lesion
        matches = tuple(int(m) for m in np.unique(predicted[reach]) if m)
        touched.update(matches)
        matched = np.isin(predicted, matches) if matches else np.zeros_like(lesion)
        overlap = 2.0 * int((matched & lesion).sum()) / (int(matched.sum()) + int(lesion.sum()))
        distance = robust_hausdorff(matched, lesion, spacing)
        volume = int(lesion.sum()) * voxel_mm3
        lesions.append(Lesion(volume, matches, overlap, MISS_HD95_MM if np.isinf(distance) else distance,
                              volume > rule.min_volume_mm3))
    sizes = np.bincount(predicted.ravel())
    false_positives = tuple(float(sizes[m]) * voxel_mm3 for m in range(1, len(sizes)) if m not in touched)
    scored = [lesion for lesion in lesions if lesion.scored]
    count = len(scored) + len(false_positives)
    dice = sum(lesion.dice for lesion in scored) / count if count else 1.0
    hd95 = (sum(lesion.hd95_mm for lesion in scored) + MISS_HD95_MM * len(false_positives)) / count if count else 0.0
    return LesionScores(dice, hd95, sum(1 for lesion in scored if lesion.matches),
                        len(false_positives), sum(1 for lesion in scored if not lesion.matches),
                        sensitivity, specificity, tuple(lesions), false_positives, box, predicted, lesions_of)


def _merged_lesions(truth: np.ndarray, dilation: int) -> np.ndarray:
    """Ground-truth lesion labels: 26-connected components, those in one component of the dilated mask merged."""
    components, _ = ndimage.label(truth, structure=_CONNECTED_26)
    if not dilation:
        return components
    grown, _ = ndimage.label(ndimage.binary_dilation(truth, structure=_DILATION_18, iterations=dilation),
                             structure=_CONNECTED_26)
    return np.where(components > 0, grown, 0)


def _voxel_rates(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Voxel-wise sensitivity and specificity over the whole volume, as the challenge's (GaNDLF's) code: a ratio
    with nothing below the line is 0, except the sensitivity of two empty masks, which is 1."""
    tp = int((prediction & truth).sum())
    fp, fn = int(prediction.sum()) - tp, int(truth.sum()) - tp
    tn = prediction.size - tp - fp - fn
    sensitivity = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    specificity = tn / (tn + fp) if tn + fp else 0.0
    return sensitivity, specificity
