"""Two augmented views of every crop, with the spatial transform of each recorded so locations can be matched.

Contrastive pretraining compares two random views of the same image (SimCLR, Chen et al. 2020). The dense and
region losses (IDEAL, Basak et al. 2023; LRC, Yan et al. 2023) also need to know which location of one view is
which location of the other. Each view here is a random affine (rotation, zoom-in crop, flip); the matrix
``theta`` (B, 2, 3) maps a view's normalised output coordinates to the crop's (the convention of
:mod:`ContrastiveSegLib.data.geometry`, which does the warping for fine-tuning's augmenter too), so
:func:`align_to_first` resamples any feature map of view 2 onto view 1's grid, whatever its stride. Superpixel
ids and label maps go through the very same grid with nearest-neighbour sampling. Intensity changes (contrast,
brightness, noise) touch the intensity channels only; the coordinate channels move with the pixels.

Everything is batched on the training device: per-sample CPU transforms would cost more than the network step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ContrastiveSegLib.data.geometry import affine_theta, inside, resample, sampling_grid, warp, warp_ids
from ContrastiveSegLib.io.annotations import IGNORE


@dataclass(frozen=True)
class ViewConfig:
    """Ranges of the two-view augmentation (defaults and reasons in docs/methods.md, "Views").

    Attributes:
        spatial: random affine per view; False gives intensity-only views (locations coincide, as in Chaitanya
            et al.'s local loss).
        max_rotation_deg: rotation uniform in +-this.
        crop_scale: side of the sampled square as a fraction of the crop, uniform in this range (zoom in), placed
            uniformly inside the crop.
        flip_probability: left-right flip.
        contrast: multiplicative intensity factor range.
        brightness: additive shift uniform in +-this (z-score units).
        noise_probability, noise_std: additive Gaussian noise.
    """

    spatial: bool = True
    max_rotation_deg: float = 20.0
    crop_scale: tuple[float, float] = (0.6, 1.0)
    flip_probability: float = 0.5
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: float = 0.3
    noise_probability: float = 0.5
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.contrast[0] <= self.contrast[1]:
            raise ValueError(f"contrast must satisfy 0 < low <= high, got {self.contrast}")
        for name in ("flip_probability", "noise_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def align_to_first(f2: torch.Tensor, theta1: torch.Tensor, theta2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample view 2's map onto view 1's grid: location p of the result shows the crop point that location p of
    view 1 shows.

    Args:
        f2: (B, C, h, w) any map of view 2 (image, features at any stride: normalised coordinates do not depend
            on the resolution with ``align_corners=False``).
        theta1, theta2: (B, 2, 3) the views' transforms.

    Returns:
        (aligned (B, C, h, w) float32, valid (B, h, w) bool): valid where the point lies inside both views and the
        crop.
    """
    a1, b1 = theta1[:, :, :2].float(), theta1[:, :, 2:].float()
    a2, b2 = theta2[:, :, :2].float(), theta2[:, :, 2:].float()
    inverse = torch.linalg.inv(a2)
    relative = torch.cat([inverse @ a1, inverse @ (b1 - b2)], dim=2)  # view-1 point -> view-2 point
    # Grids in float32 even under autocast: bf16 coordinates would be off by a quarter pixel on a 64-pixel map.
    grid = sampling_grid(relative, f2.shape)
    aligned = resample(f2.float(), grid)
    in_crop = inside(sampling_grid(theta1.float(), f2.shape))
    return aligned, inside(grid) & in_crop


class TwoViews:
    """Makes the two views of a batch from :class:`~ContrastiveSegLib.data.unlabelled.SliceStream`.

    Args:
        image_channels: how many leading channels are intensities (the rest, coordinates, are only moved).
        config: see :class:`ViewConfig`.
        seed: seeds the random generator (one per device), so runs are repeatable.

    ``views(batch)`` takes "image" (B, C, H, W) (and optional "superpixels", "labels" (B, H, W)) and returns a new
    dict with the input keys plus, for v in 1, 2: "view{v}" (B, C, H, W), "theta{v}" (B, 2, 3), "valid{v}" (B, H, W)
    bool, "clean{v}" (B, image_channels, H, W) (warped, no intensity change: the reconstruction target),
    "superpixels{v}" (-1 outside) and "labels{v}" (255 outside) when given.
    """

    def __init__(self, image_channels: int, config: ViewConfig = ViewConfig(), seed: int = 0):
        if image_channels < 1:
            raise ValueError(f"image_channels must be >= 1, got {image_channels}")
        self.image_channels = image_channels
        self.config = config
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def reseed(self, seed: int) -> None:
        """Restart every generator from ``seed`` (used on resume)."""
        self.seed = seed
        self._generators.clear()

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def _uniform(self, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=self._generator(device), device=device) * (high - low) + low

    def sample_theta(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(n, 2, 3) random affines: zoom-in crop, rotation, flip; the identity when ``spatial`` is off."""
        device = torch.device(device)
        if not self.config.spatial:
            theta = torch.zeros(n, 2, 3, device=device)
            theta[:, 0, 0] = theta[:, 1, 1] = 1.0
            return theta
        c = self.config
        scale = self._uniform(n, c.crop_scale[0], c.crop_scale[1], device)
        angle = self._uniform(n, -c.max_rotation_deg, c.max_rotation_deg, device) * (math.pi / 180)
        flip = torch.where(self._uniform(n, 0, 1, device) < c.flip_probability, -1.0, 1.0)
        # The zoomed square stays inside the crop before rotation: a centre offset of at most 1 - scale.
        shift_x = self._uniform(n, -1, 1, device) * (1 - scale)
        shift_y = self._uniform(n, -1, 1, device) * (1 - scale)
        return affine_theta(angle, scale, scale, flip, torch.stack([shift_x, shift_y], dim=1))

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        c, n, device = self.config, x.shape[0], x.device
        contrast = self._uniform(n, c.contrast[0], c.contrast[1], device).view(n, 1, 1, 1)
        shift = self._uniform(n, -c.brightness, c.brightness, device).view(n, 1, 1, 1)
        noisy = (self._uniform(n, 0, 1, device) < c.noise_probability).to(x.dtype).view(n, 1, 1, 1)
        noise = torch.randn(x.shape, generator=self._generator(device), device=device, dtype=x.dtype)
        return x * contrast + shift + noise * (noisy * c.noise_std)

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "image" not in batch:
            raise ValueError(f"views need the batch key 'image' (got keys {sorted(batch)})")
        image = batch["image"]
        if image.ndim != 4 or image.shape[1] < self.image_channels:
            raise ValueError(f"image must have shape (B, C >= {self.image_channels}, H, W), got {tuple(image.shape)}")
        n, k = image.shape[0], self.image_channels
        out = dict(batch)
        # Pad with each image's background (its minimum), not 0, which is the mean tissue after z-scoring.
        low = image[:, :k].amin(dim=(1, 2, 3), keepdim=True)
        for v in (1, 2):
            theta = self.sample_theta(n, image.device)
            warped, valid = warp(image, theta)
            clean = torch.where(valid[:, None], warped[:, :k], low)
            out[f"view{v}"] = torch.cat([self._intensity(clean), warped[:, k:]], dim=1)
            out[f"theta{v}"], out[f"valid{v}"], out[f"clean{v}"] = theta, valid, clean
            if "superpixels" in batch:
                out[f"superpixels{v}"] = warp_ids(batch["superpixels"], theta, outside=-1)
            if "labels" in batch:
                out[f"labels{v}"] = warp_ids(batch["labels"], theta, outside=IGNORE)
        return out
