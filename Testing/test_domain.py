"""The domain check: a skull-stripped whole brain passes; a head that was not stripped, and a mask that is not one
whole adult brain, are each said in one warning."""

from __future__ import annotations

import numpy as np

from BrainTumorExplainLib.data.case import load_case
from BrainTumorExplainLib.data.domain import domain_check


def test_a_stripped_phantom_brain_looks_like_the_training_data(small_phantom):
    case = load_case(small_phantom)
    found = domain_check(case.brain_mask, case.spacing)
    assert found["warnings"] == [] and 1000 < found["brain_volume_ml"] < 2000 and found["brain_fraction"] < 0.3


def test_an_unstripped_head_and_a_partial_brain_are_said(small_phantom):
    case = load_case(small_phantom)
    head = np.ones_like(case.brain_mask)  # air and skull non-zero: the whole image is "brain"
    (warning,) = domain_check(head, case.spacing)["warnings"][:1]
    assert "skull-stripped" in warning and "100%" in warning
    part = np.zeros_like(case.brain_mask)
    part[: part.shape[0] // 4] = case.brain_mask[: part.shape[0] // 4]  # the lowest quarter of the slices only
    found = domain_check(part, case.spacing)
    assert len(found["warnings"]) == 1 and "mL" in found["warnings"][0] and found["brain_volume_ml"] < 700
