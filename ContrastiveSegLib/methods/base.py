"""The one interface every pretraining method implements.

A method owns the encoder (what fine-tuning loads) and whatever heads or light decoders its losses need, and maps
a batch of two augmented views to one scalar loss. ``forward`` is the whole contract, so DDP, autocast and
torch.compile wrap a method with no extra code; the loop only reads ``method(batch).loss`` and ``.terms`` and
calls the hooks. The batch keys a method consumes are in ``required_keys`` (the keys made by
:class:`~ContrastiveSegLib.data.views.TwoViews` from :class:`~ContrastiveSegLib.data.unlabelled.SliceStream`
batches); the pretraining pipeline reads them to decide what to compute (superpixels, label maps).
"""
from __future__ import annotations

import abc
from dataclasses import fields
from typing import Any, ClassVar, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.networks.unet import NORMS, Encoder, NetworkConfig

# What fine-tuning builds by default: an encoder pretrained with other widths or norm would not load into it.
_NETWORK_DEFAULTS = {f.name: f.default for f in fields(NetworkConfig)}
DEFAULT_FEATURES: tuple[int, ...] = tuple(_NETWORK_DEFAULTS["features"])
DEFAULT_NORM: str = _NETWORK_DEFAULTS["norm"]


class MethodOutput(NamedTuple):
    """loss: scalar tensor to minimise; terms: detached scalars to log (one per loss term, plus diagnostics).

    A NamedTuple so DDP finds the loss tensor in the output without extra code."""

    loss: Tensor
    terms: dict[str, Tensor]


class PretrainMethod(nn.Module, abc.ABC):
    """Base of the pretraining methods: an :class:`~ContrastiveSegLib.networks.unet.Encoder` plus heads.

    Args:
        spec: the input spec shared with fine-tuning (5 channels by default: 3 slices + 2 coordinates).
        features: encoder widths; must equal the fine-tuning network's for the encoder to load.
        norm: the encoder's normalisation ("batch" or "instance"), also the fine-tuning network's.

    Subclasses set ``name``, ``description`` and ``required_keys``, store their hyper-parameters in
    ``self.params`` (recorded in encoder files and checkpoints) and implement :meth:`compute`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    required_keys: ClassVar[tuple[str, ...]] = ("view1", "view2")
    trains: ClassVar[bool] = True  # False: the loop writes the initial encoder without optimising (``none``)

    def __init__(self, spec: InputSpec = InputSpec(), features: tuple[int, ...] = DEFAULT_FEATURES,
                 norm: str = DEFAULT_NORM):
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) != 5 or min(features) < 1:
            raise ValueError(f"features must list 5 positive widths, got {features}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
        self.spec = spec
        self.features = features
        self.norm = norm
        self.image_channels = 2 * spec.context + 1
        self.encoder = Encoder(spec.in_channels, features, norm=norm)
        self.params: dict[str, Any] = {}

    def check_batch(self, batch: Mapping[str, Tensor]) -> None:
        """ValueError naming the first key of ``required_keys`` missing from ``batch``."""
        for key in self.required_keys:
            if key not in batch:
                raise ValueError(f"method '{self.name}' needs batch key '{key}' (got keys {sorted(batch)})")

    def forward(self, batch: Mapping[str, Tensor]) -> MethodOutput:
        self.check_batch(batch)
        return self.compute(batch)

    @abc.abstractmethod
    def compute(self, batch: Mapping[str, Tensor]) -> MethodOutput:
        """The loss of one batch whose keys have been checked."""

    def on_epoch_start(self, epoch: int, max_epochs: int) -> None:
        """Advance schedules (e.g. the self-paced gamma); ``epoch`` runs from 0 to ``max_epochs``. No-op here."""

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """What fine-tuning loads into ``SegmentationNet.encoder`` (exactly ``Encoder.state_dict()``)."""
        return {k: v.detach() for k, v in self.encoder.state_dict().items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())


def two_views(batch: Mapping[str, Tensor]) -> Tensor:
    """Both views stacked along the batch: (2B, C, H, W), view 1 first (the layout of the contrastive core)."""
    return torch.cat([batch["view1"], batch["view2"]])
