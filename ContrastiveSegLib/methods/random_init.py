"""``random``: random initialisation, the ablation's reference point.

Writes the seeded, untrained encoder, so fine-tuning from it is the same as fine-tuning from scratch and every
method's gain is measured against it with identical plumbing.
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor

from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.options import RANDOM_INIT
from ContrastiveSegLib.methods.base import DEFAULT_FEATURES, DEFAULT_NORM, MethodOutput, PretrainMethod


class RandomInit(PretrainMethod):
    """No pretraining: the encoder keeps its random initialisation (``trains`` is False, the loop takes no step).

    ``forward`` still returns a zero loss attached to every parameter, so the method runs through the same code
    paths (DDP, tests) as the others. Shapes: any batch -> scalar 0.
    """

    name = RANDOM_INIT
    description = "random initialisation (no pretraining): the reference for the ablation"
    required_keys: tuple[str, ...] = ()
    trains = False

    def __init__(self, spec: InputSpec = InputSpec(), features: tuple[int, ...] = DEFAULT_FEATURES,
                 norm: str = DEFAULT_NORM):
        super().__init__(spec, features, norm)

    def compute(self, batch: Mapping[str, Tensor]) -> MethodOutput:
        loss = sum(p.sum() for p in self.parameters()) * 0.0
        return MethodOutput(loss, {})
