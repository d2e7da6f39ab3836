"""Projection heads for contrastive pretraining: a global MLP head and a dense 1x1-convolution head.

Both end in an L2 normalisation, so their outputs are the unit vectors the contrastive core
(:mod:`ContrastiveSegLib.losses.contrastive`) expects. Heads are thrown away after pretraining: only the
encoder (and decoder) weights are fine-tuned.
"""
from __future__ import annotations

import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from monai.networks.layers.utils import get_act_layer
from torch import Tensor, nn

# LeakyReLU(0.01) as in Peng et al. (NeurIPS 2021); any MONAI activation name/tuple works.
DEFAULT_ACT: tuple = ("leakyrelu", {"negative_slope": 0.01})
_EPS = 1e-6  # representable in float16, unlike F.normalize's default 1e-12


def _check_channels(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_input(x: Tensor, spatial_dims: int, in_channels: int, head: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{head} input must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"{head} expects input of shape (B, {in_channels}, {', '.join('*' * spatial_dims)}) "
            f"(spatial_dims={spatial_dims}), got shape {tuple(x.shape)}"
        )


class _ProjectionHead(nn.Module):
    """What both heads share: checked sizes, a shape check on the input, and the L2 normalisation of the output
    along the channel axis. Subclasses build their layers and implement :meth:`project`."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        _check_channels(in_channels=in_channels, hidden_channels=hidden_channels, out_channels=out_channels)
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims

    def project(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.spatial_dims, self.in_channels, type(self).__name__)
        return F.normalize(self.project(x), dim=1, eps=_EPS)


class GlobalProjectionHead(_ProjectionHead):
    """Global average pool -> Linear -> activation -> Linear -> L2 normalise.

    The head of Peng et al. (NeurIPS 2021): Linear(C, 256) -> LeakyReLU(0.01) -> Linear(256, 256). Chaitanya
    et al. (NeurIPS 2020) flatten instead of pooling (1024 -> 128); pooling keeps the head independent of the
    crop size.

    Args:
        in_channels: C, channels of the feature map (e.g. the encoder bottleneck).
        hidden_channels: width of the hidden layer (256).
        out_channels: D, embedding size (256).
        spatial_dims: 2 or 3.
        act: MONAI activation name or (name, kwargs).

    Shapes: (B, C, *spatial) -> (B, D), unit L2 norm per row.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 256,
        out_channels: int = 256,
        spatial_dims: int = 2,
        act: str | tuple = DEFAULT_ACT,
    ) -> None:
        super().__init__(in_channels, hidden_channels, out_channels, spatial_dims)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden_channels),
            get_act_layer(act),
            nn.Linear(hidden_channels, out_channels),
        )

    def project(self, x: Tensor) -> Tensor:
        return self.mlp(self.pool(x).flatten(1))


class DenseProjectionHead(_ProjectionHead):
    """1x1 conv -> activation -> 1x1 conv -> L2 normalise along channels: one embedding per location.

    The dense head of IDEAL (Basak et al., ICASSP 2023), of Chaitanya et al.'s local loss and of Peng et al.'s
    dense variant; also the pixel/region embedding for LRC and MixCL. A 1x1 convolution is a per-location
    MLP, so location correspondence between views is untouched.

    Args:
        in_channels: C, channels of the feature map (a decoder block's output).
        hidden_channels: width of the hidden layer (128).
        out_channels: D, embedding size (128).
        spatial_dims: 2 or 3.
        act: MONAI activation name or (name, kwargs).
        norm: optional MONAI norm between the two convolutions (None: the papers use none).

    Shapes: (B, C, *spatial) -> (B, D, *spatial), unit L2 norm at every location.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 128,
        out_channels: int = 128,
        spatial_dims: int = 2,
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple | None = None,
    ) -> None:
        super().__init__(in_channels, hidden_channels, out_channels, spatial_dims)
        self.net = nn.Sequential(
            Convolution(
                spatial_dims, in_channels, hidden_channels, kernel_size=1, act=act, norm=norm, adn_ordering="NA"
            ),
            Convolution(spatial_dims, hidden_channels, out_channels, kernel_size=1, conv_only=True),
        )

    def project(self, x: Tensor) -> Tensor:
        return self.net(x)
