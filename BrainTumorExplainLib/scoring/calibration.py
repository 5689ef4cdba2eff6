"""Calibration: does a predicted probability of 0.8 come true 80 % of the time? (Guo et al. 2017)

:class:`CalibrationBins` streams a dataset into equal-width probability bins — per class (MONAI's
``CalibrationErrorMetric``: each output channel against its one-hot truth) and top-label (each voxel's most likely
class against whether it is right, Guo et al.'s ECE) — so a cohort's expected calibration error and reliability
diagram come from counts that add up across cases and ranks, in fixed memory — the pooled ECE of all their voxels;
MONAI's metric (``metric_reduction="mean"``) is the mean of each case's own ECE instead, which is what the cohort
tables report (one :class:`CalibrationBins` per case). Written here rather than taken from
MONAI: its metric arrived in MONAI 1.6 (Python ≥ 3.10; Slicer 5.6/5.8 bundle 3.9), keeps every voxel of every case
until it aggregates, and cannot leave the background outside the brain out; a test checks the two agree on the same
arrays (same bins: each holds its upper edge, as MONAI's ``calibration_binning``).

:func:`fit_temperature` is the baseline a user tries first (temperature scaling, Guo et al.): one scalar ``T`` that
divides the logits, fitted by the negative log-likelihood on cases the network was neither trained nor validated
on, and not the ones it is scored on (Guo et al. fit it on a validation set); the network's own probabilities
stand in for its logits (``log p`` differs from the logits by a per-voxel constant, which a softmax ignores; a
sigmoid output's logit is ``log p − log(1 − p)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

BINS = 20  # MONAI's default
REDUCTIONS = ("expected", "average", "maximum")  # ECE, ACE, MCE (as MONAI's CalibrationReduction)
_TINY = 1e-7  # probabilities are clipped away from 0 and 1 before a log


def _edges(bins: int) -> np.ndarray:
    """Upper bin edges, MONAI's to the last bit: ``torch.linspace(0, 1 + ε, bins + 1)`` in float32 (ε: float32's;
    numpy's float32 linspace differs from torch's by one ulp at some edges), the first dropped."""
    return torch.linspace(0.0, 1.0 + torch.finfo(torch.float32).eps, bins + 1, dtype=torch.float32)[1:].numpy()


@dataclass
class CalibrationBins:
    """Per-bin sums of a dataset's predictions: ``count``, ``confidence`` (Σ p) and ``correct`` (Σ truth), for each
    class (rows ``0..C-1``: the class's probability against its one-hot truth) and top-label (row ``C``: the
    winning probability against whether the winner is right; a sigmoid output: per region, the probability of its
    decision, ``max(p, 1 − p)``, against whether the decision is right, the regions pooled)."""

    classes: int
    bins: int = BINS
    count: np.ndarray = field(default=None, repr=False)  # (classes + 1, bins) int64
    confidence: np.ndarray = field(default=None, repr=False)  # (classes + 1, bins) float64
    correct: np.ndarray = field(default=None, repr=False)  # (classes + 1, bins) float64

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ValueError(f"need at least one bin, got {self.bins}")
        shape = (self.classes + 1, self.bins)
        self.count = np.zeros(shape, np.int64) if self.count is None else self.count
        self.confidence = np.zeros(shape) if self.confidence is None else self.confidence
        self.correct = np.zeros(shape) if self.correct is None else self.correct

    def add(self, probabilities: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
            outputs: str = "softmax") -> "CalibrationBins":
        """Add one case: ``probabilities`` ``(C, *spatial)``, ``truth`` ``(C, *spatial)`` bool (one-hot classes,
        or each region's mask), over the voxels of ``mask`` (default: all). ``outputs``: ``softmax`` (the channels
        are exclusive classes) or ``sigmoid`` (independent regions)."""
        probabilities, truth = np.asarray(probabilities), np.asarray(truth, dtype=bool)
        if probabilities.shape != truth.shape or probabilities.shape[0] != self.classes:
            raise ValueError(f"need probabilities and truth of one shape (C={self.classes}, ...), got "
                             f"{probabilities.shape} and {truth.shape}")
        if mask is not None:
            probabilities, truth = probabilities[:, mask], truth[:, mask]
        p = probabilities.reshape(self.classes, -1).astype(np.float32)
        t = truth.reshape(self.classes, -1)
        for row in range(self.classes):
            self._tally(row, p[row], t[row])
        if outputs == "softmax":
            winner = p.argmax(0)
            self._tally(self.classes, p.max(0), t[winner, np.arange(p.shape[1])])
        elif outputs == "sigmoid":
            decided = p >= 0.5
            self._tally(self.classes, np.where(decided, p, 1 - p).ravel(), (decided == t).ravel())
        else:
            raise ValueError(f"outputs must be softmax or sigmoid, got {outputs!r}")
        return self

    def _tally(self, row: int, confidence: np.ndarray, correct: np.ndarray) -> None:
        index = np.minimum(np.searchsorted(_edges(self.bins), confidence, side="left"), self.bins - 1)
        self.count[row] += np.bincount(index, minlength=self.bins)
        self.confidence[row] += np.bincount(index, weights=confidence.astype(np.float64), minlength=self.bins)
        self.correct[row] += np.bincount(index, weights=correct.astype(np.float64), minlength=self.bins)

    def __add__(self, other: "CalibrationBins") -> "CalibrationBins":
        if (other.classes, other.bins) != (self.classes, self.bins):
            raise ValueError("calibration bins of different shapes do not add up")
        return CalibrationBins(self.classes, self.bins, self.count + other.count,
                               self.confidence + other.confidence, self.correct + other.correct)

    def reliability(self, row: int | None = None) -> list[dict]:
        """The reliability diagram of one row (default: top-label): per bin its range, voxel count, mean
        confidence and observed accuracy (None in an empty bin)."""
        row = self.classes if row is None else row
        lower = np.concatenate([[0.0], _edges(self.bins)[:-1]])
        rows = []
        for b in range(self.bins):
            n = int(self.count[row, b])
            rows.append({"lower": float(lower[b]), "upper": float(min(_edges(self.bins)[b], 1.0)), "count": n,
                         "confidence": self.confidence[row, b] / n if n else None,
                         "accuracy": self.correct[row, b] / n if n else None})
        return rows

    def error(self, reduction: str = "expected") -> dict:
        """Calibration error per row: ``{"top_label": e, "classes": [e per class], "class_mean": mean}`` —
        ``expected`` (ECE: |accuracy − confidence| per bin weighted by its share of the voxels), ``average``
        (ACE: bins with voxels weighted equally) or ``maximum`` (MCE). A row without voxels is NaN."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        count = self.count.astype(np.float64)
        gap = np.abs(self.correct - self.confidence) / np.maximum(count, 1)
        filled = count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            if reduction == "expected":
                values = (gap * count).sum(1) / count.sum(1)
            elif reduction == "average":
                values = (gap * filled).sum(1) / filled.sum(1)
            else:
                values = np.where(filled.any(1), np.where(filled, gap, -np.inf).max(1), np.nan)
        values = np.where(filled.any(1), values, np.nan)
        return {"top_label": float(values[-1]), "classes": [float(v) for v in values[:-1]],
                "class_mean": float(np.nanmean(values[:-1])) if filled[:-1].any() else float("nan")}


