"""The contract between the Slicer side and the command line: every command line the module builds is one the
REAL parser (``ContrastiveSegLib.cli.build_parser``, which holds ``pretrain`` too) accepts.

The stand-in CLIs of the other Slicer tests accept any flag, which hid ``predict --batch-size`` (bug 2 of issue 9).
Here no child process runs: ``CliProcess`` is replaced by a recorder whose child fails at once, out of GPU memory
when asked to. Each command line is then parsed by the real parser. A run starts exactly one child, out of memory
or not: the child handles running out of memory itself (``ContrastiveSegLib.device.halve_batch``) and the Slicer
side only reports it, so the batch size on the command line is always the user's. The runs cover every option the
jobs can emit, built directly and through the module's Logic from the panel's parameter node.
"""
from __future__ import annotations

import itertools
import time
import types
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

from ContrastiveSegLib import options  # noqa: E402
from ContrastiveSegLib.options import PRETRAIN_BATCH_SIZE  # noqa: E402
from ContrastiveSegLib.cli import build_parser  # noqa: E402
from ContrastiveSegLib.errors import InputError  # noqa: E402
from ContrastiveSegLib.slicer import childrun  # noqa: E402
from ContrastiveSegLib.slicer.job import Job, JobOptions  # noqa: E402
from ContrastiveSegLib.slicer.pretraining import OFFERED_METHODS, PretrainOptions, PretrainRun  # noqa: E402
from ContrastiveSegLib.slicer.runner import RunResult, exit_message  # noqa: E402
from test_slicer_bridge import _segmentation, _slab, _volume  # noqa: E402

OOM = "CUDA out of memory. Tried to allocate 9 GiB"


class RecordingProcess:
    """Stands in for :class:`~ContrastiveSegLib.slicer.runner.CliProcess`: records each command line; the "child"
    fails at once, out of GPU memory when ``out_of_memory`` is set, else for another reason (either way the run
    ends there and no output is read)."""

    commands: list[list[str]] = []
    out_of_memory = False

    def __init__(self, command, *, force_cpu=False, env=None, cwd=None) -> None:
        RecordingProcess.commands.append([str(c) for c in command])

    def start(self) -> None:
        pass

    def events(self) -> list:
        return []

    def result(self) -> RunResult:
        return RunResult(1, exit_message(1, OOM if RecordingProcess.out_of_memory else "stand-in child"))

    def cancel(self) -> None:
        pass


@pytest.fixture()
def recorder(monkeypatch):
    monkeypatch.setattr(childrun, "CliProcess", RecordingProcess)
    # The stand-in child ends at once: no need for the runs' 0.2 s polling pause.
    monkeypatch.setattr(childrun, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=lambda s: None))
    monkeypatch.setattr(RecordingProcess, "commands", [])
    monkeypatch.setattr(RecordingProcess, "out_of_memory", False)
    return RecordingProcess


def _parse(command: list[str]):
    """The real parser's reading of ``[python, -m, ContrastiveSegLib, ...]``; fails the test on a refusal."""
    assert command[1:3] == ["-m", "ContrastiveSegLib"], command
    try:
        return build_parser().parse_args(command[3:])
    except InputError as error:  # the CLI's parser raises this (exit code 2) instead of exiting
        pytest.fail(f"the CLI refuses {' '.join(command[3:])!r}: {error}")


def _commands(job, recorder, out_of_memory: bool) -> list[list[str]]:
    """Every command line ``job`` starts (one: a child out of memory is reported, never restarted)."""
    recorder.commands.clear()
    recorder.out_of_memory = out_of_memory
    result = job.run(timeout=30, poll_s=0.0)
    assert not result.ok
    assert result.message.startswith("Out of memory: CUDA out of memory") == out_of_memory
    assert len(recorder.commands) == 1
    return list(recorder.commands)


