"""Where the bundled resources (sample data, shipped encoders) live, installed or in a checkout."""
from __future__ import annotations

from pathlib import Path


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
