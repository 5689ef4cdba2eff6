"""Running a described 3D network over a case: its inputs in its own space, MONAI's sliding-window inference with
the window, overlap and blending the network was made for, and its outputs back on the case's canonical grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.case import Case
from .base import evaluating, model_device
from .description import NetworkDescription, from_network_space, network_inputs


@dataclass
class DescribedNetwork:
    """A user's network and its description (what :func:`models.load_model` gives for a bundle folder)."""

    module: nn.Module
    description: NetworkDescription

    @property
    def architecture(self) -> str:
        return self.description.name


def window_inferer(description: NetworkDescription, sw_batch_size: int = 1, progress: bool = False):
    """MONAI's SlidingWindowInferer with the network's own window settings (memory bounded by the window)."""
    from monai.inferers import SlidingWindowInferer

    return SlidingWindowInferer(roi_size=description.window, sw_batch_size=sw_batch_size,
                                overlap=description.overlap, mode=description.blend, progress=progress)


def activate(logits: torch.Tensor, description: NetworkDescription) -> torch.Tensor:
    """The network's outputs as probabilities: a softmax over its classes, or a sigmoid per region."""
    return torch.sigmoid(logits) if description.outputs == "sigmoid" else torch.softmax(logits, dim=1)


@torch.no_grad()
def predict_outputs(network: DescribedNetwork, case: Case, device: str | torch.device | None = None,
                    progress: bool = False) -> np.ndarray:
    """Probabilities ``(channels, Z, Y, X)`` float32 on the case's canonical grid (see :func:`activate`)."""
    module, description = network.module, network.description
    device = model_device(module, device)
    x = torch.from_numpy(network_inputs(case, description))[None].to(device)
    with evaluating(module):
        logits = window_inferer(description, progress=progress)(x, module) if description.window else module(x)
    probabilities = activate(logits.float(), description)[0].cpu().numpy()
    return np.ascontiguousarray(from_network_space(probabilities, description.axes))
