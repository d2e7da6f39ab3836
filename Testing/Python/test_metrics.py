"""The benchmark's score and protocol: Dice values and empty-mask conventions, slice choice, sparse annotations."""
from __future__ import annotations

import numpy as np
import pytest

from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, dice_per_label, mean_dice, sparse_annotation
from ContrastiveSegLib.io.annotations import IGNORE


def test_dice_is_the_exact_overlap_fraction_per_label():
    reference = np.zeros((4, 10, 10), np.uint8)
    prediction = np.zeros_like(reference)
    reference[1, :3, :] = 1  # 30 voxels
    prediction[1, 1:5, :] = 1  # 40 voxels, 20 of them on the reference
    reference[2, :7, :] = 3  # 70 voxels
    prediction[2, :7, :] = 3
    reference[3, 0, :5] = IGNORE  # not a structure: never scored by default
    scores = dice_per_label(prediction, reference)
    assert list(scores) == [1, 3]
    assert scores[1] == 2 * 20 / (30 + 40)  # exactly the float64 value, as the benchmark has always reported
    assert scores[3] == 1.0
    assert mean_dice(prediction, reference) == (2 * 20 / 70 + 1.0) / 2


def test_dice_conventions_for_empty_masks():
    empty = np.zeros((3, 5, 5), np.int16)
    one = empty.copy()
    one[1, 2, 2] = 2
    assert dice_per_label(empty, empty, [2]) == {2: 1.0}  # in neither: nothing to miss
    assert dice_per_label(one, empty, [2]) == {2: 0.0}  # predicted but absent
    assert dice_per_label(empty, one, [2]) == {2: 0.0}  # present but missed
    with pytest.raises(ValueError, match="shape mismatch"):
        dice_per_label(one[:2], one)


def test_dice_stays_exact_beyond_float32_integers():
    # 2**24 + 3 reference voxels: a float32 count would round them; the score must equal the integer formula.
    reference = np.zeros(2**24 + 64, np.uint8)
    reference[:2**24 + 3] = 1
    prediction = np.zeros_like(reference)
    prediction[5:] = 1
    both, p, r = 2**24 - 2, 2**24 + 59, 2**24 + 3
    assert dice_per_label(prediction, reference) == {1: 2.0 * both / (p + r)}


def test_slices_are_spread_over_the_extent_and_only_they_are_kept():
    reference = np.zeros((30, 4, 4), np.uint8)
    reference[10:21, 1:3, 1:3] = 2
    assert choose_annotated_slices(reference, 0, 1) == [15]
    assert choose_annotated_slices(reference, 0, 3) == [11, 15, 19]  # 10 %, 50 %, 90 % of slices 10..20
    sparse = sparse_annotation(reference, 0, [11, 19])
    assert np.flatnonzero(sparse.any(axis=(1, 2))).tolist() == [11, 19]
    assert np.array_equal(sparse[11], reference[11])
    with pytest.raises(ValueError, match="none of the requested labels"):
        choose_annotated_slices(reference, 0, 2, labels=[1])
