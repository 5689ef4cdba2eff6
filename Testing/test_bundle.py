"""Your own network as a MONAI bundle: built without running its code, described from its metadata and transforms,
run in 3D windows — and its segmentation compared with MONAI running the same bundle itself."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

monai = pytest.importorskip("monai")

from BrainTumorExplainLib.app.cli import main  # noqa: E402
from BrainTumorExplainLib.data.case import load_case  # noqa: E402
from BrainTumorExplainLib.errors import InputError  # noqa: E402
from BrainTumorExplainLib.models import load_model  # noqa: E402
from BrainTumorExplainLib.models.bundle import load_bundle  # noqa: E402
from BrainTumorExplainLib.models.description import (  # noqa: E402
    NetworkDescription,
    from_network_space,
    labels_from_outputs,
    to_network_space,
    truth_of_outputs,
)

# As MONAI's model zoo brats_mri_segmentation bundle (SegResNet, T1c/T1/T2/FLAIR, sigmoid TC/WT/ET), made tiny.
NETWORK = {"_target_": "SegResNet", "blocks_down": [1, 1], "blocks_up": [1], "init_filters": 8, "in_channels": 4,
           "out_channels": 3, "dropout_prob": 0.2}
INFERENCE = {
    "bundle_root": ".",
    "network_def": NETWORK,
    "network": "$@network_def",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [64, 64, 48], "sw_batch_size": 1, "overlap": 0.5},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
        {"_target_": "Lambdad", "keys": "pred",
         "func": "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))"}]},
}
METADATA = {"name": "tiny_brats_segresnet", "network_data_format": {
    "inputs": {"image": {"num_channels": 4, "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
    "outputs": {"pred": {"num_channels": 3, "channel_def": {"0": "Tumor core", "1": "Whole tumor",
                                                            "2": "Enhancing tumor"}}}}}
CHANNEL_FILES = ("t1ce", "t1", "t2", "flair")


def make_bundle(folder: Path, inference: dict = INFERENCE, seed: int = 3) -> Path:
    """A bundle folder with a seeded, untrained network (its weights are what MONAI's CheckpointSaver writes)."""
    from monai.networks.nets import SegResNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=1))
    torch.manual_seed(seed)
    network = SegResNet(**{k: v for k, v in NETWORK.items() if k != "_target_"})
    with torch.no_grad():  # an untrained net thresholds to nothing; scale the head so every label appears
        network.conv_final[-1].conv.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    torch.save({"model": network.state_dict()}, folder / "models" / "model.pt")
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny_bundle")


def spaced(inference: dict, pixdim=(4.0, 4.0, 4.0)) -> dict:
    """``inference`` trained at ``pixdim``: Spacingd after loading, Invertd back onto the input before the threshold."""
    import copy

    inference = copy.deepcopy(inference)
    inference["preprocessing"]["transforms"].insert(1, {"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim),
                                                        "mode": "bilinear"})
    inference["postprocessing"]["transforms"].insert(1, {"_target_": "Invertd", "keys": "pred", "orig_keys": "image",
                                                         "transform": "@preprocessing", "nearest_interp": False})
    return inference


@pytest.fixture(scope="module")
def spaced_bundle(tmp_path_factory):
    """The tiny bundle trained at 4 mm (the test phantoms are 3 mm)."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "spaced_bundle", spaced(INFERENCE))


def test_the_bundle_is_described_from_its_own_files(bundle):
    model, description = load_bundle(bundle)
    assert description.channels == ("t1ce", "t1", "t2", "flair")
    assert (description.outputs, description.output_names) == ("sigmoid", ("TC", "WT", "ET"))
    assert description.normalisation == "zscore-nonzero-channelwise" and description.axes == "LPS"
    assert description.window == (64, 64, 48) and description.overlap == 0.5 and description.dropout
    assert "convInit" in description.layers and "down_layers.1" in description.layers
    assert not model.training


def _monai_runs_the_bundle(bundle: Path, case_folder: Path, case_id: str) -> np.ndarray:
    """MONAI's own run: the bundle's preprocessing, network, inferer and postprocessing, through its ConfigParser
    (the bundle's expressions evaluated — this is our test bundle). Labels 0/1/2/4 in the files' (i, j, k) order."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    files = [str(case_folder / f"{case_id}_{name}.nii.gz") for name in CHANNEL_FILES]
    data = parser.get_parsed_content("preprocessing")({"image": files})
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True)["model"])
    network.eval()
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    return np.asarray(parser.get_parsed_content("postprocessing")(data)["pred"][0])


