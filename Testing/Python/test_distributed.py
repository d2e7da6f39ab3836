"""Two-process CPU (gloo) pretraining under torchrun: both ranks end with identical weights, the volumes are
sharded between them, and only rank 0 writes the encoder file.

torchrun launches this very file as the worker (``python -m torch.distributed.run ... test_distributed.py worker
OUT DATA``), so the test exercises the real env:// initialisation, not a simulation of it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG_GUARD_S

pytestmark = pytest.mark.slow  # two gloo ranks and torchrun start several interpreters

FEATURES = (8, 8, 16, 16, 32)


def worker(out: Path, data: Path) -> None:
    """One rank: pretrain 3 simclr steps, then save this rank's whole method and what it saw."""
    import torch
    from safetensors.torch import save_file

    from ContrastiveSegLib.data.unlabelled import StreamConfig, find_volumes
    from ContrastiveSegLib.training.pretrain import PretrainConfig, pretrain_encoder

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    job = pretrain_encoder(find_volumes([data]), "simclr", out / "encoder.safetensors",
                           PretrainConfig(steps=3, batch_size=2), features=FEATURES, patch=32,
                           stream=StreamConfig(prefetch=False), device="cpu")
    save_file({k: v.contiguous() for k, v in job.method.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": job.context.rank, "world": job.context.world_size,
                                                      "backend": job.context.backend, "steps": job.result.steps,
                                                      "losses": job.result.losses}))


def torchrun(*args: str, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    import SimpleITK as sitk

    folder = tmp_path_factory.mktemp("ddp_data")
    for i in range(4):
        array = np.random.default_rng(i).normal(size=(6, 32, 32)).astype(np.float32)
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / f"v{i}.nii.gz"))
    return folder


def test_two_gloo_ranks_end_with_identical_weights(volumes, tmp_path):
    from safetensors.torch import load_file

    from ContrastiveSegLib.methods import get_method

    done = torchrun(__file__, "worker", str(tmp_path), str(volumes))
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    summary = [(r["rank"], r["world"], r["backend"], r["steps"]) for r in reports]
    assert summary == [(0, 2, "gloo", 3), (1, 2, "gloo", 3)]
    # Each rank trained on its own shard: the per-rank losses differ, the averaged gradients keep weights equal.
    assert reports[0]["losses"] != reports[1]["losses"]
    weights = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][k].numpy(), weights[1][k].numpy()) for k in weights[0])
    initial = get_method("simclr", features=FEATURES).state_dict()
    assert any(not np.array_equal(initial[k].numpy(), weights[0][k].numpy()) for k in initial)
    assert (tmp_path / "encoder.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["encoder.safetensors", "rank0.safetensors",
                                                                       "rank1.safetensors"]


def _cli_has_pretrain() -> bool:
    from ContrastiveSegLib.cli import build_parser

    try:
        build_parser().parse_args(["pretrain", "x", "--method", "random", "-o", "x.safetensors"])
        return True
    except BaseException:  # argparse exits (SystemExit) or raises InputError for an unknown command
        return False


def test_torchrun_command_line(volumes, tmp_path):
    if not _cli_has_pretrain():
        pytest.skip("'contrastiveseg pretrain' is not registered in cli.py yet")
    output = tmp_path / "enc.safetensors"
    done = torchrun("-m", "ContrastiveSegLib", "pretrain", str(volumes), "--method", "simclr", "-o", str(output),
                    "--steps", "2", "--batch-size", "2", "--patch", "32", "--features", ",".join(map(str, FEATURES)),
                    "--device", "cpu", "--progress", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [e["step"] for e in events if e["stage"] == "pretrain" and e["step"]] == [1, 2]  # rank 0 only
    assert output.is_file()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    worker(Path(sys.argv[2]), Path(sys.argv[3]))
