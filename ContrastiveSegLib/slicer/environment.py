"""What the child process will need (packages, a GPU), checked from Slicer's GUI process without importing torch.

- :func:`missing_requirements` reads installed versions from package metadata (no import, so it is instant
  and never loads torch into Slicer). What is required is stated once, in :mod:`.requirements`.
- :func:`install` installs what is missing after ONE confirmation. torch comes from the PyTorch extension's
  PyTorchUtils, which picks the wheel that matches the NVIDIA driver, and its version is checked before anything
  is installed. The other packages come from pip: through ``slicer.packaging.pip_ensure`` (Slicer 5.12 and later)
  or ``slicer.util.pip_install`` (Slicer 5.6 to 5.11). Either way, only the missing packages are named, and the
  installed torch, SimpleITK and numpy are pinned in a constraints file, so pip never replaces them. Only ever
  called from a button, never at import.
- :func:`detect_gpus` asks ``nvidia-smi`` for the GPUs and their memory, so the module can show them and warn
  before a run rather than fail in it.
"""
from __future__ import annotations

import importlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ContrastiveSegLib.options import LOW_MEMORY_PRESET
from ContrastiveSegLib.slicer.requirements import PINNED, PIP, TORCH

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


def _split(requirement: str) -> tuple[str, str]:
    name, _, minimum = requirement.partition(">=")
    return name, minimum


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name`` from its metadata (no import), or None when absent."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _satisfied(requirement: str) -> bool:
    name, minimum = _split(requirement)
    installed = installed_version(name)
    if installed is None:
        return False
    return not minimum or _version_tuple(installed) >= _version_tuple(minimum)


def missing_requirements(requirements: tuple[str, ...] = (TORCH, *PIP)) -> list[str]:
    """The requirements (``name>=version`` strings) that are not installed at a high enough version."""
    for requirement in requirements:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+(>=[0-9][0-9A-Za-z.]*)?", requirement):
            raise ValueError(f"requirements must be 'name' or 'name>=version', got {requirement!r}")
    return [r for r in requirements if not _satisfied(r)]


def pinned_constraints() -> list[str]:
    """``name==version`` for each installed package of :data:`~.requirements.PINNED`: what pip must leave alone."""
    pins = []
    for name in PINNED:
        version = installed_version(name)
        if version is not None:
            pins.append(f"{name}=={version}")
    return pins


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
            # Said next to the segmentation's controls: the preset and the batch size are there to change.
            line += (f" - small GPU memory: if a segmentation runs out of memory, choose the '{LOW_MEMORY_PRESET}' "
                     "preset or a smaller batch size")
        return line
    if apple_silicon():
        return "No NVIDIA GPU; Apple 'mps' can be chosen (experimental), the CPU takes a few minutes"
    return "No NVIDIA GPU found: runs use the CPU (a few minutes for a typical scan)"


def install(confirm, requester: str = "ContrastiveSeg") -> bool:
    """Install what :func:`missing_requirements` lists, inside Slicer, after one ``confirm(text) -> bool``.

    First the installed torch is checked against :data:`~.requirements.TORCH`. A torch that is too old raises
    RuntimeError (one line: how to update it) before anything is asked or installed; pip is never allowed to
    replace it. Returns True when everything is installed now. Must run on Slicer's main thread (pip shows Qt
    dialogs).
    """
    missing = missing_requirements()
    if not missing:
        return True
    torch_name, torch_minimum = _split(TORCH)
    torch_version = installed_version(torch_name)
    if torch_version is not None and TORCH in missing:
        raise RuntimeError(f"PyTorch {torch_version} is installed but ContrastiveSeg needs {TORCH}: update it in "
                           "the PyTorch Utils module (uninstall it, restart Slicer, install it again), then install "
                           "the dependencies")
    text = ("ContrastiveSeg needs these Python packages, which will be downloaded and installed now "
            "(this can take several minutes):\n\n  " + "\n  ".join(missing)
            + "\n\nPyTorch is installed by the PyTorch extension, matched to your GPU driver.")
    if not confirm(text):
        return False
    if torch_version is None:
        try:
            import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS), present in a real install
        except ImportError as error:
            raise RuntimeError("the PyTorch extension is missing: install it from the Extensions Manager") from error
        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                      torchVersionRequirement=f">={torch_minimum}")
        if missing_requirements((TORCH,)):
            return False  # declined or failed in PyTorchUtils: pip must not run without the torch it pins
    others = [r for r in missing if r != TORCH]
    if others:
        _pip_install(others, requester)
    return not missing_requirements()


def _pip_ensure():
    """``slicer.packaging.pip_ensure`` (Slicer 5.12 and later), or None on an older Slicer."""
    try:
        module = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return getattr(module, "pip_ensure", None)


def _pip_install(requirements: list[str], requester: str) -> None:
    """pip-install ``requirements`` (only the missing ones) with :func:`pinned_constraints` as a constraints file."""
    import slicer

    with tempfile.TemporaryDirectory(prefix="ContrastiveSeg-pip-") as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text("".join(pin + "\n" for pin in pinned_constraints()))
        ensure = _pip_ensure()
        if ensure is not None:
            from packaging.requirements import Requirement

            ensure([Requirement(r) for r in requirements], constraints=str(constraints), prompt_install=False,
                   requester=requester)
        else:
            # Slicer 5.6 to 5.11: plain pip, which has no skip list. The constraints file alone keeps it from
            # replacing torch (the PyTorch extension's build), SimpleITK or numpy (Slicer's own builds).
            slicer.util.pip_install(["--constraint", str(constraints), *requirements])
