"""The options a user picks, stated once and checked once: devices, presets, consistency modes, axis letters,
default steps and batch sizes, progress displays. The API, the CLI, the demo, the Slicer runs and the Slicer
module's panel all read them from here, so that a name or a number has one home.

This module imports neither torch nor MONAI: the Slicer GUI process fills its combo boxes from it and must not load
torch, and the CLI checks its arguments before torch loads. The "did you mean" is therefore :mod:`difflib`, not
``monai.utils.look_up_option``: importing ``monai.utils`` imports torch (6 s on a busy 2-core machine), its
message spans three lines where ours are one (the error contract of :mod:`ContrastiveSegLib.errors`), and it
suggests 'cpu' for 'gpu'.

Also gathered here, without moving them: the thread rule (:mod:`ContrastiveSegLib.threads`, re-exported below) and
the packages the Slicer module needs (:mod:`ContrastiveSegLib.slicer.requirements`, re-exported as
:data:`requirements`); both are torch-free homes of their own facts already.
"""
from __future__ import annotations

import difflib
import glob
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.slicer import requirements  # noqa: F401  (re-exported; that module imports nothing)
from ContrastiveSegLib.threads import MAX_THREADS, choose_threads, default_threads  # noqa: F401  (re-exported)

__all__ = [
    "ADAPT_STEPS", "AXIS_LETTERS", "CONSISTENCY_DECODERS", "CONSISTENCY_MODES", "DEFAULT_CONSISTENCY",
    "DEFAULT_DEVICE", "DEFAULT_PRESET", "DEVICE_FORMS", "DEVICE_KINDS", "METHOD_NAMES", "PRESETS", "PRESET_NAMES",
    "PRETRAIN_BATCH_SIZE", "PRETRAIN_LEARNING_RATE", "RANDOM_INIT", "RANDOM_INIT_ALIASES", "PRETRAIN_PATCH", "PRETRAIN_STEPS", "PROGRESS_MODES",
    "LOW_MEMORY_PRESET", "PREDICT_BATCH_SIZE", "REFINE_FRACTION", "SELF_TRAIN_STEPS", "Preset", "axis_index",
    "check_consistency", "check_count", "check_device", "check_preset", "check_training_options",
    "choose_threads", "default_threads", "device_help", "look_up", "preset_help", "requirements",
    "unknown_message", "MAX_STEPS", "MAX_BATCH_SIZE", "MAX_PATCH", "MAX_POOL_SIZE", "MAX_SEED", "MAX_MINUTES",
    "MAX_LEARNING_RATE", "MAX_THREADS", "COUNT_BOUNDS", "NUMBER_BOUNDS", "check_bounds",
]


# --------------------------------------------------------------------------------------------- checking
def unknown_message(kind: str, value: object, known: Iterable[str], *, aliases: Mapping[str, str] | None = None,
                    cutoff: float = 0.5) -> str:
    """``unknown KIND 'VALUE' (known: a, b, c); did you mean 'b'?``: one line, the hint only when a known value
    (or an ``aliases`` entry: a common word for a known value, e.g. 'gpu' for 'cuda') is close enough.

    Also used by the registries whose names are not options (pretraining methods, shipped encoders), so that every
    "unknown ..." message reads the same way."""
    known = list(known)
    text = str(value)
    guess = (aliases or {}).get(text.strip().lower())
    if guess is None:
        close = difflib.get_close_matches(text, known, n=1, cutoff=cutoff)
        guess = close[0] if close else None
    hint = f"; did you mean '{guess}'?" if guess is not None else ""
    return f"unknown {kind} '{text}' (known: {', '.join(known)}){hint}"


def look_up(kind: str, value: object, known: Iterable[str], **hints) -> str:
    """``value`` when it is one of ``known``; else InputError with :func:`unknown_message` (exit code 2)."""
    known = tuple(known)
    if isinstance(value, str) and value in known:
        return value
    raise InputError(unknown_message(kind, value, known, **hints))


# --------------------------------------------------------------------------------------------- devices
DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")
"""What the Slicer panel's device box offers (a GPU index beside it makes "cuda" into "cuda:N")."""
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N", "mps")
"""What ``--device`` accepts, as the user reads it: auto takes the first CUDA GPU if there is one, else the CPU
(MPS only when asked for: some operators still fall back to the CPU there); N is a CUDA GPU's index."""
DEFAULT_DEVICE = "auto"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_DEVICE_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "metal": "mps"}  # what people type for a device we name


