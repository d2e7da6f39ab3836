"""``mixcl``: identity, label and reconstruction consistency at once (MixCL, Li, Quan, Zhou 2022).

1. identity: SimCLR's instance contrast of the two views on the bottleneck;
2. label: supervised contrast over class-balanced samples of labelled pixel embeddings of both views (labels
   moved with each view), using whatever pixel labels exist: for ``segment --adapt mixcl`` the clinician's
   annotated slices; 255 = unlabelled. Without any label the term is an exact 0 (still attached to the graph);
3. reconstruction: a light decoder rebuilds each view's clean image (same warp, no intensity change or noise)
   from the view's encoder features, L1 over the pixels that lie inside the crop.
The dense map for 2. and the decoder's input is the feature-pyramid merge of the encoder levels
(:mod:`ContrastiveSegLib.methods.features`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.losses import LabelConsistencyLoss, ReconstructionLoss, nt_xent_loss
from ContrastiveSegLib.methods.base import DEFAULT_FEATURES, DEFAULT_NORM, MethodOutput, PretrainMethod, two_views
from ContrastiveSegLib.methods.features import PyramidFeatures
from ContrastiveSegLib.networks.heads import DenseProjectionHead, GlobalProjectionHead


class LightDecoder(nn.Module):
    """3x3 conv -> LeakyReLU -> bilinear upsampling by ``stride`` -> 3x3 conv -> LeakyReLU -> 1x1 conv.

    Deliberately small: it is thrown away after pretraining, and a strong decoder would let the encoder off the
    hook. Shapes: (B, in_channels, h, w) -> (B, out_channels, h * stride, w * stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.LeakyReLU(0.01),
            nn.Upsample(scale_factor=stride, mode="bilinear", align_corners=False) if stride > 1 else nn.Identity(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.01),
            nn.Conv2d(channels, out_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MixCL(PretrainMethod):
    """Encoder + global head + pyramid with a dense head (label term) and a light decoder (reconstruction).

    Args:
        identity_weight, label_weight, reconstruction_weight: the three weights (1 / 1 / 1; the paper gives none).
        temperature: tau of the identity term (0.1).
        label_temperature: tau of the label term (0.1).
        pixels_per_class: labelled pixels sampled per class over the batch (64).
        reconstruction: "l1", "l2" or "smooth_l1".
        levels, pyramid_channels, projection_channels, decoder_channels: the dense map, head and decoder widths.
        hidden_channels, out_channels: the global head.

    Batch: "view{v}" (B, C, H, W), "clean{v}" (B, image_channels, H, W), "valid{v}" (B, H, W) bool,
    "labels{v}" (B, H, W) int64 (255 = unlabelled) for v = 1, 2. Loss: scalar; terms: "identity", "label",
    "reconstruction".
    """

    name = "mixcl"
    description = ("identity + label consistency (any annotated pixels) + reconstruction of the clean image "
                   "(MixCL, Li et al. 2022)")
    required_keys = ("view1", "view2", "clean1", "clean2", "valid1", "valid2", "labels1", "labels2")

    def __init__(self, spec: InputSpec = InputSpec(), features: tuple[int, ...] = DEFAULT_FEATURES,
                 norm: str = DEFAULT_NORM, identity_weight: float = 1.0, label_weight: float = 1.0,
                 reconstruction_weight: float = 1.0,
                 temperature: float = 0.1, label_temperature: float = 0.1, pixels_per_class: int = 64,
                 reconstruction: str = "l1", levels: Sequence[int] = (1, 2, 3, 4), pyramid_channels: int = 64,
                 projection_channels: int = 128, decoder_channels: int = 32, hidden_channels: int = 256,
                 out_channels: int = 128):
        super().__init__(spec, features, norm)
        weights = {"identity": identity_weight, "label": label_weight, "reconstruction": reconstruction_weight}
        for key, value in weights.items():
            if not value >= 0:
                raise ValueError(f"{key}_weight must be >= 0, got {value}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.weights = {k: float(v) for k, v in weights.items()}
        self.temperature = float(temperature)
        self.global_head = GlobalProjectionHead(self.features[-1], hidden_channels, out_channels)
        self.pyramid = PyramidFeatures(self.features, tuple(levels), pyramid_channels)
        self.dense_head = DenseProjectionHead(pyramid_channels, projection_channels, projection_channels)
        self.decoder = LightDecoder(pyramid_channels, self.image_channels, self.pyramid.stride, decoder_channels)
        self.label_loss = LabelConsistencyLoss(label_temperature, int(pixels_per_class))
        self.reconstruction_loss = ReconstructionLoss(reconstruction)
        self.params = {**{f"{k}_weight": v for k, v in self.weights.items()}, "temperature": self.temperature,
                       "label_temperature": float(label_temperature), "pixels_per_class": int(pixels_per_class),
                       "reconstruction": reconstruction, "levels": list(self.pyramid.levels),
                       "pyramid_channels": pyramid_channels, "projection_channels": projection_channels,
                       "decoder_channels": decoder_channels, "hidden_channels": hidden_channels,
                       "out_channels": out_channels}

    def compute(self, batch: Mapping[str, Tensor]) -> MethodOutput:
        n = batch["view1"].shape[0]
        maps = self.encoder(two_views(batch))
        z = self.global_head(maps[-1])
        identity = nt_xent_loss(z[:n], z[n:], self.temperature)
        merged = self.pyramid(maps)
        labels = torch.cat([batch["labels1"], batch["labels2"]]).long()
        label = self.label_loss(self.dense_head(merged), labels)
        reconstruction = self.decoder(merged).float()
        target = torch.cat([batch["clean1"], batch["clean2"]]).float()
        mask = torch.cat([batch["valid1"], batch["valid2"]])[:, None]
        rebuilt = self.reconstruction_loss(reconstruction, target, mask)
        w = self.weights
        loss = w["identity"] * identity + w["label"] * label + w["reconstruction"] * rebuilt
        return MethodOutput(loss, {"identity": identity.detach(), "label": label.detach(),
                                   "reconstruction": rebuilt.detach()})
