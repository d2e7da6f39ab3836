"""Which slices of a sparse label map are annotated, and along which axis.

Convention (the CLI's and the Slicer module's): a slice along the annotation axis that holds any non-zero,
non-ignore voxel is annotated, and its zero voxels are background there. Voxels equal to :data:`IGNORE` (255)
are explicitly "not annotated" (partial slices, scribbles). Everything off the annotated slices is unknown.
Arrays are (z, y, x); ``axis`` is an axis of the array.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ContrastiveSegLib.errors import InputError

IGNORE = 255


def _labelled(labels: np.ndarray) -> np.ndarray:
    return (labels != 0) & (labels != IGNORE)


def find_annotation_axis(labels: np.ndarray) -> int:
    """The axis along which the labelled voxels fall in the fewest slices (ties: the last axis, i.e. z)."""
    labelled = _labelled(labels)
    if not labelled.any():
        raise InputError("no annotated slice: the label map holds no labelled voxel")
    counts = []
    for axis in range(labels.ndim):
        other = tuple(a for a in range(labels.ndim) if a != axis)
        counts.append(int(labelled.any(axis=other).sum()))
    # Prefer axis 0 (slices of the array's first axis, i.e. axial for most scans) on ties.
    return int(np.argmin(counts))


def annotated_slice_indices(labels: np.ndarray, axis: int) -> np.ndarray:
    """Sorted indices of the slices along ``axis`` that hold a labelled voxel."""
    other = tuple(a for a in range(labels.ndim) if a != axis)
    return np.flatnonzero(_labelled(labels).any(axis=other))


@dataclass(frozen=True)
class SparseAnnotation:
    """A sparse label map decoded into training targets.

    Attributes:
        axis: annotation axis of the (z, y, x) array.
        slices: indices of the annotated slices along ``axis``.
        label_values: the user's label values, background (0) first; class ``c`` of the network is
            ``label_values[c]``.
        target: uint8 array, same shape as the labels: class index on annotated voxels, :data:`IGNORE` elsewhere
            (one byte per voxel keeps a 512 x 512 x 300 CT's targets at 79 MB).
    """

    axis: int
    slices: np.ndarray
    label_values: tuple[int, ...]
    target: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.label_values)


def decode_annotation(labels: np.ndarray, axis: int | None = None) -> SparseAnnotation:
    """Check a sparse label map and turn it into per-voxel class targets with an ignore value.

    Raises InputError (one line) for non-integer labels, no annotated slice, or an axis out of range.
    """
    if labels.ndim != 3:
        raise InputError(f"labels must be a 3D volume, got {labels.ndim}D of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating):
            finite = np.isfinite(labels)
            if not finite.all() or not np.array_equal(labels, np.round(labels)):
                raise InputError("labels are not integers: a label map must hold whole numbers (0 = background)")
        else:
            raise InputError(f"labels must hold integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise InputError(f"labels must be >= 0, found {int(labels.min())}")
    if axis is None:
        axis = find_annotation_axis(labels)
    elif axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    slices = annotated_slice_indices(labels, axis)
    if slices.size == 0:
        raise InputError("no annotated slice: the label map holds no labelled voxel")
    values = sorted(int(v) for v in np.unique(labels) if v not in (0, IGNORE))
    label_values = (0, *values)
    if len(label_values) >= IGNORE:
        raise InputError(f"labels hold {len(values)} structures; at most {IGNORE - 2} are supported")
    # Classes by position in the sorted value list (searchsorted, not a lookup table, so a label value of 10^9
    # costs nothing); IGNORE is not in the list and is restored after.
    target = np.full(labels.shape, IGNORE, dtype=np.uint8)
    index = [slice(None)] * 3
    for s in slices:
        index[axis] = int(s)
        region = labels[tuple(index)]
        classes = np.searchsorted(np.asarray(label_values), region)
        classes[region == IGNORE] = IGNORE
        target[tuple(index)] = classes
    return SparseAnnotation(axis=int(axis), slices=slices, label_values=label_values, target=target)
