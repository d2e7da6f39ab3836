"""2.5D network inputs: a slice along the annotation axis, its neighbours as extra channels, and in-plane
coordinate channels.

Why coordinates: with a handful of annotated slices, look-alike structures elsewhere in the plane (the same
nucleus in the other hemisphere, another organ of the same density) are the main error
(measured on a real brain MR, see inference/postprocess.py). Per-pixel normalised (y, x) coordinates let the network use *where* the annotation
is, not only what it looks like; they travel with the pixels through spatial augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
        self._coordinates = _coordinate_channels(self.height, self.width) if spec.coordinates else None

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


def _coordinate_channels(height: int, width: int) -> torch.Tensor:
    """(1, 2, H, W): y and x scaled to [-1, 1] across the slice."""
    ys = torch.linspace(-1.0, 1.0, height)
    xs = torch.linspace(-1.0, 1.0, width)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_y, grid_x])[None]
