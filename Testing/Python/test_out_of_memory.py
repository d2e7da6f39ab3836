"""Running out of GPU memory is handled in one layer, the library: fine-tuning and prediction halve their batch
through :func:`ContrastiveSegLib.device.halve_batch` and go on; at batch size 1 they stop with one clear line.

Simulated on the CPU: a network whose forward pass raises ``torch.OutOfMemoryError`` (as CUDA does) for batches
larger than a limit. The front ends only report: the Slicer side is tested in test_runner.py (the real CLI with
the same simulation) and test_slicer_bridge.py / test_slicer_cli_contract.py (no restart from Slicer).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ContrastiveSegLib.data.sampler import AnnotatedSliceSampler
from ContrastiveSegLib.data.slices import InputSpec, SliceStack
from ContrastiveSegLib.device import OutOfMemory, halve_batch
from ContrastiveSegLib.inference.predict import predict_volume
from ContrastiveSegLib.io.annotations import IGNORE
from ContrastiveSegLib.training.finetune import FinetuneConfig, train_segmentation


class Greedy(torch.nn.Module):
    """A 1x1 convolution that runs out of memory for batches larger than ``limit``; ``seen`` records the batch
    size of every forward pass."""

    def __init__(self, in_channels: int, classes: int, limit: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(in_channels, classes, 1)
        self.limit = limit
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return self.conv(x)


def _notes(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["stage"], e["message"]) for e in events if "out of GPU memory" in e.get("message", "")]


def _sampler(phantom) -> AnnotatedSliceSampler:
    stack = SliceStack(phantom.image, 0, InputSpec())
    targets = np.full(phantom.reference.shape, IGNORE, np.uint8)
    for s in phantom.slices:
        targets[s] = phantom.reference[s]
    return AnnotatedSliceSampler(stack, targets, list(phantom.slices), patch=32, divisor=16)


def test_fine_tuning_halves_the_batch_and_finishes(phantom):
    model = Greedy(InputSpec().in_channels, 3, limit=2)
    events: list[dict] = []
    losses = train_segmentation(model, _sampler(phantom), FinetuneConfig(steps=4, batch_size=8, patch=32),
                      torch.device("cpu"), progress=events.append)
    assert model.seen == [8, 4, 2, 2, 2, 2]  # two halvings, then every one of the 4 steps at the size that fits
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert _notes(events) == [("finetune", "out of GPU memory: retrying with batch size 4"),
                              ("finetune", "out of GPU memory: retrying with batch size 2")]


def test_prediction_halves_the_batch_and_gives_the_same_result(phantom):
    stack = SliceStack(phantom.image, 0, InputSpec())
    roomy = Greedy(InputSpec().in_channels, 3, limit=1000)
    expected, _ = predict_volume(roomy, stack, torch.device("cpu"), divisor=16, batch_size=16)
    tight = Greedy(InputSpec().in_channels, 3, limit=3)
    events: list[dict] = []
    classes, _ = predict_volume(tight, stack, torch.device("cpu"), divisor=16, batch_size=16, progress=events.append)
    assert stack.num_slices == 16 and roomy.seen == [16]
    assert tight.seen == [16, 8, 4] + [2] * 8  # then every slice, two at a time
    np.testing.assert_array_equal(classes, expected)
    assert [message for _, message in _notes(events)] == [
        f"out of GPU memory: retrying with batch size {size}" for size in (8, 4, 2)]


def test_at_batch_size_1_fine_tuning_and_prediction_stop_with_one_clear_line(phantom):
    with pytest.raises(OutOfMemory, match=r"^out of memory while fine-tuning even at batch size 1: use the CPU "
                                          r"\(--device cpu\) or the 'fast' preset$") as raised:
        train_segmentation(Greedy(InputSpec().in_channels, 3, limit=0), _sampler(phantom),
                 FinetuneConfig(steps=2, batch_size=2, patch=32), torch.device("cpu"))
    assert isinstance(raised.value, MemoryError)  # the CLI reports a MemoryError as out of memory, exit code 1
    assert isinstance(raised.value.__context__, torch.OutOfMemoryError)  # CUDA's own message stays in the chain
    model = Greedy(InputSpec().in_channels, 3, limit=0)
    with pytest.raises(OutOfMemory, match="^out of memory while predicting even at batch size 1"):
        predict_volume(model, SliceStack(phantom.image, 0, InputSpec()), torch.device("cpu"), divisor=16, batch_size=5)
    assert model.seen == [5, 2, 1]


def test_halve_batch_rounds_down_and_never_below_1():
    events: list[dict] = []
    assert [halve_batch(size, "x", events.append, "finetune") for size in (9, 3, 2)] == [4, 1, 1]
    assert [e["message"] for e in events][-1] == "out of GPU memory: retrying with batch size 1"
    with pytest.raises(OutOfMemory):
        halve_batch(1, "x")


def test_the_cli_prints_what_ran_out_at_batch_size_1(phantom_files, capsys, monkeypatch):
    # The library's one-line advice reaches the user as it is (not the generic host-memory text), exit code 1,
    # and nothing is written.
    from ContrastiveSegLib import api
    from ContrastiveSegLib.cli import main

    def out_of_memory(*args, **kwargs):
        halve_batch(1, "fine-tuning")

    monkeypatch.setattr(api, "segment", out_of_memory)
    f = phantom_files
    before = sorted(p.name for p in f.folder.iterdir())
    code = main(["segment", str(f.image), str(f.labels), "-o", str(f.folder / "out.nii.gz"), "--device", "cpu",
                 "--progress", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0] == ("contrastiveseg: error: out of memory while fine-tuning even at batch size 1: use the CPU "
                      "(--device cpu) or the 'fast' preset")
    assert sorted(p.name for p in f.folder.iterdir()) == before
