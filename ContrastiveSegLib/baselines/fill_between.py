"""Slicer's "Fill between slices" Segment Editor effect, run outside Slicer on the same sparse labels.

The effect runs ITK's MorphologicalContourInterpolator (Zukić et al., "ND morphological contour interpolation",
Insight Journal 2016, after Albu et al., IEEE TBME 2008) once on the merged labelmap of all segments: each
label is interpolated on its own between the slices that hold it, by morphing the contours of one slice into
the next, and the labels are merged back. Nothing is drawn before the first or after the last slice that holds
a label, and a single annotated slice gives nothing new.

Settings are those of Slicer's ``vtkITKMorphologicalContourInterpolator`` wrapper, which the effect leaves at
their defaults: all labels at once (label 0), heuristic alignment on, distance-transform interpolation off,
cross structuring element. The effect lets ITK choose the axis; here it is the annotation axis (the same
result when slices are annotated along one axis, and less work).

Two backends give the same output (checked in the tests): ``"slicer"``, the slicer-core wheel's copy of the
very wrapper the effect calls, and ``"itk"``, ITK's Python wrapping (itk-morphologicalcontourinterpolation).
Either runs in a child process on one ITK thread, because in-process it is not safe: the filter's
non-distance-transform path corrupts the heap when it runs on several threads, ITK's Python wrapping corrupts
it when the interpolator's module loads before ITK's NumPy bridge, and ITK's Python wrapping and slicer-core
in one process corrupt it too. A child costs about a second (slicer) or ten (itk: loading its wrapping).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ContrastiveSegLib import childprocess
from ContrastiveSegLib.baselines.common import check_spacing, compact_labels

INSTALL_HINT = ("Fill between slices needs ITK's contour interpolator: "
                "pip install itk-morphologicalcontourinterpolation (or slicer-core)")
BACKENDS = ("slicer", "itk")
_WORKER = Path(__file__).with_name("_mci_worker.py")
_MISSING_PACKAGE = 3  # the worker's exit code when its backend cannot be imported
_PACKAGES = {"slicer": "slicer_core", "itk": "itk"}


def _available(backend: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[backend]) is not None


def _run_worker(backend: str, compact: np.ndarray, itk_axis: int, spacing: tuple[float, float, float],
                timeout: float, cancel=None) -> np.ndarray | None:
    """The interpolated label map from a child process, or None when the backend's package is missing."""
    with childprocess.exchange_folder("contrastiveseg-mci-", "Fill between slices") as folder:
        source, target = Path(folder) / "labels.npy", Path(folder) / "filled.npy"
        np.save(source, compact)
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
        command = [sys.executable, str(_WORKER), backend, str(source), str(target), str(itk_axis),
                   *(repr(s) for s in spacing)]
        done = childprocess.run(command, env=env, timeout=timeout, cancel=cancel)
        if done.returncode == _MISSING_PACKAGE:
            return None
        if done.returncode != 0 or not target.is_file():
            tail = done.last_line() or "no message"
            raise RuntimeError(f"fill between slices ({backend}) failed with exit code {done.returncode}: {tail}")
        return np.load(target)


def fill_between_slices(sparse_labels: np.ndarray, axis: int, spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                        backend: str = "auto", timeout: float = 600.0, cancel=None) -> np.ndarray:
    """Interpolate every structure between the annotated slices, as Slicer's "Fill between slices" does.

    Args:
        sparse_labels: (z, y, x) integer labels: annotated slices along ``axis`` fully labelled (0 =
            background there), 0 elsewhere; 255 = not annotated (treated as background: Slicer has no such
            value).
        axis: the annotation axis of the array.
        spacing: voxel size (x, y, z) in mm, given to ITK as Slicer does (the settings used ignore it).
        backend: "slicer", "itk", or "auto" (slicer-core when installed, else ITK's Python wrapping).
        timeout: seconds before the child process is killed (then ``subprocess.TimeoutExpired``).
        cancel: an event; once set, the child process is killed and Cancelled raised.
    Returns:
        (z, y, x) label map with the input's label values and dtype; 0 = background.
    Raises:
        ImportError: neither backend is installed (the message says what to pip install).
        InputError: not a 3D integer map, or nothing annotated.
    """
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto', 'slicer' or 'itk', got {backend!r}")
    spacing = check_spacing(spacing)
    labels = compact_labels(sparse_labels, axis)
    pixel = np.uint8 if len(labels.values) < 255 else np.uint16  # ITK wraps the filter for UC, US, SS
    compact = np.ascontiguousarray(labels.compact, dtype=pixel)
    candidates = BACKENDS if backend == "auto" else (backend,)
    for name in candidates:
        if not _available(name):
            continue
        filled = _run_worker(name, compact, 2 - axis, spacing, timeout, cancel)  # ITK orders axes (x, y, z)
        if filled is not None:
            return labels.restore(filled.astype(np.int64))
    raise ImportError(INSTALL_HINT)
