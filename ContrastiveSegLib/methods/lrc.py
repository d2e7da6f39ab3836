"""``lrc``: localized region contrast on Felzenszwalb superpixels, on top of a global loss (Yan et al., MICCAI 2023).

LRC is a plug-in: a global instance loss (here SimCLR's, the paper uses MoCo) plus a region term. Superpixels are
computed once per volume and cached (:mod:`ContrastiveSegLib.data.superpixels`), cropped with the slice and moved
through each view's affine by nearest-neighbour sampling (:mod:`ContrastiveSegLib.data.views`), so the same id in
the two views is the same tissue. The dense map (feature pyramid + 1x1-conv head) is mean-pooled per superpixel;
the same superpixel in the two views is a positive, the other sampled superpixels of the batch are negatives.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor

from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.losses import RegionContrastiveLoss, nt_xent_loss
from ContrastiveSegLib.methods.base import DEFAULT_FEATURES, DEFAULT_NORM, MethodOutput, PretrainMethod, two_views
from ContrastiveSegLib.methods.features import PyramidFeatures
from ContrastiveSegLib.networks.heads import DenseProjectionHead, GlobalProjectionHead


class LRC(PretrainMethod):
    """Encoder + global head (NT-Xent) + pyramid + dense head pooled per superpixel (region contrast).

    Args:
        temperature: tau of the global loss (0.1).
        region_weight: weight of the region term against the global one (1.0).
        region_temperature: tau of the region loss (0.1).
        regions_per_image: superpixels sampled per image (32).
        min_pixels: a superpixel must cover this many feature pixels in both views (1).
        negatives: "batch" or "image".
        levels, pyramid_channels, projection_channels: the dense map and its head.
        hidden_channels, out_channels: the global head.

    Batch: "view1", "view2" (B, C, H, W); "superpixels1", "superpixels2" (B, H, W) int64 (-1 outside). Loss:
    scalar; terms: "identity", "region".
    """

    name = "lrc"
    description = "global contrast + region contrast on cached Felzenszwalb superpixels (LRC, Yan et al. 2023)"
    required_keys = ("view1", "view2", "superpixels1", "superpixels2")

    def __init__(self, spec: InputSpec = InputSpec(), features: tuple[int, ...] = DEFAULT_FEATURES,
                 norm: str = DEFAULT_NORM, temperature: float = 0.1, region_weight: float = 1.0,
                 region_temperature: float = 0.1, regions_per_image: int = 32, min_pixels: int = 1,
                 negatives: str = "batch", levels: Sequence[int] = (1, 2, 3, 4), pyramid_channels: int = 64,
                 projection_channels: int = 128, hidden_channels: int = 256, out_channels: int = 128):
        super().__init__(spec, features, norm)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not region_weight >= 0:
            raise ValueError(f"region_weight must be >= 0, got {region_weight}")
        self.temperature = float(temperature)
        self.region_weight = float(region_weight)
        self.global_head = GlobalProjectionHead(self.features[-1], hidden_channels, out_channels)
        self.pyramid = PyramidFeatures(self.features, tuple(levels), pyramid_channels)
        self.dense_head = DenseProjectionHead(pyramid_channels, projection_channels, projection_channels)
        self.region_loss = RegionContrastiveLoss(region_temperature, int(regions_per_image), int(min_pixels),
                                                 negatives)
        self.params = {"temperature": self.temperature, "region_weight": self.region_weight,
                       "region_temperature": float(region_temperature), "regions_per_image": int(regions_per_image),
                       "min_pixels": int(min_pixels), "negatives": negatives, "levels": list(self.pyramid.levels),
                       "pyramid_channels": pyramid_channels, "projection_channels": projection_channels,
                       "hidden_channels": hidden_channels, "out_channels": out_channels}

    def compute(self, batch: Mapping[str, Tensor]) -> MethodOutput:
        n = batch["view1"].shape[0]
        maps = self.encoder(two_views(batch))
        z = self.global_head(maps[-1])
        identity = nt_xent_loss(z[:n], z[n:], self.temperature)
        f = self.dense_head(self.pyramid(maps))
        region = self.region_loss(f[:n], f[n:], batch["superpixels1"], batch["superpixels2"])
        loss = identity + self.region_weight * region
        return MethodOutput(loss, {"identity": identity.detach(), "region": region.detach()})
