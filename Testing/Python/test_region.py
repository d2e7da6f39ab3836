"""The prediction region (ContrastiveSegLib/inference/region.py): exact bounds on hand-made paintings, background
outside it, the same answer inside it as a whole-slice prediction, and a structure that reaches beyond the painted
slices still found."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ContrastiveSegLib.data.slices import InputSpec, SliceStack
from ContrastiveSegLib.inference.predict import predict_volume
from ContrastiveSegLib.inference.region import Region, prediction_region, region_of_case
from ContrastiveSegLib.io.annotations import IGNORE

SHAPE = (60, 100, 120)  # (S, H, W), slices along the annotation axis first
INPLANE = (1.0, 2.0)  # (row, column) mm
SLICE_MM = 2.0


def _painted(slices, shape=SHAPE) -> np.ndarray:
    """Targets with ``slices`` fully painted as background, IGNORE elsewhere."""
    targets = np.full(shape, IGNORE, np.uint8)
    for s in slices:
        targets[s] = 0
    return targets


def test_bounds_of_one_class_between_and_beyond_two_painted_slices():
    targets = _painted([20, 30])
    targets[20, 40:50, 50:60] = 1  # 10 rows (10 mm) x 10 columns (20 mm)
    targets[30, 42:48, 52:58] = 1
    region = prediction_region(targets, 2, INPLANE, SLICE_MM)
    # rows: 15 mm + half of 10 mm = 20 rows each side; columns: (15 + 10) mm / 2 mm = 12.5 -> 13 columns;
    # along the axis: 15 mm + max(a quarter of the 20 mm span, half of the 20 mm width) = 25 mm -> 13 slices.
    assert region == Region((20 - 13, 30 + 13 + 1), (40 - 20, 50 + 20), (50 - 13, 60 + 13))


def test_a_painted_slice_without_the_class_bounds_it_along_the_axis():
    targets = _painted([10, 20, 40])
    targets[20, 40:50, 50:60] = 1  # only on the middle slice: absent from 10 and 40
    region = prediction_region(targets, 2, INPLANE, SLICE_MM)
    # up to the absent slices and 15 mm (8 slices) past them, not the 13 slices of reach beyond a painted end
    assert region.slices == (10 - 8, 40 + 8 + 1)
    targets[40, 45, 55] = 1  # now present on the last painted slice: beyond it, the reach of 25 mm (13 slices)
    assert prediction_region(targets, 2, INPLANE, SLICE_MM).slices == (2, 40 + 13 + 1)


def test_classes_merge_into_one_box_clipped_to_the_volume():
    targets = _painted([5, 50])
    targets[5, 0:4, 0:4] = 1
    targets[50, 90:100, 110:120] = 2
    region = prediction_region(targets, 3, INPLANE, SLICE_MM)
    assert region.rows == (0, 100) and region.columns == (0, 120)
    # class 1 reaches 15 mm + 4 mm = 10 slices below slice 5, class 2 25 mm = 13 slices above slice 50: both clipped
    assert region.slices == (0, 60)


def test_no_prior_or_an_unpainted_class_means_the_whole_volume():
    one = _painted([20])
    one[20, 40:50, 50:60] = 1
    assert prediction_region(one, 2, INPLANE, SLICE_MM) == Region.whole(SHAPE)
    two = _painted([20, 30])
    two[20, 40:50, 50:60] = 1
    assert prediction_region(two, 3, INPLANE, SLICE_MM) == Region.whole(SHAPE)  # class 2 never painted
    assert region_of_case(None, 2, 0, (1, 1, 1), SHAPE) == Region.whole(SHAPE)


def test_a_slice_painted_in_another_plane_extends_the_region_along_the_axis():
    targets = _painted([20, 30])
    targets[20, 40:50, 50:60] = 1
    targets[30, 42:48, 52:58] = 1
    targets[0:60, 45, :] = np.where(np.arange(60)[:, None] >= 12, 0, IGNORE)  # a crossing plane, painted rows
    targets[12:40, 45, 55] = 1  # the class reaches slice 12 in that plane
    assert prediction_region(targets, 2, INPLANE, SLICE_MM).slices[0] < 20 - 13


def test_region_of_case_reads_the_scan_spacing_in_stack_order():
    targets = _painted([20, 30])
    targets[20, 40:50, 50:60] = 1
    targets[30, 42:48, 52:58] = 1
    # slices along array axis 1 (coronal): (x, y, z) spacing (2, 2, 1) puts 2 mm along the slices, rows z = 1 mm
    assert region_of_case(targets, 2, 1, (2.0, 2.0, 1.0), SHAPE) == prediction_region(targets, 2, INPLANE, SLICE_MM)


class _RightHalf(torch.nn.Module):
    """Class 1 where the x coordinate channel (the last input channel) is positive, whatever the image: what a
    crop would break if it lost each pixel's position in the whole slice."""

    def forward(self, x):
        score = 10.0 * x[:, -1:]
        return torch.cat([-score, score], dim=1)


