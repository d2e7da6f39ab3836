"""Self-paced contrastive learning with meta-labels (Peng, Wang, Chaitanya, Hegde, Dolz, Ben Ayed; NeurIPS 2021).

Supervised contrast (SupCon form) in which the positives of each meta-label (slice-position partition, volume
id, any DICOM tag, or the instance itself) are weighted by how easy they currently are. The weight of a
positive pair comes from its detached pair loss l_ij and an "age" gamma that grows during training, so the
network first pulls together the pairs it already finds similar and admits harder (possibly false) positives
later:

    hard:    w_ij = 1 if l_ij <= gamma else 0
    linear:  w_ij = max(0, 1 - l_ij / gamma)              ("soft" in the paper's code)
    gamma(t) = g0 + (g1 - g0) * (t / T) ** 0.5

Negatives keep weight 1 in the denominator. With several meta-labels k the loss is sum_k lambda_k * L_k, each
with its own gamma schedule. Because D(i) = all a != i for every meta-label, the pair losses are computed once
and only the positive masks and weights differ between labels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ContrastiveSegLib.losses.contrastive import (
    check_embeddings,
    check_pair_mask,
    contrastive_pair_losses,
    label_positive_mask,
    reduce_pair_losses,
)

SelfPacedMode = Literal["hard", "linear", "soft"]
_MODES = ("hard", "linear", "soft")


def self_paced_weights(
    pair_losses: Tensor,
    positive_mask: Tensor,
    gamma: float,
    mode: SelfPacedMode = "linear",
    normalize: bool = False,
) -> Tensor:
    """Self-paced weights of the positive pairs (Peng et al. 2021), from the detached pair losses.

    Args:
        pair_losses: (M, M) pair losses l_ij (e.g. from :func:`contrastive_pair_losses`); detached here.
        positive_mask: (M, M) bool positives; weights are 0 everywhere else.
        gamma: the current age, > 0.
        mode: "hard" (w = [l <= gamma], exactly 0 or 1) or "linear" / "soft" (w = max(0, 1 - l / gamma)).
        normalize: divide by the mean weight over all positives, so that the loss keeps its scale while few
            pairs are admitted (then weights may exceed 1; all-zero weights stay zero).

    Returns:
        (M, M) weights, no gradient; in [0, 1] unless ``normalize``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    positive_mask = check_pair_mask(positive_mask, pair_losses.shape[0], "positive_mask")
    losses = pair_losses.detach()
    if mode == "hard":
        weights = (losses <= gamma).to(losses.dtype)
    else:
        weights = (1.0 - losses / gamma).clamp(min=0.0)
    weights = weights * positive_mask.to(losses.dtype)
    if normalize:
        mean = weights.sum() / positive_mask.sum().clamp(min=1).to(losses.dtype)
        weights = torch.where(mean > 0, weights / mean.clamp(min=torch.finfo(losses.dtype).tiny), weights)
    return weights


@dataclass(frozen=True)
class GammaSchedule:
    """gamma(t) = begin + (end - begin) * (t / total) ** 0.5 (Peng et al. 2021), t clipped to [0, total].

    ``t`` counts epochs or steps, whichever the caller uses for ``total``."""

    begin: float
    end: float
    total: float

    def __post_init__(self) -> None:
        if not (self.begin > 0 and self.end > 0):
            raise ValueError(f"gamma begin and end must be > 0, got begin={self.begin}, end={self.end}")
        if not self.total > 0:
            raise ValueError(f"total must be > 0, got {self.total}")

    def __call__(self, t: float) -> float:
        fraction = min(max(float(t) / self.total, 0.0), 1.0)
        return self.begin + (self.end - self.begin) * math.sqrt(fraction)


@dataclass(frozen=True)
class MetaLabelTerm:
    """One meta-label of the self-paced loss: its batch key, importance lambda_k and gamma schedule ends.

    Defaults: lambda 1; gamma from 5 to 60, the partition label of the authors' ACDC multi-label run. At
    initialisation l_ij is about log(M - 1) (about 4.1 for M = 60 embeddings), so ``gamma_begin`` must exceed
    it or no positive is admitted in hard mode (and linear weights start near 0); raise it for large batches.
    """

    name: str
    weight: float = 1.0
    gamma_begin: float = 5.0
    gamma_end: float = 60.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a meta-label term needs a non-empty name")
        if not self.weight >= 0:
            raise ValueError(f"weight of meta-label {self.name!r} must be >= 0, got {self.weight}")
        GammaSchedule(self.gamma_begin, self.gamma_end, 1.0)  # validates the gamma ends


