"""Case-level failure detection: does an aggregated uncertainty put the cases that went wrong last?

Sort the cases from the most to the least confident (lowest uncertainty first) and keep the first k: the
*selective risk* at coverage k/n is their mean risk (for segmentation, 1 − Dice). The risk–coverage curve and the
area under it (AURC; Geifman, Uziel & El-Yaniv 2019; Jaeger et al. 2023, "A call to reflect on evaluation practices
for failure detection in image classification") summarise how well the uncertainty ranks the failures; the
excess AURC (E-AURC) subtracts what the best possible ranking — by the risk itself — reaches, so 0 is perfect and a
ranking that carries no information lands, on average, at the mean risk minus that optimum.

Cases with equal uncertainty are taken in every order at once: their risks are replaced by the mean of their group
before the curve is summed, which is the expected curve over the orders of the tie (a constant uncertainty gives
the mean risk at every coverage). Written here: the formula is a cumulative mean, and the peers (fd-shifts,
torch-uncertainty) are classification frameworks this library does not otherwise need.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _for_review(uncertainty: Sequence[float | None]) -> np.ndarray:
    """The uncertainties as floats, a missing one (None: no predicted tumour to average over) above every other."""
    known = [v for v in uncertainty if v is not None]
    top = max(known) + 1 if known else 0.0
    return np.asarray([top if v is None else v for v in uncertainty], dtype=np.float64).ravel()


def risk_coverage(uncertainty: Sequence[float | None], risk: Sequence[float]) -> dict[str, np.ndarray]:
    """The risk–coverage curve: ``coverage`` (k/n for k = 1..n) and ``risk`` (mean risk of the k most confident
    cases, ties averaged; see the module notes), as arrays of n. An uncertainty of None (a case with no predicted
    tumour) ranks as the most uncertain: a missed tumour is the failure a review must not skip."""
    uncertainty = _for_review(uncertainty)
    risk = np.asarray(risk, dtype=np.float64).ravel()
    if uncertainty.shape != risk.shape or uncertainty.size == 0:
        raise ValueError(f"need one risk per uncertainty, at least one case; got {uncertainty.size} and {risk.size}")
    if not (np.isfinite(uncertainty).all() and np.isfinite(risk).all()):
        raise ValueError("uncertainties and risks must be finite")
    order = np.argsort(uncertainty, kind="stable")
    u, r = uncertainty[order], risk[order]
    _, group, sizes = np.unique(u, return_inverse=True, return_counts=True)
    r = (np.bincount(group, weights=r) / sizes)[group]  # ties: their mean
    count = np.arange(1, r.size + 1)
    return {"coverage": count / r.size, "risk": np.cumsum(r) / count}


def aurc(uncertainty: Sequence[float | None], risk: Sequence[float]) -> dict[str, float]:
    """``{"aurc", "optimal", "e_aurc", "random", "n"}``: the mean selective risk over the n coverages, the same
    for the cases ranked by their risk (the best any uncertainty can do), their difference, and the mean risk (what
    an uninformative ranking gives on average)."""
    found = float(risk_coverage(uncertainty, risk)["risk"].mean())
    best = float(risk_coverage(risk, risk)["risk"].mean())
    return {"aurc": found, "optimal": best, "e_aurc": found - best, "random": float(np.mean(risk)),
            "n": int(np.size(risk))}


def aurc_against_chance(uncertainty: Sequence[float | None], risk: Sequence[float], draws: int = 1000,
                        seed: int = 0) -> dict[str, float]:
    """How the ranking's AURC stands against rankings that know nothing: the same cases shuffled ``draws`` times
    (seeded) — ``low``/``high``, the 2.5th and 97.5th percentiles of their AURC, and ``p``, the share of them at or
    below the ranking's (with the ranking itself counted: (1 + k) / (1 + draws)). With few cases this is the spread a
    single AURC cannot show."""
    found = aurc(uncertainty, risk)["aurc"]
    values = _for_review(uncertainty)
    rng = np.random.default_rng(seed)
    shuffled = np.array([aurc(rng.permutation(values), risk)["aurc"] for _ in range(draws)])
    low, high = np.percentile(shuffled, [2.5, 97.5])
    return {"aurc": found, "low": float(low), "high": float(high),
            "p": float((1 + np.sum(shuffled <= found)) / (1 + draws)), "draws": draws, "seed": seed}
