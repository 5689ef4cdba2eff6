"""nnU-Net v2 trained-model folders: our inference against nnU-Net's own ``nnUNetPredictor`` on folders its own
trainer wrote (testbed/nnunet_example.py), what the folder may not make us run, and explain on one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BrainTumorExplainLib.app.cli import main
from BrainTumorExplainLib.testbed.nnunet_example import NNUNET_TO_CLASS, write_model_folder
from BrainTumorExplainLib.data.case import find_case_files
from BrainTumorExplainLib.errors import InputError, UsageError, WeightsError
from BrainTumorExplainLib.models.inference import case_probabilities, labels_from_probabilities
from BrainTumorExplainLib.models.nnunet import choose_folds, read_checkpoint, read_nnunet_folder
from BrainTumorExplainLib.models.registry import load_model
from BrainTumorExplainLib.models.space import prepare_case

pytest.importorskip("nnunetv2")

FLAVOURS = [("PlainConvUNet", True, "3d_fullres", (0, 1, 2)), ("ResidualEncoderUNet", False, "3d_fullres", (0, 2, 1)),
            ("PlainConvUNet", False, "2d", (0, 1, 2))]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One trained-model folder per flavour (two folds each), written by nnU-Net's own trainer."""
    root = tmp_path_factory.mktemp("nnunet")
    return {flavour: write_model_folder(root / f"m{i}", flavour[0], flavour[1], flavour[2],
                                        transpose_forward=flavour[3], seed=i)
            for i, flavour in enumerate(FLAVOURS)}


