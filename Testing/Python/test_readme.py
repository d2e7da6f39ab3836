"""The README's Python snippets run as written, and its command lines use options the CLI has.

Every ```python block of README.md is executed as a script in a fresh folder, except the Slicer batch script (a
block that imports ``slicer`` needs Slicer's own Python). The snippet under "The same steps from Python" fine-tunes
with ``steps=20`` so that this takes seconds; its text says to drop that for a real segmentation. Every
``contrastiveseg ...`` line of a ```bash block is parsed (not run: the files it names are the reader's).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ContrastiveSegLib.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def _python_snippets() -> list[str]:
    return [block for block in _blocks("python") if not re.search(r"^\s*(import|from)\s+slicer\b", block, re.M)]


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            for marker in ("contrastiveseg ", "-m ContrastiveSegLib "):
                if marker in line:
                    lines.append(line[line.index(marker) + len(marker):])
    return lines


def test_the_readme_has_snippets_and_commands():
    assert len(_python_snippets()) >= 1
    assert len(_command_lines()) >= 5


@pytest.mark.parametrize("number", range(len(_python_snippets())))
def test_python_snippet_runs_verbatim(tmp_path, number):
    script = tmp_path / "snippet.py"
    script.write_text(_python_snippets()[number])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    if "result.model.save(" in script.read_text():
        # The segmentation snippet: its printed shapes and the files it says it writes.
        assert "(95, 117, 99) (3, 95, 117, 99)" in result.stdout
        assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "result.nii.gz").is_file()


@pytest.mark.parametrize("line", _command_lines())
def test_command_line_parses(line):
    args = build_parser().parse_args(shlex.split(line))
    assert args.command
