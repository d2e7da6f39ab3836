"""``selfpaced``: self-paced supervised contrast over meta-labels (Peng et al., NeurIPS 2021).

The meta-labels that come free with a scan: the slice-position partition (the slice's normalised position in its
volume cut into ``partitions`` equal parts, Chaitanya et al.'s G^D positives), the volume id, and an optional
per-volume user tag (e.g. modality or scanner from a DICOM tag); the instance itself is one more, off by default.
Each label k gives SupCon positives, weighted by the self-paced weights of the detached pair losses at the age
gamma_k(t), which grows from ``*_gamma[0]`` to ``*_gamma[1]`` over the run (hard or linear regime); the loss is
sum_k lambda_k L_k. The loss itself is :class:`~ContrastiveSegLib.losses.SelfPacedContrastiveLoss`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.losses import MetaLabelTerm, SelfPacedContrastiveLoss
from ContrastiveSegLib.methods.base import DEFAULT_FEATURES, DEFAULT_NORM, MethodOutput, PretrainMethod, two_views
from ContrastiveSegLib.networks.heads import GlobalProjectionHead


def partition_labels(position: Tensor, partitions: int) -> Tensor:
    """Slice-position partition of each sample: floor(position * S) clipped to [0, S - 1].

    position: (B,) normalised slice positions in [0, 1) -> (B,) int64."""
    return (position.float() * partitions).floor().long().clamp_(0, partitions - 1)


class SelfPaced(PretrainMethod):
    """Encoder + global head (Peng et al.: pool -> 256 -> LeakyReLU -> 256) + self-paced meta-label SupCon.

    Args:
        partitions: S, slice-position partitions (4, as Chaitanya et al.; Peng et al. use 3 on ACDC, 8 elsewhere).
        mode: "linear" (the authors' "soft") or "hard".
        temperature: tau (0.07 as in the paper).
        normalize: divide each term by its mean positive weight.
        partition_weight, volume_weight, tag_weight, instance_weight: lambda_k; 0 drops the term.
        partition_gamma, volume_gamma, tag_gamma, instance_gamma: (begin, end) of each gamma schedule. Defaults are
            the authors' multi-label ACDC run with (partition, patient, phase) -> (partition, volume, tag); they
            depend on the batch size (docs/methods.md).
        hidden_channels, out_channels: head widths.

    Batch: "view1", "view2" (B, C, H, W); "position" (B,) float in [0, 1); "volume", "tag" (B,) int64 (tag -1 =
    unknown: no positive). Loss: scalar; terms per label: "<k>", "<k>_weight", "<k>_gamma".
    """

    name = "selfpaced"
    description = ("self-paced supervised contrast over free meta-labels: slice position, volume, user tag "
                   "(Peng et al. 2021)")
    required_keys = ("view1", "view2", "position", "volume", "tag")

    def __init__(self, spec: InputSpec = InputSpec(), features: tuple[int, ...] = DEFAULT_FEATURES,
                 norm: str = DEFAULT_NORM, partitions: int = 4, mode: str = "linear", temperature: float = 0.07,
                 normalize: bool = False,
                 partition_weight: float = 1.0, partition_gamma: Sequence[float] = (5.0, 60.0),
                 volume_weight: float = 0.1, volume_gamma: Sequence[float] = (3.5, 50.0),
                 tag_weight: float = 0.1, tag_gamma: Sequence[float] = (2.0, 50.0),
                 instance_weight: float = 0.0, instance_gamma: Sequence[float] = (5.0, 60.0),
                 hidden_channels: int = 256, out_channels: int = 256):
        super().__init__(spec, features, norm)
        if int(partitions) < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.partitions = int(partitions)
        settings = {"partition": (partition_weight, partition_gamma), "volume": (volume_weight, volume_gamma),
                    "tag": (tag_weight, tag_gamma), "instance": (instance_weight, instance_gamma)}
        terms = []
        for label, (weight, gamma) in settings.items():
            gamma = tuple(float(g) for g in gamma)
            if len(gamma) != 2:
                raise ValueError(f"{label}_gamma must be (begin, end), got {gamma}")
            if weight < 0:
                raise ValueError(f"{label}_weight must be >= 0, got {weight}")
            if weight > 0:
                terms.append(MetaLabelTerm(label, float(weight), *gamma))
        if not terms:
            raise ValueError("every meta-label weight is 0: give at least one a positive weight")
        self.head = GlobalProjectionHead(self.features[-1], hidden_channels, out_channels)
        self.loss = SelfPacedContrastiveLoss(terms, mode=mode, temperature=temperature, normalize=normalize)
        self.params = {"partitions": self.partitions, "mode": mode, "temperature": float(temperature),
                       "normalize": bool(normalize),
                       **{f"{k}_weight": float(w) for k, (w, _) in settings.items()},
                       **{f"{k}_gamma": [float(g) for g in gamma] for k, (_, gamma) in settings.items()},
                       "hidden_channels": hidden_channels, "out_channels": out_channels}

    def meta_labels(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """(B,) int64 labels per meta-label, for one view."""
        n = batch["view1"].shape[0]
        device = batch["view1"].device
        return {"partition": partition_labels(batch["position"], self.partitions).to(device),
                "volume": batch["volume"].long().to(device), "tag": batch["tag"].long().to(device),
                "instance": torch.arange(n, device=device)}

    def on_epoch_start(self, epoch: int, max_epochs: int) -> None:
        self.loss.set_progress(epoch, max(int(max_epochs), 1))

    def compute(self, batch: Mapping[str, Tensor]) -> MethodOutput:
        z = self.head(self.encoder(two_views(batch))[-1])
        labels = {k: v.repeat(2) for k, v in self.meta_labels(batch).items()}  # both views share the labels
        loss, terms = self.loss(z, labels)
        return MethodOutput(loss, terms)
