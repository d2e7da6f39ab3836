"""Input checks and label bookkeeping shared by the Slicer baselines.

Both baselines take the benchmark's sparse label map: (z, y, x) integers where the annotated slices along
``axis`` are fully labelled (0 = background there) and every other voxel is 0 (unknown); 255
(:data:`~ContrastiveSegLib.io.annotations.IGNORE`) marks voxels explicitly left unannotated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.annotations import IGNORE, annotated_slice_indices


@dataclass(frozen=True)
class CompactLabels:
    """The sparse labels renumbered 1..C (C = number of structures), the form Slicer's merged labelmap has.

    Attributes:
        compact: same shape as the input, class index 1..C on labelled voxels, 0 elsewhere (IGNORE included).
        values: the user's label values; ``values[c - 1]`` is class ``c``.
        slices: indices of the annotated slices along the axis.
        dtype: the input's integer dtype (bool becomes uint8), which :meth:`restore` returns.
    """

    compact: np.ndarray
    values: tuple[int, ...]
    slices: np.ndarray
    dtype: np.dtype

    def restore(self, classes: np.ndarray) -> np.ndarray:
        """Map class indices 1..C back to the user's values, in the input's dtype; 0 and anything above C
        (a background seed label) become 0."""
        lookup = np.zeros(max(int(classes.max(initial=0)), len(self.values)) + 1, dtype=self.dtype)
        lookup[1:len(self.values) + 1] = self.values
        return lookup[classes]


def check_axis(axis: int) -> int:
    """``axis`` as an int, or InputError unless it is 0, 1 or 2."""
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2 (an axis of the (z, y, x) array), got {axis}")
    return int(axis)


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """``spacing`` as three floats, or InputError unless they are three finite positive sizes."""
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(s) and s > 0 for s in values):
        raise InputError(f"spacing must be three positive sizes (x, y, z) in mm, got {tuple(spacing)}")
    return values  # type: ignore[return-value]


def compact_labels(sparse_labels: np.ndarray, axis: int) -> CompactLabels:
    """Check a sparse label map and renumber its structures 1..C.

    Raises InputError for a non-3D or non-integer map, negative values, or no labelled voxel.
    """
    labels = np.asarray(sparse_labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be a 3D (z, y, x) array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(f"labels must hold integers, got dtype {labels.dtype}")
    dtype = np.dtype(np.uint8) if labels.dtype == bool else labels.dtype
    labels = labels.astype(np.int64, copy=False)
    if labels.size and labels.min() < 0:
        raise InputError(f"labels must be >= 0, found {int(labels.min())}")
    slices = annotated_slice_indices(labels, check_axis(axis))
    if slices.size == 0:
        raise InputError("no annotated slice: the label map holds no labelled voxel")
    values = tuple(int(v) for v in np.unique(labels) if v not in (0, IGNORE))
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    lookup[list(values)] = np.arange(1, len(values) + 1)
    compact = lookup[labels]  # IGNORE (when present) maps to 0: unknown, like an unannotated voxel
    return CompactLabels(compact=compact, values=values, slices=slices, dtype=dtype)
