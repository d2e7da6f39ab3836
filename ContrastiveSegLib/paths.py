"""Where the bundled resources (sample data, shipped encoders) live, installed or in a checkout, and the user's
cache folder."""
from __future__ import annotations

import os
from pathlib import Path

from ContrastiveSegLib.errors import InputError

APP_NAME = "contrastiveseg"  # the folder name under the platform's cache folder


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path when it is a regular file; else InputError ``WHAT not found: PATH`` or ``WHAT PATH is not a
    regular file`` (a FIFO would block open() forever; a folder or device is no such file either). torch-free: the
    CLI asks it about ``--model`` / ``--init-model`` before torch loads, and the weights reader asks it again."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} {path} is not a regular file")
    return path


def resources_dir() -> Path:
    """The Resources folder: packaged as ``ContrastiveSegLib.resources`` in a wheel, beside the library in a
    checkout or in the installed Slicer extension."""
    try:
        import ContrastiveSegLib.resources as packaged  # mapped from Resources/ by setup.py

        for location in getattr(packaged, "__path__", []):
            if (Path(location) / "SampleData").is_dir():
                return Path(location)
    except ImportError:
        pass
    return Path(__file__).resolve().parent.parent / "Resources"


def sample_data_dir() -> Path:
    return resources_dir() / "SampleData"


def models_dir() -> Path:
    return resources_dir() / "Models"


def user_cache_dir() -> Path:
    """The user's cache folder for this library, as the platform keeps them (platformdirs): on Linux
    ``$XDG_CACHE_HOME/contrastiveseg``, by default ``~/.cache/contrastiveseg``; on macOS
    ``~/Library/Caches/contrastiveseg``; on Windows ``%LOCALAPPDATA%\\contrastiveseg\\Cache``. Not created here."""
    import platformdirs  # imported when needed: the Slicer module's GUI process never asks for it

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
