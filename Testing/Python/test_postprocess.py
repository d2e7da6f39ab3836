"""Post-processing that uses where the user annotated: components away from every annotation are dropped, the
annotated voxels are pasted in."""
from __future__ import annotations

import numpy as np

from ContrastiveSegLib.inference.postprocess import (fill_vanished_slices, keep_annotated_components,
                                                    paste_annotations)
from ContrastiveSegLib.io.annotations import IGNORE

SHAPE = (10, 20, 20)


def _prediction() -> np.ndarray:
    """Class 1: a big block (z 2-7) and a far look-alike (z 2-4, other corner); class 2: two blocks; class 3: one."""
    classes = np.zeros(SHAPE, np.uint8)
    classes[2:8, 2:8, 2:8] = 1  # touches the annotation on slice 5
    classes[2:5, 14:18, 14:18] = 1  # the look-alike: same class, never annotated
    classes[1:4, 12:16, 2:6] = 2  # touched by the class-2 annotation on slice 3
    classes[6:9, 12:16, 2:6] = 2  # not touched: slices 6-8 carry no class-2 annotation
    classes[0:3, 0:3, 15:19] = 3  # class 3 was never annotated at all
    return classes


def _targets() -> np.ndarray:
    targets = np.full(SHAPE, IGNORE, np.int64)
    targets[5] = 0
    targets[5, 3:6, 3:6] = 1
    targets[3] = 0
    targets[3, 12:14, 2:4] = 2
    return targets


def test_components_without_annotation_of_their_class_are_dropped():
    classes = _prediction()
    kept = keep_annotated_components(classes, _targets(), num_classes=4)
    assert (kept[2:8, 2:8, 2:8] == 1).all()
    assert (kept[2:5, 14:18, 14:18] == 0).all()  # look-alike of class 1 removed (becomes background)
    assert (kept[1:4, 12:16, 2:6] == 2).all()
    assert (kept[6:9, 12:16, 2:6] == 0).all()
    assert (kept[0:3, 0:3, 15:19] == 3).all()  # no class-3 annotation anywhere: left alone
    assert np.count_nonzero(kept) == 6**3 + 3 * 4 * 4 + 3 * 3 * 4
    assert np.array_equal(classes, _prediction())  # the input is not modified


def test_a_component_touched_only_by_annotation_of_another_class_is_dropped():
    classes = np.zeros(SHAPE, np.uint8)
    classes[1:4, 1:4, 1:4] = 1
    classes[6:9, 6:9, 6:9] = 1
    targets = np.full(SHAPE, IGNORE, np.int64)
    targets[2, 1:4, 1:4] = 1
    targets[7, 6:9, 6:9] = 2  # the user says class 2 here, the network says class 1
    kept = keep_annotated_components(classes, targets, num_classes=3)
    assert np.count_nonzero(kept == 1) == 27 and (kept[6:9, 6:9, 6:9] == 0).all()


def test_diagonal_neighbours_are_one_component():
    classes = np.zeros(SHAPE, np.uint8)
    classes[2, 2, 2] = 1
    classes[3, 3, 3] = 1  # touches the first only at a corner: 26-connectivity joins them
    targets = np.full(SHAPE, IGNORE, np.int64)
    targets[2, 2, 2] = 1
    kept = keep_annotated_components(classes, targets, num_classes=2)
    assert kept[3, 3, 3] == 1


def test_paste_annotations_overrides_only_annotated_voxels():
    classes = _prediction()
    targets = _targets()
    before = classes.copy()
    result = paste_annotations(classes, targets)
    assert result is classes  # in place
    known = targets != IGNORE
    assert np.array_equal(classes[known], targets[known])
    assert np.array_equal(classes[~known], before[~known])
    # slice 5 was annotated background outside the class-1 square: the prediction there is overwritten
    assert np.count_nonzero(classes[5]) == 9


def _painted(shape, slices, truth):
    """IGNORE everywhere but the fully painted ``slices``, which carry ``truth``."""
    targets = np.full(shape, IGNORE, dtype=np.int64)
    targets[list(slices)] = truth[list(slices)]
    return targets


def test_vanished_slices_take_growcut_between_the_painted_slices_only():
    truth = np.zeros((9, 6, 6), dtype=np.uint8)
    truth[:, 2:4, 2:4] = 1  # a structure through every slice
    targets = _painted(truth.shape, (2, 6), truth)
    classes = truth.copy()
    classes[3:6] = 0  # the prediction lost it on slices 3, 4, 5
    classes[4, 0, 0] = 1  # ... except one stray voxel on slice 4
    classes[7:] = 0  # and beyond the last painted slice
    grown = np.zeros_like(truth)
    grown[:, 1:4, 1:4] = 1  # grow-cut: 9 voxels of it on every slice
    grown[5, 0, 0] = 2  # another class on a background voxel: untouched
    out = fill_vanished_slices(classes.copy(), grown, targets, 3)
    assert [(out[s] == 1).sum() for s in range(9)] == [4, 4, 4, 9, 1, 9, 4, 0, 0]
    assert out[5, 0, 0] == 0  # class 2 is painted nowhere: no fill
