"""What prediction weighs the network against: the painted outlines interpolated between the slices and the
intensity evidence of Slicer's "Grow from seeds", as one product of experts.

``log p(class) = log p_net + CONTOUR_WEIGHT * log p_contour + log p_growcut`` (renormalised), slice by slice inside
:func:`~ContrastiveSegLib.inference.predict.predict_volume`.

- The contour prior (:mod:`~ContrastiveSegLib.inference.contour_prior`): where a structure goes between the painted
  slices, as Slicer's "Fill between slices" draws it, with an uncertainty learnt per scan by leave-one-out.
- The grow-cut evidence (:func:`growcut_evidence`): Slicer's grow-cut (Zhu et al., MICCAI IMIC 2014) from the
  painted slices, the tool that wins on high-contrast CT (lungs, bone, contrast vessels), as an outline with a
  soft edge. It is what the network lacks at few painted slices: a confident intensity-driven answer in the wide
  middle between two slices. How much it is trusted is decided per scan and per structure: grow-cut predicts each
  painted slice from the others (:func:`held_out_growcut`), and its Dice there sets the sharpness of that
  structure's outline (:func:`growcut_weights`): the lungs of a chest CT, found at Dice 0.99, outvote the network;
  thin ribs that grow-cut loses between coronal slices (Dice 0) are left to the network.

Both come only from two or more fully painted slices (with one, the grow-cut region is a few slices thick and the
interpolation has nothing to go on). The weights are the benchmark's choice (benchmarks/results/fusion.md,
expert_weights.md: chosen on six tasks, confirmed on four). Either expert is left out, with the rest still fused,
where its package (ITK's contour interpolation, slicer-core's grow-cut) is not installed. The experts need the
painting only, so :class:`ExpertsRun` computes them beside the fine-tuning.
"""
from __future__ import annotations

import functools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ContrastiveSegLib.inference.contour_prior import (CONTOUR_WEIGHT, Interpolator, contour_prior_of,
                                                       itk_interpolator)
from ContrastiveSegLib.inference.shape_prior import (MIN_SLICES, _log_categorical, fully_painted_slices,
                                                     signed_distance, stack_spacing)

GROWCUT_WEIGHT = 2.0  # grow-cut's weight where its leave-one-out has nothing to go by (see growcut_weights)
GROWCUT_LOO_SCALE = 2.0  # benchmark-chosen among 1 to 4 (benchmarks/results/network_trust.md; 1 before)
GROWCUT_LOO_FLOOR = 0.05  # the leave-one-out Dice at which grow-cut's weight reaches 0
GROWCUT_TAU = 2.0  # voxels: the soft edge of the grow-cut outline (its boundary is exact to about a voxel)
# Voxels above which grow-cut runs on every n-th row and column. Slicer's grow-cut took 122 s on the painted part of
# a 512 x 512 x 300 CT (110 x 512 x 512) and its leave-one-out 187 s more; with a step of 3 they are about a ninth.
# Every benchmark task's grow-cut fits below it, so their results are those at full resolution.
GROW_MAX_VOXELS = 4_000_000

# (image (z, y, x), sparse class indices (z, y, x): the fully painted slices, 0 elsewhere, axis, spacing (x, y, z),
# whole) -> (z, y, x) class indices grown into the volume: within Slicer's box around the seeds, or through the
# whole array given when ``whole`` is True.
Grower = Callable[..., np.ndarray]


def slicer_growcut(image: np.ndarray, sparse: np.ndarray, axis: int, spacing, whole: bool = False,
                   cancel=None) -> np.ndarray:
    """Slicer's "Grow from seeds" as the Segment Editor runs it (``whole``: through the whole array instead of
    Slicer's box around the seeds), in a child process (VTK from slicer-core) that is killed once ``cancel`` is
    set. Raises ImportError when slicer-core is not installed."""
    from ContrastiveSegLib.baselines.runner import GROW, run_baseline

    return run_baseline(GROW, image, sparse, axis, spacing, cancel=cancel, whole_volume=whole)


def inplane_step(slices: int, slice_voxels: int) -> int:
    """The in-plane stride that keeps a grow-cut through ``slices`` slices of ``slice_voxels`` voxels within
    :data:`GROW_MAX_VOXELS`: 1 (full resolution) up to that size, else the smallest whole step that fits."""
    return max(1, int(np.ceil(np.sqrt(slices * slice_voxels / GROW_MAX_VOXELS))))


