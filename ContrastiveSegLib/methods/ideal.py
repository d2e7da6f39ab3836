"""``ideal``: dense local contrast with a 1x1-convolution projection head (IDEAL, Basak et al., ICASSP 2023).

Both views go through the encoder; a feature-pyramid merge of the encoder levels (no decoder: only the encoder
is transferred, :mod:`ContrastiveSegLib.methods.features`) and IDEAL's 1x1-conv head give one unit vector per
location at stride 2. View 2's map is resampled onto view 1's grid by the recorded view transforms
(:func:`~ContrastiveSegLib.data.views.align_to_first`), so the same tissue sits at the same location; the dense
loss pulls those together and pushes other sampled locations away. Shared weights for query and key (no momentum
encoder), in-batch negatives (no queue): docs/methods.md gives the reasons.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor

from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.data.views import align_to_first
from ContrastiveSegLib.losses import DenseContrastiveLoss
from ContrastiveSegLib.methods.base import DEFAULT_FEATURES, DEFAULT_NORM, MethodOutput, PretrainMethod, two_views
from ContrastiveSegLib.methods.features import PyramidFeatures
from ContrastiveSegLib.networks.heads import DenseProjectionHead


class IDEAL(PretrainMethod):
    """Encoder + :class:`PyramidFeatures` + :class:`DenseProjectionHead` + :class:`DenseContrastiveLoss`.

    Args:
        temperature: tau (0.1).
        num_samples: locations per image (128).
        negatives: "batch" or "image".
        exclusion_radius: same-image neighbours ignored within this radius (feature pixels, 1.5).
        levels, pyramid_channels: the dense map (levels 1-4 merged to 64 channels at stride 2).
        projection_channels: head width and embedding size (128).

    Batch: "view1", "view2" (B, C, H, W); "theta1", "theta2" (B, 2, 3). Loss: scalar; terms: "dense",
    "overlap" (fraction of view-1 locations also seen by view 2).
    """

    name = "ideal"
    description = "dense local contrast at corresponding locations, 1x1-conv head (IDEAL, Basak et al. 2023)"
    required_keys = ("view1", "view2", "theta1", "theta2")

    def __init__(self, spec: InputSpec = InputSpec(), features: tuple[int, ...] = DEFAULT_FEATURES,
                 norm: str = DEFAULT_NORM, temperature: float = 0.1, num_samples: int = 128, negatives: str = "batch",
                 exclusion_radius: float = 1.5, levels: Sequence[int] = (1, 2, 3, 4), pyramid_channels: int = 64,
                 projection_channels: int = 128):
        super().__init__(spec, features, norm)
        self.pyramid = PyramidFeatures(self.features, tuple(levels), pyramid_channels)
        self.head = DenseProjectionHead(pyramid_channels, projection_channels, projection_channels)
        self.loss = DenseContrastiveLoss(temperature, int(num_samples), negatives, exclusion_radius)
        self.params = {"temperature": float(temperature), "num_samples": int(num_samples), "negatives": negatives,
                       "exclusion_radius": float(exclusion_radius), "levels": list(self.pyramid.levels),
                       "pyramid_channels": pyramid_channels, "projection_channels": projection_channels}

    def compute(self, batch: Mapping[str, Tensor]) -> MethodOutput:
        n = batch["view1"].shape[0]
        f = self.head(self.pyramid(self.encoder(two_views(batch))))
        aligned, valid = align_to_first(f[n:], batch["theta1"], batch["theta2"])
        loss = self.loss(f[:n].float(), aligned, valid)
        return MethodOutput(loss, {"dense": loss.detach(), "overlap": valid.float().mean()})
