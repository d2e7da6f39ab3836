"""The default fusion: the contour prior and grow-cut's evidence weighed against the network; each expert left out
when its package is missing; a useless network leaves the answer to the experts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ContrastiveSegLib.inference.contour_prior import ContourPrior
from ContrastiveSegLib.inference.fusion import (GROWCUT_WEIGHT, FusedPrior, GrowCutEvidence, fused_prior_of,
                                                growcut_evidence, slicer_growcut)
from ContrastiveSegLib.inference.shape_prior import signed_distance
from test_contour_prior import _dice, _shift_interpolator, _sparse  # the tube's exact interpolation, Dice


def _tube(depth=21, size=40):
    """(depth, size, size) uint8 truth: a bright disk (radius 6) drifting 10 voxels along x, on a dark image."""
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((depth, size, size), np.uint8)
    for s in range(depth):
        truth[s] = np.hypot(yy - size / 2, xx - (15 + 10 * s / (depth - 1))) <= 6
    image = np.where(truth == 1, 200.0, 0.0).astype(np.float32)
    return image, truth


def _truth_grower(truth):
    def grow(image, sparse, axis, spacing):
        assert sparse.shape == truth.shape  # volume order
        assert set(np.unique(sparse)) <= {0, 1}  # the Slicer tools' convention: no IGNORE off the painted slices
        return truth.copy()
    return grow



def _copy_interpolator(classes):
    return classes  # draws nothing between the slices: the grow-cut must carry the middle


def test_growcut_evidence_is_a_soft_outline_weighted_by_its_weight():
    image, truth = _tube()
    evidence = growcut_evidence(image, _sparse(truth, (2, 18)), 2, 0, (1.0, 1.0, 1.0), _truth_grower(truth))
    assert isinstance(evidence, GrowCutEvidence) and evidence.weight == GROWCUT_WEIGHT
    log_p = evidence.log_probs([10])[0] / GROWCUT_WEIGHT
    assert torch.allclose(log_p.exp().sum(0), torch.ones(truth.shape[1:]), atol=1e-5)
    assert (log_p.argmax(0).numpy() == truth[10]).all()
    # At the disk's centre, d mm inside, the structure's probability is sigmoid(d / tau), tau = 2 voxels of 1 mm.
    centre = (20, 20)
    depth = -float(signed_distance(truth[10] == 1, (1.0, 1.0))[centre])
    assert depth > 5
    assert float(log_p[1][centre].exp()) == pytest.approx(1 / (1 + np.exp(-depth / 2.0)), abs=1e-5)


def test_no_growcut_from_one_slice_nor_without_its_package():
    image, truth = _tube()
    assert growcut_evidence(image, _sparse(truth, (10,)), 2, 0, (1, 1, 1), _truth_grower(truth)) is None

    def missing(*args):
        raise ImportError("pip install slicer-core")

    def broken(*args):
        raise RuntimeError("the tool's process died")

    for grower in (None, missing, broken):
        assert growcut_evidence(image, _sparse(truth, (2, 18)), 2, 0, (1, 1, 1), grower) is None


def test_fused_prior_sums_the_experts_and_falls_back_to_what_is_there():
    image, truth = _tube()
    targets = _sparse(truth, (2, 10, 18))
    fused = fused_prior_of(image, targets, 2, 0, (1, 1, 1), _copy_interpolator, _truth_grower(truth))
    assert isinstance(fused, FusedPrior) and len(fused.experts) == 2
    assert isinstance(fused.experts[0], ContourPrior)
    assert torch.allclose(fused.log_probs([5]), fused.experts[0].log_probs([5]) + fused.experts[1].log_probs([5]))
    only_contour = fused_prior_of(image, targets, 2, 0, (1, 1, 1), _copy_interpolator, None)
    assert len(only_contour.experts) == 1
    assert fused_prior_of(image, _sparse(truth, (10,)), 2, 0, (1, 1, 1), _copy_interpolator,
                          _truth_grower(truth)) is None


def test_a_useless_network_is_outvoted_where_the_experts_agree():
    """A network that is noise (and even one mildly, uniformly wrong): the fused arg-max recovers the tube the
    experts see, far above the network alone."""
    image, truth = _tube()
    fused = fused_prior_of(image, _sparse(truth, (2, 10, 18)), 2, 0, (1, 1, 1), _shift_interpolator,
                           _truth_grower(truth))
    log_prior = fused.log_probs(range(len(truth)))
    rng = torch.Generator().manual_seed(0)
    noise = torch.log_softmax(torch.randn(log_prior.shape, generator=rng), dim=1)
    biased = torch.log(torch.tensor([0.8, 0.2]))[None, :, None, None].expand_as(log_prior)  # says background
    for network in (noise, biased):
        alone = _dice(network.argmax(1).numpy(), truth)
        together = _dice((network + log_prior).argmax(1).numpy(), truth)
        assert together > 0.8 and together > alone + 0.3  # measured 0.89 (noise), 0.82 (biased); experts 0.96


def test_slicer_growcut_follows_the_bright_tube():
    pytest.importorskip("slicer")
    image, truth = _tube()
    grown = slicer_growcut(image, _sparse(truth, (2, 10, 18)), 0, (1.0, 1.0, 1.0))
    assert _dice(grown, truth) > 0.95
