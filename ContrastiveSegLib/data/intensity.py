"""Intensity normalisation that serves CT (Hounsfield units) and MR (arbitrary scale) alike."""
from __future__ import annotations

import numpy as np

from ContrastiveSegLib.errors import InputError

# Robust range: nnU-Net clips CT to foreground percentiles 0.5/99.5 and z-scores MR; doing the same clip for both
# removes the need to know the modality and bounds the effect of metal, air and bright vessels.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
_SAMPLE = 2_000_000  # voxels sampled for the percentiles: exact enough, and fast on a 512x512x300 CT


def check_finite(array: np.ndarray, *, what: str = "image") -> None:
    """One-line InputError when ``array`` holds NaN or infinite voxels."""
    if np.issubdtype(array.dtype, np.floating):
        bad = np.count_nonzero(~np.isfinite(array))
        if bad:
            raise InputError(f"{what} holds {bad} NaN or infinite voxels")


def normalise_intensity(array: np.ndarray, seed: int = 0) -> np.ndarray:
    """Clip to the volume's 0.5-99.5 percentiles, then z-score with the clipped mean and std.

    Args:
        array: (z, y, x) raw intensities (HU for CT, scanner units for MR).
    Returns:
        float32 array of the same shape, roughly zero mean and unit variance.
    """
    flat = array.reshape(-1)
    if flat.size > _SAMPLE:
        flat = flat[np.random.default_rng(seed).integers(0, flat.size, _SAMPLE)]
    low, high = (float(v) for v in np.percentile(flat, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    clipped_sample = np.clip(flat.astype(np.float32), low, high)
    mean, std = float(clipped_sample.mean()), float(clipped_sample.std())
    out = np.clip(array.astype(np.float32, copy=False), low, high)
    out -= mean
    out /= max(std, 1e-6)
    return out.astype(np.float32, copy=False)
