"""The shape prior from Slicer's own contour interpolation, weighed against the network per scan.

Why: the linear blend of signed distances (:mod:`~ContrastiveSegLib.inference.shape_prior`) shrinks an outline
that moves between two painted slices and lets it vanish half way; ITK's morphological contour interpolation
(Albu et al., IEEE TBME 2008; Zukic et al., Insight Journal 2016), the algorithm behind Slicer's "Fill between
slices", morphs one outline into the next and follows it. Between the first and the last painted slice this prior
takes its outlines from that interpolation; beyond them it keeps the linear prior's taper (the interpolation draws
nothing there).

The outlines become probabilities as in the linear prior: ``sigmoid(-d / tau)``, ``tau`` growing with the
distance to the nearest painted slice, and the growth learnt per scan by predicting each painted slice from the
others (leave-one-out): the interpolator runs once more per inner painted slice, without it. A scan whose
outlines interpolate well gets a sharp prior that outvotes a confidently wrong network between the slices; one
whose outlines do not (a convoluted cortex) gets a vague prior that leaves the decision to the image.

The prior enters prediction as a weighted product of experts, ``log p = log p_net + weight * log p_prior``
(renormalised), with Slicer's grow-cut as a third expert (:mod:`~ContrastiveSegLib.inference.fusion`);
:data:`CONTOUR_WEIGHT` was chosen on the benchmark (benchmarks/results/fusion.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ContrastiveSegLib.inference.shape_prior import (ShapePrior, build_shape_prior, fit_beta,
                                                     fully_painted_slices, signed_distance, stack_spacing)
from ContrastiveSegLib.io.annotations import IGNORE

CONTOUR_WEIGHT = 1.0  # the contour prior's exponent against the network (benchmark-chosen among 1, 2, 4, 8)
CROP_MARGIN = 4  # voxels around the painted structures that the interpolator sees (it draws nothing outside)

# (S, H, W) class indices, 0 = background and unknown, slices along axis 0 -> the same, interpolated between the
# slices that hold a structure. The default runs ITK's interpolator in a child process
# (:func:`ContrastiveSegLib.baselines.fill_between_slices`); tests and the benchmark pass their own.
Interpolator = Callable[[np.ndarray], np.ndarray]


def itk_interpolator(classes: np.ndarray, cancel=None) -> np.ndarray:
    """ITK's morphological contour interpolation of ``classes`` along axis 0, as Slicer's "Fill between slices"
    runs it (a child process, killed once ``cancel`` is set; slicer-core's or ITK's wrapping). Raises ImportError
    when neither is installed."""
    from ContrastiveSegLib.baselines.fill_between import fill_between_slices

    if not classes.any():
        return classes.copy()
    return fill_between_slices(classes, 0, cancel=cancel).astype(np.uint8)


def _crop(targets: np.ndarray) -> tuple[slice, slice]:
    """The in-plane box of the structures painted on any slice, grown by :data:`CROP_MARGIN` (clipped)."""
    painted = ((targets != 0) & (targets != IGNORE)).any(axis=0)
    box = []
    for axis in (0, 1):
        present = np.flatnonzero(painted.any(axis=1 - axis))
        low, high = (int(present[0]), int(present[-1])) if len(present) else (0, -1)
        box.append(slice(max(0, low - CROP_MARGIN), min(painted.shape[axis], high + CROP_MARGIN + 1)))
    return box[0], box[1]


def interpolate_painted(targets: np.ndarray, slices: np.ndarray, interpolator: Interpolator) -> np.ndarray:
    """(S, H, W) uint8 classes interpolated between the fully painted ``slices`` of ``targets`` (stack order,
    IGNORE where unknown); 0 outside the painted structures' box and beyond the first and the last slice."""
    out = np.zeros(targets.shape, np.uint8)
    rows, cols = _crop(targets)
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return out
    first, last = int(slices[0]), int(slices[-1])
    sparse = np.zeros((last - first + 1, rows.stop - rows.start, cols.stop - cols.start), np.uint8)
    for s in slices:
        sparse[int(s) - first] = targets[int(s), rows, cols]
    out[first:last + 1, rows, cols] = interpolator(sparse)
    return out


