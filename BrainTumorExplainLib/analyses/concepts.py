"""What a dissection (:mod:`dissection`) measures: the concepts and their ground-truth masks, and one layer's
running IoU sums."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data.case import Case, CaseError
from ..data.labels import region_mask
from ..errors import UsageError

# name → (what it is, the ground truth it needs)
CONCEPTS: dict[str, tuple[str, str]] = {
    "WT": ("whole tumour (NCR ∪ ED ∪ ET)", "labels"),
    "TC": ("tumour core (NCR ∪ ET)", "labels"),
    "ET": ("enhancing tumour", "labels"),
    "ED": ("edema", "labels"),
    "NCR": ("necrotic / non-enhancing core", "labels"),
    "brain": ("brain (skull-stripped mask)", "brain mask"),
    "WM": ("white matter", "tissue"),
    "GM": ("grey matter", "tissue"),
    "CSF": ("cerebrospinal fluid", "tissue"),
}
_TISSUE_VALUE = {"CSF": 1, "GM": 2, "WM": 3}
_CLASS_VALUE = {"NCR": 1, "ED": 2}


def concept_masks(case: Case, concepts: Sequence[str]) -> np.ndarray:
    """``(len(concepts), Z, Y, X)`` bool ground truth of each concept, limited to the brain."""
    masks = []
    for name in concepts:
        if name not in CONCEPTS:
            raise UsageError(f"unknown concept {name!r}; expected some of {', '.join(CONCEPTS)}")
        needs = CONCEPTS[name][1]
        if needs == "labels" and case.labels is None:
            raise CaseError(f"{case.case_id}: concept {name} needs a label file (_seg), and this case has none")
        if needs == "tissue" and case.tissue is None:
            raise CaseError(f"{case.case_id}: concept {name} needs a tissue map (_tissue: phantoms carry one), "
                            f"and this case has none")
        if name == "brain":
            mask = case.brain_mask
        elif name in _TISSUE_VALUE:
            mask = case.tissue == _TISSUE_VALUE[name]
        elif name in _CLASS_VALUE:
            mask = case.labels == _CLASS_VALUE[name]
        else:
            mask = region_mask(case.labels, name)
        masks.append(mask & case.brain_mask)
    return np.stack(masks)


SUMS = ("intersection", "union", "image_iou_sum", "image_count")  # what a dissection adds up over images


@dataclass
class LayerDissection:
    """Per filter of one layer: threshold, and IoU sums against each concept. ``per_case`` (when the dissection
    kept it): each of :data:`SUMS` per case, a leading case axis in the dataset's order, so that any subset of the
    cases — a held-out half, a bootstrap resample — has its own IoUs under the same thresholds."""

    thresholds: np.ndarray  # (K,) T_k,l
    threshold_error: np.ndarray  # (K,) bound on |T − exact quantile|
    intersection: np.ndarray  # (K, C) Σ|M ∩ G| over slices
    union: np.ndarray  # (K, C) Σ|M ∪ G|
    image_iou_sum: np.ndarray  # (K, C) Σ per-slice IoU over slices where G is present
    image_count: np.ndarray  # (C,) number of slices where G is present
    per_case: dict[str, np.ndarray] | None = None  # sum name → (cases, *its shape)

    @property
    def iou(self) -> np.ndarray:
        """Dataset-wide IoU ``(K, C)``."""
        return np.divide(self.intersection, self.union, out=np.zeros(self.union.shape), where=self.union > 0)

    @property
    def image_iou(self) -> np.ndarray:
        """Mean per-slice IoU ``(K, C)`` over slices containing the concept."""
        return self.image_iou_sum / np.maximum(self.image_count, 1)[None, :]

    def zeroed(self) -> "LayerDissection":
        """The same thresholds with every sum zero (one case's tally starts from it)."""
        return LayerDissection(self.thresholds, self.threshold_error,
                               *(np.zeros_like(getattr(self, name)) for name in SUMS))

    def add(self, other: "LayerDissection") -> None:
        for name in SUMS:
            getattr(self, name).__iadd__(getattr(other, name))

    def subset(self, indices: Sequence[int]) -> "LayerDissection":
        """The sums over the cases at ``indices`` (repeats count again: a bootstrap resample); needs ``per_case``."""
        if self.per_case is None:
            raise UsageError("this dissection kept no per-case sums (dissect with per_case=True)")
        chosen = {name: self.per_case[name][list(indices)] for name in SUMS}
        return LayerDissection(self.thresholds, self.threshold_error, *(chosen[name].sum(0) for name in SUMS),
                               per_case=chosen)
