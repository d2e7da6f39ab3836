"""The benchmark/demo code (ContrastiveSegLib.evaluation) and the core library stay apart, checked in fresh
interpreters (sys.modules of this pytest process already holds everything the other tests imported)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The core library: what the Slicer module and ``api`` users load. None of it may import the evaluation package.
CORE = ("api", "training", "inference", "data", "io", "networks", "losses", "methods")
from conftest import HANG_GUARD_S  # noqa: E402

EVALUATION = ("metrics", "phantoms", "pictures")
# What evaluation code must not pull in: the command line and the demo sit above it, not below.
FRONT_ENDS = ("ContrastiveSegLib.cli", "ContrastiveSegLib.cli_pretrain", "ContrastiveSegLib.demo")


def _modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after ``code`` ran in a fresh interpreter started in the checkout."""
    script = code + (
        "\nimport sys, ContrastiveSegLib"
        "\nprint('package', ContrastiveSegLib.__file__)"
        "\nprint('\\n'.join(sorted(sys.modules)))")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    package = next(line.split(" ", 1)[1] for line in lines if line.startswith("package "))
    # The checkout's library, not an installed copy of another layout.
    assert Path(package).resolve() == ROOT / "ContrastiveSegLib" / "__init__.py"
    return set(lines)


def _walk(packages: str) -> str:
    """Python code importing each package named in ``packages`` (a tuple literal) and all of its submodules."""
    return (
        "import importlib, pkgutil\n"
        f"for name in {packages}:\n"
        "    module = importlib.import_module('ContrastiveSegLib.' + name)\n"
        "    for info in pkgutil.walk_packages(getattr(module, '__path__', []), module.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n")


@pytest.mark.slow
def test_evaluation_does_not_import_the_cli_or_the_demo():
    loaded = _modules_after(_walk("('evaluation',)"))
    assert {f"ContrastiveSegLib.evaluation.{name}" for name in EVALUATION} <= loaded
    assert sorted(loaded & set(FRONT_ENDS)) == []


@pytest.mark.slow
def test_the_core_library_does_not_import_evaluation():
    loaded = _modules_after(_walk(repr(CORE)))
    assert {f"ContrastiveSegLib.{name}" for name in CORE} <= loaded
    for package in CORE[1:]:  # the walk reached into every package, not only its __init__
        assert any(m.startswith(f"ContrastiveSegLib.{package}.") for m in loaded), package
    evaluation = sorted(m for m in loaded if m == "ContrastiveSegLib.evaluation"
                        or m.startswith("ContrastiveSegLib.evaluation."))
    assert evaluation == []
