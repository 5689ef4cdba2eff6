"""Scoring a network on a set of labelled cases: per-case and mean Dice and HD95 (the paper's Table 1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .case import CaseError, load_case
from .inference import segment_case
from .labels import REGIONS
from .metrics import RegionScore, score_segmentation, scores_as_dict
from .models.base import SegmentationNet


@dataclass
class CaseEvaluation:
    case_id: str
    scores: dict[str, RegionScore]


def evaluate_model(model: SegmentationNet, case_paths: list[Path], device: str | torch.device = "cpu",
                   progress: bool = False) -> list[CaseEvaluation]:
    """Segment every case and score it against its labels. A case without labels is an error, named."""
    iterator = case_paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(case_paths, desc="evaluate", unit="case")
    results = []
    for path in iterator:
        case = load_case(path)
        if case.labels is None:
            raise CaseError(f"{path}: no label file (_seg), so this case cannot be evaluated")
        prediction = segment_case(model, case, device=device)
        results.append(CaseEvaluation(case.case_id, score_segmentation(prediction, case.labels, case.spacing)))
    return results


def mean_scores(results: list[CaseEvaluation]) -> dict[str, dict[str, float]]:
    return {
        region: {
            "dice": float(np.mean([r.scores[region].dice for r in results])),
            "hd95_mm": float(np.mean([r.scores[region].hd95_mm for r in results])),
        }
        for region in REGIONS
    }


def evaluation_as_dict(model_name: str, results: list[CaseEvaluation]) -> dict:
    return {
        "model": model_name,
        "cases": {r.case_id: scores_as_dict(r.scores) for r in results},
        "mean": mean_scores(results),
    }


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows of ``name → region → {dice, hd95_mm}`` as the paper's Table 1 (plus HD95)."""
    header = f"{'':<16}" + "".join(f"{r + ' Dice':>10}" for r in REGIONS) + "".join(f"{r + ' HD95':>10}" for r in REGIONS)
    lines = [header]
    for name, scores in rows.items():
        lines.append(f"{name:<16}" + "".join(f"{scores[r]['dice']:>10.3f}" for r in REGIONS)
                     + "".join(f"{scores[r]['hd95_mm']:>10.2f}" for r in REGIONS))
    return "\n".join(lines)
