"""Test-time-dropout uncertainty: the statistics against direct formulas, seeding, dropout-only sampling, the
adaptive quick mode, AUROC, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from BrainTumorExplainLib.analyses.uncertainty import (
    SamplingPlan,
    _RunningMoments,
    auroc,
    average_precision,
    near_tumour,
    ttd_batch,
    uncertainty_error_analysis,
    uncertainty_volume,
)
from BrainTumorExplainLib.data.case import load_case
from BrainTumorExplainLib.data.labels import one_hot
from BrainTumorExplainLib.errors import UsageError
from BrainTumorExplainLib.models import build_model
from BrainTumorExplainLib.models.base import SegmentationNet, test_time_dropout
from BrainTumorExplainLib.scoring.calibration import CalibrationBins


def test_running_moments_match_the_direct_formulas():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.softmax(torch.randn(30, 2, 4, 5, 6, generator=generator) * 2, dim=2)  # (T, N, C, H, W)
    moments = _RunningMoments((2, 4, 5, 6), torch.device("cpu"))
    for chunk in probabilities.split(7):
        moments.add(chunk)
    p = probabilities.double()
    mean = p.mean(0)
    variance = p.var(0, unbiased=False).mean(1)  # eq. 9b, channel mean
    entropy = -(mean * mean.log()).sum(1)
    expected_entropy = -(p * p.log()).sum(2).mean(0)
    close = {"rtol": 1e-4, "atol": 1e-6, "check_dtype": False}  # float32 running sums against float64 formulas
    torch.testing.assert_close(moments.mean(), mean, **close)
    torch.testing.assert_close(moments.variance(), variance, **close)
    torch.testing.assert_close(moments.entropy(), entropy, **close)
    torch.testing.assert_close(moments.mutual_information(), (entropy - expected_entropy).clamp_min(0), **close)
    assert (moments.mutual_information() <= moments.entropy() + 1e-6).all()


@pytest.fixture(scope="module")
def case_and_model(small_phantom):
    torch.manual_seed(0)
    model = build_model("resunet", width=0.0625, dropout=0.3).eval()
    return load_case(small_phantom.flair.parent), model


def test_seeded_reproducible_and_leaves_the_callers_rng_and_model_alone(case_and_model):
    case, model = case_and_model
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    running = {name: buffer.clone() for name, buffer in model.named_buffers()}
    a = uncertainty_volume(model, case, passes=6, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not model.training and all(not m.training for m in model.modules())
    assert all(torch.equal(buffer, running[name]) for name, buffer in model.named_buffers())  # BatchNorm untouched
    b = uncertainty_volume(model, case, passes=6, seed=7)
    c = uncertainty_volume(model, case, passes=6, seed=8)
    np.testing.assert_array_equal(a.variance, b.variance)
    assert not np.array_equal(a.variance, c.variance)


def test_only_dropout_samples_and_outputs_are_consistent(case_and_model):
    case, model = case_and_model
    volume = uncertainty_volume(model, case, passes=8, seed=0, slices_per_batch=8, passes_per_forward=3)
    brain = case.brain_mask
    assert (volume.passes[case.brain_slices()] == 8).all() and (volume.passes[volume.passes > 0] == 8).all()
    assert volume.variance[brain].max() > 0  # dropout really samples
    assert not volume.variance[~brain].any() and (volume.labels[~brain] == 0).all()
    np.testing.assert_allclose(volume.mean[:, brain].sum(0), 1.0, atol=1e-5)
    assert (volume.mutual_information <= volume.entropy + 1e-6).all()
    # with dropout off, every pass is the same: zero variance and zero mutual information
    plain = build_model("resunet", width=0.0625, dropout=0.3).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.from_numpy(case.images[:, case.brain_slices()[:2]].transpose(1, 0, 2, 3).copy())
    for module in plain.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    with test_time_dropout(plain):
        moments, _ = ttd_batch(plain, x, SamplingPlan.fixed(4), passes_per_forward=2)
    assert float(moments.variance().max()) < 1e-10 and float(moments.mutual_information().max()) < 1e-6


def test_quick_mode_stops_between_its_bounds(case_and_model):
    case, model = case_and_model
    plan = SamplingPlan(min_passes=4, max_passes=16, round_passes=4, settle_r=0.5)
    volume = uncertainty_volume(model, case, plan=plan, seed=0)
    used = volume.passes[volume.passes > 0]
    assert used.min() >= 8 and used.max() <= 16  # the first comparison is possible after two rounds
    strict = uncertainty_volume(model, case, plan=SamplingPlan(4, 16, 4, settle_r=1.0), seed=0)
    assert (strict.passes[strict.passes > 0] == 16).all()


def test_auroc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 300).astype(float)
    positives = rng.random(300) < 0.3
    pos, neg = scores[positives], scores[~positives]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auroc(scores, positives) == pytest.approx(pairwise)
    assert auroc(positives.astype(float), positives) == 1.0
    assert np.isnan(auroc(scores, np.zeros(300, bool)))


def test_error_analysis_on_a_perfect_uncertainty_map(case_and_model):
    case, model = case_and_model
    volume = uncertainty_volume(model, case, passes=2, seed=0)
    wrong = volume.labels != case.labels
    volume.variance = wrong.astype(np.float32)  # a map that is high exactly where the prediction is wrong
    analysis = uncertainty_error_analysis(volume, case, bins=5)
    assert analysis["maps"]["uncertainty"]["auroc"] == pytest.approx(1.0)
    assert analysis["error_rate"] == pytest.approx(wrong[case.brain_mask].mean())
    assert analysis["maps"]["uncertainty"]["bins"][-1]["error_rate"] > analysis["maps"]["uncertainty"]["bins"][0]["error_rate"]


def test_the_control_is_the_deterministic_predictions_own_entropy(case_and_model):
    """The control: one eval-mode pass, its entropy's AUROC for its own errors — computed here the long way."""
    from BrainTumorExplainLib.analyses.uncertainty import deterministic_control
    from BrainTumorExplainLib.models.base import evaluating
    from BrainTumorExplainLib.models.inference import predict_probabilities

    case, model = case_and_model
    control = deterministic_control(model, case)
    with evaluating(model):
        p = predict_probabilities(model, case).astype(np.float64)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(0)
    wrong = (p.argmax(0) != case.labels)[case.brain_mask]
    assert control["error_rate"] == pytest.approx(wrong.mean())
    assert control["auroc"] == pytest.approx(auroc(entropy[case.brain_mask], wrong), abs=1e-4)
    assert deterministic_control(model, case) == control  # no sampling: the same every time


