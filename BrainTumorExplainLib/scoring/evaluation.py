"""Scoring a network on a set of labelled cases: per-case and mean Dice and HD95 (the paper's Table 1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.case import CaseError, load_case
from ..data.labels import REGIONS
from ..models.base import SegmentationNet
from ..models.inference import segment_input
from ..models.space import into_network_space
from ..progress import progress_bar
from .metrics import REGION_METRICS, RegionScore, score_segmentation, scores_as_dict


@dataclass
class CaseEvaluation:
    case_id: str
    scores: dict[str, RegionScore]


def evaluate_model(model: SegmentationNet, case_paths: list[Path], device: str | torch.device | None = None,
                   progress: bool = False, resample: bool = True) -> list[CaseEvaluation]:
    """Segment every case — in the network's space unless ``resample`` is False
    (:func:`models.space.into_network_space`) — and score it on its own grid against its labels (on ``device``,
    default: the model's). A case without labels is an error, named."""
    results = []
    for path in progress_bar(case_paths, "evaluate" if progress else None, unit="case"):
        case = load_case(path)
        if case.labels is None:
            raise CaseError(f"{path}: no label file (_seg), so this case cannot be evaluated")
        prediction = segment_input(model, into_network_space(case, model, resample), device=device)[1]
        results.append(CaseEvaluation(case.case_id, score_segmentation(prediction, case.labels, case.spacing)))
    return results


def mean_scores(results: list[CaseEvaluation]) -> dict[str, dict[str, float]]:
    """Region → metric → its mean over the cases."""
    return {region: {metric.key: float(np.mean([r.scores[region].values[metric.key] for r in results]))
                     for metric in REGION_METRICS} for region in REGIONS}


def evaluation_as_dict(model_name: str, results: list[CaseEvaluation]) -> dict:
    return {
        "model": model_name,
        "cases": {r.case_id: scores_as_dict(r.scores) for r in results},
        "mean": mean_scores(results),
    }


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows of ``name → region → {metric: value}`` as the paper's Table 1 (plus HD95): each metric for each
    region."""
    header = f"{'':<16}" + "".join(f"{f'{r} {m.heading}':>10}" for m in REGION_METRICS for r in REGIONS)
    lines = [header]
    for name, scores in rows.items():
        lines.append(f"{name:<16}" + "".join(f"{scores[r][m.key]:>10.{m.digits}f}" for m in REGION_METRICS
                                             for r in REGIONS))
    return "\n".join(lines)