def test_segmentation_agrees_with_monai_running_the_same_bundle(bundle, small_phantom, tmp_path):
    import nibabel

    case_folder = small_phantom.flair.parent
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(case_folder), "--model", str(bundle), "--device", "cpu", "--out", str(out)]) == 0
    ours = np.asanyarray(nibabel.load(str(out)).dataobj)  # (i, j, k), labels 0/1/2/4
    theirs = _monai_runs_the_bundle(bundle, case_folder, small_phantom.case_id)
    brain = np.asanyarray(nibabel.load(str(small_phantom.flair)).dataobj) > 0
    assert ours.shape == theirs.shape == brain.shape
    assert set(np.unique(theirs[brain])) >= {0, 1, 2, 4}  # every label appears: the comparison means something
    agreement = float((ours[brain] == theirs[brain]).mean())
    assert agreement >= 0.99, agreement


def test_a_bundle_with_spacingd_sees_the_case_as_monai_resamples_it(spaced_bundle, small_phantom, tmp_path):
    """Spacingd to 4 mm: our inputs to the network are MONAI's preprocessed image (same grid, same values where MONAI
    has brain), and the labels back on the 3 mm input agree with MONAI's run (Spacingd … Invertd) on ≥ 95 % of the
    brain. Not 99 %: MONAI's torch interpolation leaves values of ~1e-13 on about 1 % of the brain's edge voxels,
    which its NormalizeIntensityd(nonzero=True) counts as brain (z ≈ -2.9, shifting every statistic); SimpleITK gives
    exact zeros there — and this untrained network amplifies every difference."""
    import nibabel
    from monai.bundle import ConfigParser

    from BrainTumorExplainLib.models.description import network_inputs
    from BrainTumorExplainLib.models.space import into_network_space

    case_folder = small_phantom.flair.parent
    network = load_model(str(spaced_bundle))
    ours = network_inputs(into_network_space(load_case(case_folder), network), network.description)
    parser = ConfigParser()
    parser.read_config(str(spaced_bundle / "configs" / "inference.json"))
    files = [str(case_folder / f"{small_phantom.case_id}_{name}.nii.gz") for name in CHANNEL_FILES]
    loaded = parser.get_parsed_content("preprocessing").transforms[0]({"image": files})
    resampled = np.asarray(parser.get_parsed_content("preprocessing").transforms[1](loaded)["image"])
    theirs = np.asarray(parser.get_parsed_content("preprocessing")({"image": files})["image"])
    assert ours.shape == theirs.shape == (4, 60, 60, 39)  # MONAI's grid for 80 x 80 x 52 voxels of 3 mm
    for channel in range(4):
        differs = (ours[channel] != 0) != (theirs[channel] != 0)
        assert np.abs(resampled[channel][differs]).max(initial=0.0) < 1e-9  # only where MONAI's zeros are not zero
        shared = (ours[channel] != 0) & (theirs[channel] != 0)
        assert np.corrcoef(ours[channel][shared], theirs[channel][shared])[0, 1] > 0.99999

    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(case_folder), "--model", str(spaced_bundle), "--device", "cpu", "--out", str(out)]) == 0
    mine = np.asanyarray(nibabel.load(str(out)).dataobj)
    monai_labels = _monai_runs_the_bundle(spaced_bundle, case_folder, small_phantom.case_id)
    brain = np.asanyarray(nibabel.load(str(small_phantom.flair)).dataobj) > 0
    assert mine.shape == monai_labels.shape == brain.shape  # back on the 3 mm input
    assert float((mine[brain] == monai_labels[brain]).mean()) >= 0.95


def test_regions_become_labels_as_nnunet_does():
    description = NetworkDescription("d", 3, ("flair", "t1", "t1ce", "t2"), "zscore-brain", "sigmoid",
                                     ("TC", "WT", "ET"))
    outputs = np.zeros((3, 1, 1, 4), np.float32)
    outputs[1, 0, 0, 1:] = 0.9  # WT
    outputs[0, 0, 0, 2:] = 0.9  # TC
    outputs[2, 0, 0, 3] = 0.9  # ET
    assert labels_from_outputs(outputs, description).ravel().tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize("outputs, names", [("sigmoid", ("TC", "WT", "ET")), ("sigmoid", ("WT", "TC", "ET")),
                                             ("softmax", ("background", "ED", "NCR", "ET"))])
def test_the_truth_of_each_output_channel_turns_back_into_the_labels(outputs, names):
    """Issue 41: calibration scores each output channel against what it should say (its region, or its class, in
    the network's own channel order): that truth, read as outputs, gives the labels back."""
    description = NetworkDescription("d", 3, ("flair", "t1", "t1ce", "t2"), "zscore-brain", outputs, names)
    labels = np.random.default_rng(0).integers(0, 4, (3, 4, 5)).astype(np.uint8)
    truth = truth_of_outputs(labels, description)
    assert truth.shape == (len(names),) + labels.shape and truth.dtype == bool
    np.testing.assert_array_equal(labels_from_outputs(truth.astype(np.float32), description), labels)
    if outputs == "sigmoid":
        np.testing.assert_array_equal(truth[names.index("WT")], labels > 0)


