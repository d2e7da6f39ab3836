"""Child process of :func:`ContrastiveSegLib.baselines.fill_between_slices`: run ITK's
MorphologicalContourInterpolator on one label map and exit.

Usage: python _mci_worker.py BACKEND INPUT.npy OUTPUT.npy AXIS SX SY SZ
BACKEND is "slicer" (slicer-core's vtkITKMorphologicalContourInterpolator, the wrapper Slicer's effect calls) or
"itk" (ITK's Python wrapping, itk-morphologicalcontourinterpolation). AXIS is ITK's (x = 0, y = 1, z = 2).
Exit code 3: the backend's package is missing. The parent sets ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1.

It imports nothing from ContrastiveSegLib, so it runs wherever numpy and the backend are installed.
"""
from __future__ import annotations

import os
import sys

import numpy as np

MISSING_PACKAGE = 3


def _slicer_class():
    import slicer

    return slicer.vtkITKMorphologicalContourInterpolator


def _itk_class():
    import itk

    # The NumPy bridge must load before the interpolator's module: the other order corrupts the heap
    # (itk 5.4.7 with itk-morphologicalcontourinterpolation 2.1.2).
    itk.image_from_array(np.zeros((1, 1, 1), np.uint8))
    return itk.MorphologicalContourInterpolator


def _with_slicer(interpolator_class, labels: np.ndarray, axis: int, spacing: tuple[float, float, float]) -> np.ndarray:
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    image = vtkImageData()
    image.SetDimensions(labels.shape[2], labels.shape[1], labels.shape[0])
    image.SetSpacing(*spacing)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(labels.ravel(), deep=True))
    interpolator = interpolator_class()
    interpolator.SetInputData(image)
    interpolator.SetAxis(axis)
    # The wrapper's defaults, which Slicer's effect keeps; set anyway so a changed default shows up here.
    interpolator.SetLabel(0)
    interpolator.SetHeuristicAlignment(True)
    interpolator.SetUseDistanceTransform(False)
    interpolator.SetUseBallStructuringElement(False)
    interpolator.Update()
    scalars = interpolator.GetOutput().GetPointData().GetScalars()
    return numpy_support.vtk_to_numpy(scalars).reshape(labels.shape).copy()


def _with_itk(interpolator_class, labels: np.ndarray, axis: int, spacing: tuple[float, float, float]) -> np.ndarray:
    import itk

    image = itk.image_from_array(labels)
    image.SetSpacing(spacing)
    interpolator = interpolator_class.New(image)
    interpolator.SetAxis(axis)
    interpolator.SetLabel(0)
    interpolator.SetHeuristicAlignment(True)
    interpolator.SetUseDistanceTransform(False)
    interpolator.SetUseBallStructuringElement(False)
    interpolator.SetNumberOfWorkUnits(1)
    interpolator.Update()
    return itk.array_from_image(interpolator.GetOutput())


def main(argv: list[str]) -> int:
    backend, source, target = argv[0], argv[1], argv[2]
    axis = int(argv[3])
    spacing = (float(argv[4]), float(argv[5]), float(argv[6]))
    labels = np.ascontiguousarray(np.load(source))
    load, run = {"slicer": (_slicer_class, _with_slicer), "itk": (_itk_class, _with_itk)}[backend]
    try:
        interpolator_class = load()
    except (ImportError, AttributeError) as error:  # AttributeError: the package lacks the interpolator
        print(f"{backend}: {error}", file=sys.stderr)
        return MISSING_PACKAGE
    filled = run(interpolator_class, labels, axis, spacing)
    np.save(target, filled.astype(labels.dtype, copy=False))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: ITK's and VTK's static destructors in one process are where its crashes
    # surface, and there is nothing left to clean up.
    os._exit(code)
