"""An nnU-Net v2 trained-model folder (``dataset.json``, ``plans.json``, ``fold_k/checkpoint_final.pth``) as a
described network, run as nnU-Net's ``nnUNetPredictor`` runs it, without running any code from the folder.

* The network is rebuilt from the plans' ``architecture`` (``network_class_name`` and ``arch_kwargs``) through
  ``dynamic-network-architectures``, the package nnU-Net builds it with; the class must be one of
  :data:`NETWORK_CLASSES` and every ``_kw_requires_import`` entry one of :data:`TORCH_CLASSES` — nnU-Net's own
  ``pydoc.locate`` would import whatever the file names (older plans, without ``architecture``, are read as nnU-Net
  reads them). Deep supervision is off, as nnU-Net infers.
* Each fold's checkpoint is read with ``torch.load(weights_only=True)``; what a real checkpoint holds besides tensors
  and plain values (numpy scalars and dtypes in its training log) is allowed by name (:data:`CHECKPOINT_GLOBALS`), and
  anything else is refused naming it.
* Inference as nnU-Net's: the plans' axis transpose (the description's ``axes``), the per-channel z-score the plans
  name (over the non-zero mask, holes filled, when ``use_mask_for_norm``: :func:`models.description.network_inputs`),
  the plans' voxel size, the sliding window over the crop to the non-zero region with nnU-Net's step positions and
  Gaussian (:class:`NnUNetSlidingWindow`), mirroring over the checkpoint's allowed axes (:class:`Mirrored`), the
  folds' logits averaged (:func:`models.volume.predict_outputs`), then the softmax or the sigmoid per region.
* The layer analyses read one fold's network (the first chosen), because a hook on a mirrored ensemble would see each
  layer several times and the folds' units are different units; the uncertainty maps are the folds' disagreement
  (an ensemble, epistemic) or, with one fold, the mirrorings' (test-time augmentation) — each map says which.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data.bundle_metadata import (
    CLASS_ALIASES,
    REGION_ALIASES,
    channel_names,
    dataset_channels,
    mapping,
    read_config,
    section,
)
from ..data.nnunet_resampling import Resize
from ..errors import InputError, WeightsError
from .description import NetworkDescription
from .base import check_finite

CHECKPOINT = "checkpoint_final.pth"
NETWORK_CLASSES = ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")  # dynamic_network_architectures...unet
TORCH_CLASSES = {f"torch.nn.{path}": getattr(nn, path.rsplit(".", 1)[-1]) for path in (
    "modules.conv.Conv2d", "modules.conv.Conv3d", "Conv2d", "Conv3d",
    "modules.instancenorm.InstanceNorm2d", "modules.instancenorm.InstanceNorm3d", "InstanceNorm2d", "InstanceNorm3d",
    "modules.batchnorm.BatchNorm2d", "modules.batchnorm.BatchNorm3d", "BatchNorm2d", "BatchNorm3d",
    "modules.dropout.Dropout", "modules.dropout.Dropout2d", "modules.dropout.Dropout3d", "Dropout", "Dropout2d",
    "Dropout3d", "LeakyReLU", "ReLU", "PReLU", "GELU", "modules.activation.LeakyReLU", "modules.activation.ReLU")}
# numpy scalars and dtypes: what nnU-Net's training log (losses, Dice per epoch) pickles besides plain values
CHECKPOINT_GLOBALS = ("numpy.dtype", "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar",
                      "numpy.dtypes.Float64DType", "numpy.dtypes.Float32DType", "numpy.dtypes.Int64DType")
NORMALISATIONS = {True: "nnunet-zscore-mask", False: "nnunet-zscore"}  # ZScoreNormalization by use_mask_for_norm
STEP = 0.5  # nnUNetPredictor's default tile_step_size
# Extra spellings nnU-Net datasets give BraTS classes (the Decathlon's Task01 among them)
NNUNET_CLASS_ALIASES = {name: spelled + extra for (name, spelled), extra in zip(CLASS_ALIASES.items(), (
    (), ("nonenhancingtumor", "nonenhancing", "necroticnonenhancingtumorcore"), (), ("enhancingtumour",)))}


def choose_folds(folder: Path, folds: str | Sequence[str] | None = None) -> list[str]:
    """Fold folder names (``fold_0``…, ``fold_all``) from ``--folds``: numbers, ``all`` (every numbered fold the
    folder holds a checkpoint of, the ensemble nnU-Net predicts with by default) or ``fold_all`` (nnU-Net's fold
    trained on every case, what its ``-f all`` means); None: ``all``."""
    trained = sorted((path.parent.name for path in folder.glob(f"fold_*/{CHECKPOINT}")),
                     key=lambda name: (not name[5:].isdigit(), int(name[5:]) if name[5:].isdigit() else 0))
    numbered = [name for name in trained if name[5:].isdigit()]
    asked = [s.strip() for s in folds.split(",")] if isinstance(folds, str) else list(folds or ["all"])
    chosen: list[str] = []
    for fold in asked:
        names = numbered if fold == "all" else [fold if fold.startswith("fold_") else f"fold_{fold}"]
        for name in names:
            if name not in trained:
                raise InputError(f"{folder / name / CHECKPOINT}: no such checkpoint (trained folds here: "
                                 f"{', '.join(trained) or 'none'})")
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise InputError(f"{folder}: no fold_k/{CHECKPOINT} here (trained folds: {', '.join(trained) or 'none'})")
    return chosen


def read_checkpoint(path: Path) -> dict:
    """A fold's checkpoint, read without running code from it (see the module notes)."""
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint")
    try:
        found = get_unsafe_globals_in_checkpoint(str(path))
    except Exception as error:  # not a zip checkpoint at all
        raise WeightsError(f"{path}: not a readable checkpoint ({type(error).__name__}: {str(error)[:120]})") from None
    refused = sorted(set(found) - set(CHECKPOINT_GLOBALS))
    if refused:
        raise WeightsError(f"{path}: the checkpoint holds {', '.join(refused)}, which loading would run or build; "
                           "an nnU-Net checkpoint holds tensors, plain values and numpy scalars only")
    known = _checkpoint_globals()
    try:
        # all of them: a dtype's class (numpy.dtypes.Float64DType) is built inside numpy.dtype, unlisted above
        with safe_globals([(value, name) for name, value in known.items()]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure: not a plain checkpoint
        raise WeightsError(f"{path}: not a readable checkpoint ({type(error).__name__}: {str(error)[:120]})") from None
    state = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: no network_weights state dict (not an nnU-Net v2 checkpoint)")
    check_finite(state, path)
    return checkpoint


def _checkpoint_globals() -> dict[str, object]:
    """:data:`CHECKPOINT_GLOBALS` by name → the numpy objects they are, in this numpy (1.x or 2.x)."""
    core = getattr(np, "_core", None) or np.core
    return {"numpy.dtype": np.dtype, "numpy._core.multiarray.scalar": core.multiarray.scalar,
            "numpy.core.multiarray.scalar": core.multiarray.scalar,
            # the classes of these dtypes (numpy.dtypes.Float64DType from numpy 1.25, numpy.dtype[float64] before)
            **{f"numpy.dtypes.{kind}DType": type(np.dtype(code)) for kind, code in (
                ("Float64", "f8"), ("Float32", "f4"), ("Int64", "i8"))}}


def _architecture(configuration: dict, path: Path) -> dict:
    """The configuration's ``architecture``; for plans written before nnU-Net had one (``UNet_class_name`` and its
    sizes), the entry nnU-Net's own ``ConfigurationManager`` rebuilds from them."""
    if isinstance(configuration.get("architecture"), dict):
        return configuration["architecture"]
    name = configuration.get("UNet_class_name")
    if name not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise InputError(f"{path}: the configuration names no network ('architecture', or the older "
                         "'UNet_class_name' of PlainConvUNet or ResidualEncoderUNet)")
    try:
        stages, dims = len(configuration["n_conv_per_stage_encoder"]), len(configuration["patch_size"])
        features = [min(configuration["UNet_base_num_features"] * 2 ** i, configuration["unet_max_num_features"])
                    for i in range(stages)]
        kwargs = {"n_stages": stages, "features_per_stage": features,
                  "conv_op": f"torch.nn.modules.conv.Conv{dims}d", "kernel_sizes": configuration["conv_kernel_sizes"],
                  "strides": configuration["pool_op_kernel_sizes"],
                  "n_conv_per_stage" if name == "PlainConvUNet" else "n_blocks_per_stage":
                      configuration["n_conv_per_stage_encoder"],
                  "n_conv_per_stage_decoder": configuration["n_conv_per_stage_decoder"], "conv_bias": True,
                  "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                  "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                  "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    except (KeyError, TypeError) as error:
        raise InputError(f"{path}: older plans ({name}) without {error}") from None
    return {"network_class_name": f"dynamic_network_architectures.architectures.unet.{name}", "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def build_network(configuration: dict, inputs: int, outputs: int, path: Path) -> nn.Module:
    """The plans' network with deep supervision off (see the module notes)."""
    architecture = _architecture(configuration, path)
    class_path = str(architecture.get("network_class_name", ""))
    name = class_path.rsplit(".", 1)[-1]
    if name not in NETWORK_CLASSES or not class_path.startswith("dynamic_network_architectures."):
        raise InputError(f"{path}: network_class_name {class_path!r} is not one of dynamic-network-architectures' "
                         f"{', '.join(NETWORK_CLASSES)}")
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError:
        raise InputError(f"{path}: nnU-Net's networks need dynamic-network-architectures: pip install "
                         "--no-deps dynamic-network-architectures einops") from None
    kwargs = dict(architecture.get("arch_kwargs") or {})
    for key in architecture.get("_kw_requires_import", []):
        if kwargs.get(key) is not None:
            if kwargs[key] not in TORCH_CLASSES:
                raise InputError(f"{path}: arch_kwargs {key} is {kwargs[key]!r}, not a torch layer this project "
                                 f"builds ({', '.join(sorted({c.__name__ for c in TORCH_CLASSES.values()}))})")
            kwargs[key] = TORCH_CLASSES[kwargs[key]]
    try:
        return getattr(unet, name)(input_channels=inputs, num_classes=outputs, deep_supervision=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        raise InputError(f"{path}: arch_kwargs do not build {name}: {error}") from None


def _outputs(dataset: dict, path: Path) -> tuple[str, tuple[str, ...]]:
    """``(softmax|sigmoid, output names)`` from ``dataset.json``'s labels (and ``regions_class_order``)."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: no 'labels'")
    if "ignore" in labels:
        raise InputError(f"{path}: an ignore label (sparse annotations) is not supported")
    # a region is a list of several labels (nnU-Net's LabelManager); a list of one is that label
    labels = {name: value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
              for name, value in labels.items()}
    foreground = {name: value for name, value in labels.items() if value != 0}
    if any(isinstance(value, (list, tuple)) for value in foreground.values()):
        if not dataset.get("regions_class_order"):
            raise InputError(f"{path}: region labels without regions_class_order")
        names = channel_names(dict(enumerate(foreground)), REGION_ALIASES, "region", path)
        return "sigmoid", names
    values = sorted(labels.values())
    if values != list(range(len(values))):
        raise InputError(f"{path}: label values {values} are not 0…{len(values) - 1}, as nnU-Net requires")
    by_value = {str(value): name for name, value in labels.items()}
    names = channel_names(by_value, NNUNET_CLASS_ALIASES, "label", path)
    if names[0] != "background" or len(set(names)) != len(names):
        raise InputError(f"{path}: labels {labels}: label 0 must be the background and each class named once")
    return "softmax", names


@dataclass(frozen=True)
class NnUNetFolder:
    """What a trained-model folder says, read once: its configuration (``inherits_from`` resolved), the description
    of its network, and the folds chosen."""

    folder: Path
    configuration: dict
    description: NetworkDescription
    folds: tuple[str, ...]


def read_nnunet_folder(folder: str | Path, folds: str | Sequence[str] | None = None) -> NnUNetFolder:
    """The folder's plans, dataset and network description (see the module notes), and the folds chosen."""
    folder = Path(folder)
    plans, dataset = read_config(folder / "plans.json"), read_config(folder / "dataset.json")
    chosen = choose_folds(folder, folds)
    configuration_name = folder.name.rsplit("__", 1)[-1]
    configurations = section(plans, "configurations", folder / "plans.json")
    if configuration_name not in configurations:
        raise InputError(f"{folder / 'plans.json'}: no configuration {configuration_name!r} (the folder's name "
                         f"ends in it); configurations: {', '.join(configurations) or 'none'}")
    configuration = _resolved(configurations, configuration_name, folder / "plans.json")
    if configuration.get("previous_stage"):
        raise InputError(f"{folder / 'plans.json'}: {configuration_name} is the second stage of a cascade (its input "
                         "holds the first stage's segmentation); cascades are not supported yet — use 3d_fullres")
    channels = dataset_channels(dataset, folder / "dataset.json")
    schemes = configuration.get("normalization_schemes", [])
    masks = configuration.get("use_mask_for_norm", [])
    if set(schemes) != {"ZScoreNormalization"} or len(set(masks)) != 1 or len(schemes) != len(channels):
        raise InputError(f"{folder / 'plans.json'}: normalization {schemes} with use_mask_for_norm {masks}; this "
                         "project reproduces ZScoreNormalization, with or without the mask, the same for every "
                         "channel (what nnU-Net plans for MRI)")
    outputs, names = _outputs(dataset, folder / "dataset.json")
    transpose = [int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
    patch = tuple(int(p) for p in configuration["patch_size"])
    spacing = tuple(float(s) for s in configuration["spacing"])
    axes = "".join("SPL"[a] for a in transpose)  # a file on an identity direction reads as S, P, L (sitk order)
    dims = len(patch)
    description = NetworkDescription(
        name=f"{plans.get('dataset_name', folder.parent.name)}-{configuration_name}", spatial_dims=dims,
        channels=channels, normalisation=NORMALISATIONS[bool(masks[0])], outputs=outputs, output_names=names,
        axes=axes, layers={}, dropout=False, window=patch if dims == 3 else (1,) + patch, overlap=1 - STEP,
        blend="nnunet", spacing_mm=spacing if dims == 3 else None, resampling="nnunet",
        nnunet_resizing=(Resize.from_plans(configuration, "data", folder / "plans.json"),
                         Resize.from_plans(configuration, "probabilities", folder / "plans.json")))
    return NnUNetFolder(folder, configuration, description, tuple(chosen))


def _resolved(configurations: dict, name: str, path: Path, seen: tuple[str, ...] = ()) -> dict:
    """A configuration with what it ``inherits_from`` filled in, as nnU-Net's PlansManager does."""
    if name in seen or name not in configurations:
        raise InputError(f"{path}: configuration {name!r} " + ("inherits from itself" if name in seen else
                                                                "is inherited from but missing"))
    configuration = dict(mapping(configurations[name], f"configurations.{name}", path))
    parent = configuration.pop("inherits_from", None)
    return {**_resolved(configurations, parent, path, seen + (name,)), **configuration} if parent else configuration


class SliceNetwork(nn.Module):
    """A 2D network over ``(B, C, D, H, W)`` windows, slice by slice along D (nnU-Net's 2d configuration). Its
    children are the network's own (``encoder``, ``decoder``), so its layers keep their nnU-Net names."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        for name, child in network.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_network", network)  # runs the forward; not a second copy in the module tree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, depth = x.shape[:3]
        out = self._network(x.transpose(1, 2).reshape(batch * depth, channels, *x.shape[3:]))
        return out.reshape(batch, depth, *out.shape[1:]).transpose(1, 2)


class Mirrored(nn.Module):
    """What nnU-Net predicts a window with: the network's logits averaged over the mirrorings along ``mirror_axes``
    (dimensions of the window tensor; ``_internal_maybe_mirror_and_predict``)."""

    def __init__(self, network: nn.Module, mirror_axes: Sequence[int]) -> None:
        super().__init__()
        self.network = network
        self.mirrorings = [c for n in range(1, len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        for axes in self.mirrorings:
            logits = logits + self.network(x.flip(axes)).flip(axes)
        return logits / (len(self.mirrorings) + 1)


class NnUNetSlidingWindow:
    """nnU-Net's sliding window (``nnUNetPredictor.predict_sliding_window_return_logits``), for any predictor of
    ``(B, C, *window)`` windows: the crop to the inputs' non-zero box (the normalisations leave all else at 0), padded
    to the window where smaller (zeros, split as nnU-Net's ``pad_nd_image``), windows at nnU-Net's evenly spread steps
    (every slice once for a 2D network, window depth 1), each weighted by nnU-Net's Gaussian (σ = window / 8), the sum
    divided by the weights; ``outside`` (per output channel, default 0) fills what lies outside the box.

    The sums run in float32 (``sums``); nnU-Net's run in float16, whose smallest steps swallow the weighted window
    corners near the crop's faces (up to 0.5 in a logit there, on the test networks) — ``sums=torch.float16`` gives
    nnU-Net's own numbers, to compare with it."""

    def __init__(self, window: Sequence[int], step: float = STEP, sums: torch.dtype = torch.float32) -> None:
        self.window, self.step, self.sums = tuple(int(w) for w in window), step, sums

    def gaussian(self, device: torch.device) -> torch.Tensor:
        from scipy.ndimage import gaussian_filter

        size = tuple(w for w in self.window if w > 1) if 1 in self.window else self.window
        delta = np.zeros(size)
        delta[tuple(s // 2 for s in size)] = 1
        weights = gaussian_filter(delta, [s / 8 for s in size], 0, mode="constant", cval=0)
        # as nnU-Net stores it: peak 10, in float16, zeros raised to the smallest value left — float16's rounding of
        # the tails sets how much a window's corner counts, so it is kept; the sums then run in float32
        weights = torch.from_numpy(weights.reshape(self.window) * (10 / weights.max())).half()
        weights[weights == 0] = weights[weights > 0].min()
        return weights.to(device)

    def steps(self, size: Sequence[int]) -> list[list[int]]:
        out = []
        for length, tile in zip(size, self.window):
            if tile == 1:
                out.append(list(range(length)))
                continue
            count = int(np.ceil((length - tile) / (tile * self.step))) + 1
            stride = (length - tile) / (count - 1) if count > 1 else 0
            out.append([int(np.round(stride * i)) for i in range(count)])
        return out

    def __call__(self, inputs: torch.Tensor, predictor, outside: torch.Tensor | None = None):
        """The blended outputs over ``inputs`` ``(1, C, ...)``; a predictor of several outputs (a tuple, as MONAI's
        inferer takes) gets a tuple back, each at its own resolution (a layer's: window positions scaled to it)."""
        nonzero = torch.nonzero(inputs[0].ne(0).any(0))
        if not len(nonzero):
            raise InputError("the network's inputs are all zero: no brain to segment")
        low, high = nonzero.min(0).values.tolist(), (nonzero.max(0).values + 1).tolist()
        x = inputs[(slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(low, high))]
        pads = [(max(t - n, 0) // 2, max(t - n, 0) - max(t - n, 0) // 2) for n, t in zip(x.shape[2:], self.window)]
        cropped = tuple(x.shape[2:])
        x = torch.nn.functional.pad(x, [p for pair in reversed(pads) for p in pair])
        weights = self.gaussian(x.device).to(self.sums)
        sums: list = []
        tuple_out = False
        for corner in itertools.product(*self.steps(x.shape[2:])):
            window = x[(slice(None), slice(None)) + tuple(slice(c, c + t) for c, t in zip(corner, self.window))]
            result = predictor(window)
            tuple_out = isinstance(result, tuple)
            for index, output in enumerate(result if tuple_out else (result,)):
                if len(sums) <= index:
                    sums.append(_Sum(output, x.shape, self.window, weights, self.sums))
                sums[index].add(output, corner)
        blended = [total.result(inputs.shape, low, pads, cropped, outside if not tuple_out else None)
                   for total in sums]
        return tuple(blended) if tuple_out else blended[0]


class _Sum:
    """One output's weighted sum over the windows, at its own resolution (``scale`` of the input's, a layer's): a
    window at ``c`` starts at ``floor(c · scale)``; the sum spans up to the last window's end, which the steps (at most
    half a window apart) cover without a gap."""

    def __init__(self, output: torch.Tensor, padded: torch.Size, window: tuple[int, ...], weights: torch.Tensor,
                 dtype: torch.dtype) -> None:
        self.scale = [o / w for o, w in zip(output.shape[2:], window)]
        size = [int((n - w) * s) + o for n, w, s, o in zip(padded[2:], window, self.scale, output.shape[2:])]
        self.weights = weights if tuple(output.shape[2:]) == window else torch.nn.functional.interpolate(
            weights.float()[None, None], size=tuple(output.shape[2:]), mode="trilinear")[0, 0].to(dtype)
        self.total = output.new_zeros((padded[0], output.shape[1], *size), dtype=dtype)
        self.count = output.new_zeros(size, dtype=dtype)

    def add(self, output: torch.Tensor, corner: tuple[int, ...]) -> None:
        where = tuple(slice(int(c * s), int(c * s) + o) for c, s, o in zip(corner, self.scale, output.shape[2:]))
        self.total[(slice(None), slice(None)) + where] += (output.float() * self.weights).to(self.total.dtype)
        self.count[where] += self.weights

    def result(self, shape: torch.Size, low: list[int], pads: list, cropped: tuple[int, ...],
               outside: torch.Tensor | None) -> torch.Tensor:
        """The blended sum without the padding, in place in the whole input's extent (at this resolution; a coarse
        layer's last part-voxel, which no window's floor-placed output reaches, repeats its neighbour)."""
        blended = (self.total / self.count).float()
        size = [max(1, round(n * s)) for n, s in zip(shape[2:], self.scale)]
        out = blended.new_zeros((blended.shape[0], blended.shape[1], *size))
        if outside is not None:
            out += outside.to(out)[None, :, None, None, None]
        source, target, short = [], [], []
        for start, (below, _), length, s, n, have in zip(low, pads, cropped, self.scale, size, blended.shape[2:]):
            first, begin = min(int(start * s), n - 1), int(below * s)
            count = max(1, min(int(np.ceil(length * s)), n - first))
            source.append(slice(begin, min(begin + count, have)))
            target.append(slice(first, first + count))
            short.append(count - (min(begin + count, have) - begin))
        placed = blended[(slice(None), slice(None)) + tuple(source)]
        if any(short):
            placed = torch.nn.functional.pad(placed, [p for gap in reversed(short) for p in (0, gap)], mode="replicate")
        out[(slice(None), slice(None)) + tuple(target)] = placed
        return out


def stage_layers(network: nn.Module) -> dict[str, str]:
    """The stages of a dynamic-network-architectures U-Net, encoder then decoder, by their module paths (nnU-Net's
    own names, ``encoder.stages.k`` and ``decoder.stages.k``). The 1×1 output convolution is left out: its Grad-CAM
    is the last stage's up to its bias (each map is a weighting of the same features), one map twice for nothing;
    ``--layers decoder.seg_layers.K`` still asks for it."""
    return {path: path for path in dict(network.named_modules()) if path.count(".") == 2 and path.split(".")[:2]
            in (["encoder", "stages"], ["decoder", "stages"])}


def background_logits(description: NetworkDescription) -> torch.Tensor:
    """Logits that say "background, for certain" (what nnU-Net writes outside the crop): softmax 1 for the background
    class and 0 for the others, sigmoid 0 for every region, to float32 precision."""
    if description.outputs == "sigmoid":
        return torch.full((len(description.output_names),), -100.0)
    return torch.tensor([100.0 if name == "background" else -100.0 for name in description.output_names])