@pytest.mark.parametrize("axes", ["SPL", "LPS", "RAS", "ARI", "IPR"])
def test_network_space_round_trips_exactly(axes):
    array = np.random.default_rng(0).random((2, 3, 4, 5))
    there = to_network_space(array, axes)
    np.testing.assert_array_equal(from_network_space(there, axes), array)
    if axes == "LPS":  # a BraTS file as nibabel reads it: (i, j, k) = canonical (x, y, z)
        np.testing.assert_array_equal(there, array.transpose(0, 3, 2, 1))


def test_bundle_code_is_never_run_unless_trusted(tmp_path, small_phantom):
    inference = {**INFERENCE, "network_def": {**NETWORK, "init_filters": "$__import__('os').getpid()"}}
    folder = make_bundle(tmp_path / "evil", inference)
    with pytest.raises(InputError, match=r"network_def.init_filters is .*pass --trust-bundle"):
        load_bundle(folder)
    other = {**INFERENCE, "network_def": {**NETWORK, "_target_": "os.system"}}
    with pytest.raises(InputError, match="not a network class of monai.networks.nets"):
        load_bundle(make_bundle(tmp_path / "other", other))


@pytest.mark.parametrize("where, value", [("network_def", "SegResNet"), ("inferer", [64, 64, 48]),
                                          ("preprocessing", "Compose")])
def test_a_config_entry_that_is_not_a_mapping_is_named(tmp_path, capsys, where, value):
    folder = make_bundle(tmp_path / "odd", {**INFERENCE, where: value})
    with pytest.raises(InputError, match=rf"inference.json: {where} is a {type(value).__name__} .*not a mapping"):
        load_bundle(folder)
    assert main(["segment", str(tmp_path / "case"), "--model", str(folder), "--device", "cpu", "--out",
                 str(tmp_path / "s.nii.gz")]) == 2
    assert f"{where} is a {type(value).__name__}" in capsys.readouterr().err


def test_a_config_file_that_is_not_a_mapping_is_named(tmp_path):
    folder = make_bundle(tmp_path / "list")
    (folder / "configs" / "metadata.json").write_text("[]")
    with pytest.raises(InputError, match=r"metadata.json: holds a list, not a mapping of settings"):
        load_bundle(folder)


def test_a_yaml_config_with_a_python_tag_is_refused_in_one_line(tmp_path):
    folder = make_bundle(tmp_path / "yaml")
    (folder / "configs" / "inference.json").unlink()
    config = folder / "configs" / "inference.yaml"
    config.write_text("network_def:\n  _target_: SegResNet\nnetwork: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(InputError) as refused:
        load_bundle(folder)
    assert str(refused.value) == (f"{config}: line 3: the YAML tag !!python/object/apply:os.system would build a "
                                  "Python object (run code), and nothing loaded from a config does")


def test_transforms_it_does_not_reproduce_are_refused_by_name(tmp_path):
    crop = {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"}
    inference = {**INFERENCE, "preprocessing": {"_target_": "Compose", "transforms": [
        *INFERENCE["preprocessing"]["transforms"], crop]}}
    with pytest.raises(InputError, match="uses CropForegroundd, which this project does not reproduce"):
        load_bundle(make_bundle(tmp_path / "crop", inference))


def test_normalisation_matches_monai_on_the_raw_sequences(small_phantom):
    """The case's z-scores turned back into MONAI's NormalizeIntensity(nonzero, channel_wise) of the raw files."""
    import SimpleITK as sitk
    from monai.transforms import NormalizeIntensity

    from BrainTumorExplainLib.models.description import network_inputs

    case = load_case(small_phantom.flair.parent)
    description = NetworkDescription("d", 3, ("t1ce", "flair"), "zscore-nonzero-channelwise", "sigmoid",
                                     ("TC", "WT", "ET"), axes="SPL")
    ours = network_inputs(case, description)
    raw = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(getattr(small_phantom, m)))).astype(np.float32)
                    for m in ("t1ce", "flair")])
    theirs = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(raw))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-4)  # identity-direction files: ITK order is canonical


def test_load_model_gives_the_described_network(bundle):
    network = load_model(str(bundle))
    assert network.description.name == "tiny_brats_segresnet" and network.architecture == "tiny_brats_segresnet"


