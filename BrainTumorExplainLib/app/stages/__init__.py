"""explain's analyses, one module each: what it computes, writes (with the writer its own CLI verb uses too),
summarises into ``summary.json`` and draws for the report.

Each module has ``NAME`` (its stage in :data:`contract.STAGES`), ``FIGURES`` (the report's entries: file, heading,
what to look at) and ``run(run: Run)``. Adding an analysis is one module here, its name in ``ANALYSES`` and in
:data:`contract.STAGES`; ``explain`` and the report pick it up from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract import figure_file
from ..settings import ExplainConfig
from . import concepts, featviz, gradcam, review, scene, segmentation, uncertainty

# in run order, before the scene and the report
ANALYSES = (segmentation, uncertainty, gradcam, concepts, review, featviz)
WITH_FIGURES = (*ANALYSES, scene)


@dataclass
class Run:
    """One explain run in progress: what every stage reads, and the summary they fill."""

    case: Any  # data.case.Case
    model: Any  # models.base.SegmentationNet, on its device
    config: ExplainConfig
    dissection: Any  # analyses.dissection.Dissection
    work: Path  # the private folder the run writes into
    summary: dict
    quick: bool  # test-time dropout mode, resolved for the device
    z: int  # the axial slice every figure shows
    progress: bool = True  # progress bars
    handed_on: dict = field(default_factory=dict)  # what a stage gives a later one (the detectors, for featviz)
    ensemble: dict = field(default_factory=dict)  # name → network: --ensemble's files, or an nnU-Net folder's folds

    def figure(self, name: str) -> Path:
        return self.work / figure_file(name)

    def title(self, what: str) -> str:
        return f"{self.case.case_id} · {self.config.model}: {what}"


def report_figures() -> list[tuple[str, str, str]]:
    """Every stage's report entries, in stage order."""
    return [entry for stage in WITH_FIGURES for entry in stage.FIGURES]
