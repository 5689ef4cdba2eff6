"""Test-time-dropout uncertainty (paper §5, eq. 9; Gal & Ghahramani 2016, Kendall et al. 2015).

``T`` stochastic passes with only the dropout modules sampling (BatchNorm stays on its running statistics):

* prediction: the mean softmax ``p̄ = 1/T Σ_t p_t`` (eq. 9a), labels ``argmax p̄``;
* **uncertainty** (the paper's map): per class the variance ``1/T Σ_t p_t² − p̄²`` (eq. 9b), averaged over the four
  classes ("channel mean", Kendall et al.);
* **predictive entropy** ``H[p̄] = −Σ_c p̄_c log p̄_c`` (nats): total uncertainty;
* **mutual information** ``H[p̄] − 1/T Σ_t H[p_t]`` (nats; BALD): the epistemic part — how much the passes disagree,
  as opposed to each being unsure.

Everything is a running sum, so memory does not depend on ``T``. Passes are batched: a forward pass carries
several copies of each slice, and dropout draws an independent mask per copy, so one forward is several passes.
Seeded: the dropout masks come from a forked torch RNG seeded with ``seed``; the caller's RNG state is untouched.

Cropping to the brain's bounding box was measured and **not** adopted: even with crops aligned to the networks'
pooling grid and 16 px margins, 0.2–0.5 % of brain voxels change label on the shipped models (the networks see the
non-zero features of the zero background through their ~200 px receptive field). Slices without brain are skipped.

**Ensembles** (:func:`ensemble_uncertainty`; Lakshminarayanan et al. 2017): for a network without dropout, or
several trained copies of one (nnU-Net's folds), the same maps over the members' deterministic predictions instead
of the dropout passes — the spread between independently trained weights, not within one.

Quick mode (for a laptop CPU) is adaptive, per batch of slices: passes come in rounds that alternate between two
independent halves A and B. After each pair of rounds past the minimum, the split-half correlation r of the two
halves' uncertainty maps (Pearson, inside the brain) gives, by the Spearman–Brown formula, the reliability of the
combined map, R = 2r / (1 + r); its correlation with the map that infinitely many passes would give is about √R.
Sampling stops once √R reaches ``settle_r`` (0.9 in quick mode) or at ``max_passes`` (16). The measured agreement with
T = 100 is in docs/analyses.md.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..data.case import Case
from ..errors import UsageError
from ..models.base import evaluating, model_device, test_time_dropout
from ..models.inference import case_probabilities, labels_from_probabilities
from ..models.interface import analysed
from ..progress import progress_bar
from ..scoring.calibration import CalibrationBins


@dataclass(frozen=True)
class SamplingPlan:
    """How many stochastic passes: fixed (``min_passes == max_passes``) or adaptive in rounds of ``round_passes``,
    stopping when the estimated correlation with the infinite-pass map reaches ``settle_r`` (see the module notes)."""

    min_passes: int = 100
    max_passes: int = 100
    round_passes: int = 10
    settle_r: float = 0.9

    def __post_init__(self) -> None:
        if not 1 <= self.min_passes <= self.max_passes:
            raise UsageError(f"need 1 ≤ min_passes ≤ max_passes, got {self.min_passes}, {self.max_passes}")
        if self.round_passes < 1:
            raise UsageError(f"round_passes must be at least 1, got {self.round_passes}")

    @classmethod
    def fixed(cls, passes: int) -> "SamplingPlan":
        if passes < 2:
            raise UsageError(f"test-time dropout needs at least 2 passes for a variance, got {passes}")
        return cls(passes, passes, min(passes, 10))


QUICK = SamplingPlan(min_passes=8, max_passes=16, round_passes=4, settle_r=0.9)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else 1.0


class _RunningMoments:
    """Σp, Σp² and Σ H[p_t] per voxel of a batch ``(N, C, *spatial)``: all that eq. 9 and the mutual information
    need, for softmax classes or sigmoid regions (``outputs``; :func:`predictive_entropy`).

    float32 is enough: p lies in [0, 1] and at most a few hundred passes are summed, so the cancellation in
    E[p²] − E[p]² costs ~1e-7, far below any variance worth showing (float64 doubled the time of a CPU pass).
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device, outputs: str = "softmax") -> None:
        self.count = 0
        self.outputs = outputs
        self.sum = torch.zeros(shape, dtype=torch.float32, device=device)
        self.sum_squares = torch.zeros_like(self.sum)
        self.sum_entropy = torch.zeros((shape[0],) + shape[2:], dtype=torch.float32, device=device)

    def add(self, probabilities: torch.Tensor) -> None:  # (passes, N, C, *spatial)
        p = probabilities.float()
        self.count += p.shape[0]
        self.sum += p.sum(0)
        self.sum_squares += p.square().sum(0)
        self.sum_entropy += predictive_entropy(p.flatten(0, 1), self.outputs).view(
            p.shape[0], *self.sum_entropy.shape).sum(0)

    def merge(self, other: "_RunningMoments") -> "_RunningMoments":
        """The moments of both sets of passes together."""
        merged = _RunningMoments.__new__(_RunningMoments)
        merged.count = self.count + other.count
        merged.outputs = self.outputs
        merged.sum = self.sum + other.sum
        merged.sum_squares = self.sum_squares + other.sum_squares
        merged.sum_entropy = self.sum_entropy + other.sum_entropy
        return merged

    def mean(self) -> torch.Tensor:
        return self.sum / self.count

    def variance(self) -> torch.Tensor:
        """Channel mean of the per-class variance (eq. 9b)."""
        mean = self.mean()
        return (self.sum_squares / self.count - mean * mean).clamp_min(0).mean(1)

    def entropy(self) -> torch.Tensor:
        return predictive_entropy(self.mean(), self.outputs)

    def mutual_information(self) -> torch.Tensor:
        return (self.entropy() - self.sum_entropy / self.count).clamp_min(0)

    def stacked(self) -> torch.Tensor:
        """``(N, C + 3, *spatial)``: the mean, then the variance, entropy and mutual information."""
        return torch.cat([self.mean(), torch.stack([self.variance(), self.entropy(), self.mutual_information()],
                                                   dim=1)], dim=1)


