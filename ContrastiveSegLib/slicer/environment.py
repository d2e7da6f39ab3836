"""What the child process will need (packages, a GPU), checked from Slicer's GUI process without importing torch.

- :func:`missing_requirements` reads installed versions from package metadata (no import, so it is instant
  and never loads torch into Slicer).
- :func:`install` installs what is missing after ONE confirmation: torch through the PyTorch extension's
  PyTorchUtils (it picks the wheel that matches the NVIDIA driver), the rest with Slicer's ``pip_ensure``
  (Slicer >= 5.11; ``slicer.packaging`` or ``slicer.pydeps``) or, on older Slicer, ``slicer.util.pip_install``.
  SimpleITK is never installed (Slicer ships its own build). Only ever called from a button, never at import.
- :func:`detect_gpus` asks ``nvidia-smi`` for the GPUs and their memory, so the module can show them and warn
  before a run rather than fail in it.
"""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

TORCH_REQUIREMENT = "torch>=2.1"
REQUIREMENTS = ("monai>=1.3", "scikit-image>=0.21", "safetensors>=0.4", "scipy>=1.9")
SKIP_PACKAGES = ("SimpleITK", "torch", "requests")
SMALL_GPU_MIB = 6000  # below this, the default preset's batch may not fit: the module warns


def shipped_encoder_names() -> list[str]:
    """Names of the encoders shipped in Resources/Models/models.json, read without importing torch."""
    import json

    from ContrastiveSegLib.paths import models_dir

    manifest = models_dir() / "models.json"
    try:
        entries = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return []
    return [str(e["name"]) for e in entries if isinstance(e, dict) and "name" in e]


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def _satisfied(requirement: str) -> bool:
    name, _, minimum = requirement.partition(">=")
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return not minimum or _version_tuple(installed) >= _version_tuple(minimum)


def missing_requirements(requirements: tuple[str, ...] = (TORCH_REQUIREMENT, *REQUIREMENTS)) -> list[str]:
    """The requirements (``name>=version`` strings) that are not installed at a high enough version."""
    for requirement in requirements:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+(>=[0-9][0-9A-Za-z.]*)?", requirement):
            raise ValueError(f"requirements must be 'name' or 'name>=version', got {requirement!r}")
    return [r for r in requirements if not _satisfied(r)]


@dataclass(frozen=True)
class Gpu:
    """A GPU as the NVIDIA driver reports it."""

    index: int
    name: str
    memory_mib: int

    def describe(self) -> str:
        return f"cuda:{self.index} {self.name} ({self.memory_mib / 1024:.0f} GB)"


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits`` output."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            try:
                gpus.append(Gpu(int(parts[0]), ",".join(parts[1:-1]), int(float(parts[-1]))))
            except ValueError:
                continue
    return gpus


def detect_gpus(timeout_s: float = 5.0) -> list[Gpu]:
    """The NVIDIA GPUs of this machine (empty when there is no driver or no GPU)."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    try:
        completed = subprocess.run(
            [executable, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(completed.stdout) if completed.returncode == 0 else []


def apple_silicon() -> bool:
    """True on an Apple-silicon Mac, where the (opt-in) 'mps' device may work."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def device_summary(gpus: list[Gpu]) -> str:
    """One line for the module: which devices a run can use and what to expect."""
    if gpus:
        line = "GPU: " + "; ".join(g.describe() for g in gpus)
        if max(g.memory_mib for g in gpus) < SMALL_GPU_MIB:
            line += " - small GPU memory: use the 'fast' preset if a run runs out of memory"
        return line
    if apple_silicon():
        return "No NVIDIA GPU; Apple 'mps' can be chosen (experimental), the CPU takes a few minutes"
    return "No NVIDIA GPU found: runs use the CPU (a few minutes for a typical scan)"


def install(confirm, requester: str = "ContrastiveSeg") -> bool:
    """Install what :func:`missing_requirements` lists, inside Slicer, after one ``confirm(text) -> bool``.

    Returns True when everything is installed now. Must run on Slicer's main thread (pip shows Qt dialogs).
    """
    missing = missing_requirements()
    if not missing:
        return True
    text = ("ContrastiveSeg needs these Python packages, which will be downloaded and installed now "
            "(this can take several minutes):\n\n  " + "\n  ".join(missing)
            + "\n\nPyTorch is installed by the PyTorch extension, matched to your GPU driver.")
    if not confirm(text):
        return False
    if any(r.startswith("torch") for r in missing):
        try:
            import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS), present in a real install
        except ImportError as error:
            raise RuntimeError("the PyTorch extension is missing: install it from the Extensions Manager") from error
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        if not torch_logic.torchInstalled():
            if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT[5:]) is None:
                return False
    others = [r for r in missing if not r.startswith("torch")]
    if others:
        _pip_install(others, requester)
    return not missing_requirements()


def _pip_install(requirements: list[str], requester: str) -> None:
    import slicer

    ensure = None
    for module_name in ("slicer.packaging", "slicer.pydeps"):  # renamed during 5.11 development
        try:
            module = __import__(module_name, fromlist=["pip_ensure"])
            ensure = getattr(module, "pip_ensure", None)
        except ImportError:
            continue
        if ensure is not None:
            break
    if ensure is not None:
        from packaging.requirements import Requirement

        ensure([Requirement(r) for r in requirements], skip_packages=list(SKIP_PACKAGES), prompt_install=False,
               requester=requester)
    else:
        # Older Slicer: plain pip. SimpleITK is not in our list and monai does not require it, so nothing
        # replaces Slicer's own build.
        slicer.util.pip_install(requirements)
