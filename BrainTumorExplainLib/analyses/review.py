"""Where to look (beyond the paper): every lesion of a segmentation with its match against the ground truth, its
uncertainty and what explains it, and a ranked list of regions to review that needs no ground truth.

Everything here is on the case's input grid — the grid of its files, of its scores and of what Slicer shows; maps
computed in a network's space are brought there first (:func:`on_input_grid`).

**Lesions** (:func:`lesion_table`): per region (WT, TC, ET), every predicted 26-connected component and every missed
ground-truth lesion, matched exactly as the BraTS 2023 lesion-wise scores match them
(:func:`scoring.lesions.lesion_wise`, whose labellings are reused): a predicted component is ``TP`` when it touches a
scored lesion (dilated), ``small`` when it touches only lesions under the volume threshold, ``FP`` when it touches
none; a scored lesion without a match is ``FN``. Each row has its volume, lesion Dice (the matched lesion's, the best
when it touches several), the mean and maximum of each uncertainty map inside, per Grad-CAM target the share of the
target's mass inside it at the last layer before the head and the first layer where that share reaches
:data:`CONCENTRATED` × a flat map's (the lesion's share of the brain), and the detectors whose concept mask covers at
least :data:`FIRES` of it.

**Review regions** (:func:`review_regions`): the 26-connected components of uncertain brain voxels (entropy ≥
:data:`UNCERTAIN_NATS`) together with the predicted lesions of low confidence (mean entropy ≥
:data:`LOW_CONFIDENCE_NATS`), ranked by their uncertainty mass Σ entropy × voxel volume (nats·mm³: where most of the
expected error lies), the first :data:`MAX_REGIONS` kept. The entropy is the one of each voxel's most uncertain
decision (:func:`analyses.uncertainty.decision_entropy`), so that the thresholds mean the same for softmax classes
and sigmoid regions. The thresholds were chosen before any measurement and not tuned on one.

**Measurements**, with ground truth: :func:`lesion_auroc` (does a map's mean inside a lesion tell false-positive from
true-positive lesions — beside the entropy of one deterministic pass) and :func:`review_coverage` (the errors and
the FP/FN lesions inside the top-k regions, beside the same regions' shapes moved to random places in the brain and
beside the band of as many voxels along the predicted tumour's surface — where a reader checks a segmentation without
any uncertainty map).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..data.labels import REGIONS, region_mask
from ..scoring.lesions import LesionScores
from .uncertainty import auroc

UNCERTAIN_NATS = 0.5  # about the entropy of an 80/20 choice between two classes (0.50 nats)
LOW_CONFIDENCE_NATS = 0.25  # a predicted lesion this unsure on average is listed whole
RANKED_BY = "entropy of the most uncertain decision per voxel (nats; sigmoid regions: the least certain region)"
MAX_REGIONS = 20
CONCENTRATED = 2.0  # a Grad-CAM share this many times a flat map's: the map concentrates on the lesion
FIRES = 0.1  # a detector fires inside a lesion when its concept mask covers this share of it
TOP_K = (1, 3, 5, 10)
RANDOM_DRAWS = 100
DETERMINISTIC_ENTROPY = "deterministic entropy"  # the control map: the entropy of one pass without sampling
_CONNECTED_26 = np.ones((3, 3, 3), dtype=bool)
_IN_BRAIN = 0.9  # a random region is kept when this share of it lies in the brain (else it is drawn again)


def on_input_grid(case, array: np.ndarray) -> np.ndarray:
    """A canonical array on ``case``'s grid, on its input grid (itself when the case was not resampled; maps
    linearly, labels and masks by nearest neighbour, as every writer does)."""
    grid = case.grid
    return grid.to_reference(array) if hasattr(grid, "to_reference") else np.asarray(array)


@dataclass(frozen=True)
class Place:
    """Where a lesion or region is: its voxel nearest its centre of mass (inside it, even for a shell), as world RAS
    (mm; Slicer's coordinates), the image file's voxel index (i, j, k) and the canonical index (z, y, x) of the
    figures (z: the axial slice)."""

    ras: tuple[float, float, float]
    ijk: tuple[int, int, int]
    canonical: tuple[int, int, int]


def place_of(voxels: np.ndarray, grid) -> Place:
    """The :class:`Place` of a lesion or region from its canonical voxel indices ``(n, 3)`` on ``grid`` (a
    :class:`data.grid.ReferenceGrid`)."""
    nearest = voxels[np.argmin(((voxels - voxels.mean(0)) ** 2).sum(1))]
    ras = grid.world_of(nearest)[0] * np.array([-1.0, -1.0, 1.0])  # ITK's LPS → RAS
    return Place(tuple(round(float(v), 2) for v in ras), tuple(int(v) for v in grid.ijk_of(nearest)[0]),
                 tuple(int(v) for v in nearest))


@dataclass(frozen=True)
class CamStack:
    """Grad-CAM maps on the input grid: ``maps[(layer, target)]``, layers from input to output; ``last_layer`` the
    one the lesion table reports (the last before the network's head)."""

    layers: list[str]
    targets: list[str]
    last_layer: str
    maps: dict[tuple[str, str], np.ndarray] = field(repr=False)


@dataclass(frozen=True)
class LesionRow:
    region: str
    number: int  # 1.. within the region: predicted components first, then missed lesions
    match: str | None  # TP, FP, small, FN; None without ground truth
    volume_mm3: float
    dice: float | None
    place: Place
    uncertainty: dict[str, dict[str, float]]  # map → mean, max inside
    gradcam: dict[str, dict] = field(default_factory=dict)  # target → last-layer share, first concentrating layer
    detectors: dict[str, float] = field(default_factory=dict)  # "layer #filter: concept" → share of the lesion

    def as_dict(self) -> dict:
        return asdict(self)


def _labelling(prediction: np.ndarray, scores: LesionScores | None) -> tuple[np.ndarray, int, list[dict]]:
    """One id per lesion of a region over the whole volume (0: none) — the predicted components, then the missed
    scored lesions — with each id's match and Dice (None without ground truth)."""
    if scores is None:
        ids, count = ndimage.label(prediction, structure=_CONNECTED_26)
        return ids, count, [{"match": None, "dice": None}] * count
    ids = np.zeros(prediction.shape, dtype=np.int32)
    if scores.box is None:
        return ids, 0, []
    predicted = scores.predicted_labels
    count = int(predicted.max())
    ids[scores.box] = predicted
    entries = []
    for component in range(1, count + 1):
        touched = [lesion for lesion in scores.lesions if component in lesion.matches]
        scored = [lesion for lesion in touched if lesion.scored]
        match = "TP" if scored else "small" if touched else "FP"
        entries.append({"match": match, "dice": round(max(lesion.dice for lesion in touched), 4) if touched else 0.0})
    crop = ids[scores.box]
    for index, lesion in enumerate(scores.lesions, start=1):
        if lesion.scored and not lesion.matches:  # a miss: no predicted voxel within its reach, so ids are free
            count += 1
            crop[scores.lesion_labels == index] = count
            entries.append({"match": "FN", "dice": 0.0})
    return ids, count, entries


def lesion_table(prediction: np.ndarray, grid, brain: np.ndarray, maps: dict[str, np.ndarray],
                 scores: dict[str, LesionScores | None] | None = None, cams: CamStack | None = None,
                 detectors: dict[str, np.ndarray] | None = None) -> list[LesionRow]:
    """Every lesion of every region (see the module notes). ``prediction``: class indices on the input grid
    (``grid``); ``maps``: name → uncertainty map; ``scores``: region → the lesion-wise scores against the ground
    truth (None: no ground truth); ``detectors``: name → concept mask."""
    voxel_mm3 = float(np.prod(grid.canonical_spacing))
    brain_voxels = max(int(brain.sum()), 1)
    totals = {key: float(cam[brain].sum(dtype=np.float64)) for key, cam in cams.maps.items()} if cams else {}
    rows = []
    for region in REGIONS:
        ids, count, entries = _labelling(region_mask(prediction, region),
                                         None if scores is None else scores.get(region))
        if not count:
            continue
        boxes = ndimage.find_objects(ids)
        crop = _union_box(boxes)  # every statistic over the lesions' box only: the same sums, far faster
        inside = ids[crop]
        flat, index = inside.ravel(), np.arange(1, count + 1)
        voxels = np.bincount(flat, minlength=count + 1)[1:]
        values = {name: (np.bincount(flat, weights=array[crop].ravel(), minlength=count + 1)[1:] / voxels,
                         np.asarray(ndimage.maximum(array[crop], inside, index)))
                  for name, array in maps.items()}
        gradcam = _gradcam_shares(cams, crop, flat, count, totals, voxels / brain_voxels) if cams else [{}] * count
        fired = _detector_shares(detectors or {}, crop, flat, count, voxels)
        for position, box in enumerate(boxes):
            where = np.argwhere(ids[box] == position + 1) + [s.start for s in box]
            rows.append(LesionRow(
                region, position + 1, entries[position]["match"], round(float(voxels[position]) * voxel_mm3, 2),
                entries[position]["dice"], place_of(where, grid),
                {name: {"mean": round(float(mean[position]), 5), "max": round(float(peak[position]), 5)}
                 for name, (mean, peak) in values.items()},
                gradcam[position], fired[position]))
    return rows


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(box[axis].start for box in boxes), max(box[axis].stop for box in boxes))
                 for axis in range(len(boxes[0])))


