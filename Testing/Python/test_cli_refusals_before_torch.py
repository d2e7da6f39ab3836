"""Refusals that need no torch come before torch is imported (issue 16: `--steps 0`, a missing model file and
`--device cuda` without a GPU took 20 s to say so on a busy 2-core machine, the time torch takes to load).

Each case runs the CLI in a fresh interpreter and asserts that torch is not in ``sys.modules`` when the refusal
is made: a behaviour check, not a timing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HANG_GUARD_S
from ContrastiveSegLib import options

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import json, sys
from ContrastiveSegLib.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def _run(args: list) -> tuple[dict, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr.strip()


CASES = {
    "steps 0": (["segment", "{image}", "{labels}", "-o", "{folder}/out.nii.gz", "--steps", "0"],
                "steps must be >= 1, got 0"),
    "batch size 0": (["finetune", "{image}", "{labels}", "-o", "{folder}/m.safetensors", "--batch-size", "0"],
                     "--batch-size must be >= 1, got 0"),
    "refinement with adapt": (["segment", "{image}", "{labels}", "-o", "{folder}/out.nii.gz", "--init-model",
                               "{folder}/missing.safetensors", "--adapt", "simclr"], "not to a refinement"),
    "demo steps 0": (["demo", "-o", "{folder}/demo", "--steps", "0"], "steps must be >= 1, got 0"),
    "missing model": (["predict", "{image}", "--model", "{folder}/missing.safetensors", "-o", "{folder}/out.nii.gz"],
                      "model not found: {folder}/missing.safetensors"),
    "missing initial model": (["segment", "{image}", "{labels}", "-o", "{folder}/out.nii.gz", "--init-model",
                               "{folder}/missing.safetensors"], "model not found: {folder}/missing.safetensors"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_torch_loads(phantom_files, case):
    f = phantom_files
    template, phrase = CASES[case]
    fill = dict(image=f.image, labels=f.labels, folder=f.folder)
    result, stderr = _run([part.format(**fill) for part in template])
    assert result == {"code": 2, "torch": False}
    assert stderr.splitlines()[-1].startswith("contrastiveseg: error: ")
    assert phrase.format(**fill) in stderr
    assert not (f.folder / "out.nii.gz").exists()


@pytest.mark.skipif(not options._no_gpu_driver(), reason="a GPU driver is present: torch has to answer")
def test_cuda_without_a_gpu_is_refused_before_torch_loads(phantom_files):
    f = phantom_files
    result, stderr = _run(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--device", "cuda"])
    assert result == {"code": 2, "torch": False}
    assert stderr.splitlines()[-1] == ("contrastiveseg: error: device 'cuda' asked for, but no CUDA GPU is "
                                       "available (use --device cpu)")
