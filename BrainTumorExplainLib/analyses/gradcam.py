"""Layer-wise Grad-CAM (paper §3.2, eqs. 3-5), every layer from one forward pass, for every kind of network.

For output channel ``c`` the network's output map is pooled to one number, ``y(c) = mean Φ^c(x)`` over the slice
(a 2D network) or the window (a 3D one) (eq. 3); each filter ``k`` of layer ``l`` is weighted by the spatial mean of
the gradient, ``β = mean ∂y(c)/∂A_l,k`` (eq. 4), and the map is ``ReLU(Σ_k β A_l,k)`` (eq. 5), upsampled onto the
input (bilinearly onto a slice; trilinearly onto a window, whose maps MONAI's or nnU-Net's sliding window then
blends exactly as it blends the network's outputs). The networks are read through :mod:`models.interface`.

``Φ`` is the network's **probabilities** by default — its softmax (the paper's networks end in one; its ``Φ^c`` is
"the output segmentation map"), or a region network's sigmoids. ``target="logits"`` uses the scores before the
activation instead (the usual Grad-CAM choice; it avoids the softmax's competition between classes, so a class map
does not light up where *other* classes lose). ``pool="predicted"`` averages ``Φ^c`` over the voxels the network
labels ``c`` instead of the whole input (a variant, as pytorch-grad-cam's ``SemanticSegmentationTarget`` masks it;
the paper's eq. 3 averages over all ``P`` output pixels, which is ``pool="image"``, the default): the map then
explains what was segmented, not the class's score everywhere; an input without any ``c`` gets a zero map.

Why our own code rather than pytorch-grad-cam or Captum: they run one forward and one backward per (layer,
class). Here one forward records every requested layer, one backward per class returns the gradients of all of
them at once (``torch.autograd.grad`` over the list of activations), and the pooling and weighting stay on the
device. The batch is one ``y(c)`` sum: inputs do not interact in eval mode, so each gets its own gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..data.case import Case
from ..data.labels import CLASS_NAMES, CLASS_REGION, region_mask
from ..errors import UsageError
from ..models.base import evaluating, model_device
from ..models.interface import AnalysedNetwork, analysed
from . import GRADCAM_POOLS, GRADCAM_TARGET_NAMES, GRADCAM_TARGETS
from .controls import INPUT_LAYER

TARGETS = GRADCAM_TARGETS


def check_target(target: str, pool: str = "image") -> str:
    """``target`` by its one name (``softmax``, the paper's word, is the probabilities), its pooling checked."""
    target = GRADCAM_TARGET_NAMES.get(target, target)
    if target not in TARGETS:
        raise UsageError(f"unknown Grad-CAM target {target!r}; expected one of {', '.join(TARGETS)}")
    check_pool(pool)
    return target


def check_pool(pool: str) -> None:
    if pool not in GRADCAM_POOLS:
        raise UsageError(f"unknown Grad-CAM pooling {pool!r}; expected one of {', '.join(GRADCAM_POOLS)}")


def predicted_masks(logits: torch.Tensor, outputs: str = "softmax") -> torch.Tensor:
    """Bool ``(N, C, ...)``, detached: where the network labels each channel — its argmax for softmax classes, a
    positive logit (probability > 0.5) for sigmoid regions."""
    logits = logits.detach()
    if outputs == "sigmoid":
        return logits > 0
    return torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).movedim(-1, 1) > 0


CamWeights = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradcam_weights(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Eq. 4, the paper's (and Grad-CAM's) filter weights: the spatial mean of the gradient, ``(N, K, 1, …)``.

    This is the extension point of a CAM variant, as ``get_cam_weights`` is in pytorch-grad-cam's ``BaseCAM``: any
    function of the layer's activation and gradient ``(N, K, *spatial)`` (2D or 3D) that returns ``(N, K, 1, …)``
    weights (or ``(N, K, *spatial)`` ones) can be passed as ``weights=`` to :func:`gradcam_maps` and
    :func:`gradcam_volume`; the gradient is that of the mean ``y(c)``, whatever the pooling's arithmetic."""
    return gradient.flatten(2).mean(-1)[(...,) + (None,) * (gradient.ndim - 2)]


