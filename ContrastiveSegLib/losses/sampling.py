"""Random sub-sampling for the dense, region and pixel-label contrastive losses.

A contrastive loss over M embeddings costs O(M^2) memory, so dense losses keep a fixed number of locations,
regions or pixels. The samplers here are vectorised (no Python loop over images or classes) and take an
optional ``torch.Generator`` so tests and seeded runs are reproducible.
"""
from __future__ import annotations

import torch
from torch import Tensor


def random_scores(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) scores of ``shape`` on ``device``, drawn from ``generator`` (on its own device)."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def sample_per_group(groups: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Choose up to ``k`` members of every group uniformly at random, without replacement.

    Args:
        groups: (n,) integer group of each candidate (image index, class, ...).
        k: the most members kept per group; groups with fewer keep all of theirs.
        generator: optional random generator.

    Returns:
        (n,) bool, True for the kept candidates.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"the number of samples per group must be a positive integer, got {k!r}")
    n = groups.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=groups.device)
    # Shuffle, then stable-sort by group: within each group the order is random, so the first k are a
    # uniform sample without replacement.
    order = torch.argsort(random_scores((n,), groups.device, generator))
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    _, counts = torch.unique_consecutive(sorted_groups, return_counts=True)
    group_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.arange(n, device=groups.device) - group_start
    keep = torch.zeros(n, dtype=torch.bool, device=groups.device)
    keep[order] = rank < k
    return keep


def sample_locations(valid: Tensor, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Choose up to ``k`` valid locations per image uniformly at random, without replacement.

    Args:
        valid: (B, *spatial) bool, locations that may be sampled.
        k: locations per image; an image with fewer valid locations gives all of them.
        generator: optional random generator.

    Returns:
        ``(image, flat_index)``: two (S,) int64 tensors, the image of each sample and its index into the
        flattened spatial grid, sorted by image.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"the number of samples per image must be a positive integer, got {k!r}")
    flat = valid.reshape(valid.shape[0], -1)
    # Invalid locations score 2 (> any uniform score), so the k smallest scores are valid ones first.
    scores = random_scores(tuple(flat.shape), flat.device, generator).masked_fill(~flat, 2.0)
    k = min(k, flat.shape[1])
    index = torch.topk(scores, k, dim=1, largest=False).indices  # (B, k)
    keep = torch.gather(flat, 1, index)
    image = torch.arange(flat.shape[0], device=flat.device)[:, None].expand_as(index)
    return image[keep], index[keep]
