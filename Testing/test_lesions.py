"""BraTS 2023 lesion-wise scores: the HD95 against DeepMind's surface-distance (the challenge's own), and the lesion
matching on a case built so that every rule of the challenge's algorithm decides one lesion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import surface_distance
from scipy import ndimage

from BrainTumorExplainLib.app.cli import main
from BrainTumorExplainLib.scoring.lesions import CHALLENGES, MISS_HD95_MM, LesionRule, lesion_wise, robust_hausdorff
from BrainTumorExplainLib.scoring.metrics import hd95


def _ball(shape, centre, radius, scale=(1.0, 1.0, 1.0)):
    grid = np.indices(shape).astype(float)
    return sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, scale)) <= radius ** 2


def _deepmind(prediction, truth, spacing):
    return surface_distance.compute_robust_hausdorff(
        surface_distance.compute_surface_distances(truth, prediction, spacing), 95)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 0.9, 2.0), (3.0, 1.0, 1.0)])
def test_hd95_is_deepminds_robust_hausdorff(spacing):
    truth = _ball((40, 50, 45), (20, 25, 22), 10)
    prediction = _ball((40, 50, 45), (18, 22, 25), 7, scale=(1.0, 1.0, 1.5))
    ours = robust_hausdorff(prediction, truth, spacing)
    assert ours == pytest.approx(_deepmind(prediction, truth, spacing), rel=1e-6)
    assert robust_hausdorff(truth, prediction, spacing) == pytest.approx(ours)  # symmetric
    assert robust_hausdorff(prediction, np.zeros_like(truth), spacing) == float("inf")
    assert robust_hausdorff(np.zeros_like(truth), np.zeros_like(truth), spacing) == 0.0


def test_the_challenges_hd95_is_not_the_legacy_one():
    ball = _ball((40, 40, 40), (20, 20, 20), 10)
    grown = ndimage.binary_dilation(ball, structure=np.ones((3, 3, 3)), iterations=2)
    assert robust_hausdorff(grown, ball, (1, 1, 1)) == pytest.approx(3.0)
    assert hd95(grown, ball, (1, 1, 1)) == pytest.approx(np.sqrt(12))


def _built_case():
    """Ground truth: A (a 10³ cube, predicted shifted by 2), B (two 6³ fragments 3 voxels apart — one lesion after
    the 3-voxel dilation — predicted as one block), C (a 3³ cube: 27 mm³, under the threshold, touched by a
    prediction), D (a 6³ cube, missed); the prediction also has E, a 4³ false positive far from everything."""
    truth = np.zeros((60, 60, 60), bool)
    prediction = np.zeros_like(truth)
    truth[5:15, 5:15, 5:15] = True  # A
    prediction[7:17, 5:15, 5:15] = True
    truth[30:36, 5:11, 5:11] = truth[30:36, 14:20, 5:11] = True  # B, two fragments
    prediction[30:36, 5:20, 5:11] = True
    truth[5:8, 40:43, 40:43] = True  # C
    prediction[8:10, 40:43, 40:43] = True  # touches C's dilation only
    truth[40:46, 40:46, 5:11] = True  # D
    prediction[50:54, 50:54, 50:54] = True  # E
    return prediction, truth


def test_lesion_matching_follows_the_challenge_rules():
    prediction, truth = _built_case()
    spacing = (1.0, 1.0, 1.0)
    scores = lesion_wise(prediction, truth, spacing)
    assert len(scores.lesions) == 4  # A, B (merged), C, D
    a, c, b, d = scores.lesions  # labels follow the dilated components, in raster order
    assert [lesion.volume_mm3 for lesion in scores.lesions] == [1000.0, 27.0, 432.0, 216.0]
    assert a.dice == pytest.approx(2 * 800 / 2000) and b.dice == pytest.approx(2 * 432 / (432 + 540))
    assert c.matches and not c.scored and not d.matches and d.dice == 0 and d.hd95_mm == MISS_HD95_MM
    lesion_a = np.zeros_like(truth)
    lesion_a[5:15, 5:15, 5:15] = True
    predicted_a = np.zeros_like(truth)
    predicted_a[7:17, 5:15, 5:15] = True
    assert a.hd95_mm == pytest.approx(_deepmind(predicted_a, lesion_a, spacing), rel=1e-6)
    assert (scores.tp, scores.fp, scores.fn) == (2, 1, 1)  # C is neither: under the threshold; E is the one FP
    assert scores.false_positive_volumes_mm3 == (64.0,)
    assert scores.dice == pytest.approx((a.dice + b.dice + 0 + 0) / 4)
    assert scores.hd95_mm == pytest.approx((a.hd95_mm + b.hd95_mm + 2 * MISS_HD95_MM) / 4)
    tp = int((prediction & truth).sum())
    assert scores.sensitivity == pytest.approx(tp / truth.sum())
    assert scores.specificity == pytest.approx((~prediction & ~truth).sum() / (~truth).sum())
    # without the dilation B's fragments are two lesions, each touched by the one predicted block
    split = lesion_wise(prediction, truth, spacing, LesionRule(dilation=0, min_volume_mm3=50))
    assert len(split.lesions) == 5 and split.tp == 3
    # the metastasis rule (1-voxel dilation, 2 mm³) keeps B's fragments apart and scores C: A, B twice, C
    assert lesion_wise(prediction, truth, spacing, CHALLENGES["BraTS-MET"]).tp == 4
    # voxels of 2 mm³: volumes double, so C (54 mm³) is scored
    assert lesion_wise(prediction, truth, (2.0, 1.0, 1.0)).tp == 3


def test_cropping_is_exact():
    prediction, truth = _built_case()
    small = lesion_wise(prediction, truth, (1.0, 1.0, 1.0))
    padded = [np.pad(mask, ((30, 10), (0, 25), (7, 7))) for mask in (prediction, truth)]
    large = lesion_wise(*padded, (1.0, 1.0, 1.0))
    assert (large.dice, large.hd95_mm, large.tp, large.fp, large.fn) == (
        small.dice, small.hd95_mm, small.tp, small.fp, small.fn)
    assert large.lesions == small.lesions and large.sensitivity == small.sensitivity


def test_empty_regions():
    empty = np.zeros((20, 20, 20), bool)
    blob = empty.copy()
    blob[5:10, 5:10, 5:10] = True
    nothing = lesion_wise(empty, empty, (1, 1, 1))
    assert (nothing.dice, nothing.hd95_mm, nothing.tp, nothing.fp, nothing.fn) == (1.0, 0.0, 0, 0, 0)
    assert (nothing.sensitivity, nothing.specificity) == (1.0, 1.0)
    false_alarm = lesion_wise(blob, empty, (1, 1, 1))
    assert (false_alarm.dice, false_alarm.hd95_mm, false_alarm.fp, false_alarm.sensitivity) == (
        0.0, MISS_HD95_MM, 1, 0.0)
    missed = lesion_wise(empty, blob, (1, 1, 1))
    assert (missed.dice, missed.hd95_mm, missed.fn, missed.sensitivity, missed.specificity) == (
        0.0, MISS_HD95_MM, 1, 0.0, 1.0)


def _label_file(array, path):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path))
    return str(path)


def test_score_reads_both_label_conventions_the_same(tmp_path, capsys):
    prediction, truth = _built_case()
    et = np.zeros(truth.shape, np.uint8)
    as_2021 = [np.where(mask, 4, 0) + et for mask in (prediction, truth)]  # everything enhancing tumour: ET = 4
    as_2023 = [np.where(mask, 3, 0) for mask in (prediction, truth)]  # ET = 3
    results = []
    for name, (p, t), labels in (("2021", as_2021, "brats2021"), ("2023", as_2023, "brats2023")):
        out = tmp_path / f"{name}.json"
        assert main(["score", "--pred", _label_file(p, tmp_path / f"p{name}.nii.gz"), "--gt",
                     _label_file(t, tmp_path / f"t{name}.nii.gz"), "--labels", labels, "--json", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0] == results[1]
    expected = lesion_wise(prediction, truth, (1.0, 1.0, 1.0))
    assert results[0]["ET"]["lesion_dice"] == pytest.approx(expected.dice)
    assert (results[0]["ET"]["lesion_tp"], results[0]["ET"]["lesion_fp"], results[0]["ET"]["lesion_fn"]) == (2, 1, 1)
    assert "L-Dice" in capsys.readouterr().out
    assert main(["score", "--pred", str(tmp_path / "p2021.nii.gz"), "--gt", str(tmp_path / "t2021.nii.gz"),
                 "--dilation", "-1"]) == 2