def _gradcam_shares(cams: CamStack, crop: tuple[slice, ...], flat: np.ndarray, count: int,
                    totals: dict[tuple[str, str], float], chance: np.ndarray) -> list[dict]:
    """Per lesion, per target: the share of the target's Grad-CAM mass in the brain (``totals``) inside it at the
    last layer, and the first layer where that share reaches CONCENTRATED × chance (None: no layer does)."""
    result = [{} for _ in range(count)]
    bar = np.maximum(CONCENTRATED * chance, np.finfo(float).tiny)
    for target in cams.targets:
        shares = {}
        for layer in cams.layers:
            total = totals[(layer, target)]
            sums = np.bincount(flat, weights=cams.maps[(layer, target)][crop].ravel(), minlength=count + 1)[1:]
            shares[layer] = sums / total if total > 0 else np.zeros(count)
        for position in range(count):
            first = next((layer for layer in cams.layers if shares[layer][position] >= bar[position]), None)
            result[position][target] = {"last_layer": round(float(shares[cams.last_layer][position]), 5),
                                        "first_concentrated": first}
    return result


def _detector_shares(detectors: dict[str, np.ndarray], crop: tuple[slice, ...], flat: np.ndarray, count: int,
                     voxels: np.ndarray) -> list[dict[str, float]]:
    """Per lesion, the detectors whose concept mask covers at least FIRES of it, with that share."""
    result = [{} for _ in range(count)]
    for name, mask in detectors.items():
        covered = np.bincount(flat, weights=np.asarray(mask[crop], dtype=np.float64).ravel(), minlength=count + 1)[1:]
        for position, share in enumerate(covered / voxels):
            if share >= FIRES:
                result[position][name] = round(float(share), 4)
    return result


