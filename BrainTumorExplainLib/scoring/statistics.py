"""Cohort statistics: a mean — or a ratio of sums, such as a dataset-wide IoU — with its bootstrap confidence interval
(percentile method, seeded; SciPy's ``scipy.stats.bootstrap`` for a mean), the one way every claim over cases states
its spread."""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


def mean_interval(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """The mean of the finite ``values`` and its bootstrap interval: ``{"mean", "low", "high", "n", "resamples",
    "seed", "level"}`` (``low``/``high`` None under two values, ``mean`` None with none). Cases are resampled with
    replacement ``resamples`` times from ``seed``; the interval is the percentile one."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    result = {"mean": float(finite.mean()) if finite.size else None, "low": None, "high": None, "n": int(finite.size),
              "resamples": resamples, "seed": seed, "level": level}
    if finite.size < 2:
        return result
    if np.all(finite == finite[0]):  # every resample has the same mean
        result["low"] = result["high"] = float(finite[0])
        return result
    result["low"], result["high"] = _percentile_interval((finite,), np.mean, resamples, seed, level)
    return result


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float], resamples: int = RESAMPLES,
                   seed: int = 0, level: float = LEVEL) -> dict:
    """Σ numerators / Σ denominators over cases (a dataset-wide IoU: intersections over unions) and its bootstrap
    interval, each case resampled with its own pair: ``{"value", "low", "high", "n", "undefined", …}`` as
    :func:`mean_interval`. ``value`` is None when the denominators sum to zero. A resample whose denominators sum to
    zero has no ratio: it is left out of the percentiles, and ``undefined`` says what share of the resamples that
    was (a concept present in one case of ten leaves about a third undefined). Resampled here rather than by
    ``scipy.stats.bootstrap``, whose percentiles do not leave such resamples out."""
    numerators = np.asarray(numerators, dtype=np.float64).ravel()
    denominators = np.asarray(denominators, dtype=np.float64).ravel()
    if numerators.shape != denominators.shape:
        raise ValueError(f"{numerators.size} numerators against {denominators.size} denominators")
    total = denominators.sum()
    result = {"value": float(numerators.sum() / total) if total > 0 else None, "low": None, "high": None,
              "n": int(numerators.size), "undefined": 0.0, "resamples": resamples, "seed": seed, "level": level}
    if numerators.size < 2 or total == 0:
        return result
    chosen = np.random.default_rng(seed).integers(numerators.size, size=(resamples, numerators.size))
    tops, bottoms = numerators[chosen].sum(1), denominators[chosen].sum(1)
    defined = bottoms > 0
    ratios = tops[defined] / bottoms[defined]
    result["undefined"] = float(1 - defined.mean())
    tail = 100 * (1 - level) / 2
    result["low"], result["high"] = (float(v) for v in np.percentile(ratios, [tail, 100 - tail]))
    return result


def _percentile_interval(samples: tuple, statistic, resamples: int, seed: int, level: float) -> tuple[float, float]:
    from scipy.stats import bootstrap

    rng = np.random.default_rng(seed)
    # scipy 1.15 named the generator rng (random_state before); both are taken where both exist
    seeded = {"rng": rng} if "rng" in inspect.signature(bootstrap).parameters else {"random_state": rng}
    found = bootstrap(samples, statistic, n_resamples=resamples, confidence_level=level, method="percentile",
                      vectorized=True, **seeded)
    return float(found.confidence_interval.low), float(found.confidence_interval.high)
