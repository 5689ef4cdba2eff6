"""Co-registration of the sequences: a known head motion between series is found again (to well under a voxel at
the tumour), an unmoved case stays put, a result the check does not believe is not used, and explain says what it
did and writes the transforms."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import explain_cheaply

from BrainTumorExplainLib.data import registration
from BrainTumorExplainLib.data.acquisition import Acquisition, reacquire
from BrainTumorExplainLib.data.case import check_case_files, load_case
from BrainTumorExplainLib.data.registration import wants_coregistration
from BrainTumorExplainLib.errors import UsageError

MOTION = Acquisition(spacing_mm=(3.0, 3.0, 3.0), motion_mm=4.0, motion_degrees=4.0, seed=1)  # the small phantom's 3 mm


@pytest.fixture(scope="module")
def moved(small_phantom, tmp_path_factory):
    """The small phantom with T1, T1ce and T2 acquired after the head moved 4 mm and 4° (each its own series)."""
    return reacquire(small_phantom, tmp_path_factory.mktemp("moved") / "case", MOTION)


def _tumour_points(case) -> list[tuple[float, float, float]]:
    image = case.grid.to_image(case.labels.astype(np.uint8))
    points = case.grid.physical_points(case.labels > 0)
    first = np.argwhere(sitk.GetArrayFromImage(image) > 0)[0][::-1]  # physical_points agrees with ITK's own mapping
    np.testing.assert_allclose(points[0], image.TransformIndexToPhysicalPoint([int(v) for v in first]), atol=1e-9)
    return [tuple(point) for point in points[::7]]


def _inside_brain_correlation(a: np.ndarray, b: np.ndarray, brain: np.ndarray) -> float:
    return float(np.corrcoef(a[brain], b[brain])[0, 1])


def test_a_known_head_motion_is_found_again(small_phantom, moved):
    """Each moved sequence's registration maps every tumour point where the motion took it (error ≤ 1 mm, against a
    motion of several mm), and the registered sequence matches the unmoved one far better than the world-coordinate
    resampling does."""
    wanted, why = wants_coregistration("auto", check_case_files(moved))
    assert wanted and "different grids" in why
    original = load_case(small_phantom)
    motions = MOTION.motions(original.grid)
    registered = load_case(moved, coregister=True)
    plain = load_case(moved)
    points = _tumour_points(original)
    overlap = (registered.brain_mask & original.brain_mask).sum() / registered.brain_mask.sum()
    assert overlap > 0.97  # each sequence stays skull-stripped with its edge where the FLAIR's is: no rim
    for channel, sequence in enumerate(("flair", "t1", "t1ce", "t2")):
        if sequence == "flair":
            assert sequence not in registered.registrations
            continue
        found, motion = registered.registrations[sequence], motions[sequence]
        assert found.applied and found.metric_after < found.metric_before
        moved_by = max(np.linalg.norm(np.subtract(motion.TransformPoint(p), p)) for p in points)
        error = max(np.linalg.norm(np.subtract(found.transform().TransformPoint(p), motion.TransformPoint(p)))
                    for p in points)
        assert moved_by > 3.0 and error < 1.0, (sequence, moved_by, error)
        brain = original.brain_mask & registered.brain_mask
        after = _inside_brain_correlation(registered.images[channel], original.images[channel], brain)
        before = _inside_brain_correlation(plain.images[channel], original.images[channel], brain)
        assert after > 0.97 and after > before + 0.1, (sequence, before, after)


def test_an_unmoved_case_stays_where_it_is(small_phantom):
    """Sequences on one grid are measured (auto), found aligned and kept as they are; registered anyway, none moves
    by more than a fraction of a voxel (3 mm here) — or, where that fraction would not improve the mutual
    information, the check keeps the sequence exactly as acquired."""
    grids = check_case_files(small_phantom)
    wanted, why = wants_coregistration("auto", grids)
    assert wanted == registration.MEASURE_FIRST and "one grid, which does not make them aligned" in why
    measured = load_case(small_phantom, coregister=wanted)
    assert registration.coregistration_state(measured.registrations) == "measured, none registered"
    for found in measured.registrations.values():
        assert not found.applied and found.misaligned_mm <= registration.ALIGNMENT_TOLERANCE_MM
        assert "aligned already" in found.reason
    np.testing.assert_array_equal(measured.images, load_case(small_phantom).images)
    assert wants_coregistration("always", grids)[0]
    with pytest.raises(UsageError, match="--coregister yes"):
        wants_coregistration("yes", grids)
    case = load_case(small_phantom, coregister=True)
    again = load_case(small_phantom, coregister=True).registrations  # seeded: the same transform again (threads
    for sequence, found in case.registrations.items():  # may reorder the metric's sums: equal to rounding)
        assert again[sequence].applied == found.applied
        np.testing.assert_allclose(again[sequence].angles + again[sequence].translation_mm,
                                   found.angles + found.translation_mm, atol=1e-6)
    for found in case.registrations.values():
        assert found.largest_motion_mm < 1.0 and (found.applied or "not improved" in found.reason)


def test_a_motion_hidden_on_one_grid_is_measured_and_registered(small_phantom, tmp_path):
    """The issue-35 case: T1, T1ce and T2 moved 4 mm and 4°, then resampled onto the FLAIR's grid (a PACS
    reformat): one grid, not aligned. Auto measures each sequence off by more than the tolerance, registers it (each
    tumour point mapped where the motion took it, to half a 3 mm voxel) and measures it again within the tolerance."""
    acquisition = Acquisition(spacing_mm=(3.0, 3.0, 3.0), motion_mm=4.0, motion_degrees=4.0, seed=1,
                              motion_on_one_grid=True)
    hidden = reacquire(small_phantom, tmp_path / "case", acquisition)
    grids = check_case_files(hidden)
    wanted, _ = wants_coregistration("auto", grids)
    assert registration.sequences_share_one_grid(grids) and wanted == registration.MEASURE_FIRST
    case, plain, original = load_case(hidden, coregister=wanted), load_case(hidden), load_case(small_phantom)
    motions, points = acquisition.motions(original.grid), _tumour_points(original)
    brain = original.brain_mask & case.brain_mask
    for channel, sequence in enumerate(("t1", "t1ce", "t2"), start=1):
        found = case.registrations[sequence]
        assert found.applied and found.misaligned_mm > 3.0, found
        assert found.residual_mm <= registration.ALIGNMENT_TOLERANCE_MM, found
        error = max(np.linalg.norm(np.subtract(found.transform().TransformPoint(p), motions[sequence].TransformPoint(p)))
                    for p in points)
        assert error < 1.5, (sequence, error)
        after = _inside_brain_correlation(case.images[channel], original.images[channel], brain)
        before = _inside_brain_correlation(plain.images[channel], original.images[channel], brain)
        assert after > before + 0.2, (sequence, before, after)


def test_a_registration_the_check_does_not_believe_is_not_used(moved, monkeypatch):
    """Moving further than the check allows (here lowered to 1 mm) keeps the sequence as acquired, with the reason,
    and its voxels are exactly those of the uncorrected load."""
    monkeypatch.setattr(registration, "MAX_MOTION_MM", 1.0)
    case = load_case(moved, coregister=True)
    plain = load_case(moved)
    for found in case.registrations.values():
        assert not found.applied and "more than 1 mm" in found.reason
    assert registration.coregistration_state(case.registrations) == "ran, none applied"
    np.testing.assert_array_equal(case.images, plain.images)


def test_explain_says_what_it_registered_and_writes_the_transforms(moved, tmp_path):
    out = tmp_path / "run"
    scene = explain_cheaply(moved.flair.parent, out)
    everything = json.loads((out / "summary.json").read_text())
    # co-registered, the case looks like the training data again, but for its 3 mm voxels (the network's are 1 mm)
    assert [w for w in everything["domain"]["warnings"] if not w.startswith("voxels of 3 × 3 × 3 mm")] == []
    summary = everything["coregistration"]
    assert summary["ran"] and summary["state"] == "ran" and set(summary["sequences"]) == {"t1", "t1ce", "t2"}
    for sequence, found in summary["sequences"].items():
        written = sitk.ReadTransform(str(out / "registration" / f"{sequence}_to_flair.tfm"))
        expected = registration.Registration(**{k: tuple(v) if isinstance(v, list) else v for k, v in found.items()
                                                if k != "rotation_degrees"}).transform()
        point = (10.0, -20.0, 30.0)
        np.testing.assert_allclose(written.TransformPoint(point), expected.TransformPoint(point), atol=1e-6)
    assert "Co-registration (the sequences lie on different grids" in (out / "report.html").read_text()
    if scene:  # the scene holds each co-registration as a transform node, to inspect and apply
        sys.path.insert(0, str(Path(__file__).parents[1] / "BrainTumorExplain"))
        from BrainTumorExplainLogic import nodes_of_class, open_scene_bundle

        names = {node.GetName() for node in nodes_of_class(open_scene_bundle(out / "scene.mrb"),
                                                            "vtkMRMLLinearTransformNode")}
        assert {f"registration {sequence} → flair" for sequence in ("t1", "t1ce", "t2")} <= names
