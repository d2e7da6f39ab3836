"""MaskedDiceCELoss: equals hand-computed cross-entropy + Dice, and unannotated voxels carry no gradient."""
from __future__ import annotations

import math

import pytest
import torch

from ContrastiveSegLib.io.annotations import IGNORE
from ContrastiveSegLib.losses.segmentation import MaskedDiceCELoss

SMOOTH = 1e-5  # MONAI DiceLoss's default smooth_nr = smooth_dr


def test_value_matches_hand_computation():
    # Three voxels, two classes: v0 logits (2, 0) target 0; v1 logits (0, 1) target 1; v2 logits (3, -1) ignored.
    logits = torch.tensor([[[[2.0, 0.0, 3.0]], [[0.0, 1.0, -1.0]]]])
    target = torch.tensor([[[[0, 1, IGNORE]]]])
    e = math.e
    p_v0 = (e**2 / (e**2 + 1), 1 / (e**2 + 1))  # softmax of v0
    p_v1 = (1 / (1 + e), e / (1 + e))  # softmax of v1
    cross_entropy = -(math.log(p_v0[0]) + math.log(p_v1[1])) / 2
    # Dice per class over the annotated voxels (batch=True): 1 - (2 tp + s) / (sum p + sum t + s).
    dice_0 = 1 - (2 * p_v0[0] + SMOOTH) / (p_v0[0] + p_v1[0] + 1 + SMOOTH)
    dice_1 = 1 - (2 * p_v1[1] + SMOOTH) / (p_v0[1] + p_v1[1] + 1 + SMOOTH)
    expected = cross_entropy + (dice_0 + dice_1) / 2
    assert expected == pytest.approx(0.415260, abs=1e-6)
    assert MaskedDiceCELoss()(logits, target).item() == pytest.approx(expected, abs=1e-6)
    weighted = MaskedDiceCELoss(lambda_dice=0.5, lambda_ce=2.0)(logits, target).item()
    assert weighted == pytest.approx(2.0 * cross_entropy + 0.5 * (dice_0 + dice_1) / 2, abs=1e-6)


def test_ignored_voxels_get_exactly_zero_gradient_and_do_not_change_the_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=generator, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=generator)
    ignored = torch.rand(2, 1, 8, 8, generator=generator) < 0.4
    target[ignored] = IGNORE
    loss = MaskedDiceCELoss()(logits, target)
    loss.backward()
    grad = logits.grad
    mask = ignored.expand_as(grad)
    assert torch.count_nonzero(grad[mask]) == 0
    assert torch.count_nonzero(grad[~mask]) == (~mask).sum()  # every annotated voxel does get a gradient

    # Whatever the network says where nothing is annotated, the loss is the same.
    changed = logits.detach().clone()
    changed[mask] = torch.randn(int(mask.sum()), generator=generator) * 10
    assert MaskedDiceCELoss()(changed, target).item() == pytest.approx(loss.item(), abs=1e-6)


def test_all_ignored_gives_zero_and_zero_gradient():
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    target = torch.full((2, 1, 4, 4), IGNORE)
    loss = MaskedDiceCELoss()(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_perfect_prediction_is_near_zero():
    target = torch.tensor([[[[0, 1], [1, IGNORE]]]])
    logits = torch.stack([(target[:, 0] == 0).float(), (target[:, 0] == 1).float()], dim=1) * 40.0
    assert MaskedDiceCELoss()(logits, target).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("logits_shape, target_shape", [
    ((2, 3, 8, 8), (2, 8, 8)),  # target without its channel axis
    ((2, 3, 8, 8), (2, 2, 8, 8)),  # one-hot target
    ((2, 3, 8, 8), (2, 1, 8, 4)),  # spatial mismatch
])
def test_shape_mismatch_is_value_error(logits_shape, target_shape):
    with pytest.raises(ValueError, match="expected logits"):
        MaskedDiceCELoss()(torch.zeros(logits_shape), torch.zeros(target_shape, dtype=torch.long))


def test_dice_averages_only_the_classes_present_in_the_batch():
    """A class no annotated voxel of the batch holds must not enter the Dice term: its batch Dice is 1 for any
    predicted voxel, which would teach the network never to predict a structure that most crops miss."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6)
    target = torch.randint(0, 2, (2, 1, 6, 6))  # classes 0 and 1 only; class 2 absent
    target[:, :, 0] = 255
    known = target[:, 0] != 255
    probs = torch.softmax(logits, 1)
    expected_dice = []
    for c in (0, 1):
        p = probs[:, c][known]
        g = (target[:, 0][known] == c).float()
        expected_dice.append(1 - (2 * (p * g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5))
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0], ignore_index=255)
    expected = torch.stack(expected_dice).mean() + ce
    assert torch.allclose(MaskedDiceCELoss()(logits, target), expected, atol=1e-5)
