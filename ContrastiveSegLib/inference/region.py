"""Where a structure can be: the box of slices, rows and columns that prediction has to look at.

On a CT-sized scan most slices lie far from anything painted (a 512 x 512 x 300 CT with organs painted on three
slices spent 156 s of its 258 s predicting every slice), and what the network finds there is thrown away anyway:
post-processing keeps only components that touch a painted voxel of their class
(:func:`~ContrastiveSegLib.inference.postprocess.keep_annotated_components`), and the shape prior tapers a
structure off beyond the outermost painted slices. So prediction runs only inside a box around the painting, and
everything outside it is background.

Per foreground class, the box of its painted voxels (every painted plane: a slice painted across the annotation
axis extends the box along it) grows

- in-plane by :data:`MARGIN_MM` plus :data:`INPLANE_FRACTION` of its painted extent on each side (between two
  painted slices an outline can widen beyond both: a ball painted at 10 % and 90 % of its height is 1.67 times
  wider half way: a fraction of 0.25 cut off 5 % of an organ phantom's voxels at two painted slices);
- along the annotation axis, as far as the shape prior reaches: up to the nearest fully painted slice on which
  the class is absent (the prior makes it vanish before that slice) plus :data:`MARGIN_MM`; beyond the outermost
  painted slices, by :data:`MARGIN_MM` plus :data:`AXIAL_FRACTION` of its painted span (the benchmark paints
  between 10 % and 90 % of a structure's extent, so it reaches 1/8 of the span beyond each end slice; the fraction
  is twice that) or plus half its in-plane size, whichever is larger (the prior's rounded end: its outline shrinks
  by a mm per mm beyond the end slice, gone after about the structure's half width).

With fewer than :data:`MIN_PAINTED` fully painted slices there is no prior to tell how far a structure reaches,
and the region is the whole volume.

The classes' boxes are merged into one (their bounding box). A class without any painted voxel could be anywhere:
then the region is the whole volume, as before. On the benchmark's tasks at k = 2, 3 and 5 the region holds every
reference voxel except at k = 2 on the organ phantom (3 % outside, where the outlines widen most between the two
painted slices); there the default found none of them either (benchmarks/results/region.md: no label changes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ContrastiveSegLib.io.annotations import IGNORE

MARGIN_MM = 15.0  # added on every side in every direction
INPLANE_FRACTION = 0.5  # of a class's painted extent (rows, columns), each side
AXIAL_FRACTION = 0.25  # of a class's painted span along the annotation axis, each side
MIN_PAINTED = 2  # fully painted slices along the axis below which the region is the whole volume


@dataclass(frozen=True)
class Region:
    """A box in stack order (slices along the annotation axis first): half-open ``[start, stop)`` bounds.

    Attributes:
        slices, rows, columns: (start, stop) index bounds along the stack's axes 0, 1, 2.
    """

    slices: tuple[int, int]
    rows: tuple[int, int]
    columns: tuple[int, int]

    @classmethod
    def whole(cls, shape: tuple[int, int, int]) -> "Region":
        """The region covering a whole (S, H, W) stack."""
        return cls((0, int(shape[0])), (0, int(shape[1])), (0, int(shape[2])))

    def is_whole(self, shape: tuple[int, int, int]) -> bool:
        return self == Region.whole(shape)

    @property
    def box(self) -> tuple[slice, slice, slice]:
        """The region as an index into a stack-ordered (S, H, W) array."""
        return slice(*self.slices), slice(*self.rows), slice(*self.columns)

    def mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        """(S, H, W) bool: True inside the region."""
        inside = np.zeros(shape, dtype=bool)
        inside[self.box] = True
        return inside


def _grow(low: int, high: int, cells: float, size: int) -> tuple[int, int]:
    """Half-open bounds of the voxels ``low..high`` (inclusive) grown by ``cells`` voxels each side (rounded up),
    clipped to ``[0, size)``."""
    step = math.ceil(cells - 1e-9)
    return max(0, int(low) - step), min(size, int(high) + 1 + step)


def fully_painted(targets: np.ndarray) -> np.ndarray:
    """Sorted indices (axis 0) of the slices of (S, H, W) ``targets`` with every voxel annotated (no IGNORE)."""
    return np.flatnonzero((targets != IGNORE).reshape(len(targets), -1).all(axis=1))


def _axial_bounds(s0: int, s1: int, painted: np.ndarray, reach_mm: float, slice_mm: float,
                  size: int) -> tuple[int, int]:
    """Half-open bounds along the annotation axis of a class painted from slice ``s0`` to ``s1``: on each side, up
    to the nearest fully painted slice where it is absent (the prior makes it vanish before that slice) plus
    :data:`MARGIN_MM`; with no such slice, ``reach_mm`` plus :data:`MARGIN_MM` beyond its outermost painted
    voxel."""
    margin = math.ceil(MARGIN_MM / slice_mm - 1e-9)
    reach = math.ceil((MARGIN_MM + reach_mm) / slice_mm - 1e-9)
    below, above = painted[painted < s0], painted[painted > s1]
    low = int(below[-1]) - margin if len(below) else s0 - reach
    high = int(above[0]) + margin if len(above) else s1 + reach
    return max(0, low), min(size, high + 1)


def prediction_region(targets: np.ndarray, num_classes: int, inplane_spacing: tuple[float, float],
                      slice_mm: float) -> Region:
    """The region where prediction runs (module text), from a case's targets.

    Args:
        targets: (S, H, W) class indices in stack order (slices along the annotation axis first), IGNORE where
            unknown.
        num_classes: classes including background.
        inplane_spacing: (row, column) voxel size in mm of the slices.
        slice_mm: voxel size along the annotation axis in mm.
    Returns:
        the merged :class:`Region`; the whole stack when fewer than :data:`MIN_PAINTED` slices are fully painted or
        a foreground class has no painted voxel.
    """
    shape = targets.shape
    painted = fully_painted(targets)
    if len(painted) < MIN_PAINTED:  # no prior: nothing tells how far a structure reaches along the axis
        return Region.whole(shape)
    row_mm, column_mm = (float(v) for v in inplane_spacing)
    boxes = []
    for cls in range(1, num_classes):
        points = np.argwhere(targets == cls)
        if len(points) == 0:
            return Region.whole(shape)
        (s0, r0, c0), (s1, r1, c1) = points.min(axis=0), points.max(axis=0)
        height_mm, width_mm = (r1 - r0 + 1) * row_mm, (c1 - c0 + 1) * column_mm
        rows = _grow(r0, r1, (MARGIN_MM + INPLANE_FRACTION * height_mm) / row_mm, shape[1])
        columns = _grow(c0, c1, (MARGIN_MM + INPLANE_FRACTION * width_mm) / column_mm, shape[2])
        reach_mm = max(AXIAL_FRACTION * (s1 - s0) * slice_mm, 0.5 * max(height_mm, width_mm))
        boxes.append((_axial_bounds(int(s0), int(s1), painted, reach_mm, slice_mm, shape[0]), rows, columns))
    if not boxes:
        return Region.whole(shape)
    merged = [(int(min(b[a][0] for b in boxes)), int(max(b[a][1] for b in boxes))) for a in range(3)]
    return Region(*merged)


def region_of_case(targets: np.ndarray | None, num_classes: int, axis: int, spacing, shape) -> Region:
    """:func:`prediction_region` of a case's ``targets`` on a scan of ``spacing`` (x, y, z) mm, slices along array
    axis ``axis``; the whole (S, H, W) ``shape`` without targets."""
    if targets is None:
        return Region.whole(shape)
    spacing_zyx = tuple(float(v) for v in spacing)[::-1]
    inplane = tuple(v for a, v in enumerate(spacing_zyx) if a != axis)
    return prediction_region(targets, num_classes, inplane, spacing_zyx[axis])
