"""Self-supervised pretraining: one loop for every method, and the job around it that writes an encoder file.

The loop (:func:`pretrain`) knows only the method interface (``method(batch).loss``, ``.terms``,
``on_epoch_start``): draw a batch from the slice stream, make two views on the device, forward under bf16 autocast
on CUDA, AdamW step with a linear warm-up and cosine decay (the schedule of Peng et al. and most contrastive
work). A run is bounded by steps, minutes or both; the schedules run on the fraction of the budget used, so a
time-bounded run still warms up and decays. Checkpoints every N steps allow ``--resume``.

:func:`pretrain_encoder` is the whole job (what ``contrastiveseg pretrain`` and the API call): check the data,
build the method, stream slices, run the loop (under torchrun: DDP, sharded data, rank-0 writes), write the
encoder file that :func:`ContrastiveSegLib.model.load_encoder_into` reads.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.transforms.utils import compute_divisible_spatial_size

from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.data.unlabelled import MIN_IN_PLANE, SliceStream, StreamConfig, VolumeSource, check_sources
from ContrastiveSegLib.data.views import TwoViews, ViewConfig
from ContrastiveSegLib.device import resolve_device
from ContrastiveSegLib.errors import Cancelled, InputError, OutOfMemory
from ContrastiveSegLib.methods import DEFAULT_FEATURES, DEFAULT_NORM, PretrainMethod, get_method
from ContrastiveSegLib.options import (AXIS_LETTERS, DEFAULT_DEVICE, PRETRAIN_BATCH_SIZE, PRETRAIN_LEARNING_RATE,
                                       PRETRAIN_PATCH, PRETRAIN_STEPS)
from ContrastiveSegLib.progress import ProgressCallback, StageProgress, emit
from ContrastiveSegLib.training import distributed
from ContrastiveSegLib.training.checkpoint import load_checkpoint, read_checkpoint_header, save_checkpoint, save_encoder
from ContrastiveSegLib.training.distributed import DistributedContext
from ContrastiveSegLib.device import autocast_context


@dataclass
class PretrainConfig:
    """Budget and optimiser of a pretraining run (defaults and reasons in docs/methods.md, "Pretraining loop").

    Attributes:
        steps: stop after this many optimiser steps (counted across resumes).
        minutes: stop after this much training time (counted across resumes). With neither,
            :data:`~ContrastiveSegLib.options.PRETRAIN_STEPS`.
        batch_size: crops per step and per process (each gives two views).
        learning_rate, weight_decay: AdamW.
        warmup_fraction: linear warm-up over this fraction of the budget, then cosine decay to 1 %.
        epochs: notional epochs over which methods' schedules (the self-paced gamma) run.
        seed: everything random follows from it.
        checkpoint_every: write ``checkpoint_path`` every this many steps and at the end (0: never).
        checkpoint_path: where checkpoints go.
        resume: continue from this checkpoint (same method and parameters).
    """

    steps: int | None = None
    minutes: float | None = None
    batch_size: int = PRETRAIN_BATCH_SIZE
    learning_rate: float = PRETRAIN_LEARNING_RATE
    weight_decay: float = 1e-5
    warmup_fraction: float = 0.05
    epochs: int = 100
    seed: int = 0
    checkpoint_every: int = 0
    checkpoint_path: Path | None = None
    resume: Path | None = None

    def __post_init__(self) -> None:
        if self.steps is None and self.minutes is None:
            self.steps = PRETRAIN_STEPS
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.checkpoint_every and self.checkpoint_path is None:
            raise ValueError("checkpoint_every needs a checkpoint_path")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")

    def fraction(self, step: int, seconds: float) -> float:
        """Fraction of the budget used after ``step`` steps and ``seconds`` of training (the larger of the two)."""
        by_steps = step / self.steps if self.steps else (1.0 if self.steps == 0 else 0.0)
        by_time = seconds / (60.0 * self.minutes) if self.minutes else 0.0
        return max(by_steps, by_time)

    def learning_rate_at(self, fraction: float) -> float:
        """Linear warm-up, then cosine decay from ``learning_rate`` to 1 % of it.

        A function of the budget's fraction, not a ``torch.optim.lr_scheduler``: under a ``minutes`` budget the
        fraction comes from the clock, and a scheduler only counts steps.
        """
        if self.warmup_fraction and fraction < self.warmup_fraction:
            return self.learning_rate * max(fraction / self.warmup_fraction, 0.01)
        progress = (fraction - self.warmup_fraction) / max(1.0 - self.warmup_fraction, 1e-8)
        return self.learning_rate * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


@dataclass
class PretrainResult:
    """What :func:`pretrain` did: ``steps`` (total, across resumes), ``start_step`` (where this run began),
    ``losses`` of this run's steps, the last step's ``terms``, training ``seconds`` (across resumes) and why it
    ``stopped`` ("steps" or "minutes")."""

    steps: int
    start_step: int = 0
    losses: list[float] = field(default_factory=list)
    terms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: str = "steps"


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _seed(seed: int, rank: int, step: int) -> None:
    # Model initialisation uses the shared seed (see pretrain_encoder); the draws during training differ per rank
    # and restart deterministically from the step on resume.
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))


def pretrain(method: PretrainMethod, data, config: PretrainConfig, device: torch.device,
             progress: ProgressCallback = None, cancel=None, views: TwoViews | None = None,
             context: DistributedContext | None = None) -> PretrainResult:
    """Train ``method`` in place on batches from ``data`` (anything with ``batch(batch_size) -> dict``, usually a
    :class:`~ContrastiveSegLib.data.unlabelled.SliceStream`).

    Args:
        views: makes the two views on ``device`` (default :class:`TwoViews` with the default :class:`ViewConfig`).
        context: the distributed job (default: a single process). Under DDP every rank must call this.

    Raises Cancelled when ``cancel`` (a ``threading.Event``) is set on any rank (checked every step); InputError
    when ``config.resume`` is not a checkpoint of this method; FloatingPointError when the loss diverges.
    """
    context = context or DistributedContext()
    method.to(device).train()
    views = views or TwoViews(method.image_channels, seed=config.seed * 1000 + context.rank)
    optimizer = torch.optim.AdamW(method.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay) if method.trains else None
    start_step, seconds_before = 0, 0.0
    if config.resume is not None:
        header = load_checkpoint(config.resume, method, optimizer)
        start_step, seconds_before = int(header.get("step", 0)), float(header.get("seconds", 0.0))
        emit(progress if context.is_main else None, "pretrain", f"resuming from {config.resume} at step {start_step}")
    result = PretrainResult(steps=start_step, start_step=start_step, seconds=seconds_before)
    if not method.trains:
        return result
    _seed(config.seed, context.rank, start_step)
    views.reseed(config.seed * 1000 + context.rank + 7919 * start_step)
    if start_step and hasattr(data, "reseed"):
        data.reseed(start_step)
    model = distributed.wrap(method, context, device)
    # Progress and cancellation are handled here, not by StageProgress: a rank that stopped on its own would leave
    # the others waiting in a collective.
    reporter = StageProgress("pretrain", config.steps or 1, progress if context.is_main else None, None)
    step, epoch, started = start_step, -1, time.perf_counter()
    while True:
        seconds = seconds_before + time.perf_counter() - started
        cancelled = cancel is not None and cancel.is_set()
        stop_flag, time_fraction = distributed.all_reduce_max(
            [float(cancelled), config.fraction(0, seconds) if config.minutes else 0.0], context, device)
        if stop_flag:
            raise Cancelled("cancelled")
        fraction = max(config.fraction(step, 0.0) if config.steps is not None else 0.0, time_fraction)
        if fraction >= 1.0:
            result.stopped = "minutes" if time_fraction >= 1.0 else "steps"
            break
        current = min(int(fraction * config.epochs), config.epochs - 1)
        if current != epoch:
            epoch = current
            method.on_epoch_start(epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate_at(fraction)
        try:
            batch = views(_to_device(data.batch(config.batch_size), device))
            with autocast_context(device):
                output = model(batch)
            loss = output.loss.float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        except torch.OutOfMemoryError as error:
            # No halving here: fewer crops per step change the contrastive loss (fewer negatives). The advice is
            # what the pretrain command itself takes (not a fine-tuning preset).
            raise OutOfMemory(f"out of memory while pretraining at batch size {config.batch_size}: use a smaller "
                              "--batch-size or --patch, or the CPU (--device cpu)") from error
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"pretraining diverged at step {step} (loss {value}); try a lower learning rate")
        result.losses.append(value)
        if context.is_main:
            if config.steps is None:  # a time budget: the total is an estimate from the speed so far
                reporter.total = max(step + 1, int(step / max(fraction, 1e-9)))
            recent = result.losses[-10:]
            reporter.update(step, loss=sum(recent) / len(recent))
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                _checkpoint(config, method, optimizer, step, seconds_before + time.perf_counter() - started)
    result.steps = step
    result.seconds = seconds_before + time.perf_counter() - started
    result.terms = {k: float(v) for k, v in output.terms.items()} if step > start_step else {}
    if context.is_main and config.checkpoint_every and step > start_step and step % config.checkpoint_every:
        _checkpoint(config, method, optimizer, step, result.seconds)
    distributed.broadcast_buffers(method, context)
    if not distributed.ranks_agree(method, context, device):
        # Rank 0's weights are the ones written; a mismatch means a non-deterministic kernel, worth knowing about.
        emit(progress if context.is_main else None, "pretrain", "warning: the ranks ended with different weights; "
             "rank 0's are written")
    method.eval()
    return result


def _checkpoint(config: PretrainConfig, method: PretrainMethod, optimizer, step: int, seconds: float) -> None:
    save_checkpoint(config.checkpoint_path, method, optimizer,
                    {"step": step, "seconds": seconds, "seed": config.seed, "batch_size": config.batch_size})


@dataclass
class PretrainJob:
    """The trained method, the loop's result and (on rank 0) the encoder file written."""

    method: PretrainMethod
    result: PretrainResult
    output: Path | None
    context: DistributedContext