class SelfPacedOutput(NamedTuple):
    """loss: scalar; terms: per meta-label detached values ("<name>" loss, "<name>_weight" mean positive
    weight, "<name>_gamma" current age)."""

    loss: Tensor
    terms: dict[str, Tensor]


class SelfPacedContrastiveLoss(nn.Module):
    """Self-paced supervised contrast over several meta-labels (Peng et al., NeurIPS 2021).

    L = sum_k lambda_k * mean_i (1/|P_k(i)|) sum_{j in P_k(i)} w^k_ij l_ij, with P_k(i) the samples sharing
    meta-label k with i, w^k from :func:`self_paced_weights` at gamma_k(t), and D(i) = all a != i.

    Args:
        terms: the meta-labels, e.g. ``[MetaLabelTerm("partition", 1.0, 5, 60), MetaLabelTerm("volume", 0.1,
            3.5, 50)]``; the instance itself is one more label (pass image ids under a name).
        mode: "hard" or "linear" ("soft" is an alias).
        temperature: tau, 0.07 as in the paper.
        normalize: divide each term by its mean positive weight (see :func:`self_paced_weights`).

    Call :meth:`set_progress` (e.g. from ``on_epoch_start``) to advance the gammas; until then they are at
    their ``gamma_begin``.

    Shapes: z (M, D) L2-normalised; labels maps each term name to an (M,) integer tensor (negative =
    unknown, no positive).
    """

    def __init__(
        self,
        terms: Sequence[MetaLabelTerm],
        mode: SelfPacedMode = "linear",
        temperature: float = 0.07,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        terms = tuple(terms)
        if not terms:
            raise ValueError("terms must name at least one meta-label")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"meta-label names must be unique, got {names}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.terms = terms
        self.mode: SelfPacedMode = mode
        self.temperature = float(temperature)
        self.normalize = normalize
        self.gammas: dict[str, float] = {t.name: t.gamma_begin for t in terms}

    def set_progress(self, t: float, total: float) -> dict[str, float]:
        """Move every gamma to gamma_k(t) for a run of ``total`` epochs (or steps); returns the gammas."""
        for term in self.terms:
            self.gammas[term.name] = GammaSchedule(term.gamma_begin, term.gamma_end, total)(t)
        return dict(self.gammas)

    def forward(self, z: Tensor, labels: Mapping[str, Tensor]) -> SelfPacedOutput:
        check_embeddings(z)
        missing = [t.name for t in self.terms if t.name not in labels]
        if missing:
            raise ValueError(f"labels lacks the meta-label(s) {missing}; got keys {sorted(labels)}")
        pair_losses = contrastive_pair_losses(z, self.temperature)
        loss = pair_losses.sum() * 0.0
        terms: dict[str, Tensor] = {}
        for term in self.terms:
            lab = torch.as_tensor(labels[term.name], device=z.device)
            if lab.shape != (z.shape[0],):
                raise ValueError(
                    f"meta-label {term.name!r} must have shape ({z.shape[0]},) to match z, got {tuple(lab.shape)}"
                )
            positive = label_positive_mask(lab)
            gamma = self.gammas[term.name]
            weights = self_paced_weights(pair_losses, positive, gamma, self.mode, self.normalize)
            term_loss = reduce_pair_losses(pair_losses, positive, weights)
            loss = loss + term.weight * term_loss
            n_pos = positive.sum().clamp(min=1)
            raw_weights = weights if not self.normalize else self_paced_weights(pair_losses, positive, gamma, self.mode)
            terms[term.name] = term_loss.detach()
            terms[f"{term.name}_weight"] = raw_weights.sum() / n_pos
            terms[f"{term.name}_gamma"] = torch.tensor(gamma, device=z.device)
        return SelfPacedOutput(loss, terms)

    def extra_repr(self) -> str:
        return f"terms={[t.name for t in self.terms]}, mode={self.mode!r}, temperature={self.temperature}"
