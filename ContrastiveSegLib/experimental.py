"""Options measured by the benchmark but not offered to users: a self-training round after fine-tuning and training
on the shape prior's sure voxels between the painted slices (docs/finetuning.md, benchmarks/results/candidates.md:
neither beat the default across tasks). They are plug-ins of the same run (:mod:`ContrastiveSegLib.plan`), kept
out of :func:`ContrastiveSegLib.api.segment`'s signature so that users meet only what is recommended.

``segment`` / ``finetune`` here take every option of their :mod:`ContrastiveSegLib.api` namesakes, plus:

- ``self_train``: that many further fine-tuning steps on the confident voxels of the (fused) prediction of up to
  24 unpainted slices (:func:`ContrastiveSegLib.api.self_train_round`; 0 skips it). ``segment`` only.
- ``prior_labels``: also train on the shape prior's sure voxels of up to 24 unpainted slices between the painted
  ones (:func:`~ContrastiveSegLib.inference.shape_prior.prior_pseudo_labels`).
"""
from __future__ import annotations

import numpy as np

from ContrastiveSegLib import api
from ContrastiveSegLib.model import TrainedModel

__all__ = ["finetune", "segment"]

_PREDICTION = {"probabilities": False, "flip_tta": False, "postprocess": True, "shape_prior": True}


def segment(image: np.ndarray, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), *, self_train: int = 0,
            prior_labels: bool = False, axis: int | None = None, threads: int | None = None, progress=None,
            cancel=None, **options) -> api.SegmentResult:
    """:func:`ContrastiveSegLib.api.segment` with the experimental ``self_train`` and ``prior_labels``."""
    prediction = {key: options.pop(key, default) for key, default in _PREDICTION.items()}
    return api.run_segment(image, labels, spacing, axis=axis, threads=threads, progress=progress, cancel=cancel,
                           prediction=prediction, self_train=self_train, prior_labels=prior_labels, **options)


def finetune(image: np.ndarray, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), *, prior_labels: bool = False,
             axis: int | None = None, threads: int | None = None, progress=None, cancel=None,
             **options) -> TrainedModel:
    """:func:`ContrastiveSegLib.api.finetune` with the experimental ``prior_labels``."""
    return api.run_finetune(image, labels, spacing, axis=axis, threads=threads, progress=progress, cancel=cancel,
                            prior_labels=prior_labels, **options)
