"""The two Slicer baselines on small synthetic volumes with known answers.

Grow from seeds: two ellipsoids in noise (contrast 40-80 against noise of 12) are recovered with Dice >= 0.93
from 3 annotated slices along any axis (measured 0.95-1.0); seeds keep their labels; Slicer's seed
box confines the result to 3 slices around a single annotated slice. Fill between slices: a cylinder along
the annotation axis is reproduced exactly between the first and last annotated slice, and nothing is drawn
outside them; both backends (slicer-core's wrapper, ITK's Python wrapping) agree voxel for voxel, and on the
ellipsoids from 3 slices reach Dice >= 0.85 (measured 0.91-0.94).
"""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

import ContrastiveSegLib.baselines.fill_between as fill_between_module
from ContrastiveSegLib.baselines import fill_between_slices, grow_from_seeds
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, dice_per_label, sparse_annotation
from ContrastiveSegLib.io.annotations import IGNORE

SHAPE = (28, 36, 44)  # (z, y, x): different sizes, so a wrong axis order cannot pass
SPACING = (0.8, 0.9, 2.0)  # (x, y, z) mm
BRIGHT, DIM = 3, 1000  # label values of the two ellipsoids: one above 255, so int32 round trips are tested

slicer_missing = importlib.util.find_spec("slicer_core") is None
itk_missing = importlib.util.find_spec("itk") is None


def ellipsoids(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32) and reference (int32): ellipsoid BRIGHT at 100, ellipsoid DIM at 60, background 20, noise 12."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    nz, ny, nx = SHAPE
    first = ((z - nz * 0.5) / (nz * 0.35)) ** 2 + ((y - ny * 0.35) / (ny * 0.22)) ** 2 + \
        ((x - nx * 0.3) / (nx * 0.2)) ** 2 <= 1
    second = ((z - nz * 0.5) / (nz * 0.3)) ** 2 + ((y - ny * 0.66) / (ny * 0.18)) ** 2 + \
        ((x - nx * 0.7) / (nx * 0.2)) ** 2 <= 1
    reference = np.zeros(SHAPE, np.int32)
    reference[first] = BRIGHT
    reference[second] = DIM
    image = np.full(SHAPE, 20.0, np.float32)
    image[first] = 100.0
    image[second] = 60.0
    image += np.random.default_rng(seed).normal(0.0, 12.0, SHAPE).astype(np.float32)
    return image, reference


def cylinder(axis: int, value: int = 5) -> np.ndarray:
    """An int32 map holding a disc of radius 6 (off-centre) on slices 4 .. n - 5 along ``axis``, 0 elsewhere."""
    reference = np.zeros(SHAPE, np.int32)
    rows, cols = (n for a, n in enumerate(SHAPE) if a != axis)
    r, c = np.ogrid[:rows, :cols]
    disc = (r - rows * 0.4) ** 2 + (c - cols * 0.55) ** 2 <= 36
    along = np.moveaxis(reference, axis, 0)  # a view: writing it writes ``reference``
    along[4:SHAPE[axis] - 4] = np.where(disc, value, 0)
    return reference


# ----------------------------------------------------------------------------------------------- grow from seeds
@pytest.mark.skipif(slicer_missing, reason="slicer-core is not installed")
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_grow_from_seeds_recovers_bright_ellipsoids_along_each_axis(axis):
    image, reference = ellipsoids()
    slices = choose_annotated_slices(reference, axis, 3)
    sparse = sparse_annotation(reference, axis, slices)
    result = grow_from_seeds(image, sparse, axis, SPACING)
    assert result.shape == SHAPE and result.dtype == reference.dtype
    assert set(np.unique(result)) == {0, BRIGHT, DIM}
    scores = dice_per_label(result, reference)
    assert min(scores.values()) >= 0.93, scores
    index = [slice(None)] * 3
    for s in slices:  # seeds are never relabelled
        index[axis] = s
        if reference[tuple(index)].any():  # a slice with no structure reads as not annotated (annotations.py)
            assert np.array_equal(result[tuple(index)], reference[tuple(index)])


@pytest.mark.skipif(slicer_missing, reason="slicer-core is not installed")
def test_grow_from_seeds_keeps_slicers_seed_box_and_can_grow_everywhere():
    image, reference = ellipsoids()
    middle = SHAPE[0] // 2
    sparse = sparse_annotation(reference, 0, [middle])
    boxed = grow_from_seeds(image, sparse, 0)
    # One annotated slice: the box is that slice plus max(3, 0.1 * 0) = 3 slices on each side.
    outside = np.ones(SHAPE[0], bool)
    outside[middle - 3:middle + 4] = False
    assert not boxed[outside].any()
    assert (boxed[middle - 3:middle + 4] == BRIGHT).any()
    everywhere = grow_from_seeds(image, sparse, 0, extent_growth_ratio=None)
    assert (everywhere[outside] == BRIGHT).any()
    assert dice_per_label(everywhere, reference)[BRIGHT] > dice_per_label(boxed, reference)[BRIGHT] + 0.3


