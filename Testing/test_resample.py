"""A case off the network's grid: resampled into its space, results back on the input's own grid, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorExplainLib.app.cli import main
from BrainTumorExplainLib.data.acquisition import Acquisition, reacquire
from BrainTumorExplainLib.data.case import SAMPLE_CASE, load_case
from BrainTumorExplainLib.data.resample import (
    ResampledGrid,
    network_grid,
    obliquity_degrees,
    resample_array,
    resample_case,
    space_mismatch,
)
from BrainTumorExplainLib.errors import CaseError
from BrainTumorExplainLib.scoring.metrics import score_segmentation

# An oblique (20° in-plane), flipped, axis-permuted, anisotropic acquisition of the same head.
CLINICAL = Acquisition(spacing_mm=(3.6, 2.7, 6.0), tilt_degrees=(0.0, 0.0, 20.0), axes=(1, 0, 2),
                       flips=(False, True, False))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def clinical(small_phantom, tmp_path_factory):
    """The 3 mm phantom seen through :data:`CLINICAL`, and the phantom itself."""
    files = reacquire(small_phantom, tmp_path_factory.mktemp("clinical"), CLINICAL)
    return load_case(files), load_case(small_phantom)


def test_the_acquisition_is_the_grid_it_says(clinical):
    case, phantom = clinical
    assert case.grid.spacing == pytest.approx((3.6, 2.7, 6.0))
    assert obliquity_degrees(case.grid) == pytest.approx(20.0, abs=1e-4)
    assert obliquity_degrees(phantom.grid) == 0.0
    # The tumour stays where it is in the world: its volume in ml is kept within the coarse voxels' partial volume.
    seen, truth = (np.count_nonzero(c.labels > 0) * np.prod(c.spacing) for c in (case, phantom))
    assert seen == pytest.approx(truth, rel=0.1)


def test_off_grid_is_named_and_on_grid_is_left_alone(clinical):
    case, phantom = clinical
    assert space_mismatch(phantom.grid, (3.0, 3.0, 3.0)) is None
    assert resample_case(phantom, (3.0, 3.0, 3.0)) is phantom
    reason = space_mismatch(case.grid, (3.0, 3.0, 3.0))
    assert "voxel size" in reason and "20.0° oblique" in reason
    tilted_half_degree = ReferenceGridLike(phantom.grid, degrees=0.5)
    assert space_mismatch(tilted_half_degree, (3.0, 3.0, 3.0)) is None  # within the tolerance


def ReferenceGridLike(grid, degrees: float):
    from dataclasses import replace

    angle = np.deg2rad(degrees)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return replace(grid, direction=tuple((turn @ np.asarray(grid.direction).reshape(3, 3)).ravel()))


def test_the_network_grid_is_axis_aligned_and_covers_the_input(clinical):
    case, _ = clinical
    grid = network_grid(case.grid, (3.0, 3.0, 3.0))
    assert grid.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert grid.spacing == (3.0, 3.0, 3.0)
    # It spans the input's voxel centres: from the lowest corner centre, to the highest within half a voxel.
    direction = np.asarray(case.grid.direction).reshape(3, 3)
    corners = np.array([[bit * (n - 1) for bit, n in zip(bits, case.grid.size)] for bits in np.ndindex(2, 2, 2)])
    points = np.asarray(case.grid.origin) + (corners * case.grid.spacing) @ direction.T
    np.testing.assert_allclose(grid.origin, points.min(axis=0))
    last = np.asarray(grid.origin) + (np.asarray(grid.size) - 1) * 3.0
    assert (np.abs(last - points.max(axis=0)) <= 1.5 + 1e-6).all()
    # Around the brain: a part of that lattice, smaller, the brain well inside it (40 mm of background kept).
    around = network_grid(case.grid, (3.0, 3.0, 3.0), case.brain_mask)
    steps = (np.asarray(around.origin) - np.asarray(grid.origin)) / 3.0
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)
    assert all(a <= b for a, b in zip(around.size, grid.size)) and np.prod(around.size) < np.prod(grid.size)
    brain = resample_case(case, (3.0, 3.0, 3.0)).brain_mask
    assert brain.shape == around.canonical_shape
    # In-plane the tilted box leaves room, and 40 mm of it is kept (axially the head fills the scan's own box).
    assert not brain[:, :10].any() and not brain[:, :, :10].any()
    assert not brain[:, -10:].any() and not brain[:, :, -10:].any()


def test_resampled_case_is_the_head_on_the_network_grid(clinical):
    case, phantom = clinical
    resampled = resample_case(case, (3.0, 3.0, 3.0))
    assert isinstance(resampled.grid, ResampledGrid) and resampled.original is case and resampled.as_read is case
    assert resampled.spacing == (3.0, 3.0, 3.0)
    # Compare with the phantom itself, carried onto the same grid: the brain, the tumour and the z-scored sequences.
    truth_brain = resample_array(phantom.brain_mask, phantom.grid, resampled.grid.grid)
    truth_labels = resample_array(phantom.labels, phantom.grid, resampled.grid.grid)
    assert _dice(resampled.brain_mask, truth_brain) > 0.95
    assert _dice(resampled.labels > 0, truth_labels > 0) > 0.85  # twice through 6 mm slices and back
    inside = resampled.brain_mask & truth_brain
    for channel in range(4):
        truth = resample_array(phantom.images[channel], phantom.grid, resampled.grid.grid)
        assert np.corrcoef(resampled.images[channel][inside], truth[inside])[0, 1] > 0.8
        assert abs(resampled.images[channel][resampled.brain_mask].mean()) < 1e-4  # z-scored in the new brain
    # The input case is not changed.
    assert case.grid.spacing == pytest.approx((3.6, 2.7, 6.0)) and case.original is None


def test_every_result_is_written_on_the_input_grid_exactly(clinical, tmp_path):
    case, _ = clinical
    resampled = resample_case(case, (3.0, 3.0, 3.0))
    labels_path = resampled.write_labels(resampled.labels, tmp_path / "seg.nii.gz")
    map_path = resampled.grid.write(resampled.images[0], tmp_path / "map.nii.gz")
    source = sitk.ReadImage(str(case.files.seg))
    for path in (labels_path, map_path):
        written = sitk.ReadImage(str(path))
        assert written.GetSize() == source.GetSize()
        assert written.GetSpacing() == source.GetSpacing()
        assert written.GetOrigin() == source.GetOrigin()
        assert written.GetDirection() == source.GetDirection()
    back = load_case(case.files)  # the labels carried there and back agree with the input's own
    written_labels = case.grid.to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path))))
    assert _dice(back.label_convention.to_classes(written_labels) > 0, back.labels > 0) > 0.9
    assert sitk.ReadImage(str(labels_path)).GetPixelID() == source.GetPixelID()  # labels stay integers
    with pytest.raises(CaseError, match="resampling into a network's space"):
        resampled.save(tmp_path / "case.npz")


@pytest.fixture(scope="module")
def sample_slab(tmp_path_factory):
    """The shipped 1 mm sample case cut to the 40 axial slices about its tumour (every file, geometry kept), and that
    slab through the issue's oblique (20° in-plane), flipped, 1.2×0.9×2 mm acquisition."""
    from BrainTumorExplainLib.data.case import find_case_files

    files = find_case_files(SAMPLE_CASE)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(files.seg)))
    centre = int(np.mean(np.nonzero(seg.any(axis=(1, 2)))[0]))
    slab = tmp_path_factory.mktemp("sample_slab") / "aligned"
    slab.mkdir()
    for role in ("flair", "t1", "t1ce", "t2", "seg"):
        path = getattr(files, role)
        sitk.WriteImage(sitk.ReadImage(str(path))[:, :, centre - 20:centre + 20], str(slab / path.name))
    acquisition = Acquisition(spacing_mm=(1.2, 0.9, 2.0), tilt_degrees=(0.0, 0.0, 20.0), axes=(1, 0, 2),
                              flips=(False, True, False))
    return slab, reacquire(slab, slab.parent / "clinical", acquisition).flair.parent


