"""Where the bundled resources (sample data, shipped encoders) live, installed or in a checkout, and the user's
cache folder."""
from __future__ import annotations

from pathlib import Path


APP_NAME = "contrastiveseg"  # the folder name under the platform's cache folder


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
