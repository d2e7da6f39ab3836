"""2.5D network inputs: a slice along the annotation axis, its neighbours as extra channels, and in-plane
coordinate channels.

Why coordinates: with a handful of annotated slices, look-alike structures elsewhere in the plane (the same
nucleus in the other hemisphere, another organ of the same density) are the main error (measured on a real brain
MR, see inference/postprocess.py). Per-pixel normalised (y, x) coordinates let the network use *where* the
annotation is, not only what it looks like; they travel with the pixels through spatial augmentation.

This module is also the one home of how inputs are padded: at the bottom and right, so that pixel (0, 0) stays
put and ``[..., :h, :w]`` crops back (to a multiple of the network's divisor, or to a patch size).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms.croppad.functional import pad_nd
from monai.transforms.utils import compute_divisible_spatial_size


@dataclass(frozen=True)
class InputSpec:
    """How a slice becomes network input; stored in every weights file so prediction rebuilds it exactly.

    Attributes:
        context: neighbours on each side along the annotation axis (1 -> three slices as channels).
        coordinates: append the two normalised in-plane coordinate channels.
        window: intensity window as quantiles of the scan (:mod:`ContrastiveSegLib.data.intensity`).
    """

    context: int = 1
    coordinates: bool = True
    window: tuple[float, float] = (0.005, 0.995)

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1 + (2 if self.coordinates else 0)

    def to_dict(self) -> dict:
        return {"context": self.context, "coordinates": self.coordinates, "window": list(self.window)}

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        window = tuple(float(v) for v in data.get("window", (0.005, 0.995)))
        return cls(context=int(data["context"]), coordinates=bool(data["coordinates"]), window=window)


class SliceStack:
    """A normalised volume viewed as slices along one axis.

    Args:
        volume: (z, y, x) float32 normalised intensities.
        axis: the annotation axis of ``volume``; slices are taken along it.
    """

    def __init__(self, volume: np.ndarray, axis: int, spec: InputSpec):
        self.spec = spec
        self.axis = axis
        # (S, H, W) view with slices first; contiguous so slice reads are cheap.
        self.slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, axis, 0)))
        self.num_slices, self.height, self.width = self.slices.shape
        self._coordinates = coordinate_channels(self.height, self.width) if spec.coordinates else None

    def inputs(self, indices) -> torch.Tensor:
        """Network inputs for slices ``indices``: (len(indices), in_channels, H, W) float32.

        Neighbours beyond the volume's ends repeat the edge slice.
        """
        indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        offsets = torch.arange(-self.spec.context, self.spec.context + 1)
        neighbours = (indices[:, None] + offsets[None, :]).clamp_(0, self.num_slices - 1)
        x = self.slices[neighbours]  # (N, 2c+1, H, W)
        if self._coordinates is not None:
            x = torch.cat([x, self._coordinates.expand(len(indices), -1, -1, -1)], dim=1)
        return x


def coordinate_channels(height: int, width: int) -> torch.Tensor:
    """(1, 2, H, W): y and x scaled to [-1, 1] across the slice (-1 at the first pixel, +1 at the last)."""
    ys = torch.linspace(-1.0, 1.0, height)
    xs = torch.linspace(-1.0, 1.0, width)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_y, grid_x])[None]


def coordinate_window(height: int, width: int, top: int, left: int, size: int) -> torch.Tensor:
    """(2, size, size): :func:`coordinate_channels` of rows ``top..`` and columns ``left..`` of a ``height`` x
    ``width`` slice, continued linearly beyond it (a crop that overhangs a small slice still says where each
    pixel lies).

    Computed as -1 + 2 i / (n - 1) rather than cut from ``linspace``, which differs in the last bit for some sizes:
    the pretraining stream has always used this form, so its runs repeat exactly.
    """
    ys = -1.0 + 2.0 * torch.arange(top, top + size, dtype=torch.float32) / max(height - 1, 1)
    xs = -1.0 + 2.0 * torch.arange(left, left + size, dtype=torch.float32) / max(width - 1, 1)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_y, grid_x])


def pad_end(x: torch.Tensor, height: int, width: int, value: float | None = None) -> torch.Tensor:
    """Pad (..., h, w) ``x`` at the bottom and right to (..., max(h, height), max(w, width)).

    The padding is the constant ``value``, or with ``value=None`` a copy of the last row and column. ``x`` itself
    is returned when it is large enough already.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = max(0, height - h), max(0, width - w)
    if not (pad_h or pad_w):
        return x
    mode, kwargs = ("replicate", {}) if value is None else ("constant", {"value": value})
    # MONAI pads channel-first (C, H, W): any leading dimensions are folded into C.
    padded = pad_nd(x.reshape(-1, h, w), [(0, 0), (0, pad_h), (0, pad_w)], mode=mode, **kwargs)
    return padded.reshape(*x.shape[:-2], h + pad_h, w + pad_w)


def pad_to_divisor(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Pad (..., h, w) ``x`` at the bottom and right, repeating its last row and column, to the next multiples of
    ``divisor`` (whole slices through the network)."""
    return pad_end(x, *compute_divisible_spatial_size(x.shape[-2:], divisor))