@pytest.fixture()
def inputs(scene, tmp_path):
    """(volume node, painted segmentation node, a saved model file) on ``scene``."""
    _, volume = _volume(scene, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    painted, _ = _segmentation(scene, volume, {"Liver": ((0.8, 0.3, 0.2), _slab([2, 6]))})
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights")
    return volume, painted, model


SEGMENT_OPTIONS = {
    "encoder": [None, "simclr", "random", "/encoders/mine.safetensors"],
    "device": ["auto", "cpu", "cuda", "cuda:1", "mps"],
    "preset": list(options.PRESET_NAMES),
    "steps": [None, 1, 500],
    "seed": [0, 7],
    "axis": [None, 0, 1, 2],
    "batch_size": [None, 1, 16],
    "init_model": [None, "/models/last.safetensors"],
    "probabilities": [True, False],
    "adapt": [None, *OFFERED_METHODS],
    "consistency": list(options.CONSISTENCY_MODES),
}


def _segment_cases():
    """Each value of each option once (the others at their defaults), then every option at once, twice."""
    for name, values in SEGMENT_OPTIONS.items():
        for value in values:
            yield {name: value}
    yield {name: values[-1] for name, values in SEGMENT_OPTIONS.items()}
    yield {name: values[1] for name, values in SEGMENT_OPTIONS.items()}


@pytest.mark.parametrize("options", list(_segment_cases()), ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_segment_command_line_is_accepted_by_the_cli(scene, inputs, recorder, tmp_path, options):
    volume, painted, _ = inputs
    if options.get("init_model") and (options.get("adapt") or options.get("consistency") == "bidirectional"):
        # a refinement with adapt / consistency: refused up front, as the API and the CLI refuse it
        with pytest.raises(InputError, match="not to a refinement"):
            JobOptions(**options)
        return
    job = Job("segment", volume, painted, None, JobOptions(**options), state_dir=tmp_path / "state", python="py")
    [command] = _commands(job, recorder, out_of_memory=True)
    args = _parse(command)
    assert args.batch_size == options.get("batch_size")  # the user's (None: the preset's), never a smaller one
    assert args.command == "segment" and args.device == options.get("device", "auto")
    assert args.progress == "json" and (args.probabilities is not None) == options.get("probabilities", True)
    assert args.adapt == options.get("adapt")


@pytest.mark.parametrize("axis", [None, 0, 1, 2])
def test_a_painting_in_several_planes_builds_command_lines_the_cli_accepts(scene, recorder, tmp_path, axis):
    from ContrastiveSegLib.slicer import nodes

    _, volume = _volume(scene, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    painted = _slab([2, 6], j=slice(2, 9), i=slice(3, 10))
    painted[1:8, 5, 3:10] = True  # and one coronal slice across them
    segmentation, _ = _segmentation(scene, volume, {"Liver": ((0.8, 0.3, 0.2), painted)})
    assert len(nodes.read_annotation(segmentation, volume).planes) == 2
    job = Job("segment", volume, segmentation, None, JobOptions(axis=axis), state_dir=tmp_path / "state",
              python="py")
    for command in _commands(job, recorder, out_of_memory=True):
        # no --axis unless the user forces one plane: the CLI finds the painted planes in the label map itself
        assert _parse(command).axis == (None if axis is None else "kji"[axis])


@pytest.mark.parametrize("device, probabilities", itertools.product(["auto", "cpu", "cuda:0", "mps"], [True, False]))
def test_predict_only_command_lines_are_accepted_and_have_no_batch_size(scene, inputs, recorder, tmp_path, device,
                                                                       probabilities):
    volume, _, model = inputs
    options = JobOptions(device=device, probabilities=probabilities)
    for out_of_memory in (False, True):
        job = Job("predict", volume, None, None, options, model_path=model, state_dir=tmp_path / "state",
                  python="py")
        commands = _commands(job, recorder, out_of_memory=out_of_memory)
        args = _parse(commands[0])  # predict halves its own batch of slices; the CLI has no --batch-size
        assert args.command == "predict" and args.model == model and args.device == device
        assert "--batch-size" not in commands[0]


def test_predict_only_refuses_a_batch_size_before_anything_runs(scene, inputs, recorder, tmp_path):
    volume, _, model = inputs
    with pytest.raises(InputError, match="Predict only has no batch size"):
        Job("predict", volume, None, None, JobOptions(batch_size=4), model_path=model, state_dir=tmp_path)
    assert recorder.commands == []


@pytest.mark.parametrize("options", [
    dict(),
    dict(method="lrc", steps=3, minutes=1.5, device="cuda:1", batch_size=4, seed=5),
    *[dict(method=method, device="cuda") for method in OFFERED_METHODS],
    dict(device="mps", minutes=0.5),
    dict(device="cpu", batch_size=2),
])
@pytest.mark.parametrize("from_folder", [False, True])
def test_every_pretrain_command_line_is_accepted_by_the_cli(scene, inputs, recorder, tmp_path, options,
                                                            from_folder):
    volume, _, _ = inputs
    sources = tmp_path if from_folder else [volume]
    job = PretrainRun(sources, tmp_path / "out" / "encoder.safetensors", PretrainOptions(**options),
                      state_dir=tmp_path / "state", python="py")
    [command] = _commands(job, recorder, out_of_memory=True)
    args = _parse(command)
    # pretrain's --batch-size has a default (16): the module passes the option only when the user chose one
    assert ("--batch-size" in command) == ("batch_size" in options)
    assert args.batch_size == options.get("batch_size", PRETRAIN_BATCH_SIZE)
    assert args.command == "pretrain" and args.method == options.get("method", "simclr")
    assert args.output == tmp_path / "out" / "encoder.safetensors" and args.device == options.get("device", "auto")


# ----------------------------------------------------------------------- through the module's Logic
@pytest.fixture()
def module(scene, monkeypatch, tmp_path, recorder):
    """(ContrastiveSeg module, its Logic, a parameter node) with Slicer's Qt side replaced (test_slicer_ui)."""
    from test_slicer_ui import _stand_ins

    _stand_ins(monkeypatch, scene, tmp_path)
    import ContrastiveSeg

    logic = ContrastiveSeg.ContrastiveSegLogic()
    node = ContrastiveSeg.ContrastiveSegParameterNode()
    monkeypatch.setattr(logic, "getParameterNode", lambda: node)
    return ContrastiveSeg, logic, node


def _panel_cases(ContrastiveSeg):
    """Each value of each panel choice once, on top of a panel that has a batch size set."""
    choices = {
        "encoder": ContrastiveSeg.ENCODERS,
        "device": ContrastiveSeg.DEVICES,
        "gpuIndex": [0, 3],
        "preset": list(options.PRESET_NAMES),
        "axis": ["auto", *options.AXIS_LETTERS],
        "steps": [0, 40],
        "seed": [0, 11],
        "batchSize": [0, 8],
        "showUncertainty": [False, True],
        "refineFromLastModel": [False, True],
    }
    for name, values in choices.items():
        for value in values:
            yield name, value


def test_the_panel_builds_command_lines_the_cli_accepts(scene, inputs, module, recorder, tmp_path):
    ContrastiveSeg, logic, node = module
    volume, painted, model = inputs
    node.inputVolume, node.inputSegmentation, node.modelFile = volume, painted, str(model)
    node.lastModelPath, node.lastModelSegments = str(model), "Liver"  # what "refine from the last model" uses
    defaults = ContrastiveSeg.ContrastiveSegParameterNode()
    checked = 0
    for name, value in _panel_cases(ContrastiveSeg):
        node.batchSize = 8  # set in the panel: it must reach Segment and never Predict only
        setattr(node, name, value)
        for out_of_memory in (False, True):
            recorder.commands.clear()
            recorder.out_of_memory = out_of_memory
            assert not logic.segmentFromParameterNode(node, waitForCompletion=True, timeout=30).ok
            assert not logic.predict(node.inputVolume, str(node.modelFile), node.outputSegmentation,
                                     **logic.optionsFromParameterNode(node, training=False),
                                     waitForCompletion=True, timeout=30).ok
            for command in recorder.commands:
                args = _parse(command)
                assert args.device == logic.deviceFromParameterNode(node)
                checked += 1
            segment_calls = [c for c in recorder.commands if c[3] == "segment"]
            predict_calls = [c for c in recorder.commands if c[3] == "predict"]
            assert _parse(segment_calls[0]).batch_size == (node.batchSize or None)  # 0: the preset's
            assert (_parse(segment_calls[0]).init_model is not None) == node.refineFromLastModel
            assert len(predict_calls) == 1 and "--batch-size" not in predict_calls[0]
        setattr(node, name, getattr(defaults, name))
    assert checked > 50


def test_pretraining_from_the_panel_builds_command_lines_the_cli_accepts(scene, inputs, module, recorder,
                                                                          tmp_path):
    _, logic, node = module
    for method, device, minutes in itertools.product(OFFERED_METHODS, ["auto", "cuda"], [0.0, 2.5]):
        node.pretrainMethod, node.device, node.pretrainMinutes, node.pretrainSteps = method, device, minutes, 3
        node.pretrainOutput = str(tmp_path / f"{method}.safetensors")
        recorder.commands.clear()
        recorder.out_of_memory = True
        assert not logic.pretrainFromParameterNode(node, waitForCompletion=True, timeout=30).ok
        assert len(recorder.commands) == 1  # out of memory: reported, not restarted
        for command in recorder.commands:
            args = _parse(command)
            assert args.method == method and args.steps == 3 and args.minutes == (minutes or None)
