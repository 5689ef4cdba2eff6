"""What every segmentation network here shares: padding to its stride, named analysable layers, dropout control."""

from __future__ import annotations

import os
import sys
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import WeightsError

IN_CHANNELS = 4  # [FLAIR, T1, T1ce, T2]
NUM_CLASSES = 4  # background, NCR/NET, ED, ET
_COMPILER_CACHE = "TORCHINDUCTOR_CACHE_DIR"  # torch's setting


def import_dynamo_privately() -> None:
    """Import ``torch._dynamo`` (an optimiser's first step does) with torch's compiler cache in a private folder
    removed at once: the import makes that cache folder — by default ``<temp>/torchinductor_<user>`` — and leaves
    it behind empty, though nothing here compiles. Call before an optimiser's first step. The setting is as before
    afterwards (a folder the user chose is used as it is)."""
    if "torch._dynamo" in sys.modules or _COMPILER_CACHE in os.environ:
        return
    with tempfile.TemporaryDirectory(prefix="bte-torch-cache-") as private:
        os.environ[_COMPILER_CACHE] = private
        try:
            import torch._dynamo  # noqa: F401
        finally:
            os.environ.pop(_COMPILER_CACHE, None)  # torch sets it to the folder it made: not to a removed one


def check_images(x: torch.Tensor) -> None:
    """What a 2D network takes: axial slices ``(N, 4, H, W)`` in [FLAIR, T1, T1ce, T2] order."""
    if x.ndim != 4 or x.shape[1] != IN_CHANNELS:
        raise ValueError(f"expected images (N, {IN_CHANNELS}, H, W) in [FLAIR, T1, T1ce, T2] order, "
                         f"got {tuple(x.shape)}")


class SegmentationNet(nn.Module):
    """Base class: ``forward`` pads H, W up to a multiple of ``divisor`` and crops the logits back.

    Subclasses build their modules, implement ``_forward`` and register the modules whose outputs a user may analyse
    with :meth:`_register_layer` in network order. Outputs are logits ``(N, 4, H, W)``; ``predict`` gives softmax.
    """

    divisor: int = 16
    architecture: str = ""
    # The voxel size (mm, canonical z, y, x) of the cases it was trained on: the shipped weights, 1 mm phantoms as
    # BraTS; a weights file from `train` says its own (models.registry.load_weights).
    training_spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Its training cases' intensities (data.domain.intensity_reference_from), when the weights file keeps them.
    intensity_reference: dict | None = None
    config: dict  # constructor arguments, saved with the weights so the file rebuilds the same network

    def __init__(self) -> None:
        super().__init__()
        self._layer_names: "OrderedDict[str, str]" = OrderedDict()  # readable name → module path

    def _register_layer(self, name: str, module_path: str) -> None:
        self._layer_names[name] = module_path

    def analysable_layers(self) -> "OrderedDict[str, nn.Module]":
        """Readable, stable layer names → modules, from input to output."""
        modules = dict(self.named_modules())
        return OrderedDict((name, modules[path]) for name, path in self._layer_names.items())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        x = x.contiguous(memory_format=torch.channels_last)  # the layout the convolutions are fastest in
        height, width = x.shape[-2:]
        top, bottom, left, right = self.input_padding(height, width)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        logits = self._forward(x)
        return logits[..., top: top + height, left: left + width]

    def input_padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Zero rows/columns ``(top, bottom, left, right)`` that ``forward`` adds to reach a multiple of ``divisor``;
        internal activations cover the padded image, so maps drawn from them are cropped by the same amounts."""
        pad_h, pad_w = (-height) % self.divisor, (-width) % self.divisor
        return pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (softmax over the 4 classes)."""
        return torch.softmax(self(x), dim=1)


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


@contextmanager
def test_time_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block only the dropout modules sample (train mode); BatchNorm and all else stay in eval mode.

    The previous train/eval state of every module is restored on exit, whatever happens inside.
    """
    previous = {module: module.training for module in model.modules()}
    try:
        model.eval()
        for module in dropout_modules(model):
            module.train()
        yield model
    finally:
        for module, training in previous.items():
            module.train(training)


test_time_dropout.__test__ = False  # not a pytest test, despite its name


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model is in eval mode (dropout off, BatchNorm on its running statistics); its previous
    mode comes back on exit, whatever happens inside."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """``device`` when given, else the device the model's parameters are on."""
    return torch.device(device) if device is not None else next(model.parameters()).device


def check_finite(state_dict: dict[str, torch.Tensor], path) -> None:
    """Refuse weights with NaN or infinite values (a weights file, an nnU-Net checkpoint): they segment nothing."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"{path}: parameter {name} holds NaN or infinite values; these weights cannot "
                               "segment anything")