def check_device(name: str | None) -> str:
    """The device string in the form the CLI and torch take (stripped, lower case; None or "" -> "auto").

    Raises InputError naming the known forms and the nearest one. Whether that device is present is checked
    later, where torch is loaded (:func:`ContrastiveSegLib.device.resolve_device`)."""
    text = DEFAULT_DEVICE if name is None else str(name).strip().lower() or DEFAULT_DEVICE
    if not _DEVICE.match(text):
        raise InputError(unknown_message("device", name, DEVICE_FORMS, aliases=_DEVICE_ALIASES))
    return text


def no_cuda_message(name: str) -> str:
    """The refusal of a CUDA device on a machine without one (here and in
    :func:`ContrastiveSegLib.device.resolve_device`, in the same words)."""
    return f"device '{name}' asked for, but no CUDA GPU is available (use --device cpu)"


def _no_gpu_driver() -> bool:
    """True only where no GPU that torch calls "cuda" can be present: macOS, or Linux without an NVIDIA driver
    (/proc/driver/nvidia, /dev/nvidia*), a WSL GPU (/dev/dxg) or ROCm (/dev/kfd). Unknown (Windows): False."""
    if sys.platform == "darwin":
        return True
    if sys.platform.startswith("linux"):
        return not (os.path.exists("/proc/driver/nvidia/version") or glob.glob("/dev/nvidia[0-9]*")
                    or os.path.exists("/dev/dxg") or os.path.exists("/dev/kfd"))
    return False


def check_device_present(name: str) -> str:
    """:func:`check_device`, and InputError for a CUDA device on a machine that surely has no GPU driver, without
    importing torch (the CLI asks before torch loads; torch's own answer comes later, in
    :func:`ContrastiveSegLib.device.resolve_device`, where the driver is there but torch cannot use it)."""
    name = check_device(name)
    if name.startswith("cuda") and _no_gpu_driver():
        raise InputError(no_cuda_message(name))
    return name


def device_help() -> str:
    """``auto | cpu | cuda | cuda:N | mps (default auto)``: the ``--device`` help."""
    return f"{' | '.join(DEVICE_FORMS)} (default {DEFAULT_DEVICE})"


# --------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """The numbers of a ``--preset`` (:class:`ContrastiveSegLib.training.finetune.FinetuneConfig` is built from
    them, by :func:`ContrastiveSegLib.presets.preset_config`)."""

    steps: int
    batch_size: int
    patch: int  # square crop side in pixels


# Numbers from measured runs (docs/finetuning.md, benchmarks/results/), not from guesses: 300 steps at learning
# rate 1e-2 beat 150 steps by 0.02 Dice on the MNI task, and 500 steps did not beat 300; "fast" halves the steps
# and shrinks the crops for a first look. The order is the one users see (the Slicer panel, messages, help).
PRESETS: Mapping[str, Preset] = {
    "default": Preset(steps=300, batch_size=8, patch=128),
    "fast": Preset(steps=150, batch_size=8, patch=96),
}
PRESET_NAMES = tuple(PRESETS)
DEFAULT_PRESET = "default"
LOW_MEMORY_PRESET = "fast"
"""The preset whose smaller crops need the least GPU memory per fine-tuning step: what an out-of-memory message
suggests to a command that takes ``--preset``."""

REFINE_FRACTION = 1 / 3
"""A refinement (``--init-model``: the previous model plus one corrected slice) starts from weights that already
fit all but that slice, so it runs this fraction of the preset's steps unless ``--steps`` says otherwise."""


def check_preset(name: str) -> str:
    """``name`` when it is a preset; else InputError naming the presets and the nearest one."""
    return look_up("preset", name, PRESET_NAMES)


def preset_help() -> str:
    """``default (300 steps, batch 8, 128 px crops) | fast (...); default: default``: the ``--preset`` help."""
    listed = " | ".join(f"{name} ({p.steps} steps, batch {p.batch_size}, {p.patch} px crops)"
                        for name, p in PRESETS.items())
    return f"{listed}; default: {DEFAULT_PRESET}"


