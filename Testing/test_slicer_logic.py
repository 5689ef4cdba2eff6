"""The module's MRML logic on real MRML (slicer-core): loading cases and putting results back with exact geometry."""

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")  # slicer-core; part of the [test] extra, so this runs in CI
sys.path.insert(0, str(Path(__file__).parents[1] / "BrainTumorExplain"))

from BrainTumorExplainLogic import add_volume_from_canonical, ijk_to_ras, load_case_nodes  # noqa: E402
from conftest import oblique_direction, synthetic_case  # noqa: E402

from BrainTumorExplainLib.data.case import load_case  # noqa: E402

SAMPLE = Path(__file__).parents[1] / "BrainTumorExplainLib" / "sample_data" / "Phantom_01003"


def _ras_from_itk(image: sitk.Image) -> np.ndarray:
    """IJK→RAS from ITK's LPS geometry: RAS = diag(-1, -1, 1) · (origin + D · diag(spacing) · ijk)."""
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = lps_to_ras @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = lps_to_ras @ np.array(image.GetOrigin())
    return matrix


def test_sample_case_loads_as_named_nodes_with_the_files_geometry(scene):
    nodes = load_case_nodes(scene, SAMPLE)
    assert sorted(n.GetName() for n in [*nodes.volumes.values(), nodes.labels]) == sorted(
        f"Phantom_01003_{s}" for s in ("flair", "t1", "t1ce", "t2", "seg"))
    assert nodes.labels.IsA("vtkMRMLLabelMapVolumeNode")
    flair = sitk.ReadImage(str(SAMPLE / "Phantom_01003_flair.nii.gz"))
    np.testing.assert_allclose(ijk_to_ras(nodes.volumes["flair"]), _ras_from_itk(flair), atol=1e-6)
    # Slicer keeps the file's voxel order: its (k, j, i) array is ITK's array.
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes.volumes["flair"]), sitk.GetArrayFromImage(flair))


def test_node_and_library_agree_on_the_canonical_array(scene, tmp_path):
    from BrainTumorExplainLogic import node_reorientation

    synthetic_case(tmp_path, "C", spacing=(0.9, 1.2, 2.5), direction=oblique_direction(0.0, (1, 1, 1)))
    node = load_case_nodes(scene, tmp_path).labels
    case = load_case(tmp_path)
    from_node = node_reorientation(node).to_canonical(slicer.util.arrayFromVolume(node))
    np.testing.assert_array_equal(case.label_convention.to_classes(from_node), case.labels)


# The permuted directions are left-handed, which Slicer's reader stores with the slice axis reversed.
@pytest.mark.parametrize("degrees, flip", [(0.0, (1, 1, 1)), (0.0, (-1, 1, -1)), (27.0, (1, -1, 1)), (-40.0, (1, 1, -1))])
def test_library_result_goes_back_with_the_reference_ijk_to_ras(scene, tmp_path, degrees, flip):
    geometry = dict(spacing=(0.9, 1.2, 2.5), origin=(5.0, -7.5, 12.25), direction=oblique_direction(degrees, flip))
    synthetic_case(tmp_path, "OBL", **geometry)
    nodes = load_case_nodes(scene, tmp_path)
    case = load_case(tmp_path)  # library: canonical grid
    result = add_volume_from_canonical(scene, nodes.volumes["flair"], case.label_convention.from_classes(case.labels),
                                       "OBL_result", labelmap=True)
    assert np.array_equal(ijk_to_ras(result), ijk_to_ras(nodes.volumes["flair"]))  # bit for bit
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result), slicer.util.arrayFromVolume(nodes.labels))


def test_a_file_written_by_the_library_opens_in_slicer_on_the_input_geometry(scene, tmp_path):
    synthetic_case(tmp_path / "in", "W", spacing=(1.1, 0.7, 3.0), direction=oblique_direction(15.0, (-1, 1, 1)))
    case = load_case(tmp_path / "in")
    case.write_labels(case.labels, tmp_path / "seg_out.nii.gz")
    reference = load_case_nodes(scene, tmp_path / "in").volumes["flair"]
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(tmp_path / "seg_out.nii.gz"))
    written = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "written")
    assert storage.ReadData(written)
    assert np.array_equal(ijk_to_ras(written), ijk_to_ras(reference))