@dataclass(frozen=True)
class ReviewRegion:
    rank: int  # its value in the review label map
    volume_mm3: float
    uncertainty_mass: float  # Σ entropy × voxel volume (nats·mm³), what ranks it
    mean_entropy: float
    max_entropy: float
    tumour_share: float  # of its voxels, the share the network labelled tumour
    place: Place
    why: str

    def as_dict(self) -> dict:
        return asdict(self)


def review_regions(prediction: np.ndarray, entropy: np.ndarray, brain: np.ndarray, grid,
                   limit: int = MAX_REGIONS) -> tuple[np.ndarray, list[ReviewRegion]]:
    """The ranked review regions of a segmentation (see the module notes), from its class indices and the
    entropy of each voxel's most uncertain decision on the input grid: a label map (region ``rank`` = its value, uint8) and the regions."""
    if not 1 <= limit <= 255:
        raise ValueError(f"limit must lie in 1..255 (a uint8 label map), got {limit}")
    voxel_mm3 = float(np.prod(grid.canonical_spacing))
    tumour = prediction > 0
    lesions, count = ndimage.label(tumour, structure=_CONNECTED_26)
    lesion_sizes = np.bincount(lesions.ravel(), minlength=count + 1)
    lesion_entropy = np.bincount(lesions.ravel(), weights=entropy.ravel(), minlength=count + 1) \
        / np.maximum(lesion_sizes, 1)
    unsure = np.zeros(count + 1, dtype=bool)
    unsure[1:] = lesion_entropy[1:] >= LOW_CONFIDENCE_NATS
    uncertain = brain & (entropy >= UNCERTAIN_NATS)
    candidates, found = ndimage.label(uncertain | unsure[lesions], structure=_CONNECTED_26)
    mass = np.bincount(candidates.ravel(), weights=entropy.ravel(), minlength=found + 1)[1:] * voxel_mm3
    boxes = ndimage.find_objects(candidates)
    review = np.zeros(prediction.shape, dtype=np.uint8)
    regions = []
    for rank, label in enumerate(np.argsort(-mass, kind="stable")[:limit] + 1, start=1):
        box = boxes[label - 1]
        mask = candidates[box] == label
        review[box][mask] = rank
        values, share = entropy[box][mask], float(tumour[box][mask].mean())
        reasons = []
        uncertain_mm3 = int(uncertain[box][mask].sum()) * voxel_mm3
        if uncertain_mm3:
            reasons.append(f"{uncertain_mm3:.0f} mm³ of uncertain voxels (entropy ≥ {UNCERTAIN_NATS} nats)")
        inside = [lesion for lesion in np.unique(lesions[box][mask]) if lesion and unsure[lesion]]
        if inside:
            largest = max(inside, key=lambda lesion: lesion_sizes[lesion])
            what = (f"a predicted lesion of {lesion_sizes[largest] * voxel_mm3:.0f} mm³" if len(inside) == 1 else
                    f"{len(inside)} predicted lesions, the largest {lesion_sizes[largest] * voxel_mm3:.0f} mm³")
            reasons.append(f"{what} the network is unsure of (mean entropy {lesion_entropy[largest]:.2f} nats)")
        reasons.append("outside the predicted tumour: a possible miss" if share == 0 else
                       "mostly inside the predicted tumour" if share >= 0.5 else "at the edge of the predicted tumour")
        where = np.argwhere(mask) + [s.start for s in box]
        regions.append(ReviewRegion(rank, round(len(where) * voxel_mm3, 2), round(float(mass[label - 1]), 3),
                                    round(float(values.mean()), 4), round(float(values.max()), 4), round(share, 4),
                                    place_of(where, grid), "; ".join(reasons)))
    return review, regions


