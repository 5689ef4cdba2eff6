"""DenseUnet (paper §2, after Shaikh et al. 2017): a U-Net whose encoder is DenseNet-121.

Encoder, as DenseNet-121 with every channel count scaled by ``width`` (paper width ``width=1.0``: growth 32, stem 64):

* stem: 7×7 conv stride 2 → BN → ReLU (1/2 resolution), 3×3 max-pool stride 2 (1/4);
* dense blocks of 6, 12, 24, 16 layers (each layer BN → ReLU → 1×1 conv to 4·growth → BN → ReLU → 3×3 conv to
  growth, concatenated to its input), with transitions (BN → ReLU → 1×1 conv halving channels → 2×2 avg-pool)
  between them: blocks at 1/4, 1/8, 1/16, 1/32; then BN → ReLU.

Decoder: four levels of bilinear ×2 upsampling, concatenation with the encoder feature of that resolution (dense
blocks 3, 2, 1 and the stem) and a pre-activation conv block (as the ResUnet's, without residual), then one more ×2
upsampling and block to full resolution (decoder channels 256, 128, 64, 32, 16 scaled by ``width``, never below 16),
and a 1×1 conv head to 4 classes. Dropout (p=0.2, element-wise) follows every dense block, transition and decoder
block.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import IN_CHANNELS, NUM_CLASSES, SegmentationNet
from .unet import ConvBlock

DENSENET121_BLOCKS = (6, 12, 24, 16)


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, bottleneck, 1, bias=False),
            nn.BatchNorm2d(bottleneck), nn.ReLU(inplace=False),
            nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layers(x)], dim=1)


class DenseBlock(nn.Sequential):
    def __init__(self, layers: int, in_channels: int, growth: int, dropout: float) -> None:
        modules = [DenseLayer(in_channels + i * growth, growth, 4 * growth) for i in range(layers)]
        super().__init__(*modules, nn.Dropout(dropout))
        self.out_channels = in_channels + layers * growth


class Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=False), nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2), nn.Dropout(dropout),
        )


class DenseUnet(SegmentationNet):
    architecture = "denseunet"
    divisor = 32

    def __init__(self, width: float = 1.0, dropout: float = 0.2, blocks: tuple[int, ...] = DENSENET121_BLOCKS) -> None:
        super().__init__()
        self.width = width
        self.config = {"width": width, "dropout": dropout, "blocks": list(blocks)}
        growth = max(2, int(round(32 * width)))
        stem_channels = max(4, int(round(64 * width)))
        self.stem = nn.Sequential(
            nn.Conv2d(IN_CHANNELS, stem_channels, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=False),
        )
        self.dense_blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        channels = stem_channels
        encoder_channels = [stem_channels]
        for index, layers in enumerate(blocks):
            block = DenseBlock(layers, channels, growth, dropout)
            self.dense_blocks.append(block)
            channels = block.out_channels
            encoder_channels.append(channels)
            if index < len(blocks) - 1:
                self.transitions.append(Transition(channels, channels // 2, dropout))
                channels //= 2
        self.encoder_norm = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=False))
        # Skips, deepest first: dense blocks 3, 2, 1, then the stem.
        skip_channels = encoder_channels[-2::-1]
        # Never thinner than 16: a 4-channel full-resolution block (width 0.25) fell into a dead-ReLU state inside
        # the tumour core, where it then emitted only the head's bias.
        decoder_channels = [max(16, int(round(c * width))) for c in (256, 128, 64, 32, 16)]
        self.decoders = nn.ModuleList()
        for skip, out in zip(skip_channels + [0], decoder_channels):
            self.decoders.append(ConvBlock(channels + skip, out, residual=False, dropout=dropout))
            channels = out
        self.head = nn.Conv2d(channels, NUM_CLASSES, 1)

        self._register_layer("stem", "stem")
        for index in range(len(blocks)):
            self._register_layer(f"dense{index + 1}", f"dense_blocks.{index}")
            if index < len(blocks) - 1:
                self._register_layer(f"trans{index + 1}", f"transitions.{index}")
        for index in range(len(self.decoders)):
            self._register_layer(f"dec{len(self.decoders) - 1 - index}", f"decoders.{index}")
        self._register_layer("head", "head")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        stem = self.stem(x)
        features = [stem]
        x = F.max_pool2d(stem, 3, stride=2, padding=1)
        for index, block in enumerate(self.dense_blocks):
            x = block(x)
            if index < len(self.transitions):
                features.append(x)
                x = self.transitions[index](x)
        x = self.encoder_norm(x)
        skips = features[::-1]  # dense3, dense2, dense1, stem
        for index, decoder in enumerate(self.decoders):
            target = skips[index].shape[-2:] if index < len(skips) else size
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
            x = decoder(torch.cat([x, skips[index]], dim=1) if index < len(skips) else x)
        return self.head(x)
