"""Few-label fine-tuning: one training loop, :func:`train_segmentation`, whose variants are plug-ins.

The loop is shaped like MONAI's ``SupervisedTrainer`` without Ignite: one iteration (each plug-in adds its term to
the step's loss, then backward, AdamW step, polynomial learning-rate decay: nnU-Net's schedule, which suits short
runs without a warm-up), a ``prepare_batch`` hook (:meth:`SupervisedObjective.prepare_batch`), and events (the
structured progress of :class:`~ContrastiveSegLib.progress.StageProgress`: a step's loss and ETA, an
out-of-memory retry). Forward passes run under bf16 autocast on CUDA. On CUDA out-of-memory the batch is halved and
the step retried, and the user is told (:func:`ContrastiveSegLib.device.halve_batch`).

The plug-ins (:class:`TrainingPlugin`):

- :class:`SupervisedObjective`: masked Dice + CE of every decoder on augmented crops of the annotated slices. A
  self-training round or training on the shape prior's labels is this same objective over a sampler whose targets
  hold pseudo-labels (:mod:`ContrastiveSegLib.api`); every run has exactly one.
- :class:`BidirectionalConsistency`: IDEAL's consistency term (Basak & Yin, 2023, fine-tuning stage): crops of
  unannotated slices go through the shared encoder, and each decoder is trained with cross-entropy on the other's
  hard (argmax) pseudo-labels, weighted by a sigmoid ramp-up (the paper does not give its schedule;
  docs/methods.md). Needs a two-decoder network, and a two-decoder network needs it.

A combination that cannot train is refused in one line (:class:`~ContrastiveSegLib.errors.InputError`) before the
first step (:func:`check_plugins`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ContrastiveSegLib.data.augment import BatchAugmenter
from ContrastiveSegLib.data.case import PreparedCase
from ContrastiveSegLib.data.sampler import AnnotatedSliceSampler, UnannotatedSliceSampler
from ContrastiveSegLib.device import BatchLimits, autocast_context, fine_tuning_advice, halve_batch
from ContrastiveSegLib.errors import InputError
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


def decoders_of(model: torch.nn.Module) -> int:
    """How many decoders ``model`` trains: two for a network with a second decoder, else one."""
    return 2 if getattr(model, "decoder2", None) is not None else 1


@dataclass(frozen=True)
class Iteration:
    """What a plug-in knows of the step it takes part in: its index, the batch size it runs at (halved after an
    out-of-memory error), the run's numbers and the device."""

    step: int
    batch_size: int
    config: FinetuneConfig
    device: torch.device


class TrainingPlugin:
    """A part of :func:`train_segmentation`'s step: it may refuse a network it cannot train (:meth:`check`, before
    the first step) and adds a term to the step's loss (:meth:`loss`). A plug-in keeps no tensor of a step on
    itself: the step's tensors must die with the step (out-of-memory handling, :func:`train_segmentation`)."""

    def check(self, model: torch.nn.Module) -> None:
        """InputError (one line) when this plug-in cannot train ``model``."""

    def loss(self, model: torch.nn.Module, iteration: Iteration) -> torch.Tensor:
        """This plug-in's term of the step's loss (a float32 scalar with a gradient)."""
        raise NotImplementedError


