"""MixCL reconstruction consistency: hand-computed L1 / L2 / smooth-L1, masks, gradients, errors."""
from __future__ import annotations

import pytest
import torch

from ContrastiveSegLib.losses.reconstruction import ReconstructionLoss, reconstruction_loss

torch.set_num_threads(1)

REC = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # (1, 1, 2, 2)
TARGET = torch.tensor([[[[0.5, 1.0], [0.0, 3.0]]]])  # errors 0.5, 0, 2, 0


@pytest.mark.parametrize(
    "kind,expected", [("l1", 2.5 / 4), ("l2", (0.25 + 4.0) / 4), ("smooth_l1", (0.5 * 0.25 + 1.5) / 4)]
)
def test_hand_computed(kind, expected):
    assert reconstruction_loss(REC, TARGET, kind=kind).item() == pytest.approx(expected)
    assert ReconstructionLoss(kind)(REC, TARGET).item() == pytest.approx(expected)


def test_mask_averages_over_selected_voxels_only():
    mask = torch.tensor([[[[True, False], [True, False]]]])
    assert reconstruction_loss(REC, TARGET, mask).item() == pytest.approx((0.5 + 2.0) / 2)
    two_channels = torch.cat([REC, REC + 1], dim=1)
    target = torch.cat([TARGET, TARGET], dim=1)
    # A (B, 1, H, W) mask broadcasts over channels: channel 2 errors at the masked voxels are 0.5 and 3.
    assert reconstruction_loss(two_channels, target, mask).item() == pytest.approx((0.5 + 2.0 + 0.5 + 3.0) / 4)


def test_empty_mask_and_gradient_only_inside_mask():
    rec = REC.clone().requires_grad_()
    mask = torch.tensor([[[[True, False], [False, False]]]])
    reconstruction_loss(rec, TARGET, mask, kind="l2").backward()
    assert rec.grad.tolist() == [[[[-1.0, 0.0], [0.0, 0.0]]]]  # d/dr (r - t)^2 = 2 (0 - 0.5)
    empty = reconstruction_loss(rec, TARGET, torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad


def test_errors():
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_loss(REC, TARGET[..., :1])
    with pytest.raises(ValueError, match="mask of shape"):
        reconstruction_loss(REC, TARGET, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="kind"):
        ReconstructionLoss("l3")
    with pytest.raises(TypeError, match="target"):
        reconstruction_loss(REC, None)
