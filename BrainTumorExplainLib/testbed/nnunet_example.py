"""A small nnU-Net v2 trained-model folder, written by nnU-Net's own trainer with random weights: what the tests and
``bench nnunet`` run our inference and nnU-Net's ``nnUNetPredictor`` on. Needs ``nnunetv2`` (the test extra).

The folder is laid out as nnU-Net writes one (``Dataset…/<trainer>__<plans>__<configuration>/`` with
``dataset.json``, ``plans.json``, ``fold_k/checkpoint_final.pth``); each checkpoint is ``nnUNetTrainer.save_checkpoint``'s
own, after logging one epoch as training does (numpy scalars included), so the reader meets what a trained one holds.
The two ``dataset.json`` flavours are those BraTS models come with: region-based as nnU-Net's BraTS 2021 dataset
(Dataset137: T1, T1ce, T2, FLAIR; whole tumour, tumour core, enhancing tumour) and label-based as the Medical
Segmentation Decathlon's Task01 (FLAIR, T1w, t1gd, T2w; edema, non-enhancing tumor, enhancing tumour).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

ARCHITECTURES = {"PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                 "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}
REGION_DATASET = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
                  "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
                  "regions_class_order": [1, 2, 3], "numTraining": 1, "file_ending": ".nii.gz"}
# The library's class index (0 background, 1 NCR, 2 ED, 3 ET) of each nnU-Net label value both datasets write: regions
# painted 1 where WT, 2 where TC, 3 where ET (edema, non-enhancing, enhancing); labels edema 1, non-enhancing 2, 3
NNUNET_TO_CLASS = np.array([0, 2, 1, 3])
LABEL_DATASET = {"channel_names": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                 "labels": {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3},
                 "numTraining": 1, "file_ending": ".nii.gz"}


def _configuration(architecture: str, patch: tuple[int, ...], spacing: tuple[float, ...],
                   features: tuple[int, ...]) -> dict:
    dims, stages = len(patch), len(features)
    conv = f"torch.nn.modules.conv.Conv{dims}d"
    kwargs = {"n_stages": stages, "features_per_stage": list(features), "conv_op": conv,
              "kernel_sizes": [[3] * dims] * stages, "strides": [[1] * dims] + [[2] * dims] * (stages - 1),
              "n_conv_per_stage_decoder": [1] * (stages - 1), "conv_bias": True,
              "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
              "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    kwargs["n_conv_per_stage" if architecture == "PlainConvUNet" else "n_blocks_per_stage"] = [1] * stages
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {"data_identifier": f"nnUNetPlans_{dims}d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": list(patch), "median_image_size_in_voxels": [52, 80, 80][-dims:], "spacing": list(spacing),
            "normalization_schemes": ["ZScoreNormalization"] * 4, "use_mask_for_norm": [True] * 4,
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": resampling,
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
            "architecture": {"network_class_name": ARCHITECTURES[architecture], "arch_kwargs": kwargs,
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}


def write_model_folder(out: str | Path, architecture: str = "PlainConvUNet", regions: bool = True,
                       configuration: str = "3d_fullres", folds: tuple[int, ...] = (0, 1),
                       spacing_mm: float = 3.0, patch: tuple[int, ...] = (32, 48, 48),
                       transpose_forward: tuple[int, int, int] = (0, 1, 2), seed: int = 0,
                       features: tuple[int, ...] = (4, 8, 16)) -> Path:
    """Write a trained-model folder under ``out`` and return it (``configuration``: ``3d_fullres`` or ``2d``, whose
    patch is the last two of ``patch``; ``features``: per stage, each stage after the first halving the grid);
    every fold's weights drawn from ``seed + fold``."""
    import torch

    os.environ.setdefault("nnUNet_raw", str(Path(out) / "raw"))  # nnunetv2 reads these at import
    os.environ.setdefault("nnUNet_preprocessed", str(Path(out) / "preprocessed"))
    os.environ.setdefault("nnUNet_results", str(Path(out) / "results"))
    from nnunetv2 import paths
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    dataset = dict(REGION_DATASET if regions else LABEL_DATASET)
    dims = 2 if configuration == "2d" else 3
    patch = tuple(patch[-dims:])
    backward = [int(i) for i in np.argsort(transpose_forward)]
    plans = {"dataset_name": "Dataset900_Phantom", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [spacing_mm] * 3,
             "original_median_shape_after_transp": [52, 80, 80], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": list(transpose_forward), "transpose_backward": backward,
             "configurations": {configuration: _configuration(architecture, patch, (spacing_mm,) * dims, features)},
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {
                 str(c): {"max": 4.0, "mean": 0.0, "median": 0.0, "min": -4.0, "percentile_00_5": -3.0,
                          "percentile_99_5": 3.0, "std": 1.0} for c in range(4)}}
    # the trainer's initialize() reads the file type of a preprocessed dataset it never loads here: one empty file
    preprocessed = Path(paths.nnUNet_preprocessed) / plans["dataset_name"] / f"nnUNetPlans_{dims}d"
    preprocessed.mkdir(parents=True, exist_ok=True)
    (preprocessed / "case.npz").touch()
    folder = Path(out) / plans["dataset_name"] / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    for fold in folds:
        torch.manual_seed(seed + fold)
        # run_training adds continue_training to the plans it hands the trainer, which pops it again
        trainer = nnUNetTrainer({**plans, "continue_training": False}, configuration, fold, dataset,
                                device=torch.device("cpu"))
        trainer.initialize()
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the inference mirroring axes
        # as training logs them: float32 losses and Dice (np.mean of float32), float64 means, plain floats
        for key, value in (("train_losses", np.mean(np.float32([0.9, 0.8]))), ("val_losses", np.mean([0.85])),
                           ("mean_fg_dice", np.float64(0.1)),  # the logger adds its running mean itself
                           ("dice_per_class_or_region", [np.float32(0.1)] * 3), ("lrs", 0.01),
                           ("epoch_start_timestamps", 0.0), ("epoch_end_timestamps", 1.0)):
            trainer.logger.log(key, value, 0)
        trainer._best_ema = np.float64(0.1)
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        trainer.save_checkpoint(str(folder / f"fold_{fold}" / "checkpoint_final.pth"))
    return folder
