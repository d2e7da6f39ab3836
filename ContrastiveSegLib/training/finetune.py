"""Few-label fine-tuning: train the segmentation network on the annotated slices only.

One short loop: sample a batch, forward (bf16 autocast on CUDA), masked Dice + CE, AdamW step, polynomial
learning-rate decay (nnU-Net's schedule, which suits short runs without a warm-up). On CUDA out-of-memory the
batch is halved and the step retried, and the user is told (:func:`ContrastiveSegLib.device.halve_batch`).

With a two-decoder network and an :class:`~ContrastiveSegLib.data.sampler.UnannotatedSliceSampler`, each step
also runs IDEAL's bidirectional consistency (Basak & Yin, 2023, fine-tuning stage): crops of unannotated slices go
through the shared encoder, and each decoder is trained with cross-entropy on the other's hard (argmax)
pseudo-labels, weighted by a sigmoid ramp-up (the paper does not give its schedule; docs/methods.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ContrastiveSegLib.data.augment import BatchAugmenter
from ContrastiveSegLib.data.sampler import AnnotatedSliceSampler, UnannotatedSliceSampler
from ContrastiveSegLib.device import BatchLimits, autocast_context, fine_tuning_advice, halve_batch
from ContrastiveSegLib.losses.segmentation import MaskedDiceCELoss
from ContrastiveSegLib.options import DEFAULT_PRESET, PRESETS
from ContrastiveSegLib.progress import ProgressCallback, StageProgress

_DEFAULT = PRESETS[DEFAULT_PRESET]
POLY_POWER = 0.9  # learning rate = initial * (1 - step / steps) ** POLY_POWER, nnU-Net's schedule


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters. ``steps``, ``batch_size`` and ``patch`` default to the default preset's
    numbers (:data:`ContrastiveSegLib.options.PRESETS`); :mod:`ContrastiveSegLib.presets` fills them per preset."""

    steps: int = _DEFAULT.steps
    batch_size: int = _DEFAULT.batch_size
    patch: int = _DEFAULT.patch
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    consistency_weight: float = 0.5  # final weight of the bidirectional consistency term
    consistency_rampup: float = 0.4  # fraction of the steps over which it ramps up (sigmoid, as Laine & Aila)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "patch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def consistency_ramp(step: int, config: FinetuneConfig) -> float:
    """Weight of the consistency term at ``step``: ``consistency_weight * exp(-5 (1 - t)^2)`` with t the fraction
    of the ramp-up done (0 -> 0.0067 of the weight, 1 -> the full weight)."""
    length = config.consistency_rampup * config.steps
    t = 1.0 if length <= 0 else min(step / length, 1.0)
    return config.consistency_weight * math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_loss(logits: list[torch.Tensor]) -> torch.Tensor:
    """Bidirectional hard pseudo-label cross-entropy of two decoders' logits (B, C, H, W): CE(first, argmax
    second) + CE(second, argmax first); the pseudo-labels carry no gradient."""
    first, second = logits
    return (torch.nn.functional.cross_entropy(first, second.detach().argmax(1))
            + torch.nn.functional.cross_entropy(second, first.detach().argmax(1)))


def _unannotated_logits(model, crops: torch.Tensor, augmenter: BatchAugmenter | None,
                        device: torch.device) -> list[torch.Tensor]:
    """Both decoders' float32 logits on augmented unannotated ``crops`` (B, C, H, W), normalised with their own
    batch statistics but leaving the running statistics to the annotated crops.

    Why: when the unannotated crops also fed the running statistics (or shared a batch with the annotated ones),
    the smaller structure of the test phantom collapsed in one decoder even with the consistency weight at 0, in 2
    of 3 seeds; in a separate pass that leaves the running statistics alone it does not.
    """
    crops = crops.to(device, non_blocking=True)
    if augmenter is not None:
        crops, _ = augmenter(crops, torch.zeros_like(crops[:, :1], dtype=torch.long))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        with autocast_context(device):
            logits = model.forward_decoders(crops.contiguous(memory_format=torch.channels_last))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return [l.float() for l in logits]


