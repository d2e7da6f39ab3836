"""What prediction weighs the network against: the painted outlines interpolated between the slices and the
intensity evidence of Slicer's "Grow from seeds", as one product of experts.

``log p(class) = log p_net + CONTOUR_WEIGHT * log p_contour + GROWCUT_WEIGHT * log p_growcut`` (renormalised),
slice by slice inside :func:`~ContrastiveSegLib.inference.predict.predict_volume`.

- The contour prior (:mod:`~ContrastiveSegLib.inference.contour_prior`): where a structure goes between the painted
  slices, as Slicer's "Fill between slices" draws it, with an uncertainty learnt per scan by leave-one-out.
- The grow-cut evidence (:func:`growcut_evidence`): Slicer's grow-cut (Zhu et al., MICCAI IMIC 2014) from the
  painted slices, the tool that wins on high-contrast CT (lungs, bone, contrast vessels), as an outline with a
  soft edge of :data:`GROWCUT_TAU` voxels. It is what the network lacks at few painted slices: a confident
  intensity-driven answer in the wide middle between two slices.

Both come only from two or more fully painted slices (with one, the grow-cut region is a few slices thick and the
interpolation has nothing to go on). The weights are the benchmark's choice: on six tasks chosen on and four that
confirm (benchmarks/results/quality.md, fusion.md), contour x1 + grow-cut x2 had the best mean margin over the best
Slicer tool of 14 fusions. Either expert is left out, with the rest still fused, where its package (ITK's
contour interpolation, slicer-core's grow-cut) is not installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ContrastiveSegLib.inference.contour_prior import (CONTOUR_WEIGHT, Interpolator, contour_prior_of,
                                                       itk_interpolator)
from ContrastiveSegLib.inference.shape_prior import (MIN_SLICES, _log_categorical, fully_painted_slices,
                                                     signed_distance, stack_spacing)

GROWCUT_WEIGHT = 2.0
GROWCUT_TAU = 2.0  # voxels: the soft edge of the grow-cut outline (its boundary is exact to about a voxel)

# (image (z, y, x), sparse class indices (z, y, x): the fully painted slices, 0 elsewhere, axis, spacing (x, y, z))
# -> (z, y, x) class indices grown into the volume.
Grower = Callable[[np.ndarray, np.ndarray, int, tuple], np.ndarray]


def slicer_growcut(image: np.ndarray, sparse: np.ndarray, axis: int, spacing) -> np.ndarray:
    """Slicer's "Grow from seeds" as the Segment Editor runs it, in a child process (VTK from slicer-core).
    Raises ImportError when slicer-core is not installed."""
    from ContrastiveSegLib.demo import GROW, run_baseline

    return run_baseline(GROW, image, sparse, axis, spacing)


@dataclass
class GrowCutEvidence:
    """Grow-cut's classes as probabilities: a soft outline of width ``tau`` mm around each grown structure.

    Attributes:
        classes: (S, H, W) uint8 grown class indices in stack order.
        num_classes: classes including the background.
        inplane: (row, column) mm.
        tau: edge width (mm).
        weight: exponent in the product with the network.
    """

    classes: np.ndarray
    num_classes: int
    inplane: tuple
    tau: float
    weight: float = GROWCUT_WEIGHT

    def log_probs(self, indices) -> torch.Tensor:
        """(N, C, H, W) weighted log probabilities of slices ``indices``."""
        informative = torch.ones(self.num_classes - 1, dtype=torch.bool)
        out = []
        for s in np.asarray(indices).reshape(-1):
            d = np.stack([signed_distance(self.classes[int(s)] == c, self.inplane)
                          for c in range(1, self.num_classes)])
            d = np.where(np.isfinite(d), d, np.where(d > 0, 1e3, -1e3)).astype(np.float32)  # absent / filling
            out.append(_log_categorical(torch.from_numpy(d), self.tau, informative))
        return self.weight * torch.stack(out)


def growcut_evidence(image: np.ndarray, targets: np.ndarray, num_classes: int, axis: int, spacing,
                     grower: Grower | None = slicer_growcut, weight: float = GROWCUT_WEIGHT) -> GrowCutEvidence | None:
    """Grow-cut from the painted slices of ``targets`` ((S, H, W) stack order), or None: fewer than
    :data:`~ContrastiveSegLib.inference.shape_prior.MIN_SLICES` fully painted slices, no ``grower``, or its package
    is missing (ImportError) or it failed (RuntimeError: the prediction goes on without it)."""
    painted = fully_painted_slices(targets)
    if grower is None or len(painted) < MIN_SLICES:
        return None
    seeds = np.zeros_like(targets)  # the Slicer tools' convention: painted slices in full, 0 everywhere else
    seeds[painted] = targets[painted]
    try:
        grown = grower(image, np.moveaxis(seeds, 0, axis), axis, spacing)
    except (ImportError, RuntimeError):
        return None
    classes = np.moveaxis(np.asarray(grown), axis, 0)
    classes = np.where(classes < num_classes, classes, 0).astype(np.uint8)
    inplane, _ = stack_spacing(spacing, axis)
    return GrowCutEvidence(classes, num_classes, inplane, GROWCUT_TAU * min(inplane), weight)


@dataclass
class FusedPrior:
    """Several experts' weighted log probabilities, summed (each applies its own weight)."""

    experts: list

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
