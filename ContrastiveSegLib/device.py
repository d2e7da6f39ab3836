"""Pick the torch device from a user string (auto | cpu | cuda | cuda:N | mps), the mixed precision that goes
with it, and what to do when the device runs out of memory. The device forms and their check live in
:mod:`ContrastiveSegLib.options`, which the Slicer GUI uses without torch; here is only what needs torch."""
from __future__ import annotations

import torch

from ContrastiveSegLib.errors import InputError, OutOfMemory  # noqa: F401  (OutOfMemory re-exported)
from ContrastiveSegLib.options import DEFAULT_DEVICE, check_device
from ContrastiveSegLib.progress import ProgressCallback, emit


def resolve_device(name: str = DEFAULT_DEVICE) -> torch.device:
    """``auto`` takes the first CUDA GPU if there is one, else the CPU (MPS only when asked for: some operators
    still fall back to the CPU there). An unknown or unavailable device is an InputError, never a silent
    fallback."""
    name = check_device(name)
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):  # check_device let through only "cuda" and "cuda:N"
        if not torch.cuda.is_available():
            raise InputError(f"device '{name}' asked for, but no CUDA GPU is available (use --device cpu)")
        device = torch.device(name if ":" in name else "cuda:0")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device '{name}' asked for, but only {torch.cuda.device_count()} GPU(s) are present")
        return device
    if name == "mps":  # the only form left
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError("device 'mps' asked for, but Apple's MPS backend is not available")
        return torch.device("mps")
    raise AssertionError(f"check_device let through {name!r}")  # pragma: no cover


def autocast_context(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); a no-op elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)



def halve_batch(batch_size: int, what: str, progress: ProgressCallback = None, stage: str | None = None) -> int:
    """The batch size to retry a step with after it raised ``torch.OutOfMemoryError`` at ``batch_size``.

    This is the one place that handles running out of GPU memory: fine-tuning
    (:func:`~ContrastiveSegLib.training.finetune.train_segmentation`) and prediction
    (:func:`~ContrastiveSegLib.inference.predict.predict_volume`) call it from their ``except
    torch.OutOfMemoryError`` and retry the step with the size it returns; front ends (the CLI, the Slicer module)
    only report. Call it inside the ``except`` after dropping the step's own tensors: it empties the CUDA cache
    so that the retry starts from free memory, and says so through ``progress`` (as ``stage``): "out of GPU
    memory: retrying with batch size N".

    Args:
        batch_size: the batch size that did not fit.
        what: the work, for the final message ("fine-tuning", "prediction").
    Returns:
        ``batch_size // 2`` (at least 1).
    Raises:
        OutOfMemory: ``batch_size`` was already 1 (one line: nothing smaller to try; use the CPU or the 'fast'
            preset).
    """
    if batch_size <= 1:
        raise OutOfMemory(f"out of memory while {what} even at batch size 1: use the CPU (--device cpu) or the "
                          "'fast' preset")
    torch.cuda.empty_cache()  # a no-op unless CUDA was used
    smaller = max(1, batch_size // 2)
    emit(progress, stage or what, f"out of GPU memory: retrying with batch size {smaller}")
    return smaller
