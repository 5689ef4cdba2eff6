"""Reading a network's named layers: choosing them, recording their outputs in one forward pass, and bringing
their maps back onto the input slice. Dissection, Grad-CAM and feature visualisation all go through here, so
hooks live in one place and are always released.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UsageError
from .base import SegmentationNet


def layer_names(layers: str | Iterable[str] | None) -> list[str] | None:
    """What ``--layers`` asks for, for every kind of network: None for ``"all"`` (or None), else the names — a
    comma-separated string split, blanks dropped (an empty list: no name given)."""
    if layers is None or layers == "all":
        return None
    return [n.strip() for n in layers.split(",") if n.strip()] if isinstance(layers, str) else list(layers)


def resolve_layers(model: SegmentationNet, layers: str | Iterable[str] | None = "all") -> list[str]:
    """``"all"`` (or None) → every analysable layer in network order; otherwise the given names, checked.

    A comma-separated string is accepted too, as the CLI passes it.
    """
    valid = list(model.analysable_layers())
    names = layer_names(layers)
    if names is None:
        return valid
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise UsageError(f"unknown layer(s) {unknown or names} for {model.architecture}; valid layers: "
                         f"{', '.join(valid)}")
    return sorted(set(names), key=valid.index)  # network order, each once


class LayerRecorder:
    """Forward hooks that keep the outputs of the chosen layers of the latest forward pass.

    Use as a context manager so the hooks are removed whatever happens::

        with LayerRecorder(model, ["enc1", "dec1"]) as recorder:
            model(x)
            recorder.outputs["enc1"]  # (N, K, h, w), still attached to the autograd graph
    """

    def __init__(self, model: SegmentationNet, layers: Sequence[str]) -> None:
        modules = model.analysable_layers()
        self.layers = resolve_layers(model, layers)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._keeper(name)) for name in self.layers]

    def _keeper(self, name: str):
        def keep(_module, _inputs, output: torch.Tensor) -> None:
            self.outputs[name] = output
        return keep

    def release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "LayerRecorder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
        self.outputs.clear()


def upsample_to_input(maps: torch.Tensor, model: SegmentationNet, height: int, width: int) -> torch.Tensor:
    """Layer maps ``(N, C, h, w)`` → ``(N, C, height, width)``: bilinear onto the padded input the network saw,
    then cropped by the padding, so each map lies exactly over the slice it came from."""
    top, bottom, left, right = model.input_padding(height, width)
    padded = F.interpolate(maps, size=(height + top + bottom, width + left + right), mode="bilinear",
                           align_corners=False)
    return padded[..., top: top + height, left: left + width]


class _ReachedLayer(Exception):
    """Raised by a hook to stop a forward pass once the wanted layer has run."""


def forward_until(model: SegmentationNet, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The outputs of the given layers, stopping the forward pass as soon as the last of them has run (an encoder
    layer's activation costs only the encoder). Gradients flow back to ``x`` as usual."""
    modules = model.analysable_layers()
    return forward_through(model, x, {name: modules[name] for name in resolve_layers(model, layers)})


def forward_through(model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """:func:`forward_until` for any module: ``layers`` maps a name to the submodule whose output it is."""
    kept: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def keep(_module, _inputs, output: torch.Tensor) -> None:
            kept[name] = output
            if len(kept) == len(layers):
                raise _ReachedLayer
        return keep

    handles = [module.register_forward_hook(keeper(name)) for name, module in layers.items()]
    try:
        model(x)
    except _ReachedLayer:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return kept