def lesion_auroc(rows: Sequence[LesionRow]) -> dict:
    """Per uncertainty map: the AUROC of its mean inside a lesion for telling false-positive from true-positive
    predicted lesions (all regions pooled), with the counts; NaN when either kind is missing."""
    kept = [row for row in rows if row.match in ("TP", "FP")]
    false = np.array([row.match == "FP" for row in kept], dtype=bool)
    names = list(kept[0].uncertainty) if kept else []
    return {"tp": int((~false).sum()), "fp": int(false.sum()),
            "auroc": {name: _finite(auroc(np.array([row.uncertainty[name]["mean"] for row in kept]), false))
                      for name in names}}


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 4)


def error_lesions(scores: dict[str, LesionScores | None], shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Every false-positive component and missed lesion of every region (as :func:`_labelling` matches them) as
    one id (0: none) over the volume, and their count; where the regions' lesions overlap, the later region's id
    stands (each still counts once)."""
    ids = np.zeros(shape, dtype=np.int32)
    count = 0
    for region in REGIONS:
        found = scores.get(region)
        if found is None:
            continue
        labels, lesions, entries = _labelling(np.zeros(shape, dtype=bool), found)
        errors = [number for number, entry in enumerate(entries, start=1) if entry["match"] in ("FP", "FN")]
        renumber = np.zeros(lesions + 1, dtype=np.int32)
        renumber[errors] = np.arange(count + 1, count + 1 + len(errors))
        renumbered = renumber[labels]
        ids = np.where(renumbered > 0, renumbered, ids)
        count += len(errors)
    return ids, count


def boundary_band(tumour: np.ndarray, brain: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The brain's voxels (flat indices) ordered by their distance (mm) to the predicted tumour's surface, on either
    side: the first n of them are the n-voxel band a reader who checks the segmentation's edges looks at. Empty
    when nothing is predicted."""
    if not tumour.any():
        return np.zeros(0, dtype=np.int64)
    distance = np.where(tumour, ndimage.distance_transform_edt(tumour, sampling=spacing),
                        ndimage.distance_transform_edt(~tumour, sampling=spacing))
    inside = np.flatnonzero(brain)
    return inside[np.argsort(distance.ravel()[inside], kind="stable")]


def review_coverage(review: np.ndarray, prediction: np.ndarray, truth: np.ndarray, brain: np.ndarray,
                    scores: dict[str, LesionScores | None], spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    ks: Sequence[int] = TOP_K, draws: int = RANDOM_DRAWS, seed: int = 0) -> dict:
    """How much of what is wrong the top-k review regions hold — the share of misclassified voxels inside them and
    the share of FP/FN lesions (:func:`error_lesions`) they touch — beside two controls that need no ground truth
    either: ``draws`` random placements of the same regions' shapes in the brain (seeded; mean and 2.5–97.5
    percentiles) and the band of as many brain voxels nearest the predicted tumour's surface (:func:`boundary_band`,
    ``spacing`` in mm, canonical order). Values are None where nothing is wrong."""
    wrong = (prediction != truth).ravel()
    errors = int(wrong.sum())
    lesions, lesion_count = error_lesions(scores, prediction.shape)
    lesions = lesions.ravel()
    ranks = int(review.max())
    ks = [k for k in ks if k <= ranks]
    shapes = [np.argwhere(review == rank) for rank in range(1, (max(ks) if ks else 0) + 1)]
    seen = np.zeros(review.size, dtype=bool)  # scratch: voxels already counted for this placement

    def shares(voxels: list[np.ndarray]) -> list[tuple[float | None, float | None]]:
        """Per k, the shares of the first k shapes (overlaps counted once)."""
        inside, hit, result = 0, np.zeros(lesion_count + 1, dtype=bool), []
        flats = [np.ravel_multi_index(shape.T, review.shape) for shape in voxels]
        for k, flat in enumerate(flats, start=1):
            new = flat[~seen[flat]]
            seen[new] = True
            inside += int(wrong[new].sum())
            hit[lesions[new]] = True
            if k in ks:
                result.append((inside / errors if errors else None,
                               int(hit[1:].sum()) / lesion_count if lesion_count else None))
        for flat in flats:
            seen[flat] = False
        return result

    result = {"errors": errors, "error_lesions": lesion_count, "draws": draws, "seed": seed, "top": {}}
    rng = np.random.default_rng(seed)
    brain_voxels = np.argwhere(brain)
    found = shares(shapes)
    band = boundary_band(prediction > 0, brain, spacing)
    random = np.array([shares([_random_place(shape, brain, brain_voxels, rng) for shape in shapes])
                       for _ in range(draws)], dtype=float).reshape(draws, len(ks), 2)
    for position, k in enumerate(ks):
        inside, hit = found[position]
        voxels = int(sum(len(shape) for shape in shapes[:k]))  # the ranks are disjoint
        edge = band[:voxels]
        result["top"][str(k)] = {
            "voxels": voxels, "errors_inside": _round(inside), "error_lesions_hit": _round(hit),
            "boundary": {"errors_inside": _round(int(wrong[edge].sum()) / errors) if errors else None,
                         "error_lesions_hit": _round(len(np.setdiff1d(lesions[edge], [0])) / lesion_count)
                         if lesion_count else None} if len(band) else None,
            "random": {name: _spread(random[:, position, column]) for column, name in
                       enumerate(("errors_inside", "error_lesions_hit"))}}
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _spread(values: np.ndarray) -> dict | None:
    if np.isnan(values).all():
        return None
    low, high = np.percentile(values, (2.5, 97.5))
    return {"mean": round(float(values.mean()), 4), "low": round(float(low), 4), "high": round(float(high), 4)}


def _random_place(shape: np.ndarray, brain: np.ndarray, brain_voxels: np.ndarray, rng: np.random.Generator,
                  tries: int = 20) -> np.ndarray:
    """``shape``'s voxels ``(n, 3)`` moved so its voxel nearest the centre lands on a random brain voxel, the part
    inside the brain kept; drawn again (up to ``tries``) until :data:`_IN_BRAIN` of it lies there."""
    anchor = shape[np.argmin(((shape - shape.mean(0)) ** 2).sum(1))]
    bounds = np.array(brain.shape)
    for attempt in range(tries):
        moved = shape - anchor + brain_voxels[rng.integers(len(brain_voxels))]
        moved = moved[((moved >= 0) & (moved < bounds)).all(1)]
        kept = moved[brain[tuple(moved.T)]]
        if len(kept) >= _IN_BRAIN * len(shape) or attempt == tries - 1:
            return kept if len(kept) else shape
    return shape
