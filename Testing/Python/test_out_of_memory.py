"""Running out of GPU memory is handled in one layer, the library: fine-tuning and prediction halve their batch
through :func:`ContrastiveSegLib.device.halve_batch` and go on; at batch size 1 they stop with one clear line.

Simulated on the CPU: a network whose forward pass raises ``torch.OutOfMemoryError`` (as CUDA does) for batches
larger than a limit. The front ends only report: the Slicer side is tested in test_runner.py (the real CLI with
the same simulation) and test_slicer_bridge.py / test_slicer_cli_contract.py (no restart from Slicer).
"""
from __future__ import annotations

import threading
import weakref

import numpy as np
import pytest
import torch

from ContrastiveSegLib import options
from ContrastiveSegLib.data.augment import BatchAugmenter

from ContrastiveSegLib.data.sampler import AnnotatedSliceSampler
from ContrastiveSegLib.data.slices import InputSpec, SliceStack
from ContrastiveSegLib.device import (PREDICTION_ADVICE, BatchLimits, OutOfMemory, fine_tuning_advice,
                                      halve_batch)
from ContrastiveSegLib.inference import predict as predict_module
from ContrastiveSegLib.inference.predict import predict_volume
from ContrastiveSegLib.io.annotations import IGNORE
from ContrastiveSegLib.training.finetune import FinetuneConfig, SupervisedObjective, train_segmentation


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


def _objective(phantom, augmenter: BatchAugmenter | None = None) -> list[SupervisedObjective]:
    """The fine-tuning loop's plug-ins: the supervised objective on the phantom's annotated slices."""
    return [SupervisedObjective(_sampler(phantom), augmenter)]


def _sampler(phantom) -> AnnotatedSliceSampler:
    stack = SliceStack(phantom.image, 0, InputSpec())
    targets = np.full(phantom.reference.shape, IGNORE, np.uint8)
    for s in phantom.slices:
        targets[s] = phantom.reference[s]
    return AnnotatedSliceSampler(stack, targets, list(phantom.slices), patch=32, divisor=16)


def test_fine_tuning_halves_the_batch_and_finishes(phantom):
    model = Greedy(InputSpec().in_channels, 3, limit=2)
    events: list[dict] = []
    losses = train_segmentation(model, _objective(phantom), FinetuneConfig(steps=4, batch_size=8, patch=32),
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


class SlicePrior:
    """A prior that favours class ``s % 3`` on slice ``s`` strongly enough to win against the 1x1 network, and
    records which slices each call asked for and from which thread."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.calls: list[tuple[tuple[int, ...], str]] = []
        self.lock = threading.Lock()

    def log_probs(self, indices) -> torch.Tensor:
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        with self.lock:
            self.calls.append((tuple(indices), threading.current_thread().name))
        out = torch.full((len(indices), 3, *self.shape), -1e4)
        for n, s in enumerate(indices):
            out[n, s % 3, :, : self.shape[1] // 2] = 0.0  # the left half only: the network decides the right
        return out


def test_the_prior_computed_ahead_gives_the_same_labels_also_when_the_batch_is_halved(phantom, monkeypatch):
    stack = SliceStack(phantom.image, 0, InputSpec())
    shape = phantom.image.shape[1:]
    prior = SlicePrior(shape)
    ahead, _ = predict_volume(Greedy(InputSpec().in_channels, 3, limit=1000), stack, torch.device("cpu"), divisor=16,
                              batch_size=4, prior=prior)
    # every batch asked once, in order, all of them in the prior's thread (each queued a pass before it is used)
    assert [c[0] for c in prior.calls] == [tuple(range(i, i + 4)) for i in range(0, 16, 4)]
    assert {c[1].split("_")[0] for c in prior.calls} == {"prior"}
    favoured = np.broadcast_to((np.arange(16) % 3)[:, None, None], (16, shape[0], shape[1] // 2))
    np.testing.assert_array_equal(ahead[:, :, : shape[1] // 2], favoured)  # the prior was used, slice by slice
    halved, _ = predict_volume(Greedy(InputSpec().in_channels, 3, limit=3), stack, torch.device("cpu"), divisor=16,
                               batch_size=16, prior=SlicePrior(shape))
    monkeypatch.setattr(predict_module.PriorAhead, "ahead", lambda self, *batches: None)  # the prior in turn
    serial_prior = SlicePrior(shape)
    serial, _ = predict_volume(Greedy(InputSpec().in_channels, 3, limit=1000), stack, torch.device("cpu"), divisor=16,
                               batch_size=4, prior=serial_prior)
    assert {c[1] for c in serial_prior.calls} == {threading.current_thread().name}
    np.testing.assert_array_equal(ahead, serial)
    np.testing.assert_array_equal(halved, serial)


def test_at_batch_size_1_fine_tuning_and_prediction_stop_with_one_clear_line(phantom):
    with pytest.raises(OutOfMemory, match=r"^out of memory while fine-tuning even at batch size 1: use the CPU "
                                          r"\(--device cpu\)$") as raised:
        train_segmentation(Greedy(InputSpec().in_channels, 3, limit=0), _objective(phantom),
                 FinetuneConfig(steps=2, batch_size=2, patch=32), torch.device("cpu"))
    assert isinstance(raised.value, MemoryError)  # the CLI reports a MemoryError as out of memory, exit code 1
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)  # CUDA's own message stays in the chain
    assert raised.value.__cause__.__traceback__ is None  # ... without the failed step's frames
    model = Greedy(InputSpec().in_channels, 3, limit=0)
    with pytest.raises(OutOfMemory, match=r"^out of memory while predicting even at batch size 1: use the CPU "
                                          r"\(--device cpu\)$"):
        predict_volume(model, SliceStack(phantom.image, 0, InputSpec()), torch.device("cpu"), divisor=16, batch_size=5)
    assert model.seen == [5, 2, 1]


def test_the_advice_is_what_the_command_at_hand_can_do():
    # Fine-tuning with crops larger than the low-memory preset's: that preset helps. With crops as small already,
    # or for prediction (no preset, whole slices), only the CPU does.
    assert fine_tuning_advice(128) == "use the CPU (--device cpu) or smaller crops (--preset fast: 96 px)"
    assert fine_tuning_advice(96) == fine_tuning_advice(32) == "use the CPU (--device cpu)"
    assert PREDICTION_ADVICE == "use the CPU (--device cpu)"
    assert options.PRESETS[options.LOW_MEMORY_PRESET].patch == 96


class Leaky(Greedy):
    """Greedy, plus weak references to the batch and an intermediate activation of every failed forward pass."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failed: list[weakref.ref] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.conv(x)  # a large activation that the failed pass's frame holds
        if x.shape[0] > self.limit:
            self.failed += [weakref.ref(x), weakref.ref(hidden)]
        return super().forward(x)


@pytest.mark.parametrize("work", ["fine-tuning", "prediction"])
def test_the_failed_step_is_released_before_the_cache_is_emptied(phantom, monkeypatch, work):
    # nnU-Net's order: leave the except frame, drop every tensor of the failed step, then empty the cache. A weak
    # reference to the failed batch (and to an activation of its forward pass) must be dead when the cache is
    # emptied, else the retry at half the batch would not get the memory back.
    model = Leaky(InputSpec().in_channels, 3, limit=2)
    alive_at_emptying: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache",
                        lambda: alive_at_emptying.append(any(ref() is not None for ref in model.failed)))
    if work == "fine-tuning":
        train_segmentation(model, _objective(phantom, BatchAugmenter(image_channels=3, seed=0)),
                           FinetuneConfig(steps=2, batch_size=8, patch=32), torch.device("cpu"))
    else:
        predict_volume(model, SliceStack(phantom.image, 0, InputSpec()), torch.device("cpu"), divisor=16,
                       batch_size=8)
    assert model.seen[:2] == [8, 4] and len(model.failed) == 4  # two failed passes, two references each
    assert alive_at_emptying == [False, False]