def ttd_batch(network, inputs: torch.Tensor, plan: SamplingPlan, passes_per_forward: int,
              brain: torch.Tensor | None = None) -> tuple[_RunningMoments, int]:
    """Stochastic passes over a batch (``(N, 4, H, W)`` slices of a 2D network, the whole case of a 3D one); returns
    the moments and the passes used.

    Call inside ``test_time_dropout(module)`` with the RNG already seeded (as :func:`uncertainty_volume` does).
    ``brain`` (the batch's spatial shape, bool) limits the adaptive stopping rule to brain voxels.
    """
    network = analysed(network)
    halves: list[_RunningMoments] = []
    adaptive = plan.min_passes < plan.max_passes
    used, round_index = 0, 0
    with torch.no_grad():
        while used < plan.max_passes:
            round_end = min(used + plan.round_passes, plan.max_passes)
            while used < round_end:
                copies = min(passes_per_forward, round_end - used)
                p = network.sample(inputs, copies)
                if not halves:
                    halves = [_RunningMoments(p.shape[1:], p.device, network.outputs) for _ in range(2)]
                halves[round_index % 2].add(p)  # rounds alternate between two independent halves
                used += copies
            round_index += 1
            if used < plan.min_passes:
                continue
            if not adaptive:
                break
            if round_index % 2 == 0 and _estimated_agreement(halves, brain) >= plan.settle_r:
                break
    return halves[0].merge(halves[1]) if halves[1].count else halves[0], used


def flips_batch(network, inputs: torch.Tensor) -> tuple[_RunningMoments, int]:
    """Test-time mirroring of a batch: every combination of the network's mirror axes (none included), each undone
    on its output, as nnU-Net mirrors at inference."""
    network = analysed(network)
    axes = network.flip_axes()
    runs = [a for n in range(len(axes) + 1) for a in itertools.combinations(axes, n)]
    moments = None
    with torch.no_grad():
        for run in runs:
            p = (network.predict(inputs.flip(run)).flip(run) if run else network.predict(inputs))[None]
            moments = moments or _RunningMoments(p.shape[1:], p.device, network.outputs)
            moments.add(p)
    return moments, len(runs)


