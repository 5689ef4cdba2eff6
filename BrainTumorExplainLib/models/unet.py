"""ResUnet and SimUnet (paper §2: a U-Net with a ResNet-style encoder, and the same network without skip or
residual connections).

Architecture (``width`` scales every channel count; paper width ``width=1.0`` gives base 64 channels):

* stem: 3×3 conv 4 → c;
* encoder: ``depth`` levels, each a *pre-activation residual block* (BN → ReLU → 3×3 conv, twice, + identity or
  1×1-conv shortcut) then 2×2 max-pool; channels c, 2c, 4c, 8c;
* bottleneck: residual block at 16c (1/16 resolution for depth 4);
* decoder: per level, bilinear ×2 upsampling, concatenation with the encoder output of that level (skip), residual
  block back to that level's channels;
* head: BN → ReLU → 1×1 conv to 4 classes.

Dropout (p=0.2, element-wise, as in Kendall et al.'s Bayesian SegNet that the paper's uncertainty follows)
follows every block. SimUnet drops both the skip concatenations and the residual additions, keeping
every other layer identical, so differences between the two isolate what those connections do.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import IN_CHANNELS, NUM_CLASSES, SegmentationNet


class ConvBlock(nn.Module):
    """Pre-activation block: (BN → ReLU → 3×3 conv) × 2, plus a shortcut when ``residual``; then dropout."""

    def __init__(self, in_channels: int, out_channels: int, residual: bool, dropout: float) -> None:
        super().__init__()
        self.residual = residual
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=False),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        )
        self.shortcut = (nn.Identity() if in_channels == out_channels
                         else nn.Conv2d(in_channels, out_channels, 1, bias=False)) if residual else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.dropout(out)


class ResUnet(SegmentationNet):
    architecture = "resunet"

    def __init__(self, width: float = 1.0, depth: int = 4, dropout: float = 0.2, residual: bool = True,
                 skips: bool = True) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.config = {"width": width, "depth": depth, "dropout": dropout}
        self.width, self.depth, self.skips = width, depth, skips
        self.divisor = 2 ** depth
        base = max(4, int(round(64 * width)))
        channels = [base * 2 ** level for level in range(depth + 1)]
        self.stem = nn.Conv2d(IN_CHANNELS, base, 3, padding=1, bias=False)
        self.encoders = nn.ModuleList(
            ConvBlock(channels[max(level - 1, 0)], channels[level], residual, dropout) for level in range(depth)
        )
        self.bottleneck = ConvBlock(channels[depth - 1], channels[depth], residual, dropout)
        self.decoders = nn.ModuleList(
            ConvBlock(channels[level + 1] + (channels[level] if skips else 0), channels[level], residual, dropout)
            for level in reversed(range(depth))
        )
        self.head = nn.Sequential(nn.BatchNorm2d(base), nn.ReLU(inplace=False), nn.Conv2d(base, NUM_CLASSES, 1))
        for level in range(depth):
            self._register_layer(f"enc{level + 1}", f"encoders.{level}")
        self._register_layer("bottleneck", "bottleneck")
        for index, level in enumerate(reversed(range(depth))):
            self._register_layer(f"dec{level + 1}", f"decoders.{index}")
        self._register_layer("head", "head")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = decoder(torch.cat([x, skip], dim=1) if self.skips else x)
        return self.head(x)


class SimUnet(ResUnet):
    """ResUnet without skip concatenations and without residual additions."""

    architecture = "simunet"

    def __init__(self, width: float = 1.0, depth: int = 4, dropout: float = 0.2) -> None:
        super().__init__(width=width, depth=depth, dropout=dropout, residual=False, skips=False)
        self.config = {"width": width, "depth": depth, "dropout": dropout}
