"""Installing the module's Python dependencies inside Slicer (ContrastiveSegLib.slicer.environment) against fake
``slicer`` modules: Slicer 5.12 and later (``slicer.packaging.pip_ensure``), and 5.6 to 5.11 (only
``slicer.util.pip_install``). The fakes record what would be installed. The installed versions come from a fake
package-metadata table. Also: the requirements are stated once, and they agree with pyproject.toml.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from ContrastiveSegLib.slicer import environment

ROOT = Path(__file__).resolve().parents[2]

# What a Slicer 5.8 with the PyTorch extension holds before ContrastiveSeg's dependencies are installed.
SLICER_PACKAGES = {"torch": "2.4.1+cu121", "SimpleITK": "2.3.1", "numpy": "1.26.4", "scipy": "1.13.0",
                   "scikit-image": "0.22.0", "safetensors": "0.4.3", "platformdirs": "4.2.2"}


class FakeMetadata:
    """Stands in for ``importlib.metadata`` in :mod:`environment`: versions from a table that installs change."""

    PackageNotFoundError = type("PackageNotFoundError", (Exception,), {})

    def __init__(self, installed: dict[str, str]) -> None:
        self.installed = dict(installed)

    def version(self, name: str) -> str:
        if name not in self.installed:
            raise self.PackageNotFoundError(name)
        return self.installed[name]


@pytest.fixture()
def fake_slicer(monkeypatch):
    """A fake ``slicer`` module with ``util.pip_install`` (every Slicer since 4.x) and no ``packaging``; the test
    adds ``slicer.packaging`` for 5.12. ``calls`` records what would be installed, with the constraints file's
    lines read at call time (the file is removed afterwards)."""
    metadata = FakeMetadata(SLICER_PACKAGES)
    monkeypatch.setattr(environment, "metadata", metadata)
    calls: list[tuple[str, list[str], list[str]]] = []

    def pip_install(arguments):
        assert isinstance(arguments, list), "a list, so that paths with spaces stay one argument"
        constraints = Path(arguments[arguments.index("--constraint") + 1]).read_text().splitlines()
        requirements = [a for i, a in enumerate(arguments)
                        if not a.startswith("-") and arguments[i - 1] != "--constraint"]
        calls.append(("pip_install", requirements, constraints))
        for requirement in requirements:
            metadata.installed[Requirement(requirement).name] = "99.0"

    slicer = types.ModuleType("slicer")
    slicer.util = types.SimpleNamespace(pip_install=pip_install)
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    for name in ("slicer.packaging", "slicer.pydeps", "slicer.util", "PyTorchUtils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return slicer, metadata, calls


def _add_pip_ensure(monkeypatch, slicer, metadata, calls) -> None:
    """Slicer 5.12 and later: ``slicer.packaging.pip_ensure(requirements, constraints=..., ...)``."""

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):
        assert all(isinstance(r, Requirement) for r in requirements)
        calls.append(("pip_ensure", [str(r) for r in requirements], Path(constraints).read_text().splitlines()))
        for requirement in requirements:
            metadata.installed[requirement.name] = "99.0"

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = pip_ensure
    slicer.packaging = packaging
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)


PINS = ["torch==2.4.1+cu121", "SimpleITK==2.3.1", "numpy==1.26.4"]


def test_slicer_5_8_installs_only_what_is_missing_with_torch_and_slicers_packages_pinned(fake_slicer,
                                                                                         monkeypatch):
    slicer, metadata, calls = fake_slicer
    # A stray module of that name must not be used: no released Slicer has slicer.pydeps.
    pydeps = types.ModuleType("slicer.pydeps")
    pydeps.pip_ensure = lambda *args, **kwargs: pytest.fail("slicer.pydeps does not exist in any Slicer")
    monkeypatch.setitem(sys.modules, "slicer.pydeps", pydeps)
    asked = []
    assert environment.install(lambda text: asked.append(text) or True)
    assert calls == [("pip_install", ["monai>=1.3", "nibabel>=4"], PINS)]
    assert "monai>=1.3" in asked[0] and "nibabel>=4" in asked[0] and "torch" not in asked[0].split("\n\n")[1]
    assert metadata.installed["torch"] == "2.4.1+cu121"  # untouched
    assert environment.missing_requirements() == []


def test_slicer_5_12_uses_pip_ensure_with_the_same_pins(fake_slicer, monkeypatch):
    slicer, metadata, calls = fake_slicer
    _add_pip_ensure(monkeypatch, slicer, metadata, calls)
    del metadata.installed["scipy"]
    assert environment.install(lambda text: True, requester="ContrastiveSeg")
    assert calls == [("pip_ensure", ["monai>=1.3", "nibabel>=4", "scipy>=1.9"], PINS)]


def test_nothing_missing_means_no_question_and_no_pip(fake_slicer):
    _, metadata, calls = fake_slicer
    metadata.installed.update({"monai": "1.5.1", "nibabel": "5.2.1"})
    assert environment.install(lambda text: pytest.fail("nothing to ask"))
    assert calls == []


def test_a_torch_too_old_is_refused_before_anything_is_asked_or_installed(fake_slicer):
    _, metadata, calls = fake_slicer
    metadata.installed["torch"] = "2.0.1+cu118"
    with pytest.raises(RuntimeError, match=r"PyTorch 2\.0\.1\+cu118 is installed but ContrastiveSeg needs torch>=2\.1"
                                           r": update it in the PyTorch Utils module"):
        environment.install(lambda text: pytest.fail("must not ask before the torch check"))
    assert calls == [] and "monai" not in metadata.installed


def test_a_missing_torch_comes_from_the_pytorch_extension_then_pip_pins_it(fake_slicer, monkeypatch):
    _, metadata, calls = fake_slicer
    del metadata.installed["torch"]
    torch_calls = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=True, forceComputationBackend=None, torchVersionRequirement=None):
            torch_calls.append((askConfirmation, torchVersionRequirement))
            metadata.installed["torch"] = "2.5.1+cu124"
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    assert environment.install(lambda text: True)
    assert torch_calls == [(False, ">=2.1")]
    assert calls == [("pip_install", ["monai>=1.3", "nibabel>=4"],
                      ["torch==2.5.1+cu124", "SimpleITK==2.3.1", "numpy==1.26.4"])]


def test_no_pip_when_the_pytorch_extension_installs_no_torch(fake_slicer, monkeypatch):
    _, metadata, calls = fake_slicer
    del metadata.installed["torch"]

    class PyTorchUtilsLogic:
        def installTorch(self, **kwargs):
            return None  # the user declined, or the download failed

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    assert not environment.install(lambda text: True)
    assert calls == []


def test_declining_installs_nothing(fake_slicer):
    _, _, calls = fake_slicer
    assert not environment.install(lambda text: False)
    assert calls == []


# ------------------------------------------------------------------------------- the requirements themselves
def _pyproject_dependencies() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return [Requirement(text) for text in tomllib.load(handle)["project"]["dependencies"]]


def test_the_slicer_requirements_agree_with_pyproject():
    from ContrastiveSegLib.slicer import requirements

    declared = {r.name.lower(): r for r in _pyproject_dependencies()}
    slicer_side = [Requirement(text) for text in (requirements.TORCH, *requirements.PIP)]
    names = [r.name.lower() for r in slicer_side]
    assert len(names) == len(set(names)), "each package once"
    for requirement in slicer_side:  # same package, same version floor as the library's own metadata
        assert requirement.name.lower() in declared, f"{requirement} is not a dependency in pyproject.toml"
        assert requirement.specifier == declared[requirement.name.lower()].specifier, requirement
    # Every dependency is installed by the module, supplied by Slicer, or needed by no Slicer run.
    others = [n.lower() for n in (*requirements.FROM_SLICER, *requirements.NOT_FOR_SLICER)]
    assert sorted(names + others) == sorted(declared)
    assert set(n.lower() for n in requirements.PINNED) == {"torch"} | {n.lower() for n in requirements.FROM_SLICER}
    assert environment.missing_requirements.__defaults__ == ((requirements.TORCH, *requirements.PIP),)


def test_nibabel_is_required_because_every_nifti_read_imports_it():
    from ContrastiveSegLib.slicer import requirements

    assert "import nibabel" in (ROOT / "ContrastiveSegLib/io/volume.py").read_text()
    assert any(Requirement(r).name == "nibabel" for r in requirements.PIP)


# ----------------------------------------------------------------------------------------------- out-of-memory advice
def test_the_small_gpu_note_names_the_low_memory_preset_from_its_one_home(monkeypatch):
    # Said next to the segmentation's controls: the preset and the batch size are there. The name comes from
    # options.LOW_MEMORY_PRESET (renaming the preset renames the advice).
    from ContrastiveSegLib import options

    small = environment.parse_nvidia_smi("0, GeForce GTX 1050, 4096")
    assert environment.device_summary(small) == (
        "GPU: cuda:0 GeForce GTX 1050 (4 GB) - small GPU memory: if a segmentation runs out of memory, choose the "
        "'fast' preset or a smaller batch size")
    monkeypatch.setattr(environment, "LOW_MEMORY_PRESET", "tiny")
    assert "choose the 'tiny' preset" in environment.device_summary(small)
    assert options.PRESETS[options.LOW_MEMORY_PRESET].patch < options.PRESETS[options.DEFAULT_PRESET].patch


@pytest.mark.parametrize("subcommand, extra, advice", [
    ("segment", [], "Try the CPU, the 'fast' preset or a smaller batch size."),
    ("segment", ["--preset", "default"], "Try the CPU, the 'fast' preset or a smaller batch size."),
    ("segment", ["--preset", "fast"], "Try the CPU or a smaller batch size."),  # already the low-memory preset
    ("pretrain", [], "Try the CPU or a smaller batch size."),  # pretraining has no preset
    ("predict", [], "Try the CPU."),  # whole slices, no preset and no batch size to change
])
def test_a_slicer_jobs_out_of_memory_advice_is_what_that_job_can_change(subcommand, extra, advice):
    from ContrastiveSegLib.slicer.runner import cli_command, exit_message

    command = cli_command(subcommand, "image.nrrd", python="py") + extra
    error = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert exit_message(1, error, command=command) == f"Out of memory: {error} {advice}"
    # The CLI's own last word already says what that command takes: it is passed on as it is.
    own = "out of memory while fine-tuning even at batch size 1: use the CPU (--device cpu)"
    assert exit_message(1, own, command=command) == own[0].upper() + own[1:]