def _nnunet_predicts(folder: Path, case_files, out: Path, folds=(0, 1)) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's own predictor on the case's files in the folder's channel order: labels and probabilities, in the
    files' array order (which is the canonical order of these identity-direction phantoms)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from BrainTumorExplainLib.data.bundle_metadata import SEQUENCE_ALIASES, channel_names

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    order = channel_names(json.loads((folder / "dataset.json").read_text())["channel_names"], SEQUENCE_ALIASES,
                          "input", folder)
    paths = case_files.modality_paths()
    out.mkdir()
    predictor.predict_from_files_sequential([[str(paths[m]) for m in order]], str(out), save_probabilities=True,
                                            overwrite=True)
    written = next(out.glob("*.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(written)))
    return labels, np.load(str(written).replace(".nii.gz", ".npz"))["probabilities"]


@pytest.mark.parametrize("flavour", FLAVOURS, ids=["plain-regions-3d", "resenc-labels-3d-transposed", "plain-2d"])
def test_segmentation_agrees_with_nnunets_own_predictor(folders, flavour, small_phantom, tmp_path):
    """Same folder, same case: with nnU-Net's float16 sums our labels and probabilities are nnU-Net's (≥ 99.9 % of
    voxels, within 1e-3); with our float32 sums they differ from it only where its float16 rounding does."""
    folder = folders[flavour]
    case_files = find_case_files(small_phantom.flair.parent)
    their_labels, their_probabilities = _nnunet_predicts(folder, case_files, tmp_path / "nnunet")
    their_labels = NNUNET_TO_CLASS[their_labels]
    network = load_model(str(folder))
    assert network.folds == ("fold_0", "fold_1") and len(network.members) == 2
    case, _ = prepare_case(case_files, network)
    assert case.original is None  # the case is at the plans' spacing: nothing resampled

    as_nnunet = replace(network, description=replace(network.description, blend="nnunet-float16"))
    probabilities = case_probabilities(as_nnunet, case)
    assert (labels_from_probabilities(as_nnunet, probabilities) == their_labels).mean() >= 0.999
    assert np.abs(probabilities - their_probabilities).max() <= 1e-3

    ours = case_probabilities(network, case)
    assert (labels_from_probabilities(network, ours) == their_labels).mean() >= 0.995
    assert (np.abs(ours - their_probabilities).max(0) <= 1e-3).mean() >= 0.97


def test_a_case_off_the_plans_voxel_size_is_resized_as_nnunet_resizes_it(small_phantom, tmp_path):
    """Plans at 2.5 mm, a 3 mm case (one fold): cropped, z-scored, resized by nnU-Net's spline, the logits resized
    back before the sigmoid — nnU-Net's labels and probabilities on the case's own grid (with its float16 sums)."""
    from BrainTumorExplainLib.data.nnunet_resampling import NnUNetGrid
    from BrainTumorExplainLib.models.inference import segment_input
    from BrainTumorExplainLib.models.nnunet import background_logits
    from BrainTumorExplainLib.models.volume import activate, predict_logits

    folder = write_model_folder(tmp_path / "m", folds=(0,), spacing_mm=2.5, seed=7)
    case_files = find_case_files(small_phantom.flair.parent)
    their_labels, their_probabilities = _nnunet_predicts(folder, case_files, tmp_path / "nnunet", folds=(0,))
    network = load_model(str(folder))
    case, _ = prepare_case(case_files, network)
    assert isinstance(case.grid, NnUNetGrid) and case.grid.canonical_spacing == (2.5, 2.5, 2.5)
    as_nnunet = replace(network, description=replace(network.description, blend="nnunet-float16"))
    _, labels = segment_input(as_nnunet, case)
    assert (labels == NNUNET_TO_CLASS[their_labels]).mean() >= 0.999
    back = np.stack([case.grid.to_reference(channel, float(outside)) for channel, outside in
                     zip(predict_logits(as_nnunet, case), background_logits(network.description))])
    probabilities = activate(torch.from_numpy(back)[None], network.description)[0].numpy()
    assert (np.abs(probabilities - their_probabilities).max(0) <= 1e-3).mean() >= 0.999


@pytest.mark.parametrize("current,target,order", [((5.0, 1.0, 1.0), (1.0, 1.0, 1.0), 3), ((1.0, 1.0, 1.0), (4.0, 1.0, 1.0), 3),
                                                  ((2.0, 2.0, 2.0), (1.5, 1.5, 1.5), 3), ((1.0, 4.0, 1.0), (1.0, 1.0, 1.0), 1)])
def test_resizing_is_nnunets(current, target, order):
    """Our port of nnU-Net's resizing equals its resample_data_or_seg_to_shape, the coarse-axis rule included."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

    from BrainTumorExplainLib.data.nnunet_resampling import Resize

    data = np.random.default_rng(0).normal(size=(1, 9, 20, 18)).astype(np.float32)
    shape = tuple(int(n) for n in compute_new_shape(data.shape[1:], current, target))
    theirs = resample_data_or_seg_to_shape(data, shape, current, target, False, order, 0, None)[0]
    ours = Resize(order, 0, None)(data[0], shape, np.array(current), np.array(target))
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-6


def test_the_folder_is_described_from_its_own_files(folders):
    """Channels, outputs, axes, window and spacing come from dataset.json, plans.json and the checkpoint."""
    regions = read_nnunet_folder(folders[FLAVOURS[0]]).description
    assert regions.channels == ("t1", "t1ce", "t2", "flair") and regions.outputs == "sigmoid"
    assert regions.output_names == ("WT", "TC", "ET") and regions.axes == "SPL"
    assert regions.window == (32, 48, 48) and regions.spacing_mm == (3.0, 3.0, 3.0)
    labels = read_nnunet_folder(folders[FLAVOURS[1]]).description
    assert labels.channels == ("flair", "t1", "t1ce", "t2") and labels.outputs == "softmax"
    assert labels.output_names == ("background", "ED", "NCR", "ET") and labels.axes == "SLP"
    slices = load_model(str(folders[FLAVOURS[2]]), folds="1")
    assert slices.description.spatial_dims == 2 and slices.description.window == (1, 48, 48)
    assert slices.folds == ("fold_1",) and slices.members[0].segmenter.mirrorings == [(3,), (4,), (3, 4)]
    assert list(slices.description.layers) == [f"{part}.stages.{k}" for part, n in (("encoder", 3), ("decoder", 2))
                                               for k in range(n)]


def test_plans_from_before_the_architecture_entry_build_the_same_network(folders, tmp_path):
    """Older plans (``UNet_class_name`` and sizes) are read as nnU-Net's ConfigurationManager reads them: the same
    network, so the checkpoint's weights fit it exactly."""
    import shutil

    folder = shutil.copytree(folders[FLAVOURS[0]], tmp_path / "Dataset900_X" / folders[FLAVOURS[0]].name)
    plans = json.loads((folder / "plans.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    kwargs = configuration.pop("architecture")["arch_kwargs"]
    configuration.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=4, unet_max_num_features=16,
                         n_conv_per_stage_encoder=kwargs["n_conv_per_stage"],
                         n_conv_per_stage_decoder=kwargs["n_conv_per_stage_decoder"],
                         conv_kernel_sizes=kwargs["kernel_sizes"], pool_op_kernel_sizes=kwargs["strides"])
    (folder / "plans.json").write_text(json.dumps(plans))
    old, new = load_model(str(folder), folds="0"), load_model(str(folders[FLAVOURS[0]]), folds="0")
    window = torch.randn(1, 4, 32, 48, 48)
    with torch.no_grad():
        assert torch.equal(old.module(window), new.module(window))


@pytest.mark.parametrize("length", [176, 208, 240])
def test_coarse_layer_outputs_are_blended_over_the_whole_crop(length):
    """A layer at 1/32 of the window (an odd 5 voxels across, as nnU-Net's bottlenecks are) over crops whose scaled
    size ends in a half: every coarse voxel is covered, and a constant input blends back to that constant."""
    from torch.nn import functional as F

    from BrainTumorExplainLib.models.nnunet import NnUNetSlidingWindow

    inputs = torch.full((1, 1, 16, length, 16), 3.0)
    full, coarse = NnUNetSlidingWindow((16, 160, 16))(inputs, lambda w: (w * 2, F.avg_pool3d(w, (1, 32, 1))))
    assert torch.allclose(full, torch.full_like(full, 6.0)) and full.shape == inputs.shape
    assert coarse.shape[3] == max(1, round(length / 32)) and torch.allclose(coarse, torch.full_like(coarse, 3.0))


def test_folds_are_chosen_as_said(folders):
    folder = folders[FLAVOURS[0]]
    assert choose_folds(folder, "all") == ["fold_0", "fold_1"] and choose_folds(folder, None) == ["fold_0", "fold_1"]
    assert choose_folds(folder, "1,0") == ["fold_1", "fold_0"]
    with pytest.raises(InputError, match="fold_all/checkpoint_final.pth: no such checkpoint"):
        choose_folds(folder, "fold_all")
    with pytest.raises(UsageError, match="--folds goes with an nnU-Net"):
        load_model("simunet", folds="0")


def test_nothing_in_the_folder_is_run(folders, tmp_path):
    """A checkpoint that would build an object, a network class or a layer outside the allow-lists: refused by name."""
    import shutil

    folder = shutil.copytree(folders[FLAVOURS[0]], tmp_path / "Dataset900_X" / folders[FLAVOURS[0]].name)
    checkpoint = read_checkpoint(folder / "fold_0" / "checkpoint_final.pth")  # read as the library reads it
    checkpoint["logging"]["hook"] = Path("/")  # any object pickled by reference
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(WeightsError, match="pathlib.*would run or build"):
        read_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    plans = json.loads((folder / "plans.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    architecture["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(InputError, match="nonlin is 'os.system', not a torch layer"):
        load_model(str(folder), folds="1")
    architecture["network_class_name"] = "builtins.eval"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(InputError, match="'builtins.eval' is not one of"):
        load_model(str(folder), folds="1")


@pytest.mark.parametrize("configurations, problem", [(["3d_fullres"], "configurations is a list"),
                                                     ({"3d_fullres": "oops"}, "configurations.3d_fullres is a str")])
def test_plans_entries_that_are_not_mappings_are_named(tmp_path, configurations, problem):
    folder = tmp_path / "Dataset900_X" / "Trainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").touch()
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "FLAIR"}, "labels": {"background": 0}}))
    (folder / "plans.json").write_text(json.dumps({"configurations": configurations}))
    with pytest.raises(InputError, match=rf"plans.json: {problem} .*not a mapping"):
        read_nnunet_folder(folder)