def batch_gradcam(network: AnalysedNetwork, inputs: torch.Tensor, layers: Sequence[str], targets: Sequence[int],
                  target: str = "probabilities", weights: CamWeights = gradcam_weights, pool: str = "image"
                  ) -> torch.Tensor:
    """Grad-CAM of one batch of inputs ``(B, C, *spatial)``: ``(B, len(layers) * len(targets), *spatial)``,
    layer-major, on the inputs' grid — one forward for all layers, one backward per target, in the module's current
    mode (:func:`gradcam_maps` sets eval)."""
    network.check_inputs(inputs)
    with network.recorder(layers) as recorder, torch.enable_grad():
        # The input asks for gradients so the graph exists even when every parameter is frozen.
        logits = network.module(inputs.detach().requires_grad_(True))
        scores = logits if target == "logits" else (torch.sigmoid(logits) if network.outputs == "sigmoid"
                                                    else torch.softmax(logits, dim=1))
        # eq. 3 pools by the mean: the sum, with its gradient divided by the count below, keeps the float32
        # gradients through the network away from the 1/voxels scale, where they lose precision
        if pool == "image":
            pooled = scores.flatten(2).sum(-1)  # (B, channels)
            voxels = torch.full(pooled.shape, float(scores[0, 0].numel()), device=logits.device)
        else:  # the mean over each channel's predicted voxels; zero where there are none
            mask = predicted_masks(logits, network.outputs)
            pooled = (scores * mask).flatten(2).sum(-1)
            voxels = mask.flatten(2).sum(-1).clamp_min(1).to(scores.dtype)
        activations = [recorder.outputs[layer] for layer in layers]
        spatial = [network.as_spatial(activation, inputs).shape[2:] for activation in activations]
        maps: list[list[torch.Tensor]] = [[] for _ in layers]
        for position, channel in enumerate(targets):
            gradients = torch.autograd.grad(pooled[:, channel].sum(), activations, allow_unused=True,
                                            retain_graph=position < len(targets) - 1)
            for index, (activation, gradient) in enumerate(zip(activations, gradients)):
                if gradient is None:  # the target does not depend on this layer at all
                    maps[index].append(activation.new_zeros((activation.shape[0],) + spatial[index]))
                    continue
                gradient = gradient / voxels[:, channel].reshape((-1,) + (1,) * (gradient.ndim - 1))
                beta = weights(activation, gradient)  # eq. 4
                cam = torch.relu((beta * activation).sum(dim=1)).detach()  # eq. 5
                maps[index].append(cam.reshape((activation.shape[0],) + spatial[index]))
    return torch.cat([network.upsample(torch.stack(layer_maps, dim=1), inputs.shape[2:]) for layer_maps in maps], dim=1)


def gradcam_maps(network, inputs: torch.Tensor, layers: str | Iterable[str] = "all",
                 classes: str | Iterable[int] = "tumour", target: str = "probabilities",
                 weights: CamWeights = gradcam_weights, pool: str = "image") -> dict[str, torch.Tensor]:
    """Raw Grad-CAM maps of a batch: layer → ``(B, len(targets), *spatial)`` at the inputs' size and device.

    ``inputs``: slices ``(N, 4, H, W)`` in [FLAIR, T1, T1ce, T2] order for the paper's 2D networks (``classes``
    chooses their targets), windows ``(B, C, D, H, W)`` in its own space for a described 3D network (every output
    channel a target). The network runs in eval mode (dropout off, BatchNorm on its running statistics); its
    previous mode is restored. ``weights``: see :func:`gradcam_weights`; ``pool``: see the module notes."""
    network = analysed(network, "Grad-CAM")
    target = check_target(target, pool)
    layer_names, targets = network.layers(layers), network.targets(classes)
    with evaluating(network.module):
        maps = batch_gradcam(network, inputs, layer_names, targets, target, weights, pool)
    return {name: maps[:, i * len(targets):(i + 1) * len(targets)] for i, name in enumerate(layer_names)}


