"""Encoders by name: the shipped ones listed in Resources/Models/models.json, or a path to a .safetensors file.

models.json is a list of entries ``{"name", "file", "method", "data", "command", "input", "sha256"}``; the file
lives beside it. A checksum mismatch is an error, so a corrupted or swapped file is never used silently. The entry
with ``"default": true`` (at most one; chosen by the pretraining ablation, benchmarks/results/ablation.md) is what
fine-tuning starts from when no encoder is named.
"""
from __future__ import annotations

import json
from pathlib import Path

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.options import unknown_message
from ContrastiveSegLib.paths import models_dir
from ContrastiveSegLib.zoo.weights import sha256

RANDOM_INIT = ("none", "random")


def shipped_encoders(directory: Path | None = None) -> list[dict]:
    """The entries of models.json (an empty list when nothing is shipped)."""
    manifest = (directory or models_dir()) / "models.json"
    if not manifest.is_file():
        return []
    return json.loads(manifest.read_text())


def default_encoder(directory: Path | None = None) -> str:
    """The name of the shipped default encoder, or "none" (random initialisation) when none is marked default."""
    defaults = [e["name"] for e in shipped_encoders(directory) if e.get("default")]
    return defaults[0] if defaults else "none"


def resolve_encoder(name_or_path: str | None, directory: Path | None = None) -> Path | None:
    """The encoder file for ``name_or_path``; None for random initialisation ("none", "random"). ``None`` means
    the shipped default (:func:`default_encoder`).

    A shipped name is checked against its sha256; a path must exist. Unknown names list the known ones.
    """
    if name_or_path is None:
        name_or_path = default_encoder(directory)
    if name_or_path.lower() in RANDOM_INIT:
        return None
    directory = directory or models_dir()
    entries = {entry["name"]: entry for entry in shipped_encoders(directory)}
    if name_or_path in entries:
        entry = entries[name_or_path]
        path = directory / entry["file"]
        if not path.is_file():
            raise InputError(f"shipped encoder '{name_or_path}' is missing its file {path}")
        if sha256(path) != entry["sha256"]:
            raise InputError(f"encoder '{name_or_path}' fails its checksum ({path}); reinstall ContrastiveSeg")
        return path
    path = Path(name_or_path)
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise InputError(f"encoder file not found: {path}")
        return path
    known = ["none", *entries]
    raise InputError(unknown_message("encoder", name_or_path, known))
