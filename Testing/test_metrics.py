"""Dice and HD95 against values computed by hand, anisotropic spacing included."""

import numpy as np
import pytest

from BrainTumorExplainLib.scoring.metrics import dice, hd95, score_segmentation


def _mask(shape, *voxels):
    mask = np.zeros(shape, dtype=bool)
    for voxel in voxels:
        mask[voxel] = True
    return mask


def test_dice_by_hand():
    p = _mask((4, 4, 4), (0, 0, 0), (0, 0, 1), (0, 0, 2))
    g = _mask((4, 4, 4), (0, 0, 1), (0, 0, 2), (0, 0, 3), (1, 1, 1))
    assert dice(p, g) == pytest.approx(2 * 2 / (3 + 4))
    assert dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))) == 1.0
    assert dice(p, np.zeros_like(p)) == 0.0


def test_hd95_between_two_voxels_uses_spacing():
    spacing = (3.0, 0.5, 1.25)  # anisotropic (z, y, x)
    p = _mask((10, 10, 10), (1, 2, 3))
    g = _mask((10, 10, 10), (5, 2, 7))
    assert hd95(p, g, spacing) == pytest.approx(np.hypot(4 * 3.0, 4 * 1.25))


def test_hd95_takes_the_larger_directed_95th_percentile():
    # P = {a}; G = {a, b} with |ab| = d.  P→G distances: [0]; G→P: [0, d] → 95th percentile (linear) = 0.95 d.
    spacing = (2.0, 1.0, 1.0)
    p = _mask((8, 8, 8), (1, 1, 1))
    g = _mask((8, 8, 8), (1, 1, 1), (4, 1, 1))
    assert hd95(p, g, spacing) == pytest.approx(0.95 * 3 * 2.0)
    assert hd95(g, p, spacing) == pytest.approx(0.95 * 3 * 2.0)  # symmetric


def test_hd95_of_shifted_slabs_is_the_shift_in_mm():
    # Two full-width slabs, 2 voxels thick, 3 voxels apart along an axis of 2.5 mm spacing.
    p = np.zeros((10, 6, 6), bool)
    g = np.zeros((10, 6, 6), bool)
    p[2:4], g[5:7] = True, True
    # With the full in-plane extent every voxel of a 2-thick slab is a surface voxel; P planes z=2,3 to the nearest
    # G plane z=5 are 3 and 2 voxels: 95th percentile of {3 (36×), 2 (36×)} = 3; symmetric by construction.
    assert hd95(p, g, (2.5, 1.0, 1.0)) == pytest.approx(3 * 2.5)


def test_empty_conventions():
    empty = np.zeros((240, 240, 155), bool)
    one = empty.copy()
    one[10, 10, 10] = True
    assert hd95(empty, empty, (1, 1, 1)) == 0.0
    assert hd95(one, empty, (1, 1, 1)) == pytest.approx(373.13, abs=0.01)  # BraTS's value: the grid diagonal


def test_score_segmentation_uses_brats_regions():
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1, 1, 1:4] = [1, 2, 3]
    prediction = truth.copy()
    prediction[1, 1, 3] = 2  # ET predicted as edema: WT perfect, TC half, ET missed
    scores = score_segmentation(prediction, truth, (1.0, 1.0, 1.0))
    assert scores["WT"].dice == 1.0
    assert scores["TC"].dice == pytest.approx(2 * 1 / (1 + 2))
    assert scores["ET"].dice == 0.0 and scores["ET"].truth_voxels == 1


def test_shape_and_spacing_mismatch_are_errors():
    with pytest.raises(ValueError, match="prediction shape"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 1.0))
