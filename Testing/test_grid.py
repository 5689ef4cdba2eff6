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


@pytest.mark.parametrize("direction", [np.diag([-1, -1, 1]), np.array(oblique_direction(33.0, (1, -1, 1))).reshape(3, 3)])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_quantised_map_reads_back_within_half_a_level_on_the_same_geometry(tmp_path, direction, suffix):
    import nibabel

    image = _image((7, 9, 6), direction)
    grid = ReferenceGrid.from_image(image)
    rng = np.random.default_rng(0)
    heat = np.maximum(rng.normal(0.0, 2e-3, grid.canonical_shape), 0).astype(np.float32)  # zeros, a tail, one peak
    heat[3, 4, 2] = 0.25
    path = grid.write(heat, tmp_path / f"map{suffix}", quantised=True)
    read = sitk.ReadImage(str(path))
    assert read.GetPixelID() == sitk.sitkFloat32  # ITK applied the header's scale
    as_float = sitk.ReadImage(str(grid.write(heat, tmp_path / f"float{suffix}")))  # NIfTI's float32 geometry
    assert (read.GetOrigin(), read.GetSpacing(), read.GetDirection()) == (
        as_float.GetOrigin(), as_float.GetSpacing(), as_float.GetDirection())
    back = grid.to_canonical(sitk.GetArrayFromImage(read))
    half_level = 0.25 / 255 / 2
    assert np.abs(back - heat).max() <= half_level * (1 + 1e-5)
    assert np.array_equal(back == 0, np.rint(heat / (2 * half_level)) == 0)  # zero stays exactly zero
    assert back.max() == pytest.approx(0.25, rel=1e-6)
    stored = nibabel.load(str(path))  # a second reader: the same values from the same header
    assert stored.get_data_dtype() == np.uint8
    np.testing.assert_allclose(np.asarray(stored.dataobj).transpose(2, 1, 0), sitk.GetArrayFromImage(read), rtol=1e-6)


def test_quantised_writes_keep_all_zero_maps_and_other_formats(tmp_path):
    grid = ReferenceGrid.from_image(_image((4, 5, 6), np.eye(3)))
    zero = grid.write(np.zeros(grid.canonical_shape, np.float32), tmp_path / "zero.nii.gz", quantised=True)
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(zero))).any()
    values = np.linspace(0, 1, 120, dtype=np.float32).reshape(grid.canonical_shape)
    nrrd = grid.write(values, tmp_path / "map.nrrd", quantised=True)  # NRRD has no scale in ITK: float32 kept
    np.testing.assert_array_equal(grid.to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(str(nrrd)))), values)
    first = (tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    for path in first:
        grid.write(values, path, quantised=True)
    assert first[0].read_bytes() == first[1].read_bytes()  # the same map, the same bytes


def test_writing_a_wrong_shape_is_refused(tmp_path):
    grid = ReferenceGrid.from_image(_image((4, 5, 6), np.eye(3)))
    with pytest.raises(ValueError, match=r"expected canonical shape \(4, 5, 6\)"):
        grid.write(np.zeros((6, 5, 4)), tmp_path / "x.nii.gz")


def test_oblique_ties_still_give_a_permutation():
    angle = np.deg2rad(45)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    reorientation = Reorientation.from_direction(tuple(direction.ravel()))
    assert sorted(reorientation.axes) == [0, 1, 2]
