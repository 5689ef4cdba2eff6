"""Canonical orientation: axes point S, P, L for any input, and results go back onto the input grid exactly."""

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_direction

from BrainTumorExplainLib.data.grid import ReferenceGrid, Reorientation


def _all_axis_directions():
    for permutation in itertools.permutations(range(3)):
        for flip in itertools.product((1, -1), repeat=3):
            yield np.eye(3)[:, permutation] * np.array(flip)


def _image(shape_kji, direction, spacing=(0.9, 1.3, 2.5), origin=(-12.5, 40.0, 7.25)):
    image = sitk.GetImageFromArray(np.arange(np.prod(shape_kji), dtype=np.float32).reshape(shape_kji))
    image.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


@pytest.mark.parametrize("direction", list(_all_axis_directions()) + [np.array(oblique_direction()).reshape(3, 3)])
def test_canonical_axes_run_superior_posterior_left(direction):
    image = _image((5, 6, 7), direction)
    grid = ReferenceGrid.from_image(image)
    canonical = grid.to_canonical(sitk.GetArrayFromImage(image))
    assert canonical.shape == grid.canonical_shape
    # Voxel values are their ITK linear index: find the physical point of canonical voxels and check the steps.
    size = image.GetSize()

    def physical(z, y, x):
        linear = int(canonical[z, y, x])
        i, j, k = linear % size[0], (linear // size[0]) % size[1], linear // (size[0] * size[1])
        return np.array(image.TransformIndexToPhysicalPoint((i, j, k)))

    origin = physical(0, 0, 0)
    for axis, lps in ((0, 2), (1, 1), (2, 0)):  # z → S (LPS z+), y → P (LPS y+), x → L (LPS x+)
        step = [0, 0, 0]
        step[axis] = 1
        delta = physical(*step) - origin
        assert np.argmax(np.abs(delta)) == lps and delta[lps] > 0
        assert np.isclose(np.linalg.norm(delta), grid.canonical_spacing[axis])


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1, -1, 1]), np.array(oblique_direction(33.0)).reshape(3, 3)])
def test_round_trip_is_exact_and_keeps_the_input_geometry(direction):
    image = _image((4, 9, 6), direction)
    grid = ReferenceGrid.from_image(image)
    original = sitk.GetArrayFromImage(image)
    back = grid.to_image(grid.to_canonical(original))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), original)
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetDirection() == image.GetDirection()


def test_writing_a_wrong_shape_is_refused(tmp_path):
    grid = ReferenceGrid.from_image(_image((4, 5, 6), np.eye(3)))
    with pytest.raises(ValueError, match=r"expected canonical shape \(4, 5, 6\)"):
        grid.write(np.zeros((6, 5, 4)), tmp_path / "x.nii.gz")


def test_oblique_ties_still_give_a_permutation():
    angle = np.deg2rad(45)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    reorientation = Reorientation.from_direction(tuple(direction.ravel()))
    assert sorted(reorientation.axes) == [0, 1, 2]