def test_average_precision_equals_scikit_learns_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    for scores in (rng.integers(0, 6, 500).astype(float), rng.random(500)):  # with ties and without
        positives = rng.random(500) < 0.2 + 0.5 * (scores > np.median(scores))
        assert average_precision(scores, positives) == pytest.approx(average_precision_score(positives, scores))
    assert average_precision(positives.astype(float), positives) == 1.0
    assert np.isnan(average_precision(scores, np.zeros(500, bool)))


def test_near_tumour_is_the_brain_within_the_margin_in_millimetres():
    labels = np.zeros((20, 40, 40), np.uint8)
    labels[10, 20, 20] = 2
    brain = np.ones_like(labels, bool)
    brain[:, :, 35:] = False
    near = near_tumour(labels, brain, spacing=(2.0, 1.0, 1.0), margin_mm=6)
    z, y, x = np.nonzero(near)
    assert near[10, 20, 20] and near[13, 20, 20] and not near[14, 20, 20]  # 3 slices of 2 mm: 6 mm
    assert near[10, 26, 20] and not near[10, 27, 20] and not near[10, 20, 35]  # outside the brain
    assert np.all(np.hypot(2 * (z - 10), np.hypot(y - 20, x - 20)) <= 6)
    assert not near_tumour(np.zeros_like(labels), brain, (1, 1, 1)).any()


def test_the_error_analysis_adds_calibration_near_tumour_and_the_control_on_the_same_errors(case_and_model):
    """Issue 41: the sampled maps and the control scored on the same (the mean prediction's) errors; when the two
    predictions agree, the control's same-error AUROC is its own; calibration of both, from the same bins."""
    from BrainTumorExplainLib.analyses.uncertainty import calibration, deterministic_control
    from BrainTumorExplainLib.models.inference import case_probabilities, labels_from_probabilities

    case, model = case_and_model
    volume = uncertainty_volume(model, case, passes=4, seed=0)
    analysis = uncertainty_error_analysis(volume, case, model=model)
    entry = analysis["maps"]["entropy"]
    assert 0 <= entry["auroc_near_tumour"] <= 1 and 0 <= entry["auprc"] <= 1
    assert analysis["near_tumour"]["voxels"] > 0 and 0 <= analysis["calibration"]["ece"] <= 1
    tumour = (volume.labels > 0) & case.brain_mask
    assert analysis["case_uncertainty"]["over"] == "predicted tumour"
    assert analysis["case_uncertainty"]["entropy"] == pytest.approx(volume.entropy[tumour].mean())
    probabilities = case_probabilities(model, case)
    deterministic = labels_from_probabilities(model, probabilities)
    control = deterministic_control(model, case, probabilities=probabilities, sampled_labels=deterministic)
    assert control["same_errors"]["auroc"] == pytest.approx(control["auroc"])
    near = near_tumour(deterministic, case.brain_mask, case.spacing)
    assert control["calibration"] == calibration(model, probabilities, case.labels, case.brain_mask, near)
    close = CalibrationBins(4).add(probabilities, one_hot(case.labels, 4), near)
    assert control["calibration"]["near_tumour"]["ece"] == pytest.approx(close.error()["top_label"])
    shown = sum(row["count"] for row in control["calibration"]["reliability"])
    assert shown == case.brain_mask.sum()
    other = deterministic_control(model, case, probabilities=probabilities, sampled_labels=volume.labels)
    errors = (volume.labels != case.labels)[case.brain_mask]
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-30, 1))).sum(0)[case.brain_mask]
    assert other["same_errors"]["auroc"] == pytest.approx(auroc(entropy, errors), abs=1e-4)


