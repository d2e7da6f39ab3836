"""A shape prior from the painted slices: their outlines interpolated between the slices, as probabilities.

What "Fill between slices" knows and a slice-wise network does not: how an outline moves from one painted slice
to the next. Each fully painted slice along the annotation axis gives, per structure, an in-plane signed
distance map (mm, negative inside; Raya & Udupa's shape-based interpolation, IEEE TMI 1990). Between two painted
slices the maps are blended linearly; beyond the first and the last one the end slice's map is kept and grows by
:data:`END_SLOPE` mm per mm (the structure tapers off: a rounded end, not a cylinder). A structure present on one
painted slice and absent from the next vanishes between them.

The interpolated distance ``d`` becomes a probability ``sigmoid(-d / tau)``, with the boundary's uncertainty
``tau = tau0 + beta * gap / 10 mm`` growing with ``gap``, the distance to the nearest painted slice: exact on a
painted slice, vaguer half way. ``beta`` is learnt from the painted slices themselves, by predicting each of them
from the others (leave-one-out) and keeping the value that explains them best (class-balanced), separately
between painted slices and beyond them: a smooth structure (a deep nucleus, an organ) gets a sharp prior, a
convoluted one (the cortex) a vague one that leaves the decision to the image. Prediction multiplies the
network's class probabilities by the prior's (:mod:`ContrastiveSegLib.inference.predict`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ContrastiveSegLib.io.annotations import IGNORE

PRIOR_WEIGHT = 1.0  # exponent of the prior in the product with the network's probabilities
END_SLOPE = 1.0  # mm of outline shrinkage per mm beyond the last painted slice
DEFAULT_BETA = 4.0  # between two painted slices, when no painted slice lies between two others to learn it from
MIN_SLICES = 2  # painted slices needed for a prior: one slice says nothing about how the outline moves
BETAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0)  # leave-one-out search grid (mm)
REFERENCE_GAP = 10.0  # mm: beta is the uncertainty this far from the nearest painted slice


def signed_distance(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """In-plane signed distance (mm) of a (H, W) boolean mask: negative inside, positive outside, measured from
    the boundary between voxel centres (so a one-voxel structure is -spacing/2 inside). Empty mask: +inf; a mask
    filling the slice: the distance to the slice's edge, negative."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing) if not mask.all() else np.zeros(mask.shape)
    # A structure that fills the whole slice is measured to the slice's edge (a finite depth, not -inf: it is
    # there, and deep inside); elsewhere the edge is not a boundary, as before.
    inside = ndimage.distance_transform_edt(mask if not mask.all() else np.pad(mask, 1), sampling=spacing)
    if mask.all():
        inside = inside[1:-1, 1:-1]
    half = 0.5 * min(spacing)
    return np.where(mask, half - inside, outside - half).astype(np.float32)


@dataclass
class ShapePrior:
    """Interpolated signed distances of every structure, evaluated lazily slice by slice.

    Attributes:
        slices: (K,) sorted indices of the fully painted slices along the annotation axis (stack order).
        distances: (K, C - 1, H, W) float32 signed distances (mm) of the foreground classes on those slices;
            +inf where a class is absent from a slice.
        informative: (C - 1,) bool: the class appears on at least one of those slices (else its prior is flat).
        slice_mm: spacing along the annotation axis (mm).
        beta: boundary uncertainty (mm) at :data:`REFERENCE_GAP` mm from the nearest painted slice, between two
            painted slices.
        tau0: boundary uncertainty (mm) on a painted slice.
        beta_end: the same beyond the first and the last painted slice (extrapolation is less sure than
            interpolation, and learnt separately).
    """

    slices: np.ndarray
    distances: np.ndarray
    informative: np.ndarray
    slice_mm: float
    beta: float
    tau0: float
    beta_end: float = DEFAULT_BETA
    inplane: tuple = (1.0, 1.0)

    def _depth(self, keys: np.ndarray | None = None) -> np.ndarray:
        """(C - 1,) deepest inside distance (mm, positive) of each class over the painted slices ``keys`` (all by
        default; a leave-one-out fit must not see the held-out slice). Cached per set of slices: every slice of a
        volume asks for it."""
        cache = self.__dict__.setdefault("_depth_cache", {})
        key = None if keys is None else tuple(int(k) for k in keys)
        if key not in cache:
            chosen = self.distances if keys is None else self.distances[np.asarray(keys, dtype=int)]
            finite = np.where(np.isfinite(chosen), chosen, 0.0)
            cache[key] = np.maximum(-finite.min(axis=(0, 2, 3)), self.tau0)
        return cache[key]

    def interpolate(self, s: int, keys: np.ndarray | None = None) -> tuple[np.ndarray, float, bool]:
        """(C - 1, H, W) interpolated signed distances at slice ``s``, the distance (mm) from ``s`` to the
        nearest painted slice used, and whether ``s`` lies beyond the painted slices (extrapolated). ``keys``
        restricts which painted slices (positions in :attr:`slices`) take part (leave-one-out)."""
        depth = self._depth(keys)[:, None, None]
        keys = np.arange(len(self.slices)) if keys is None else keys
        positions = self.slices[keys]
        after = int(np.searchsorted(positions, s))
        if after < len(positions) and positions[after] == s:
            return self.distances[keys[after]].copy(), 0.0, False
        if after == 0 or after == len(positions):  # beyond the ends: keep the end slice, taper off
            end = 0 if after == 0 else len(positions) - 1
            gap = abs(int(s) - int(positions[end])) * self.slice_mm
            d = self.distances[keys[end]]
            return np.where(np.isfinite(d), d, depth) + END_SLOPE * gap, gap, True
        low, high = positions[after - 1], positions[after]
        t = (s - low) / (high - low)
        a, b = self.distances[keys[after - 1]], self.distances[keys[after]]
        # A class missing from one side vanishes in between: its depth, mirrored, stands in for the absent outline.
        a = np.where(np.isfinite(a), a, depth)
        b = np.where(np.isfinite(b), b, depth)
        return ((1 - t) * a + t * b).astype(np.float32), min(s - low, high - s) * self.slice_mm, False

    def log_probs(self, indices) -> torch.Tensor:
        """(N, C, H, W) float32 log prior probabilities of slices ``indices`` (background first)."""
        out = []
        for s in np.asarray(indices).reshape(-1):
            d, gap, beyond = self.interpolate(int(s))
            out.append(_log_categorical(torch.from_numpy(d), self.tau(gap, self.beta_end if beyond else self.beta),
                                        torch.from_numpy(self.informative)))
        return torch.stack(out)

    def tau(self, gap: float, beta: float) -> float:
        """Boundary uncertainty (mm) at ``gap`` mm from the nearest painted slice."""
        return self.tau0 + beta * gap / REFERENCE_GAP