def _training_step(model, sampler: AnnotatedSliceSampler, batch_size: int, criterion, optimizer,
                   config: FinetuneConfig, step: int, device: torch.device, augmenter: BatchAugmenter | None,
                   unannotated: UnannotatedSliceSampler | None) -> float:
    """One optimisation step at ``batch_size`` (sample, move, augment, forward, loss, backward, update); returns
    the loss. Every tensor of the step lives in this frame only, so that after an out-of-memory error nothing of it
    survives once the caller has left its ``except`` block (:func:`~ContrastiveSegLib.device.halve_batch`)."""
    inputs, targets = sampler.batch(batch_size)
    inputs = inputs.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if augmenter is not None:
        inputs, targets = augmenter(inputs, targets)
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    with autocast_context(device):
        outputs = model.forward_decoders(inputs) if unannotated is not None else [model(inputs)]
    loss = sum(criterion(logits.float(), targets) for logits in outputs)
    if unannotated is not None:
        loss = loss + consistency_ramp(step, config) * consistency_loss(
            _unannotated_logits(model, unannotated.batch(batch_size), augmenter, device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_segmentation(model: torch.nn.Module, sampler: AnnotatedSliceSampler, config: FinetuneConfig,
                       device: torch.device, augmenter: BatchAugmenter | None = None,
                       progress: ProgressCallback = None, cancel=None,
                       unannotated: UnannotatedSliceSampler | None = None,
                       batches: BatchLimits | None = None, after_steps: float = 0.0) -> list[float]:
    """The fine-tuning loop (behind :func:`ContrastiveSegLib.api.finetune`): train ``model`` in place on batches
    from ``sampler``, augmented on ``device`` by ``augmenter`` (None: no augmentation); returns the loss of every
    step.

    With ``unannotated`` (and a network with two decoders) each step adds the bidirectional consistency term on
    as many unannotated crops as annotated ones. ``batches`` carries the batch size that fitted after running out
    of GPU memory from one stage of a run to the next; ``after_steps`` is the run's later work in steps of this loop,
    for the ETA (:class:`~ContrastiveSegLib.progress.StageProgress`). Raises Cancelled when ``cancel`` is set (checked every
    step).
    """
    dual = getattr(model, "decoder2", None) is not None
    if (unannotated is not None) != dual:
        raise ValueError("bidirectional consistency needs both a two-decoder network and unannotated slices")
    # channels_last: measured 1.3-1.5x faster convolutions on CPU (benchmarks/results/), and the layout cuDNN
    # prefers for bf16 on GPU.
    model.to(device=device, memory_format=torch.channels_last).train()
    criterion = MaskedDiceCELoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  foreach=True)
    # LambdaLR, not PolynomialLR: that one multiplies the rate by a per-step factor, which drifts from this closed
    # form in the last bits (about 1e-18 at 1e-2), which would move the trained weights.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - step / config.steps) ** POLY_POWER)
    reporter = StageProgress("finetune", config.steps, progress, cancel, after_steps=after_steps)
    batches = batches if batches is not None else BatchLimits()
    batch_size = batches.start("finetune", config.batch_size)
    losses: list[float] = []
    step = 0
    while step < config.steps:
        reporter.check_cancel()
        failure = None
        try:
            value = _training_step(model, sampler, batch_size, criterion, optimizer, config, step, device,
                                   augmenter, unannotated)
        except torch.OutOfMemoryError as error:
            failure = error.with_traceback(None)  # the traceback holds the step's frames and tensors
        if failure is not None:  # outside the except block: the step's tensors are gone now
            optimizer.zero_grad(set_to_none=True)
            batch_size = halve_batch(batch_size, "fine-tuning", progress, "finetune",
                                     advice=fine_tuning_advice(config.patch), cause=failure)
            continue
        batches.record("finetune", batch_size, config.batch_size)
        scheduler.step()
        step += 1
        if not math.isfinite(value):
            raise FloatingPointError(f"fine-tuning diverged at step {step} (loss {value})")
        losses.append(value)
        reporter.update(step, loss=sum(losses[-10:]) / len(losses[-10:]))
    model.eval()
    return losses