def _logits(probabilities: np.ndarray, outputs: str) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _TINY, 1 - _TINY)
    return np.log(p) if outputs == "softmax" else np.log(p) - np.log1p(-p)


def scaled(probabilities: np.ndarray, temperature: float, outputs: str = "softmax") -> np.ndarray:
    """``probabilities`` ``(C, ...)`` with their logits divided by ``temperature`` (> 1 softens, < 1 sharpens)."""
    z = _logits(probabilities, outputs) / temperature
    if outputs == "sigmoid":
        return (1 / (1 + np.exp(-z))).astype(np.float32)
    z -= z.max(0, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(0, keepdims=True)).astype(np.float32)


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray, outputs: str = "softmax",
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature that minimises the negative log-likelihood of ``truth`` (``(C, N)`` bool, one-hot classes or
    region masks) under ``scaled(probabilities, T)`` (``(C, N)``): Guo et al.'s temperature scaling, a bounded
    one-dimensional search (SciPy's ``minimize_scalar``) over ``log T``. Fit it on cases the network never saw,
    apart from those it is scored on (its training cases would flatter it)."""
    z = _logits(probabilities, outputs).reshape(np.shape(probabilities)[0], -1)
    t = np.asarray(truth, dtype=bool).reshape(z.shape)

    def nll(log_temperature: float) -> float:
        y = z / np.exp(log_temperature)
        if outputs == "softmax":
            return float(-log_softmax(y, axis=0)[t].mean())
        return float(np.logaddexp(0, np.where(t, -y, y)).mean())  # binary cross-entropy, stably

    found = minimize_scalar(nll, bounds=tuple(np.log(bounds)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))
