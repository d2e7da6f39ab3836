"""One run's fine-tuning options, checked once and resolved once: the :class:`TrainingPlan` that every stage of
:mod:`ContrastiveSegLib.api` reads (prepare, initialise, fine-tune, self-train, predict).

The user's words (a preset name, ``steps`` / ``batch_size`` overrides, an encoder name or None, a device string)
become numbers, a file and a ``torch.device`` here, in one place: the options are checked by
:func:`ContrastiveSegLib.options.check_training_options` (the same check the CLI makes before torch loads and the
Slicer job makes before it starts a child), the device is resolved once, and the stages never look at the user's
words again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ContrastiveSegLib.device import resolve_device
from ContrastiveSegLib.model import TrainedModel
from ContrastiveSegLib.options import (ADAPT_STEPS, DEFAULT_CONSISTENCY, DEFAULT_DEVICE, DEFAULT_PRESET, check_count,
                                       check_training_options)
from ContrastiveSegLib.presets import preset_config
from ContrastiveSegLib.training.finetune import FinetuneConfig
from ContrastiveSegLib.zoo.registry import default_encoder, resolve_encoder


@dataclass(frozen=True)
class TrainingPlan:
    """What a fine-tuning run does, resolved.

    Attributes:
        config: the preset's numbers with the caller's overrides (a refinement's shorter schedule included).
        device: where it runs.
        encoder: the encoder's name as the user gave it (the shipped default when none was given).
        encoder_path: its weights file, None for random initialisation.
        init_model: the model a refinement continues, or None for a new model.
        seed, adapt, adapt_steps, consistency: as given (see :func:`ContrastiveSegLib.api.finetune`).
        prior_labels, self_train: experimental stages (:mod:`ContrastiveSegLib.experimental`), off for users.
    """

    config: FinetuneConfig
    device: torch.device
    encoder: str
    encoder_path: Path | None
    init_model: TrainedModel | None = None
    seed: int = 0
    adapt: str | None = None
    adapt_steps: int = ADAPT_STEPS
    consistency: str = DEFAULT_CONSISTENCY
    prior_labels: bool = False
    self_train: int = 0


def plan_training(*, preset: str = DEFAULT_PRESET, encoder: str | None = None,
                  init_model: TrainedModel | None = None, device: str | torch.device = DEFAULT_DEVICE,
                  seed: int = 0, steps: int | None = None, batch_size: int | None = None, adapt: str | None = None,
                  adapt_steps: int = ADAPT_STEPS, consistency: str = DEFAULT_CONSISTENCY, prior_labels: bool = False,
                  self_train: int = 0) -> TrainingPlan:
    """The :class:`TrainingPlan` of these options; InputError (one line) for options that cannot train, an unknown
    preset or encoder, or a device that is not there."""
    check_training_options(steps=steps, batch_size=batch_size, adapt=adapt, adapt_steps=adapt_steps,
                           consistency=consistency, refine=init_model is not None)
    if self_train:
        check_count("self-training steps", self_train)
    config = preset_config(preset, refine=init_model is not None, steps=steps, batch_size=batch_size)
    torch_device = resolve_device(device)
    encoder = default_encoder() if encoder is None else encoder
    return TrainingPlan(config=config, device=torch_device, encoder=encoder, encoder_path=resolve_encoder(encoder),
                        init_model=init_model, seed=seed, adapt=adapt, adapt_steps=adapt_steps,
                        consistency=consistency, prior_labels=prior_labels, self_train=int(self_train))
