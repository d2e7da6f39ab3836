"""Pretraining methods: one file each behind :class:`~ContrastiveSegLib.methods.base.PretrainMethod`.

The registry is the explicit dict :data:`METHODS` (no decorators, no import magic): the method classes listed
below, keyed and ordered by :data:`ContrastiveSegLib.options.METHOD_NAMES`, the names' torch-free home (the Slicer
panel lists them from there); :func:`get_method` builds a method by name with keyword hyper-parameters. What each
method does and why its defaults are what they are: docs/methods.md.
"""
from __future__ import annotations

import inspect
from typing import Any

from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.methods.base import DEFAULT_FEATURES, DEFAULT_NORM, MethodOutput, PretrainMethod
from ContrastiveSegLib.methods.ideal import IDEAL
from ContrastiveSegLib.methods.lrc import LRC
from ContrastiveSegLib.methods.mixcl import MixCL
from ContrastiveSegLib.methods.random_init import RandomInit
from ContrastiveSegLib.methods.selfpaced import SelfPaced
from ContrastiveSegLib.methods.simclr import SimCLR
from ContrastiveSegLib.options import METHOD_NAMES, unknown_message

_CLASSES = {cls.name: cls for cls in (RandomInit, SimCLR, SelfPaced, IDEAL, LRC, MixCL)}
if set(_CLASSES) != set(METHOD_NAMES):  # a method added on one side only: fail on import, not in a user's run
    raise ImportError(f"options.METHOD_NAMES {METHOD_NAMES} and the method classes {tuple(_CLASSES)} differ")
METHODS: dict[str, type[PretrainMethod]] = {name: _CLASSES[name] for name in METHOD_NAMES}

_BASE_ARGUMENTS = ("self", "spec", "features", "norm")


def method_class(name: str) -> type[PretrainMethod]:
    """The class registered as ``name``; ValueError listing the known names and the nearest one."""
    if name in METHODS:
        return METHODS[name]
    raise ValueError(unknown_message("method", name, METHODS))


def method_parameters(name: str) -> dict[str, Any]:
    """The hyper-parameters of method ``name`` and their defaults (what ``get_method`` accepts besides spec and
    features)."""
    signature = inspect.signature(method_class(name).__init__)
    return {key: p.default for key, p in signature.parameters.items() if key not in _BASE_ARGUMENTS}


def get_method(name: str, spec: InputSpec = InputSpec(), features: tuple[int, ...] = DEFAULT_FEATURES,
               norm: str = DEFAULT_NORM, **params: Any) -> PretrainMethod:
    """Build method ``name`` for inputs ``spec``, encoder widths ``features`` and normalisation ``norm``.

    Raises ValueError for an unknown name (listing the known ones) or an unknown hyper-parameter (listing the
    method's parameters); the method's own checks raise ValueError for bad values.
    """
    cls = method_class(name)
    known = method_parameters(name)
    unknown = sorted(set(params) - set(known))
    if unknown:
        listed = ", ".join(known) if known else "none"
        raise ValueError(f"method '{name}' has no parameter {', '.join(unknown)} (its parameters: {listed})")
    return cls(spec, tuple(features), norm, **params)


__all__ = ["METHODS", "MethodOutput", "PretrainMethod", "get_method", "method_class", "method_parameters",
           "DEFAULT_FEATURES", "DEFAULT_NORM"]
