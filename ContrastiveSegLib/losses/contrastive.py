"""The shared contrastive core: InfoNCE / SupCon over an explicit positive / negative / ignore mask.

Every contrastive loss of the project (SimCLR-style instance contrast, Chaitanya et al. NeurIPS 2020 global
contrast and its G^D- variant, supervised contrast with meta-labels as in Peng et al. NeurIPS 2021, the dense
and region losses of IDEAL and LRC, MixCL's label consistency) is this one loss with a different mask.

For M L2-normalised embeddings z (M x D), s_ij = z_i . z_j and temperature tau:

    l_ij = -log( exp(s_ij / tau) / sum_{a in D(i)} exp(s_ia / tau) )          (pair loss)
    L    = mean_{i : |P(i)| > 0} (1 / |P(i)|) sum_{j in P(i)} w_ij * l_ij       (reduction)

P(i) (the positives of anchor i) is ``positive_mask[i]``. D(i) (the denominator set) is every a != i that is
not in ``ignore_mask[i]``; positives are always in D(i). w_ij are optional per-pair weights on the positives
(self-paced learning); negatives always keep weight 1 in the denominator.

Conventions (the decisions are in docs/methods.md):
- the diagonal is never a positive nor in the denominator;
- a pair may not be both positive and ignored (ValueError): it would make l_ij negative;
- anchors with no positive are left out of the mean (they would contribute 0/0); if no anchor has a positive
  the loss is 0, still attached to the graph so that DDP and optimisers see every parameter.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Reduction = Literal["mean", "sum", "none"]


def check_embeddings(z: Tensor, name: str = "z") -> None:
    """Raise TypeError / ValueError unless ``z`` is an (M, D) tensor with M, D >= 1."""
    if not isinstance(z, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.ndim != 2:
        raise ValueError(f"{name} must have shape (M, D), got shape {tuple(z.shape)}")
    if z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"{name} must hold at least one embedding of size >= 1, got shape {tuple(z.shape)}")


def check_pair_mask(mask: Tensor | None, m: int, name: str) -> Tensor | None:
    """Check that ``mask`` is an (m, m) tensor (or None) and return it as bool."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != (m, m):
        raise ValueError(f"{name} must have shape ({m}, {m}) to match z, got shape {tuple(mask.shape)}")
    return mask.bool() if mask.dtype != torch.bool else mask


def _logit_dtype(dtype: torch.dtype) -> torch.dtype:
    # At least float32 for the log-sum-exp (half precision under autocast loses the small differences the
    # loss is about), float64 kept for gradcheck.
    return torch.promote_types(dtype, torch.float32)


# ----------------------------------------------------------------------------------------------- mask builders
def label_positive_mask(labels: Tensor) -> Tensor:
    """SupCon positives from integer labels (Khosla et al. 2020; meta-labels in Peng et al. 2021).

    Args:
        labels: (M,) integer tensor; a negative label means "unknown": that sample has no positive and is
            nobody's positive (it still sits in every denominator as a negative).

    Returns:
        (M, M) bool mask, True where i != j and labels[i] == labels[j] >= 0.
    """
    if not isinstance(labels, Tensor) or labels.ndim != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D integer tensor, got {shape}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    same = labels[:, None] == labels[None, :]
    known = labels >= 0
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & known[:, None] & known[None, :] & ~eye


def instance_ids(num_images: int, num_views: int = 2, device: torch.device | str | None = None) -> Tensor:
    """Image index of each row of ``torch.cat([view_1, ..., view_V])`` where each view holds N images:
    row v * N + n belongs to image n. Shape (V * N,)."""
    if num_images < 1 or num_views < 1:
        raise ValueError(f"num_images and num_views must be >= 1, got {num_images} and {num_views}")
    return torch.arange(num_images, device=device).repeat(num_views)


def identity_positive_mask(num_images: int, num_views: int = 2, device: torch.device | str | None = None) -> Tensor:
    """SimCLR positives (Chen et al. 2020): the other views of the same image.

    Rows are ordered view-major, as ``torch.cat([z_view1, z_view2])`` gives them (see :func:`instance_ids`).
    Returns a (V * N, V * N) bool mask.
    """
    return label_positive_mask(instance_ids(num_images, num_views, device))


