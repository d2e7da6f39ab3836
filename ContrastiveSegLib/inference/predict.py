"""Predict the slices of a volume in batches of whole slices (or of the box where a structure can be), back on the
original grid.

Whole slices (padded to a multiple of the network's divisor) instead of sliding windows: a 2D network's receptive
field is far smaller than a slice, so one pass per slice gives the same answer as overlapping windows at a fraction
of the work. Given a :class:`~ContrastiveSegLib.inference.region.Region`, only its slices are predicted, each on
its rows and columns widened by :data:`CONTEXT_PIXELS` and to the network's divisor grid (so the pooling grid is
the whole slice's); everything outside the region is background (probability 1). Only the arg-max (and, when asked,
the probabilities) is kept, so memory stays at one label volume.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ContrastiveSegLib.data.slices import SliceStack, pad_to_divisor
from ContrastiveSegLib.inference.region import Region
from ContrastiveSegLib.inference.shape_prior import PRIOR_WEIGHT
from ContrastiveSegLib.progress import ProgressCallback, StageProgress
from ContrastiveSegLib.device import BatchLimits, autocast_context, halve_batch
from ContrastiveSegLib.options import PREDICT_BATCH_SIZE

# Image the network sees around the region's rows and columns: cut closer, the crop's edge changes what the network
# says inside (2 mm brain ventricles at 2 painted slices, benchmarks/results/region.md: no context 1069 voxels
# differ from the whole-slice prediction and Dice falls from 0.92 to 0.10; 16 pixels: 6 voxels; 32 or more: none).
CONTEXT_PIXELS = 64


def _aligned(bounds: tuple[int, int], size: int, divisor: int, context: int) -> tuple[int, int]:
    """``bounds`` (half-open) widened by ``context`` pixels, then outwards to multiples of ``divisor``, clipped to
    ``[0, size)``: a crop that starts on the network's pooling grid sees the same grid as the whole slice."""
    low, high = max(0, bounds[0] - context), min(size, bounds[1] + context)
    return (low // divisor) * divisor, min(size, -(-high // divisor) * divisor)


def _slice_logits(model: torch.nn.Module, stack: SliceStack, indices: np.ndarray, divisor: int,
                  device: torch.device, flip_tta: bool, crop: tuple[slice, slice]) -> torch.Tensor:
    """float32 logits (B, C, H', W') of the slices ``indices`` cut to ``crop`` (rows, columns), padded to
    ``divisor``. The input batch lives in this frame only (see :func:`~ContrastiveSegLib.device.halve_batch`)."""
    # The inputs are cut after the coordinate channels are made, so each pixel keeps the whole slice's position.
    x = pad_to_divisor(stack.inputs(indices)[..., crop[0], crop[1]], divisor)
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with autocast_context(device):
        logits = model(x).float()
        if flip_tta:
            # The flipped coordinate channels flip with the image, so each pixel keeps its own position.
            logits = 0.5 * (logits + model(x.flip(-1)).float().flip(-1))
    return logits


class PriorAhead:
    """The prior's log probabilities computed a batch ahead, in a thread, while the network runs.

    The prior is numpy and scipy work (distance maps, slice by slice) and the network's convolutions release the
    GIL, so on two cores the two overlap (the 512 x 512 x 300 CT: the fused prior is about 12 s of a 45 s
    prediction). The numbers are the prior's own: :meth:`get` takes a prefetched batch only when its slices are
    exactly the ones asked for, else it drops what is pending and asks the prior itself; the caller drops the queue
    when it halves its batch. The priors keep no state between calls, so a thread may read them beside the caller.
    """

    def __init__(self, prior) -> None:
        self.prior = prior
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="prior") if prior is not None else None
        self.pending: dict[tuple[int, ...], Future] = {}

    def ahead(self, *batches: np.ndarray) -> None:
        """Queue each batch of slice indices not queued yet (empty ones are skipped), in order."""
        for indices in batches:
            key = tuple(int(i) for i in indices)
            if self.pool is not None and key and key not in self.pending:
                self.pending[key] = self.pool.submit(self.prior.log_probs, indices)

    def get(self, indices: np.ndarray) -> torch.Tensor:
        """(N, C, H, W) the prior's log probabilities of ``indices``."""
        future = self.pending.pop(tuple(int(i) for i in indices), None)
        if future is not None:
            return future.result()
        self.drop()
        return self.prior.log_probs(indices)

    def drop(self) -> None:
        """Forget the queued batches (one being computed finishes in the thread, unused)."""
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()

    def close(self) -> None:
        """Stop the thread (a batch being computed finishes first; the queued ones are dropped)."""
        self.drop()
        if self.pool is not None:
            self.pool.shutdown(wait=True)


