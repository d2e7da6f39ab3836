"""Sparse annotations: which axis, which slices, what becomes background, what stays unknown, label values."""
from __future__ import annotations

import numpy as np
import pytest

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.annotations import (IGNORE, annotated_slice_indices, decode_annotation,
                                              find_annotation_axis, find_painted_planes, main_axis)

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


def _ball(shape=(40, 50, 60), centre=(20, 25, 30), radii=(15, 12, 14)) -> np.ndarray:
    grid = np.indices(shape) - np.asarray(centre)[:, None, None, None]
    return (np.sum(grid ** 2 / np.asarray(radii)[:, None, None, None] ** 2, axis=0) <= 1)


def test_two_axial_and_one_coronal_slice_are_three_painted_slices():
    ball = _ball()
    labels = np.zeros(ball.shape, np.uint8)
    for z in (12, 28):
        labels[z][ball[z]] = 3
    labels[:, 25][ball[:, 25]] = 3
    assert {a: s.tolist() for a, s in find_painted_planes(labels).items()} == {0: [12, 28], 1: [25]}
    annotation = decode_annotation(labels)
    assert annotation.axis == 0 and annotation.painted.tolist() == [12, 28]
    target = annotation.target
    # The coronal slice is annotated everywhere: its zero voxels are background, even on unpainted axial slices.
    assert (target[:, 25][~ball[:, 25]] == 0).all() and (target[:, 25][ball[:, 25]] == 1).all()
    assert (target[3, 25] == 0).all()
    # Off the three painted slices everything is unknown (the single-plane rule would have called slice 5
    # "annotated" and its whole plane background).
    off = np.ones(ball.shape, bool)
    off[[12, 28]] = False
    off[:, 25] = False
    assert (target[off] == IGNORE).all()
    # Every axial slice the coronal slice crosses holds annotated voxels (its crossing line) for training.
    assert annotation.slices.tolist() == list(range(40))


def test_a_thin_crossing_line_is_not_taken_for_a_painted_plane():
    # Three axial slices of small disks lined up at the same row: a coronal slice through them holds only
    # one-voxel-thin lines, so the painting stays three axial slices.
    labels = np.zeros((30, 30, 30), np.uint8)
    for z in (5, 15, 25):
        labels[z, 14:17, 14:17] = 1
    assert {a: s.tolist() for a, s in find_painted_planes(labels).items()} == {0: [5, 15, 25]}


def test_given_axis_keeps_the_single_plane_rule():
    ball = _ball()
    labels = np.zeros(ball.shape, np.uint8)
    for z in (12, 28):
        labels[z][ball[z]] = 3
    labels[:, 25][ball[:, 25]] = 3
    annotation = decode_annotation(labels, axis=0)
    assert list(annotation.planes) == [0]
    assert annotation.painted.tolist() == annotation.slices.tolist()


def test_labels_decode_against_a_models_label_values():
    labels = _annotate(0, slices=(4,), value=7)
    annotation = decode_annotation(labels, 0, label_values=(0, 3, 7))
    assert annotation.label_values == (0, 3, 7)
    assert (annotation.target[4, 3:9, 3:9] == 2).all()  # class of value 7, not class 1
    with pytest.raises(InputError, match=r"values \[5\]"):
        decode_annotation(_annotate(0, value=5), 0, label_values=(0, 3, 7))


def test_main_axis_is_the_plane_with_the_most_painted_slices_as_decoded():
    # main_axis is what the Slicer bridge names in its summary: it must be the axis decode_annotation picks.
    ball = _ball()
    labels = np.zeros(ball.shape, np.uint8)
    labels[:, 25][ball[:, 25]] = 1
    labels[:, 18][ball[:, 18]] = 1
    labels[20][ball[20]] = 1
    planes = find_painted_planes(labels)
    assert {a: s.tolist() for a, s in planes.items()} == {0: [20], 1: [18, 25]}
    assert main_axis(planes) == decode_annotation(labels).axis == 1
    # Ties go to the lower array axis (axial for most scans).
    assert main_axis({2: np.array([3]), 0: np.array([5])}) == 0
