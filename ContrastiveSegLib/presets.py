"""The fine-tuning settings a user picks with ``--preset``, as :class:`FinetuneConfig` objects.

The presets' names and numbers, and the refinement fraction, live in :mod:`ContrastiveSegLib.options` (which the
Slicer GUI reads without torch); this module only turns them into the training loop's config, which needs torch.
"""
from __future__ import annotations

from ContrastiveSegLib import options
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.options import REFINE_FRACTION  # noqa: F401  (re-exported: benchmarks and docs cite it here)
from ContrastiveSegLib.training.finetune import FinetuneConfig

PRESETS: dict[str, FinetuneConfig] = {
    name: FinetuneConfig(steps=numbers.steps, batch_size=numbers.batch_size, patch=numbers.patch)
    for name, numbers in options.PRESETS.items()
}


def preset_config(name: str, *, refine: bool = False, **overrides) -> FinetuneConfig:
    """The preset ``name`` with any non-None ``overrides`` (e.g. steps=50) applied; ``refine`` shortens it to
    :data:`~ContrastiveSegLib.options.REFINE_FRACTION` of its steps (an explicit ``steps`` wins)."""
    values = {**PRESETS[options.check_preset(name)].__dict__}
    if refine:
        values["steps"] = max(1, round(values["steps"] * options.REFINE_FRACTION))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return FinetuneConfig(**values)
    except ValueError as error:
        raise InputError(str(error)) from None