def test_uncertainty_without_dropout_comes_from_flips_and_says_so(bundle, small_phantom):
    from BrainTumorExplainLib.analyses.uncertainty import uncertainty_volume

    network = load_model(str(bundle))
    case = load_case(small_phantom.flair.parent)
    for module in network.module.modules():  # a copy of the network as if it had no dropout
        if isinstance(module, torch.nn.Dropout3d) or isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
    from dataclasses import replace

    without = type(network)(network.module, replace(network.description, dropout=False, window=None))  # one window
    flips = uncertainty_volume(without, case)
    assert flips.method == "flips" and flips.passes.max() == 8
    assert flips.variance.shape == case.brain_mask.shape and flips.variance[case.brain_mask].max() > 0
    again = uncertainty_volume(without, case)
    np.testing.assert_array_equal(again.variance, flips.variance)  # deterministic
    assert (flips.mutual_information >= 0).all() and (flips.entropy >= flips.mutual_information - 1e-6).all()


def test_test_time_dropout_of_a_bundle_is_seeded(bundle, small_phantom):
    from dataclasses import replace

    from BrainTumorExplainLib.analyses.uncertainty import uncertainty_volume

    network = load_model(str(bundle))
    network = type(network)(network.module, replace(network.description, window=None))  # the case in one window
    case = load_case(small_phantom.flair.parent)
    first = uncertainty_volume(network, case, passes=3, seed=1)
    assert first.method == "dropout"
    np.testing.assert_array_equal(first.variance, uncertainty_volume(network, case, passes=3, seed=1).variance)
    assert not np.array_equal(first.variance, uncertainty_volume(network, case, passes=3, seed=2).variance)
    assert not network.module.training  # back in eval mode


def test_windowed_gradcam_equals_monai_gradcam_on_one_window(bundle):
    """All layers from one forward and one backward per target, against MONAI's GradCAM called per layer and class
    on the same window, both unnormalised: MONAI pools the logits by their sum where eq. 3 takes their mean, so its
    maps are ours times the window's voxel count."""
    from monai.visualize import GradCAM

    from BrainTumorExplainLib.analyses.gradcam import gradcam_maps

    network = load_model(str(bundle))
    torch.manual_seed(0)
    window = torch.randn(1, 4, 32, 32, 32)
    layers = ["convInit", "down_layers.1", "up_layers.0"]
    ours = gradcam_maps(network, window, layers, target="logits")
    for layer in layers:
        cam = GradCAM(nn_module=network.module, target_layers=layer, postprocessing=lambda x: x)
        for j in range(3):
            theirs = cam(window, class_idx=j)[0, 0]
            assert theirs.max() > 0
            mine = ours[layer][0, j] * window[0, 0].numel()  # MONAI's y(c) is the sum, ours the mean (eq. 3)
            relative = float((mine - theirs).abs().max() / theirs.abs().max())
            assert relative <= 1e-3, (layer, j, relative)


def test_windowed_gradcam_of_the_predicted_region_equals_captum(bundle):
    """pool="predicted": y(c) averages a region's logits over the voxels the network assigns to it (> 0), against
    Captum's LayerGradCam of the masked sum (its maps are ours times the region's voxel count)."""
    from captum.attr import LayerGradCam

    from BrainTumorExplainLib.analyses.gradcam import gradcam_maps

    network = load_model(str(bundle))
    torch.manual_seed(0)
    window = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        mask = (network.module(window) > 0).float()
    assert 0 < int(mask.sum()) < mask.numel()
    ours = gradcam_maps(network, window, ["convInit"], target="logits", pool="predicted")["convInit"]
    layer = network.module.get_submodule("convInit")
    captum = LayerGradCam(lambda x: (network.module(x) * mask).flatten(2).sum(-1), layer)
    for j in range(3):
        theirs = captum.attribute(window, target=j, relu_attributions=True)[0, 0].detach()
        count = float(mask[0, j].sum())
        if count == 0:
            assert not ours[0, j].any()
            continue
        relative = float((ours[0, j] * count - theirs).abs().max() / theirs.abs().max())
        assert relative <= 1e-3, (j, relative)


def test_volume_gradcam_covers_the_case(bundle, small_phantom):
    from BrainTumorExplainLib.analyses.gradcam import gradcam_volume

    network = load_model(str(bundle))
    case = load_case(small_phantom.flair.parent)
    cams = gradcam_volume(network, case, "down_layers.1,conv_final", "wt")  # by the output's name, or [1]
    assert set(cams.maps) == {("down_layers.1", 1), ("conv_final", 1)} and cams.name(1) == "WT"
    assert cams.maps[("down_layers.1", 1)].shape == case.brain_mask.shape
    assert all((m >= 0).all() and m.any() for m in cams.maps.values())


