"""Localized region contrast of LRC (Yan et al., MICCAI 2023): contrast superpixel features between views.

Each image carries a superpixel id map (:mod:`ContrastiveSegLib.data.superpixels`) that moved with it through
the spatial augmentation (nearest-neighbour), so the two views hold the same ids at corresponding tissue. The
dense features of each view are mean-pooled per superpixel; a superpixel's feature in one view is the positive
of the same superpixel in the other view, and every other sampled superpixel of the batch is a negative.
A fixed number of superpixels seen in both views is sampled per image. Ids < 0 (outside the body) are ignored.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ContrastiveSegLib.losses.contrastive import block_ignore_mask, identity_positive_mask, masked_contrastive_loss
from ContrastiveSegLib.losses.sampling import sample_per_group


class PooledRegions(NamedTuple):
    """Region features from :func:`pool_regions`: features (R, C) mean of member pixels, image (R,) and
    region (R,) the image index and superpixel id, count (R,) member pixels; sorted by (image, region)."""

    features: Tensor
    image: Tensor
    region: Tensor
    count: Tensor


def resize_ids(ids: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """Nearest-neighbour resize of an integer id map (B, *s) to (B, *spatial) (ids are labels, never
    interpolated). float64 keeps ids up to 2**53 exact."""
    if tuple(ids.shape[1:]) == tuple(spatial):
        return ids
    resized = F.interpolate(ids[:, None].to(torch.float64), size=tuple(spatial), mode="nearest-exact")
    return resized[:, 0].round().to(ids.dtype)


def pool_regions(features: Tensor, ids: Tensor) -> PooledRegions:
    """Mean of the features of each region of each image.

    Args:
        features: (B, C, *spatial) dense features.
        ids: (B, *spatial) integer region ids; ids < 0 are outside every region. Ids need only be unique
            within an image (the same id in two images is two regions).

    Returns:
        :class:`PooledRegions` with R = number of (image, id) pairs present.
    """
    if features.ndim < 3:
        raise ValueError(f"features must have shape (B, C, *spatial), got shape {tuple(features.shape)}")
    b, c, *spatial = features.shape
    if tuple(ids.shape) != (b, *spatial):
        raise ValueError(f"ids must have shape {(b, *spatial)} to match features, got shape {tuple(ids.shape)}")
    if ids.is_floating_point():
        raise ValueError(f"ids must be an integer tensor, got dtype {ids.dtype}")
    flat_ids = ids.reshape(b, -1).long()
    inside = flat_ids >= 0
    span = max(int(flat_ids.max()) + 1, 1) if flat_ids.numel() else 1
    image_of = torch.arange(b, device=ids.device)[:, None].expand_as(flat_ids)
    keys = (image_of * span + flat_ids)[inside]  # one key per (image, id)
    unique_keys, inverse, count = torch.unique(keys, return_inverse=True, return_counts=True)
    feats = features.flatten(2).transpose(1, 2)[inside]  # (P, C) member pixels
    sums = torch.zeros((unique_keys.shape[0], c), dtype=feats.dtype, device=feats.device).index_add_(0, inverse, feats)
    means = sums / count[:, None].to(feats.dtype)
    return PooledRegions(means, unique_keys // span, unique_keys % span, count)


Negatives = Literal["batch", "image"]


class RegionContrastiveLoss(nn.Module):
    """LRC's contrastive sampling loss over superpixel features of two views (Yan et al., MICCAI 2023).

    Args:
        temperature: tau (0.1; the paper does not publish one).
        regions_per_image: superpixels sampled per image among those seen in both views (32).
        min_pixels: a superpixel must cover at least this many feature-map pixels in each view (1).
        negatives: "batch" (every other sampled region of the batch) or "image" (same image only).

    Shapes: f1, f2 (B, C, *spatial) dense features (projection-head outputs; pooled features are
    L2-normalised here); ids1, ids2 (B, *spatial_ids) integer superpixel ids of each view, resized
    nearest-neighbour to the feature map when their size differs. Returns a scalar (0, attached to the graph,
    when no region is shared by the two views).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        regions_per_image: int = 32,
        min_pixels: int = 1,
        negatives: Negatives = "batch",
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for name, value in (("regions_per_image", regions_per_image), ("min_pixels", min_pixels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if negatives not in ("batch", "image"):
            raise ValueError(f"negatives must be 'batch' or 'image', got {negatives!r}")
        self.temperature = float(temperature)
        self.regions_per_image = regions_per_image
        self.min_pixels = min_pixels
        self.negatives: Negatives = negatives

    def forward(
        self, f1: Tensor, f2: Tensor, ids1: Tensor, ids2: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        for name, f in (("f1", f1), ("f2", f2)):
            if not isinstance(f, Tensor) or f.ndim < 3:
                raise ValueError(f"{name} must be a (B, C, *spatial) tensor, got {getattr(f, 'shape', type(f))}")
        if f1.shape != f2.shape:
            raise ValueError(f"f1 and f2 must have the same shape, got {tuple(f1.shape)} and {tuple(f2.shape)}")
        b, _, *spatial = f1.shape
        for name, ids in (("ids1", ids1), ("ids2", ids2)):
            if not isinstance(ids, Tensor) or ids.ndim != f1.ndim - 1 or ids.shape[0] != b:
                raise ValueError(
                    f"{name} must have shape (B={b}, *spatial) with {f1.ndim - 2} spatial dims, "
                    f"got {getattr(ids, 'shape', type(ids))}"
                )
        p1 = pool_regions(f1, resize_ids(ids1, tuple(spatial)))
        p2 = pool_regions(f2, resize_ids(ids2, tuple(spatial)))
        # Regions present (with enough pixels) in both views; keys are sorted, so searchsorted matches them.
        if p1.region.numel() == 0 or p2.region.numel() == 0:
            return (f1.sum() + f2.sum()) * 0.0
        span = int(torch.maximum(p1.region.max(), p2.region.max())) + 1
        k1 = p1.image * span + p1.region
        k2 = p2.image * span + p2.region
        pos = torch.searchsorted(k2, k1).clamp(max=k2.shape[0] - 1)
        shared = (k2[pos] == k1) & (p1.count >= self.min_pixels) & (p2.count[pos] >= self.min_pixels)
        idx1 = torch.nonzero(shared).squeeze(1)
        keep = sample_per_group(p1.image[idx1], self.regions_per_image, generator)
        idx1 = idx1[keep]
        idx2 = pos[idx1]
        s = idx1.shape[0]
        if s == 0:
            return (f1.sum() + f2.sum()) * 0.0
        z = torch.cat([F.normalize(p1.features[idx1], dim=1), F.normalize(p2.features[idx2], dim=1)])
        positive = identity_positive_mask(s, 2, z.device)
        ignore = block_ignore_mask(p1.image[idx1].repeat(2)) if self.negatives == "image" else None
        return masked_contrastive_loss(z, positive, ignore, temperature=self.temperature)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, regions_per_image={self.regions_per_image}, "
            f"min_pixels={self.min_pixels}, negatives={self.negatives!r}"
        )