def normalise(cam: np.ndarray | torch.Tensor) -> np.ndarray:
    """A [0, 1] display copy: divided by its maximum (Grad-CAM is ≥ 0 after the ReLU); all-zero stays zero."""
    array = cam.detach().float().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam, np.float32)
    peak = float(array.max()) if array.size else 0.0
    return (array / peak).astype(np.float32) if peak > 0 else np.zeros_like(array, dtype=np.float32)


@dataclass
class GradCamVolume:
    """Raw Grad-CAM maps of a case volume: ``maps[(layer, class_index)]`` is ``(Z, Y, X)`` float32 on the case's
    canonical grid (zero on slices not computed). Write one onto the case's own grid with
    ``case.grid.write(volume.maps[key], path)``; :func:`normalise` gives a [0, 1] copy."""

    layers: list[str]
    classes: list[int]
    target: str
    slices: np.ndarray
    maps: dict[tuple[str, int], np.ndarray] = field(repr=False)
    names: dict[int, str] = field(default_factory=dict)  # target → its name (default: the class's)
    regions: dict[int, str] = field(default_factory=dict)  # target → the region its map should find
    pool: str = "image"  # where y(c) pooled the output (GRADCAM_POOLS)

    def name(self, target: int) -> str:
        return self.names.get(target) or CLASS_NAMES[target]

    def region(self, target: int) -> str:
        return self.regions.get(target) or CLASS_REGION[target]

    def slice_maps(self, z: int) -> dict[str, np.ndarray]:
        """Layer → ``(len(classes), Y, X)`` raw maps of axial slice ``z``, as :func:`figures.gradcam_montage` takes."""
        return {layer: np.stack([self.maps[(layer, c)][z] for c in self.classes]) for layer in self.layers}


def gradcam_volume(network, case: Case, layers: str | Iterable[str] = "all",
                   classes: str | Iterable[int] = "tumour", target: str = "probabilities",
                   slices: Iterable[int] | None = None, batch_size: int = 8,
                   device: str | torch.device | None = None, progress: bool = False,
                   weights: CamWeights = gradcam_weights, pool: str = "image") -> GradCamVolume:
    """Grad-CAM for every requested layer and target over the case, on its canonical grid: a 2D network over the
    case's axial slices in batches (default: every slice with brain; ``classes``), a described 3D network over its
    windows, blended (every output channel; the whole case). Memory: one float32 volume per (layer, target) — ask
    for the layers and classes you need."""
    network = analysed(network, "Grad-CAM")
    target = check_target(target, pool)
    layer_names, targets = network.layers(layers), network.targets(classes)
    chosen = network.computed_slices(case, slices)
    device = model_device(network.module, device)

    def batch_maps(inputs: torch.Tensor, _slices) -> torch.Tensor:
        return batch_gradcam(network, inputs, layer_names, targets, target, weights, pool)

    with evaluating(network.module):
        stacked = network.map_case(case, chosen, batch_maps, len(layer_names) * len(targets), batch_size, device,
                                   f"Grad-CAM {case.case_id}" if progress else None)
    maps = {(layer, channel): stacked[i * len(targets) + j]
            for i, layer in enumerate(layer_names) for j, channel in enumerate(targets)}
    return GradCamVolume(layer_names, targets, target, chosen, maps, {c: network.target_name(c) for c in targets},
                         {c: network.target_region(c) for c in targets}, pool)


@dataclass(frozen=True)
class RegionLocalisation:
    """How one map sits on one region, over the computed slices.

    ``mass_inside``: Σ map over the region / Σ map over the brain (1 = all attention on the region; NaN for an
    all-zero map). ``chance``: the region's share of the brain, what a flat map would score. ``top_iou``: IoU of
    the map's top ``top_fraction`` of brain voxels with the region.
    """

    mass_inside: float
    chance: float
    top_iou: float