def _estimated_agreement(halves: list[_RunningMoments], brain: torch.Tensor | None) -> float:
    """√(Spearman–Brown(split-half r)): the expected correlation of the combined map with the infinite-pass map."""
    maps = [half.variance() for half in halves]
    if brain is not None:
        maps = [m[brain] for m in maps]
    r = max(_pearson(*maps), 0.0)
    return float(np.sqrt(2 * r / (1 + r)))


PRECISIONS = ("float32", "bfloat16")
# (slices, passes) per forward. GPU: large batches amortise kernel launches (14× the naive loop on an H200,
# BENCHMARKS.md). CPU: a 2-core EPYC ran 71–96 ms per image at batch 1–8 and 113–117 ms at 32 (cache), so small.
BATCHING: dict[str, tuple[int, int]] = {"cuda": (8, 25), "cpu": (1, 4)}


def batching(device: torch.device, slices_per_batch: int | None = None, passes_per_forward: int | None = None
             ) -> tuple[int, int]:
    """(slices, passes) per forward: the given ones, else :data:`BATCHING` for the device."""
    default_slices, default_passes = BATCHING.get(device.type, BATCHING["cpu"])
    return slices_per_batch or default_slices, passes_per_forward or default_passes


@dataclass
class UncertaintyVolume:
    """TTD results on a case's canonical grid (``(Z, Y, X)`` float32 unless noted); background where no brain."""

    mean: np.ndarray = field(repr=False)  # (4, Z, Y, X) mean softmax
    variance: np.ndarray = field(repr=False)  # the paper's uncertainty map
    entropy: np.ndarray = field(repr=False)
    mutual_information: np.ndarray = field(repr=False)
    passes: np.ndarray = field(repr=False)  # (Z,) passes used per slice (0: skipped, no brain)
    seed: int = 0
    method: str = "dropout"  # where the spread comes from: test-time "dropout", "flips" (augmentation), "ensemble"
    label_map: np.ndarray | None = field(default=None, repr=False)  # labels, when the outputs are not the classes

    @property
    def labels(self) -> np.ndarray:
        """Class indices (0..3) of the mean prediction."""
        return self.label_map if self.label_map is not None else self.mean.argmax(axis=0).astype(np.uint8)

    def maps(self) -> dict[str, np.ndarray]:
        return {"uncertainty": self.variance, "entropy": self.entropy, "mutual_information": self.mutual_information}


QUICK_VOLUME_PASSES = 8  # quick test-time dropout of a 3D network: each pass is a whole case, so a fixed few


