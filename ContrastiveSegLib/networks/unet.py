"""A 2D U-Net made of MONAI's BasicUNet blocks, split into an :class:`Encoder` (what pretraining trains and what
fine-tuning loads) and a :class:`Decoder` (trained from scratch on the annotated slices).

The split follows the pretrain-then-fine-tune recipe shared by the four papers the library implements (Chaitanya
et al. 2020; Peng et al. 2021; Basak et al. 2023; Yan et al. 2023): the contrastive losses attach to encoder
features, the decoder is task-specific.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

_ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
# Batch norm by default: at inference it folds into an affine map, which makes whole-volume prediction on a CPU
# 2-4x faster than instance norm (benchmarks/results/); the training crops are all from one scan, so batch
# statistics match what prediction sees.
NORMS = {"batch": ("batch", {}), "instance": ("instance", {"affine": True})}


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild the network from a weights file.

    Attributes:
        in_channels: input channels (2.5D context slices plus coordinate channels).
        num_classes: output classes, background included.
        features: encoder widths, one per resolution level; level ``i`` has stride ``2**i``.
        decoder_features: width of the last decoder level (full resolution).
        norm: "batch" or "instance".
        decoders: 1, or 2 for IDEAL's bidirectional consistency (two decoders on the shared encoder that supervise
            each other on unannotated slices; prediction averages their logits).
    """

    in_channels: int
    num_classes: int
    features: tuple[int, ...] = (8, 16, 32, 64, 128)
    decoder_features: int = 8
    norm: str = "batch"
    spatial_dims: int = field(default=2)
    decoders: int = 1

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.num_classes < 2:
            raise ValueError(f"need in_channels >= 1 and num_classes >= 2, got {self.in_channels}, {self.num_classes}")
        if len(self.features) != 5:
            raise ValueError(f"features must list 5 widths (4 down-sampling steps), got {self.features}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {self.norm!r}")
        if self.decoders not in (1, 2):
            raise ValueError(f"decoders must be 1 or 2, got {self.decoders}")

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.features) - 1)


class Encoder(nn.Module):
    """Five-level convolutional encoder.

    Input (B, in_channels, H, W) with H, W multiples of 16; output a list of 5 feature maps, map ``i`` of shape
    (B, features[i], H / 2**i, W / 2**i). The last map is the bottleneck, where global contrastive heads attach.
    """

    def __init__(self, in_channels: int, features: tuple[int, ...] = (8, 16, 32, 64, 128), spatial_dims: int = 2,
                 norm: str = "batch"):
        super().__init__()
        self.in_channels = in_channels
        self.features = tuple(features)
        self.stem = TwoConv(spatial_dims, in_channels, features[0], _ACT, NORMS[norm], True)
        self.downs = nn.ModuleList(
            Down(spatial_dims, features[i], features[i + 1], _ACT, NORMS[norm], True) for i in range(len(features) - 1)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = [self.stem(x)]
        for down in self.downs:
            maps.append(down(maps[-1]))
        return maps


class Decoder(nn.Module):
    """U-Net decoder: upsample, concatenate the encoder's skip map, two convolutions; then 1x1 to class logits.

    Input the encoder's list of maps; output logits (B, num_classes, H, W).
    """

    def __init__(self, features: tuple[int, ...], num_classes: int, decoder_features: int = 8, spatial_dims: int = 2,
                 norm: str = "batch"):
        super().__init__()
        widths = list(features[:-1])[::-1]  # skip widths from deep to shallow
        ups = []
        in_width = features[-1]
        for level, skip_width in enumerate(widths):
            last = level == len(widths) - 1
            out_width = decoder_features if last else skip_width
            # halves=False on the last level mirrors BasicUNet: the upsampled map keeps its width there.
            # is_pad=False: inputs are multiples of the divisor (SegmentationNet checks), so the upsampled map always
            # matches its skip; MONAI's pad would copy every decoder map for nothing (0.15 of a CT prediction).
            ups.append(UpCat(spatial_dims, in_width, skip_width, out_width, _ACT, NORMS[norm], True, 0.0, "deconv",
                             halves=not last, is_pad=False))
            in_width = out_width
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(decoder_features, num_classes, kernel_size=1) if spatial_dims == 2 else \
            nn.Conv3d(decoder_features, num_classes, kernel_size=1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = maps[-1]
        for up, skip in zip(self.ups, reversed(maps[:-1])):
            x = up(x, skip)
        return self.head(x)


class SegmentationNet(nn.Module):
    """Encoder + decoder(s). ``forward`` maps (B, in_channels, H, W) to logits (B, num_classes, H, W); with two
    decoders it returns the mean of their logits."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.in_channels, config.features, config.spatial_dims, config.norm)
        self.decoder = Decoder(config.features, config.num_classes, config.decoder_features, config.spatial_dims,
                               config.norm)
        self.decoder2 = Decoder(config.features, config.num_classes, config.decoder_features, config.spatial_dims,
                                config.norm) if config.decoders == 2 else None

    def check_size(self, x: torch.Tensor) -> None:
        """ValueError unless the input's height and width are multiples of the config's divisor (what the decoder's
        skip connections need; the samplers and the prediction pad to it)."""
        divisor = self.config.divisor
        if any(size % divisor for size in x.shape[2:]):
            raise ValueError(f"input height and width must be multiples of {divisor}, got {tuple(x.shape[2:])}")

    def forward_decoders(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One logits tensor (B, num_classes, H, W) per decoder, from one pass of the shared encoder."""
        self.check_size(x)
        maps = self.encoder(x)
        return [self.decoder(maps)] + ([self.decoder2(maps)] if self.decoder2 is not None else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decoder2 is None:
            self.check_size(x)
            return self.decoder(self.encoder(x))
        first, second = self.forward_decoders(x)
        return 0.5 * (first + second)


def build_network(config: NetworkConfig) -> SegmentationNet:
    """The segmentation network for ``config`` (randomly initialised)."""
    return SegmentationNet(config)
