"""Where to look (analyses.review): the lesion table against the BraTS lesion-wise matching on crafted cases with
known answers, places against SimpleITK's geometry, the review regions' ranking and reasons, and the coverage
measurement against random placements and the band along the tumour's surface."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorExplainLib.analyses.review import (
    FIRES,
    UNCERTAIN_NATS,
    CamStack,
    boundary_band,
    lesion_auroc,
    lesion_table,
    place_of,
    review_coverage,
    review_regions,
)
from BrainTumorExplainLib.data.grid import ReferenceGrid
from BrainTumorExplainLib.scoring.metrics import score_segmentation

SHAPE = (40, 48, 56)


def _grid(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(1.0, 1.0, 1.0)) -> ReferenceGrid:
    image = sitk.Image(SHAPE[2], SHAPE[1], SHAPE[0], sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetOrigin((12.5, -30.0, 4.0))
    image.SetDirection(direction)
    return ReferenceGrid.from_image(image)


def _ball(centre, radius) -> np.ndarray:
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


@pytest.fixture()
def crafted():
    """Truth: a big oedema lesion (ball r=6) and a far one (r=4) the prediction misses; prediction: the big one
    shifted by one voxel, plus a false-positive ball (r=2) far from both."""
    truth = np.zeros(SHAPE, np.uint8)
    truth[_ball((20, 16, 16), 6)] = 2
    truth[_ball((20, 34, 42), 4)] = 2
    prediction = np.zeros(SHAPE, np.uint8)
    prediction[_ball((20, 17, 16), 6)] = 2
    prediction[_ball((8, 40, 10), 2)] = 2
    brain = np.zeros(SHAPE, bool)
    brain[2:-2, 2:-2, 2:-2] = True
    return prediction, truth, brain


def test_lesion_rows_match_the_challenge_matching_and_their_own_sums(crafted):
    prediction, truth, brain = crafted
    grid = _grid()
    scores = score_segmentation(prediction, truth, grid.canonical_spacing)
    uncertainty = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    rows = [row for row in lesion_table(prediction, grid, brain, {"uncertainty": uncertainty},
                                        {region: score.lesions for region, score in scores.items()})
            if row.region == "WT"]
    assert [row.match for row in rows] == ["FP", "TP", "FN"]  # predicted components in raster order, then the miss
    wt = scores["WT"].lesions
    assert (wt.tp, wt.fp, wt.fn) == (1, 1, 1)
    fp, tp, fn = rows
    big = next(lesion for lesion in wt.lesions if lesion.matches)
    assert tp.dice == pytest.approx(big.dice, abs=1e-4) and fp.dice == fn.dice == 0.0
    assert tp.volume_mm3 == int(_ball((20, 17, 16), 6).sum())
    assert fn.volume_mm3 == int(_ball((20, 34, 42), 4).sum())
    inside = _ball((8, 40, 10), 2)
    assert fp.uncertainty["uncertainty"]["mean"] == pytest.approx(float(uncertainty[inside].mean()), abs=1e-5)
    assert fp.uncertainty["uncertainty"]["max"] == pytest.approx(float(uncertainty[inside].max()), abs=1e-5)
    assert fp.place.canonical[0] == 8 and tuple(fp.place.ijk) == (10, 40, 8)  # its centre voxel, (i, j, k) of the file
    # without ground truth: the same two predicted components, unmatched
    alone = [row for row in lesion_table(prediction, grid, brain, {"uncertainty": uncertainty}) if row.region == "WT"]
    assert [row.match for row in alone] == [None, None] and [row.volume_mm3 for row in alone] == [fp.volume_mm3,
                                                                                                  tp.volume_mm3]


def test_gradcam_shares_and_detectors_per_lesion(crafted):
    prediction, truth, brain = crafted
    grid = _grid()
    lesion = _ball((8, 40, 10), 2)
    flat = brain.astype(np.float32)  # a flat map: share = chance, never concentrated
    focused = np.where(lesion, 1.0, 0.0).astype(np.float32)
    cams = CamStack(["enc", "dec", "head"], ["ED"], "dec", {("enc", "ED"): flat, ("dec", "ED"): focused,
                                                   ("head", "ED"): flat})
    detector = lesion & (np.arange(SHAPE[2]) < 10)  # covers about half of the lesion
    rows = lesion_table(prediction, grid, brain, {}, cams=cams, detectors={"dec #3: ED": detector})
    fp = next(row for row in rows if row.region == "WT" and row.volume_mm3 == int(lesion.sum()))
    assert fp.gradcam["ED"] == {"last_layer": 1.0, "first_concentrated": "dec"}  # dec: the layer before the head
    share = detector.sum() / lesion.sum()
    assert share >= FIRES and fp.detectors == {"dec #3: ED": pytest.approx(share, abs=1e-4)}
    big = next(row for row in rows if row.region == "WT" and row is not fp)
    assert big.gradcam["ED"]["first_concentrated"] is None and big.detectors == {}


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, -1, 1, 0, 0, 0, -1, 0)])
def test_places_are_where_simpleitk_puts_the_voxel(direction):
    grid = _grid(direction, spacing=(0.9, 1.2, 3.0))
    shape = grid.canonical_shape
    mask = np.zeros(shape, bool)
    mask[3:6, 4:9, 2:5] = True
    place = place_of(np.argwhere(mask), grid)
    image = sitk.Image(grid.size, sitk.sitkUInt8)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    lps = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in place.ijk))
    assert place.ras == pytest.approx((-lps[0], -lps[1], lps[2]), abs=0.01)
    # the place is the mask's centre voxel, (4, 6, 3) canonical, as the file's index
    canonical = np.zeros(shape, bool)
    canonical[4, 6, 3] = True
    assert tuple(np.argwhere(grid.reorientation.from_canonical(canonical))[0][::-1]) == place.ijk and place.canonical[0] == 4


def test_review_regions_rank_by_uncertainty_mass_and_say_why(crafted):
    prediction, _, brain = crafted
    grid = _grid()
    entropy = np.zeros(SHAPE, np.float32)
    miss = _ball((30, 10, 40), 3)  # uncertain, nothing predicted: a possible miss
    entropy[miss] = 0.9
    edge = _ball((20, 17, 16), 7) & ~_ball((20, 17, 16), 5.5)  # the big lesion's edge, less uncertain
    entropy[edge] = 0.6
    entropy[_ball((8, 40, 10), 2)] = 0.3  # the small predicted lesion: unsure on average, no voxel over the bar
    review, regions = review_regions(prediction, entropy, brain, grid)
    assert [region.rank for region in regions] == list(range(1, len(regions) + 1))
    masses = [region.uncertainty_mass for region in regions]
    assert masses == sorted(masses, reverse=True)
    by_volume = {region.volume_mm3: region for region in regions}
    assert by_volume[float(edge.sum())].rank == 1 and "at the edge" in by_volume[float(edge.sum())].why
    missed = by_volume[float(miss.sum())]
    assert "possible miss" in missed.why and f"entropy ≥ {UNCERTAIN_NATS}" in missed.why
    assert (review == missed.rank).sum() == miss.sum()
    unsure = by_volume[float(_ball((8, 40, 10), 2).sum())]
    assert "unsure of" in unsure.why and unsure.tumour_share == 1.0
    assert unsure.place.canonical[0] == 8 and review.dtype == np.uint8


def test_coverage_of_the_true_errors_beats_random_places(crafted):
    prediction, truth, brain = crafted
    grid = _grid()
    scores = {region: score.lesions for region, score in score_segmentation(prediction, truth,
                                                                            grid.canonical_spacing).items()}
    wrong = prediction != truth
    review = np.zeros(SHAPE, np.uint8)
    review[wrong] = 1  # a review region exactly on the errors
    coverage = review_coverage(review, prediction, truth, brain, scores, ks=(1, 3), draws=30, seed=5)
    top = coverage["top"]
    assert list(top) == ["1"]  # one region: k = 3 is not measured
    assert top["1"]["errors_inside"] == 1.0 and top["1"]["error_lesions_hit"] == 1.0
    assert coverage["error_lesions"] == 2  # the FP and the FN (oedema: WT only)
    assert top["1"]["random"]["errors_inside"]["high"] < 1.0
    band = top["1"]["boundary"]  # as many voxels along the predicted surface: the FP ball, not the far miss
    assert band["error_lesions_hit"] == 0.5 and 0 < band["errors_inside"] < 1.0
    again = review_coverage(review, prediction, truth, brain, scores, ks=(1,), draws=30, seed=5)
    assert again["top"]["1"] == top["1"]  # seeded
    nothing = review_coverage(review, np.zeros_like(prediction), truth, brain, scores, ks=(1,), draws=2)
    assert nothing["top"]["1"]["boundary"] is None  # no predicted surface to look along


def test_boundary_band_orders_the_brain_by_distance_to_the_tumour_surface():
    tumour = np.zeros(SHAPE, bool)
    tumour[:, :, 20:30] = True
    brain = np.ones(SHAPE, bool)
    brain[:, :, :5] = False
    band = boundary_band(tumour, brain, (1.0, 1.0, 2.0))  # x voxels 2 mm wide
    x = np.unravel_index(band, SHAPE)[2]
    slab = SHAPE[0] * SHAPE[1]
    assert len(band) == brain.sum() and x.min() == 5
    assert set(x[:4 * slab]) == {19, 20, 29, 30}  # 2 mm from the surface, on either side
    assert set(x[4 * slab:8 * slab]) == {18, 21, 28, 31}
    assert len(boundary_band(np.zeros(SHAPE, bool), brain, (1.0, 1.0, 1.0))) == 0


def test_lesion_auroc_separates_unsure_false_positives():
    from BrainTumorExplainLib.analyses.review import LesionRow, Place

    place = Place((0.0, 0.0, 0.0), (0, 0, 0), (0, 0, 0))

    def row(match, value):
        return LesionRow("WT", 1, match, 10.0, 0.0, place, {"u": {"mean": value, "max": value}})

    rows = [row("TP", 0.1), row("TP", 0.2), row("FP", 0.5), row("FP", 0.15), row("FN", 9.0), row("small", 9.0)]
    result = lesion_auroc(rows)
    assert (result["tp"], result["fp"]) == (2, 2) and result["auroc"]["u"] == pytest.approx(0.75)
    assert lesion_auroc([row("TP", 0.1)])["auroc"]["u"] is None
