"""Reading cases: both BraTS namings, explicit files, conventions, normalisation, geometry, and every bad input."""

import hashlib
import sys
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_direction, synthetic_case, write_image

from BrainTumorExplainLib.data.case import CaseError, CaseFiles, find_case_files, load_case, zscore_in_mask
from BrainTumorExplainLib.data.labels import BRATS2023


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_brats2021_folder_reads_in_model_order_with_labels_as_classes(tmp_path):
    paths = synthetic_case(tmp_path, "BraTS19_A_1")
    before = _digest(tmp_path)
    case = load_case(tmp_path)
    assert case.case_id == "BraTS19_A_1"
    assert case.images.shape == (4, 12, 14, 16) and case.images.dtype == np.float32
    assert case.label_convention.name == "brats2021"
    assert sorted(np.unique(case.labels).tolist()) == [0, 1, 2, 3]  # file value 4 → class 3
    # channel order [FLAIR, T1, T1ce, T2]: the synthetic T2 was written 150 brighter; z-scoring removes the offset,
    # so check the order by the file each channel came from instead.
    assert [p.name for p in case.files.modality_paths().values()] == [
        paths[m].name for m in ("flair", "t1", "t1ce", "t2")]
    assert _digest(tmp_path) == before  # inputs never modified


def test_brats2023_naming_uses_et_equals_3(tmp_path):
    synthetic_case(tmp_path, "BraTS-GLI-00001-000", naming="brats2023", seg_values=(0, 1, 2, 3))
    case = load_case(tmp_path)
    assert case.label_convention is BRATS2023
    assert case.labels.max() == 3
    out = case.write_labels(case.labels, tmp_path / "out" / "seg.nii.gz")
    assert sorted(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))).tolist()) == [0, 1, 2, 3]


def test_2023_labels_read_as_2021_are_refused_with_the_fix_named(tmp_path):
    paths = synthetic_case(tmp_path, "X", seg_values=(0, 1, 2, 3))
    with pytest.raises(CaseError, match=r"X_seg\.nii\.gz: label values \[3\] are not in the BraTS 2018-2021"):
        load_case(tmp_path)
    case = load_case(CaseFiles(**{m: paths[m] for m in ("flair", "t1", "t1ce", "t2")}, seg=paths["seg"]),
                     convention="brats2023")
    assert case.labels.max() == 3


def test_zscore_inside_the_mask_and_zero_outside():
    volume = np.array([[[0.0, 2.0, 4.0, 6.0]]])
    mask = volume > 0
    out = zscore_in_mask(volume, mask)
    np.testing.assert_allclose(out[mask], (np.array([2, 4, 6]) - 4) / np.std([2, 4, 6]), rtol=1e-6)
    assert out[0, 0, 0] == 0


