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


def test_coarse_voxels_an_interpolated_edge_and_a_misalignment_left_are_said(small_phantom):
    """The issue-35 warnings, each from what the preprocessing found (here given directly): slices far thicker than
    the network's (with the factor), a rim cut from an interpolated scan, and a sequence measured off the FLAIR and
    not registered — while a registration that left it within the tolerance is not a warning."""
    from BrainTumorExplainLib.data.brain_edge import BrainEdge
    from BrainTumorExplainLib.data.registration import ALIGNMENT_TOLERANCE_MM, Registration

    case = load_case(small_phantom)
    (coarse,) = domain_check(case.brain_mask, case.spacing, training_spacing=(1.0, 3.0, 1.0))["warnings"]
    assert coarse.startswith("voxels of 3 × 3 × 3 mm (z, y, x) against the 1 × 3 × 1 mm the network was trained at: "
                             "up to 3.0× coarser")
    assert "along the inferior–superior and right–left axes" in coarse
    assert domain_check(case.brain_mask, case.spacing, training_spacing=(2.0, 2.0, 2.0))["warnings"] == []

    def registration(applied: bool, before: float, after: float | None) -> Registration:
        return Registration("t2", "flair", (0.0,) * 3, (0.0,) * 3, (0.0,) * 3, -0.5, -0.6, 1.0, applied,
                            "" if applied else "mutual information not improved", before, after)

    found = domain_check(case.brain_mask, case.spacing, brain_edge=BrainEdge(0.45, True, 1000, 27.0),
                         registrations={"t1": registration(True, 6.0, ALIGNMENT_TOLERANCE_MM / 2),
                                        "t2": registration(False, 4.2, None)})["warnings"]
    assert len(found) == 2 and "interpolated after skull-stripping (45%" in found[0]
    assert found[1].startswith("t2 is measured off the flair by 4.2 mm and not registered (mutual information")


def test_intensities_unlike_the_training_cases_are_said(small_phantom, tmp_path_factory):
    """The reference of eight training phantoms: another phantom passes; the same phantom with its T1 and T2 given
    in each other's place (the network would see a T2 where it learned a T1) is said, per sequence, with its
    quantile and the spreads it lies off. (scripts/intensity_check.py measures the limit on 1 mm phantoms: clinical
    acquisitions stay within 2.9 spreads, swapped sequences mostly lie 17.7 and more off.)"""
    from dataclasses import replace

    from BrainTumorExplainLib.data.domain import (
        case_domain_check,
        farthest_quantiles,
        intensity_profile,
        intensity_reference_from,
    )
    from BrainTumorExplainLib.data.phantom import make_phantom, write_phantom
    from conftest import SMALL

    folder = tmp_path_factory.mktemp("reference")
    reference = intensity_reference_from(load_case(write_phantom(make_phantom(seed, SMALL), folder))
                                         for seed in range(80, 88))
    assert reference["cases"] == 8 and set(reference["sequences"]) == {"flair", "t1", "t1ce", "t2"}
    case = load_case(small_phantom)
    assert case_domain_check(case, intensity_reference=reference)["warnings"] == []
    assert case_domain_check(case)["warnings"] == []  # no reference (a bundle's network): no such check
    swapped = replace(case, images=case.images[[0, 3, 2, 1]])
    found = case_domain_check(swapped, intensity_reference=reference)["warnings"]
    assert [warning.split("'")[0] for warning in found] == ["t1", "t2"], found
    assert "quantile (z-scored over the brain) is" in found[0] and "over the network's 8 training cases" in found[0]
    assert intensity_profile(swapped)["t1"] == intensity_profile(case)["t2"]
    # a reference kept at other quantiles (weights written by another version) is read at its own quantiles
    worst = farthest_quantiles(intensity_profile(swapped), reference)["t1"][0]
    one = {"quantiles": [reference["quantiles"][worst]], "cases": 8, "sequences": {
        name: {"mean": [stored["mean"][worst]], "std": [stored["std"][worst]]}
        for name, stored in reference["sequences"].items()}}
    assert case_domain_check(case, intensity_reference=one)["warnings"] == []
    assert f"its {reference['quantiles'][worst]:.0%} quantile" in case_domain_check(
        swapped, intensity_reference=one)["warnings"][0]