def localisation(volume: GradCamVolume, case: Case, top_fraction: float = 0.05
                 ) -> dict[str, dict[str, dict[str, RegionLocalisation]]]:
    """``[layer][class name][region]`` → :class:`RegionLocalisation`, for the brain and (with labels) WT, TC, ET.

    This is the measurement behind the paper's "top-down" claim: follow one class's ``mass_inside`` for its region
    (:data:`CLASS_REGION`) from the first layer to the last.
    """
    if not 0 < top_fraction < 1:
        raise UsageError(f"top_fraction must lie in (0, 1), got {top_fraction}")
    computed = np.zeros(case.brain_mask.shape[0], dtype=bool)
    computed[volume.slices] = True
    brain = case.brain_mask & computed[:, None, None]
    regions = {"brain": brain}
    if case.labels is not None:
        regions.update({name: region_mask(case.labels, name) & brain for name in ("WT", "TC", "ET")})
    brain_count = max(int(brain.sum()), 1)
    result: dict[str, dict[str, dict[str, RegionLocalisation]]] = {}
    for (layer, class_index), cam in volume.maps.items():
        values = cam[brain]
        total = float(values.sum(dtype=np.float64))
        top = np.zeros_like(brain)
        if total > 0:
            keep = max(1, int(round(top_fraction * values.size)))
            cut = np.partition(values, values.size - keep)[values.size - keep]
            top = brain & (cam >= cut) & (cam > 0)
        entry = {}
        for name, region in regions.items():
            inside = float(cam[region].sum(dtype=np.float64)) / total if total > 0 else float("nan")
            union = int((top | region).sum())
            iou = int((top & region).sum()) / union if union else 0.0
            entry[name] = RegionLocalisation(inside, int(region.sum()) / brain_count, iou)
        result.setdefault(layer, {})[volume.name(class_index)] = entry
    return result


def localisation_as_dict(table: dict[str, dict[str, dict[str, RegionLocalisation]]]) -> dict:
    return {layer: {cls: {region: {"mass_inside": round(v.mass_inside, 4), "chance": round(v.chance, 4),
                                   "top_iou": round(v.top_iou, 4)} for region, v in regions.items()}
                    for cls, regions in classes.items()} for layer, classes in table.items()}


def raw_input_volume(channels: np.ndarray, names: Sequence[str], slices: np.ndarray) -> GradCamVolume:
    """The raw-input control of a localisation: each input channel's positive part as a map (the inputs are
    z-scored, so: where the sequence is brighter than its mean), ``channels`` ``(C, Z, Y, X)`` on the canonical
    grid. Its :func:`localisation` says how much of the region the input alone already singles out."""
    maps = {(INPUT_LAYER, c): np.maximum(channel, 0).astype(np.float32) for c, channel in enumerate(channels)}
    return GradCamVolume([INPUT_LAYER], list(range(len(channels))), "raw input", slices, maps,
                         {c: name for c, name in enumerate(names)})


def localisation_controls(trained: dict, random: dict, raw: dict, regions: dict[str, str], seed: int,
                          slices: int) -> dict:
    """Per target: its region, the region's share of the brain (chance), the best raw input channel's share, and,
    layer by layer, the trained network's share beside the random-weights network's — all over the same
    ``slices`` (tables of :func:`localisation`; ``regions``: target name → region)."""
    result = {}
    for name, region in regions.items():
        layers = [layer for layer in trained if name in trained[layer] and region in trained[layer][name]]
        if not layers:
            continue
        channel = max(raw[INPUT_LAYER], key=lambda c: _share(raw[INPUT_LAYER][c][region]))
        result[name] = {"region": region, "chance": round(trained[layers[0]][name][region].chance, 4),
                        "raw input": {"channel": channel,
                                      "mass_inside": round(_share(raw[INPUT_LAYER][channel][region]), 4)},
                        "layers": {layer: {"trained": round(trained[layer][name][region].mass_inside, 4),
                                           "random weights": round(random[layer][name][region].mass_inside, 4)}
                                   for layer in layers}}
    return {"seed": seed, "slices": slices, "targets": result}


def _share(entry: RegionLocalisation) -> float:
    return 0.0 if np.isnan(entry.mass_inside) else entry.mass_inside
