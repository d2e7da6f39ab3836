"""Encoders by name: the shipped ones listed in Resources/Models/models.json, or a path to a .safetensors file.

models.json is a list of entries ``{"name", "file", "method", "data", "command", "input", "sha256"}``; the file
lives beside it. A checksum mismatch is an error, so a corrupted or swapped file is never used silently. The entry
with ``"default": true`` (at most one; chosen by the pretraining ablation, benchmarks/results/ablation.md) is what
fine-tuning starts from when no encoder is named.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.options import RANDOM_INIT, RANDOM_INIT_ALIASES, unknown_message
from ContrastiveSegLib.paths import models_dir



def shipped_encoders(directory: Path | None = None) -> list[dict]:
    """The entries of models.json (an empty list when nothing is shipped)."""
    manifest = (directory or models_dir()) / "models.json"
    if not manifest.is_file():
        return []
    return json.loads(manifest.read_text())


def encoder_help() -> str:
    """The ``--encoder`` default in the words ``contrastiveseg encoders``, the README and the summary use."""
    return (f"default: {default_encoder()}, the one 'contrastiveseg encoders' marks as default; "
            f"'{RANDOM_INIT}' is random initialisation")


def default_encoder(directory: Path | None = None) -> str:
    """The name of the shipped default encoder, or :data:`~ContrastiveSegLib.options.RANDOM_INIT` when none is marked default."""
    defaults = [e["name"] for e in shipped_encoders(directory) if e.get("default")]
    return defaults[0] if defaults else RANDOM_INIT


def _entry_file(entry: dict, directory: Path) -> Path:
    """The file of a models.json entry, confined to the models folder: an absolute path, a ".." or a linked folder
    that leads out of it would make a manifest (edited, or shipped by someone else) load any file on the machine."""
    name = entry.get("file")
    if not isinstance(name, str) or not name:
        raise InputError(f"shipped encoder '{entry.get('name')}' names no file in {directory / 'models.json'}")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or relative.drive:
        raise InputError(f"shipped encoder '{entry.get('name')}' names the file {name!r}, outside the models folder "
                         f"{directory}; models.json may only name files inside it")
    path = directory / relative
    # The folders on the way must stay inside (a linked subfolder must not lead elsewhere); the file itself may be
    # a link, as a link-tree editable install makes every packaged file, and its contents are pinned by sha256.
    try:
        inside = path.parent.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise InputError(f"shipped encoder '{entry.get('name')}' file {path} leads outside the models folder "
                         f"{directory}")
    return path


def resolve_encoder(name_or_path: str | None, directory: Path | None = None) -> Path | None:
    """The encoder file for ``name_or_path``; None for random initialisation ("random", or its earlier spelling "none"). ``None`` means
    the shipped default (:func:`default_encoder`).

    A shipped name is checked against its sha256 and must name a file inside the models folder; a path must
    exist. Unknown names list the known ones.
    """
    if name_or_path is None:
        name_or_path = default_encoder(directory)
    if name_or_path.lower() in (RANDOM_INIT, *RANDOM_INIT_ALIASES):
        return None
    directory = directory or models_dir()
    entries = {entry["name"]: entry for entry in shipped_encoders(directory)}
    if name_or_path in entries:
        path = _entry_file(entries[name_or_path], directory)
        entry = entries[name_or_path]
        if not path.is_file():
            raise InputError(f"shipped encoder '{name_or_path}' is missing its file {path}")
        from ContrastiveSegLib.zoo.weights import sha256  # here: listing the encoders must not load torch

        if sha256(path) != entry["sha256"]:
            raise InputError(f"encoder '{name_or_path}' fails its checksum ({path}); reinstall ContrastiveSeg")
        return path
    if not name_or_path.strip():
        raise InputError(f"--encoder is empty; give a shipped encoder name, a .safetensors file or "
                         f"'{RANDOM_INIT}'")
    path = Path(name_or_path)
    if path.suffix == ".safetensors" or os.path.lexists(path):
        from ContrastiveSegLib.io.files import check_readable, check_regular_file

        check_regular_file(path, "encoder file", hint="give a .safetensors file")
        check_readable(path, "encoder file")
        return path
    known = [RANDOM_INIT, *entries]
    raise InputError(unknown_message("encoder", name_or_path, known))
