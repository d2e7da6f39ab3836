"""Pick the torch device from a user string (auto | cpu | cuda | cuda:N | mps), and the mixed precision that goes
with it. The device forms and their check live in :mod:`ContrastiveSegLib.options`, which the Slicer GUI uses
without torch; here is only what needs torch."""
from __future__ import annotations

import torch

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.options import DEFAULT_DEVICE, check_device


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
