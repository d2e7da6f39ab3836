"""Intensity normalisation that serves CT (Hounsfield units) and MR (arbitrary scale) alike.

The window is expressed as two quantiles of the scan's own intensity distribution, so the same setting transfers
from one scan to the next whether intensities are calibrated (CT) or not (MR). By default it is the 0.5-99.5 %
range of the whole scan. When the user's annotation is known, the window is narrowed to the intensities of the
annotated structures plus a margin (nnU-Net likewise normalises CT with foreground statistics): on CT the whole
scan spans air to bone (about 2000 HU), while neighbouring organs differ by 10-40 HU, which a whole-range window
squeezes into a few hundredths of the input range.
"""
from __future__ import annotations

import numpy as np

from ContrastiveSegLib.errors import InputError

GLOBAL_WINDOW = (0.005, 0.995)
FOREGROUND_MARGIN = 0.5  # the window extends this fraction of the structures' intensity range on both sides
_SAMPLE = 2_000_000  # voxels sampled for the quantiles: exact enough, and fast on a 512x512x300 CT


MAX_INTENSITY = 1e15
"""The largest intensity magnitude accepted. Scanners write at most about 1e9 (PET activity in Bq/mL); values near
the float limit (3.4e38) overflow the normalisation in float32 (numpy warnings, then a diverged fine-tuning)."""


def check_finite(array: np.ndarray, *, what: str = "image") -> None:
    """One-line InputError when ``array`` holds NaN or infinite voxels, or magnitudes beyond :data:`MAX_INTENSITY`."""
    if np.issubdtype(array.dtype, np.floating):
        bad = np.count_nonzero(~np.isfinite(array))
        if bad:
            raise InputError(f"{what} holds {bad} NaN or infinite voxels")
    if array.size and (np.issubdtype(array.dtype, np.floating) or array.dtype.itemsize >= 8):
        low, high = float(array.min()), float(array.max())
        if max(-low, high) > MAX_INTENSITY:
            raise InputError(f"{what} holds intensities from {low:.3g} to {high:.3g}, beyond the +-{MAX_INTENSITY:g} "
                             "any scanner writes (a damaged or mis-scaled file?)")


def _sample(array: np.ndarray, seed: int = 0) -> np.ndarray:
    flat = array.reshape(-1)
    if flat.size > _SAMPLE:
        flat = flat[np.random.default_rng(seed).integers(0, flat.size, _SAMPLE)]
    return flat.astype(np.float32)


def foreground_window(array: np.ndarray, foreground: np.ndarray, margin: float = FOREGROUND_MARGIN,
                      seed: int = 0) -> tuple[float, float]:
    """The window (as quantiles of the whole scan) covering the annotated structures' intensities.

    Args:
        array: (z, y, x) raw intensities.
        foreground: boolean mask of the same shape, True on annotated non-background voxels.
        margin: widening on each side, as a fraction of the structures' 0.5-99.5 % intensity range.
    Returns:
        (low, high) quantiles in [0, 1], never narrower than the structures themselves and never wider than
        :data:`GLOBAL_WINDOW`.
    """
    values = array[foreground]
    if values.size == 0:
        return GLOBAL_WINDOW
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    width = max(high - low, 1e-6)
    low, high = low - margin * width, high + margin * width
    sample = np.sort(_sample(array, seed))
    q_low = float(np.searchsorted(sample, low, side="left")) / sample.size
    q_high = float(np.searchsorted(sample, high, side="right")) / sample.size
    return max(q_low, GLOBAL_WINDOW[0]), min(max(q_high, q_low + 1e-3), GLOBAL_WINDOW[1])


def normalise_intensity(array: np.ndarray, window: tuple[float, float] = GLOBAL_WINDOW, seed: int = 0) -> np.ndarray:
    """Clip to the scan's ``window`` quantiles, then z-score with the clipped mean and std.

    Args:
        array: (z, y, x) raw intensities (HU for CT, scanner units for MR).
        window: (low, high) quantiles of this scan's intensities (:data:`GLOBAL_WINDOW` or
            :func:`foreground_window`).
    Returns:
        float32 array of the same shape, roughly zero mean and unit variance inside the window.
    """
    sample = _sample(array, seed)
    low, high = (float(v) for v in np.quantile(sample, window))
    clipped_sample = np.clip(sample, low, high)
    mean, std = float(clipped_sample.mean()), float(clipped_sample.std())
    out = np.clip(array.astype(np.float32, copy=False), low, high)
    out -= mean
    out /= max(std, 1e-6)
    return out.astype(np.float32, copy=False)
