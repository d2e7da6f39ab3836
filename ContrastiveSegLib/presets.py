"""Named settings a user picks with ``--preset``. Numbers come from the benchmark (benchmarks/results/), not
from guesses; see docs/finetuning.md for the runs behind them."""
from __future__ import annotations

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.training.finetune import FinetuneConfig

PRESETS: dict[str, FinetuneConfig] = {
    "fast": FinetuneConfig(steps=120, batch_size=8, patch=96),
    "default": FinetuneConfig(steps=300, batch_size=8, patch=128),
}


def preset_config(name: str, **overrides) -> FinetuneConfig:
    """The preset ``name`` with any non-None ``overrides`` (e.g. steps=50) applied."""
    if name not in PRESETS:
        raise InputError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    values = {**PRESETS[name].__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return FinetuneConfig(**values)
    except ValueError as error:
        raise InputError(str(error)) from None