@pytest.mark.parametrize("keep", ["probabilities", "confidence"])
def test_prediction_inside_the_region_equals_the_whole_slice_one_and_is_background_outside(keep):
    stack = SliceStack(np.zeros((12, 40, 56), np.float32), 0, InputSpec())
    region = Region((3, 9), (5, 22), (7, 50))
    options = {"keep_probabilities": True} if keep == "probabilities" else {"keep_confidence": True}
    whole, whole_p = predict_volume(_RightHalf(), stack, torch.device("cpu"), divisor=16, batch_size=4, **options)
    # no context around the region: the network sees a real crop (rows 0-32, columns 0-56 on the 16 grid)
    part, part_p = predict_volume(_RightHalf(), stack, torch.device("cpu"), divisor=16, batch_size=4,
                                  region=region, context=0, **options)
    inside = region.mask((12, 40, 56))
    assert (part[inside] == whole[inside]).all() and (part[inside] == 1).any() and (part[inside] == 0).any()
    assert (part[~inside] == 0).all()
    if keep == "probabilities":
        np.testing.assert_allclose(part_p[:, inside], whole_p[:, inside], atol=1e-6)
        assert (part_p[0][~inside] == 1.0).all() and (part_p[1][~inside] == 0.0).all()
    else:
        assert (part_p[inside] == whole_p[inside]).all() and (part_p[~inside] == 255).all()


def test_a_structure_beyond_the_painted_slices_is_still_found():
    """A bright tube along the axis over slices 30-129 of 200, painted at 40, 80 and 120: its ends (10 slices
    beyond each end slice) lie inside the region and are found; the region leaves out most of the volume."""
    from ContrastiveSegLib import api

    rng = np.random.default_rng(0)
    shape = (200, 32, 32)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    reference = (((y - 15.5) ** 2 + (x - 14.5 - 0.03 * z) ** 2 <= 36) & (z >= 30) & (z < 130)).astype(np.uint8)
    image = (np.where(reference == 1, 100.0, 0.0) + rng.normal(0, 5, shape)).astype(np.float32)
    sparse = np.zeros(shape, np.uint8)
    for s in (40, 80, 120):
        sparse[s] = reference[s]
    spacing = (1.0, 1.0, 1.0)
    region = region_of_case(np.where(sparse.any(axis=(1, 2))[:, None, None], sparse, IGNORE), 2, 0, spacing, shape)
    assert region.slices[0] <= 30 and region.slices[1] >= 130 and region.mask(shape).mean() < 0.8
    result = api.segment(image, sparse, spacing, axis=0, preset="fast", steps=40, batch_size=4, seed=0,
                         device="cpu")
    found = result.labels == 1
    dice = 2 * (found & (reference == 1)).sum() / (found.sum() + (reference == 1).sum())
    assert dice > 0.9
    ends = np.r_[30:40, 121:130]
    assert found[ends].sum() > 0.8 * (reference[ends] == 1).sum()


def test_the_network_sees_context_around_the_region_on_the_divisor_grid():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    stack = SliceStack(np.zeros((4, 64, 80), np.float32), 0, InputSpec())
    region = Region((1, 3), (20, 24), (40, 41))
    predict_volume(Recorder(), stack, torch.device("cpu"), divisor=16, region=region, context=16)
    # rows 20-24 widened by 16 -> 4-40 -> 0-48 on the 16 grid; columns 40-41 -> 24-57 -> 16-64
    assert seen == [(48, 48)]