def same_group_ignore_mask(groups: Tensor, positive_mask: Tensor) -> Tensor:
    """Chaitanya et al. (NeurIPS 2020) G^D-: samples of the same group (slice partition) that are not positives
    are removed from the denominator instead of being pushed away.

    Args:
        groups: (M,) integer group of each sample (e.g. slice-position partition); negative = unknown, never
            ignored.
        positive_mask: (M, M) bool positives (e.g. :func:`identity_positive_mask`).

    Returns:
        (M, M) bool ignore mask: same group, not positive, not the diagonal.
    """
    same = label_positive_mask(groups)  # already excludes the diagonal and unknown groups
    positive_mask = check_pair_mask(positive_mask, groups.shape[0], "positive_mask")
    return same & ~positive_mask


def block_ignore_mask(groups: Tensor) -> Tensor:
    """Ignore every pair from different groups (e.g. restrict the negatives of a dense loss to its own image).

    groups: (M,) integer tensor. Returns (M, M) bool, True where groups differ."""
    if not isinstance(groups, Tensor) or groups.ndim != 1:
        raise ValueError(f"groups must be a 1-D integer tensor, got {getattr(groups, 'shape', type(groups))}")
    return groups[:, None] != groups[None, :]


# ------------------------------------------------------------------------------------------------ the loss
def contrastive_pair_losses(z: Tensor, temperature: float, ignore_mask: Tensor | None = None) -> Tensor:
    """Per-pair losses l_ij = -log softmax_{a in D(i)}(s_ia / tau)[j], before any reduction.

    Args:
        z: (M, D) L2-normalised embeddings (not re-normalised here).
        temperature: tau > 0.
        ignore_mask: optional (M, M) bool; True removes pair (i, a) from the denominator of anchor i.

    Returns:
        (M, M) tensor in float32 or wider; entries outside D(i) (the diagonal, ignored pairs) are 0.
    """
    check_embeddings(z)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    m = z.shape[0]
    ignore_mask = check_pair_mask(ignore_mask, m, "ignore_mask")
    logits = (z @ z.T).to(_logit_dtype(z.dtype)) / temperature
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    in_denominator = ~eye if ignore_mask is None else ~(eye | ignore_mask)
    # An anchor whose denominator is empty would give logsumexp(-inf...) = -inf and NaN gradients (even
    # through torch.where); let it see its own row for the log-sum-exp and zero its losses afterwards.
    empty_row = ~in_denominator.any(dim=1, keepdim=True)
    lse_mask = in_denominator | (empty_row & eye)
    log_norm = torch.logsumexp(logits.masked_fill(~lse_mask, float("-inf")), dim=1, keepdim=True)
    return torch.where(in_denominator, log_norm - logits, torch.zeros((), dtype=logits.dtype, device=z.device))


