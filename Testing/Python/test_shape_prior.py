"""The shape prior: signed distances, interpolation between painted slices, extrapolation, the learnt
uncertainty, the categorical probabilities, and its effect inside prediction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ContrastiveSegLib.inference.shape_prior import (END_SLOPE, ShapePrior, _log_categorical,
                                                     build_shape_prior, fully_painted_slices, signed_distance)
from ContrastiveSegLib.io.annotations import IGNORE


def test_signed_distance_hand_values():
    mask = np.zeros((1, 10), bool)
    mask[0, :5] = True
    d = signed_distance(mask, (1.0, 2.0))  # columns 2 mm apart
    # Boundary half way between columns 4 and 5: one voxel centre either side is 1 mm from it.
    assert d[0, 4] == pytest.approx(0.5 - 2.0)  # inside: half the smallest spacing minus 2 mm to the outside
    assert d[0, 5] == pytest.approx(2.0 - 0.5)
    assert d[0, 0] == pytest.approx(0.5 - 10.0)
    assert d[0, 9] == pytest.approx(10.0 - 0.5)
    assert np.isposinf(signed_distance(np.zeros((3, 3), bool), (1, 1))).all()


def _prior(distances, slices=(0, 4), slice_mm=2.0, beta=0.5) -> ShapePrior:
    distances = np.asarray(distances, np.float32)
    return ShapePrior(np.asarray(slices), distances, np.ones(distances.shape[1], bool), slice_mm, beta, tau0=0.5)


def test_linear_interpolation_and_gap():
    prior = _prior(np.array([[[[2.0]]], [[[-2.0]]]]))  # (K=2, C-1=1, 1, 1)
    d, gap, beyond = prior.interpolate(1)
    assert d[0, 0, 0] == pytest.approx(1.0)  # 3/4 * 2 + 1/4 * -2
    assert gap == pytest.approx(2.0) and not beyond  # one slice of 2 mm from the nearest painted slice
    d, gap, _ = prior.interpolate(2)
    assert d[0, 0, 0] == pytest.approx(0.0) and gap == pytest.approx(4.0)
    d, gap, _ = prior.interpolate(4)
    assert d[0, 0, 0] == pytest.approx(-2.0) and gap == 0.0


def test_extrapolation_tapers_off_beyond_the_ends():
    prior = _prior(np.array([[[[-3.0]]], [[[-1.0]]]]))
    d, gap, beyond = prior.interpolate(7)  # three slices (6 mm) past the last painted slice
    assert gap == pytest.approx(6.0) and beyond
    assert d[0, 0, 0] == pytest.approx(-1.0 + END_SLOPE * 6.0)


def test_structure_missing_from_one_side_vanishes_between():
    inside = np.full((1, 1, 3), -4.0, np.float32)
    inside[0, 0, 0] = -1.0
    distances = np.stack([inside, np.full((1, 1, 3), np.inf, np.float32)])
    prior = _prior(distances)
    d, _, _ = prior.interpolate(2)  # half way: the deepest point (-4) meets its mirror (+4)
    assert d[0, 0, 1] == pytest.approx(0.0)
    assert d[0, 0, 0] > 0  # shallower parts are gone already


def test_categorical_hand_values():
    d = torch.tensor([[[0.0, -100.0, 100.0]]])  # one class: on the boundary, deep inside, far outside
    log_p = _log_categorical(d, 1.0, torch.tensor([True]))
    p = log_p.exp()
    assert torch.allclose(p.sum(0), torch.ones(1, 3))
    assert p[:, 0, 0].tolist() == pytest.approx([0.5, 0.5])
    assert p[1, 0, 1] == pytest.approx(1.0) and p[0, 0, 2] == pytest.approx(1.0)
    # A class with no information is flat and leaves the background to the others.
    two = torch.stack([torch.tensor([[-100.0]]), torch.tensor([[100.0]])])
    p = _log_categorical(two, 1.0, torch.tensor([True, False])).exp()
    assert p[1, 0, 0] > 0.6 and p[0, 0, 0] < 1e-6


def _cone_targets(slopes, size=41, slices=(5, 12, 19, 26, 33), depth=40) -> np.ndarray:
    """(depth, size, size) targets, disks whose radius follows ``radius(s)`` on ``slices``, IGNORE elsewhere."""
    yy, xx = np.mgrid[:size, :size] - size // 2
    targets = np.full((depth, size, size), IGNORE, np.uint8)
    for s in slices:
        targets[s] = (np.hypot(yy, xx) <= slopes(s)).astype(np.uint8)
    return targets


def test_beta_is_small_for_a_smooth_shape_and_large_for_an_erratic_one():
    smooth = _cone_targets(lambda s: 18 * np.sqrt(max(0.0, 1 - ((s - 19) / 19) ** 2)))  # an ellipsoid
    rng = np.random.default_rng(0)
    radii = {s: r for s, r in zip((5, 12, 19, 26, 33), rng.permutation([3.0, 16.0, 6.0, 18.0, 4.0]))}
    erratic = _cone_targets(lambda s: radii[s])
    smooth_prior = build_shape_prior(smooth, 2, (1.0, 1.0), 1.0)
    erratic_prior = build_shape_prior(erratic, 2, (1.0, 1.0), 1.0)
    assert smooth_prior.beta <= 2.0  # mm at 10 mm from a painted slice; measured 1.0
    assert erratic_prior.beta >= 10 * smooth_prior.beta  # measured 48.0
    assert fully_painted_slices(smooth).tolist() == [5, 12, 19, 26, 33]


def test_partly_annotated_slices_do_not_feed_the_prior():
    targets = _cone_targets(lambda s: 6, slices=(5, 20))
    targets[9, 0, :] = 0  # a line from another plane's painting
    assert fully_painted_slices(targets).tolist() == [5, 20]
    prior = build_shape_prior(targets, 2, (1.0, 1.0), 1.0)
    assert prior.slices.tolist() == [5, 20]
    # One painted slice says nothing about how the outline moves: no prior.
    assert build_shape_prior(_cone_targets(lambda s: 6, slices=(5,)), 2, (1.0, 1.0), 1.0) is None
    assert build_shape_prior(np.full((3, 4, 4), IGNORE, np.uint8), 2, (1.0, 1.0), 1.0) is None


def test_prior_recovers_a_shape_between_slices():
    truth = _cone_targets(lambda s: 4 + 0.4 * s, slices=range(40))
    sparse = _cone_targets(lambda s: 4 + 0.4 * s)
    prior = build_shape_prior(sparse, 2, (1.0, 1.0), 1.0)
    predicted = prior.log_probs(range(40)).argmax(1).numpy()
    inner = slice(5, 34)
    overlap = (predicted[inner] == 1) & (truth[inner] == 1)
    dice = 2 * overlap.sum() / ((predicted[inner] == 1).sum() + (truth[inner] == 1).sum())
    assert dice > 0.97


def test_prediction_uses_the_prior_where_the_image_says_nothing(phantom):
    """A network that outputs a flat 50/50 everywhere: with the prior, prediction follows the interpolated outline;
    without it, the arg-max of a tie is background everywhere."""
    from ContrastiveSegLib.data.slices import InputSpec, SliceStack
    from ContrastiveSegLib.inference.predict import predict_volume

    class Flat(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    reference = (phantom.reference == 1).astype(np.uint8)
    targets = np.full(reference.shape, IGNORE, np.uint8)
    for s in phantom.slices:
        targets[s] = reference[s]
    stack = SliceStack(np.zeros(reference.shape, np.float32), 0, InputSpec())
    prior = build_shape_prior(targets, 2, (0.9, 0.9), 2.5)
    classes, _ = predict_volume(Flat(), stack, torch.device("cpu"), divisor=16, prior=prior)
    plain, _ = predict_volume(Flat(), stack, torch.device("cpu"), divisor=16)
    between = slice(min(phantom.slices), max(phantom.slices) + 1)
    overlap = ((classes[between] == 1) & (reference[between] == 1)).sum()
    dice = 2 * overlap / ((classes[between] == 1).sum() + (reference[between] == 1).sum())
    assert dice > 0.85
    assert (plain == 0).all()


def test_prior_pseudo_labels_fill_sure_voxels_between_painted_slices_only():
    from ContrastiveSegLib.inference.shape_prior import prior_pseudo_labels

    targets = _cone_targets(lambda s: 8, slices=(15, 23))  # a cylinder of radius 8 painted on two slices
    prior = build_shape_prior(targets, 2, (1.0, 1.0), 1.0)
    out, slices = prior_pseudo_labels(prior, targets, [15, 23], max_slices=4)
    assert slices[0] == 15 and slices[-1] == 23 and len(slices) == 6  # the two painted + four between
    assert (out[15] == targets[15]).all() and (out[23] == targets[23]).all()  # painted slices untouched
    middle = int(slices[2])
    centre = out[middle, 20, 20]
    assert centre == 1  # deep inside the interpolated cylinder
    assert out[middle, 0, 0] == 0  # far outside: sure background
    assert out[middle, 20, 20 + 8] == IGNORE  # on the outline: not sure, left unknown
    assert (out[:15] == IGNORE).all() and (out[24:] == IGNORE).all()  # nothing beyond the painted slices


def test_a_flat_prior_leaves_the_odds_between_background_and_its_class_alone():
    """Issue 16, bug 3: far from the informative class, the uninformative class and the background are equally
    likely under the prior (it was 2:1 for the background)."""
    two = torch.stack([torch.tensor([[100.0]]), torch.tensor([[0.0]])])  # class 1 far outside; class 2 no info
    p = _log_categorical(two, 1.0, torch.tensor([True, False])).exp()
    assert p[0, 0, 0] == pytest.approx(0.5, abs=1e-6) and p[2, 0, 0] == pytest.approx(0.5, abs=1e-6)
    assert p[1, 0, 0] < 1e-6


def test_a_class_filling_a_painted_slice_is_deep_inside_not_minus_infinity():
    d = signed_distance(np.ones((5, 7), bool), (1.0, 2.0))
    assert np.isfinite(d).all() and (d < 0).all()
    assert d[2, 3] == pytest.approx(0.5 - 3.0)  # the centre: 3 rows (3 mm) from the slice's edge
    # It counts as information: the class is present between two slices it fills.
    targets = np.full((5, 6, 6), IGNORE, np.uint8)
    targets[0] = 1
    targets[4] = 1
    prior = build_shape_prior(targets, 2, (1.0, 1.0), 1.0)
    assert prior.informative.tolist() == [True]
    assert (prior.log_probs([2]).argmax(1) == 1).all()


def test_the_leave_one_out_depth_ignores_the_held_out_slice():
    distances = np.stack([np.full((1, 1, 1), -1.0), np.full((1, 1, 1), -9.0), np.full((1, 1, 1), -2.0)])
    prior = ShapePrior(np.asarray([0, 4, 8]), distances.astype(np.float32), np.ones(1, bool), 1.0, 1.0, tau0=0.5)
    assert prior._depth().tolist() == [9.0]
    assert prior._depth(np.asarray([0, 2])).tolist() == [2.0]  # without the deep middle slice