def test_a_quantised_map_opens_in_slicer_as_the_floats_it_stands_for(scene, tmp_path):
    """Slicer's own NIfTI reader (ITK's NiftiImageIO through the archetype storage node) applies the map's scale."""
    synthetic_case(tmp_path / "in", "Q", spacing=(1.1, 0.7, 3.0), direction=oblique_direction(15.0, (-1, 1, 1)))
    case = load_case(tmp_path / "in")
    heat = np.random.default_rng(1).random(case.brain_mask.shape).astype(np.float32) * 0.3
    path = case.grid.write(heat, tmp_path / "heat.nii.gz", quantised=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    written = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "heat")
    assert storage.ReadData(written)
    reference = load_case_nodes(scene, tmp_path / "in").volumes["flair"]
    assert np.array_equal(ijk_to_ras(written), ijk_to_ras(reference))
    in_slicer = slicer.util.arrayFromVolume(written)
    assert in_slicer.dtype == np.float32
    np.testing.assert_allclose(in_slicer, sitk.GetArrayFromImage(sitk.ReadImage(str(path))), rtol=1e-6)
    assert np.abs(case.grid.to_canonical(in_slicer) - heat).max() <= 0.3 / 255 / 2 * (1 + 1e-5)


def test_failed_load_leaves_no_nodes(scene, tmp_path):
    paths = synthetic_case(tmp_path, "F")
    paths["t2"].write_bytes(b"corrupt")
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=r"F_t2\.nii\.gz: cannot read F_t2 image"):
        load_case_nodes(scene, tmp_path)
    assert scene.GetNumberOfNodes() == before


def test_result_on_the_wrong_reference_is_refused_without_a_node(scene, tmp_path):
    synthetic_case(tmp_path / "a", "A", shape=(12, 14, 16))
    synthetic_case(tmp_path / "b", "B", shape=(10, 14, 16))
    other = load_case_nodes(scene, tmp_path / "b").volumes["flair"]
    case = load_case(tmp_path / "a")
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="pass the node of the case's reference volume"):
        add_volume_from_canonical(scene, other, case.labels, "x")
    assert scene.GetNumberOfNodes() == before


def test_the_panel_reads_your_networks_channels_without_pytorch(tmp_path):
    """"Own network": which input channel of a bundle takes which sequence, from its metadata alone (the panel shows
    it beside each input selector); a folder that is not a usable bundle is said, naming the file."""
    import json
    import subprocess

    from BrainTumorExplainLogic import network_channels

    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    metadata = {"network_data_format": {"inputs": {"image": {"channel_def": {
        "0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}}}}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    assert network_channels(str(bundle)) == {"flair": 3, "t1": 1, "t1ce": 0, "t2": 2}
    metadata["network_data_format"]["inputs"]["image"]["channel_def"] = {"0": "FLAIR", "1": "T1ce"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    assert network_channels(str(bundle)) == {"flair": 0, "t1ce": 1}  # the others are not read
    metadata["network_data_format"]["inputs"]["image"]["channel_def"] = {"0": "DWI"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="metadata.json: input channel 0 is 'DWI'"):
        network_channels(str(bundle))
    with pytest.raises(ValueError, match="neither a MONAI bundle folder"):
        network_channels(str(tmp_path))
    nnunet = tmp_path / "Dataset137_BraTS2021" / "nnUNetTrainer__nnUNetPlans__3d_fullres"  # its own channel names
    nnunet.mkdir(parents=True)
    (nnunet / "plans.json").write_text("{}")
    (nnunet / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T1ce", "2": "T2",
                                                                       "3": "Flair"}}))
    assert network_channels(str(nnunet)) == {"flair": 3, "t1": 0, "t1ce": 1, "t2": 2}
    metadata["network_data_format"]["inputs"]["image"]["channel_def"] = {"0": "T2f"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    logic = str(Path(__file__).parents[1] / "BrainTumorExplain")
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {logic!r}); "
                           "from BrainTumorExplainLogic import network_channels; "
                           f"print(network_channels({str(bundle)!r}), 'torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "{'flair': 0} False"  # read in Slicer's process: PyTorch never loads there
