"""Phantoms: reproducible, BraTS-like in geometry and contrast, with consistent tumour and tissue ground truth."""

import hashlib
import json

import numpy as np
import pytest
from conftest import SMALL

from BrainTumorExplainLib.data.case import load_case
from BrainTumorExplainLib.data.labels import region_mask
from BrainTumorExplainLib.data.phantom import PhantomConfig, make_phantom, write_phantom
from BrainTumorExplainLib.scoring.metrics import dice

SAMPLE = __import__("pathlib").Path(__file__).parents[1] / "BrainTumorExplainLib" / "sample_data" / "Phantom_01003"


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_other_case(tmp_path):
    a = write_phantom(make_phantom(11, SMALL), tmp_path / "a")
    b = write_phantom(make_phantom(11, SMALL), tmp_path / "b")
    c = write_phantom(make_phantom(12, SMALL), tmp_path / "c")
    assert _digests(a.flair.parent) == _digests(b.flair.parent)
    assert _digests(a.flair.parent).keys() != _digests(c.flair.parent).keys()  # ids differ
    assert _digests(a.flair.parent)["Phantom_00011_flair.nii.gz"] != _digests(c.flair.parent)["Phantom_00012_flair.nii.gz"]


def test_grid_is_bratslike():
    assert PhantomConfig().shape == (155, 240, 240)
    grid = PhantomConfig().grid
    assert grid.size == (240, 240, 155) and grid.spacing == (1.0, 1.0, 1.0)
    assert grid.direction == (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def test_files_follow_brats_naming_and_load(small_phantom):
    folder = small_phantom.flair.parent
    names = sorted(p.name for p in folder.iterdir())
    for suffix in ("flair", "t1", "t1ce", "t2", "seg", "tissue"):
        assert f"Phantom_00005_{suffix}.nii.gz" in names
    assert "ICBM152_NOTICE.txt" in names and "McGill" in (folder / "ICBM152_NOTICE.txt").read_text()
    description = json.loads((folder / "Phantom_00005_phantom.json").read_text())
    assert description["seed"] == 5 and description["lesions"]
    case = load_case(folder)
    assert case.images.shape == (4, 52, 80, 80)


def _median(case, channel, mask):
    return float(np.median(case.images[channel][mask]))


@pytest.mark.parametrize("seed", [3, 21])
def test_contrasts_look_like_brats(tmp_path, seed):
    case = load_case(write_phantom(make_phantom(seed, PhantomConfig(spacing_mm=2.0)), tmp_path))
    flair, t1, t1ce, t2 = range(4)
    wm, csf = case.tissue == 3, case.tissue == 1
    healthy = case.labels == 0
    edema, enhancing = case.labels == 2, case.labels == 3
    wm_healthy, csf_healthy = wm & healthy, csf & healthy
    assert _median(case, flair, edema) > _median(case, flair, wm_healthy) + 1.0  # edema bright on FLAIR
    assert _median(case, t2, edema) > _median(case, t2, wm_healthy) + 1.0  # ... and on T2
    assert _median(case, flair, csf_healthy) < _median(case, flair, wm_healthy)  # CSF dark on FLAIR
    assert _median(case, t2, csf_healthy) > _median(case, t2, wm_healthy) + 1.0  # CSF bright on T2
    assert _median(case, t1, csf_healthy) < _median(case, t1, wm_healthy)  # CSF dark on T1
    if enhancing.any():
        assert _median(case, t1ce, enhancing) > _median(case, t1ce, wm_healthy) + 1.0  # rim enhances
        necrosis = case.labels == 1
        if necrosis.sum() > 10:
            assert _median(case, t1ce, necrosis) < _median(case, t1ce, enhancing) - 1.0  # necrosis dark on T1ce


def test_ground_truth_is_consistent(small_phantom):
    case = load_case(small_phantom)
    assert not (case.labels > 0)[~case.brain_mask].any()  # tumour only inside the brain
    np.testing.assert_array_equal(case.tissue > 0, case.brain_mask)  # tissue labels exactly the brain
    assert set(np.unique(case.tissue)) == {0, 1, 2, 3}
    assert region_mask(case.labels, "WT").sum() > 0
    fractions = np.bincount(case.tissue[case.brain_mask], minlength=4)[1:] / case.brain_mask.sum()
    assert fractions[1] > 0.3 and fractions[2] > 0.2 and fractions[0] > 0.02  # GM, WM, CSF all substantial


def test_tumour_variety_across_seeds():
    cases = [make_phantom(seed, PhantomConfig(spacing_mm=4.0)) for seed in range(12)]
    kinds = {(len(c.lesions), c.lesions[0].high_grade) for c in cases}
    for case in cases:
        assert (case.labels == 3).any() == case.lesions[0].high_grade  # low grade: non-enhancing core only
    assert {grade for _, grade in kinds} == {True, False}  # high- and low-grade (no enhancing tumour)
    assert {count for count, _ in kinds} == {1, 2}  # solitary and multifocal


def test_shipped_sample_is_what_its_seed_makes():
    shipped = load_case(SAMPLE)
    regenerated = make_phantom(1003)
    assert shipped.case_id == "Phantom_01003"
    assert shipped.images.shape == (4, 155, 240, 240)
    for region in ("WT", "TC", "ET"):
        assert dice(region_mask(shipped.labels, region), region_mask(regenerated.labels, region)) > 0.999
