"""Weights files: safetensors tensors plus one JSON header, never pickle.

The header (safetensors metadata key ``contrastiveseg``) says what the file is (``kind``: ``model`` for a
fine-tuned segmentation network, ``encoder`` for a pretrained encoder), how to rebuild the network, what input it
expects and, for models, the label values its classes stand for.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.volume import IncompleteWriteError, atomic_write

HEADER_KEY = "contrastiveseg"
FORMAT_VERSION = 1


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], header: dict) -> None:
    """Write ``state_dict`` and ``header`` (JSON-serialisable) atomically to a .safetensors file, read back and
    compared before it replaces anything; OutputError (one line) when it cannot be written completely."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    metadata = {HEADER_KEY: json.dumps({**header, "format_version": FORMAT_VERSION})}

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as error:  # "Error while serializing: I/O error: No space left on device (os error 28)"
            raise IncompleteWriteError(str(error).splitlines()[0][:200]) from None

    atomic_write(path, write, verify=lambda tmp: _verify_weights(tmp, tensors, metadata))


def _verify_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Read the file just written back and compare it with what was meant to be written: a short write (full disk,
    network share) must not be renamed into place as a model."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            same = (handle.metadata() == metadata and set(handle.keys()) == set(tensors)
                    and all(_same(handle.get_tensor(name), tensor) for name, tensor in tensors.items()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise IncompleteWriteError(f"the file written does not read back ({str(error).splitlines()[0][:120]})") \
            from None
    if not same:
        raise IncompleteWriteError("the file written does not read back as what was written")


def _same(read: torch.Tensor, written: torch.Tensor) -> bool:
    """Equal values, NaN where NaN was written (a diverged run's weights are still saved as they are)."""
    if read.dtype != written.dtype or read.shape != written.shape:
        return False
    if torch.equal(read, written):
        return True
    return read.is_floating_point() and torch.equal(read.isnan(), written.isnan()) and \
        torch.equal(read.nan_to_num(0.0), written.nan_to_num(0.0))


def load_weights(path: str | os.PathLike, *, kind: str | None = None,
                 what: str = "weights file") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a weights file written by :func:`save_weights`; InputError (one line) if it is missing, corrupt,
    truncated, not ours, or of another ``kind``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():  # a FIFO would block open() forever; a folder or device is no weights file either
        raise InputError(f"{what} {path} is not a regular file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"{what} {path} is not a readable safetensors file ({str(error).splitlines()[0][:120]})") \
            from None
    if HEADER_KEY not in metadata:
        raise InputError(f"{what} {path} was not written by ContrastiveSeg (no '{HEADER_KEY}' header)")
    try:
        header = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError:
        raise InputError(f"{what} {path} has a corrupt header") from None
    if kind is not None and header.get("kind") != kind:
        raise InputError(f"{what} {path} holds a {header.get('kind', 'unknown')}, not a {kind}")
    return tensors, header


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
