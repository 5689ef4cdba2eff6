"""Issue 41: calibration (expected calibration error, reliability, temperature scaling) and failure detection
(risk–coverage), each against a peer or a known answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from BrainTumorExplainLib.data.labels import one_hot
from BrainTumorExplainLib.scoring.calibration import CalibrationBins, fit_temperature, scaled
from BrainTumorExplainLib.scoring.risk_coverage import aurc, aurc_against_chance, risk_coverage


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def _sampled_labels(p: np.ndarray, rng) -> np.ndarray:
    """One label per voxel drawn from the class probabilities ``p`` ``(C, N)``."""
    return (rng.random(p.shape[1])[None] > np.cumsum(p, 0)).sum(0).clip(max=p.shape[0] - 1)


@pytest.mark.parametrize("reduction", ["expected", "average", "maximum"])
def test_class_wise_calibration_error_equals_monai(reduction):
    """The same arrays through MONAI's CalibrationErrorMetric (one-hot truth, per channel, no reduction) and through
    our bins, fed in two halves as a streamed dataset would be."""
    from monai.metrics import CalibrationErrorMetric

    rng = np.random.default_rng(0)
    p = _softmax(rng.normal(0, 2, (4, 12, 10, 6))).astype(np.float32)
    truth = one_hot(_sampled_labels(_softmax(rng.normal(0, 1, (4, 720))), rng).reshape(12, 10, 6), 4)
    metric = CalibrationErrorMetric(num_bins=15, calibration_reduction=reduction, metric_reduction="none")
    metric(torch.from_numpy(p)[None], torch.from_numpy(truth).float()[None])
    theirs = metric.aggregate()[0].numpy()
    ours = CalibrationBins(4, 15).add(p[:, :6], truth[:, :6]) + CalibrationBins(4, 15).add(p[:, 6:], truth[:, 6:])
    np.testing.assert_allclose(ours.error(reduction)["classes"], theirs, atol=1e-5)
    assert ours.count[:4].sum() == 4 * 720 and ours.count[4].sum() == 720  # per class, and top-label


def test_calibrated_predictions_score_near_zero_and_overconfident_ones_do_not():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (4, 200_000))
    p = _softmax(z)
    truth = one_hot(_sampled_labels(p, rng), 4)  # drawn from p: calibrated by construction
    mask = rng.random(200_000) < 0.9
    calibrated = CalibrationBins(4).add(p, truth, mask)
    assert calibrated.count[4].sum() == mask.sum()
    assert calibrated.error()["top_label"] < 0.01 and calibrated.error()["class_mean"] < 0.01
    for row in calibrated.reliability():
        if row["count"] > 2000:
            assert row["accuracy"] == pytest.approx(row["confidence"], abs=0.03)
    overconfident = CalibrationBins(4).add(_softmax(3 * z), truth, mask)
    assert overconfident.error()["top_label"] > 0.1
    top = [row for row in overconfident.reliability() if row["count"] > 2000][-1]
    assert top["accuracy"] < top["confidence"] - 0.05  # says 0.95+, right less often


@pytest.mark.parametrize("outputs", ["softmax", "sigmoid"])
def test_temperature_scaling_finds_the_temperature_that_made_a_network_overconfident(outputs):
    """Truth drawn from the probabilities at logits z; the network reports logits 2.5 z: the fitted temperature is
    2.5 and dividing by it removes the miscalibration."""
    rng = np.random.default_rng(2)
    if outputs == "softmax":
        z = rng.normal(0, 1, (4, 100_000))
        truth = one_hot(_sampled_labels(_softmax(z), rng), 4)
        reported = _softmax(2.5 * z)
    else:
        z = rng.normal(0, 1.5, (3, 100_000))
        truth = rng.random(z.shape) < 1 / (1 + np.exp(-z))
        reported = 1 / (1 + np.exp(-2.5 * z))
    temperature = fit_temperature(reported, truth, outputs)
    assert temperature == pytest.approx(2.5, rel=0.05)
    before = CalibrationBins(len(z)).add(reported, truth, outputs=outputs).error()
    after = CalibrationBins(len(z)).add(scaled(reported, temperature, outputs), truth, outputs=outputs).error()
    assert after["top_label"] < 0.01 < 0.05 < before["top_label"]
    assert after["class_mean"] < before["class_mean"]
    np.testing.assert_allclose(scaled(reported, 1.0, outputs), reported, atol=1e-5)


def test_bad_calibration_input_is_named():
    with pytest.raises(ValueError, match="one shape"):
        CalibrationBins(4).add(np.zeros((4, 3)), np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="reduction must be one of"):
        CalibrationBins(4).error("median")
    with pytest.raises(ValueError, match="do not add up"):
        CalibrationBins(4) + CalibrationBins(3)
    empty = CalibrationBins(2).error()
    assert np.isnan(empty["top_label"]) and np.isnan(empty["class_mean"])


def test_risk_coverage_has_the_known_areas_of_perfect_reversed_and_uninformative_rankings():
    risk = np.array([0.1, 0.2, 0.3, 0.4])
    perfect = aurc(risk * 10, risk)
    assert perfect["aurc"] == pytest.approx((0.1 + 0.15 + 0.2 + 0.25) / 4) and perfect["e_aurc"] == pytest.approx(0)
    reversed_ = aurc(-risk, risk)
    assert reversed_["aurc"] == pytest.approx((0.4 + 0.35 + 0.3 + 0.25) / 4)
    flat = risk_coverage(np.ones(4), risk)  # no information: the mean risk at every coverage
    np.testing.assert_allclose(flat["risk"], 0.25)
    np.testing.assert_allclose(flat["coverage"], [0.25, 0.5, 0.75, 1.0])
    every_order = [aurc(np.argsort(order), risk)["aurc"] for order in itertools.permutations(range(4))]
    assert np.mean(every_order) == pytest.approx(aurc(np.zeros(4), risk)["aurc"]) == pytest.approx(0.25)
    assert perfect["random"] == pytest.approx(0.25) and perfect["n"] == 4
    with pytest.raises(ValueError, match="one risk per uncertainty"):
        aurc([0.1, 0.2], [0.3])
    with pytest.raises(ValueError, match="finite"):
        aurc([np.nan, 0.2], [0.3, 0.1])


def test_a_case_uncertainty_that_tracks_failure_beats_one_that_does_not():
    """Twenty cases whose risk grows with a hidden difficulty: an uncertainty that sees the difficulty through noise
    has a lower AURC than shuffled uncertainties (the same values, cases scrambled), and above the optimum."""
    rng = np.random.default_rng(5)
    difficulty = rng.random(20)
    risk = np.clip(0.05 + 0.5 * difficulty + rng.normal(0, 0.05, 20), 0, 1)
    seen = difficulty + rng.normal(0, 0.1, 20)
    shuffled = [aurc(rng.permutation(seen), risk)["aurc"] for _ in range(200)]
    found = aurc(seen, risk)
    assert found["optimal"] <= found["aurc"] < np.percentile(shuffled, 5)
    assert np.mean(shuffled) == pytest.approx(found["random"], abs=0.01)


def test_a_case_with_no_predicted_tumour_ranks_first_for_review():
    """Issue 41: a missed tumour has no mean uncertainty over its (empty) prediction; failure detection ranks it as
    the most uncertain case, so here the ranking is perfect (E-AURC 0) — not as the most certain one."""
    from BrainTumorExplainLib.app.cohort import failure_detection

    rows = [{"WT_dice": 0.9, "case_entropy": 0.1}, {"WT_dice": 0.0, "case_entropy": None},
            {"WT_dice": 0.7, "case_entropy": 0.3}, {"WT_dice": None, "case_entropy": 0.2}]
    found = failure_detection(rows)["entropy"]
    assert found["n"] == 3 and found["e_aurc"] == pytest.approx(0.0)
    assert failure_detection(rows[:1]) == {}


def test_a_ranking_against_chance_gives_the_spread_of_shuffled_rankings():
    rng = np.random.default_rng(6)
    risk = rng.random(30)
    perfect = aurc_against_chance(risk, risk, draws=500)
    assert perfect["aurc"] < perfect["low"] < perfect["high"] and perfect["p"] == pytest.approx(1 / 501)
    blind = aurc_against_chance(rng.random(30), risk, draws=500)
    assert blind["low"] < blind["aurc"] < blind["high"] and blind["p"] > 0.025
    assert aurc([None, 0.2], [0.9, 0.1])["e_aurc"] == pytest.approx(0.0)  # no value: ranked last, as most uncertain
