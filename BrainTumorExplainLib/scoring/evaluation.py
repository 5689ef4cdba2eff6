"""Scoring a network on a set of labelled cases: per-case and mean Dice and HD95 (the paper's Table 1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.case import CaseError, load_case
from ..data.labels import REGIONS
from ..errors import InputError
from ..models.base import SegmentationNet
from ..models.inference import segment_input
from ..models.space import into_network_space
from ..progress import shared_progress
from ..ranks import Ranks
from .lesions import CHALLENGES, DEFAULT_CHALLENGE, LesionRule
from .metrics import LESION_COUNTS, LESION_METRICS, REGION_METRICS, RegionScore, score_segmentation, scores_as_dict
from .statistics import mean_interval


@dataclass
class CaseEvaluation:
    case_id: str
    scores: dict[str, RegionScore]


def evaluate_model(model: SegmentationNet, case_paths: list[Path], device: str | torch.device | None = None,
                   progress: bool = False, resample: bool = True,
                   lesion_rule: LesionRule | None = CHALLENGES[DEFAULT_CHALLENGE],
                   failures: dict[str, str] | None = None, ranks: Ranks = Ranks()) -> list[CaseEvaluation]:
    """Segment every case — in the network's space unless ``resample`` is False
    (:func:`models.space.into_network_space`) — and score it on its own grid against its labels (on ``device``,
    default: the model's), lesion-wise too under ``lesion_rule``. A case that cannot be read, or has no labels, is
    an error naming it; with ``failures`` (a dict) it is recorded there instead — folder name → the error — and the
    other cases go on. ``ranks``: under torchrun (:func:`ranks.joined`) each rank scores its share of the cases and
    every rank returns all of them, in the order of ``case_paths``."""
    outcomes = []  # per case of this rank's share: its evaluation, or its error
    for path in shared_progress(case_paths, ranks, "evaluate" if progress else None, unit="case"):
        try:
            case = load_case(path)
            if case.labels is None:
                raise CaseError(f"{path}: no label file (_seg), so this case cannot be evaluated")
        except InputError as error:
            if failures is None:
                raise
            outcomes.append((Path(path).name, str(error)))
            continue
        prediction = segment_input(model, into_network_space(case, model, resample), device=device)[1]
        outcomes.append(CaseEvaluation(case.case_id, score_segmentation(prediction, case.labels, case.spacing,
                                                                        lesion_rule)))
    outcomes = ranks.unshared(outcomes)
    if failures is not None:
        failures.update(outcome for outcome in outcomes if isinstance(outcome, tuple))
    return [outcome for outcome in outcomes if isinstance(outcome, CaseEvaluation)]


# How a cohort mean treats empty regions: as every case scores them (metrics and lesions module notes), not skipped.
MEAN_CONVENTION = ("plain mean over every case, each scored by its own conventions for empty regions (legacy: both "
                   "empty Dice 1 / HD95 0, one empty Dice 0 / HD95 the image diagonal; lesion-wise: nothing to score "
                   "Dice 1 / HD95 0, each missed or false-positive lesion Dice 0 / HD95 374); lesion counts summed")


def mean_scores(results: list[CaseEvaluation]) -> dict[str, dict[str, float]]:
    """Region → metric → its mean over the cases (lesion counts: their sums); see :data:`MEAN_CONVENTION`."""
    means = {}
    for region in REGIONS:
        scores = [r.scores[region] for r in results]
        means[region] = {metric.key: float(np.mean([s.values[metric.key] for s in scores]))
                         for metric in REGION_METRICS}
        if all(s.lesions for s in scores):
            values = [s.lesions.as_dict() for s in scores]
            means[region].update({key: float(np.mean([v[key] for v in values])) for key, _, _ in LESION_METRICS})
            means[region].update({key: int(sum(v[key] for v in values)) for key in LESION_COUNTS})
    return means


def evaluation_as_dict(model_name: str, results: list[CaseEvaluation], failures: dict[str, str] | None = None
                       ) -> dict:
    """The evaluation as ``evaluate --json`` writes it: per case, the means, each mean's bootstrap 95 % interval
    over the cases (:func:`statistics.mean_interval`; lesion counts, which are summed, have none) and the cases that
    failed with their errors."""
    cases = {r.case_id: scores_as_dict(r.scores) for r in results}
    means = mean_scores(results)
    return {
        "model": model_name,
        "cases": cases,
        "mean": means,
        "mean_interval": {region: {key: mean_interval([scores[region][key] for scores in cases.values()])
                                   for key in means[region] if key not in LESION_COUNTS} for region in means},
        "mean_convention": MEAN_CONVENTION,
        "failed": [{"case": case, "error": error} for case, error in (failures or {}).items()],
    }


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows of ``name → region → {metric: value}`` as the paper's Table 1 (plus HD95): each metric for each
    region; then, when every row has them, the lesion-wise scores in a second table."""
    metrics = [(m.key, m.heading, m.digits) for m in REGION_METRICS]
    tables = [metrics]
    if rows and all(LESION_METRICS[0][0] in scores[r] for scores in rows.values() for r in REGIONS):
        tables.append(list(LESION_METRICS))
    lines = []
    for table in tables:
        lines.append(f"{'':<16}" + "".join(f"{f'{r} {heading}':>10}" for _, heading, _ in table for r in REGIONS))
        for name, scores in rows.items():
            lines.append(f"{name:<16}" + "".join(f"{scores[r][key]:>10.{digits}f}" for key, _, digits in table
                                                 for r in REGIONS))
    return "\n".join(lines)
