"""Dense local contrast of IDEAL (Basak, Yin et al., ICASSP 2023), after Chaitanya et al.'s local loss.

Two views of the same images go through the encoder/decoder and a dense 1x1-conv projection head
(:class:`ContrastiveSegLib.networks.heads.DenseProjectionHead`). Locations must correspond between the two
maps: the caller gives maps already aligned (intensity-only views, or the features of a spatially augmented
view resampled back by its known transform), with ``valid`` marking the locations both views really see.

The loss samples the same ``num_samples`` locations per image in both maps. The feature of a location in
one view is the positive of the same location in the other view; every other sampled location of the batch,
in either view, is a negative (in-batch, no queue), except neighbours closer than ``exclusion_radius`` in the
same image, which are ignored (their features are nearly identical through the receptive field; pushing
them apart would fight the smoothness segmentation needs). Both views serve as anchors (2S anchors).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ContrastiveSegLib.losses.contrastive import block_ignore_mask, identity_positive_mask, masked_contrastive_loss
from ContrastiveSegLib.losses.sampling import sample_locations

Negatives = Literal["batch", "image"]


def _check_maps(f1: Tensor, f2: Tensor) -> None:
    for name, f in (("f1", f1), ("f2", f2)):
        if not isinstance(f, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(f).__name__}")
        if f.ndim < 3:
            raise ValueError(f"{name} must have shape (B, C, *spatial), got shape {tuple(f.shape)}")
    if f1.shape != f2.shape:
        raise ValueError(
            f"f1 and f2 must have the same shape (aligned maps), got {tuple(f1.shape)} and {tuple(f2.shape)}"
        )


def neighbour_ignore_mask(image: Tensor, coords: Tensor, radius: float) -> Tensor:
    """Pairs of samples of the same image whose locations are within ``radius`` (in feature-map pixels).

    Args:
        image: (M,) image index of each sample.
        coords: (M, d) float location of each sample.
        radius: distance threshold; <= 0 gives an all-False mask.

    Returns:
        (M, M) bool, diagonal included when radius > 0 (callers remove positives and the diagonal).
    """
    m = image.shape[0]
    if radius <= 0:
        return torch.zeros((m, m), dtype=torch.bool, device=image.device)
    close = torch.cdist(coords, coords) <= radius
    return close & (image[:, None] == image[None, :])


class DenseContrastiveLoss(nn.Module):
    """IDEAL's dense (pixel-level) contrastive loss between two aligned dense projection maps.

    Args:
        temperature: tau (0.1, Chaitanya et al.'s local loss; IDEAL does not publish one).
        num_samples: locations sampled per image (128): memory grows as (2 * B * num_samples)^2.
        negatives: "batch" (every other sampled location of the batch) or "image" (only those of the same
            image, as Chaitanya et al.'s local loss).
        exclusion_radius: same-image neighbours within this distance (feature-map pixels) are removed from the
            denominator (1.5: the 8-neighbourhood in 2D); 0 keeps them as negatives.

    Shapes: f1, f2 (B, C, *spatial), L2-normalised along C (re-normalised after sampling, which is a no-op for
    a :class:`DenseProjectionHead` output); valid optional (B, *spatial) bool. Returns a scalar.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        num_samples: int = 128,
        negatives: Negatives = "batch",
        exclusion_radius: float = 1.5,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if negatives not in ("batch", "image"):
            raise ValueError(f"negatives must be 'batch' or 'image', got {negatives!r}")
        if not exclusion_radius >= 0:
            raise ValueError(f"exclusion_radius must be >= 0, got {exclusion_radius}")
        self.temperature = float(temperature)
        self.num_samples = num_samples
        self.negatives: Negatives = negatives
        self.exclusion_radius = float(exclusion_radius)

    def forward(
        self, f1: Tensor, f2: Tensor, valid: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        _check_maps(f1, f2)
        b, c, *spatial = f1.shape
        if valid is None:
            valid = torch.ones((b, *spatial), dtype=torch.bool, device=f1.device)
        elif tuple(valid.shape) != (b, *spatial):
            raise ValueError(f"valid must have shape {(b, *spatial)} to match f1, got shape {tuple(valid.shape)}")
        image, index = sample_locations(valid.bool(), self.num_samples, generator)
        s = image.shape[0]
        if s == 0:
            return (f1.sum() + f2.sum()) * 0.0  # no valid location anywhere: nothing to contrast
        z1 = F.normalize(f1.flatten(2)[image, :, index], dim=1)  # (S, C)
        z2 = F.normalize(f2.flatten(2)[image, :, index], dim=1)
        z = torch.cat([z1, z2])
        positive = identity_positive_mask(s, 2, z.device)
        images = image.repeat(2)
        ignore = block_ignore_mask(images) if self.negatives == "image" else torch.zeros_like(positive)
        if self.exclusion_radius > 0:
            coords = torch.stack(torch.unravel_index(index, tuple(spatial)), dim=1).to(z.dtype).repeat(2, 1)
            ignore = ignore | neighbour_ignore_mask(images, coords, self.exclusion_radius)
        eye = torch.eye(2 * s, dtype=torch.bool, device=z.device)
        ignore = ignore & ~positive & ~eye
        return masked_contrastive_loss(z, positive, ignore, temperature=self.temperature)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, num_samples={self.num_samples}, negatives={self.negatives!r}, "
            f"exclusion_radius={self.exclusion_radius}"
        )
