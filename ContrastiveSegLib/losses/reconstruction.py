"""MixCL's reconstruction consistency (Li, Quan, Zhou, 2022): a decoder rebuilds the clean image from the
features of its transformed (augmented) version; the loss compares the reconstruction with the clean image.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Kind = Literal["l1", "l2", "smooth_l1"]
_KINDS = ("l1", "l2", "smooth_l1")


def reconstruction_loss(
    reconstruction: Tensor, target: Tensor, mask: Tensor | None = None, kind: Kind = "l1"
) -> Tensor:
    """Mean element-wise error between ``reconstruction`` and ``target`` over the voxels in ``mask``.

    Args:
        reconstruction: (B, C, *spatial).
        target: same shape, the clean image (no gradient is needed through it).
        mask: optional bool or {0, 1} tensor broadcastable to the inputs, e.g. (B, 1, *spatial) for the body;
            the mean is over the selected elements only.
        kind: "l1" (default: robust to the heavy-tailed intensities of CT), "l2" or "smooth_l1" (beta 1).

    Returns:
        A scalar; 0 (attached to the graph) when the mask selects nothing.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    for name, t in (("reconstruction", reconstruction), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if reconstruction.shape != target.shape:
        raise ValueError(
            "reconstruction and target must have the same shape, "
            f"got {tuple(reconstruction.shape)} and {tuple(target.shape)}"
        )
    if kind == "l1":
        err = (reconstruction - target).abs()
    elif kind == "l2":
        err = (reconstruction - target) ** 2
    else:
        err = F.smooth_l1_loss(reconstruction, target, reduction="none", beta=1.0)
    if mask is None:
        return err.mean()
    try:
        weight = torch.broadcast_to(mask.to(err.dtype), err.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the inputs' shape {tuple(err.shape)}"
        ) from None
    return (err * weight).sum() / weight.sum().clamp(min=1.0)


class ReconstructionLoss(nn.Module):
    """Module form of :func:`reconstruction_loss` (MixCL reconstruction consistency).

    Args:
        kind: "l1" (default), "l2" or "smooth_l1".

    Shapes: reconstruction, target (B, C, *spatial); mask optional, broadcastable. Returns a scalar.
    """

    def __init__(self, kind: Kind = "l1") -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        self.kind: Kind = kind

    def forward(self, reconstruction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return reconstruction_loss(reconstruction, target, mask, self.kind)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"