def uncertainty_volume(network, case: Case, passes: int = 100, quick: bool = False,
                       plan: SamplingPlan | None = None, seed: int = 0, method: str | None = None,
                       slices_per_batch: int | None = None, passes_per_forward: int | None = None,
                       device: str | torch.device | None = None, precision: str = "float32",
                       progress: bool = False) -> UncertaintyVolume:
    """Uncertainty maps of ``case`` on its canonical grid, for every kind of network (:mod:`models.interface`).

    ``method``: ``dropout`` (the default for a network with dropout) — ``passes`` seeded test-time dropout passes, or
    the adaptive ``QUICK`` plan with ``quick=True`` (a 3D network: :data:`QUICK_VOLUME_PASSES` fixed), or any
    ``plan``; ``flips`` (the default without dropout) — the mirrorings of test-time augmentation. A 2D network runs
    over the brain slices, ``slices_per_batch × passes_per_forward`` images per forward (default: :data:`BATCHING`
    for the device); a 3D network over the whole case, one full window inference per pass.
    ``precision="bfloat16"`` runs the convolutions under autocast (GPUs, and CPUs with AVX512-BF16); the
    probabilities and the running moments stay float32."""
    network = analysed(network)
    name = network.name  # as the errors call it
    method = method or ("dropout" if network.has_dropout() else "flips")
    if method not in ("dropout", "flips"):
        raise UsageError(f"unknown uncertainty method {method!r}; expected dropout or flips")
    if method == "dropout" and not network.has_dropout():
        raise UsageError(f"{name} has no active dropout layer: test-time dropout needs a network trained with dropout "
                         "(p > 0); test-time augmentation (flips) needs none")
    if method == "flips" and len(network.flip_axes()) == 0:
        raise UsageError(f"{name} allows no test-time mirroring and has no dropout: nothing to sample its "
                         "uncertainty from (an nnU-Net folder: give several folds, --folds all)")
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if plan is None:
        plan = SamplingPlan.fixed(QUICK_VOLUME_PASSES) if quick and network.whole_case else QUICK if quick \
            else SamplingPlan.fixed(passes)
    device = model_device(network.module, device)
    slices_per_batch, passes_per_forward = batching(device, slices_per_batch, passes_per_forward)
    if network.whole_case:
        passes_per_forward = 1  # a pass is a whole window inference; one at a time keeps the seeded order

    used = np.zeros(case.brain_mask.shape[0], dtype=np.int32)  # passes per axial slice

    def batch_maps(inputs: torch.Tensor, slices) -> torch.Tensor:
        if method == "flips":
            moments, count = flips_batch(network, inputs)
        else:
            brain = None if slices is None else torch.from_numpy(case.brain_mask[slices]).to(device)
            moments, count = ttd_batch(network, inputs, plan, passes_per_forward, brain)
        used[slice(None) if slices is None else slices] = count
        return moments.stacked()

    devices = [device] if device.type == "cuda" else []
    label = f"{'TTD' if method == 'dropout' else 'flips'} {case.case_id}" if progress else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    sampling = test_time_dropout(network.module) if method == "dropout" else evaluating(network.module)
    channels = network.output_channels
    with torch.random.fork_rng(devices=devices), sampling, autocast:
        torch.manual_seed(seed)
        stacked = network.map_case(case, case.brain_slices(), batch_maps, channels + 3, slices_per_batch, device,
                                   label, per_window=False)
    mean, (variance, entropy, information) = stacked[:channels], stacked[channels:]
    if network.masks_outside_brain:
        outside = ~case.brain_mask
        mean[:, outside] = 0.0
        mean[0, outside] = 1.0
        for array in (variance, entropy, information):
            array[outside] = 0.0
    used[~case.brain_mask.any(axis=(1, 2))] = 0  # a whole-case pass: counted only where there is brain
    mean = np.ascontiguousarray(mean)
    return UncertaintyVolume(mean, variance, entropy, information, used, seed, method=method,
                             label_map=network.label_map(mean))


def predictive_entropy(p: torch.Tensor, outputs: str) -> torch.Tensor:
    """Predictive entropy (nats) per voxel of ``(N, C, ...)`` probabilities: categorical over softmax classes, or
    summed binary over sigmoid regions (each region a two-class prediction)."""
    if outputs == "softmax":
        return -torch.special.xlogy(p, p).sum(1)
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)).sum(1)


def ensemble_uncertainty(members: Sequence, case: Case, device: str | torch.device | None = None,
                         progress: bool = False) -> UncertaintyVolume:
    """The uncertainty maps of an ensemble (see the module notes): ``members`` are networks of one architecture
    (from :func:`models.registry.load_ensemble`), each run once, deterministically, on the whole case; the mean of
    their outputs is the prediction, and variance, entropy and mutual information come from their spread exactly as
    from the dropout passes. ``passes`` counts the members on every brain slice."""
    if len(members) < 2:
        raise UsageError(f"an ensemble needs at least two members, got {len(members)}")
    moments = None
    for member in progress_bar(members, f"ensemble {case.case_id}" if progress else None, unit="member"):
        p = torch.from_numpy(case_probabilities(member, case, device=device))[None]
        moments = moments or _RunningMoments(p.shape, p.device, output_kind(members[0]))
        moments.add(p[None])
    mean = moments.mean()[0].float().numpy()
    passes = np.where(case.brain_mask.any(axis=(1, 2)), moments.count, 0).astype(np.int32)
    return UncertaintyVolume(mean, moments.variance()[0].float().numpy(), moments.entropy()[0].float().numpy(),
                             moments.mutual_information()[0].float().numpy(), passes, method="ensemble",
                             label_map=labels_from_probabilities(members[0], mean))