def _log_categorical(distances: torch.Tensor, tau: float, informative: torch.Tensor) -> torch.Tensor:
    """(C, H, W) log probabilities from (C - 1, H, W) signed distances: each structure is present with
    ``sigmoid(-d / tau)`` independently, background where none is; conditioned on one class per voxel. A class without
    information is flat: it gets the background's weight (the prior does not move the network's odds between the
    two), and does not enter the background's probability."""
    scaled = (-distances / tau).clamp(-60, 60)
    present = F.logsigmoid(scaled)
    absent = F.logsigmoid(-scaled)
    absent = absent * informative[:, None, None]
    background = absent.sum(0, keepdim=True)
    # Exactly one class per voxel: class c is present and every other absent, so each class's odds against the
    # background are its own sigmoid odds whatever the other classes say (a plain normalisation of the presences
    # would let several vague classes outvote the background far from every painted outline).
    present = torch.where(informative[:, None, None], present + background - absent, background.expand_as(present))
    logits = torch.cat([background, present])
    return logits - torch.logsumexp(logits, 0, keepdim=True)


def fully_painted_slices(targets: np.ndarray) -> np.ndarray:
    """Indices (along axis 0) of the slices whose every voxel is annotated (no IGNORE): the ones whose outlines
    can be interpolated. (S, H, W) targets in stack order."""
    flat = targets.reshape(len(targets), -1)
    return np.flatnonzero((flat != IGNORE).all(axis=1))


def build_shape_prior(targets: np.ndarray, num_classes: int, inplane_spacing: tuple[float, float],
                      slice_mm: float, beta: float | None = None) -> ShapePrior | None:
    """The shape prior of an annotation, or None when fewer than :data:`MIN_SLICES` slices are fully painted.

    Why not from one slice: extrapolating a single outline both ways has nothing to learn its uncertainty from,
    and measured on the benchmark's brain tasks at k = 1 it cost Dice (grey/white matter 0.915 -> 0.898, ventricles
    0.739 -> 0.702, seed 0) where the network alone is already far ahead of both Slicer tools.

    Args:
        targets: (S, H, W) class indices in stack order (slices along the annotation axis first), IGNORE where
            unknown.
        inplane_spacing: (row, column) voxel size in mm of those slices.
        slice_mm: voxel size along the annotation axis in mm.
        beta: fixed uncertainty growth; None learns it by leave-one-out (:func:`fit_beta`).
    """
    slices = fully_painted_slices(targets)
    if len(slices) < MIN_SLICES:
        return None
    distances = np.stack([np.stack([signed_distance(targets[s] == c, inplane_spacing)
                                    for c in range(1, num_classes)]) for s in slices])
    informative = np.isfinite(distances).any(axis=(0, 2, 3)) & (distances < 0).any(axis=(0, 2, 3))
    prior = ShapePrior(slices, distances, informative, float(slice_mm), DEFAULT_BETA if beta is None else beta,
                       tau0=0.5 * float(min(inplane_spacing)), inplane=tuple(float(v) for v in inplane_spacing))
    if beta is None:
        prior.beta, prior.beta_end = fit_beta(prior, targets)
    else:
        prior.beta_end = beta
    return prior