def _grown_slices(seeds: np.ndarray, length: int, whole: bool) -> int:
    """How many slices a grow-cut runs through: all ``length`` when ``whole``, else Slicer's box around the seeded
    slices (their span plus the effect's margin on each side, :mod:`~ContrastiveSegLib.baselines.growcut`)."""
    from ContrastiveSegLib.baselines.growcut import SLICER_INITIAL_GROWTH_RATIO, SLICER_MIN_MARGIN

    if whole:
        return length
    span = int(seeds.max() - seeds.min())
    margin = int(max(SLICER_MIN_MARGIN, SLICER_INITIAL_GROWTH_RATIO * span))
    return min(length, span + 1 + 2 * margin)


def _grow(image: np.ndarray, targets: np.ndarray, seeds: np.ndarray, num_classes: int, axis: int, spacing,
          grower: Grower, whole: bool = False) -> np.ndarray:
    """(S, H, W) uint8 classes grown by ``grower`` from the slices ``seeds`` of ``targets`` (stack order) through
    the stack ``image`` (array order) covers; on an array above :data:`GROW_MAX_VOXELS`, on every
    :func:`inplane_step`-th row and column, the result repeated back to full size."""
    sparse = np.zeros_like(targets)  # the Slicer tools' convention: painted slices in full, 0 everywhere else
    sparse[seeds] = targets[seeds]
    step = inplane_step(_grown_slices(np.asarray(seeds), len(targets), whole), targets[0].size)
    inplane = (slice(None, None, step),) * 2
    stack_image = np.ascontiguousarray(np.moveaxis(image, axis, 0)[(slice(None),) + inplane])
    coarse = sparse[(slice(None),) + inplane]
    spacing = tuple(float(v) * (step if a != 2 - axis else 1) for a, v in enumerate(spacing))  # (x, y, z) mm
    grown = np.asarray(grower(np.ascontiguousarray(np.moveaxis(stack_image, 0, axis)),
                              np.ascontiguousarray(np.moveaxis(coarse, 0, axis)), axis, spacing, whole=whole))
    grown = np.moveaxis(grown, axis, 0)
    if step > 1:
        grown = grown.repeat(step, axis=1).repeat(step, axis=2)[:, :targets.shape[1], :targets.shape[2]]
    return np.where(grown < num_classes, grown, 0).astype(np.uint8)


