"""MixCL's label consistency (Li, Quan, Zhou, 2022): pixels with the same label get consistent embeddings.

Supervised contrast (SupCon form, Khosla et al. 2020) over pixel embeddings, using whatever pixel labels
exist: in this product, the few slices the clinician annotated. Pixels are sampled per class, the same number
for every class present in the batch (balanced), so the background, which covers most of an annotated slice,
does not drown the structures. Label 255 (:data:`ContrastiveSegLib.io.annotations.IGNORE`) marks unlabelled
pixels, which are never sampled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ContrastiveSegLib.losses.contrastive import label_positive_mask, masked_contrastive_loss
from ContrastiveSegLib.losses.region import resize_ids
from ContrastiveSegLib.losses.sampling import sample_per_group

IGNORE_INDEX = 255  # the value of ContrastiveSegLib.io.annotations.IGNORE; kept here to keep losses torch-only


def sample_labelled_pixels(
    labels: Tensor, pixels_per_class: int, ignore_index: int = IGNORE_INDEX, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Up to ``pixels_per_class`` random labelled pixels of every class over the whole batch.

    Args:
        labels: (B, *spatial) integer labels; ``ignore_index`` and negative values are unlabelled.
        pixels_per_class: the most pixels kept per class.
        ignore_index: the unlabelled value (255).
        generator: optional random generator.

    Returns:
        ``(image, flat_index, cls)``: (S,) int64 tensors, the image, the flattened spatial index and the class
        of every sampled pixel.
    """
    flat = labels.reshape(labels.shape[0], -1).long()
    labelled = (flat != ignore_index) & (flat >= 0)
    image, index = torch.nonzero(labelled, as_tuple=True)
    cls = flat[image, index]
    keep = sample_per_group(cls, pixels_per_class, generator)
    return image[keep], index[keep], cls[keep]


class LabelConsistencyLoss(nn.Module):
    """MixCL label consistency: SupCon over class-balanced samples of labelled pixel embeddings.

    Args:
        temperature: tau (0.1; the paper does not publish one).
        pixels_per_class: pixels sampled per class over the batch (64): memory grows as (classes * 64)^2.
        ignore_index: the unlabelled label value (255).

    Shapes: features (B, C, *spatial) dense embeddings (L2-normalised here); labels (B, *spatial_labels)
    integer, resized nearest-neighbour to the feature map when their size differs. Pass both views stacked
    along B (labels moved with each view) to make the two views' pixels positives of each other. Returns a
    scalar; 0 (attached to the graph) when no class has two labelled pixels.
    """

    def __init__(self, temperature: float = 0.1, pixels_per_class: int = 64, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not isinstance(pixels_per_class, int) or isinstance(pixels_per_class, bool) or pixels_per_class < 2:
            raise ValueError(
                f"pixels_per_class must be an integer >= 2 (a pixel needs a positive), got {pixels_per_class!r}"
            )
        self.temperature = float(temperature)
        self.pixels_per_class = pixels_per_class
        self.ignore_index = int(ignore_index)

    def forward(self, features: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not isinstance(features, Tensor) or features.ndim < 3:
            got = getattr(features, "shape", type(features))
            raise ValueError(f"features must be a (B, C, *spatial) tensor, got {got}")
        b, _, *spatial = features.shape
        if not isinstance(labels, Tensor) or labels.ndim != features.ndim - 1 or labels.shape[0] != b:
            raise ValueError(
                f"labels must have shape (B={b}, *spatial) with {features.ndim - 2} spatial dims, "
                f"got {getattr(labels, 'shape', type(labels))}"
            )
        if labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        labels = resize_ids(labels, tuple(spatial))
        image, index, cls = sample_labelled_pixels(labels, self.pixels_per_class, self.ignore_index, generator)
        if image.shape[0] < 2:
            return features.sum() * 0.0
        z = F.normalize(features.flatten(2)[image, :, index], dim=1)
        return masked_contrastive_loss(z, label_positive_mask(cls), temperature=self.temperature)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, pixels_per_class={self.pixels_per_class}, "
            f"ignore_index={self.ignore_index}"
        )
