"""``simclr``: instance contrast of two views on the encoder bottleneck (Chen et al., ICML 2020).

The "global" baseline of all four papers (Chaitanya et al.'s G^R, the identity term of MixCL, the global loss
LRC plugs into). Both views of every crop go through the encoder; a global MLP head on the bottleneck gives one
unit vector per view; NT-Xent pulls the two views of a crop together and pushes every other crop of the batch
away.
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor

from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.losses import nt_xent_loss
from ContrastiveSegLib.methods.base import DEFAULT_FEATURES, DEFAULT_NORM, MethodOutput, PretrainMethod, two_views
from ContrastiveSegLib.networks.heads import GlobalProjectionHead


class SimCLR(PretrainMethod):
    """Encoder + :class:`GlobalProjectionHead` on the bottleneck + NT-Xent.

    Args:
        temperature: tau (0.1, Chaitanya et al.'s global loss).
        hidden_channels, out_channels: head widths (256 -> 128 as SimCLR).

    Batch: "view1", "view2" (B, C, H, W). Loss: scalar; terms: "identity".
    """

    name = "simclr"
    description = "instance contrast of two views on the encoder bottleneck (SimCLR; the global baseline)"
    required_keys = ("view1", "view2")

    def __init__(self, spec: InputSpec = InputSpec(), features: tuple[int, ...] = DEFAULT_FEATURES,
                 norm: str = DEFAULT_NORM, temperature: float = 0.1, hidden_channels: int = 256,
                 out_channels: int = 128):
        super().__init__(spec, features, norm)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.head = GlobalProjectionHead(self.features[-1], hidden_channels, out_channels)
        self.params = {"temperature": self.temperature, "hidden_channels": hidden_channels,
                       "out_channels": out_channels}

    def compute(self, batch: Mapping[str, Tensor]) -> MethodOutput:
        n = batch["view1"].shape[0]
        z = self.head(self.encoder(two_views(batch))[-1])
        loss = nt_xent_loss(z[:n], z[n:], self.temperature)
        return MethodOutput(loss, {"identity": loss.detach()})
