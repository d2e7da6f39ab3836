"""The benchmark's protocol in code: choose annotated slices the way a person would, hide the rest, score (Dice).

Arrays are (z, y, x) = (k, j, i), the order SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume``
return; ``axis`` is an axis of that array.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice

from ContrastiveSegLib.io.annotations import IGNORE


def choose_annotated_slices(reference: np.ndarray, axis: int, k: int,
                            labels: Sequence[int] | None = None) -> list[int]:
    """Indices of ``k`` slices evenly spaced between 10 % and 90 % of the structures' extent along ``axis``.

    Follows the benchmark protocol (benchmarks/README.md): for several structures the extent is that of their
    union.
    ``k = 1`` gives the middle of the extent.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    mask = reference > 0 if labels is None else np.isin(reference, list(labels))
    other_axes = tuple(a for a in range(reference.ndim) if a != axis)
    present = np.flatnonzero(mask.any(axis=other_axes))
    if present.size == 0:
        raise ValueError("the reference holds none of the requested labels")
    first, last = int(present[0]), int(present[-1])
    span = last - first
    if k == 1:
        fractions = np.array([0.5])
    else:
        fractions = np.linspace(0.1, 0.9, k)
    chosen = sorted({int(round(first + f * span)) for f in fractions})
    return chosen


def sparse_annotation(reference: np.ndarray, axis: int, slices: Sequence[int]) -> np.ndarray:
    """A label map that keeps ``reference`` on ``slices`` along ``axis`` and is 0 elsewhere (unannotated)."""
    sparse = np.zeros_like(reference)
    index = [slice(None)] * reference.ndim
    for s in slices:
        index[axis] = s
        sparse[tuple(index)] = reference[tuple(index)]
    return sparse


def dice_per_label(prediction: np.ndarray, reference: np.ndarray,
                   labels: Sequence[int] | None = None) -> dict[int, float]:
    """Dice of each label value over the whole volume: 2|P and R| / (|P| + |R|); 1.0 when both are empty, 0.0 when
    only the prediction has it.

    prediction, reference: (z, y, x) (any same shape) integer label maps. ``labels`` default: every value of
    ``reference`` but 0 and IGNORE. Returns {label value: Dice}.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"shape mismatch: prediction {prediction.shape} vs reference {reference.shape}")
    if labels is None:
        labels = [int(v) for v in np.unique(reference) if v not in (0, IGNORE)]
    shape = (1, 2) + reference.shape
    scores: dict[int, float] = {}
    for value in labels:
        # MONAI wants one-hot (batch, channel, ...) with a background channel; include_background=False never
        # reads channel 0, so both channels are views of one mask instead of a copy per channel. The reference
        # is float64 so that MONAI's sums stay exact (float32 holds integers exactly only up to 2**24, a 256^3
        # volume) and the score is the float64 value the benchmark has always reported; ignore_empty=False gives
        # 1.0 when both masks are empty and 0.0 when only the prediction has the label.
        p = torch.from_numpy(np.ascontiguousarray(prediction == value))[None, None].expand(shape)
        r = torch.from_numpy(np.ascontiguousarray(reference == value, dtype=np.float64))[None, None].expand(shape)
        scores[int(value)] = float(compute_dice(p, r, include_background=False, ignore_empty=False))
    return scores


def mean_dice(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int] | None = None) -> float:
    """Dice averaged over structures (the benchmark's headline number)."""
    scores = dice_per_label(prediction, reference, labels)
    return float(np.mean(list(scores.values())))
