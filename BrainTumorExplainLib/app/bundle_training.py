"""Training a 3D network and writing it as a MONAI bundle: the recipe of the shipped 3D network, and anyone's on a
folder of BraTS-named cases.

The network is MONAI's SegResNet as MONAI's ``brats_mri_segmentation`` bundle has it (inputs T1c, T1, T2, FLAIR;
sigmoid outputs TC, WT, ET; dropout after the first convolution; ``Orientationd`` RAS, ``Spacingd``,
``NormalizeIntensityd(nonzero, channel_wise)``), made small enough to train on two CPU cores. The bundle's configs
are written first and read back with :func:`models.bundle.read_bundle`, so the training cases reach the network
through exactly the functions that later segment and explain it (:func:`models.space.into_network_space`,
:func:`models.description.network_inputs`) — one reading of the bundle, not a training copy of it.

Batches are random cubes of the resampled cases (a share centred on tumour, as MONAI's ``RandCropByPosNegLabeld``),
flipped along each axis and scaled and shifted in intensity per channel (the bundle's ``RandFlipd``,
``RandScaleIntensityd``, ``RandShiftIntensityd``); loss: MONAI's ``DiceCELoss`` on the sigmoid regions. Everything
random flows from ``BundleTrainConfig.seed``; the checkpoint after each epoch makes an interrupted run end with the
same weights as an uninterrupted one (the 2D trainer's, :mod:`app.training`).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.case import CaseError, find_cases, load_case
from ..data.labels import region_mask
from ..models.base import evaluating, import_dynamo_privately
from ..models.bundle import read_bundle
from ..models.description import network_inputs, to_network_space
from ..models.space import into_network_space
from ..models.volume import DescribedNetwork, activate, window_inferer
from ..outputs import OutputFolder
from ..progress import progress_bar
from ..ranks import Ranks
from ..scoring.metrics import dice
from .settings import option
from .training import _resume, _save_checkpoint, data_parallel, rank_mean, schedule_option

# The bundle's channel names, in MONAI's brats_mri_segmentation order (the loader maps them to the library's).
INPUT_CHANNELS = {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}
OUTPUT_CHANNELS = {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}


@dataclass
class BundleTrainConfig:
    """What ``train-bundle`` can be asked (the fields with help are its command-line options)."""

    name: str = option("segresnet3d", "the bundle's name")
    init_filters: int = option(8, "SegResNet's first width", minimum=1)
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    dropout_prob: float = 0.2
    # 2 mm keeps a brain in about 80³ voxels, which two CPU cores can train
    spacing_mm: float = option(2.0, "isotropic training voxel size in mm", flags=("--spacing",), above=0)
    crop: int = option(64, "training cube in voxels", minimum=1)
    window: int = option(96, "inference window in voxels (SlidingWindowInferer's roi_size)", minimum=1)
    overlap: float = 0.5
    epochs: int = schedule_option("epochs", 20)
    steps_per_epoch: int = schedule_option("steps_per_epoch", 40)
    batch_size: int = schedule_option("batch_size", 2)
    learning_rate: float = schedule_option("learning_rate", 2e-3)
    weight_decay: float = 1e-5
    tumour_crop_fraction: float = 0.7
    validation_cases: int = schedule_option("validation_cases", 2)
    seed: int = schedule_option("seed", 0)
    device: str = "cpu"


def bundle_configs(config: BundleTrainConfig) -> tuple[dict, dict]:
    """``(inference.json, metadata.json)`` of the bundle ``config`` trains: a bundle MONAI runs as it is."""
    spacing = [config.spacing_mm] * 3
    network = {"_target_": "SegResNet", "blocks_down": list(config.blocks_down), "blocks_up": list(config.blocks_up),
               "init_filters": config.init_filters, "in_channels": len(INPUT_CHANNELS),
               "out_channels": len(OUTPUT_CHANNELS), "dropout_prob": config.dropout_prob}
    inference = {
        "bundle_root": ".",
        "network_def": network,
        "network": "$@network_def",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": spacing, "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [config.window] * 3, "sw_batch_size": 1,
                    "overlap": config.overlap, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "Invertd", "keys": "pred", "orig_keys": "image", "transform": "@preprocessing",
             "nearest_interp": False},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}]},
    }
    metadata = {
        "name": config.name, "version": "0.1.0",
        "description": "Demonstration weights trained on synthetic phantoms (BrainTumorExplain); not for clinical "
                       "use. Inputs: the four skull-stripped BraTS sequences; outputs: sigmoid tumour core, whole "
                       "tumour and enhancing tumour.",
        "intended_use": "Demonstrating BrainTumorExplain's 3D analyses offline; not for clinical use",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR",
                                 "num_channels": len(INPUT_CHANNELS), "spatial_shape": [config.window] * 3,
                                 "dtype": "float32", "channel_def": INPUT_CHANNELS}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(OUTPUT_CHANNELS),
                                 "spatial_shape": [config.window] * 3, "dtype": "float32",
                                 "channel_def": OUTPUT_CHANNELS}}},
    }
    return inference, metadata


def write_configs(folder: Path, config: BundleTrainConfig) -> None:
    inference, metadata = bundle_configs(config)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


@dataclass
class _Volume:
    """One training case in the network's space: inputs ``(4, ...)`` and region targets ``(3, ...)``."""

    case_id: str
    inputs: np.ndarray
    targets: np.ndarray
    tumour: np.ndarray  # flat indices of tumour voxels
    brain: np.ndarray  # flat indices of brain voxels