class NoDropout(SegmentationNet):
    architecture = "nodropout"
    divisor = 1

    def __init__(self) -> None:
        super().__init__()
        self.config = {}
        self.conv = nn.Conv2d(4, 4, 1)

    def _forward(self, x):
        return self.conv(x)


def test_bad_input(case_and_model):
    case, _ = case_and_model
    with pytest.raises(ValueError, match="no active dropout layer"):
        uncertainty_volume(NoDropout(), case, passes=4, method="dropout")
    with pytest.raises(ValueError, match="no active dropout layer"):
        uncertainty_volume(build_model("simunet", width=0.0625, dropout=0.0), case, passes=4, method="dropout")
    with pytest.raises(ValueError, match="unknown uncertainty method 'bayes'"):
        uncertainty_volume(case_and_model[1], case, method="bayes")
    with pytest.raises(ValueError, match="at least 2 passes"):
        SamplingPlan.fixed(1)
    unlabelled = type(case)(case.case_id, case.images, case.brain_mask, case.grid)
    volume = uncertainty_volume(case_and_model[1], case, passes=2)
    with pytest.raises(ValueError, match="needs ground truth"):
        uncertainty_error_analysis(volume, unlabelled)


def test_a_network_without_dropout_samples_its_mirrorings_and_says_so(case_and_model):
    """The one uncertainty function, for a 2D network as for a 3D one: without dropout, test-time flips — here of a
    per-pixel (1×1) network, which mirroring cannot change: every pass agrees."""
    case, _ = case_and_model
    volume = uncertainty_volume(NoDropout(), case)
    assert volume.method == "flips" and set(volume.passes[case.brain_slices()]) == {4}  # none, H, W, both
    assert float(volume.variance.max()) < 1e-6 and float(volume.mutual_information.max()) < 1e-6
    assert volume.entropy[case.brain_mask].max() > 0


def test_bfloat16_autocast_gives_the_same_prediction_and_bad_precision_is_refused(case_and_model):
    case, model = case_and_model
    full = uncertainty_volume(model, case, passes=4, seed=1)
    half = uncertainty_volume(model, case, passes=4, seed=1, precision="bfloat16")
    assert half.mean.dtype == np.float32 and np.isfinite(half.variance).all()
    brain = case.brain_mask
    assert np.abs(half.mean - full.mean)[:, brain].max() < 0.1  # bfloat16 rounding, same seed
    assert (half.labels[brain] == full.labels[brain]).mean() > 0.95
    with pytest.raises(ValueError, match="precision must be one of"):
        uncertainty_volume(model, case, passes=2, precision="float16")


def test_an_ensemble_is_the_spread_of_its_members(small_phantom, tmp_path):
    """Two weights files of one architecture: the mean is their mean prediction, the uncertainty the channel mean of
    their variance, the mutual information the entropy of the mean minus their mean entropy (numpy, from each
    member's own prediction); two copies of one file disagree nowhere."""
    from BrainTumorExplainLib.analyses.uncertainty import ensemble_uncertainty
    from BrainTumorExplainLib.models import build_model
    from BrainTumorExplainLib.models.inference import case_probabilities
    from BrainTumorExplainLib.models.registry import load_ensemble, save_weights

    files = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        files.append(tmp_path / f"member{seed}.pt")
        save_weights(build_model("simunet", width=0.125).eval(), files[-1])
    case = load_case(small_phantom.flair.parent)
    members = load_ensemble("simunet", files)
    result = ensemble_uncertainty(members, case)
    p = np.stack([case_probabilities(member, case) for member in members]).astype(np.float64)
    mean = p.mean(0)

    def entropy(q):
        return -(q * np.log(np.where(q > 0, q, 1))).sum(axis=-4)

    assert result.method == "ensemble" and set(np.unique(result.passes)) <= {0, 2}
    np.testing.assert_allclose(result.mean, mean, atol=1e-6)
    np.testing.assert_allclose(result.variance, ((p - mean) ** 2).mean(0).mean(0), atol=1e-6)
    np.testing.assert_allclose(result.mutual_information, np.clip(entropy(mean) - entropy(p).mean(0), 0, None),
                               atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.mean.argmax(0))
    assert result.variance[case.brain_mask].max() > 1e-4  # two random networks do disagree
    same = ensemble_uncertainty(load_ensemble("simunet", [files[0], files[0]]), case)
    assert same.variance.max() < 1e-6 and same.mutual_information.max() < 1e-5
    with pytest.raises(UsageError, match="at least two"):
        load_ensemble("simunet", files[:1])