def test_ablating_a_bundles_output_convolution_leaves_only_background(bundle, small_phantom):
    """Issue 44, filter ablation on a 3D network (hooks by module path): with all three output channels of
    conv_final zeroed every sigmoid is 0.5, which is no region, so every voxel the intact bundle labelled changes."""
    from BrainTumorExplainLib.analyses.ablation import filter_ablation
    from BrainTumorExplainLib.models.inference import case_probabilities, labels_from_probabilities

    network = load_model(str(bundle))
    case = load_case(small_phantom.flair.parent)
    intact = labels_from_probabilities(network, case_probabilities(network, case))
    rows = filter_ablation(network, case, [("conv_final", k) for k in range(3)], together=True)["rows"]
    assert rows[0]["changed_voxels"] == pytest.approx((intact > 0)[case.brain_mask].mean())
    assert intact.any() and rows[0]["agreement"]["WT"] == 0.0


def test_classes_a_bundle_does_not_output_are_refused_before_any_work(bundle, small_phantom, tmp_path, capsys):
    """--classes names a described network's outputs (by its names, the library's or their index); one it lacks is
    one error line listing them, before anything is computed or written — on gradcam and explain alike."""
    folder = str(small_phantom.flair.parent)
    for verb, extra in (("gradcam", []), ("explain", ["--quick", "--no-scene"])):
        out = tmp_path / verb
        assert main([verb, folder, "--model", str(bundle), "--classes", "ed", *extra, "--out", str(out)]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("error: --classes ed:") and "its outputs: 0 TC, 1 WT, 2 ET" in error, error
        assert not out.exists()


def test_explain_a_bundle_on_the_case_grid(spaced_bundle, small_phantom, tmp_path):
    """explain --model <bundle folder> (a bundle trained at 4 mm, a 3 mm case): segmentation, uncertainty saying its
    method, Grad-CAM per layer and region, summary, report and scene — every volume on the case's own grid, the
    resampling said; concepts said to be unavailable."""
    import SimpleITK as sitk

    out = tmp_path / "run"
    assert main(["explain", str(small_phantom.flair.parent), "--model", str(spaced_bundle), "--layers",
                 "down_layers.1,conv_final", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    reference = sitk.ReadImage(str(small_phantom.flair))
    names = ["segmentation", "uncertainty", "entropy", "mutual_information"] + [
        f"gradcam/{layer}_{region}" for layer in ("down_layers.1", "conv_final") for region in ("tc", "wt", "et")]
    for name in names:
        image = sitk.ReadImage(str(out / f"{name}.nii.gz"))
        assert (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()) == (
            reference.GetSize(), reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection()), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "spaced_bundle" and summary["uncertainty"]["method"].startswith("test-time dropout")
    assert summary["network_space"]["resampled"] and summary["network_space"]["to"]["spacing_mm"] == [4.0, 4.0, 4.0]
    assert "resampled into the network's space" in (out / "report.html").read_text()
    assert summary["gradcam"]["classes"] == ["TC", "WT", "ET"] and "not_computed" in summary["concepts"]
    assert summary["scene"] == "scene.mrb" and (out / "report.html").is_file()


def test_a_case_off_the_training_spacing_is_resampled_or_said(small_phantom):
    import warnings
    from dataclasses import replace

    from BrainTumorExplainLib.data.resample import ResampledGrid
    from BrainTumorExplainLib.models.space import into_network_space, training_spacing
    from BrainTumorExplainLib.models.volume import DescribedNetwork

    case = load_case(small_phantom.flair.parent)  # 3 mm
    description = NetworkDescription("one_mm_net", 3, ("flair", "t1", "t1ce", "t2"), "zscore-brain", "sigmoid",
                                     ("TC", "WT", "ET"), axes="RAS", spacing_mm=(2.0, 1.5, 1.0))
    network = DescribedNetwork(torch.nn.Identity(), description)
    assert training_spacing(network) == (1.0, 1.5, 2.0)  # RAS order R, A, S → canonical S, P, L
    with pytest.warns(UserWarning, match=r"voxel size \(3.0, 3.0, 3.0\) mm, not \(1.0, 1.5, 2.0\) mm"):
        assert into_network_space(case, network, resample=False) is case
    resampled = into_network_space(case, network)
    assert isinstance(resampled.grid, ResampledGrid) and resampled.original is case
    assert resampled.spacing == pytest.approx((1.0, 1.5, 2.0))
    own = DescribedNetwork(network.module, replace(description, spacing_mm=(3.0, 3.0, 3.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert into_network_space(case, own) is case  # at its own spacing: untouched, nothing said


def test_a_torchscript_bundle_segments_and_says_what_it_cannot_do(bundle, small_phantom, tmp_path, capsys):
    """models/model.ts (MONAI's ckpt_export): a program in the file, so loaded only when trusted; its segmentation
    is the eager network's, its uncertainty comes from flips, and the layer analyses are refused by name."""
    import shutil

    from BrainTumorExplainLib.analyses.gradcam import gradcam_volume
    from BrainTumorExplainLib.analyses.uncertainty import uncertainty_volume
    from BrainTumorExplainLib.errors import UsageError
    from BrainTumorExplainLib.models.inference import case_probabilities

    scripted = tmp_path / "scripted"
    shutil.copytree(bundle, scripted)
    eager = load_model(str(bundle))
    torch.jit.script(eager.module).save(str(scripted / "models" / "model.ts"))
    (scripted / "models" / "model.pt").unlink()
    with pytest.raises(InputError, match="model.ts: a TorchScript network is a program"):
        load_model(str(scripted))
    network = load_model(str(scripted), trust_code=True)
    description = network.description
    assert description.torchscript and not description.dropout and description.layers == {}
    case = load_case(small_phantom.flair.parent)
    np.testing.assert_allclose(case_probabilities(network, case), case_probabilities(eager, case), atol=1e-5)
    assert uncertainty_volume(network, case).method == "flips"
    with pytest.raises(UsageError, match="TorchScript network: forward hooks do not run"):
        gradcam_volume(network, case)

    folder, out = str(small_phantom.flair.parent), tmp_path / "seg.nii.gz"
    assert main(["segment", folder, "--model", str(scripted), "--out", str(out)]) == 2
    assert "pass --trust-bundle" in capsys.readouterr().err and not out.exists()
    assert main(["segment", folder, "--model", str(scripted), "--trust-bundle", "--out", str(out)]) == 0
    assert main(["gradcam", folder, "--model", str(scripted), "--trust-bundle", "--out", str(tmp_path / "g")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and "forward hooks do not run" in error and not (tmp_path / "g").exists()

    # The eager bundle through the same verb: every output channel's map per layer, on the case's grid.
    assert main(["gradcam", folder, "--model", str(bundle), "--layers", "down_layers.1", "--out",
                 str(tmp_path / "g")]) == 0
    written = sorted(p.name for p in (tmp_path / "g" / bundle.name).glob("*.nii.gz"))
    assert len(written) == 3 and all(name.startswith("down_layers.1_") for name in written)


def test_dissection_of_a_bundle_over_volumes(bundle, training_phantoms, small_phantom, tmp_path):
    """3D network dissection: each filter's threshold is numpy's exact quantile of its activations in the brains'
    boxes (within the stated bound), the IoU sums are those of the concept masks the same thresholds make on each
    case's own grid, and explain --dissection writes those masks for a bundle and the 3D pre-images of their
    filters."""
    import SimpleITK as sitk

    from BrainTumorExplainLib.analyses.dissection import Dissection, concept_masks, filter_concept_masks
    from BrainTumorExplainLib.models.interface import analysed, brain_box

    def layer_activations(network, case, layers):  # layer → (K, *layer grid) over the whole case
        [(_, activations)] = analysed(network).activation_batches(case, layers, None, 1, torch.device("cpu"))
        return {layer: activation[0] for layer, activation in activations.items()}
    from BrainTumorExplainLib.data.case import find_cases
    from BrainTumorExplainLib.models.description import network_inputs

    network = load_model(str(bundle))
    cases = find_cases(training_phantoms)
    # Layers at the window's resolution and at half of it, stitched together, are each what MONAI's inferer stitches
    # for that layer alone (up_layers.0, at full size, sorts after the half-size down_layers.1).
    case = load_case(small_phantom.flair.parent)
    together = layer_activations(network, case, ["convInit", "down_layers.1", "up_layers.0"])
    assert together["down_layers.1"].shape[1:] != together["up_layers.0"].shape[1:]
    for layer, activation in together.items():
        torch.testing.assert_close(activation, layer_activations(network, case, [layer])[layer])
    # A block and its last module give one tensor: MONAI's inferer weights each output in place, so it must be two
    block = layer_activations(network, case, ["convInit", "convInit.conv", "conv_final", "conv_final.2"])
    torch.testing.assert_close(block["convInit"], block["convInit.conv"], rtol=0, atol=0)
    torch.testing.assert_close(block["conv_final"], block["conv_final.2"], rtol=0, atol=0)
    torch.testing.assert_close(block["convInit"], together["convInit"], rtol=0, atol=0)
    layers = ["convInit", "down_layers.1"]
    out = tmp_path / "dissection"
    assert main(["dissect", "--data", str(training_phantoms), "--model", str(bundle), "--layers", ",".join(layers),
                 "--concepts", "WT,brain", "--iou", "0", "--mask-cases", "1", "--out", str(out)]) == 0
    result = Dissection.load(out / "dissection.json")
    assert result.architecture == network.architecture and result.quantile == 0.99
    assert set(result.controls) == {"random weights", "raw input"}
    values = {layer: [] for layer in layers}
    raw_values = []  # the raw-input control's "filters": the network's input channels as it receives them
    for path in cases:
        case = load_case(path)
        brain = to_network_space(case.brain_mask, network.description.axes)
        for layer, activation in layer_activations(network, case, layers).items():
            box = brain_box(brain, tuple(activation.shape[1:]))
            values[layer].append(activation[(slice(None),) + box].flatten(1).numpy())
        inputs = network_inputs(case, network.description)
        raw_values.append(inputs[(slice(None),) + brain_box(brain, inputs.shape[1:])].reshape(len(inputs), -1))
    for layer in layers:
        exact = np.quantile(np.concatenate(values[layer], axis=1), 0.99, axis=1)
        found = result.layers[layer]
        assert found.thresholds.shape == exact.shape == (network.module.get_submodule(layer).conv.out_channels
                                                         if layer == "convInit" else exact.shape[0],)
        assert (np.abs(found.thresholds - exact) <= found.threshold_error + 1e-6).all()
    raw = result.controls["raw input"].layers["input"]
    exact = np.quantile(np.concatenate(raw_values, axis=1), 0.99, axis=1)
    assert (np.abs(raw.thresholds - exact) <= raw.threshold_error + 1e-6).all()
    random = result.controls["random weights"].layers["convInit"]
    assert random.thresholds.shape == result.layers["convInit"].thresholds.shape
    assert not np.allclose(random.thresholds, result.layers["convInit"].thresholds)

    picks = [("down_layers.1", k) for k in range(len(result.layers["down_layers.1"].thresholds))]
    intersection = np.zeros((len(picks), 2), np.int64)
    for path in cases:
        case = load_case(path)
        masks = filter_concept_masks(network, case, result, picks)
        truth = concept_masks(case, ["WT", "brain"])
        intersection += [[int((masks[pick] & truth[c]).sum()) for c in range(2)] for pick in picks]
        assert all(not (mask & ~case.brain_mask).any() for mask in masks.values())
    np.testing.assert_array_equal(intersection, result.layers["down_layers.1"].intersection)

    # A dissection without controls (these tiny trained filters need not beat them): every filter over the cutoff
    # is a detector, and explain says no control was measured.
    result.controls = {}
    uncontrolled = result.save(tmp_path / "uncontrolled.json")
    run = tmp_path / "run"
    assert main(["explain", str(small_phantom.flair.parent), "--model", str(bundle), "--layers", "conv_final",
                 "--dissection", str(uncontrolled), "--quick", "--no-scene", "--featviz-steps", "3",
                 "--featviz-size-3d", "16", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    detectors = summary["concepts"]["detectors"]
    assert detectors and {d["concept"] for d in detectors} <= {"WT", "brain"} and (run / "concepts").is_dir()
    assert summary["concepts"]["controls"].startswith("not measured")
    controls = summary["gradcam"]["controls"]  # the Grad-CAM localisation beside random weights and raw input
    assert controls["slices"] > 0 and set(controls["targets"]) == {"TC", "WT", "ET"}  # every slice, in 3D
    assert list(controls["targets"]["WT"]["layers"]) == ["conv_final"]
    assert controls["targets"]["WT"]["raw input"]["channel"] in network.description.channels
    assert summary["featviz"]["template"].startswith("this case")
    regularised = summary["featviz"]["regularised"]
    assert regularised["axes"] == network.description.axes and regularised["sequences"] == list(CHANNEL_FILES)
    with np.load(run / "featviz" / "detectors.npz") as preimages:
        assert preimages["regularised_images"].shape == (len(detectors), 4, 16, 16, 16)
    assert (run / "featviz" / "detectors.png").is_file()
    reference = sitk.ReadImage(str(small_phantom.flair))
    for mask in (run / "concepts").glob("*.nii.gz"):
        image = sitk.ReadImage(str(mask))
        assert (image.GetSize(), image.GetOrigin(), image.GetDirection()) == (
            reference.GetSize(), reference.GetOrigin(), reference.GetDirection())


def test_the_uncertainty_verb_runs_a_bundle(bundle, small_phantom, tmp_path):
    import SimpleITK as sitk

    folder, out = str(small_phantom.flair.parent), tmp_path / "uncertainty"
    assert main(["uncertainty", folder, "--model", str(bundle), "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"].startswith("test-time dropout") and summary["passes"]["mean"] == 8
    reference, written = sitk.ReadImage(str(small_phantom.flair)), sitk.ReadImage(str(out / "uncertainty.nii.gz"))
    assert (written.GetSize(), written.GetOrigin(), written.GetDirection()) == (
        reference.GetSize(), reference.GetOrigin(), reference.GetDirection())


def test_an_ensemble_of_bundle_weights_says_it_is_one(bundle, small_phantom, tmp_path, capsys):
    """uncertainty --ensemble: two state dicts of the bundle's network (as two folds would be) give the members'
    spread, on the case's grid, named as an ensemble with its members; one file alone is refused before any work."""
    import SimpleITK as sitk

    members = [make_bundle(tmp_path / f"fold{seed}", seed=seed) / "models" / "model.pt" for seed in (4, 5)]
    folder, out = str(small_phantom.flair.parent), tmp_path / "ensemble"
    assert main(["uncertainty", folder, "--model", str(bundle), "--ensemble", ",".join(map(str, members)),
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "ensemble" and summary["mode"] == "ensemble" and summary["passes"]["max"] == 2
    assert summary["members"] == [str(path) for path in members]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty.nii.gz")))
    assert written.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(small_phantom.flair))).shape
    assert written.max() > 0
    capsys.readouterr()
    assert main(["uncertainty", folder, "--model", str(bundle), "--ensemble", str(members[0]),
                 "--out", str(tmp_path / "one")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and "at least two" in error and not (tmp_path / "one").exists()

    # explain says it too, and the scene names every uncertainty map by its kind
    run = tmp_path / "explain"
    assert main(["explain", folder, "--model", str(bundle), "--layers", "conv_final", "--ensemble",
                 ",".join(map(str, members)), "--out", str(run)]) == 0
    explained = json.loads((run / "summary.json").read_text())["uncertainty"]
    assert explained["source"] == "ensemble" and explained["members"] == [str(path) for path in members]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(run / "uncertainty.nii.gz"))), written)
    if importlib.util.find_spec("slicer") is not None:
        sys.path.insert(0, str(Path(__file__).parents[1] / "BrainTumorExplain"))
        from BrainTumorExplainLogic import nodes_of_class, open_scene_bundle

        names = {node.GetName() for node in nodes_of_class(open_scene_bundle(run / "scene.mrb"), "vtkMRMLVolumeNode")}
        assert {"uncertainty (ensemble)", "entropy (ensemble)", "mutual_information (ensemble)"} <= names


def test_activation_maximisation_of_a_3d_network(bundle, training_phantoms, tmp_path, capsys):
    """featviz --model <bundle>: a 4×16³ pre-image per filter in the network's channel order, its activation raised
    by the ascent; the style template is the network's own (template --model), a slice template refused."""
    from BrainTumorExplainLib.analyses.featviz import (
        FeatvizConfig,
        Regularisers,
        filter_activation,
        load_template,
        shipped_template_path,
        visualise_filters,
    )

    network = load_model(str(bundle))
    capsys.readouterr()
    assert main(["featviz", "--model", str(bundle), "--layer", "convInit", "--filters", "0",
                 "--out", str(tmp_path / "f")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and "template --data" in error and not (tmp_path / "f").exists()
    with pytest.raises(InputError, match="template must be"):
        load_template(shipped_template_path(), 16, network)

    template = tmp_path / "template.npz"
    assert main(["template", "--data", str(training_phantoms), "--model", str(bundle), "--size", "16",
                 "--out", str(template)]) == 0
    volume = load_template(template, 16, network)
    assert volume.shape == (4, 16, 16, 16) and np.isfinite(volume).all() and volume.std() > 0.1
    out = tmp_path / "featviz"
    assert main(["featviz", "--model", str(bundle), "--filters", "convInit:1,down_layers.1:2", "--size", "16",
                 "--steps", "4", "--template", str(template), "--out", str(out)]) == 0
    with np.load(out / "featviz_convInit+down_layers.1.npz") as written:
        assert written["regularised_images"].shape == (2, 4, 16, 16, 16)
    assert (out / "featviz_convInit+down_layers.1.png").is_file()

    plain = visualise_filters(network, [("convInit", 1), ("down_layers.1", 2)], Regularisers.none(),
                              FeatvizConfig(steps=8, size=16))
    assert plain.sequences == CHANNEL_FILES and plain.axes == network.description.axes
    assert (plain.final_activation > plain.start_activation + 0.05).all()
    with torch.no_grad():  # the recorded activation is the filter's on the returned pre-image
        again = filter_activation(network, torch.from_numpy(plain.images), plain.targets).numpy()
    np.testing.assert_allclose(again, plain.final_activation, rtol=1e-5, atol=1e-6)
