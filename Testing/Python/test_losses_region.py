"""LRC region contrast: exact pooling, closed forms, shared-region matching, sampling, gradients, errors."""
from __future__ import annotations

import math

import pytest
import torch

from ContrastiveSegLib.losses.region import RegionContrastiveLoss, pool_regions, resize_ids

torch.set_num_threads(1)


def test_pooling_is_exact_on_a_toy_map():
    features = torch.tensor(
        [
            [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]],
            [[[7.0, 8.0, 9.0], [10.0, 11.0, 12.0]], [[2.0, 2.0, 2.0], [2.0, 2.0, 4.0]]],
        ]
    )  # (B=2, C=2, 2, 3)
    ids = torch.tensor([[[0, 0, 3], [-1, 3, 3]], [[3, 3, 3], [3, -1, 7]]])
    pooled = pool_regions(features, ids)
    # Image 0: id 0 = pixels (0,0),(0,1); id 3 = (0,2),(1,1),(1,2). Image 1: id 3 = 4 pixels, id 7 = (1,2).
    assert pooled.image.tolist() == [0, 0, 1, 1]
    assert pooled.region.tolist() == [0, 3, 3, 7]
    assert pooled.count.tolist() == [2, 3, 4, 1]
    expected = torch.tensor([[1.5, 0.0], [14 / 3, 1.0], [8.5, 2.0], [12.0, 4.0]])
    assert torch.allclose(pooled.features, expected)


def one_hot_regions(b, r, h=4, w=6):
    """Features that are one basis vector per (image, region) and id maps of r vertical stripes."""
    ids = (torch.arange(w) * r // w).expand(b, h, w).contiguous()
    codes = torch.eye(b * r, dtype=torch.float64).reshape(b, r, b * r)
    features = codes[torch.arange(b)[:, None, None], ids].permute(0, 3, 1, 2).contiguous()
    return features, ids


@pytest.mark.parametrize("tau", [0.1, 0.3])
def test_orthogonal_regions_closed_form(tau):
    f, ids = one_hot_regions(2, 3)
    loss = RegionContrastiveLoss(temperature=tau, regions_per_image=10)(f, f.clone(), ids, ids.clone())
    r = 6  # 2 images x 3 regions, each the positive of itself in the other view, 2R - 2 orthogonal negatives
    assert loss.item() == pytest.approx(math.log(1 + (2 * r - 2) * math.exp(-1 / tau)), rel=1e-12)


def test_only_regions_seen_in_both_views_count():
    f, ids = one_hot_regions(1, 3)
    ids2 = ids.clone()
    ids2[ids2 == 2] = -1  # region 2 left the second view (cropped away)
    loss = RegionContrastiveLoss(temperature=0.2)(f, f.clone(), ids, ids2)
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-1 / 0.2)), rel=1e-12)
    small = RegionContrastiveLoss(temperature=0.2, min_pixels=9)  # each stripe covers 4 x 2 = 8 pixels
    assert small(f, f.clone(), ids, ids.clone()).item() == 0.0


def test_regions_per_image_and_same_id_in_two_images_are_two_regions():
    f, ids = one_hot_regions(2, 3)  # both images use ids 0..2
    loss = RegionContrastiveLoss(temperature=0.2, regions_per_image=2)(
        f, f.clone(), ids, ids.clone(), generator=torch.Generator().manual_seed(0)
    )
    assert loss.item() == pytest.approx(math.log(1 + (2 * 4 - 2) * math.exp(-1 / 0.2)), rel=1e-12)
    image_only = RegionContrastiveLoss(temperature=0.2, negatives="image")(f, f.clone(), ids, ids.clone())
    assert image_only.item() == pytest.approx(math.log(1 + (2 * 3 - 2) * math.exp(-1 / 0.2)), rel=1e-12)


def test_ids_at_a_finer_grid_are_resized_nearest():
    f, ids = one_hot_regions(1, 3, h=4, w=6)
    fine = ids.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # constant on 2 x 2 blocks
    assert torch.equal(resize_ids(fine, (4, 6)), ids)
    a = RegionContrastiveLoss()(f, f.clone(), fine, fine.clone())
    b = RegionContrastiveLoss()(f, f.clone(), ids, ids.clone())
    assert a.item() == pytest.approx(b.item())
    big = torch.full((1, 2, 2), 2**40 + 1)  # ids beyond float32's exact range survive the resize
    assert resize_ids(big, (1, 1)).item() == 2**40 + 1


def test_no_shared_region_gives_attached_zero():
    f, ids = one_hot_regions(1, 2)
    f.requires_grad_()
    loss = RegionContrastiveLoss()(f, f, ids, torch.full_like(ids, -1))
    assert loss.item() == 0.0 and loss.requires_grad


def test_gradcheck_through_pooling_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    ids = torch.randint(-1, 4, (2, 3, 4), generator=g)
    loss = RegionContrastiveLoss(temperature=0.5, regions_per_image=3)

    def f(a, b):
        return loss(a, b, ids, ids, generator=torch.Generator().manual_seed(1))

    assert torch.autograd.gradcheck(f, (x, y), eps=1e-6, atol=1e-6)


def test_errors():
    f = torch.randn(2, 3, 4, 4)
    ids = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="ids must have shape"):
        pool_regions(f, ids[:, :3])
    with pytest.raises(ValueError, match="integer"):
        pool_regions(f, ids.float())
    with pytest.raises(ValueError, match="ids2 must have shape"):
        RegionContrastiveLoss()(f, f, ids, ids[0])
    with pytest.raises(ValueError, match="f1 and f2"):
        RegionContrastiveLoss()(f, f[:1], ids, ids)
    with pytest.raises(ValueError, match="regions_per_image"):
        RegionContrastiveLoss(regions_per_image=0)
