"""The contour prior: Slicer's contour interpolation between the painted slices as probabilities, its
leave-one-out fit, the weight against the network, and the fall-back to the linear prior."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ContrastiveSegLib.inference.contour_prior import (ContourPrior, build_contour_prior, interpolate_painted,
                                                       itk_interpolator)
from ContrastiveSegLib.inference.shape_prior import ShapePrior, build_shape_prior
from ContrastiveSegLib.io.annotations import IGNORE


def _moving_disk(depth=21, size=48, radius=7.0, travel=24.0):
    """(depth, size, size) uint8: a disk whose centre moves ``travel`` voxels along x from the first slice to the
    last, a tube that leans: the outline moves further between slices than it is wide."""
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((depth, size, size), np.uint8)
    for s in range(depth):
        centre = 12 + travel * s / (depth - 1)
        truth[s] = np.hypot(yy - size / 2, xx - centre) <= radius
    return truth


def _sparse(truth, slices):
    targets = np.full(truth.shape, IGNORE, np.uint8)
    targets[list(slices)] = truth[list(slices)]
    return targets


def _dice(a, b):
    return 2 * ((a == 1) & (b == 1)).sum() / ((a == 1).sum() + (b == 1).sum())


def _shift_interpolator(classes):
    """A stand-in for ITK's interpolator that knows the truth of :func:`_moving_disk` between its painted slices
    (the tests of the wiring must not depend on ITK being installed)."""
    out = classes.copy()
    painted = [s for s in range(len(classes)) if classes[s].any()]
    for low, high in zip(painted[:-1], painted[1:]):
        for s in range(low + 1, high):
            t = (s - low) / (high - low)
            ys, xs = np.nonzero(classes[low])
            shift = (np.nonzero(classes[high])[1].mean() - xs.mean()) * t
            out[s][ys, np.clip(np.round(xs + shift).astype(int), 0, classes.shape[2] - 1)] = 1
    return out


def test_the_contour_prior_follows_an_outline_that_the_linear_blend_loses():
    truth = _moving_disk()
    targets = _sparse(truth, (0, 10, 20))
    contour = build_contour_prior(targets, 2, (1.0, 1.0), 1.0, _shift_interpolator)
    linear = build_shape_prior(targets, 2, (1.0, 1.0), 1.0)
    assert isinstance(contour, ContourPrior)
    every = range(len(truth))
    d_contour = _dice(contour.log_probs(every).argmax(1).numpy(), truth)
    d_linear = _dice(linear.log_probs(every).argmax(1).numpy(), truth)
    # Half way between painted slices the blended disks overlap by a sliver: the linear prior loses the tube there.
    assert d_contour > 0.95  # measured 0.972
    assert d_linear < 0.85  # measured 0.802
    # The held-out middle slice, interpolated from the two ends, is where the leave-one-out fit looks.
    assert set(contour.held_out) == {1}
    assert _dice(contour.held_out[1], truth[10]) > 0.9


def test_itk_interpolation_recovers_the_moving_tube():
    pytest.importorskip("itk")
    truth = _moving_disk()
    targets = _sparse(truth, (0, 10, 20))
    contour = build_contour_prior(targets, 2, (1.0, 1.0), 1.0, itk_interpolator)
    assert isinstance(contour, ContourPrior)
    predicted = contour.log_probs(range(len(truth))).argmax(1).numpy()
    assert _dice(predicted, truth) > 0.95  # measured 0.972; the linear prior 0.802


def test_interpolation_sees_only_the_painted_structures_box_and_range():
    truth = _moving_disk()
    seen = []

    def spy(classes):
        seen.append(classes.shape)
        return classes

    filled = interpolate_painted(_sparse(truth, (4, 16)), np.asarray([4, 16]), spy)
    assert seen[0][0] == 13  # slices 4..16
    assert seen[0][1] < truth.shape[1] and seen[0][2] < truth.shape[2]  # cropped in-plane
    assert filled[:4].sum() == 0 and filled[17:].sum() == 0


def test_a_useless_network_leaves_the_answer_to_the_prior():
    """A network that says nothing (equal probabilities) or noise far weaker than the weighted prior: the fused
    arg-max is the prior's, so the result is never below the interpolation."""
    truth = _moving_disk()
    prior = build_contour_prior(_sparse(truth, (0, 10, 20)), 2, (1.0, 1.0), 1.0, _shift_interpolator)
    log_prior = prior.log_probs(range(len(truth)))
    rng = torch.Generator().manual_seed(0)
    noise = torch.log_softmax(0.1 * torch.randn(log_prior.shape, generator=rng), dim=1)
    for network in (torch.full(log_prior.shape, np.log(0.5)), noise):
        fused = (network + log_prior).argmax(1).numpy()
        assert _dice(fused, truth) >= _dice(log_prior.argmax(1).numpy(), truth) - 0.01


def test_weight_scales_the_log_probabilities():
    truth = _moving_disk()
    targets = _sparse(truth, (0, 10, 20))
    one = build_contour_prior(targets, 2, (1.0, 1.0), 1.0, _shift_interpolator, weight=1.0)
    two = build_contour_prior(targets, 2, (1.0, 1.0), 1.0, _shift_interpolator, weight=2.0)
    assert torch.allclose(2 * one.log_probs([5]), two.log_probs([5]))


def test_without_an_interpolator_the_linear_prior_stands():
    truth = _moving_disk()
    targets = _sparse(truth, (0, 10, 20))

    def missing(classes):
        raise ImportError("no ITK here")

    for interpolator in (None, missing):
        prior = build_contour_prior(targets, 2, (1.0, 1.0), 1.0, interpolator)
        assert type(prior) is ShapePrior
    assert build_contour_prior(_sparse(truth, (10,)), 2, (1.0, 1.0), 1.0, _shift_interpolator) is None