def brain_pearson(a: np.ndarray, b: np.ndarray, brain: np.ndarray) -> float:
    """Pearson r of two maps over the brain voxels (quick mode's agreement with T=100)."""
    return _pearson(torch.from_numpy(a[brain]), torch.from_numpy(b[brain]))


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives`` (Mann–Whitney U with average ranks for
    ties); NaN when either class is empty."""
    from scipy.stats import rankdata

    scores, positives = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(positives, dtype=bool).ravel()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def output_kind(model) -> str:
    """``softmax`` (classes) or ``sigmoid`` (regions): what a network's outputs are (the paper's: softmax)."""
    return analysed(model).outputs


def deterministic_entropy(model, probabilities: np.ndarray) -> np.ndarray:
    """The predictive entropy (nats) of a network's deterministic output ``(C, Z, Y, X)`` — softmax classes or
    sigmoid regions, as the network makes them: the control every uncertainty map is held against."""
    return predictive_entropy(torch.from_numpy(probabilities)[None], output_kind(model))[0].numpy()


def decision_entropy(probabilities: np.ndarray, outputs: str) -> np.ndarray:
    """Per voxel of ``(C, Z, Y, X)`` probabilities, the entropy (nats) of its most uncertain decision: the
    categorical entropy over softmax classes (one decision), the highest binary entropy over sigmoid regions (one
    decision per region). One scale whatever the head — an 80/20 call is 0.50 nats either way — where the predictive
    entropy of region outputs sums the regions' (a voxel unsure of WT, TC and ET counts three times)."""
    p = torch.from_numpy(np.asarray(probabilities, dtype=np.float32))
    if outputs == "softmax":
        return (-torch.special.xlogy(p, p).sum(0)).numpy()
    return (-(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))).amax(0).numpy()


def deterministic_control(model, case: Case, device: str | torch.device | None = None,
                          probabilities: np.ndarray | None = None, sampled_labels: np.ndarray | None = None) -> dict:
    """The control of every uncertainty map: the predictive entropy of the network's own deterministic prediction
    (one pass in eval mode: no dropout, no flips; an nnU-Net folder's folds as it predicts), as an AUROC and AUPRC
    for that prediction's misclassified brain voxels, with the calibration of that pass. Sampling adds something
    only where a map beats it — a softmax is uncertain at its boundaries without any sampling. ``probabilities``:
    that prediction, when already made (the segmentation's, in ``explain``). ``sampled_labels``: the sampled mean
    prediction's labels — the control is then also scored on *their* errors (``same_errors``: over the brain and
    near the tumour), the errors the sampled maps are scored on, so that the two AUROCs compare like with like."""
    if case.labels is None:
        raise UsageError(f"{case.case_id}: the deterministic control needs ground truth (a _seg file)")
    if probabilities is None:
        probabilities = case_probabilities(model, case, device=device)
    entropy = deterministic_entropy(model, probabilities)
    brain = case.brain_mask
    labels = labels_from_probabilities(model, probabilities)
    wrong = (labels != case.labels)[brain]
    near_region = near_tumour(labels if sampled_labels is None else sampled_labels, brain, case.spacing)
    result = {"map": "entropy of one deterministic pass (no sampling)", "error_rate": float(wrong.mean()),
              "auroc": auroc(entropy[brain], wrong), "auprc": average_precision(entropy[brain], wrong),
              "calibration": calibration(model, probabilities, case.labels, brain, near_region)}
    if sampled_labels is not None:
        errors = (sampled_labels != case.labels)[brain]
        near = near_region[brain]
        result["same_errors"] = {"auroc": auroc(entropy[brain], errors),
                                 "auprc": average_precision(entropy[brain], errors),
                                 "auroc_near_tumour": auroc(entropy[brain][near], errors[near])}
    return result


NEAR_TUMOUR_MM = 10.0  # "near the tumour": brain voxels within this distance of the predicted whole tumour


def near_tumour(labels: np.ndarray, brain: np.ndarray, spacing: Sequence[float],
                margin_mm: float = NEAR_TUMOUR_MM) -> np.ndarray:
    """Brain voxels within ``margin_mm`` of the predicted whole tumour (``labels > 0``; ``spacing`` in mm per
    axis): where a reader looks, and where the errors of a good segmentation are. Empty without a tumour."""
    tumour = labels > 0
    if not tumour.any():
        return np.zeros_like(brain)
    return brain & (ndimage.distance_transform_edt(~tumour, sampling=spacing) <= margin_mm)