@dataclass
class ContourPrior(ShapePrior):
    """A :class:`ShapePrior` whose outlines between the painted slices come from contour interpolation.

    Attributes (beyond :class:`ShapePrior`'s):
        filled: (S, H, W) uint8 classes interpolated from every painted slice.
        held_out: {position in ``slices``: (H, W) uint8 classes of that painted slice interpolated from the
            others}, for the inner painted slices (the leave-one-out fit).
        weight: exponent of this prior in the product with the network's probabilities.
    """

    filled: np.ndarray = field(default=None, repr=False)
    held_out: dict = field(default_factory=dict, repr=False)
    weight: float = CONTOUR_WEIGHT

    def interpolate(self, s: int, keys: np.ndarray | None = None) -> tuple[np.ndarray, float, bool]:
        """As :meth:`ShapePrior.interpolate`, with each structure's outline taken from the contour interpolation
        where it draws one: strictly between the first and the last painted slice that hold the structure. Elsewhere
        (beyond them: a structure painted on one slice only, or past its ends) the linear prior's taper stands, as
        the interpolation draws nothing there."""
        d, gap, beyond = super().interpolate(s, keys)
        chosen = np.arange(len(self.slices)) if keys is None else np.asarray(keys, dtype=int)
        positions = self.slices[chosen]
        if beyond or s in positions:
            return d, gap, beyond
        if len(chosen) == len(self.slices):
            classes = self.filled[s]
        else:
            missing = np.setdiff1d(np.arange(len(self.slices)), chosen)
            if len(missing) != 1 or int(self.slices[missing[0]]) != s or int(missing[0]) not in self.held_out:
                return d, gap, beyond
            classes = self.held_out[int(missing[0])]
        holds = (self.distances[chosen] < 0).any(axis=(2, 3))  # (K, C - 1): painted slices holding each class
        depth = self._depth(keys)
        for c in range(d.shape[0]):
            where = positions[holds[:, c]]
            if len(where) >= 2 and where[0] < s < where[-1]:
                drawn = signed_distance(classes == c + 1, self.inplane)
                d[c] = np.where(np.isfinite(drawn), drawn, depth[c])
        return d, gap, beyond

    def log_probs(self, indices) -> torch.Tensor:
        """(N, C, H, W) weighted log prior probabilities (``weight`` times those of :class:`ShapePrior`)."""
        return self.weight * super().log_probs(indices)


def build_contour_prior(targets: np.ndarray, num_classes: int, inplane_spacing: tuple[float, float],
                        slice_mm: float, interpolator: Interpolator | None = itk_interpolator,
                        weight: float = CONTOUR_WEIGHT) -> ShapePrior | None:
    """The contour prior of an annotation; the linear :class:`ShapePrior` when ``interpolator`` is None or
    raises ImportError (neither ITK backend installed); None with fewer than two fully painted slices.

    Args:
        targets: (S, H, W) class indices in stack order, IGNORE where unknown.
        inplane_spacing: (row, column) mm; slice_mm: mm along the stack.
        interpolator: see :data:`Interpolator`.
        weight: the prior's exponent against the network (:data:`CONTOUR_WEIGHT`).
    """
    linear = build_shape_prior(targets, num_classes, inplane_spacing, slice_mm)
    if linear is None or interpolator is None:
        return linear
    slices = fully_painted_slices(targets)
    try:
        filled = interpolate_painted(targets, slices, interpolator)
        held_out = {}
        for position in range(1, len(slices) - 1):
            others = np.delete(slices, position)
            partial = np.where(np.isin(np.arange(len(targets)), others)[:, None, None], targets, IGNORE)
            held_out[position] = interpolate_painted(partial, others, interpolator)[int(slices[position])]
    except ImportError:
        return linear
    prior = ContourPrior(linear.slices, linear.distances, linear.informative, linear.slice_mm, linear.beta,
                         linear.tau0, linear.beta_end, inplane=tuple(inplane_spacing), filled=filled,
                         held_out=held_out, weight=weight)
    prior.beta, prior.beta_end = fit_beta(prior, targets)
    return prior


def contour_prior_of(targets: np.ndarray, num_classes: int, axis: int, spacing,
                     interpolator: Interpolator | None = itk_interpolator,
                     weight: float = CONTOUR_WEIGHT) -> ShapePrior | None:
    """:func:`build_contour_prior` of ``targets`` ((S, H, W), slices along array axis ``axis`` first) on a scan of
    ``spacing`` (x, y, z) mm."""
    inplane, slice_mm = stack_spacing(spacing, axis)
    return build_contour_prior(targets, num_classes, inplane, slice_mm, interpolator, weight)
