"""The Python packages the Slicer module needs, written down once. This module imports nothing.

The module's GUI process reads these facts without importing torch. :mod:`.environment` checks them and installs
what is missing. A test checks that they agree with the ``dependencies`` in pyproject.toml: every package there
appears here once, with the same version specifier, or Slicer supplies it, or no Slicer run needs it.

Why these versions go together: MONAI releases raise their torch floor (MONAI 1.6 needs torch >= 2.8), while the
torch in Slicer is whatever the PyTorch extension installed for the user's GPU driver. So pip never chooses torch
here. :mod:`.environment` installs the packages below with the installed torch (and Slicer's own SimpleITK and
numpy) pinned in a pip constraints file. pip then picks the newest MONAI that runs on that torch. This works for
any torch that meets :data:`TORCH`, because MONAI 1.3 and 1.4 accept every torch from 2.1 on.
"""
from __future__ import annotations

TORCH = "torch>=2.1"
"""Installed by the PyTorch extension (its wheel matches the NVIDIA driver), never by pip. It is checked before
anything else is installed."""

PIP = ("monai>=1.3", "nibabel>=4", "scikit-image>=0.21", "scipy>=1.9", "safetensors>=0.4", "platformdirs>=3")
"""Installed with pip, after one confirmation, when missing."""

FROM_SLICER = ("numpy", "SimpleITK")
"""In pyproject.toml but shipped with Slicer, built for it: never installed or replaced by the module."""

NOT_FOR_SLICER = ("matplotlib", "tqdm")
"""In pyproject.toml only for the demo's and the benchmarks' pictures and for the CLI's terminal progress bar, which
no Slicer run draws (the module reads the CLI's JSON progress lines)."""

PINNED = ("torch", "SimpleITK", "numpy")
"""Held at their installed version while pip installs :data:`PIP` (a constraints file): pip may resolve around
them but never replace Slicer's builds or the PyTorch extension's torch."""
