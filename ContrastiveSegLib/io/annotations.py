"""Which slices of a sparse label map are annotated, in which planes.

Convention (the CLI's and the Slicer module's): a painted slice is annotated, and its zero voxels are background
there. Voxels equal to :data:`IGNORE` (255) are explicitly "not annotated" (partial slices, scribbles).
Everything off the painted slices is unknown. Arrays are (z, y, x); ``axis`` is an axis of the array.

Slices may be painted in several planes at once (a few axial slices and a coronal one, as Slicer users do): the
painted planes are recovered from the label map alone (:func:`find_painted_planes`), and each painted slice, in
whichever plane, is annotated. The *annotation axis* (the one the 2.5D network slices along) is the plane with
the most painted slices; along it, the slices that another plane's painting crosses are partly annotated (the
crossing lines), which training uses like any other annotated voxel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ContrastiveSegLib.errors import InputError

IGNORE = 255


def _labelled(labels: np.ndarray) -> np.ndarray:
    return (labels != 0) & (labels != IGNORE)


def find_annotation_axis(labels: np.ndarray) -> int:
    """The axis along which the labelled voxels fall in the fewest slices (ties: array axis 0, i.e. axial for most
    scans): the single-plane rule, used when the painting needs no second plane."""
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


def _has_square(marked: np.ndarray, axis: int) -> np.ndarray:
    """(n,) bool per slice along ``axis``: the slice holds a 2 x 2 square of marked voxels in its plane, i.e. a
    painted area, not only the one-voxel-thin line where a slice painted in another plane crosses it."""
    moved = np.moveaxis(marked, axis, 0)
    square = moved[:, :-1, :-1] & moved[:, 1:, :-1] & moved[:, :-1, 1:] & moved[:, 1:, 1:]
    return square.reshape(len(moved), -1).any(axis=1)


def find_painted_planes(labels: np.ndarray) -> dict[int, np.ndarray]:
    """The painted slices of a label map, per axis: {axis: sorted slice indices}, only axes with a painted slice.

    A greedy set cover of the labelled voxels (non-zero and not :data:`IGNORE`; a map that marks every unknown
    voxel 255 would otherwise make the whole volume a candidate): repeatedly take the slice, in any plane, that
    holds the most labelled voxels not yet explained, among slices holding a painted area (:func:`_has_square`),
    until every labelled voxel is explained.
    A painted slice holds a whole cross-section, while another plane's painting meets it in a thin line, so the
    painted slices are taken first. When the cover needs one plane only, or no cover is found (structures one
    voxel thin), this is the single-plane rule: every slice along :func:`find_annotation_axis` holding a labelled
    voxel.
    """
    marked = _labelled(labels)
    if not marked.any():
        raise InputError("no annotated slice: the label map holds no labelled voxel")
    eligible = [_has_square(marked, axis) for axis in range(3)]
    points = np.argwhere(marked).astype(np.int32)  # half the memory of int64 on a large painted volume
    uncovered = np.ones(len(points), bool)
    chosen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    single = find_annotation_axis(labels)
    limit = len(annotated_slice_indices(labels, single))  # a cover larger than the single-plane one is no better
    while uncovered.any() and sum(map(len, chosen.values())) < limit:
        best = None
        for axis in range(3):
            counts = np.bincount(points[uncovered, axis], minlength=labels.shape[axis])
            counts[~eligible[axis]] = 0
            s = int(np.argmax(counts))
            if counts[s] and (best is None or counts[s] > best[2]):
                best = (axis, s, int(counts[s]))
        if best is None:
            break
        chosen[best[0]].append(best[1])
        uncovered &= points[:, best[0]] != best[1]
    planes = {axis: np.array(sorted(picked)) for axis, picked in chosen.items() if picked}
    if uncovered.any() or len(planes) < 2:
        return {single: annotated_slice_indices(labels, single)}
    return planes


def main_axis(planes: dict[int, np.ndarray]) -> int:
    """The annotation axis of painted planes ({axis: slices}, as :func:`find_painted_planes` gives them): the
    plane with the most painted slices (ties: the lower array axis, i.e. axial for most scans). The Slicer
    bridge calls this too, so that its summary names the axis the CLI will slice along."""
    return int(max(planes, key=lambda a: (len(planes[a]), -a)))


@dataclass(frozen=True)
class SparseAnnotation:
    """A sparse label map decoded into training targets.

    Attributes:
        axis: annotation axis of the (z, y, x) array (the plane with the most painted slices).
        slices: indices of the slices along ``axis`` that hold an annotated voxel: the painted ones, and those
            that a slice painted in another plane crosses.
        label_values: the user's label values, background (0) first; class ``c`` of the network is
            ``label_values[c]``.
        target: uint8 array, same shape as the labels: class index on annotated voxels, :data:`IGNORE` elsewhere
            (one byte per voxel keeps a 512 x 512 x 300 CT's targets at 79 MB).
        planes: the painted slices per axis, ``{axis: indices}``; a single-plane annotation has ``{axis: slices}``.
    """

    axis: int
    slices: np.ndarray
    label_values: tuple[int, ...]
    target: np.ndarray
    planes: dict = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.planes is None:
            object.__setattr__(self, "planes", {self.axis: np.asarray(self.slices)})

    @property
    def num_classes(self) -> int:
        return len(self.label_values)

    @property
    def painted(self) -> np.ndarray:
        """The painted slices along :attr:`axis` (without the slices only crossed by another plane)."""
        return np.asarray(self.planes.get(self.axis, ()), dtype=int)


def decode_annotation(labels: np.ndarray, axis: int | None = None,
                      label_values: tuple[int, ...] | None = None) -> SparseAnnotation:
    """Check a sparse label map and turn it into per-voxel class targets with an ignore value.

    Args:
        labels: (z, y, x) sparse label map.
        axis: force this annotation axis (single plane); None finds the painted planes.
        label_values: the classes to decode against (a saved model's, background first); None takes the values
            present in ``labels``. A value outside them is an InputError.
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
        planes = find_painted_planes(labels)
        axis = main_axis(planes)
    elif axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    else:
        planes = {axis: annotated_slice_indices(labels, axis)}
    if planes[axis].size == 0:
        raise InputError("no annotated slice: the label map holds no labelled voxel")
    values = sorted(int(v) for v in np.unique(labels) if v not in (0, IGNORE))
    if label_values is not None:
        unknown = sorted(set(values) - set(label_values))
        if unknown:
            raise InputError(f"labels hold values {unknown} that the model does not know (model classes "
                             f"{list(label_values)})")
        values = [int(v) for v in label_values if v != 0]
    label_values = (0, *values)
    if len(label_values) >= IGNORE:
        raise InputError(f"labels hold {len(values)} structures; at most {IGNORE - 2} are supported")
    # Classes by position in the sorted value list (searchsorted, not a lookup table, so a label value of 10^9
    # costs nothing); IGNORE is not in the list and is restored after.
    target = np.full(labels.shape, IGNORE, dtype=np.uint8)
    table = np.asarray(label_values)
    for plane, plane_slices in planes.items():
        index = [slice(None)] * 3
        for s in plane_slices:
            index[plane] = int(s)
            region = labels[tuple(index)]
            classes = np.searchsorted(table, region)
            classes[region == IGNORE] = IGNORE
            target[tuple(index)] = classes
    other = tuple(a for a in range(3) if a != axis)
    slices = np.flatnonzero((target != IGNORE).any(axis=other))
    return SparseAnnotation(axis=int(axis), slices=slices, label_values=label_values, target=target,
                            planes={int(a): np.asarray(v, dtype=int) for a, v in planes.items()})
