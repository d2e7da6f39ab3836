"""Named settings a user picks with ``--preset``. Numbers come from measured runs (docs/finetuning.md,
benchmarks/results/), not from guesses: 300 steps at learning rate 1e-2 beat 150 steps by 0.02 Dice on the MNI
task, and 500 steps did not beat 300; "fast" halves the steps and shrinks the crops for a first look."""
from __future__ import annotations

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.training.finetune import FinetuneConfig

PRESETS: dict[str, FinetuneConfig] = {
    "fast": FinetuneConfig(steps=150, batch_size=8, patch=96),
    "default": FinetuneConfig(steps=300, batch_size=8, patch=128),
}


# A refinement (``--init-model``: the previous model plus one corrected slice) starts from weights that already
# fit all but that slice, so it runs this fraction of the preset's steps unless --steps says otherwise.
REFINE_FRACTION = 1 / 3


def preset_config(name: str, *, refine: bool = False, **overrides) -> FinetuneConfig:
    """The preset ``name`` with any non-None ``overrides`` (e.g. steps=50) applied; ``refine`` shortens it to
    :data:`REFINE_FRACTION` of its steps (an explicit ``steps`` wins)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    values = {**PRESETS[name].__dict__}
    if refine:
        values["steps"] = max(1, round(values["steps"] * REFINE_FRACTION))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return FinetuneConfig(**values)
    except ValueError as error:
        raise InputError(str(error)) from None
