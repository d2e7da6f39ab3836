"""Batched 2D affine warps of images and integer maps, shared by the fine-tuning augmenter
(:mod:`ContrastiveSegLib.data.augment`) and the pretraining views (:mod:`ContrastiveSegLib.data.views`).

Convention (torch's ``affine_grid`` / ``grid_sample`` with ``align_corners=False``, used by every function here):
``theta`` (B, 2, 3) maps a location of the *output* in normalised (x, y) coordinates, -1 and +1 at the outer edges
of the first and last pixels, to the location of the *source* it is read from. Row 0 gives the source x, row 1
the source y.

Integer maps (class labels, superpixel ids) go through the resampler as ``value + 1`` with zero padding and
nearest-neighbour sampling, so an output location read from outside the source comes back as 0 - 1 = -1 and is
then marked ``outside`` (IGNORE for labels: never background).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def affine_theta(angle: torch.Tensor, scale_x: torch.Tensor, scale_y: torch.Tensor,
                 flip: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> torch.Tensor:
    """(n, 2, 3) sampling matrices from per-sample parameters, each (n,) on the same device.

    The source point of output point p = (x, y) is ``S R(angle) F p + shift``: F flips x where ``flip`` is -1,
    R rotates by ``angle`` (radians), S scales the source x by ``scale_x`` and y by ``scale_y`` (below 1: zoom in).

    Args:
        angle, scale_x, scale_y: (n,) float.
        flip: (n,) +-1 (None: no flip).
        shift: (n, 2) source (x, y) offset (None: centred).
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(angle.shape[0], 2, 3, device=angle.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * scale_x, -sin * scale_x
    theta[:, 1, 0], theta[:, 1, 1] = sin * scale_y, cos * scale_y
    if flip is not None:
        theta[:, :, 0] *= flip[:, None]
    if shift is not None:
        theta[:, :, 2] = shift
    return theta


def sampling_grid(theta: torch.Tensor, shape) -> torch.Tensor:
    """(B, h, w, 2) source (x, y) of every location of an output of ``shape`` (B, C, h, w), in ``theta``'s dtype."""
    return F.affine_grid(theta, list(shape), align_corners=False)


def resample(x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """(B, C, H, W) ``x`` read at ``grid`` (B, h, w, 2) -> (B, C, h, w)."""
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def inside(grid: torch.Tensor) -> torch.Tensor:
    """(B, h, w, 2) sampling grid -> (B, h, w) bool: the point lies at least half a pixel inside the source, so
    bilinear sampling reads no padding."""
    h, w = grid.shape[1:3]
    return (grid[..., 0].abs() <= 1 - 1 / w) & (grid[..., 1].abs() <= 1 - 1 / h)


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "border") -> tuple[torch.Tensor, torch.Tensor]:
    """Resample (B, C, H, W) ``x`` by ``theta`` (B, 2, 3) onto a grid of the same size.

    Returns the warped map (``padding_mode`` outside ``x``: "border" repeats the edge, "zeros") and the (B, H, W)
    bool mask of output locations that fall inside ``x``.
    """
    grid = sampling_grid(theta.to(x.dtype), x.shape)
    return resample(x, grid, mode, padding_mode), inside(grid)


def warp_ids(ids: torch.Tensor, theta: torch.Tensor, outside: int) -> torch.Tensor:
    """Nearest-neighbour resampling of an integer map (B, H, W) by ``theta`` -> (B, H, W) int64; locations read
    from outside the map get ``outside``. Values go through float32, exact for ids below 2**24 (the stream
    renumbers superpixels per crop)."""
    shifted = (ids + 1).to(torch.float32)[:, None]
    out = resample(shifted, sampling_grid(theta.to(torch.float32), shifted.shape), mode="nearest")
    out = out[:, 0].round().long() - 1
    return torch.where(out < 0, torch.full_like(out, outside), out)