def test_segment_resamples_by_default_and_scores_on_the_input_grid(sample_slab, tmp_path):
    """The shipped DenseUnet on the oblique, flipped, anisotropic sample: labels on the scan's own grid within 0.05
    WT Dice of the axis-aligned 1 mm case."""
    aligned, clinical = sample_slab
    for name, folder in (("aligned", aligned), ("clinical", clinical)):
        assert main(["segment", str(folder), "--model", "denseunet", "--out", str(tmp_path / f"{name}.nii.gz"),
                     "--device", "cpu"]) == 0
    reference = _wt_dice(tmp_path / "aligned.nii.gz", load_case(aligned))
    assert reference > 0.85
    assert _wt_dice(tmp_path / "clinical.nii.gz", load_case(clinical)) > reference - 0.05


def _wt_dice(path, case) -> float:
    image = sitk.ReadImage(str(path))
    assert case.grid.matches(image)  # on the input's own grid
    labels = case.label_convention.to_classes(case.grid.to_canonical(sitk.GetArrayFromImage(image)))
    return score_segmentation(labels, case.labels, case.spacing)["WT"].values["dice"]


def test_no_resample_is_the_control_and_is_said(small_phantom, tmp_path):
    """--no-resample feeds the 3 mm case to the 1 mm network as it is — with a warning naming why it is off."""
    with pytest.warns(UserWarning, match=r"voxel size \(3\.0, 3\.0, 3\.0\) mm, not \(1\.0, 1\.0, 1\.0\) mm; "
                                         r"denseunet was trained at"):
        assert main(["segment", str(small_phantom.flair.parent), "--model", "denseunet", "--device", "cpu",
                     "--out", str(tmp_path / "raw.nii.gz"), "--no-resample"]) == 0
    assert load_case(small_phantom).grid.matches(sitk.ReadImage(str(tmp_path / "raw.nii.gz")))


def test_scanner_intensities_keep_the_zeros_and_stay_within_their_strength():
    """The training augmentation's bias field varies each sequence by at most its strength (exp(±0.3)), the noise is
    Rician in the brain only, and the same seed gives the same scan."""
    from BrainTumorExplainLib.data.acquisition import scanner_intensities

    raw = np.zeros((4, 20, 24, 28), dtype=np.float32)
    raw[:, 4:16, 4:20, 4:24] = 100.0
    biased = scanner_intensities(raw, 0.3, 0.0, seed=1)
    inside = raw[0] > 0
    assert np.all(biased[:, ~inside] == 0)
    ratio = biased[:, inside] / 100.0
    assert ratio.min() >= np.exp(-0.3) - 1e-5 and ratio.max() <= np.exp(0.3) + 1e-5 and ratio.std() > 0.02
    noisy = scanner_intensities(raw, 0.0, 0.05, seed=1)
    assert np.all(noisy[:, ~inside] == 0) and 3.0 < noisy[:, inside].std() < 7.0
    np.testing.assert_array_equal(noisy, scanner_intensities(raw, 0.0, 0.05, seed=1))
