"""Network dissection of a described 3D network (paper §3.1 in 3D): the statistics and concepts of
:mod:`analyses.dissection`, over volumes instead of axial slices.

* Activations: every chosen layer's output over the whole case, one forward per window for all layers, stitched by
  MONAI's sliding-window inferer at each layer's own resolution (it blends outputs smaller than the window at their
  own scale), so memory is bounded by one case's activations, not by the number of cases.
* ``T_k,l``: the level exceeded by the top ``1 − quantile`` of filter ``k``'s activations over every voxel, at the
  layer's resolution, inside the bounding box of every case's brain — the 3D counterpart of the 2D dissection's
  brain-containing slices — by :class:`quantiles.StreamingQuantiles` (bounded memory, stated error).
* Concept mask: the activation upsampled trilinearly onto the network's input grid, ``> T`` (as in 2D, a dead
  filter detects nothing), a 3×3×3 opening, cut to the brain, and its largest 26-connected component in the volume
  kept (the 2D post-processing with the slice replaced by the volume).
* IoU per concept: dataset-wide ``Σ|M ∩ G| / Σ|M ∪ G|`` over the cases; per image, the mean IoU over the cases
  where the concept is present. The result is the same :class:`analyses.dissection.Dissection` as in 2D (its
  ``slice_step`` is 1: whole volumes).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from ..data.case import Case
from ..models.base import evaluating, model_device
from ..models.description import from_network_space, network_inputs, require_hooks, to_network_space
from ..models.interface import ModuleRecorder, as_window
from ..models.volume import DescribedNetwork, window_inferer
from .concepts import LayerDissection, concept_masks
from .quantiles import StreamingQuantiles

_FILTER_CHUNK = 16  # filters upsampled at once: bounds the memory of the IoU pass to 16 input-sized volumes
_CONNECTED_26 = np.ones((3, 3, 3), dtype=bool)


@torch.no_grad()
def layer_activations(network: DescribedNetwork, case: Case, layers: Sequence[str],
                      device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """Layer → its activations ``(K, d, h, w)`` over the case in the network's axes, at the layer's resolution
    (float32, on the CPU)."""
    module, description = network.module, network.description
    require_hooks(description, "network dissection")
    device = model_device(module, device)
    x = torch.from_numpy(network_inputs(case, description))[None].to(device)
    order: list[str] = []  # largest outputs first (see below), fixed by the first window
    with ModuleRecorder(module, layers) as recorder, evaluating(module):
        def predictor(window: torch.Tensor) -> tuple[torch.Tensor, ...]:
            module(window)
            outputs: dict[str, torch.Tensor] = {}
            for layer in layers:  # MONAI's inferer weights each output in place: a tensor that is two layers' output
                #                   (a block and its last module) must come twice, not once
                output = as_window(recorder.outputs[layer], window).float()
                outputs[layer] = output.clone() if any(output is kept for kept in outputs.values()) else output
            if not order:  # MONAI 1.6 resizes one blending map from output to output and never back up: an output
                #            at the window's size after a smaller one would not fit, so they come largest first
                order.extend(sorted(layers, key=lambda layer: -outputs[layer][0, 0].numel()))
            return tuple(outputs[layer] for layer in order)

        stitched = window_inferer(description)(x, predictor) if description.window else predictor(x)
    stitched = stitched if isinstance(stitched, tuple) else (stitched,)
    return {layer: stitched[order.index(layer)][0].cpu() for layer in layers}


def _brain_box(brain: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The brain's bounding box on a grid of ``shape`` covering the same extent (a coarser layer's)."""
    voxels = np.argwhere(brain)
    low, high = voxels.min(axis=0), voxels.max(axis=0) + 1
    return tuple(slice(int(np.floor(lo * n / full)), int(np.ceil(hi * n / full)))
                 for lo, hi, n, full in zip(low, high, shape, brain.shape))


