"""BraTS-style preprocessing of a clinical scan: a head left unstripped and turned in the scanner is masked by the
atlas and turned back into its pose (against the known turn), a user's mask on another grid is used as given, a
preprocessed case skips every step, and explain records and writes what it did."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import explain_cheaply

from BrainTumorExplainLib.app.cli import main
from BrainTumorExplainLib.app.explain import write_preprocessing
from BrainTumorExplainLib.app.report import preprocessing_lines
from BrainTumorExplainLib.data.acquisition import Acquisition, reacquire
from BrainTumorExplainLib.data.case import load_case
from BrainTumorExplainLib.data.domain import domain_check, looks_skull_stripped
from BrainTumorExplainLib.data.grid import ReferenceGrid
from BrainTumorExplainLib.data.preprocess import preprocess
from BrainTumorExplainLib.data.resample import resample_array, resample_case
from BrainTumorExplainLib.errors import UsageError

TURNED = Acquisition(spacing_mm=(3.0, 3.0, 3.0), head_tilt_degrees=(12.0, 0.0, 6.0), skull=True, seed=2)
ONE_MM = (1.0, 1.0, 1.0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _angle(rotation: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))


@pytest.fixture(scope="module")
def turned(small_phantom, tmp_path_factory):
    """The small phantom's head turned 12° and 6° in the scanner, its skull and scalp left on (one grid)."""
    return reacquire(small_phantom, tmp_path_factory.mktemp("turned") / "case", TURNED)


@pytest.fixture(scope="module")
def turned_stripped(small_phantom, tmp_path_factory):
    """The same turned head, skull-stripped: its brain mask is the truth the atlas's is measured against."""
    return reacquire(small_phantom, tmp_path_factory.mktemp("turned_stripped") / "case",
                     replace(TURNED, skull=False))


def test_an_unstripped_turned_head_is_masked_and_turned_back(small_phantom, turned, turned_stripped):
    """The atlas's brain mask covers the true brain (Dice > 0.9) and keeps the tumour; the pose found is the known
    turn (to 1°, against 13°); in the network's space the tumour lies where the upright head's does (the control:
    the turned head taken as it lies), and every result goes back exactly onto the scan's own voxels."""
    plain = load_case(turned)
    assert not looks_skull_stripped(plain.brain_mask)  # the synthetic head: what a scanner gives
    assert domain_check(plain.brain_mask, plain.spacing)["warnings"]
    truth = load_case(turned_stripped)
    case, steps = preprocess(turned, ONE_MM)
    assert steps.brain_mask == "atlas" and steps.atlas_aligned and "not skull-stripped" in steps.atlas_why
    assert _dice(case.brain_mask, truth.brain_mask) > 0.9
    tumour = case.labels > 0
    assert (case.brain_mask & tumour).sum() / tumour.sum() > 0.99
    assert domain_check(case.brain_mask, case.spacing)["warnings"] == []  # it looks like the training data again

    upright, upright_steps = preprocess(small_phantom, ONE_MM, atlas="always")
    assert upright_steps.brain_mask == "as read" and upright_steps.atlas_why == "--atlas always"
    turn = np.asarray(TURNED.pose(load_case(small_phantom).grid).GetMatrix()).reshape(3, 3)
    found = np.asarray(steps.alignment.rotation).reshape(3, 3)
    expected = turn @ np.asarray(upright_steps.alignment.rotation).reshape(3, 3)
    assert _angle(turn) > 12.0 and _angle(expected.T @ found) < 1.0

    seen, upright_seen = resample_case(case, ONE_MM), resample_case(upright, ONE_MM)
    aligned = _dice(resample_array(seen.labels > 0, seen.grid.grid, upright_seen.grid.grid), upright_seen.labels > 0)
    as_it_lies = _dice(resample_array(truth.labels > 0, truth.grid, upright.grid), upright.labels > 0)
    assert aligned > 0.85 and aligned > as_it_lies + 0.1, (aligned, as_it_lies)
    back = seen.grid.to_reference(seen.labels)
    assert _dice(back > 0, tumour) > 0.97
    written = sitk.ReadImage(str(seen.grid.write(seen.labels, Path(turned.flair).parent.parent / "back.nii.gz")))
    assert ReferenceGrid.from_image(written) == plain.grid  # the scan's own geometry, exactly


