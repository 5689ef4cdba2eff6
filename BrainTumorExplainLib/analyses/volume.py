"""Uncertainty and layer-wise Grad-CAM for a described 3D network (a user's bundle), over its own windows.

**Uncertainty** has two sources, and the result says which it is (``UncertaintyVolume.method``):

* ``dropout`` — test-time dropout, when the network has dropout: ``passes`` seeded stochastic passes over the whole
  volume, only the dropout modules sampling (epistemic, as the paper's eq. 9);
* ``flips`` — test-time augmentation, when it has none: the 8 mirrorings along the network's three axes (an nnU-Net
  network's: those its checkpoint allows), each undone on its output, as nnU-Net mirrors at inference (sensitivity
  of the prediction to the input's handedness).

Both give the same maps as the 2D networks: the channel mean of the output variances, the predictive entropy and
the mutual information (for sigmoid regions, each region is a two-class prediction and their entropies add up).

**Grad-CAM** (eqs. 3-5 in 3D): per window, one forward records every chosen layer and one backward per target
gives all their gradients; each layer's map is upsampled trilinearly onto the window, and MONAI's sliding-window
inferer blends the windows exactly as it blends the network's outputs. ``y(c)`` is the window mean of output
channel ``c`` after the network's own activation (``target="probabilities"``), or of its logits.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..data.case import Case
from ..errors import UsageError
from ..models.activations import layer_names
from ..models.base import evaluating, model_device, test_time_dropout
from ..models.description import from_network_space, labels_from_outputs, network_inputs, require_hooks
from ..models.volume import DescribedNetwork, activate, run_windows, window_inferer
from ..progress import progress_bar
from .gradcam import GradCamVolume, check_pool, predicted_masks
from .uncertainty import UncertaintyVolume, predictive_entropy

VOLUME_TARGETS = ("probabilities", "logits")


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


class ModuleRecorder:
    """Forward hooks on modules named by their path in the module tree; the latest outputs in ``outputs``."""

    def __init__(self, module: torch.nn.Module, paths: Sequence[str]) -> None:
        modules = dict(module.named_modules())
        unknown = [path for path in paths if path not in modules]
        if unknown:
            raise UsageError(f"unknown layer(s) {unknown}; layers of this network: {', '.join(p for p in modules if p)}")
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[path].register_forward_hook(self._keeper(path)) for path in paths]

    def _keeper(self, path: str):
        def keep(_module, _inputs, output) -> None:
            self.outputs[path] = output
        return keep

    def __enter__(self) -> "ModuleRecorder":
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self.outputs.clear()


def as_window(output: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """A layer's output as ``(B, C, d, h, w)``: a 2D network run slice by slice over depth-1 windows (an nnU-Net 2d
    configuration, :class:`models.nnunet.SliceNetwork`) gives ``(B, C, h, w)``."""
    return output.unsqueeze(2) if output.ndim == window.ndim - 1 else output


def window_gradcam(module: torch.nn.Module, window: torch.Tensor, layers: Sequence[str], targets: Sequence[int],
                   outputs: str, target: str = "probabilities", pool: str = "image") -> torch.Tensor:
    """Grad-CAM maps of one batch of windows ``(B, C, D, H, W)``: ``(B, len(layers) * len(targets), D, H, W)``,
    layer-major — one forward for all layers, one backward per target. ``pool="predicted"``: each window's y(c) is
    the mean over the voxels it labels ``c`` (argmax of a softmax, > 0.5 of a sigmoid region)."""
    size = tuple(window.shape[2:])
    with ModuleRecorder(module, layers) as recorder, torch.enable_grad():
        logits = module(window.detach().requires_grad_(True))
        scores = logits if target == "logits" else (torch.sigmoid(logits) if outputs == "sigmoid"
                                                    else torch.softmax(logits, dim=1))
        # eq. 3 pools by the mean; the sum, divided out below (the maps are linear in it), keeps the float32
        # gradients away from the 1/voxels scale, where they lose precision
        if pool == "image":
            pooled = scores.flatten(2).sum(-1)  # (B, channels)
            voxels = torch.full((logits.shape[0], logits.shape[1]), float(scores[0, 0].numel()), device=logits.device)
        else:
            mask = predicted_masks(logits, outputs)
            pooled = (scores * mask).flatten(2).sum(-1)
            voxels = mask.flatten(2).sum(-1).clamp_min(1).to(scores.dtype)
        activations = [recorder.outputs[layer] for layer in layers]
        maps: list[list[torch.Tensor]] = [[] for _ in layers]
        spatial = [as_window(activation, window).shape[2:] for activation in activations]  # per layer
        for position, channel in enumerate(targets):
            gradients = torch.autograd.grad(pooled[:, channel].sum(), activations, allow_unused=True,
                                            retain_graph=position < len(targets) - 1)
            for index, (activation, gradient) in enumerate(zip(activations, gradients)):
                if gradient is None:
                    maps[index].append(activation.new_zeros((activation.shape[0],) + spatial[index]))
                    continue
                beta = gradient.flatten(2).mean(-1)[(...,) + (None,) * (activation.ndim - 2)]  # eq. 4
                cam = torch.relu((beta * activation).sum(dim=1)).detach()  # eq. 5
                cam = cam / voxels[:, channel].reshape((-1,) + (1,) * (cam.ndim - 1))
                maps[index].append(cam.reshape((activation.shape[0],) + spatial[index]))
    return torch.cat([F.interpolate(torch.stack(layer_maps, dim=1), size=size, mode="trilinear",
                                    align_corners=False) for layer_maps in maps], dim=1)


def volume_gradcam(network: DescribedNetwork, case: Case, layers: Sequence[str] | str = "all",
                   targets: Sequence[int] | None = None, target: str = "probabilities",
                   device: str | torch.device | None = None, pool: str = "image") -> GradCamVolume:
    """Grad-CAM of every chosen layer (module paths; ``all``: the description's layers) and output channel
    (default: all) over the case, blended across windows; ``maps[(layer, channel)]`` on the canonical grid."""
    module, description = network.module, network.description
    require_hooks(description, "Grad-CAM")
    if target not in VOLUME_TARGETS:
        raise UsageError(f"unknown Grad-CAM target {target!r}; expected one of {', '.join(VOLUME_TARGETS)}")
    check_pool(pool)
    names = layer_names(layers)
    layers = list(description.layers) if names is None else names
    targets = list(range(len(description.output_names))) if targets is None else list(targets)
    device = model_device(module, device)
    x = torch.from_numpy(network_inputs(case, description))[None].to(device)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        return window_gradcam(module, window, layers, targets, description.outputs, target, pool)

    with evaluating(module):
        stitched = window_inferer(description)(x, predictor) if description.window else predictor(x)
    stitched = from_network_space(stitched[0].cpu().numpy(), description.axes)
    maps = {(layer, channel): np.ascontiguousarray(stitched[i * len(targets) + j], dtype=np.float32)
            for i, layer in enumerate(layers) for j, channel in enumerate(targets)}
    names, regions = target_names(description)
    return GradCamVolume(layers, targets, target, case.brain_slices(), maps,
                         {c: names[c] for c in targets}, {c: regions[c] for c in targets}, pool)


def target_names(description) -> tuple[list[str], list[str]]:
    """Each output channel's name as the library says it (a region, or a class of CLASS_NAMES) and the region its
    Grad-CAM should find."""
    from ..data.labels import CLASS_NAMES
    from ..models.description import CLASS_OUTPUTS
    from .gradcam import CLASS_REGION

    if description.outputs == "sigmoid":
        return list(description.output_names), list(description.output_names)
    classes = [CLASS_OUTPUTS.index(name) for name in description.output_names]
    return [CLASS_NAMES[c] for c in classes], [CLASS_REGION[c] for c in classes]
