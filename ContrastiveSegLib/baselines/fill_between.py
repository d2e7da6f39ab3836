"""Slicer's "Fill between slices" Segment Editor effect, run outside Slicer on the same sparse labels.

The effect runs ITK's MorphologicalContourInterpolator (Zukić et al., "ND morphological contour interpolation",
Insight Journal 2016; Albu et al., IEEE TBME 2008) once on the merged labelmap of all segments: each label is
interpolated on its own between the slices that hold it, by morphological erosion/dilation of the contours
from one slice to the next, and the labels are merged back. Nothing is drawn before the first or after the
last slice that holds a label, and one annotated slice gives nothing new.

Settings are those of Slicer's ``vtkITKMorphologicalContourInterpolator`` wrapper, which the effect leaves at
their defaults: all labels at once (label 0), heuristic alignment on, distance-transform interpolation off,
cross structuring element. The effect lets ITK pick the axis; here it is the annotation axis (the same
result when slices are annotated along one axis, and less work).

Runs on ITK's Python wrapping (itk-morphologicalcontourinterpolation) rather than the slicer-core wheel's copy
of the wrapper (identical output, checked in the tests): ITK's filter corrupts the heap when its
non-distance-transform path runs on several threads (a crash at exit, or later), and only the Python wrapping
lets us run it on one thread. It takes a fraction of a second even so.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ContrastiveSegLib.baselines.common import check_spacing, compact_labels

INSTALL_HINT = "Fill between slices needs ITK's contour interpolator: pip install itk-morphologicalcontourinterpolation"


def _interpolator_class():
    """ITK's MorphologicalContourInterpolator (its first use loads ITK's wrapping: several seconds)."""
    try:
        import itk
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    try:
        return itk.MorphologicalContourInterpolator
    except AttributeError as error:  # ITK present without the remote module
        raise ImportError(INSTALL_HINT) from error


def fill_between_slices(sparse_labels: np.ndarray, axis: int,
                        spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Interpolate every structure between the annotated slices, as Slicer's "Fill between slices" does.

    Args:
        sparse_labels: (z, y, x) integer labels: annotated slices along ``axis`` fully labelled (0 =
            background there), 0 elsewhere; 255 = not annotated (treated as background, as Slicer has no
            such value).
        axis: the annotation axis of the array.
        spacing: voxel size (x, y, z) in mm, given to ITK as Slicer does (the settings used ignore it).
    Returns:
        (z, y, x) label map with the input's label values and dtype; 0 = background.
    Raises:
        ImportError: itk-morphologicalcontourinterpolation is not installed (the message says what to install).
        InputError: not a 3D integer map, or nothing annotated.
    """
    interpolator_class = _interpolator_class()
    import itk

    spacing = check_spacing(spacing)
    labels = compact_labels(sparse_labels, axis)
    pixel = np.uint8 if len(labels.values) < 255 else np.uint16  # ITK wraps the filter for UC, US, SS
    image = itk.image_from_array(np.ascontiguousarray(labels.compact, dtype=pixel))
    image.SetSpacing(spacing)
    interpolator = interpolator_class.New(image)
    interpolator.SetAxis(2 - axis)  # ITK indexes axes (x, y, z): array axis 0 (z) is ITK axis 2
    interpolator.SetLabel(0)  # all labels, each on its own
    interpolator.SetHeuristicAlignment(True)
    interpolator.SetUseDistanceTransform(False)
    interpolator.SetUseBallStructuringElement(False)
    # One thread: the non-distance-transform path races on several threads and corrupts the heap. The filter
    # builds inner filters of its own, which take the global default, hence the global setting, restored after.
    threads = itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    try:
        interpolator.SetNumberOfWorkUnits(1)
        interpolator.Update()
    finally:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    filled = itk.array_from_image(interpolator.GetOutput())
    return labels.restore(filled.astype(np.int64))