def _open(masks: torch.Tensor) -> torch.Tensor:
    """Binary opening with a 3×3×3 cube of bool ``(K, D, H, W)`` masks (max-pooling; the border counts as
    unchanged)."""
    x = masks.float()[None]
    eroded = 1.0 - F.max_pool3d(1.0 - x, 3, stride=1, padding=1)
    return F.max_pool3d(eroded, 3, stride=1, padding=1)[0] > 0.5


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a 3D bool mask (ties: all of the largest)."""
    labels, count = ndimage.label(mask, structure=_CONNECTED_26)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return np.isin(labels, 1 + np.flatnonzero(sizes == sizes.max()))


def volume_masks(activation: torch.Tensor, thresholds: torch.Tensor, brain: np.ndarray) -> np.ndarray:
    """Concept masks ``(K, D, H, W)`` bool on the input grid (network axes) from one layer's activations
    ``(K, d, h, w)`` and thresholds ``(K,)`` (see the module notes)."""
    brain_t = torch.from_numpy(brain)
    result = np.zeros((activation.shape[0],) + brain.shape, dtype=bool)
    for start in range(0, activation.shape[0], _FILTER_CHUNK):
        chunk = slice(start, start + _FILTER_CHUNK)
        up = F.interpolate(activation[chunk][None], size=brain.shape, mode="trilinear", align_corners=False)[0]
        masks = (_open(up > thresholds[chunk, None, None, None]) & brain_t).numpy()
        for k, mask in enumerate(masks, start):
            result[k] = largest_component(mask) if mask.any() else mask
    return result


def tally_thresholds(network: DescribedNetwork, case: Case, layers: Sequence[str],
                     statistics: dict[str, StreamingQuantiles], quantile: float, bins: int,
                     device: torch.device) -> None:
    """A threshold pass over one case: every activation in the brain's box into each filter's histogram."""
    brain = to_network_space(case.brain_mask, network.description.axes)
    for name, activation in layer_activations(network, case, layers, device).items():
        box = _brain_box(brain, tuple(activation.shape[1:]))
        values = activation[(slice(None),) + box].flatten(1)
        if name not in statistics:
            statistics[name] = StreamingQuantiles(values.shape[0], quantile, bins)
        statistics[name].add(values)


def tally_iou(network: DescribedNetwork, case: Case, layers: Sequence[str], concepts: Sequence[str],
              sums: dict[str, LayerDissection], device: torch.device) -> None:
    """The IoU pass over one case: each filter's mask against each concept, this case's volume as one image."""
    axes = network.description.axes
    brain = np.ascontiguousarray(to_network_space(case.brain_mask, axes))
    truth = np.ascontiguousarray(to_network_space(concept_masks(case, concepts), axes)).reshape(len(concepts), -1)
    truth_area = truth.sum(axis=1)
    present = truth_area > 0
    for name, activation in layer_activations(network, case, layers, device).items():
        result = sums[name]
        masks = volume_masks(activation, torch.from_numpy(result.thresholds).float(), brain)
        masks = masks.reshape(masks.shape[0], -1)
        inter = masks.astype(np.float32) @ truth.T.astype(np.float32)  # (K, C), exact below 2**24 voxels
        inter = np.rint(inter).astype(np.int64)
        union = masks.sum(axis=1)[:, None] + truth_area[None, :] - inter
        per_image = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
        result.intersection += inter
        result.union += union
        result.image_iou_sum += per_image * present[None, :]
        result.image_count += present


def volume_filter_masks(network: DescribedNetwork, case: Case, thresholds: dict[str, np.ndarray],
                        filters: Sequence[tuple[str, int]], device: str | torch.device | None = None
                        ) -> dict[tuple[str, int], np.ndarray]:
    """Concept masks of chosen ``(layer, filter)`` pairs on one case from saved thresholds (layer → ``(K,)``):
    ``(Z, Y, X)`` bool on the case's canonical grid."""
    axes = network.description.axes
    brain = np.ascontiguousarray(to_network_space(case.brain_mask, axes))
    layers = sorted({layer for layer, _ in filters})
    masks = {}
    for layer, activation in layer_activations(network, case, layers, device).items():
        ks = [k for name, k in filters if name == layer]
        chosen = volume_masks(activation[ks], torch.as_tensor(thresholds[layer][ks], dtype=torch.float32), brain)
        for position, k in enumerate(ks):
            masks[(layer, k)] = np.ascontiguousarray(from_network_space(chosen[position], axes))
    return masks
