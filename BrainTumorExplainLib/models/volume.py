"""Running a described 3D network over a case: its inputs in its own space, MONAI's sliding-window inference with
the window, overlap and blending the network was made for, and its outputs back on the case's canonical grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..data.case import Case
from .base import evaluating, model_device
from .description import NetworkDescription, from_network_space, network_inputs
from .nnunet import NnUNetSlidingWindow, background_logits


@dataclass
class DescribedNetwork:
    """A user's network and its description (what :func:`models.load_model` gives for a bundle or nnU-Net folder).

    ``module`` is what the layer analyses hook; ``segmenter``, when given, what segments (a fold of an nnU-Net folder
    and its mirrorings, :class:`models.nnunet.Mirrored`); ``members``: networks whose logits are averaged to segment
    and whose disagreement is the uncertainty (an nnU-Net folder's folds); ``folds``: their names."""

    module: nn.Module
    description: NetworkDescription
    segmenter: nn.Module | None = None
    members: list["DescribedNetwork"] = field(default_factory=list)
    folds: tuple[str, ...] = ()

    @property
    def architecture(self) -> str:
        return self.description.name


def fold_members(network) -> dict[str, "DescribedNetwork"]:
    """An nnU-Net folder's folds by name when there are two or more (their disagreement is the uncertainty), else
    nothing."""
    if isinstance(network, DescribedNetwork) and len(network.members) > 1:
        return dict(zip(network.folds, network.members))
    return {}


def window_inferer(description: NetworkDescription, sw_batch_size: int = 1, progress: bool = False):
    """MONAI's SlidingWindowInferer with the network's own window settings (memory bounded by the window), or
    nnU-Net's sliding window for an nnU-Net network (:class:`models.nnunet.NnUNetSlidingWindow`)."""
    from monai.inferers import SlidingWindowInferer

    if description.blend.startswith("nnunet"):
        return NnUNetSlidingWindow(description.window, sums=torch.float16 if description.blend == "nnunet-float16"
                                   else torch.float32)

    return SlidingWindowInferer(roi_size=description.window, sw_batch_size=sw_batch_size,
                                overlap=description.overlap, mode=description.blend, progress=progress)


def run_windows(description: NetworkDescription, x: torch.Tensor, module, progress: bool = False) -> torch.Tensor:
    """The network's logits over the whole input ``x`` (its own window inference when it has a window); outside an
    nnU-Net network's crop, the background for certain, as nnU-Net writes it."""
    if not description.window:
        return module(x)
    if description.blend.startswith("nnunet"):
        return window_inferer(description)(x, module, background_logits(description))
    return window_inferer(description, progress=progress)(x, module)


def activate(logits: torch.Tensor, description: NetworkDescription) -> torch.Tensor:
    """The network's outputs as probabilities: a softmax over its classes, or a sigmoid per region."""
    return torch.sigmoid(logits) if description.outputs == "sigmoid" else torch.softmax(logits, dim=1)


def predict_outputs(network: DescribedNetwork, case: Case, device: str | torch.device | None = None,
                    progress: bool = False) -> np.ndarray:
    """Probabilities ``(channels, Z, Y, X)`` float32 on the case's canonical grid (see :func:`activate`)."""
    logits = predict_logits(network, case, device, progress)
    return activate(torch.from_numpy(logits)[None], network.description)[0].numpy()


@torch.no_grad()
def predict_logits(network: DescribedNetwork, case: Case, device: str | torch.device | None = None,
                   progress: bool = False) -> np.ndarray:
    """The network's logits ``(channels, Z, Y, X)`` float32 on the case's canonical grid (the folds' mean for an
    nnU-Net folder)."""
    description = network.description
    modules = [member.segmenter or member.module for member in network.members] or [
        network.segmenter or network.module]
    device = model_device(modules[0], device)
    x = torch.from_numpy(network_inputs(case, description))[None].to(device)
    sums = torch.float16 if description.blend == "nnunet-float16" else torch.float32  # nnU-Net's, to compare with it
    logits = None
    for module in modules:  # an nnU-Net folder's folds: their logits averaged, each over the whole volume, as nnU-Net
        with evaluating(module):
            fold = run_windows(description, x, module, progress).to(sums)
        logits = fold if logits is None else logits + fold
    logits = (logits / len(modules)).float()[0].cpu().numpy()
    return np.ascontiguousarray(from_network_space(logits, description.axes))
