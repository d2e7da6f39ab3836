"""Pick the torch device from a user string (auto | cpu | cuda | cuda:N | mps), the mixed precision that goes
with it, and what to do when the device runs out of memory. The device forms and their check live in
:mod:`ContrastiveSegLib.options`, which the Slicer GUI uses without torch; here is only what needs torch."""
from __future__ import annotations

import functools
import os

import torch

from ContrastiveSegLib.errors import InputError, OutOfMemory  # noqa: F401  (OutOfMemory re-exported)
from ContrastiveSegLib.options import DEFAULT_DEVICE, LOW_MEMORY_PRESET, PRESETS, check_device, no_cuda_message
from ContrastiveSegLib.progress import ProgressCallback, emit


def resolve_device(name: str | torch.device = DEFAULT_DEVICE) -> torch.device:
    """``auto`` takes the first CUDA GPU if there is one, else the CPU (MPS only when asked for: some operators
    still fall back to the CPU there). An unknown or unavailable device is an InputError, never a silent
    fallback. A ``torch.device`` (already resolved, e.g. by a run's plan) comes back as it is."""
    if isinstance(name, torch.device):
        return name
    name = check_device(name)
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):  # check_device let through only "cuda" and "cuda:N"
        if not torch.cuda.is_available():
            raise InputError(no_cuda_message(name))
        device = torch.device(name if ":" in name else "cuda:0")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device '{name}' asked for, but only {torch.cuda.device_count()} GPU(s) are present")
        return device
    if name == "mps":  # the only form left
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError("device 'mps' asked for, but Apple's MPS backend is not available")
        return torch.device("mps")
    raise AssertionError(f"check_device let through {name!r}")  # pragma: no cover


CPU_BF16_VARIABLE = "CONTRASTIVESEG_CPU_BF16"
"""Environment variable: ``0`` keeps the CPU in float32, ``1`` asks for bf16 on any CPU; unset or anything else:
bf16 where the CPU computes it natively (:func:`cpu_has_native_bf16`)."""

# CPU instruction sets (Linux /proc/cpuinfo flag names) that compute bf16 products in hardware; without them
# oneDNN emulates bf16 and a step is no faster, or slower, than float32.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU lists one of :data:`NATIVE_BF16_FLAGS` (read once; False where there is no such file,
    e.g. on macOS or Windows, which keeps those machines in float32)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as stream:
            for line in stream:
                if line.startswith("flags"):
                    return not NATIVE_BF16_FLAGS.isdisjoint(line.split(":", 1)[-1].split())
    except OSError:
        pass
    return False


def cpu_bf16_enabled() -> bool:
    """Whether CPU forward passes run under bf16 autocast: :data:`CPU_BF16_VARIABLE` decides when set to 0 or 1,
    else the CPU's own support. Measured on a 2-core AVX512-BF16 machine (benchmarks/results/precision.md): a
    fine-tuning step 1.45x and a prediction pass 1.5x faster."""
    choice = os.environ.get(CPU_BF16_VARIABLE, "").strip()
    if choice in ("0", "1"):
        return choice == "1"
    return cpu_has_native_bf16()


def autocast_context(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16) and on a CPU that computes bf16 natively
    (:func:`cpu_bf16_enabled`); a no-op elsewhere. Callers take the logits back to float32 before any softmax or
    loss."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu_bf16_enabled():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def fine_tuning_advice(patch: int) -> str:
    """What a fine-tuning command can do when even one crop of ``patch`` px does not fit: the CPU, or the preset
    with smaller crops when this run's are larger."""
    smaller = PRESETS[LOW_MEMORY_PRESET].patch
    crops = f" or smaller crops (--preset {LOW_MEMORY_PRESET}: {smaller} px)" if patch > smaller else ""
    return f"use the CPU (--device cpu){crops}"


PREDICTION_ADVICE = "use the CPU (--device cpu)"
"""Prediction has no option that lowers its memory below one slice per pass: the CPU is the way out."""


class BatchLimits:
    """The batch size that fitted after running out of memory, per kind of work ("finetune": crops, "predict":
    whole slices), kept for the later stages of the same run: a self-training round and the final prediction of
    a ``segment`` start from the size that fitted instead of running out again (as MONAI's adaptive sliding-window
    inferer keeps the threshold it found)."""

    def __init__(self) -> None:
        self.fitted: dict[str, int] = {}

    def start(self, kind: str, requested: int) -> int:
        """The batch size to begin ``kind`` with: ``requested``, or less when a smaller one was needed before."""
        return min(requested, self.fitted.get(kind, requested))

    def record(self, kind: str, size: int, requested: int) -> None:
        """A step of ``kind`` ran at ``size``: remembered when it is below what was asked for."""
        if size < requested:
            self.fitted[kind] = min(size, self.fitted.get(kind, size))


def halve_batch(batch_size: int, what: str, progress: ProgressCallback = None, stage: str | None = None,
                advice: str = PREDICTION_ADVICE, cause: BaseException | None = None) -> int:
    """The batch size to retry a step with after it raised ``torch.OutOfMemoryError`` at ``batch_size``.

    This is the one place that handles running out of GPU memory: fine-tuning
    (:func:`~ContrastiveSegLib.training.finetune.train_segmentation`) and prediction
    (:func:`~ContrastiveSegLib.inference.predict.predict_volume`) call it and retry the step with the size it
    returns; front ends (the CLI, the Slicer module) only report. Memory is released as nnU-Net's predictor does
    it: the caller leaves the ``except`` block first (its traceback holds the failed step's frames and their
    tensors), drops every large local of its own, and only then calls this, which empties the CUDA cache so that
    the retry starts from free memory, and says so through ``progress`` (as ``stage``): "out of GPU memory:
    retrying with batch size N".

    Args:
        batch_size: the batch size that did not fit.
        what: the work, for the final message ("fine-tuning", "predicting").
        advice: what the command at hand can do when even batch size 1 does not fit (:func:`fine_tuning_advice`,
            :data:`PREDICTION_ADVICE`).
        cause: the ``torch.OutOfMemoryError`` (its traceback cleared), kept as the final error's cause so that
            CUDA's own message stays in the chain.
    Returns:
        ``batch_size // 2`` (at least 1).
    Raises:
        OutOfMemory: ``batch_size`` was already 1 (one line: nothing smaller to try, and ``advice``).
    """
    torch.cuda.empty_cache()  # a no-op unless CUDA was used
    if batch_size <= 1:
        raise OutOfMemory(f"out of memory while {what} even at batch size 1: {advice}") from cause
    smaller = max(1, batch_size // 2)
    emit(progress, stage or what, f"out of GPU memory: retrying with batch size {smaller}")
    return smaller
