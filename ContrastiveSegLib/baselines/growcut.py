"""Slicer's "Grow from seeds" Segment Editor effect, run outside Slicer on the same sparse labels.

The effect drives ``vtkImageGrowCutSegment`` (Fast GrowCut: Zhu et al., "An effective interactive medical
image segmentation method using Fast GrowCut", MICCAI 2014 IMIC workshop): every unlabelled voxel takes the
label of the seed with the shortest path to it, a path's cost being the sum of absolute intensity differences
between neighbouring voxels (26-neighbourhood, Dijkstra). The ``slicer-core`` wheel ships the very class, so
this baseline is what a Slicer user gets, not a re-implementation.

How the benchmark's sparse labels become seeds, as in Slicer: each structure is a segment, and the
unlabelled part of every annotated slice is one more segment ("background"), because grow-cut needs a
competing seed to stop a structure from filling the volume. What the effect does around the class, reproduced:

- seed locality factor (the class's distance penalty) 0.0, the effect's default;
- the computation is confined to the seeds' bounding box grown by ``extent_growth_ratio`` of its size on each
  side (at least 3 voxels; ``AbstractScriptedSegmentEditorAutoCompleteEffect``), and voxels outside it stay
  unlabelled (background). A first "Initialize" in a fresh Slicer session grows the box by 0.1; later
  previews by 0.5. With one annotated slice the box is then only 7 slices thick: that is Slicer's behaviour,
  not a bug here. ``extent_growth_ratio=None`` lets the seeds grow through the whole volume instead.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ContrastiveSegLib.baselines.common import check_spacing, compact_labels
from ContrastiveSegLib.errors import InputError

INSTALL_HINT = "Grow from seeds needs Slicer's grow-cut class: pip install slicer-core"
SLICER_MIN_MARGIN = 3  # voxels; AbstractScriptedSegmentEditorAutoCompleteEffect.minimumExtentMargin
SLICER_INITIAL_GROWTH_RATIO = 0.1  # AbstractScriptedSegmentEditorAutoCompleteEffect.extentGrowthRatio


def _growcut_class():
    """``vtkImageGrowCutSegment`` from the slicer-core wheel (or from a running Slicer)."""
    try:
        import slicer  # the slicer-core wheel's meta-package, or the Slicer application's module
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    cls = getattr(slicer, "vtkImageGrowCutSegment", None)
    if cls is None:
        try:  # inside the Slicer application the class lives in the module logic's Python module
            from vtkSlicerSegmentationsModuleLogicPython import vtkImageGrowCutSegment as cls
        except ImportError as error:
            raise ImportError(INSTALL_HINT) from error
    return cls


def _to_vtk(array: np.ndarray, spacing: Sequence[float]):
    """A vtkImageData holding a copy of the (z, y, x) ``array``; VTK's x index varies fastest, as in C order."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    image = vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.SetSpacing(*spacing)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def _seed_box(seeds: np.ndarray, ratio: float | None) -> tuple[slice, slice, slice]:
    """The region the effect computes in: the seeds' bounding box plus a margin, clipped to the volume."""
    if ratio is None:
        return (slice(None),) * 3
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(seeds.any(axis=other))
        low, high = int(present[0]), int(present[-1])
        margin = int(max(SLICER_MIN_MARGIN, ratio * (high - low)))
        box.append(slice(max(0, low - margin), min(seeds.shape[axis], high + margin + 1)))
    return tuple(box)  # type: ignore[return-value]


def grow_from_seeds(image: np.ndarray, sparse_labels: np.ndarray, axis: int,
                    spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                    extent_growth_ratio: float | None = SLICER_INITIAL_GROWTH_RATIO) -> np.ndarray:
    """Segment the volume by Slicer's "Grow from seeds" from the annotated slices.

    Args:
        image: (z, y, x) intensities.
        sparse_labels: (z, y, x) integer labels: annotated slices along ``axis`` fully labelled (0 =
            background there), 0 elsewhere; 255 = not annotated.
        axis: the annotation axis of the array.
        spacing: voxel size (x, y, z) in mm, given to VTK as Slicer does (it does not change the result with
            the default seed locality of 0).
        extent_growth_ratio: margin around the seeds' bounding box, as a fraction of its size (see the module
            docstring); None computes in the whole volume.
    Returns:
        (z, y, x) label map with the input's label values and dtype; 0 = background.
    Raises:
        ImportError: slicer-core is not installed (the message says what to pip install).
        InputError: shapes differ, the image is not finite, nothing is annotated, or a side is under 3 voxels.
    """
    growcut = _growcut_class()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape != np.shape(sparse_labels):
        raise InputError(f"image {image.shape} and labels {np.shape(sparse_labels)} must be 3D and the same shape")
    if min(image.shape) < 3:
        raise InputError(f"grow from seeds needs at least 3 voxels along every axis, got {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
        raise InputError("the image must hold finite numbers")
    if extent_growth_ratio is not None and not extent_growth_ratio >= 0:
        raise ValueError(f"extent_growth_ratio must be >= 0 or None, got {extent_growth_ratio}")
    spacing = check_spacing(spacing)
    labels = compact_labels(sparse_labels, axis)
    background = len(labels.values) + 1
    if background > np.iinfo(np.int16).max:
        raise InputError(f"too many structures for a Slicer labelmap: {len(labels.values)}")

    # Seed labelmap as Slicer merges it (VTK_SHORT): structures 1..C, the rest of each annotated slice C + 1,
    # 0 = to be grown into. Explicitly ignored voxels (255) stay 0.
    seeds = labels.compact.astype(np.int16)
    sparse = np.asarray(sparse_labels)
    index = [slice(None)] * 3
    for s in labels.slices:
        index[axis] = int(s)
        seeds[tuple(index)][sparse[tuple(index)] == 0] = background
    box = _seed_box(seeds, extent_growth_ratio)
    if min(seeds[box].shape) < 3:
        raise InputError(f"the seeds' region {seeds[box].shape} is under 3 voxels thick")

    segmenter = growcut()
    segmenter.SetIntensityVolume(_to_vtk(image[box].astype(np.float32), spacing))
    segmenter.SetSeedLabelVolume(_to_vtk(seeds[box], spacing))
    segmenter.SetDistancePenalty(0.0)  # "Seed locality" slider, default 0 in the effect
    segmenter.Update()
    output = segmenter.GetOutput()
    if output is None or output.GetPointData().GetScalars() is None:
        raise RuntimeError("vtkImageGrowCutSegment produced no output")
    from vtkmodules.util import numpy_support

    grown = numpy_support.vtk_to_numpy(output.GetPointData().GetScalars()).reshape(seeds[box].shape)
    classes = np.zeros(seeds.shape, np.int16)
    classes[box] = grown
    return labels.restore(classes)