class SupervisedObjective(TrainingPlugin):
    """Masked Dice + CE (:class:`~ContrastiveSegLib.losses.segmentation.MaskedDiceCELoss`) of every decoder's
    logits on crops from ``sampler``, augmented on the device by ``augmenter`` (None: no augmentation). The
    sampler's targets say what is learnt: the painting, or the painting plus pseudo-labels (self-training, the
    shape prior's labels)."""

    def __init__(self, sampler: AnnotatedSliceSampler, augmenter: BatchAugmenter | None = None) -> None:
        self.sampler = sampler
        self.augmenter = augmenter
        self.criterion = MaskedDiceCELoss()

    def prepare_batch(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's inputs (channels-last) and targets: sampled, moved to ``device``, augmented there."""
        inputs, targets = self.sampler.batch(batch_size)
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if self.augmenter is not None:
            inputs, targets = self.augmenter(inputs, targets)
        return inputs.contiguous(memory_format=torch.channels_last), targets

    def loss(self, model: torch.nn.Module, iteration: Iteration) -> torch.Tensor:
        inputs, targets = self.prepare_batch(iteration.batch_size, iteration.device)
        with autocast_context(iteration.device):
            outputs = model.forward_decoders(inputs) if decoders_of(model) == 2 else [model(inputs)]
        return sum(self.criterion(logits.float(), targets) for logits in outputs)


class BidirectionalConsistency(TrainingPlugin):
    """IDEAL's bidirectional consistency on as many crops of unannotated slices (from ``unannotated``, augmented
    by ``augmenter``) as the step has annotated ones, weighted by :func:`consistency_ramp`."""

    def __init__(self, unannotated: UnannotatedSliceSampler, augmenter: BatchAugmenter | None = None) -> None:
        self.unannotated = unannotated
        self.augmenter = augmenter

    def check(self, model: torch.nn.Module) -> None:
        if decoders_of(model) != 2:
            raise InputError("bidirectional consistency needs a network with two decoders; this one has one")

    def loss(self, model: torch.nn.Module, iteration: Iteration) -> torch.Tensor:
        crops = self.unannotated.batch(iteration.batch_size)
        return consistency_ramp(iteration.step, iteration.config) * consistency_loss(
            _unannotated_logits(model, crops, self.augmenter, iteration.device))


def check_plugins(model: torch.nn.Module, plugins: Sequence[TrainingPlugin]) -> None:
    """Refuse, in one line (InputError), a combination of plug-ins and network that cannot train: not exactly one
    :class:`SupervisedObjective` (it comes first: the order of the random draws is part of a seeded run), a plug-in
    twice, a plug-in that refuses the network (consistency with one decoder), a two-decoder network without
    :class:`BidirectionalConsistency` (its second decoder would copy the first)."""
    kinds = [type(plugin) for plugin in plugins]
    if kinds.count(SupervisedObjective) != 1 or kinds[0] is not SupervisedObjective:
        raise InputError("fine-tuning takes one supervised objective, first among its plug-ins; got "
                         f"{[kind.__name__ for kind in kinds]}")
    if len(set(kinds)) != len(kinds):
        raise InputError(f"each fine-tuning plug-in may come once; got {[kind.__name__ for kind in kinds]}")
    for plugin in plugins:
        plugin.check(model)
    if decoders_of(model) == 2 and BidirectionalConsistency not in kinds:
        raise InputError("a network with two decoders trains with bidirectional consistency; none was given")


def training_plugins(case: PreparedCase, network: torch.nn.Module, targets: np.ndarray, slices, patch: int,
                     seed: int) -> list[TrainingPlugin]:
    """The fine-tuning loop's plug-ins for ``network`` on ``case``: the supervised objective on ``targets`` (the
    painting, or the painting plus pseudo-labels) at the stack positions ``slices``, and for a two-decoder network
    the bidirectional consistency on the unpainted slices; one augmenter and samplers seeded from ``seed`` (made in
    this order: the order of their random draws is part of a seeded run)."""
    divisor = network.config.divisor
    sampler = AnnotatedSliceSampler(case.stack, targets, slices, patch, divisor=divisor, seed=seed)
    unannotated = None
    if network.config.decoders == 2:
        try:
            unannotated = UnannotatedSliceSampler(case.stack, case.annotation.painted, patch, divisor=divisor,
                                                  seed=seed, centres=sampler.centre)
        except ValueError as error:  # no unpainted slice to learn the consistency on
            raise InputError(str(error)) from None
    augmenter = BatchAugmenter(image_channels=2 * case.spec.context + 1, seed=seed)
    plugins: list[TrainingPlugin] = [SupervisedObjective(sampler, augmenter)]
    if unannotated is not None:
        plugins.append(BidirectionalConsistency(unannotated, augmenter))
    return plugins


def _training_step(model, plugins: Sequence[TrainingPlugin], batch_size: int, optimizer, config: FinetuneConfig,
                   step: int, device: torch.device) -> float:
    """One optimisation step at ``batch_size`` (every plug-in's term of the loss in order, backward, update);
    returns the loss. Every tensor of the step lives in this frame (and the plug-ins' frames below it) only, so
    that after an out-of-memory error nothing of it survives once the caller has left its ``except`` block
    (:func:`~ContrastiveSegLib.device.halve_batch`)."""
    iteration = Iteration(step, batch_size, config, device)
    loss = plugins[0].loss(model, iteration)
    for plugin in plugins[1:]:
        loss = loss + plugin.loss(model, iteration)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_segmentation(model: torch.nn.Module, plugins: Sequence[TrainingPlugin], config: FinetuneConfig,
                       device: torch.device, *, progress: ProgressCallback = None, cancel=None,
                       batches: BatchLimits | None = None, after_steps: float = 0.0) -> list[float]:
    """The fine-tuning loop (behind :func:`ContrastiveSegLib.api.finetune` and the self-training round): train
    ``model`` in place for ``config.steps`` steps of the ``plugins``' summed loss; returns the loss of every step.

    ``plugins``: a :class:`SupervisedObjective` first, then optionally :class:`BidirectionalConsistency`; a
    combination that cannot train is refused (InputError) before anything runs (:func:`check_plugins`).
    ``batches`` carries the batch size that fitted after running out of GPU memory from one stage of a run to the
    next; ``after_steps`` is the run's later work in steps of this loop, for the ETA
    (:class:`~ContrastiveSegLib.progress.StageProgress`). Raises Cancelled when ``cancel`` is set (checked every
    step).
    """
    check_plugins(model, plugins)
    # channels_last: measured 1.3-1.5x faster convolutions on CPU (benchmarks/results/), and the layout cuDNN
    # prefers for bf16 on GPU.
    model.to(device=device, memory_format=torch.channels_last).train()
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
            value = _training_step(model, plugins, batch_size, optimizer, config, step, device)
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
