"""IDEAL's dense local contrast: closed forms on orthogonal maps, sampling, brute force, gradients, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ContrastiveSegLib.losses.dense import DenseContrastiveLoss, neighbour_ignore_mask
from ContrastiveSegLib.losses.sampling import sample_locations, sample_per_group
from test_losses_contrastive import brute_force

torch.set_num_threads(1)


def one_hot_map(b, h, w, dtype=torch.float64):
    """(B, B*H*W, H, W): every location of every image its own basis vector, so all pairs are orthogonal."""
    n = b * h * w
    return torch.eye(n, dtype=dtype).reshape(n, b, h, w).permute(1, 0, 2, 3).contiguous()


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_orthogonal_locations_closed_form(tau):
    f = one_hot_map(2, 3, 3)
    loss = DenseContrastiveLoss(temperature=tau, num_samples=100, exclusion_radius=0.0)(f, f.clone())
    s = 18  # all 2 x 9 locations sampled; 2S - 2 orthogonal negatives per anchor
    assert loss.item() == pytest.approx(math.log(1 + (2 * s - 2) * math.exp(-1 / tau)), rel=1e-12)


def test_image_negatives_closed_form():
    f = one_hot_map(2, 2, 2)
    loss = DenseContrastiveLoss(temperature=0.2, num_samples=4, negatives="image", exclusion_radius=0.0)(f, f.clone())
    assert loss.item() == pytest.approx(math.log(1 + (2 * 4 - 2) * math.exp(-1 / 0.2)), rel=1e-12)


def test_exclusion_radius_removes_exactly_the_neighbours():
    # 3 x 3 map, radius 1: corners have 2 four-neighbours, edges 3, the centre 4; each neighbour's two views
    # leave the denominator of 2 * 9 - 2 = 16 orthogonal negatives.
    f = one_hot_map(1, 3, 3)
    tau = 0.25
    loss = DenseContrastiveLoss(temperature=tau, num_samples=9, exclusion_radius=1.0)(f, f.clone())
    neighbours = [2, 3, 2, 3, 4, 3, 2, 3, 2]
    expected = np.mean([math.log(1 + (16 - 2 * n) * math.exp(-1 / tau)) for n in neighbours])
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    image = torch.zeros(3, dtype=torch.long)
    coords = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    expected_mask = [[True, True, False], [True, True, True], [False, True, True]]
    assert neighbour_ignore_mask(image, coords, 1.5).tolist() == expected_mask


def test_matches_brute_force_on_the_sampled_locations():
    g = torch.Generator().manual_seed(0)
    f1 = F.normalize(torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64), dim=1)
    f2 = F.normalize(f1 + 0.3 * torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64), dim=1)
    loss = DenseContrastiveLoss(temperature=0.1, num_samples=7, exclusion_radius=0.0)
    got = loss(f1, f2, generator=torch.Generator().manual_seed(5))
    image, index = sample_locations(torch.ones(2, 5, 6, dtype=torch.bool), 7, torch.Generator().manual_seed(5))
    z = torch.cat([f1.flatten(2)[image, :, index], f2.flatten(2)[image, :, index]]).numpy()
    s = image.shape[0]
    positive = np.zeros((2 * s, 2 * s), bool)
    positive[np.arange(s), np.arange(s) + s] = positive[np.arange(s) + s, np.arange(s)] = True
    expected = brute_force(z, positive, np.zeros_like(positive), None, 0.1)
    assert s == 14 and got.item() == pytest.approx(expected, rel=1e-10)


def test_invalid_locations_are_never_sampled():
    f = F.normalize(torch.randn(3, 4, 6, 6, dtype=torch.float64), dim=1)
    valid = torch.zeros(3, 6, 6, dtype=torch.bool)
    valid[:, 1:4, 2:5] = True
    valid[2] = False  # an image with nothing valid contributes nothing
    poisoned = f.masked_fill(~valid[:, None], float("nan"))
    loss = DenseContrastiveLoss(num_samples=5)(poisoned, poisoned.clone(), valid)
    assert torch.isfinite(loss)
    image, index = sample_locations(valid, 5, torch.Generator().manual_seed(1))
    assert torch.bincount(image, minlength=3).tolist() == [5, 5, 0]
    assert valid.flatten(1)[image, index].all()
    for b in range(2):
        assert len(set(index[image == b].tolist())) == 5  # without replacement
    none = DenseContrastiveLoss()(f, f.clone(), torch.zeros(3, 6, 6, dtype=torch.bool))
    assert none.item() == 0.0


def test_sample_per_group_counts_and_uniformity():
    groups = torch.tensor([0] * 6 + [1] * 2 + [2] * 4)
    keep = sample_per_group(groups, 3, torch.Generator().manual_seed(0))
    assert torch.bincount(groups[keep]).tolist() == [3, 2, 3]
    g = torch.Generator().manual_seed(1)
    hits = sum(sample_per_group(groups, 3, g).double() for _ in range(600))
    assert hits[:6].div(600).sub(0.5).abs().max() < 0.08  # each of 6 members kept half of the time
    assert hits[6:8].tolist() == [600.0, 600.0]


def test_gradcheck_float64_3d():
    x = torch.randn(1, 3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    loss = DenseContrastiveLoss(temperature=0.5, num_samples=6, exclusion_radius=1.0)

    def f(a, b):
        return loss(F.normalize(a, dim=1), F.normalize(b, dim=1), generator=torch.Generator().manual_seed(2))

    assert torch.autograd.gradcheck(f, (x, y), eps=1e-6, atol=1e-6)


def test_errors():
    f = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="f1 and f2 must have the same shape"):
        DenseContrastiveLoss()(f, f[:, :, :4])
    with pytest.raises(ValueError, match="valid must have shape"):
        DenseContrastiveLoss()(f, f, torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="f1 must have shape"):
        DenseContrastiveLoss()(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match="num_samples"):
        DenseContrastiveLoss(num_samples=0)
    with pytest.raises(ValueError, match="negatives"):
        DenseContrastiveLoss(negatives="queue")
