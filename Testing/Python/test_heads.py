"""Projection heads: shapes, unit norm, gradients to every parameter, layer structure, errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ContrastiveSegLib.networks.heads import DenseProjectionHead, GlobalProjectionHead

torch.set_num_threads(1)


@pytest.mark.parametrize("spatial_dims,spatial", [(2, (7, 5)), (3, (3, 4, 5))])
def test_global_head_shapes_norm_and_gradients(spatial_dims, spatial):
    head = GlobalProjectionHead(8, hidden_channels=16, out_channels=6, spatial_dims=spatial_dims)
    x = torch.randn(3, 8, *spatial)
    z = head(x)
    assert z.shape == (3, 6)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-6)
    z[:, 0].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_global_head_pools_so_constant_maps_of_any_size_agree():
    head = GlobalProjectionHead(4, 8, 5)
    value = torch.randn(2, 4, 1, 1)
    assert torch.allclose(head(value.expand(2, 4, 3, 3)), head(value.expand(2, 4, 10, 6)), atol=1e-6)
    act = [m for m in head.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(act) == 1 and act[0].negative_slope == 0.01  # Peng et al.'s LeakyReLU(0.01)


@pytest.mark.parametrize("spatial_dims,spatial", [(2, (6, 5)), (3, (2, 3, 4))])
def test_dense_head_is_per_location(spatial_dims, spatial):
    head = DenseProjectionHead(5, hidden_channels=7, out_channels=4, spatial_dims=spatial_dims)
    x = torch.randn(2, 5, *spatial, requires_grad=True)
    z = head(x)
    assert z.shape == (2, 4, *spatial)
    assert torch.allclose(z.norm(dim=1), torch.ones(2, *spatial), atol=1e-6)
    # A 1x1 head: the output at one location depends on the input at that location only.
    z.flatten(2)[0, :, 0].sum().backward()
    grad = x.grad.flatten(2).abs().sum(dim=1)
    assert grad[0, 0] > 0 and grad[0, 1:].sum() == 0 and grad[1].sum() == 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_dense_head_with_norm_and_relu():
    head = DenseProjectionHead(3, 4, 2, act="relu", norm="batch")
    assert any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    assert any(isinstance(m, nn.ReLU) for m in head.modules())
    assert head(torch.randn(2, 3, 4, 4)).shape == (2, 2, 4, 4)


def test_errors_name_the_input():
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 8"):
        GlobalProjectionHead(8)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"spatial_dims=2\), got shape \(2, 8, 5\)"):
        DenseProjectionHead(8)(torch.randn(2, 8, 5))
    with pytest.raises(ValueError, match="in_channels"):
        DenseProjectionHead(0)
    with pytest.raises(ValueError, match="spatial_dims"):
        GlobalProjectionHead(4, spatial_dims=4)
