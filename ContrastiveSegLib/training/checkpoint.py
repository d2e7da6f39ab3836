"""Pretraining checkpoints and encoder files: safetensors tensors plus a JSON header, never pickle.

A checkpoint holds the whole method (encoder and heads) under ``model/``, the optimizer's per-parameter tensors
under ``optim/<index>/<name>``, and in the header everything else: the method's name and hyper-parameters, encoder
widths, input spec, optimizer param groups, the step count and elapsed seconds. Files are written atomically
(:func:`ContrastiveSegLib.zoo.weights.save_weights`), so a crash mid-write leaves the previous checkpoint intact.

An encoder file is exactly what :func:`ContrastiveSegLib.model.load_encoder_into` reads: ``encoder.state_dict()``
with the header ``{"kind": "encoder", "input_channels", "features", "input", "method", ...}``; the volumes it was
pretrained on are recorded by file name only (:func:`file_name`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.methods.base import PretrainMethod
from ContrastiveSegLib.zoo.weights import (FLOAT_DTYPES, TensorInfo, check_tensors, printable, read_tensors,
                                          read_weights_header, save_weights)

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
    header, _ = read_weights_header(path, kind=CHECKPOINT_KIND, what="checkpoint")  # no tensor data read
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
    header, found = read_weights_header(path, kind=CHECKPOINT_KIND, what="checkpoint")
    _check_method(path, header, method.name)
    theirs = (list(header["features"]), header["norm"], header["input"])
    ours = (list(method.features), method.norm, method.spec.to_dict())
    if theirs != ours:
        raise InputError(f"checkpoint {path} is for encoder widths, norm and input {theirs}, this run uses {ours}")
    params = header.get("params", {})
    different = sorted(k for k in set(params) | set(method.params) if params.get(k) != method.params.get(k))
    if different:
        key = different[0]
        raise InputError(f"checkpoint {path} used {printable(key)}={printable(repr(params.get(key)))}, this run "
                         f"{printable(key)}={method.params.get(key)!r}: resume with the same method parameters")
    unknown = sorted(name for name in found if not name.startswith(("model/", "optim/")))
    if unknown:
        raise InputError(f"checkpoint {path} holds an unexpected tensor '{printable(unknown[0])}'")
    check_tensors(f"checkpoint {path}", found, method.state_dict(), "model/", against=f"method '{method.name}'")
    if optimizer is not None and "optimizer" in header:
        _check_optimizer(path, header["optimizer"], found, optimizer)
    tensors = read_tensors(path, what="checkpoint")
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


def _check_optimizer(path: str | os.PathLike, saved: dict[str, Any], found: dict[str, TensorInfo],
                     optimizer: torch.optim.Optimizer) -> None:
    """Refuse (one line) optimizer state that ``optimizer.load_state_dict`` would take and the first step would
    trip over: a group hyper-parameter of another type ("lr": "fast"), a state tensor of another shape or dtype
    or for a parameter that does not exist. The header's structure was checked by ``read_weights_header``."""
    where = f"checkpoint {path}"
    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise InputError(f"{where}: header field 'optimizer.param_groups' has {len(groups)} groups, this run's "
                         f"optimizer {len(optimizer.param_groups)}")
    for index, (group, ours) in enumerate(zip(groups, optimizer.param_groups)):
        for key, value in group.items():
            if key == "params" or key not in ours:
                continue
            if not _same_kind(value, ours[key]):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise InputError(f"{where}: header field 'optimizer.param_groups[{index}].{key}' is {shown}, "
                                 f"not a value like {ours[key]!r}")
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for name, info in found.items():
        if not name.startswith("optim/"):
            continue
        parts = name.split("/", 2)
        if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()) or int(parts[1]) >= len(parameters):
            raise InputError(f"{where}: tensor '{printable(name)}' names no parameter of this run's optimizer")
        shape = tuple(parameters[int(parts[1])].shape)
        if info.dtype not in FLOAT_DTYPES or info.shape not in ((), shape):
            raise InputError(f"{where}: tensor '{printable(name)}' is {info.dtype} of shape {list(info.shape)}; the "
                             f"optimizer needs floating-point values of shape {list(shape)}")
    for index in saved.get("scalars", {}):
        if int(index) >= len(parameters):
            raise InputError(f"{where}: header field 'optimizer.scalars.{index}' names no parameter of this run's "
                             "optimizer")


def _same_kind(value: Any, ours: Any) -> bool:
    """Whether a saved hyper-parameter can stand where this run's is: the same JSON type (numbers finite), a list
    or tuple of as many such values."""
    if isinstance(ours, (list, tuple)):
        return isinstance(value, list) and len(value) == len(ours) and all(map(_same_kind, value, ours))
    if isinstance(ours, bool) or ours is None:  # switches such as foreach/fused: None means "torch decides"
        return value is None or isinstance(value, bool)
    if isinstance(ours, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, type(ours))


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
    data = header.get("data")
    if isinstance(data, dict) and isinstance(data.get("names"), list):
        header["data"] = {**data, "names": [file_name(name) for name in data["names"]]}
    save_weights(path, method.encoder_state_dict(), header)


def file_name(name: Any) -> str:
    """A volume's name as an encoder header records it: the file (or DICOM folder) name alone. Encoder files are
    shared; the folders of the machine that made one (home, temporary and site-packages folders) say nothing about
    the data and are nobody else's business."""
    text = str(name)
    return PurePosixPath(text.replace("\\", "/")).name or text


def absolute_paths(value: Any, where: str = "") -> list[str]:
    """The fields of a header (as "data.names[0]") whose text is an absolute path: what an encoder file must not
    carry to other machines (Resources/Models/make_encoders.py refuses to ship one)."""
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in absolute_paths(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in absolute_paths(item, f"{where}[{index}]")]
    if isinstance(value, str) and (value.startswith(("/", "~", "\\")) or value[1:3] in (":\\", ":/")):
        return [where.lstrip(".")]
    return []
