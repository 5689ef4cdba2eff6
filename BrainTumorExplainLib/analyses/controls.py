"""Controls: what an analysis finds when nothing was learned, so a claim about the trained network can be told apart
from what the input or the architecture alone gives.

Two controls stand beside every trained network (issue 19; the logic of Adebayo et al. 2018, "Sanity checks for
saliency maps", applied to dissection):

* **random weights** — the same architecture, every layer re-initialised from a seed (PyTorch's default
  initialisation of each layer — ``reset_parameters`` — not the network's own initialisation scheme, which a loaded
  network does not carry). Whatever it "detects" comes from the architecture and the input, not from training.
* **raw input** — the network's own input channels, as it receives them (its channel order, normalisation and axes),
  treated as a layer of as many "filters" as channels: a filter that only copies a sequence is no better than this.

Both are networks the analyses run unchanged (a :class:`models.base.SegmentationNet` for the paper's 2D networks, a
:class:`models.volume.DescribedNetwork` for a user's 3D one), so a control is measured by exactly the code that
measures the claim.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from ..models.base import SegmentationNet
from ..models.interface import analysed
from . import CONTROL_SEED

RANDOM_WEIGHTS = "random weights"
RAW_INPUT = "raw input"
CONTROLS = (RANDOM_WEIGHTS, RAW_INPUT)
INPUT_LAYER = "input"  # the raw-input control's one layer


def reinitialise(modules: Iterable[nn.Module], seed: int) -> None:
    """Reset, in place and in the given order, every module of ``modules`` that has ``reset_parameters`` from
    ``seed`` (a BatchNorm's running statistics too); the global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for submodule in modules:
            reset = getattr(submodule, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(submodule, nn.modules.batchnorm._NormBase) and submodule.track_running_stats:
                submodule.reset_running_stats()


def _reinitialised(module: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``module`` with every submodule reset from ``seed`` (:func:`reinitialise`)."""
    copied = copy.deepcopy(module)
    reinitialise(copied.modules(), seed)
    return copied


def random_weights(model, seed: int = CONTROL_SEED):
    """The same architecture as ``model`` with random weights (see the module notes); ``model`` is not touched."""
    network = analysed(model)
    return network.with_module(_reinitialised(network.module, seed), f"{network.name} ({RANDOM_WEIGHTS})")


class RawInput(SegmentationNet):
    """The raw-input control: layer :data:`INPUT_LAYER` is the input channels — of a slice (no padding: ``divisor``
    1) or of a window, whatever its rank."""

    divisor = 1

    def __init__(self, architecture: str) -> None:
        super().__init__()
        self.architecture = f"{architecture} ({RAW_INPUT})"
        self.config = {}
        self.input = nn.Identity()
        self._register_layer(INPUT_LAYER, "input")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.input(x)


def raw_input(model):
    """The raw-input control of ``model`` (see the module notes)."""
    network = analysed(model)
    return network.with_module(RawInput(network.name), f"{network.name} ({RAW_INPUT})", {INPUT_LAYER: "input"})


def control_networks(model, seed: int = CONTROL_SEED) -> dict:
    """Control name → the control network of ``model``, in :data:`CONTROLS` order."""
    return {RANDOM_WEIGHTS: random_weights(model, seed), RAW_INPUT: raw_input(model)}
