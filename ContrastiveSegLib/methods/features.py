"""A decoder-free dense feature map for the dense, region and pixel losses.

Fine-tuning loads the encoder only (the decoder is trained from scratch on the annotated slices), so a local loss
must shape the *encoder*. Chaitanya et al.'s and IDEAL's local losses sit on decoder blocks; here a light
feature-pyramid merge (FPN-style lateral 1x1 convolutions, bilinear upsampling, sum; Lin et al. 2017) turns the
encoder's levels into one dense map at stride 2 without a decoder that would be thrown away. Every chosen level,
the bottleneck included, receives the local gradient.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PyramidFeatures(nn.Module):
    """Merge encoder levels into one dense map.

    Args:
        features: the encoder widths (5 levels; level ``i`` has stride ``2**i``).
        levels: which levels to merge (default 1-4: stride 2 is fine enough for 16-pixel-scale tissue and keeps the
            map 4x smaller than full resolution).
        channels: width of the merged map.

    Shapes: a list of 5 maps from :class:`~ContrastiveSegLib.networks.unet.Encoder` -> (B, channels, H / 2**min,
    W / 2**min) where min = min(levels).
    """

    def __init__(self, features: tuple[int, ...], levels: tuple[int, ...] = (1, 2, 3, 4), channels: int = 64):
        super().__init__()
        levels = tuple(sorted(set(int(level) for level in levels)))
        if not levels or levels[0] < 0 or levels[-1] >= len(features):
            raise ValueError(f"levels must be a non-empty subset of 0..{len(features) - 1}, got {levels}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.levels = levels
        self.out_channels = channels
        self.lateral = nn.ModuleList(nn.Conv2d(features[level], channels, kernel_size=1) for level in levels)

    @property
    def stride(self) -> int:
        return 2 ** self.levels[0]

    def forward(self, maps: list[Tensor]) -> Tensor:
        target = maps[self.levels[0]].shape[2:]
        out = None
        for conv, level in zip(self.lateral, self.levels):
            x = conv(maps[level])
            if x.shape[2:] != target:
                x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        return out