def test_oblique_flipped_case_writes_back_onto_its_own_grid(tmp_path):
    geometry = dict(spacing=(0.8, 1.1, 2.4), origin=(10.0, -20.0, 30.0), direction=oblique_direction(25.0))
    synthetic_case(tmp_path / "in", "OBL", **geometry)
    case = load_case(tmp_path / "in")
    out = case.write_labels(case.labels, tmp_path / "seg.nii.gz")
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(tmp_path / "in" / "OBL_seg.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(source))
    # The header read from the input goes back unchanged: identical geometry, bit for bit.
    assert written.GetDirection() == source.GetDirection()
    assert written.GetOrigin() == source.GetOrigin()
    assert written.GetSpacing() == source.GetSpacing()
    assert sorted(case.spacing) == pytest.approx(sorted((0.8, 1.1, 2.4)))  # NIfTI stores float32


def test_grid_mismatch_is_resampled_with_a_warning_or_refused(tmp_path):
    paths = synthetic_case(tmp_path, "G")
    moved = sitk.ReadImage(str(paths["t2"]))
    moved.SetOrigin((0.5, 0.0, 0.0))
    sitk.WriteImage(moved, str(paths["t2"]))
    with pytest.warns(UserWarning, match=r"G_t2\.nii\.gz: t2 grid .* resampled onto the reference grid"):
        case = load_case(tmp_path)
    assert case.images.shape[1:] == (12, 14, 16)
    with pytest.raises(CaseError, match=r"G_t2\.nii\.gz: t2 grid .* differs from G_flair\.nii\.gz"):
        load_case(tmp_path, on_grid_mismatch="error")


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", r"missing modality t1ce \(\*_t1ce\)"),
        ("duplicate", r"duplicate flair images: B_flair\.nii, B_flair\.nii\.gz"),
        ("not3d", r"B_t1\.nii\.gz: t1 image is 2D, expected a 3D volume"),
        ("nan", r"B_t2\.nii\.gz: t2 image has 1 NaN/Inf voxels"),
        ("zero", r"B_t1\.nii\.gz: t1 image is all zero"),
        ("corrupt", r"B_flair\.nii\.gz: cannot read flair image"),
        ("labels", r"B_seg\.nii\.gz: label values \[7\] are not in"),
        ("mixed", r"both the 2018-2021 and the 2023 BraTS naming"),
        ("empty", r"no image files"),
        ("two_cases", r"files of different cases in one folder"),
    ],
)
def test_bad_input_gets_a_clear_error_naming_the_file(tmp_path, breakage, message):
    paths = synthetic_case(tmp_path, "B")
    if breakage == "missing":
        paths["t1ce"].unlink()
    elif breakage == "duplicate":
        sitk.WriteImage(sitk.ReadImage(str(paths["flair"])), str(tmp_path / "B_flair.nii"))
    elif breakage == "not3d":
        write_image(paths["t1"], np.ones((5, 5), np.float32))
    elif breakage == "nan":
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["t2"])))
        array[5, 5, 5] = np.nan
        write_image(paths["t2"], array)
    elif breakage == "zero":
        write_image(paths["t1"], np.zeros((12, 14, 16), np.float32))
    elif breakage == "corrupt":
        paths["flair"].write_bytes(b"not an image at all")
    elif breakage == "labels":
        labels = np.zeros((12, 14, 16), np.uint8)
        labels[3, 3, 3] = 7
        write_image(paths["seg"], labels)
    elif breakage == "mixed":
        sitk.WriteImage(sitk.ReadImage(str(paths["flair"])), str(tmp_path / "B-t2f.nii.gz"))
    elif breakage == "empty":
        for path in paths.values():
            path.unlink()
    elif breakage == "two_cases":
        paths["t2"].rename(tmp_path / "C_t2.nii.gz")
    before = _digest(tmp_path)
    with pytest.raises(CaseError, match=message):
        load_case(tmp_path)
    assert _digest(tmp_path) == before


def test_explicit_files_refuse_the_same_file_twice(tmp_path):
    paths = synthetic_case(tmp_path, "E")
    files = CaseFiles(flair=paths["flair"], t1=paths["t1"], t1ce=paths["t1"], t2=paths["t2"])
    with pytest.raises(CaseError, match="given as t1 and t1ce"):
        load_case(files)


def test_find_case_files_does_not_confuse_t1_with_t1ce(tmp_path):
    synthetic_case(tmp_path, "Z")
    files = find_case_files(tmp_path)
    assert files.t1.name == "Z_t1.nii.gz" and files.t1ce.name == "Z_t1ce.nii.gz"
    assert files.naming == "brats2021"


def test_warning_free_on_a_clean_case(small_phantom):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        case = load_case(small_phantom)
    assert case.tissue is not None and case.tissue.max() == 3


def test_saved_case_loads_back_identical_without_simpleitk(tmp_path, small_phantom, monkeypatch):
    case = load_case(small_phantom.flair.parent)
    path = case.save(tmp_path / "case.npz")
    from BrainTumorExplainLib.app.explain import explain

    with pytest.raises(CaseError, match="not a saved case"):  # its reports and scene refer to the image files
        explain(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # `import SimpleITK` now fails: the load must not need it
    again = load_case(path)
    assert again.case_id == case.case_id and again.grid == case.grid
    assert again.label_convention == case.label_convention
    for name in ("images", "brain_mask", "labels", "tissue"):
        np.testing.assert_array_equal(getattr(again, name), getattr(case, name))
    with pytest.raises(ImportError):
        load_case(small_phantom.flair.parent)  # reading image files does need it


def test_saved_case_bad_files_are_refused_by_name(tmp_path):
    with pytest.raises(CaseError, match="does not exist"):
        load_case(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(CaseError, match="not a saved case"):
        load_case(tmp_path / "other.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(CaseError, match="cannot read saved case"):
        load_case(tmp_path / "broken.npz")