def held_out_growcut(image: np.ndarray, targets: np.ndarray, num_classes: int, axis: int, spacing,
                     grower: Grower) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Grow-cut from every fully painted slice, and for each of them the grow-cut from the others on it.

    Returns ((S, H, W) uint8 classes from every painted slice (Slicer's own run), {position in the painted
    slices: (H, W) uint8 classes grown on that slice without it}): the leave-one-out that tells how well grow-cut
    predicts a slice it was not given, per scan and per structure (:func:`leave_one_out_dice`).

    Why slabs: a fully painted slice is a wall of seeds, and grow-cut gives each voxel the label of the seed with
    the cheapest path to it, which cannot cross that wall more cheaply than the wall's own seeds; so growing a
    held-out slice from its two painted neighbours in the slab between them (grown through, not in Slicer's box,
    which could stop short of it) is the whole leave-one-out at two gaps' cost. The first and the last painted
    slice are predicted from their one neighbour across one gap (an extrapolation, as a scan's ends are).
    ``targets`` as in :func:`fused_prior_of`; grower errors propagate.
    """
    painted = fully_painted_slices(targets)
    every = _grow(image, targets, painted, num_classes, axis, spacing, grower)
    held = {}
    for position, s in enumerate(painted):
        # One slice beyond each wall where there is one: VTK's grow-cut spreads no seed that lies on the array's
        # border (measured: a slab that ends on its seed slice grows nothing).
        low = max(int(painted[max(position - 1, 0)]) - 1, 0)
        high = min(int(painted[min(position + 1, len(painted) - 1)]) + 1, len(targets) - 1)
        slab = [slice(None)] * 3
        slab[axis] = slice(low, high + 1)
        neighbours = np.setdiff1d(painted[(painted >= low) & (painted <= high)], [s]) - low
        grown = _grow(image[tuple(slab)], targets[low:high + 1], neighbours, num_classes, axis, spacing, grower,
                      whole=True)
        held[position] = grown[int(s) - low]
    return every, held


@dataclass
class GrowCutEvidence:
    """Grow-cut's classes as probabilities: a soft outline of width ``tau`` mm around each grown structure.

    Attributes:
        classes: (S, H, W) uint8 grown class indices in stack order.
        num_classes: classes including the background.
        inplane: (row, column) mm.
        tau: edge width (mm).
        weight: exponent in the product with the network (the same for every structure).
        weights: (C - 1,) per-structure weights instead of ``weight``, or None: structure c's outline becomes
            ``sigmoid(-d * weights[c] / tau)`` (a weight sharpens its edge; 0 leaves the structure to the
            other experts).
    """

    classes: np.ndarray
    num_classes: int
    inplane: tuple
    tau: float
    weight: float = GROWCUT_WEIGHT
    weights: np.ndarray | None = None

    def log_probs(self, indices) -> torch.Tensor:
        """(N, C, H, W) weighted log probabilities of slices ``indices``."""
        if self.weights is None:
            scale, informative, power = torch.ones(self.num_classes - 1), torch.ones(self.num_classes - 1,
                                                                                     dtype=torch.bool), self.weight
        else:
            scale = torch.as_tensor(np.asarray(self.weights, np.float32))
            informative, power = scale > 0, 1.0
        out = [_log_categorical(torch.from_numpy(self.distances(int(s))) * scale[:, None, None], self.tau,
                                informative) for s in np.asarray(indices).reshape(-1)]
        return power * torch.stack(out)

    def distances(self, s: int) -> np.ndarray:
        """(C - 1, H, W) float32 signed distances (mm) to each grown structure's outline on slice ``s``."""
        d = np.stack([signed_distance(self.classes[s] == c, self.inplane) for c in range(1, self.num_classes)])
        return np.where(np.isfinite(d), d, np.where(d > 0, 1e3, -1e3)).astype(np.float32)  # absent / filling


def growcut_weights(dice: np.ndarray) -> np.ndarray:
    """(C - 1,) grow-cut weights from its leave-one-out Dice per structure (:func:`leave_one_out_dice`):
    ``GROWCUT_LOO_SCALE * max(0, logit(D) - logit(GROWCUT_LOO_FLOOR))``, the log-odds that grow-cut is right on a
    painted slice it was not given, counted from a floor (a voter right with probability D weighs ``logit(D)``, as
    in boosting). D is clipped to [0.01, 0.995] (finite weights); a structure with nothing to tell it by (NaN) gets
    the fixed :data:`GROWCUT_WEIGHT`. So 0.99 weighs 15.1, 0.8 8.7, 0.5 5.9, 0.05 and below 0.

    Why from a floor rather than from 0.5: the leave-one-out predicts a slice across two gaps (or, at the ends, from
    one side), so its Dice runs well below grow-cut's Dice between the painted slices (0.35 against 0.86 on the
    1 mm deep grey matter at three slices), and a weight that vanished at 0.5 dropped grow-cut where it helps.
    Why twice the log-odds: for the same reason the held-out Dice understates how well grow-cut does between
    neighbouring slices, and doubling the weights of the structures it gets right anywhere (leaving those it loses at
    0) was better than 1x on 43 of 90 (task, k, seed) and worse on 23, on both the choosing and confirming tasks.
    """
    d = np.clip(np.nan_to_num(dice, nan=0.5), 0.01, 0.995)
    floor = np.log(GROWCUT_LOO_FLOOR / (1 - GROWCUT_LOO_FLOOR))
    weights = GROWCUT_LOO_SCALE * np.maximum(np.log(d / (1 - d)) - floor, 0.0)
    return np.where(np.isnan(dice), GROWCUT_WEIGHT, weights)


def growcut_evidence(image: np.ndarray, targets: np.ndarray, num_classes: int, axis: int, spacing,
                     grower: Grower | None = slicer_growcut) -> GrowCutEvidence | None:
    """Grow-cut from the painted slices of ``targets`` ((S, H, W) stack order), each structure weighted by how
    well grow-cut predicts its painted slices from the others (:func:`held_out_growcut`, :func:`growcut_weights`);
    None: fewer than :data:`~ContrastiveSegLib.inference.shape_prior.MIN_SLICES` fully painted slices, no
    ``grower``, or its package is missing (ImportError) or it failed (RuntimeError: the prediction goes on without
    it)."""
    if grower is None or len(fully_painted_slices(targets)) < MIN_SLICES:
        return None
    try:
        classes, held = held_out_growcut(image, targets, num_classes, axis, spacing, grower)
    except (ImportError, RuntimeError):
        return None
    inplane, _ = stack_spacing(spacing, axis)
    return GrowCutEvidence(classes, num_classes, inplane, GROWCUT_TAU * min(inplane),
                           weights=growcut_weights(leave_one_out_dice(targets, held, num_classes)))


def leave_one_out_dice(targets: np.ndarray, held: dict[int, np.ndarray], num_classes: int) -> np.ndarray:
    """(C - 1,) mean Dice per foreground class of the held-out predictions ``held`` ({position: (H, W)}, as from
    :func:`held_out_growcut`) on their painted slices of ``targets``.

    A held-out slice counts for a class only where some other painted slice holds it (grow-cut cannot find a
    structure it has no seed of: that says nothing of how well it follows one); there, a slice where the class is
    in neither truth nor prediction counts as 1. NaN for a class with no such slice.
    """
    painted = fully_painted_slices(targets)
    present = np.stack([(targets[painted] == c).any(axis=(1, 2)) for c in range(1, num_classes)])  # (C - 1, K)
    scores = np.full((num_classes - 1, len(held)), np.nan)
    for column, (position, predicted) in enumerate(sorted(held.items())):
        truth = targets[int(painted[position])]
        for c in range(1, num_classes):
            if not np.delete(present[c - 1], position).any():
                continue
            a, b = truth == c, predicted == c
            total = int(a.sum()) + int(b.sum())
            scores[c - 1, column] = 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
    counted = ~np.isnan(scores)
    return np.where(counted.any(axis=1), np.nansum(scores, axis=1) / np.maximum(counted.sum(axis=1), 1), np.nan)


@dataclass
class FusedPrior:
    """Several experts' weighted log probabilities, summed (each applies its own weight)."""

    experts: list

    def grown_classes(self) -> np.ndarray | None:
        """(S, H, W) grow-cut's class indices when grow-cut is one of the experts, else None."""
        return next((e.classes for e in self.experts if isinstance(e, GrowCutEvidence)), None)

    def log_probs(self, indices) -> torch.Tensor:
        """(N, C, H, W) summed weighted log probabilities (unnormalised; prediction renormalises)."""
        return sum(expert.log_probs(indices) for expert in self.experts)


def fused_prior_of(image: np.ndarray, targets: np.ndarray, num_classes: int, axis: int, spacing,
                   interpolator: Interpolator | None = itk_interpolator, grower: Grower | None = slicer_growcut):
    """The experts prediction weighs the network against, as one object with ``log_probs(indices)``; None when
    there is none (fewer than two fully painted slices).

    Args:
        image: (z, y, x) intensities as given (grow-cut works on them).
        targets: (S, H, W) class indices, slices along array axis ``axis`` first, IGNORE off the painting.
        spacing: (x, y, z) mm.
        interpolator, grower: the contour interpolation and the grow-cut (None leaves that expert out).
    """
    experts = []
    contour = contour_prior_of(targets, num_classes, axis, spacing, interpolator, weight=CONTOUR_WEIGHT)
    if contour is not None:
        experts.append(contour)
    grown = growcut_evidence(image, targets, num_classes, axis, spacing, grower)
    if grown is not None:
        experts.append(grown)
    return FusedPrior(experts) if experts else None


class _EitherSet:
    """An event-like flag that reads as set when the caller's cancel or the run's own stop is set."""

    def __init__(self, *events):
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


class ExpertsRun:
    """:func:`fused_prior_of` computed in a background thread, so that it runs beside the fine-tuning.

    Why: the experts are child processes (ITK's interpolation, VTK's grow-cut) that each use one core, and the
    default thread count leaves one core to spare while the network trains (:mod:`ContrastiveSegLib.threads`); on
    a 2-core machine they cost no wall time as long as they finish before the training does. :meth:`stop` kills
    their processes (a failed or cancelled run must not leave them behind, nor wait for them).
    """

    def __init__(self, case, num_classes: int, cancel=None):
        """Start the experts of a :class:`~ContrastiveSegLib.data.case.PreparedCase` (its image, painting, axis and
        spacing) with ``num_classes`` classes; ``cancel`` stops them as :meth:`stop` does."""
        self._stop = threading.Event()
        flag = _EitherSet(cancel, self._stop)
        pool = ThreadPoolExecutor(1, thread_name_prefix="contrastiveseg-experts")
        self._future: Future = pool.submit(fused_prior_of, case.image, case.targets, num_classes, case.axis,
                                           case.spacing,
                                           functools.partial(itk_interpolator, cancel=flag),
                                           functools.partial(slicer_growcut, cancel=flag))
        pool.shutdown(wait=False)

    def result(self):
        """The fused prior (or None), waiting for it if need be; the experts' errors are raised here."""
        return self._future.result()

    def stop(self) -> None:
        """Kill the experts' processes and let the thread end (its result is then never asked for)."""
        self._stop.set()