def test_the_batch_that_fitted_is_kept_for_the_later_stages_of_a_run(phantom):
    # One BatchLimits per run (api.segment makes it): the second fine-tuning stage (a self-training round) and the
    # second prediction start at the size that fitted, instead of running out of memory again.
    batches = BatchLimits()
    model = Greedy(InputSpec().in_channels, 3, limit=2)
    train_segmentation(model, _objective(phantom), FinetuneConfig(steps=2, batch_size=8, patch=32),
                       torch.device("cpu"), batches=batches)
    assert model.seen == [8, 4, 2, 2]
    model.seen.clear()
    train_segmentation(model, _objective(phantom), FinetuneConfig(steps=2, batch_size=8, patch=32),
                       torch.device("cpu"), batches=batches)
    assert model.seen == [2, 2]
    stack = SliceStack(phantom.image, 0, InputSpec())
    model.seen.clear()
    predict_volume(model, stack, torch.device("cpu"), divisor=16, batch_size=16, batches=batches)
    assert model.seen == [16, 8, 4] + [2] * 8
    model.seen.clear()
    predict_volume(model, stack, torch.device("cpu"), divisor=16, batch_size=16, batches=batches)
    assert model.seen == [2] * 8
    assert batches.fitted == {"finetune": 2, "predict": 2}
    # A stage that asks for less than what fitted keeps its own size.
    assert batches.start("predict", 1) == 1


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
                      "(--device cpu)")
    assert sorted(p.name for p in f.folder.iterdir()) == before


def test_pretraining_and_adaptation_give_advice_their_own_commands_take(phantom, monkeypatch):
    # Pretraining does not halve (fewer crops change the contrastive loss): one line naming pretrain's options.
    # Adapting inside segment names segment's (its crops are the preset's); neither names a preset that the
    # command at hand does not have (the Slicer module passes a message starting "out of memory" on as it is).
    from ContrastiveSegLib import api
    from ContrastiveSegLib.data.unlabelled import ArrayVolume
    from ContrastiveSegLib.training import pretrain

    def no_memory(device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(pretrain, "autocast_context", no_memory)
    with pytest.raises(OutOfMemory) as raised:
        pretrain.pretrain_encoder([ArrayVolume(phantom.image, name="scan")], "simclr", None,
                                  pretrain.PretrainConfig(steps=1, batch_size=4), features=(8, 8, 16, 16, 32),
                                  patch=32, device="cpu")
    assert str(raised.value) == ("out of memory while pretraining at batch size 4: use a smaller --batch-size or "
                                 "--patch, or the CPU (--device cpu)")
    with pytest.raises(OutOfMemory) as raised:
        api.finetune(phantom.image, phantom.sparse, adapt="simclr", adapt_steps=1, steps=1, device="cpu")
    assert str(raised.value) == (f"out of memory while adapting the encoder at batch size {options.ADAPT_BATCH_SIZE}: "
                                 "use the CPU (--device cpu) or smaller crops (--preset fast: 96 px)")