# --------------------------------------------------------------------------------------------- consistency
CONSISTENCY_DECODERS: Mapping[str, int] = {"off": 1, "bidirectional": 2}
"""Consistency mode -> decoders trained. "off": one decoder, trained on the painted slices only.
"bidirectional": two decoders that label the unannotated slices for each other (IDEAL's fine-tuning stage)."""
CONSISTENCY_MODES = tuple(CONSISTENCY_DECODERS)
DEFAULT_CONSISTENCY = "off"


def check_consistency(mode: str) -> str:
    """``mode`` when it is a consistency mode; else InputError naming the modes and the nearest one."""
    return look_up("consistency", mode, CONSISTENCY_MODES)


def check_count(name: str, value: object, *, label: str | None = None) -> None:
    """InputError ``LABEL must be >= LOW, got VALUE`` (or ``<= HIGH``, or ``a whole number``) unless ``value`` is
    None or a whole number within :data:`COUNT_BOUNDS` ``[name]`` (``name`` as the API spells it, ``steps`` or
    ``batch size``; at least 1 when it has no entry). ``label`` is what the message calls it (the CLI's ``--steps``),
    ``name`` by default: the API and the CLI apply one rule and differ only in the name they give."""
    if value is None:
        return
    label = label or name
    low, high = COUNT_BOUNDS.get(name.replace(" ", "_"), (1, None))
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{label} must be a whole number, got {value!r}")
    if value < low:
        raise InputError(f"{label} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise InputError(f"{label} must be <= {high}, got {value}")


def check_training_options(*, steps: int | None = None, batch_size: int | None = None, adapt: str | None = None,
                           adapt_steps: int | None = None, consistency: str = DEFAULT_CONSISTENCY,
                           refine: bool = False) -> None:
    """The one check of the fine-tuning options, torch-free: the API (:func:`ContrastiveSegLib.api.finetune`,
    ``segment``), the CLI (before torch loads) and the Slicer job all call it, so a combination is refused in the
    same words everywhere, before any work.

    ``steps`` / ``batch_size`` None mean the preset's, ``adapt_steps`` None :data:`ADAPT_STEPS`; ``refine`` is a refinement (an initial model given), which
    continues that model: adaptation and a second decoder apply to new models only, and are refused, never dropped.
    """
    check_consistency(consistency)
    check_count("steps", steps)
    check_count("batch size", batch_size)
    check_count("adapt steps", adapt_steps)
    if adapt:
        look_up("method", adapt, METHOD_NAMES)
    if refine and (adapt or CONSISTENCY_DECODERS[consistency] > 1):
        raise InputError("adapt and bidirectional consistency apply to a new model, not to a refinement of a "
                         "saved one (--adapt / --consistency with --init-model)")


# --------------------------------------------------------------------------------------------- axes
AXIS_LETTERS = ("k", "j", "i")
"""Array axis -> the letter the user names it by (``--axis``, the Slicer panel, the run summary). Arrays are
(z, y, x) = (k, j, i): the letters are ITK's / Slicer's voxel index axes, k being the slices of the third index
(axial for most scans)."""


def axis_index(letter: str) -> int:
    """The array axis of an axis letter (k -> 0, j -> 1, i -> 2); InputError for anything else."""
    return AXIS_LETTERS.index(look_up("axis", letter, AXIS_LETTERS))


# --------------------------------------------------------------------------------------------- methods
RANDOM_INIT = "random"
"""No pretraining: the network starts from seeded random weights. The one name for it, as an encoder
(``--encoder random``, the default while no shipped encoder is marked default) and as a pretraining method
(``pretrain --method random`` writes the untrained encoder, the ablation's reference)."""
RANDOM_INIT_ALIASES = ("none",)
"""Earlier spelling of :data:`RANDOM_INIT` for ``--encoder``, still accepted (models and scripts that say it)."""

METHOD_NAMES = (RANDOM_INIT, "simclr", "selfpaced", "ideal", "lrc", "mixcl")
"""The pretraining methods by name, in the order users see them: the keys of
:data:`ContrastiveSegLib.methods.METHODS`, which is built from this tuple. Here so
that the Slicer panel can list them without importing torch."""

# --------------------------------------------------------------------------------------------- budgets
ADAPT_STEPS = 100
"""Default steps of ``--adapt`` (pretraining the encoder on the scan at hand before fine-tuning)."""
ADAPT_BATCH_SIZE = 8
"""Crops per step of ``--adapt`` (one scan: fewer than pretraining's :data:`PRETRAIN_BATCH_SIZE`)."""
PREDICT_BATCH_SIZE = 16
"""Whole slices per forward pass of prediction (halved on running out of GPU memory)."""
SELF_TRAIN_STEPS = 100
"""Steps of the (experimental) self-training round the benchmark measures (ContrastiveSegLib.experimental)."""
PRETRAIN_STEPS = 2000
"""Default budget of ``pretrain`` when neither steps nor minutes are given."""
PRETRAIN_BATCH_SIZE = 16
"""Default crops per pretraining step and per process (each gives two views)."""
PRETRAIN_PATCH = 128
"""Default pretraining crop side in pixels (a multiple of 16)."""
PRETRAIN_LEARNING_RATE = 1e-3
"""Default peak AdamW learning rate of pretraining (docs/methods.md, "Pretraining loop")."""

# --------------------------------------------------------------------------------------------- bounds
MAX_STEPS = 1_000_000
"""The most steps any run may be given (fine-tuning, --adapt, pretraining, a checkpoint interval): a million
pretraining steps are days on a GPU; beyond, a number is a typing slip whose ETA would read in years."""
MAX_BATCH_SIZE = 1024
MAX_PATCH = 1024
"""Crop side in pixels (pretraining ``--patch``)."""
MAX_POOL_SIZE = 1024
MAX_SEED = 2**32 - 1
"""Seeds are 32-bit: numpy's legacy seeding and torch's CUDA generators take no more."""
MAX_MINUTES = 366 * 24 * 60.0
MAX_LEARNING_RATE = 10.0

COUNT_BOUNDS: Mapping[str, tuple[int, int]] = {
    "steps": (1, MAX_STEPS), "adapt_steps": (1, MAX_STEPS), "checkpoint_every": (0, MAX_STEPS),
    "batch_size": (1, MAX_BATCH_SIZE), "patch": (16, MAX_PATCH), "pool_size": (1, MAX_POOL_SIZE),
    "seed": (0, MAX_SEED)}
"""argparse destination -> (lowest, highest) whole number accepted, for every count option of every command."""
NUMBER_BOUNDS: Mapping[str, tuple[float, float]] = {"lr": (0.0, MAX_LEARNING_RATE), "minutes": (0.0, MAX_MINUTES)}
"""argparse destination -> (exclusive lower, inclusive upper) bound of the real-valued options; NaN and inf fail."""


def check_bounds(values: Mapping[str, object]) -> None:
    """InputError (one line naming the option) for the first value of ``values`` (argparse destination -> value;
    None = not given) outside :data:`COUNT_BOUNDS` / :data:`NUMBER_BOUNDS`. Checked before any work, so that
    ``--steps 10**30`` or ``--lr nan`` never reach a training loop."""
    for name in COUNT_BOUNDS:
        check_count(name, values.get(name), label="--" + name.replace("_", "-"))
    for name, (low, high) in NUMBER_BOUNDS.items():
        value = values.get(name)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or \
                not low < value <= high:
            raise InputError(f"{flag} must be a finite number > {low:g} and <= {high:g}, got {value}")


def check_command_options(command: str, values: Mapping[str, object]) -> dict[str, object]:
    """Check the options of a CLI ``command`` (argparse destination -> value) that need no file and no torch, in
    this order: bounds (:func:`check_bounds`), the free-text choices (``device``, ``preset``: the known values and
    the nearest one), a CUDA device on a machine without a GPU driver, and for the training commands the
    training options (:func:`check_training_options`, the API's own check). InputError (one line) for the first
    that fails; returns the normalised values (``device``)."""
    check_bounds(values)
    normalised: dict[str, object] = {}
    if values.get("device") is not None:
        normalised["device"] = check_device(values["device"])
    if values.get("preset") is not None:
        check_preset(values["preset"])
    if "device" in normalised:
        check_device_present(normalised["device"])
    if command in ("segment", "finetune"):
        check_training_options(steps=values["steps"], batch_size=values["batch_size"], adapt=values["adapt"],
                               adapt_steps=values["adapt_steps"], consistency=values["consistency"],
                               refine=values["init_model"] is not None)
    elif command == "demo":
        check_training_options(steps=values["steps"])
    return normalised


# --------------------------------------------------------------------------------------------- display
PROGRESS_MODES = ("json", "bar", "none")
"""``--progress``: JSON lines on stdout (for front ends such as the Slicer module), a bar on stderr, or nothing."""