def fit_beta(prior: ShapePrior, targets: np.ndarray, betas=BETAS) -> tuple[float, float]:
    """(beta, beta_end): the uncertainties under which the painted slices, each predicted from the others, are
    most likely; ``beta`` from the slices that lie between two others (interpolation), ``beta_end`` from the first
    and the last (extrapolation). With only two painted slices there is nothing to learn ``beta`` from, and
    :data:`DEFAULT_BETA` stands.

    The cross-entropy of each held-out slice's true classes under the prior is averaged per class, then over the
    classes (class-balanced: a thin vessel counts as much as the background around it, as it does in Dice); the
    best value of the grid wins.
    """
    cases: dict[bool, list] = {False: [], True: []}
    everything = np.arange(len(prior.slices))
    for held in everything:
        d, gap, beyond = prior.interpolate(int(prior.slices[held]), np.delete(everything, held))
        truth = torch.from_numpy(targets[prior.slices[held]].astype(np.int64))
        cases[beyond].append((torch.from_numpy(d), gap, truth))
    fitted = [_best_beta(prior, cases[beyond], betas) if cases[beyond] else DEFAULT_BETA for beyond in (False, True)]
    return fitted[0], fitted[1]


def _best_beta(prior: ShapePrior, cases: list, betas) -> float:
    """The grid value with the lowest class-balanced cross-entropy over ``cases`` ((d, gap, truth) triples)."""
    informative = torch.from_numpy(prior.informative)
    num_classes = prior.distances.shape[1] + 1
    costs = []
    for beta in betas:
        totals = torch.zeros(num_classes, dtype=torch.float64)
        counts = torch.zeros(num_classes, dtype=torch.float64)
        for d, gap, truth in cases:
            nll = -_log_categorical(d, prior.tau(gap, beta), informative).gather(0, truth[None])[0]
            totals += torch.bincount(truth.reshape(-1), nll.reshape(-1).double(), minlength=num_classes)
            counts += torch.bincount(truth.reshape(-1), minlength=num_classes)
        present = counts > 0
        costs.append(float((totals[present] / counts[present]).mean()))
    return float(betas[int(np.argmin(costs))])


PSEUDO_CONFIDENCE = 0.95  # prior probability a voxel needs to become a training target
PSEUDO_SLICES = 24  # unpainted slices given pseudo-labels (evenly spread; bounds memory on a large CT)


def evenly_spread(indices: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of ``indices``, evenly spread over them (first and last included)."""
    if len(indices) == 0:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, min(count, len(indices))).round().astype(int))]


def prior_pseudo_labels(prior: ShapePrior, targets: np.ndarray, painted,
                        confidence: float = PSEUDO_CONFIDENCE, max_slices: int = PSEUDO_SLICES
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Targets for up to ``max_slices`` evenly spread unpainted slices between the painted ones, where the prior
    alone is sure (probability >= ``confidence``); IGNORE elsewhere.

    Returns (targets with those slices filled in, the sorted indices of every slice that now holds a target).
    Why: trained on a few painted slices only, the network has never seen how a structure looks where it is
    widest between them and calls that background with confidence (k = 2 at 10 % and 90 % of an organ's extent);
    the prior's sure voxels show it.
    """
    painted = np.asarray(painted, dtype=int)
    between = np.arange(int(prior.slices[0]) + 1, int(prior.slices[-1]))
    between = np.setdiff1d(between, painted)
    if len(between) == 0:
        return targets, np.flatnonzero((targets != IGNORE).reshape(len(targets), -1).any(axis=1))
    chosen = evenly_spread(between, max_slices)
    out = targets.copy()
    threshold = float(np.log(confidence))
    for s in chosen:
        log_p = prior.log_probs([s])[0]
        best, classes = log_p.max(0)
        sure = (best >= threshold).numpy()
        known = out[s] != IGNORE
        out[s] = np.where(known, out[s], np.where(sure, classes.numpy().astype(np.uint8), IGNORE))
    return out, np.flatnonzero((out != IGNORE).reshape(len(out), -1).any(axis=1))


def stack_spacing(spacing, axis: int) -> tuple[tuple[float, float], float]:
    """((row, column) mm in-plane, mm along the stack) of slices along array axis ``axis`` of a scan of
    ``spacing`` (x, y, z) mm."""
    spacing_zyx = tuple(float(v) for v in spacing)[::-1]
    inplane = tuple(v for a, v in enumerate(spacing_zyx) if a != axis)
    return inplane, spacing_zyx[axis]  # type: ignore[return-value]
