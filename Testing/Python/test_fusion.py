"""The default fusion: the contour prior and grow-cut's evidence weighed against the network; each expert left out
when its package is missing; a useless network leaves the answer to the experts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ContrastiveSegLib.inference.contour_prior import ContourPrior
from ContrastiveSegLib.inference.fusion import (GROWCUT_WEIGHT, FusedPrior, GrowCutEvidence, fused_prior_of,
                                                growcut_evidence, growcut_weights, held_out_growcut,
                                                leave_one_out_dice, slicer_growcut)
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
    """A grow-cut stand-in that finds the bright tube exactly in whatever part of the volume it is given (the
    held-out runs get slabs)."""
    def grow(image, sparse, axis, spacing, whole=False):
        assert sparse.shape == image.shape and image.shape[1:] == truth.shape[1:]  # volume order
        assert set(np.unique(sparse)) <= {0, 1}  # the Slicer tools' convention: no IGNORE off the painted slices
        return (image > 100).astype(np.uint8)
    return grow


class _Case:
    """What ExpertsRun reads of a prepared case: the tube painted along axis 0 at 1 mm."""

    def __init__(self, image, targets):
        self.image, self.targets, self.axis, self.spacing = image, targets, 0, (1, 1, 1)


def _copy_interpolator(classes):
    return classes  # draws nothing between the slices: the grow-cut must carry the middle


def test_growcut_evidence_is_a_soft_outline_weighted_by_its_leave_one_out():
    image, truth = _tube()
    evidence = growcut_evidence(image, _sparse(truth, (2, 18)), 2, 0, (1.0, 1.0, 1.0), _truth_grower(truth))
    # The stand-in finds each painted slice from the other exactly: Dice 1, clipped to 0.995 -> logit 5.29, plus
    # the floor's -logit(0.05) = 2.94, doubled: weight 16.48.
    assert isinstance(evidence, GrowCutEvidence)
    assert evidence.weights == pytest.approx([2 * (np.log(0.995 / 0.005) + np.log(0.95 / 0.05))])
    log_p = evidence.log_probs([10])[0]
    assert torch.allclose(log_p.exp().sum(0), torch.ones(truth.shape[1:]), atol=1e-5)
    assert (log_p.argmax(0).numpy() == truth[10]).all()
    # At the disk's centre, d mm inside, the structure's odds against the background are w d / tau (tau = 2 mm),
    # as long as the sigmoid has not saturated (clamped at 60).
    centre = (20, 20)
    depth = -float(signed_distance(truth[10] == 1, (1.0, 1.0))[centre])
    assert depth > 5
    odds = float((log_p[1] - log_p[0])[centre])
    assert odds == pytest.approx(min(evidence.weights[0] * depth / 2.0, 60.0), rel=1e-4)


def test_growcut_weights_by_hand():
    weights = growcut_weights(np.array([0.99, 0.5, 0.05, 0.0, np.nan]))
    floor = np.log(0.95 / 0.05)  # logit(0.05) = -2.944; the log-odds are doubled: 0.99 -> 2 * (4.595 + 2.944)
    assert weights == pytest.approx([2 * (np.log(99) + floor), 2 * floor, 0.0, 0.0, GROWCUT_WEIGHT])
    assert weights[0] == pytest.approx(15.079, abs=1e-3)


def test_no_growcut_from_one_slice_nor_without_its_package():
    image, truth = _tube()
    assert growcut_evidence(image, _sparse(truth, (10,)), 2, 0, (1, 1, 1), _truth_grower(truth)) is None

    def missing(*args, **kwargs):
        raise ImportError("pip install slicer-core")

    def broken(*args, **kwargs):
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


def _nearest_seed_grower(calls):
    """A grower that gives every slice the classes of the nearest seeded slice (through the whole array when
    ``whole``), recording what it was given."""
    def grow(image, sparse, axis, spacing, whole=False):
        assert axis == 0 and image.shape == sparse.shape
        seeded = np.flatnonzero(sparse.reshape(len(sparse), -1).any(axis=1))
        calls.append((len(sparse), seeded.tolist(), whole))
        nearest = seeded[np.abs(np.arange(len(sparse))[:, None] - seeded[None, :]).argmin(axis=1)]
        return sparse[nearest]
    return grow


def test_held_out_growcut_grows_each_painted_slice_from_its_neighbours_in_their_slab():
    image, truth = _tube(depth=21)
    targets = _sparse(truth, (2, 10, 18))
    calls = []
    every, held = held_out_growcut(image, targets, 2, 0, (1, 1, 1), _nearest_seed_grower(calls))
    # Slicer's own run from all three, then one slab per painted slice: from the slice before its previous painted
    # neighbour to the slice after its next one (VTK spreads no seed on the array's border), seeds on the walls only.
    assert calls == [(21, [2, 10, 18], False), (11, [9], True), (19, [1, 17], True), (11, [1], True)]
    assert (every[10] == truth[10]).all()
    assert (held[0] == truth[10]).all() and (held[2] == truth[10]).all()
    # slice 10 is as far from 2 as from 18: argmin takes the first, slice 2 (slab offset 1)
    assert (held[1] == truth[2]).all()


def test_leave_one_out_dice_by_hand():
    targets = np.zeros((3, 4, 4), np.uint8)
    targets[:, :2, :2] = 1  # class 1 on every painted slice: 4 voxels each
    targets[1, 3, 3] = 2  # class 2 on the middle slice only
    held = {0: targets[0].copy(), 1: targets[1].copy(), 2: targets[2].copy()}
    held[1][0, 0] = 0  # 3 of 4 voxels found: Dice 6/7
    held[2][3, 3] = 2  # class 2 leaks onto a slice where it is not: Dice 0 there
    dice = leave_one_out_dice(targets, held, 3)
    assert dice[0] == pytest.approx((1 + 6 / 7 + 1) / 3)
    # class 2: slice 1 does not count (no other slice holds it); slice 0 (neither: 1) and 2 (a leak: 0)
    assert dice[1] == pytest.approx(0.5)
    assert np.isnan(leave_one_out_dice(targets, {1: held[1]}, 3)[1])


def test_growcut_weights_per_structure_sharpen_or_silence_its_outline():
    image, truth = _tube()
    classes = np.where(truth == 1, 1, 0).astype(np.uint8)
    classes[:, 30:, 30:] = 2  # a second structure in a corner
    sharp = GrowCutEvidence(classes, 3, (1.0, 1.0), 2.0, weights=np.array([2.0, 0.0]))
    log_p = sharp.log_probs([10])[0]
    centre = (20, 20)
    depth = -float(signed_distance(truth[10] == 1, (1.0, 1.0))[centre])
    # structure 1: sigmoid(2 d / tau) against the background; structure 2 (weight 0) is flat: the background's odds
    odds = float((log_p[1] - log_p[0])[centre])
    assert odds == pytest.approx(2 * depth / 2.0, abs=1e-4)
    assert torch.allclose(log_p[2], log_p[0])


def test_slicer_growcut_slab_equals_the_whole_volume_leave_one_out():
    """The wall argument of held_out_growcut, with Slicer's grow-cut: growing the held-out slice in its slab gives
    what growing it through the whole volume from every other painted slice gives."""
    pytest.importorskip("slicer")
    image, truth = _tube(depth=21)
    targets = _sparse(truth, (2, 10, 18))
    _, held = held_out_growcut(image, targets, 2, 0, (1, 1, 1), slicer_growcut)
    seeds = np.where(np.isin(np.arange(21), [2, 18])[:, None, None], truth, 0)
    whole = slicer_growcut(image, seeds, 0, (1, 1, 1), whole=True)
    assert (held[1] == whole[10]).all()
    assert _dice(held[1], truth[10]) > 0.9


def test_experts_run_beside_the_caller_and_stop_kills_them(monkeypatch):
    """ExpertsRun computes the fused prior in a thread; stop() sets the flag its child processes are killed by,
    and the result is then a Cancelled, not a hang."""
    import threading

    from ContrastiveSegLib.errors import Cancelled
    from ContrastiveSegLib.inference import fusion

    started = threading.Event()

    def waiting_grower(image, sparse, axis, spacing, whole=False, cancel=None):
        started.set()
        while not cancel.is_set():  # a grow-cut child that runs until killed
            threading.Event().wait(0.01)
        raise Cancelled("cancelled")

    monkeypatch.setattr(fusion, "slicer_growcut", waiting_grower)
    monkeypatch.setattr(fusion, "itk_interpolator", lambda classes, cancel=None: _copy_interpolator(classes))
    image, truth = _tube()
    experts = fusion.ExpertsRun(_Case(image, _sparse(truth, (2, 10, 18))), 2)
    assert started.wait(60)  # it runs while the caller goes on
    experts.stop()
    with pytest.raises(Cancelled):
        experts._future.result(timeout=60)


def test_experts_run_gives_what_fused_prior_of_gives(monkeypatch):
    from ContrastiveSegLib.inference import fusion

    monkeypatch.setattr(fusion, "slicer_growcut", lambda *a, whole=False, cancel=None: _truth_grower(_tube()[1])(
        *a, whole=whole))
    monkeypatch.setattr(fusion, "itk_interpolator", lambda classes, cancel=None: _copy_interpolator(classes))
    image, truth = _tube()
    targets = _sparse(truth, (2, 10, 18))
    direct = fused_prior_of(image, targets, 2, 0, (1, 1, 1), _copy_interpolator, _truth_grower(truth))
    beside = fusion.ExpertsRun(_Case(image, targets), 2).result()
    assert torch.equal(direct.log_probs([5, 10]), beside.log_probs([5, 10]))


def test_a_failed_run_stops_its_experts(monkeypatch):
    from ContrastiveSegLib import api

    stopped = []

    class RecordingExperts:
        def __init__(self, *args):
            pass

        def stop(self):
            stopped.append(True)

    def failing_finetune(*args, **kwargs):
        raise RuntimeError("the training failed")

    monkeypatch.setattr(api, "ExpertsRun", RecordingExperts)
    monkeypatch.setattr(api, "finetune_case", failing_finetune)
    image, truth = _tube()
    labels = np.zeros_like(truth)
    labels[[2, 10, 18]] = truth[[2, 10, 18]]
    with pytest.raises(RuntimeError, match="the training failed"):
        api.segment(image, labels, (1, 1, 1), axis=0, device="cpu", threads=1)
    assert stopped == [True]


def test_a_large_growcut_runs_on_every_nth_row_and_column(monkeypatch):
    """Above GROW_MAX_VOXELS grow-cut sees every n-th row and column (the 512 x 512 CT: 122 s at full
    resolution); its classes are repeated back to the full grid. Below it, nothing changes."""
    from ContrastiveSegLib.inference import fusion

    image, truth = _tube(depth=21, size=40)
    targets = _sparse(truth, (2, 10, 18))
    seen = []

    def grower(image, sparse, axis, spacing, whole=False):
        seen.append((image.shape, tuple(spacing)))
        return (image > 100).astype(np.uint8)

    full = fusion._grow(image, targets, np.array([2, 10, 18]), 2, 0, (1.0, 1.0, 1.0), grower, whole=True)
    assert seen[-1] == ((21, 40, 40), (1.0, 1.0, 1.0)) and (full == truth).all()
    monkeypatch.setattr(fusion, "GROW_MAX_VOXELS", 21 * 40 * 40 // 4)  # a step of 2 fits exactly
    assert fusion.inplane_step(21, 40 * 40) == 2
    coarse = fusion._grow(image, targets, np.array([2, 10, 18]), 2, 0, (1.0, 1.0, 1.0), grower, whole=True)
    assert seen[-1] == ((21, 20, 20), (2.0, 2.0, 1.0))  # spacing (x, y, z): the in-plane axes are coarser
    assert coarse.shape == truth.shape
    assert (coarse[:, ::2, ::2] == truth[:, ::2, ::2]).all()
    assert _dice(coarse, truth) > 0.9


def test_fused_prior_hands_out_growcuts_classes_for_the_filling():
    """predict_case fills vanished slices from the fused prior's grow-cut (postprocess.fill_vanished_slices): the
    classes come from the grow-cut expert, and there are none without it."""
    image, truth = _tube()
    targets = _sparse(truth, (2, 10, 18))
    both = fused_prior_of(image, targets, 2, 0, (1.0, 1.0, 1.0), interpolator=None, grower=_truth_grower(truth))
    assert (both.grown_classes() == truth).all()
    assert FusedPrior([]).grown_classes() is None
