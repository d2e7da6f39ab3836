"""Pretraining checkpoints and encoder files: safetensors tensors plus a JSON header, never pickle.

A checkpoint holds the whole method (encoder and heads) under ``model/``, the optimizer's per-parameter tensors
under ``optim/<index>/<name>``, and in the header everything else: the method's name and hyper-parameters, encoder
widths, input spec, optimizer param groups, the step count and elapsed seconds. Files are written atomically
(:func:`ContrastiveSegLib.zoo.weights.save_weights`), so a crash mid-write leaves the previous checkpoint intact.

An encoder file is exactly what :func:`ContrastiveSegLib.model.load_encoder_into` reads: ``encoder.state_dict()``
with the header ``{"kind": "encoder", "input_channels", "features", "input", "method", ...}``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.methods.base import PretrainMethod
from ContrastiveSegLib.zoo.weights import load_weights, save_weights

CHECKPOINT_KIND = "pretrain-checkpoint"


def save_checkpoint(path: str | os.PathLike, method: PretrainMethod, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any]) -> None:
    """Write the method, optimizer and loop ``state`` (JSON-serialisable: step, seconds, ...) to ``path``."""
    tensors = {f"model/{k}": v for k, v in method.state_dict().items()}
    header: dict[str, Any] = {"kind": CHECKPOINT_KIND, "method": method.name, "params": method.params,
                              "features": list(method.features), "norm": method.norm,
                              "input": method.spec.to_dict(), **state}
    if optimizer is not None:
        saved = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in saved["state"].items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{index}/{name}"] = value
                else:
                    scalars.setdefault(str(index), {})[name] = value
        header["optimizer"] = {"param_groups": saved["param_groups"], "scalars": scalars}
    save_weights(path, tensors, header)


def read_checkpoint_header(path: str | os.PathLike, method_name: str | None = None) -> dict[str, Any]:
    """The header of checkpoint ``path``; InputError (one line) when it is not a pretraining checkpoint or was
    written by another method than ``method_name``."""
    _, header = load_weights(path, kind=CHECKPOINT_KIND, what="checkpoint")
    if method_name is not None:
        _check_method(path, header, method_name)
    return header


def _check_method(path: str | os.PathLike, header: dict[str, Any], method_name: str) -> None:
    if header.get("method") != method_name:
        raise InputError(f"checkpoint {path} was written by method '{header.get('method')}', not '{method_name}': "
                         f"resume with --method {header.get('method')} or start without --resume")


def load_checkpoint(path: str | os.PathLike, method: PretrainMethod,
                    optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore ``method`` (and ``optimizer``) from ``path``; returns the header (with "step" and "seconds").

    InputError (one line) when the checkpoint is of another method, other encoder widths, input spec or
    hyper-parameters, or does not fit the method's modules.
    """
    tensors, header = load_weights(path, kind=CHECKPOINT_KIND, what="checkpoint")
    _check_method(path, header, method.name)
    theirs = (list(header.get("features", [])), header.get("norm"), header.get("input"))
    ours = (list(method.features), method.norm, method.spec.to_dict())
    if theirs != ours:
        raise InputError(f"checkpoint {path} is for encoder widths, norm and input {theirs}, this run uses {ours}")
    different = sorted(k for k in set(header.get("params", {})) | set(method.params)
                       if header.get("params", {}).get(k) != method.params.get(k))
    if different:
        key = different[0]
        raise InputError(f"checkpoint {path} used {key}={header.get('params', {}).get(key)!r}, this run "
                         f"{key}={method.params.get(key)!r}: resume with the same method parameters")
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        method.load_state_dict(model, strict=True)
    except RuntimeError as error:
        raise InputError(f"checkpoint {path} does not fit method '{method.name}' "
                         f"({str(error).splitlines()[0][:120]})") from None
    if optimizer is not None and "optimizer" in header:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in header["optimizer"].get("scalars", {}).items():
            state.setdefault(int(index), {}).update(values)
        try:
            optimizer.load_state_dict({"state": state, "param_groups": header["optimizer"]["param_groups"]})
        except (ValueError, KeyError) as error:
            raise InputError(f"checkpoint {path}: optimizer state does not fit ({error})") from None
    return header


def default_checkpoint_path(output: str | os.PathLike) -> Path:
    """``enc.safetensors`` -> ``enc.checkpoint.safetensors`` beside it."""
    output = Path(output)
    stem = output.name[: -len(".safetensors")] if output.name.endswith(".safetensors") else output.name
    return output.with_name(f"{stem}.checkpoint.safetensors")


def save_encoder(path: str | os.PathLike, method: PretrainMethod, extra: dict[str, Any] | None = None) -> None:
    """Write ``method``'s encoder as an encoder file (atomic) that ``model.load_encoder_into`` accepts."""
    header = {"kind": "encoder", "input_channels": method.spec.in_channels, "features": list(method.features),
              "norm": method.norm, "input": method.spec.to_dict(), "method": method.name,
              "method_params": method.params, **(extra or {})}
    save_weights(path, method.encoder_state_dict(), header)
