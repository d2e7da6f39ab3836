"""Sparse annotations: which axis, which slices, what becomes background, what stays unknown, label values."""
from __future__ import annotations

import numpy as np
import pytest

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.annotations import (IGNORE, annotated_slice_indices, decode_annotation,
                                              find_annotation_axis)

SHAPE = (12, 14, 16)


def _annotate(axis: int, slices=(2, 7, 9), value: int = 1) -> np.ndarray:
    """Labels with a 6x6 square of ``value`` on ``slices`` along ``axis``, zero elsewhere."""
    labels = np.zeros(SHAPE, np.uint8)
    for s in slices:
        index = [slice(3, 9)] * 3
        index[axis] = s
        labels[tuple(index)] = value
    return labels


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_and_slices_found_along_each_axis(axis):
    labels = _annotate(axis)
    assert find_annotation_axis(labels) == axis
    annotation = decode_annotation(labels)
    assert annotation.axis == axis
    assert annotation.slices.tolist() == [2, 7, 9]
    assert annotated_slice_indices(labels, axis).tolist() == [2, 7, 9]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_ignore_scribbles_do_not_count_as_annotation(axis):
    # Everything off the annotated slices explicitly marked "not annotated" (255), as an editor with partial
    # slices would export it: 255 spans every slice along every axis, yet the axis and slices stay the same.
    labels = _annotate(axis)
    unannotated = np.ones(SHAPE, bool)
    index = [slice(None)] * 3
    index[axis] = [2, 7, 9]
    unannotated[tuple(index)] = False
    labels[unannotated] = IGNORE
    annotation = decode_annotation(labels)
    assert annotation.axis == axis and annotation.slices.tolist() == [2, 7, 9]


def test_background_on_annotated_slices_and_unknown_elsewhere():
    labels = _annotate(0, slices=(4,), value=1)
    labels[4, 0, 0:3] = IGNORE  # a partial slice: three voxels left unannotated
    annotation = decode_annotation(labels)
    target = annotation.target
    assert target.dtype == np.uint8 and target.shape == SHAPE
    assert (target[4, 3:9, 3:9] == 1).all()
    assert (target[4, 0, 0:3] == IGNORE).all()  # 255 stays "not annotated" on an annotated slice
    background = np.ones(SHAPE[1:], bool)
    background[3:9, 3:9] = False
    background[0, 0:3] = False
    assert (target[4][background] == 0).all()  # the rest of the annotated slice is background
    assert (np.delete(target, 4, axis=0) == IGNORE).all()  # every other slice is unknown
    assert np.count_nonzero(target != IGNORE) == SHAPE[1] * SHAPE[2] - 3


def test_label_values_map_to_consecutive_classes():
    labels = _annotate(0, slices=(2,), value=3)
    labels[7, 0:4, 0:4] = 7
    annotation = decode_annotation(labels, axis=0)
    assert annotation.label_values == (0, 3, 7) and annotation.num_classes == 3
    assert annotation.slices.tolist() == [2, 7]
    assert set(np.unique(annotation.target[2]).tolist()) == {0, 1}
    assert set(np.unique(annotation.target[7]).tolist()) == {0, 2}
    assert (annotation.target[7, 0:4, 0:4] == 2).all()


def test_large_label_values_and_given_axis():
    labels = np.zeros(SHAPE, np.uint16)
    labels[:, 5, 2:6] = 1000  # a line through every z slice, but one y slice: the y axis is given explicitly
    annotation = decode_annotation(labels, axis=1)
    assert annotation.axis == 1 and annotation.slices.tolist() == [5] and annotation.label_values == (0, 1000)
    assert (annotation.target[:, 5, 2:6] == 1).all()


def test_float_labels_with_whole_values_are_accepted():
    labels = _annotate(2).astype(np.float32) * 2.0
    annotation = decode_annotation(labels)
    assert annotation.label_values == (0, 2) and annotation.axis == 2


@pytest.mark.parametrize("labels, phrase", [
    (_annotate(0).astype(np.float32) * 0.5, "not integers"),
    (np.where(_annotate(0) > 0, np.nan, 0).astype(np.float32), "not integers"),
    (_annotate(0).astype(np.int16) * -1, "must be >= 0"),
    (np.zeros(SHAPE, np.uint8), "no annotated slice"),
    (np.full(SHAPE, IGNORE, np.uint8), "no annotated slice"),
    (_annotate(0).astype(bool), "must hold integers"),
    (np.zeros((4, 5), np.uint8), "3D"),
])
def test_unusable_labels_give_one_line_input_error(labels, phrase):
    with pytest.raises(InputError) as info:
        decode_annotation(labels)
    assert phrase in str(info.value) and "\n" not in str(info.value)


def test_axis_out_of_range_is_input_error():
    with pytest.raises(InputError, match="axis must be 0, 1 or 2"):
        decode_annotation(_annotate(0), axis=3)