def test_explain_an_nnunet_folder_on_the_case_grid(folders, small_phantom, tmp_path):
    """explain --model <nnU-Net folder> --folds all: every volume on the case's own grid, Grad-CAM per encoder and
    decoder stage, the uncertainty the folds' disagreement (and the mirrorings' with one fold, from `uncertainty`)."""
    folder = folders[FLAVOURS[0]]
    out = tmp_path / "run"
    assert main(["explain", str(small_phantom.flair.parent), "--model", str(folder), "--folds", "all", "--quick",
                 "--featviz-steps", "2", "--no-scene", "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["uncertainty"]["members"] == ["fold_0", "fold_1"]
    assert summary["uncertainty"]["method"].startswith("ensemble")
    stages = [f"{part}.stages.{k}" for part, n in (("encoder", 3), ("decoder", 2)) for k in range(n)]
    assert summary["gradcam"]["layers"] == stages and summary["gradcam"]["classes"] == ["WT", "TC", "ET"]
    reference = sitk.ReadImage(str(small_phantom.flair))
    for name in ["segmentation", "uncertainty", "entropy", "mutual_information"] + [
            f"gradcam/{layer}_{region}" for layer in stages for region in ("wt", "tc", "et")]:
        image = sitk.ReadImage(str(out / f"{name}.nii.gz"))
        assert (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()) == (
            reference.GetSize(), reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection()), name
    assert main(["uncertainty", str(small_phantom.flair.parent), "--model", str(folder), "--folds", "0", "--quick",
                 "--device", "cpu", "--out", str(tmp_path / "flips")]) == 0
    assert "mirrorings" in json.loads((tmp_path / "flips" / "summary.json").read_text())["method"]
