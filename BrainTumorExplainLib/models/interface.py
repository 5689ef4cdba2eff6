"""One interface to every kind of network the analyses read: the paper's 2D networks, run over a case's axial
slices, and a described 3D network (a MONAI bundle, an nnU-Net folder), run over its own windows.

An analysis sees a network as a function from input batches (``(B, C, *spatial)``: slices or windows) to outputs,
with layers whose activations it records, output channels it can target, and a way to put a batch function's
maps back onto the case's canonical grid (:meth:`AnalysedNetwork.map_case`). A 2D network is the case where the
window is one axial slice. This module is the only place that tells the kinds apart (MONAI's ``GradCAM`` and
pytorch-grad-cam's ``BaseCAM`` branch once on the tensor rank the same way).
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.case import MODALITIES, Case
from ..data.labels import CLASS_KEYS, CLASS_NAMES, CLASS_REGION, one_hot, resolve_classes
from ..errors import UsageError
from .activations import (
    LayerRecorder,
    forward_through,
    forward_until,
    layer_names,
    resolve_layers,
    upsample_to_input,
)
from .base import NUM_CLASSES, SegmentationNet, check_images, dropout_modules
from .description import (
    CLASS_OUTPUTS,
    from_network_space,
    labels_from_outputs,
    network_inputs,
    require_hooks,
    to_network_space,
    truth_of_outputs,
)
from .inference import slice_batches
from .volume import DescribedNetwork, activate, run_windows, window_inferer

# (B, C, *spatial) inputs and their axial slices (None: a window, or the whole case) → (B, maps, *spatial), same grid
BatchMaps = Callable[[torch.Tensor, "np.ndarray | None"], torch.Tensor]


class AnalysedNetwork:
    """What every analysis needs of a network (see the module notes); :func:`analysed` makes one."""

    module: nn.Module  # what runs the batches and carries the hooks
    outputs: str  # "softmax" over classes, or "sigmoid" per region
    name: str  # as messages call it
    output_channels: int

    def layers(self, layers: str | Iterable[str] | None = "all") -> list[str]:
        """The layer names ``layers`` asks for (``"all"``: the network's analysable layers), in network order."""
        raise NotImplementedError

    def recorder(self, layers: Sequence[str]) -> AbstractContextManager:
        """Forward hooks keeping ``layers``' latest outputs in ``.outputs`` (name → tensor), released on exit."""
        raise NotImplementedError

    def layer_module(self, layer: str) -> nn.Module:
        """The module whose output is ``layer``."""
        raise NotImplementedError

    def targets(self, classes: str | Iterable[int] | None = "tumour") -> list[int]:
        """The output channels an analysis of ``classes`` looks at."""
        raise NotImplementedError

    def target_name(self, channel: int) -> str:
        """Output channel ``channel`` as the library names it (a class of CLASS_NAMES, or a region)."""
        raise NotImplementedError

    def target_region(self, channel: int) -> str:
        """The region output channel ``channel``'s evidence should lie in (for the localisation)."""
        raise NotImplementedError

    def check_inputs(self, inputs: torch.Tensor) -> None:
        """Refuse a batch the network cannot take, saying what it takes."""

    def as_spatial(self, activation: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """A layer's output with as many spatial axes as ``inputs``."""
        return activation

    def upsample(self, maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Layer maps ``(B, M, *layer grid)`` onto an input grid of spatial shape ``size``: ``(B, M, *size)``."""
        raise NotImplementedError

    def activation_batches(self, case: Case, layers: Sequence[str], slices: np.ndarray, batch_size: int,
                           device: torch.device) -> Iterator[tuple[np.ndarray | None, dict[str, torch.Tensor]]]:
        """Per batch of the case: its axial slices (None: the whole case) and ``layers``' activations
        ``(N, K, *layer grid)``, without gradients (the caller sets eval mode)."""
        raise NotImplementedError

    def on_input_grid(self, array: np.ndarray, slices: np.ndarray | None) -> np.ndarray:
        """A canonical-grid array ``(..., Z, Y, X)`` as a batch's images ``(N, ..., *input grid)``."""
        raise NotImplementedError

    def place(self, canvas: np.ndarray, images: np.ndarray, slices: np.ndarray | None) -> None:
        """Write a batch's images ``(N, *input grid)`` into ``canvas`` on the canonical grid (inverse of
        :meth:`on_input_grid`)."""
        raise NotImplementedError

    def activation_values(self, activation: torch.Tensor, brain: np.ndarray, region: str = "image") -> torch.Tensor:
        """``(K, values)``: the activations of a batch ``(N, K, *layer grid)`` whose quantile sets each filter's
        dissection threshold (``brain``: the batch's brain mask on the input grid; ``region``: one of
        :data:`analyses.THRESHOLD_REGIONS`)."""
        raise NotImplementedError

    def computed_slices(self, case: Case, slices: Iterable[int] | None) -> np.ndarray:
        """The axial slices an analysis of ``case`` fills (default: every slice with brain)."""
        return case.brain_slices()

    def control_slices(self, slices: np.ndarray) -> np.ndarray:
        """The slices a control (random weights, raw input) is measured on, of those computed."""
        return slices

    def input_channels(self, case: Case) -> np.ndarray:
        """The network's input channels ``(C, Z, Y, X)`` on the canonical grid (named by :attr:`channel_names`)."""
        raise NotImplementedError

    def map_case(self, case: Case, slices: np.ndarray, batch_maps: BatchMaps, count: int, batch_size: int,
                 device: torch.device, progress: str | None = None, per_window: bool = True) -> np.ndarray:
        """``(count, Z, Y, X)`` float32 on the case's canonical grid: ``batch_maps(inputs, slices)`` over the case's
        batches (zero on slices not computed; ``slices``: the batch's axial slices, None for the whole case). A 3D
        network's maps are made window by window and blended as its outputs are, or — ``per_window=False``, for
        statistics over whole passes — from the whole case at once (``batch_maps`` then runs the windows itself)."""
        raise NotImplementedError

    spatial_dims: int  # 2: slices; 3: volumes
    channel_names: Sequence[str]  # the input channels' sequences, in the network's own order
    axes: str | None = None  # a 3D network's axis order (models.description), None for slices
    min_side: int | None = None  # the side a probe input needs (a 2D network's divisor), None: the caller's

    def with_module(self, module: nn.Module, name: str, layers: dict[str, str] | None = None):
        """The same kind of network around another module (a control), named ``name``: a 2D ``module`` is itself
        the network; a 3D one gets this description, with ``layers`` (name → module path) when given."""
        raise NotImplementedError

    def forward_until(self, inputs: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """The chosen layers' outputs on ``inputs``, the forward pass stopped after the last of them."""
        raise NotImplementedError

    # -- sampling (uncertainty) --
    whole_case = False  # True: one batch is the whole case, each pass a full window inference
    masks_outside_brain = False  # True: outside the brain is background for certain (never asked of the network)

    def has_dropout(self) -> bool:
        raise NotImplementedError

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, C, *spatial)`` of a batch (softmax classes or sigmoid regions), in the current mode."""
        raise NotImplementedError

    def sample(self, inputs: torch.Tensor, copies: int) -> torch.Tensor:
        """``copies`` passes over a batch: ``(copies, B, C, *spatial)`` probabilities (under test-time dropout, each
        copy draws its own masks)."""
        return torch.stack([self.predict(inputs) for _ in range(copies)])

    def flip_axes(self) -> tuple[int, ...]:
        """The input tensor's axes along which test-time mirroring runs."""
        raise NotImplementedError

    def label_map(self, probabilities: np.ndarray) -> np.ndarray | None:
        """Labels of ``(C, Z, Y, X)`` probabilities when they are not the argmax of the paper's classes, else None."""
        return None

    def output_truth(self, labels: np.ndarray) -> np.ndarray:
        """``(C, *labels.shape)`` bool: what each output channel should say for class indices ``labels`` (the paper's
        four classes, one-hot)."""
        return one_hot(labels, self.output_channels)


class SliceWise(AnalysedNetwork):
    """One of the paper's 2D networks: batches of axial slices ``(N, 4, H, W)`` in [FLAIR, T1, T1ce, T2] order;
    four softmax classes."""

    outputs = "softmax"

    output_channels = NUM_CLASSES
    spatial_dims = 2
    channel_names = MODALITIES

    def __init__(self, model: SegmentationNet) -> None:
        self.module = model
        self.name = getattr(model, "architecture", None) or type(model).__name__
        self.min_side = getattr(model, "divisor", None)

    def with_module(self, module, name, layers=None):
        module.architecture = name  # a SegmentationNet registers its own layers
        return module

    def forward_until(self, inputs, layers):
        return forward_until(self.module, inputs, layers)

    def layers(self, layers="all") -> list[str]:
        return resolve_layers(self.module, layers)

    def recorder(self, layers):
        return LayerRecorder(self.module, layers)

    def layer_module(self, layer):
        return self.module.analysable_layers()[layer]

    def targets(self, classes="tumour") -> list[int]:
        return resolve_classes(classes)

    def target_name(self, channel: int) -> str:
        return CLASS_NAMES[channel]

    def target_region(self, channel: int) -> str:
        return CLASS_REGION[channel]

    def check_inputs(self, inputs: torch.Tensor) -> None:
        check_images(inputs)

    def upsample(self, maps, size):
        return upsample_to_input(maps, self.module, *size)

    def activation_batches(self, case, layers, slices, batch_size, device):
        with LayerRecorder(self.module, layers) as recorder, torch.no_grad():
            for chosen, images in slice_batches(case, slices, batch_size, device):
                self.module(images)
                yield chosen, {name: recorder.outputs[name] for name in layers}

    def on_input_grid(self, array, slices):
        return np.ascontiguousarray(np.moveaxis(array[..., slices, :, :], -3, 0))

    def place(self, canvas, images, slices):
        canvas[slices] = images

    def activation_values(self, activation, brain, region="image"):
        """Every position of the slices but the rows and columns that lie entirely in ``forward``'s zero padding
        (``region="image"``); or each slice's brain bounding box (``"brain-box"``)."""
        height, width = brain.shape[-2:]
        top, bottom, left, right = self.module.input_padding(height, width)
        if region == "brain-box":
            padded = np.pad(brain, ((0, 0), (top, bottom), (left, right)))  # the grid the activations cover
            return torch.cat([activation[i][(slice(None),) + brain_box(padded[i], tuple(activation.shape[-2:]))]
                              .flatten(1) for i in range(len(padded)) if padded[i].any()], dim=1)
        stride_h = (height + top + bottom) / activation.shape[-2]
        stride_w = (width + left + right) / activation.shape[-1]
        rows = slice(int(top // stride_h), activation.shape[-2] - int(bottom // stride_h))
        columns = slice(int(left // stride_w), activation.shape[-1] - int(right // stride_w))
        return activation[..., rows, columns].transpose(0, 1).flatten(1)

    def computed_slices(self, case, slices):
        if slices is None:
            return case.brain_slices()
        chosen = np.asarray(sorted(set(int(z) for z in slices)), dtype=int)
        depth = case.images.shape[1]
        if chosen.size and (chosen.min() < 0 or chosen.max() >= depth):
            raise UsageError(f"slices must lie in 0..{depth - 1} for {case.case_id}, got {chosen.min()}..{chosen.max()}")
        return chosen

    def control_slices(self, slices):
        return slices[::CONTROL_SLICE_STEP]

    def input_channels(self, case):
        return case.images

    def map_case(self, case, slices, batch_maps, count, batch_size, device, progress=None, per_window=True):
        maps = np.zeros((count,) + case.brain_mask.shape, dtype=np.float32)
        for batch_slices, images in slice_batches(case, slices, batch_size, device, progress):
            maps[:, batch_slices] = batch_maps(images, batch_slices).float().cpu().numpy().transpose(1, 0, 2, 3)
        return maps

    masks_outside_brain = True  # the inputs are skull-stripped: the network was never asked about the outside

    def has_dropout(self) -> bool:
        return any(float(getattr(m, "p", 0.0)) > 0 for m in dropout_modules(self.module))

    def predict(self, inputs):
        return self.module.predict(inputs)

    def sample(self, inputs, copies):
        # one forward of every copy: dropout draws an independent mask per copy; copy-major rows
        return self.predict(inputs.repeat(copies, 1, 1, 1)).view(copies, *inputs.shape[:1], -1, *inputs.shape[2:])

    def flip_axes(self):
        return (2, 3)


CONTROL_SLICE_STEP = 4  # a 2D network's controls: every 4th computed slice (a quarter of the cost)


class WindowWise(AnalysedNetwork):
    """A described 3D network: the whole case in the network's own space and channel order, run over its windows
    with its own blending (MONAI's sliding window, or nnU-Net's); output channels as its description names them."""

    def __init__(self, network: DescribedNetwork) -> None:
        self.network = network
        self.module = network.module
        self.description = network.description
        self.outputs = network.description.outputs
        self.name = network.description.name
        self.output_channels = len(network.description.output_names)
        self.spatial_dims = network.description.spatial_dims
        self.channel_names = network.description.channels
        self.axes = network.description.axes if self.spatial_dims == 3 else None

    def with_module(self, module, name, layers=None):
        changes = {"name": name} | ({"layers": layers, "torchscript": False} if layers is not None else {})
        return DescribedNetwork(module, dataclasses.replace(self.description, **changes))

    def forward_until(self, inputs, layers):
        modules = dict(self.module.named_modules())
        return forward_through(self.module, inputs, {layer: modules[layer] for layer in layers})

    def layers(self, layers="all") -> list[str]:
        """Module paths: ``all``, the description's layers; else those given, each a module of the network, once
        each, in network order."""
        names = layer_names(layers)
        if names is None:
            return list(self.description.layers.values())
        known = list(dict(self.module.named_modules()))
        unknown = [name for name in names if name not in known or not name]
        if unknown or not names:
            raise UsageError(f"unknown layer(s) {unknown or names} for {self.description.name}; its analysable "
                             f"layers: {', '.join(self.description.layers)}")
        return sorted(set(names), key=known.index)

    def recorder(self, layers):
        return ModuleRecorder(self.module, layers)

    def layer_module(self, layer):
        return dict(self.module.named_modules())[layer]

    def targets(self, classes="tumour") -> list[int]:
        """Every output channel for ``tumour`` or ``all`` (each is its own target), else those named — by index, by
        the network's name (``wt``, ``tumor core``) or the library's (a class's key too: ``ncr``, ``ed``, ``et``), as a
        list or a comma-separated string."""
        count = len(self.description.output_names)
        if classes is None or classes in ("tumour", "all"):
            return list(range(count))
        spellings: dict[str, int] = {}
        for channel, (own, shown) in enumerate(zip(self.description.output_names, target_names(self.description)[0])):
            keys = [own, shown] + ([CLASS_KEYS[CLASS_NAMES.index(shown)]] if shown in CLASS_NAMES else [])
            spellings.update({key.lower(): channel for key in keys} | {str(channel): channel})
        items = classes.split(",") if isinstance(classes, str) else list(classes) if isinstance(classes, (list, tuple)) \
            else [classes]
        chosen = []
        for item in items:
            if str(item).strip().lower() not in spellings:
                raise UsageError(f"unknown output {item!r} of {self.description.name}; its outputs: "
                                 f"{', '.join(f'{i} {n}' for i, n in enumerate(self.description.output_names))}")
            chosen.append(spellings[str(item).strip().lower()])
        return sorted(set(chosen))

    def target_name(self, channel: int) -> str:
        return target_names(self.description)[0][channel]

    def target_region(self, channel: int) -> str:
        return target_names(self.description)[1][channel]

    def as_spatial(self, activation, inputs):
        return as_window(activation, inputs)

    def upsample(self, maps, size):
        return F.interpolate(maps, size=tuple(size), mode="trilinear", align_corners=False)

    def activation_batches(self, case, layers, slices, batch_size, device):
        """One batch: every layer's activations over the whole case, one forward per window for all layers,
        stitched by the network's inferer at each layer's own resolution (MONAI's blends outputs smaller than the
        window at their own scale), float32 on the CPU."""
        x = torch.from_numpy(network_inputs(case, self.description))[None].to(device)
        order: list[str] = []  # largest outputs first (see below), fixed by the first window
        with ModuleRecorder(self.module, layers) as recorder, torch.no_grad():
            def predictor(window: torch.Tensor) -> tuple[torch.Tensor, ...]:
                self.module(window)
                outputs: dict[str, torch.Tensor] = {}
                for layer in layers:  # MONAI's inferer weights each output in place: a tensor that is two layers'
                    #                   output (a block and its last module) must come twice, not once
                    output = as_window(recorder.outputs[layer], window).float()
                    outputs[layer] = output.clone() if any(output is kept for kept in outputs.values()) else output
                if not order:  # MONAI 1.6 resizes one blending map from output to output and never back up: an
                    #            output at the window's size after a smaller one would not fit, so largest first
                    order.extend(sorted(layers, key=lambda layer: -outputs[layer][0, 0].numel()))
                return tuple(outputs[layer] for layer in order)

            stitched = window_inferer(self.description)(x, predictor) if self.description.window else predictor(x)
        stitched = stitched if isinstance(stitched, tuple) else (stitched,)
        yield None, {layer: stitched[order.index(layer)].cpu() for layer in layers}

    def on_input_grid(self, array, slices):
        return np.ascontiguousarray(to_network_space(array, self.description.axes))[None]

    def place(self, canvas, images, slices):
        canvas[...] = from_network_space(images[0], self.description.axes)

    def activation_values(self, activation, brain, region="image"):
        """Every position inside the bounding box of the brain (the 3D counterpart of the brain-containing
        slices), at the layer's resolution, whichever the ``region``."""
        box = brain_box(brain[0], tuple(activation.shape[2:]))
        return activation[0][(slice(None),) + box].flatten(1)

    def input_channels(self, case):
        return from_network_space(network_inputs(case, self.description), self.description.axes)

    def map_case(self, case, slices, batch_maps, count, batch_size, device, progress=None, per_window=True):
        x = torch.from_numpy(network_inputs(case, self.description))[None].to(device)
        if per_window and self.description.window:
            stitched = window_inferer(self.description)(x, lambda window: batch_maps(window, None))
        else:
            stitched = batch_maps(x, None)
        return np.ascontiguousarray(from_network_space(stitched[0].float().cpu().numpy(), self.description.axes),
                                    dtype=np.float32)

    whole_case = True

    def has_dropout(self) -> bool:
        return bool(self.description.dropout)

    def predict(self, inputs):
        return activate(run_windows(self.description, inputs, self.module).float(), self.description)

    def flip_axes(self):
        mirror = self.description.mirror_axes
        return tuple(a + 2 for a in (mirror if mirror is not None else (0, 1, 2)))

    def label_map(self, probabilities):
        return labels_from_outputs(probabilities, self.description)

    def output_truth(self, labels):
        return truth_of_outputs(labels, self.description)


def analysed(network, analysis: str | None = None) -> AnalysedNetwork:
    """The :class:`AnalysedNetwork` of a 2D :class:`SegmentationNet` or a :class:`DescribedNetwork`; ``analysis``
    (one that reads layers through hooks, by name) is refused for a TorchScript network, saying what runs."""
    if isinstance(network, AnalysedNetwork):
        return network
    if not isinstance(network, DescribedNetwork):
        return SliceWise(network)
    if analysis is not None:
        require_hooks(network.description, analysis)
    return WindowWise(network)


class ModuleRecorder:
    """Forward hooks on modules named by their path in the module tree; the latest outputs in ``outputs``."""

    def __init__(self, module: nn.Module, paths: Sequence[str]) -> None:
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


def brain_box(brain: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The brain's bounding box on a grid of ``shape`` covering the same extent (a coarser layer's)."""
    voxels = np.argwhere(brain)
    low, high = voxels.min(axis=0), voxels.max(axis=0) + 1
    return tuple(slice(int(np.floor(lo * n / full)), int(np.ceil(hi * n / full)))
                 for lo, hi, n, full in zip(low, high, shape, brain.shape))


def as_window(output: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """A layer's output as ``(B, C, d, h, w)``: a 2D network run slice by slice over depth-1 windows (an nnU-Net 2d
    configuration, :class:`models.nnunet.SliceNetwork`) gives ``(B, C, h, w)``."""
    return output.unsqueeze(2) if output.ndim == window.ndim - 1 else output


def target_names(description) -> tuple[list[str], list[str]]:
    """Each output channel of a described network as the library names it (a region, or a class of CLASS_NAMES),
    and the region its evidence should lie in."""
    if description.outputs == "sigmoid":
        return list(description.output_names), list(description.output_names)
    classes = [CLASS_OUTPUTS.index(name) for name in description.output_names]
    return [CLASS_NAMES[c] for c in classes], [CLASS_REGION[c] for c in classes]