def test_a_users_brain_mask_is_used_from_any_grid(turned, turned_stripped, tmp_path):
    """A mask file on a coarser grid is resampled onto the scan's (nearest neighbour) and used instead of the
    atlas's; no registration runs for it, and the mask file is only read."""
    truth = load_case(turned_stripped)
    coarse = ReferenceGrid(tuple(n // 2 for n in truth.grid.size), tuple(s * 2 for s in truth.grid.spacing),
                           truth.grid.origin, truth.grid.direction)
    path = coarse.write(resample_array(truth.brain_mask, truth.grid, coarse).astype(np.uint8), tmp_path / "mask.nii.gz")
    before = path.read_bytes()
    case, steps = preprocess(turned, ONE_MM, atlas="never", brain_mask=str(path))
    assert steps.brain_mask == "file" and steps.alignment is None and not steps.atlas_aligned
    assert _dice(case.brain_mask, truth.brain_mask) > 0.9 and case.images[:, ~case.brain_mask].max() == 0
    assert path.read_bytes() == before
    with pytest.raises(UsageError, match="--brain-mask nowhere"):
        preprocess(turned, ONE_MM, brain_mask="nowhere")
    with pytest.raises(UsageError, match="--atlas yes"):
        preprocess(turned, ONE_MM, atlas="yes")


def test_a_preprocessed_case_skips_every_step(small_phantom):
    case, steps = preprocess(small_phantom, ONE_MM)
    assert steps.brain_mask == "as read" and not steps.atlas_aligned and steps.alignment is None
    assert "preprocessed" in steps.atlas_why and "one grid" in steps.coregistration
    np.testing.assert_array_equal(case.images, load_case(small_phantom).images)


def test_explain_records_the_steps_and_writes_the_mask_and_the_pose(turned, tmp_path):
    """explain on the unstripped scan: the summary, the report and the scene say what ran, the atlas's mask lies
    beside the results on the scan's grid; the pose is written as ITK reads it."""
    out = tmp_path / "run"
    scene = explain_cheaply(turned.flair.parent, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preprocessing"]["brain_mask"]["source"] == "atlas"
    assert summary["preprocessing"]["atlas"] == {"aligned": False, "why": "--no-resample",
                                                 "registration": summary["preprocessing"]["atlas"]["registration"]}
    assert not [w for w in summary["domain"]["warnings"] if "skull-stripped" in w]
    mask = sitk.ReadImage(str(out / "brain_mask.nii.gz"))
    assert ReferenceGrid.from_image(mask) == load_case(turned).grid
    assert "brain mask: the atlas" in (out / "report.html").read_text()
    panel = preprocessing_lines(summary)  # what the Slicer panel shows after the run
    assert panel[0].startswith("co-registration: measured, none registered") and panel[1].startswith("brain mask: the atlas's")
    assert panel[2] == "atlas alignment: skipped (--no-resample)"
    if scene:
        sys.path.insert(0, str(Path(__file__).parents[1] / "BrainTumorExplain"))
        from BrainTumorExplainLogic import nodes_of_class, open_scene_bundle

        names = {node.GetName() for node in nodes_of_class(open_scene_bundle(out / "scene.mrb"),
                                                            "vtkMRMLLabelMapVolumeNode")}
        assert "brain mask (atlas)" in names

    case, steps = preprocess(turned, ONE_MM)  # the pose, when it is used, goes beside the results
    written = write_preprocessing(case, steps, tmp_path / "pose")
    pose = sitk.ReadTransform(str(tmp_path / "pose" / "registration" / "flair_to_atlas.tfm"))
    point = (10.0, -20.0, 30.0)
    np.testing.assert_allclose(pose.TransformPoint(point), steps.alignment.rigid().TransformPoint(point), atol=1e-6)
    assert {path.name for path in written} == {"flair_to_atlas.tfm", "brain_mask.nii.gz"}


def test_preprocess_writes_a_case_to_check_that_explain_takes_as_preprocessed(turned, tmp_path):
    """The preprocess verb writes the masked sequences on the scan's own grid under the input's names, the mask,
    the pose and what it did; the folder is a case that needs no preprocessing again; the input is only read."""
    before = {path.name: path.read_bytes() for path in Path(turned.flair).parent.iterdir()}
    out = tmp_path / "preprocessed"
    assert main(["preprocess", str(Path(turned.flair).parent), "--out", str(out)]) == 0
    assert {path.name: path.read_bytes() for path in Path(turned.flair).parent.iterdir()} == before
    record = json.loads((out / "preprocessing.json").read_text())
    assert record["preprocessing"]["brain_mask"]["source"] == "atlas" and record["preprocessing"]["atlas"]["aligned"]
    assert {path.name for path in (out / "registration").iterdir()} == {"flair_to_atlas.tfm"}
    written = load_case(out)
    assert ReferenceGrid.from_image(sitk.ReadImage(str(out / Path(turned.flair).name))) == load_case(turned).grid
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "brain_mask.nii.gz"))) > 0
    assert np.array_equal(written.brain_mask, written.grid.to_canonical(mask))
    case, steps = preprocess(out, ONE_MM)
    assert steps.brain_mask == "as read" and not steps.atlas_aligned and "preprocessed" in steps.atlas_why
    np.testing.assert_array_equal(case.labels, load_case(turned).labels)