def reduce_pair_losses(
    pair_losses: Tensor,
    positive_mask: Tensor,
    weights: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Average the weighted positive pair losses per anchor, then over anchors that have a positive.

    Args:
        pair_losses: (M, M) from :func:`contrastive_pair_losses`.
        positive_mask: (M, M) bool; the diagonal must be False.
        weights: optional (M, M) non-negative weights w_ij, read on the positives only.
        reduction: "mean" over anchors with >= 1 positive, "sum" over them, or "none" for the (M,) per-anchor
            losses (0 for anchors without positive).

    Returns:
        A scalar, or (M,) for reduction="none".
    """
    m = pair_losses.shape[0]
    positive_mask = check_pair_mask(positive_mask, m, "positive_mask")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    pos = positive_mask.to(pair_losses.dtype)
    if weights is not None:
        if tuple(weights.shape) != (m, m):
            raise ValueError(f"weights must have shape ({m}, {m}) to match z, got shape {tuple(weights.shape)}")
        pos = pos * weights.to(pair_losses.dtype)
    num_pos = positive_mask.sum(dim=1)
    has_pos = (num_pos > 0).to(pair_losses.dtype)
    per_anchor = (pos * pair_losses).sum(dim=1) / num_pos.clamp(min=1).to(pair_losses.dtype)
    if reduction == "none":
        return per_anchor
    # Masked sums rather than boolean indexing: no host-device sync, and with no positive anywhere the
    # result is an exact 0 that stays attached to the graph (DDP and optimisers still see every parameter).
    total = (per_anchor * has_pos).sum()
    return total if reduction == "sum" else total / has_pos.sum().clamp(min=1)


def masked_contrastive_loss(
    z: Tensor,
    positive_mask: Tensor,
    ignore_mask: Tensor | None = None,
    weights: Tensor | None = None,
    temperature: float = 0.1,
    reduction: Reduction = "mean",
    return_pair_losses: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """InfoNCE / SupCon with positive, negative and ignored pairs and per-positive weights (functional form
    of :class:`MaskedContrastiveLoss`; see the module docstring for the formula and conventions).

    Args:
        z: (M, D) L2-normalised embeddings.
        positive_mask: (M, M) bool, P(i) per row; diagonal False; disjoint from ``ignore_mask``.
        ignore_mask: optional (M, M) bool, pairs removed from the denominator.
        weights: optional (M, M) non-negative weights on the positives.
        temperature: tau > 0.
        reduction: "mean", "sum" or "none" (see :func:`reduce_pair_losses`).
        return_pair_losses: also return the (M, M) pair losses l_ij (0 outside D(i)).

    Returns:
        The loss, or ``(loss, pair_losses)``.
    """
    check_embeddings(z)
    m = z.shape[0]
    positive_mask = check_pair_mask(positive_mask, m, "positive_mask")
    ignore_mask = check_pair_mask(ignore_mask, m, "ignore_mask")
    if weights is not None and tuple(weights.shape) != (m, m):
        raise ValueError(f"weights must have shape ({m}, {m}) to match z, got shape {tuple(weights.shape)}")
    # One host-device sync for all the checks, not one per check.
    no = torch.zeros((), dtype=torch.bool, device=z.device)
    overlap = (positive_mask & ignore_mask).any() if ignore_mask is not None else no
    negative_weight = (weights < 0).any() if weights is not None else no
    flags = torch.stack([positive_mask.diagonal().any(), overlap, negative_weight])
    bad_diagonal, bad_overlap, bad_weight = flags.tolist()
    if bad_diagonal:
        raise ValueError("positive_mask has True on its diagonal: a sample cannot be its own positive")
    if bad_overlap:
        n_bad = int((positive_mask & ignore_mask).sum())
        raise ValueError(
            f"positive_mask and ignore_mask overlap on {n_bad} pairs: a positive must stay in the denominator"
        )
    if bad_weight:
        raise ValueError(f"weights must be >= 0, got a minimum of {float(weights.min())}")
    pair_losses = contrastive_pair_losses(z, temperature, ignore_mask)
    loss = reduce_pair_losses(pair_losses, positive_mask, weights, reduction)
    return (loss, pair_losses) if return_pair_losses else loss


class MaskedContrastiveLoss(nn.Module):
    """InfoNCE / SupCon over an explicit positive / ignore mask with optional per-positive weights.

    The shared core of the project's contrastive losses (module docstring for the formula). SimCLR (Chen et
    al. 2020) is ``positive_mask = identity_positive_mask(N)``; SupCon with meta-labels (Peng et al. 2021) is
    ``label_positive_mask(labels)``; Chaitanya et al.'s G^D- adds ``same_group_ignore_mask(partitions, pos)``.

    Args:
        temperature: tau > 0 (0.1 as in Chaitanya et al.; Peng et al. use 0.07).
        reduction: "mean" (over anchors with a positive), "sum" or "none".

    Shapes: z (M, D), masks and weights (M, M); returns a scalar ((M,) for "none"), and the (M, M) pair losses
    when ``return_pair_losses=True``.
    """

    def __init__(self, temperature: float = 0.1, reduction: Reduction = "mean") -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.temperature = float(temperature)
        self.reduction: Reduction = reduction

    def forward(
        self,
        z: Tensor,
        positive_mask: Tensor,
        ignore_mask: Tensor | None = None,
        weights: Tensor | None = None,
        return_pair_losses: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        return masked_contrastive_loss(
            z, positive_mask, ignore_mask, weights, self.temperature, self.reduction, return_pair_losses
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020) for two views: z1, z2 (N, D) L2-normalised, row n of each is the
    same image. Every one of the 2N embeddings is an anchor; D(i) = all a != i. Returns a scalar."""
    check_embeddings(z1, "z1")
    check_embeddings(z2, "z2")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z = torch.cat([z1, z2])
    return masked_contrastive_loss(z, identity_positive_mask(z1.shape[0], 2, z.device), temperature=temperature)
