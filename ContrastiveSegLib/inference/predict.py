"""Predict every slice of a volume in batches of whole slices, back on the original grid.

Whole slices (padded to a multiple of the network's divisor) instead of sliding windows: a 2D network's receptive
field is far smaller than a slice, so one pass per slice gives the same answer as overlapping windows at a fraction
of the work. Only the arg-max (and, when asked, the probabilities) is kept, so memory stays at one label volume.
"""
from __future__ import annotations

import numpy as np
import torch

from ContrastiveSegLib.data.slices import SliceStack, pad_to_divisor
from ContrastiveSegLib.inference.shape_prior import PRIOR_WEIGHT
from ContrastiveSegLib.progress import ProgressCallback, StageProgress
from ContrastiveSegLib.device import BatchLimits, autocast_context, halve_batch
from ContrastiveSegLib.options import PREDICT_BATCH_SIZE


def _slice_logits(model: torch.nn.Module, stack: SliceStack, indices: np.ndarray, divisor: int,
                  device: torch.device, flip_tta: bool) -> torch.Tensor:
    """float32 logits (B, C, H', W') of the slices ``indices``, padded to ``divisor``. The input batch lives in this
    frame only (see :func:`~ContrastiveSegLib.device.halve_batch`)."""
    x = pad_to_divisor(stack.inputs(indices), divisor)
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with autocast_context(device):
        logits = model(x).float()
        if flip_tta:
            # The flipped coordinate channels flip with the image, so each pixel keeps its own position.
            logits = 0.5 * (logits + model(x.flip(-1)).float().flip(-1))
    return logits


@torch.no_grad()
def predict_volume(model: torch.nn.Module, stack: SliceStack, device: torch.device, *, divisor: int,
                   batch_size: int = PREDICT_BATCH_SIZE, flip_tta: bool = False, keep_probabilities: bool = False,
                   prior=None, keep_confidence: bool = False, progress: ProgressCallback = None,
                   cancel=None, batches: BatchLimits | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment every slice of ``stack``, ``batch_size`` slices per pass (halved on running out of GPU memory;
    ``batches`` carries the size that fitted to the run's later stages).

    ``prior`` (a :class:`~ContrastiveSegLib.inference.shape_prior.ShapePrior`) multiplies the network's class
    probabilities by the shape prior's, raised to ``PRIOR_WEIGHT``, and renormalises (a product of experts).

    Returns:
        classes: (S, H, W) uint8 class indices in stack order (slices along the annotation axis first).
        probabilities: (C, S, H, W) float32 softmax, or None unless ``keep_probabilities``; with
            ``keep_confidence`` instead, (S, H, W) uint8: the winning class's probability times 255 (one byte per
            voxel, for self-training on a CT-sized volume).
    """
    model.to(device=device, memory_format=torch.channels_last).eval()
    num = stack.num_slices
    classes = np.empty((num, stack.height, stack.width), dtype=np.uint8)
    probabilities = None
    reporter = StageProgress("predict", num, progress, cancel)
    batches = batches if batches is not None else BatchLimits()
    requested, batch_size = batch_size, batches.start("predict", batch_size)
    start = 0
    while start < num:
        reporter.check_cancel()
        indices = np.arange(start, min(start + batch_size, num))
        failure = logits = log_probs = probs = None  # the last pass's tensors go before this one starts
        try:
            logits = _slice_logits(model, stack, indices, divisor, device, flip_tta)
        except torch.OutOfMemoryError as error:
            failure = error.with_traceback(None)  # the traceback holds the pass's frames and tensors
        if failure is not None:  # outside the except block: nothing of the failed pass is referenced now
            batch_size = halve_batch(batch_size, "predicting", progress, "predict", cause=failure)
            continue
        batches.record("predict", batch_size, requested)
        log_probs = torch.log_softmax(logits[..., :stack.height, :stack.width], dim=1)
        if prior is not None:
            log_probs = log_probs + PRIOR_WEIGHT * prior.log_probs(indices).to(log_probs.device)
        probs = torch.softmax(log_probs, dim=1)
        classes[indices] = probs.argmax(1).to(torch.uint8).cpu().numpy()
        if keep_confidence:
            if probabilities is None:
                probabilities = np.empty((num, stack.height, stack.width), dtype=np.uint8)
            probabilities[indices] = (probs.amax(1) * 255).round().to(torch.uint8).cpu().numpy()
        elif keep_probabilities:
            if probabilities is None:
                probabilities = np.empty((probs.shape[1], num, stack.height, stack.width), dtype=np.float32)
            probabilities[:, indices] = probs.permute(1, 0, 2, 3).cpu().numpy()
        start = int(indices[-1]) + 1
        reporter.update(start)
    return classes, probabilities
