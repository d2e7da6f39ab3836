"""Throughput ratios of the benchmark protocol (benchmarks/README.md), measured side by side in one process.

- loop ratio: slices/s of the library's fine-tuning loop (crop sampling, batched augmentation, loss, optimiser,
  progress) divided by slices/s of a plain PyTorch loop over pre-made tensors on the device (same network, batch,
  optimiser and loss). Below 1.0 is what the data pipeline and bookkeeping cost.
- inference ratio: slices/s of :func:`predict_volume` (whole slices) divided by slices/s of MONAI's
  ``sliding_window_inference`` over the same slices with the same network (ROI = the training patch, overlap 0.25,
  MONAI's default-style settings).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from ContrastiveSegLib.api import DEFAULT_SPEC
from ContrastiveSegLib.data.augment import BatchAugmenter
from ContrastiveSegLib.data.intensity import normalise_intensity
from ContrastiveSegLib.data.sampler import AnnotatedSliceSampler
from ContrastiveSegLib.data.slices import SliceStack
from ContrastiveSegLib.inference.predict import predict_volume
from ContrastiveSegLib.io.annotations import decode_annotation
from ContrastiveSegLib.losses.segmentation import MaskedDiceCELoss
from ContrastiveSegLib.networks import NetworkConfig, build_network
from ContrastiveSegLib.device import autocast_context
from ContrastiveSegLib.training.finetune import FinetuneConfig, SupervisedObjective, train_segmentation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_throughput_ratio(image: np.ndarray, sparse_labels: np.ndarray, device: torch.device, *, steps: int = 30,
                          batch_size: int = 8, patch: int = 128, seed: int = 0) -> dict:
    """Slices per second of the library loop and of a plain loop, and their ratio."""
    annotation = decode_annotation(sparse_labels)
    stack = SliceStack(normalise_intensity(image), annotation.axis, DEFAULT_SPEC)
    targets = np.moveaxis(annotation.target, annotation.axis, 0)
    config = NetworkConfig(in_channels=DEFAULT_SPEC.in_channels, num_classes=annotation.num_classes)

    torch.manual_seed(seed)
    network = build_network(config)
    sampler = AnnotatedSliceSampler(stack, targets, annotation.slices, patch, divisor=config.divisor, seed=seed)
    augmenter = BatchAugmenter(2 * DEFAULT_SPEC.context + 1, seed)
    plugins = [SupervisedObjective(sampler, augmenter)]
    train_segmentation(network, plugins, FinetuneConfig(steps=3, batch_size=batch_size, patch=patch), device)
    _sync(device)
    start = time.perf_counter()
    train_segmentation(network, plugins, FinetuneConfig(steps=steps, batch_size=batch_size, patch=patch), device)
    _sync(device)
    ours = steps * batch_size / (time.perf_counter() - start)

    torch.manual_seed(seed)
    # Same memory layout as the library loop, so the ratio measures the pipeline, not the layout.
    network = build_network(config).to(device=device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2, weight_decay=1e-4, foreach=True)
    criterion = MaskedDiceCELoss()
    inputs, labels = sampler.batch(batch_size)
    inputs, labels = inputs.to(device).contiguous(memory_format=torch.channels_last), labels.to(device)

    def plain(n: int) -> None:
        for _ in range(n):
            with autocast_context(device):
                logits = network(inputs)
            loss = criterion(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    plain(3)
    _sync(device)
    start = time.perf_counter()
    plain(steps)
    _sync(device)
    reference = steps * batch_size / (time.perf_counter() - start)
    return {"loop_slices_per_s": ours, "plain_slices_per_s": reference, "loop_ratio": ours / reference}


def inference_throughput_ratio(image: np.ndarray, device: torch.device, *, num_classes: int = 3, axis: int = 0,
                               roi: int = 128, repeats: int = 1) -> dict:
    """Slices per second of whole-slice prediction and of MONAI sliding-window inference, and their ratio."""
    stack = SliceStack(normalise_intensity(image), axis, DEFAULT_SPEC)
    config = NetworkConfig(in_channels=DEFAULT_SPEC.in_channels, num_classes=num_classes)
    network = build_network(config).to(device).eval()

    predict_volume(network, SliceStack(stack.slices[:4].numpy(), 0, DEFAULT_SPEC), device,
                   divisor=network.config.divisor)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        predict_volume(network, stack, device, divisor=network.config.divisor)
    _sync(device)
    ours = repeats * stack.num_slices / (time.perf_counter() - start)

    @torch.no_grad()
    def sliding() -> None:
        for first in range(0, stack.num_slices, 16):
            x = stack.inputs(np.arange(first, min(first + 16, stack.num_slices))).to(device)
            with autocast_context(device):
                logits = sliding_window_inference(x, roi_size=(roi, roi), sw_batch_size=16, predictor=network,
                                                  overlap=0.25)
            logits.float().softmax(1).argmax(1).to(torch.uint8).cpu()

    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        sliding()
    _sync(device)
    reference = repeats * stack.num_slices / (time.perf_counter() - start)
    return {"predict_slices_per_s": ours, "sliding_window_slices_per_s": reference,
            "inference_ratio": ours / reference}
