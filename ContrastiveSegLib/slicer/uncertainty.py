"""Where the model is least sure: the entropy of the class probabilities, and the slice to annotate next.

Annotating the slice the model is most uncertain about is the classic uncertainty-sampling rule of active
learning (Settles, "Active Learning Literature Survey", 2009, section 3.1: maximum entropy); here the unit is a
slice along the annotation axis, scored by its mean voxel entropy, because a clinician annotates whole slices.
No MRML, no Qt: numpy and SimpleITK only.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.volume import Volume


def read_probabilities(path: str | os.PathLike, shape: tuple[int, int, int] | None = None) -> Volume:
    """Read the CLI's probability file as a Volume whose array is (C, k, j, i), background first.

    The library writes a 4D scalar image whose fourth (last ITK) axis is the class (``write_volume`` of a
    (C, k, j, i) array); a vector image with one component per class, as other tools write, is accepted too.
    ``shape`` (k, j, i), when given, must match the spatial shape.
    """
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1 and array.ndim == 4:
        array = np.moveaxis(array, -1, 0)  # (k, j, i, C) -> (C, k, j, i)
        spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    elif image.GetDimension() == 4:
        # (C, k, j, i) already; keep the spatial part of the 4D geometry.
        spacing, origin = image.GetSpacing()[:3], image.GetOrigin()[:3]
        direction4 = np.asarray(image.GetDirection()).reshape(4, 4)
        direction = tuple(direction4[:3, :3].reshape(-1))
    else:
        raise InputError(f"probability file {path} has one class; expected one component per class")
    if shape is not None and array.shape[1:] != tuple(shape):
        raise InputError(f"probability file {path} has shape {array.shape[1:]}, the volume {tuple(shape)}")
    return Volume(array.astype(np.float32, copy=False), tuple(spacing), tuple(origin), tuple(direction))


def normalized_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Voxel-wise entropy of (C, ...) class probabilities divided by log(C): 0 = certain, 1 = uniform.

    Probabilities are clipped to [1e-7, 1] and renormalised, so rounding in the file cannot give NaN.
    """
    if probabilities.ndim < 2 or probabilities.shape[0] < 2:
        raise ValueError(f"need (C, ...) probabilities with C >= 2, got shape {probabilities.shape}")
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1.0)
    p /= p.sum(axis=0, keepdims=True)
    return (-(p * np.log(p)).sum(axis=0) / np.log(p.shape[0])).astype(np.float32)


def slice_scores(entropy: np.ndarray, axis: int) -> np.ndarray:
    """Mean entropy of every slice along ``axis`` of a (k, j, i) entropy map."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (k, j, i), got {axis}")
    other = tuple(a for a in range(3) if a != axis)
    return entropy.mean(axis=other)


def suggest_slice(entropy: np.ndarray, axis: int, annotated: Iterable[int] = ()) -> tuple[int, float]:
    """(slice index, its mean entropy): the most uncertain slice along ``axis`` that is not annotated yet.

    Raises InputError when every slice is annotated.
    """
    return best_slice(slice_scores(entropy, axis), annotated)


def best_slice(scores, annotated: Iterable[int] = ()) -> tuple[int, float]:
    """(slice index, score) of the highest score among the slices not in ``annotated``. Raises InputError when
    every slice is annotated."""
    scores = np.array(scores, dtype=np.float64)
    taken = [s for s in annotated if 0 <= s < scores.size]
    scores[taken] = -np.inf
    if np.isneginf(scores).all():
        raise InputError("every slice is annotated already; nothing to suggest")
    best = int(np.argmax(scores))
    return best, float(scores[best])
