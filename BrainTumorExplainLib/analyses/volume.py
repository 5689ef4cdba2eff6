"""Uncertainty for a described 3D network (a user's bundle), over its own windows.

**Uncertainty** has two sources, and the result says which it is (``UncertaintyVolume.method``):

* ``dropout`` — test-time dropout, when the network has dropout: ``passes`` seeded stochastic passes over the whole
  volume, only the dropout modules sampling (epistemic, as the paper's eq. 9);
* ``flips`` — test-time augmentation, when it has none: the 8 mirrorings along the network's three axes (an nnU-Net
  network's: those its checkpoint allows), each undone on its output, as nnU-Net mirrors at inference (sensitivity
  of the prediction to the input's handedness).

Both give the same maps as the 2D networks: the channel mean of the output variances, the predictive entropy and
the mutual information (for sigmoid regions, each region is a two-class prediction and their entropies add up).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..data.case import Case
from ..errors import UsageError
from ..models.base import evaluating, model_device, test_time_dropout
from ..models.description import from_network_space, labels_from_outputs, network_inputs
from ..models.volume import DescribedNetwork, activate, run_windows
from ..progress import progress_bar
from .uncertainty import UncertaintyVolume, predictive_entropy

def volume_uncertainty(network: DescribedNetwork, case: Case, passes: int = 8, seed: int = 0,
                       method: str | None = None, device: str | torch.device | None = None,
                       progress: bool = False) -> UncertaintyVolume:
    """Uncertainty maps on the case's canonical grid (see the module notes); ``method`` defaults to ``dropout``
    for a network with dropout and ``flips`` otherwise."""
    module, description = network.module, network.description
    method = method or ("dropout" if description.dropout else "flips")
    if method == "dropout" and not description.dropout:
        raise UsageError(f"{description.name} has no dropout: use test-time augmentation (flips)")
    if method not in ("dropout", "flips"):
        raise UsageError(f"unknown uncertainty method {method!r}; expected dropout or flips")
    device = model_device(module, device)
    x = torch.from_numpy(network_inputs(case, description))[None].to(device)

    def predict(inputs: torch.Tensor) -> torch.Tensor:
        return activate(run_windows(description, inputs, module).float(), description)

    total = squares = entropy_sum = None
    axes = tuple(a + 2 for a in (description.mirror_axes if description.mirror_axes is not None else (0, 1, 2)))
    runs = range(passes) if method == "dropout" else [a for n in range(len(axes) + 1)
                                                       for a in itertools.combinations(axes, n)]
    if len(runs) < 2:
        raise UsageError(f"{description.name} allows no test-time mirroring and has no dropout: nothing to sample "
                         "its uncertainty from (an nnU-Net folder: give several folds, --folds all)")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), (
            test_time_dropout(module) if method == "dropout" else evaluating(module)):
        torch.manual_seed(seed)
        for run in progress_bar(runs, f"uncertainty ({method})" if progress else None, unit="pass"):
            p = predict(x) if method == "dropout" else predict(x.flip(run)).flip(run) if run else predict(x)
            total = p if total is None else total + p
            squares = p * p if squares is None else squares + p * p
            entropy = predictive_entropy(p, description.outputs)
            entropy_sum = entropy if entropy_sum is None else entropy_sum + entropy
    count = len(runs)
    mean = total / count
    variance = (squares / count - mean * mean).clamp_min(0).mean(1)
    entropy = predictive_entropy(mean, description.outputs)
    information = (entropy - entropy_sum / count).clamp_min(0)
    back = {name: np.ascontiguousarray(from_network_space(value[0].cpu().numpy(), description.axes))
            for name, value in (("mean", mean), ("variance", variance[:, None]), ("entropy", entropy[:, None]),
                                ("mutual_information", information[:, None]))}
    used = np.where(case.brain_mask.any(axis=(1, 2)), count, 0)
    return UncertaintyVolume(back["mean"], back["variance"][0], back["entropy"][0], back["mutual_information"][0],
                             used, seed, method=method, label_map=labels_from_outputs(back["mean"], description))