def calibration(model, probabilities: np.ndarray, labels: np.ndarray, brain: np.ndarray,
                near: np.ndarray | None = None) -> dict:
    """The calibration of a network's ``(C, Z, Y, X)`` outputs inside the brain against the class indices
    ``labels`` (:class:`scoring.calibration.CalibrationBins`): ``ece`` (top-label), ``ece_classes`` (MONAI's: the
    mean over output channels) and the top-label ``reliability`` diagram; with ``near`` (a mask: near the
    tumour), its ECEs as well — over the whole brain the certain, right voxels far from any tumour dominate."""
    network = analysed(model)
    truth = network.output_truth(labels)
    bins = CalibrationBins(network.output_channels).add(probabilities, truth, brain, network.outputs)
    error = bins.error()
    result = {"ece": error["top_label"], "ece_classes": error["class_mean"], "bins": bins.bins,
              "reliability": bins.reliability()}
    if near is not None:
        close = CalibrationBins(network.output_channels).add(probabilities, truth, near, network.outputs).error()
        result["near_tumour"] = {"ece": close["top_label"], "ece_classes": close["class_mean"]}
    return result


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision–recall curve of ``scores`` for the boolean ``positives``, as average precision
    (Σ over thresholds of the recall gained times the precision there; tied scores are one threshold, as
    scikit-learn's ``average_precision_score``); NaN without positives. Its chance level is the share of positives
    (the error rate), not 0.5."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    total = int(positives.sum())
    if total == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positives[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]  # the last voxel of each threshold
    true_positives = np.cumsum(hits)[last]
    precision = true_positives / (last + 1)
    recall_gained = np.diff(np.r_[0, true_positives]) / total
    return float((recall_gained * precision).sum())


def case_uncertainty(volume: UncertaintyVolume, brain: np.ndarray) -> dict:
    """Each map aggregated into one number per case (the ranking of case-level failure detection,
    :func:`scoring.risk_coverage.aurc`): its mean over the predicted whole tumour — None for every map when no
    tumour is predicted (a missed tumour is no certain case: rankings put it first in line for review, as
    :func:`app.cohort.failure_detection` does)."""
    tumour = (volume.labels > 0) & brain
    return {"over": "predicted tumour" if tumour.any() else "no predicted tumour",
            **{name: float(array[tumour].mean()) if tumour.any() else None for name, array in volume.maps().items()}}


def uncertainty_error_analysis(volume: UncertaintyVolume, case: Case, bins: int = 10, model=None) -> dict:
    """Does high uncertainty mark the voxels the mean prediction gets wrong? Inside the brain, per map: AUROC and
    AUPRC for misclassification, AUROC near the tumour (:func:`near_tumour`), and the error rate in each of ``bins``
    equal-count bins of the map (low to high). With ``model`` (the network that made ``volume``), the calibration
    of the mean prediction. ``case_uncertainty``: each map in one number (:func:`case_uncertainty`)."""
    if case.labels is None:
        raise UsageError(f"{case.case_id}: the uncertainty-error analysis needs ground truth (a _seg file)")
    brain = case.brain_mask
    wrong = (volume.labels != case.labels)[brain]
    near_region = near_tumour(volume.labels, brain, case.spacing)
    near = near_region[brain]
    result = {"voxels": int(brain.sum()), "error_rate": float(wrong.mean()),
              "near_tumour": {"margin_mm": NEAR_TUMOUR_MM, "voxels": int(near.sum()),
                              "error_rate": float(wrong[near].mean()) if near.any() else None},
              "case_uncertainty": case_uncertainty(volume, brain), "maps": {}}
    for name, array in volume.maps().items():
        values = array[brain]
        order = np.argsort(values, kind="stable")
        groups = np.array_split(order, bins)
        result["maps"][name] = {
            "auroc": auroc(values, wrong), "auprc": average_precision(values, wrong),
            "auroc_near_tumour": auroc(values[near], wrong[near]),
            "bins": [{"upper": float(values[g[-1]]) if len(g) else float("nan"),
                      "error_rate": float(wrong[g].mean()) if len(g) else float("nan")} for g in groups],
        }
    if model is not None:
        result["calibration"] = calibration(model, volume.mean, case.labels, brain, near_region)
    return result