@torch.no_grad()
def predict_volume(model: torch.nn.Module, stack: SliceStack, device: torch.device, *, divisor: int,
                   batch_size: int = PREDICT_BATCH_SIZE, flip_tta: bool = False, keep_probabilities: bool = False,
                   prior=None, keep_confidence: bool = False, progress: ProgressCallback = None,
                   cancel=None, batches: BatchLimits | None = None,
                   region: Region | None = None, context: int = CONTEXT_PIXELS
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment every slice of ``stack`` (or only ``region``'s box, seen with ``context`` pixels around it:
    background elsewhere), ``batch_size`` slices per pass (halved on running out of GPU memory; ``batches`` carries
    the size that fitted to the run's later stages).

    ``prior`` (a :class:`~ContrastiveSegLib.inference.shape_prior.ShapePrior`) multiplies the network's class
    probabilities by the shape prior's, raised to ``PRIOR_WEIGHT``, and renormalises (a product of experts); it
    is asked for whole slices (``prior.log_probs(indices)``: (N, C, H, W)) and cut to the region here.

    Returns:
        classes: (S, H, W) uint8 class indices in stack order (slices along the annotation axis first).
        probabilities: (C, S, H, W) float32 softmax, or None unless ``keep_probabilities``; with
            ``keep_confidence`` instead, (S, H, W) uint8: the winning class's probability times 255 (one byte per
            voxel, for self-training on a CT-sized volume).
    """
    model.to(device=device, memory_format=torch.channels_last).eval()
    num = stack.num_slices
    region = region if region is not None else Region.whole((num, stack.height, stack.width))
    # The network runs on the region's rows and columns widened by ``context`` and to the divisor grid; what lies
    # inside the region is kept (``keep``: the region within that crop).
    rows = _aligned(region.rows, stack.height, divisor, context)
    columns = _aligned(region.columns, stack.width, divisor, context)
    crop = (slice(*rows), slice(*columns))
    keep = (slice(region.rows[0] - rows[0], region.rows[1] - rows[0]),
            slice(region.columns[0] - columns[0], region.columns[1] - columns[0]))
    inside = (slice(*region.rows), slice(*region.columns))
    classes = np.zeros((num, stack.height, stack.width), dtype=np.uint8)  # background outside the region
    probabilities = None
    first, stop = region.slices
    reporter = StageProgress("predict", stop - first, progress, cancel)
    batches = batches if batches is not None else BatchLimits()
    requested, batch_size = batch_size, batches.start("predict", batch_size)
    start = first
    ahead = PriorAhead(prior)
    try:
        while start < stop:
            reporter.check_cancel()
            indices = np.arange(start, min(start + batch_size, stop))
            failure = logits = log_probs = probs = None  # the last pass's tensors go before this one starts
            # this batch's prior first (queued a pass ago, or now), then the next one's, beside the network
            after = int(indices[-1]) + 1
            ahead.ahead(indices, np.arange(after, min(after + batch_size, stop)))
            try:
                logits = _slice_logits(model, stack, indices, divisor, device, flip_tta, crop)
            except torch.OutOfMemoryError as error:
                failure = error.with_traceback(None)  # the traceback holds the pass's frames and tensors
            if failure is not None:  # outside the except block: nothing of the failed pass is referenced now
                batch_size = halve_batch(batch_size, "predicting", progress, "predict", cause=failure)
                ahead.drop()  # the batches queued at the old size are never asked for
                continue
            batches.record("predict", batch_size, requested)
            log_probs = torch.log_softmax(logits[..., :rows[1] - rows[0], :columns[1] - columns[0]], dim=1)
            log_probs = log_probs[..., keep[0], keep[1]]
            if prior is not None:
                log_probs = log_probs + PRIOR_WEIGHT * ahead.get(indices)[..., inside[0], inside[1]].to(
                    log_probs.device)
            probs = torch.softmax(log_probs, dim=1)
            block = (slice(int(indices[0]), int(indices[-1]) + 1), *inside)
            classes[block] = probs.argmax(1).to(torch.uint8).cpu().numpy()
            if keep_confidence:
                if probabilities is None:  # background is certain outside the region
                    probabilities = np.full((num, stack.height, stack.width), 255, dtype=np.uint8)
                probabilities[block] = (probs.amax(1) * 255).round().to(torch.uint8).cpu().numpy()
            elif keep_probabilities:
                if probabilities is None:
                    probabilities = np.zeros((probs.shape[1], num, stack.height, stack.width), dtype=np.float32)
                    probabilities[0] = 1.0  # background is certain outside the region
                probabilities[(slice(None), *block)] = probs.permute(1, 0, 2, 3).cpu().numpy()
            start = int(indices[-1]) + 1
            reporter.update(start - first)
    finally:
        ahead.close()
    return classes, probabilities