@pytest.mark.skipif(slicer_missing, reason="slicer-core is not installed")
def test_grow_from_seeds_grows_into_ignored_voxels():
    image, reference = ellipsoids()
    slices = choose_annotated_slices(reference, 1, 3)
    sparse = sparse_annotation(reference, 1, slices)
    inside = np.argwhere(sparse[:, slices[1]] == BRIGHT)
    z, x = inside[len(inside) // 2]
    sparse[z - 1:z + 2, slices[1], x - 1:x + 2] = IGNORE  # "not annotated": must be filled, not kept as 255
    result = grow_from_seeds(image, sparse, 1)
    assert not (result == IGNORE).any()
    assert (result[z - 1:z + 2, slices[1], x - 1:x + 2] == BRIGHT).all()


# ----------------------------------------------------------------------------------------------- fill between
@pytest.mark.skipif(slicer_missing and itk_missing, reason="neither slicer-core nor itk is installed")
@pytest.mark.parametrize("axis,value", [(0, 5), (1, 1000), (2, 7)])
def test_fill_between_reproduces_a_cylinder_between_annotated_slices(axis, value):
    reference = cylinder(axis, value).astype(np.int32 if value > 255 else np.uint8)
    slices = [6, 11, SHAPE[axis] - 8]  # all inside the cylinder (slices 4 .. n - 5)
    result = fill_between_slices(sparse_annotation(reference, axis, slices), axis, SPACING)
    assert result.dtype == reference.dtype
    inside = [slice(None)] * 3
    inside[axis] = slice(slices[0], slices[-1] + 1)
    assert np.array_equal(result[tuple(inside)], reference[tuple(inside)])
    outside = np.ones(SHAPE[axis], bool)
    outside[slices[0]:slices[-1] + 1] = False
    assert not np.moveaxis(result, axis, 0)[outside].any()  # no extrapolation past the annotated slices


@pytest.mark.slow
@pytest.mark.skipif(slicer_missing or itk_missing, reason="needs both slicer-core and itk")
def test_fill_between_backends_agree_on_a_changing_shape():
    _, reference = ellipsoids()
    sparse = sparse_annotation(reference, 0, choose_annotated_slices(reference, 0, 3))
    by_slicer = fill_between_slices(sparse, 0, SPACING, backend="slicer")
    by_itk = fill_between_slices(sparse, 0, SPACING, backend="itk")
    assert np.array_equal(by_slicer, by_itk)
    # The shape changes between slices, so this is interpolation, not copying: still close to the ellipsoids.
    assert min(dice_per_label(by_slicer, reference).values()) >= 0.85


# ----------------------------------------------------------------------------------------------- errors
def test_missing_packages_raise_import_error_with_a_pip_hint(monkeypatch):
    monkeypatch.setattr(fill_between_module, "_available", lambda backend: False)
    with pytest.raises(ImportError, match="pip install itk-morphologicalcontourinterpolation"):
        fill_between_slices(cylinder(0), 0)
    monkeypatch.setitem(sys.modules, "slicer", None)  # makes "import slicer" raise ImportError
    monkeypatch.setitem(sys.modules, "vtkSlicerSegmentationsModuleLogicPython", None)
    image, reference = ellipsoids()
    with pytest.raises(ImportError, match="pip install slicer-core"):
        grow_from_seeds(image, sparse_annotation(reference, 0, [14]), 0)


@pytest.mark.skipif(slicer_missing, reason="slicer-core is not installed")
def test_bad_inputs_raise_input_error():
    image, reference = ellipsoids()
    sparse = sparse_annotation(reference, 0, [14])
    with pytest.raises(InputError, match="no annotated slice"):
        grow_from_seeds(image, np.zeros_like(sparse), 0)
    with pytest.raises(InputError, match="same shape"):
        grow_from_seeds(image[:-1], sparse, 0)
    with pytest.raises(InputError, match="axis"):
        grow_from_seeds(image, sparse, 3)
    with pytest.raises(InputError, match="integers"):
        fill_between_slices(sparse.astype(np.float32), 0)
    with pytest.raises(InputError, match="spacing"):
        fill_between_slices(sparse, 0, spacing=(1.0, 0.0, 1.0))
