"""Cohort statistics: a mean with its bootstrap confidence interval (SciPy's ``scipy.stats.bootstrap``, percentile
method, seeded), the one way every claim over cases states its spread."""

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
    from scipy.stats import bootstrap

    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    result = {"mean": float(finite.mean()) if finite.size else None, "low": None, "high": None, "n": int(finite.size),
              "resamples": resamples, "seed": seed, "level": level}
    if finite.size < 2:
        return result
    if np.all(finite == finite[0]):  # every resample has the same mean
        result["low"] = result["high"] = float(finite[0])
        return result
    rng = np.random.default_rng(seed)
    # scipy 1.15 named the generator rng (random_state before); both are taken where both exist
    seeded = {"rng": rng} if "rng" in inspect.signature(bootstrap).parameters else {"random_state": rng}
    found = bootstrap((finite,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                      vectorized=True, **seeded)
    result["low"], result["high"] = float(found.confidence_interval.low), float(found.confidence_interval.high)
    return result