def _volumes(paths: list[Path], network, progress: bool) -> list[_Volume]:
    description = network.description
    volumes = []
    for path in progress_bar(paths, "load cases" if progress else None, unit="case"):
        case = into_network_space(load_case(path), network)
        if case.labels is None:
            raise CaseError(f"{path}: no labels; training needs the segmentation of every case")
        labels = to_network_space(case.labels, description.axes)
        brain = to_network_space(case.brain_mask, description.axes)
        targets = np.stack([region_mask(labels, name) for name in description.output_names]).astype(np.float32)
        volumes.append(_Volume(case.case_id, network_inputs(case, description),
                               np.ascontiguousarray(targets), np.flatnonzero(labels > 0), np.flatnonzero(brain)))
    return volumes


def _cube(volume: _Volume, size: int, rng: np.random.Generator, tumour_fraction: float
          ) -> tuple[np.ndarray, np.ndarray]:
    shape = volume.inputs.shape[1:]
    pool = volume.tumour if volume.tumour.size and rng.random() < tumour_fraction else volume.brain
    centre = np.unravel_index(pool[rng.integers(pool.size)], shape)
    corner = [int(np.clip(c - size // 2, 0, max(n - size, 0))) for c, n in zip(centre, shape)]
    box = tuple(slice(c, c + size) for c in corner)
    inputs, targets = volume.inputs[(slice(None),) + box], volume.targets[(slice(None),) + box]
    pad = [(0, 0)] + [(0, size - n) for n in inputs.shape[1:]]  # a case smaller than the cube: zeros, as outside
    return np.pad(inputs, pad), np.pad(targets, pad)


def _augment(inputs: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    for axis in range(1, 4):
        if rng.random() < 0.5:
            inputs, targets = np.flip(inputs, axis), np.flip(targets, axis)
    scale = 1.0 + rng.uniform(-0.1, 0.1, size=(inputs.shape[0], 1, 1, 1))
    shift = rng.uniform(-0.1, 0.1, size=(inputs.shape[0], 1, 1, 1))  # the inputs are z-scores: 0.1 of their spread
    return (inputs * scale + shift).astype(np.float32), np.ascontiguousarray(targets)


def _batch(volumes: list[_Volume], config: BundleTrainConfig, rng: np.random.Generator, size: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` augmented cubes (this rank's share of the recipe's batch)."""
    pairs = [_augment(*_cube(volumes[rng.integers(len(volumes))], config.crop, rng, config.tumour_crop_fraction),
                      rng) for _ in range(size)]
    return (torch.from_numpy(np.stack([x for x, _ in pairs])), torch.from_numpy(np.stack([y for _, y in pairs])))


def _validate(network, volumes: list[_Volume], device: torch.device) -> dict[str, float]:
    """Mean Dice per output region over the validation cases, whole volumes through the bundle's own inferer."""
    description = network.description
    scores = {name: [] for name in description.output_names}
    with torch.no_grad(), evaluating(network.module):
        for volume in volumes:
            logits = window_inferer(description)(torch.from_numpy(volume.inputs)[None].to(device), network.module)
            predicted = (activate(logits, description)[0] > 0.5).cpu().numpy()
            for i, name in enumerate(description.output_names):
                scores[name].append(dice(predicted[i], volume.targets[i] > 0))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def train_bundle(data_dir: str | Path, out: str | Path, config: BundleTrainConfig = BundleTrainConfig(),
                 resume: bool = True, overwrite: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print, ranks: Ranks = Ranks()) -> list[dict]:
    """Train the bundle ``config`` describes on the cases in ``data_dir`` and publish it as the folder ``out``
    (``configs/``, ``models/model.pt``, ``configs/training.json``); returns the per-epoch history. The caller's
    global torch RNG state is left as it was. ``ranks``: under torchrun, data-parallel training
    (:func:`app.training.data_parallel`); rank 0 logs and publishes."""
    cuda = torch.device(config.device).type == "cuda"
    with torch.random.fork_rng(devices=[torch.device(config.device).index or 0] if cuda else []):
        return _train_bundle(Path(data_dir), Path(out), config, resume, overwrite, progress, log, ranks)


def _train_bundle(data_dir: Path, out: Path, config: BundleTrainConfig, resume: bool, overwrite: bool,
                  progress: bool, log: Callable[[str], None], ranks: Ranks) -> list[dict]:
    from monai.losses import DiceCELoss


    device = torch.device(config.device)
    paths = find_cases(data_dir)
    if len(paths) <= config.validation_cases:
        raise CaseError(f"{data_dir}: {len(paths)} case(s) found; need more than the {config.validation_cases} "
                        "held for validation")
    folder = OutputFolder(out, [data_dir], overwrite, "train")  # checked now, published when the weights are whole
    progress, log = progress and ranks.leader, log if ranks.leader else lambda message: None
    torch.manual_seed(config.seed)
    # rank 0 publishes; the others build the same network from configs of their own
    with folder if ranks.leader else tempfile.TemporaryDirectory(prefix="bte_rank_bundle_") as work:
        work = Path(work)
        write_configs(work, config)
        module, description = read_bundle(work)
        network = DescribedNetwork(module.to(device), description)
        split = len(paths) - config.validation_cases
        training, validation = _volumes(paths[:split], network, progress), _volumes(paths[split:], network, progress)
        trained, batch_size, rng = data_parallel(module, config.batch_size, config.seed, ranks)
        import_dynamo_privately()
        optimiser = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs * config.steps_per_epoch)
        loss_of = DiceCELoss(sigmoid=True, squared_pred=True)
        checkpoint = out.with_name(out.name + ".checkpoint.pt")
        history = _resume(checkpoint, config, module, optimiser, schedule, rng, device, log, ranks) if resume else []
        for epoch in range(len(history), config.epochs):
            started = time.perf_counter()
            module.train()
            losses = []
            for _ in progress_bar(range(config.steps_per_epoch), f"epoch {epoch + 1}/{config.epochs}" if progress
                                  else None, unit="step"):
                x, y = _batch(training, config, rng, batch_size)
                loss = loss_of(trained(x.to(device)), y.to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                losses.append(loss.item())
            scores = _validate(network, validation, device)
            history.append({"epoch": epoch + 1, "loss": rank_mean(float(np.mean(losses)), ranks),
                            "validation_dice": scores, "seconds": round(time.perf_counter() - started, 1)})
            _save_checkpoint(checkpoint, config, module, optimiser, schedule, rng, history, ranks)
            log(f"epoch {epoch + 1}: loss {history[-1]['loss']:.4f}, validation Dice "
                + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        if not ranks.leader:
            return history
        torch.save(module.cpu().state_dict(), work / "models" / "model.pt")
        (work / "configs" / "training.json").write_text(json.dumps({
            "training": asdict(config), "history": history,
            "training_cases": [v.case_id for v in training], "validation_cases": [v.case_id for v in validation],
            "torch": torch.__version__}, indent=2) + "\n")
    checkpoint.unlink(missing_ok=True)
    return history