def pretrain_encoder(sources: Sequence[VolumeSource], method: str, output: str | os.PathLike | None,
                     config: PretrainConfig = PretrainConfig(), *, params: Mapping[str, Any] | None = None,
                     axis: int = 0, spec: InputSpec = InputSpec(), features: tuple[int, ...] = DEFAULT_FEATURES,
                     norm: str = DEFAULT_NORM, patch: int = PRETRAIN_PATCH, stream: StreamConfig = StreamConfig(),
                     view_config: ViewConfig = ViewConfig(),
                     tag_key: str | None = None, tags: Mapping[str, str] | None = None,
                     init_encoder: str | os.PathLike | None = None, device: str = DEFAULT_DEVICE,
                     progress: ProgressCallback = None, cancel=None) -> PretrainJob:
    """Pretrain an encoder with ``method`` on unlabelled ``sources`` and write it to ``output`` (rank 0 only).

    Args:
        sources: volumes (:func:`~ContrastiveSegLib.data.unlabelled.find_volumes` for paths, or
            :class:`~ContrastiveSegLib.data.unlabelled.ArrayVolume` for the scan at hand).
        method: a name in :data:`ContrastiveSegLib.methods.METHODS`; ``params`` its hyper-parameters.
        output: the encoder .safetensors file (None: write nothing, e.g. when adapting in memory).
        axis, spec, features, norm: slicing axis, input spec, encoder widths and normalisation (must match
            fine-tuning's network).
        patch: crop size, shrunk to the largest slice (rounded up to 16) when the volumes are smaller.
        init_encoder: start from this encoder file (e.g. a shipped encoder adapted to one scan) instead of random
            weights; the method's heads still start random.

    Every user error (unknown method or parameter, unreadable or too small volume, a checkpoint of another method)
    raises InputError with one line before any training.
    """
    context, torch_device, created = distributed.init_distributed(resolve_device(device))
    data = None
    try:
        if config.resume is not None:
            read_checkpoint_header(config.resume, method)  # refuse another method's checkpoint before any work
        info = check_sources(sources, axis, tag_key=tag_key, tags=tags)
        torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
        try:
            pretrain_method = get_method(method, spec, features, norm, **dict(params or {}))
        except (TypeError, ValueError) as error:
            raise InputError(str(error)) from None
        if init_encoder is not None:
            from ContrastiveSegLib.model import load_encoder_weights

            load_encoder_weights(pretrain_method.encoder, init_encoder, spec)
        largest = max(max(s for a, s in enumerate(shape) if a != axis) for shape in info.shapes)
        patch = min(patch, compute_divisible_spatial_size((largest,), MIN_IN_PLANE)[0])
        keys = pretrain_method.required_keys
        stream = replace(stream, patch=patch, superpixels="superpixels1" in keys, labels="labels1" in keys)
        emit(progress if context.is_main else None, "pretrain",
             f"pretraining '{method}' on {len(sources)} volume(s) along {AXIS_LETTERS[axis]}, {patch} x {patch} "
             "crops "
             f"({torch_device.type}{f', {context.world_size} processes' if context.enabled else ''})")
        if stream.superpixels and context.is_main:
            emit(progress, "pretrain", "computing Felzenszwalb superpixels once per volume (cached in "
                                       f"{stream.cache_dir or 'memory only'})")
        if pretrain_method.trains:
            data = SliceStream(sources, spec, axis, stream, info, config.seed, context.rank, context.world_size)
        views = TwoViews(pretrain_method.image_channels, view_config, seed=config.seed * 1000 + context.rank)
        result = pretrain(pretrain_method, data, config, torch_device, progress, cancel, views, context)
        written = None
        if output is not None and context.is_main:
            names = [getattr(s, "name", "array") for s in sources]
            save_encoder(output, pretrain_method, {
                "steps": result.steps, "seconds": round(result.seconds, 1), "seed": config.seed, "axis": axis,
                "batch_size": config.batch_size * context.world_size, "patch": patch,
                "data": {"volumes": len(sources), "names": names[:20]}})
            written = Path(output)
            emit(progress, "write", f"wrote {output} ({result.steps} steps, {result.seconds:.0f} s)")
        distributed.barrier(context)
        return PretrainJob(pretrain_method.cpu(), result, written, context)
    finally:
        if data is not None:
            data.close()
        distributed.shutdown(created)
