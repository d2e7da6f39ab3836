"""Voxel-grid geometry between Slicer (RAS, one IJK-to-RAS matrix) and ITK files (LPS, spacing/origin/direction).

Slicer keeps a volume's geometry as a 4x4 IJKToRAS matrix in RAS world coordinates; ITK, SimpleITK and the
library's files use spacing, origin and a direction matrix in LPS. The two differ by a flip of the first two
world axes, ``F = diag(-1, -1, 1)``::

    IJKToRAS[:3, :3] = F @ direction @ diag(spacing)        IJKToRAS[:3, 3] = F @ origin

No MRML and no ``slicer`` import here: this is plain numpy, tested without Slicer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# LPS <-> RAS: negate the first two world axes (the flip is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# Two grids are the same when spacing agrees to this relative tolerance, direction cosines to this absolute
# one, and the origin offset is a whole number of voxels to this fraction of a voxel. Files round geometry
# (NRRD and NIfTI keep ~7 significant digits), so exact equality is too strict.
_SPACING_RTOL = 1e-4
_DIRECTION_ATOL = 1e-4
_VOXEL_ATOL = 1e-3


@dataclass(frozen=True)
class Grid:
    """A voxel grid in ITK conventions (what :class:`ContrastiveSegLib.io.volume.Volume` stores).

    Attributes:
        spacing: voxel size in mm, (x, y, z) = (i, j, k) order.
        origin: LPS position of voxel (0, 0, 0) in mm.
        direction: 3x3 row-major direction cosines in LPS; column ``c`` is the direction of voxel axis ``c``.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def ijk_to_ras(self) -> np.ndarray:
        """The 4x4 matrix Slicer's ``vtkMRMLVolumeNode.SetIJKToRASMatrix`` takes."""
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        matrix = np.eye(4)
        matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(np.asarray(self.spacing, dtype=float))
        matrix[:3, 3] = LPS_TO_RAS @ np.asarray(self.origin, dtype=float)
        return matrix

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray) -> Grid:
        """The inverse of :meth:`ijk_to_ras`. Raises ValueError for a matrix with a zero-length or sheared axis."""
        matrix = np.asarray(matrix, dtype=float)
        if matrix.shape != (4, 4):
            raise ValueError(f"IJKToRAS must be 4x4, got shape {matrix.shape}")
        scaled = matrix[:3, :3]
        spacing = np.linalg.norm(scaled, axis=0)
        if np.any(spacing <= 0):
            raise ValueError(f"IJKToRAS has a zero-length voxel axis: spacing {spacing.tolist()}")
        direction_ras = scaled / spacing
        if not np.allclose(direction_ras.T @ direction_ras, np.eye(3), atol=1e-4):
            raise ValueError("IJKToRAS axes are not orthogonal (sheared grid); resample the volume first")
        direction = LPS_TO_RAS @ direction_ras
        origin = LPS_TO_RAS @ matrix[:3, 3]
        return cls(tuple(float(v) for v in spacing), tuple(float(v) for v in origin),
                   tuple(float(v) for v in direction.reshape(-1)))


def voxel_offset(reference: np.ndarray, other: np.ndarray) -> np.ndarray | None:
    """Where voxel (0, 0, 0) of grid ``other`` falls in voxel (i, j, k) coordinates of ``reference``.

    Both arguments are 4x4 IJKToRAS matrices. Returns the integer offset when the grids are aligned (same
    spacing and axis directions, origins a whole number of voxels apart), so that every voxel of one grid is a
    voxel of the other, or None when they are not (resampling would mix neighbouring slices).
    """
    reference = np.asarray(reference, dtype=float)
    other = np.asarray(other, dtype=float)
    ref_spacing = np.linalg.norm(reference[:3, :3], axis=0)
    other_spacing = np.linalg.norm(other[:3, :3], axis=0)
    if not np.allclose(ref_spacing, other_spacing, rtol=_SPACING_RTOL, atol=0):
        return None
    if not np.allclose(reference[:3, :3] / ref_spacing, other[:3, :3] / other_spacing, atol=_DIRECTION_ATOL):
        return None
    offset = np.linalg.solve(reference[:3, :3], other[:3, 3] - reference[:3, 3])
    rounded = np.round(offset)
    if not np.allclose(offset, rounded, atol=_VOXEL_ATOL):
        return None
    return rounded.astype(int)


def describe_axis(ijk_to_ras: np.ndarray, axis: int) -> str:
    """The anatomical plane of the slices along array ``axis`` (0 = k, 1 = j, 2 = i): axial, coronal or sagittal.

    A slice along voxel axis ``c`` is normal to that axis' direction; the direction's largest RAS component
    names the plane (R/L normal: sagittal, A/P: coronal, S/I: axial), as Slicer's slice views do.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (k, j, i), got {axis}")
    column = 2 - axis  # array axes are (k, j, i); matrix columns are (i, j, k)
    normal = np.abs(np.asarray(ijk_to_ras, dtype=float)[:3, column])
    return ("sagittal", "coronal", "axial")[int(np.argmax(normal))]


def slice_center_ras(ijk_to_ras: np.ndarray, shape: tuple[int, int, int], axis: int, index: int) -> np.ndarray:
    """RAS position of the centre of slice ``index`` along array ``axis`` of a (k, j, i) volume: where to jump
    the slice views to show that slice."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (k, j, i), got {axis}")
    if not 0 <= index < shape[axis]:
        raise ValueError(f"slice {index} is outside 0..{shape[axis] - 1} along axis {axis}")
    center_kji = [(n - 1) / 2.0 for n in shape]
    center_kji[axis] = float(index)
    return (np.asarray(ijk_to_ras, dtype=float) @ np.array([*center_kji[::-1], 1.0]))[:3]
