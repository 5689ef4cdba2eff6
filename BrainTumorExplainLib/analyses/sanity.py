"""The sanity check of a saliency method (Adebayo et al. 2018, "Sanity checks for saliency maps", §4.1):
cascading randomisation.

The network's layers are re-initialised from the output down, one more at each step (each step starts again from
the trained weights and resets every module of the layers randomised so far, the top one first, from one seed:
the layers above keep the same random weights from step to step), and the Grad-CAM maps of the chosen layers and
classes are made again. A map that explains the network must move once the weights it depends on are random: its
Spearman rank correlation with the trained network's map, over the brain voxels of the computed slices, should
fall. A map that stays put — a map of the input's edges, say — is not explaining the network, whatever it looks
like. Random weights come from each module's ``reset_parameters`` (PyTorch's default initialisation), BatchNorm
back to identity statistics: the random-weights control's (:mod:`controls`).
"""

from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import torch
from scipy.stats import spearmanr

from ..data.case import Case
from ..models.interface import analysed
from . import CONTROL_SEED
from .controls import reinitialise
from .gradcam import CamWeights, gradcam_volume, gradcam_weights


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's ρ of two maps' values; None when either is constant (an all-zero map has no ranking)."""
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return float(spearmanr(a, b).statistic)


def cascading_randomisation(model, case: Case, layers: str | Iterable[str] = "all",
                            classes: str | Iterable[int] = "tumour", slices: Iterable[int] | None = None,
                            seed: int = CONTROL_SEED, target: str = "probabilities", pool: str = "image",
                            weights: CamWeights = gradcam_weights, device: str | torch.device | None = None) -> dict:
    """Grad-CAM under cascading randomisation (see the module notes), for every kind of network.

    Returns ``{"randomised": [the layer added at each step, output first], "parameter_share": [share of the
    network's parameters random after each step], "spearman": {layer: {class name: [ρ after each step]}},
    "seed", "slices", "voxels"}``: ρ of each (layer, class) map with its trained map. ``layers``, ``classes``,
    ``slices``, ``target``, ``pool``, ``weights``: as :func:`gradcam.gradcam_volume` takes them. ``model`` is not
    touched."""
    network = analysed(model, "Grad-CAM")
    cascade = network.layers("all")[::-1]
    trained = gradcam_volume(network, case, layers, classes, target, slices, device=device, weights=weights,
                             pool=pool)
    computed = np.zeros(case.brain_mask.shape[0], dtype=bool)
    computed[trained.slices] = True
    region = case.brain_mask & computed[:, None, None]
    total = sum(p.numel() for p in network.module.parameters())
    result = {"randomised": cascade, "parameter_share": [], "seed": seed, "slices": len(trained.slices),
              "voxels": int(region.sum()),
              "spearman": {layer: {trained.name(c): [] for c in trained.classes} for layer in trained.layers}}
    for step in range(1, len(cascade) + 1):
        copied = analysed(network.with_module(copy.deepcopy(network.module), f"{network.name} (randomised down to "
                                              f"{cascade[step - 1]})"))
        modules = list({id(m): m for layer in cascade[:step] for m in copied.layer_module(layer).modules()}.values())
        reinitialise(modules, seed)
        random = {id(p) for m in modules for p in m.parameters(recurse=False)}
        result["parameter_share"].append(sum(p.numel() for p in copied.module.parameters() if id(p) in random) / total
                                         if total else 0.0)
        moved = gradcam_volume(copied, case, trained.layers, trained.classes, target, trained.slices, device=device,
                               weights=weights, pool=pool)
        for (layer, channel), cam in trained.maps.items():
            result["spearman"][layer][trained.name(channel)].append(
                _rank_correlation(cam[region], moved.maps[(layer, channel)][region]))
    return result
