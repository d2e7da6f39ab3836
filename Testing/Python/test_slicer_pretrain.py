"""Pretraining from the module's Logic in batch mode, against slicer-core and the REAL command line.

Two tiny scans in a scene -> NRRD files -> ``python -m ContrastiveSegLib pretrain --method simclr --steps 2`` in a
child process -> an encoder file that loads as an encoder and becomes the encoder of the next Segment. Also: which
scene volumes count as scans, the one-line refusals before a child starts and from the CLI (an unknown method),
and how a child that runs out of GPU memory is reported (with a stand-in CLI: the Slicer side does not restart
it). Slicer's Qt-side modules are replaced by the strict stand-ins of test_slicer_ui.py; the widget itself only
runs in a real Slicer (Testing/Slicer).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

from ContrastiveSegLib.errors import EXIT_BAD_INPUT, InputError  # noqa: E402
from ContrastiveSegLib.io.volume import Volume  # noqa: E402
from ContrastiveSegLib.slicer import nodes  # noqa: E402
from ContrastiveSegLib.slicer.job import ROLE_ATTRIBUTE  # noqa: E402
from ContrastiveSegLib.slicer.pretraining import (OFFERED_METHODS, PretrainOptions, PretrainRun,  # noqa: E402
                                                  scene_scans)
from ContrastiveSegLib.slicer.runner import overall_fraction  # noqa: E402

OBLIQUE = (0.8, -0.6, 0.0, 0.6, 0.8, 0.0, 0.0, 0.0, 1.0)


def _scans(scene) -> list:
    """Two 8x40x40 scans (an oblique anisotropic CT, an axis-aligned MR), plus volumes that are not scans."""
    rng = np.random.default_rng(0)
    ct = nodes.array_to_volume(Volume(rng.normal(0, 100, (8, 40, 40)).astype(np.int16), (0.7, 0.7, 2.5),
                                      (-14.0, 20.0, 5.0), OBLIQUE), scene, "CT oblique")
    mr = nodes.array_to_volume(Volume(rng.random((8, 40, 40)).astype(np.float32), (1.0, 1.0, 1.0),
                                      (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)), scene, "MR")
    nodes.array_to_volume(Volume(np.zeros((8, 40, 40), np.uint8), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                          scene, "labels", labelmap=True)
    uncertainty = nodes.array_to_volume(Volume(np.zeros((8, 40, 40), np.float32), (1, 1, 1), (0, 0, 0),
                                               (1, 0, 0, 0, 1, 0, 0, 0, 1)), scene, "CT uncertainty")
    uncertainty.SetAttribute(ROLE_ATTRIBUTE, "uncertainty")
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")  # no voxels yet
    return [ct, mr]


@pytest.fixture()
def module(scene, monkeypatch, tmp_path):
    """(ContrastiveSeg module, its Logic, a parameter node, the QSettings stand-in) on ``scene``."""
    from test_slicer_ui import _stand_ins

    _stand_ins(monkeypatch, scene, tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child inherits it: two cores are shared by several jobs
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    import ContrastiveSeg
    import qt

    logic = ContrastiveSeg.ContrastiveSegLogic()
    node = ContrastiveSeg.ContrastiveSegParameterNode()
    monkeypatch.setattr(logic, "getParameterNode", lambda: node)
    return ContrastiveSeg, logic, node, qt.QSettings


def test_the_scans_of_the_scene_leave_out_label_maps_module_volumes_and_empty_nodes(scene):
    ct, mr = _scans(scene)
    assert scene_scans(scene) == [ct, mr]


def test_the_method_names_have_one_home_that_the_registry_and_the_panel_use():
    from ContrastiveSegLib.methods import METHODS
    from ContrastiveSegLib.options import METHOD_NAMES

    assert tuple(METHODS) == METHOD_NAMES  # keys and order
    assert all(cls.name == name for name, cls in METHODS.items())
    assert OFFERED_METHODS == ("simclr", "selfpaced", "ideal", "lrc", "mixcl")  # "random" (no pretraining) is no run worth offering


@pytest.mark.slow
def test_pretrain_on_the_scene_with_the_real_cli(scene, module, tmp_path):
    from ContrastiveSegLib.zoo.weights import load_weights

    ContrastiveSeg, logic, node, settings = module
    _scans(scene)
    progress = []
    result = logic.pretrain(None, "simclr", steps=2, device="cpu", waitForCompletion=True, timeout=120,
                            progressCallback=progress.append)
    assert result.ok, (result.message, result.run.stderr_tail)
    # Written where encoders go by default, and loadable as an encoder trained 2 steps on the 2 scans.
    encoders = tmp_path / "slicer-cache" / "ContrastiveSeg" / "encoders"
    assert result.encoder_path.parent == encoders and result.encoder_path.name.startswith("simclr-")
    tensors, header = load_weights(result.encoder_path, kind="encoder")
    assert header["method"] == "simclr" and header["steps"] == 2 and header["axis"] == 0
    assert header["data"] == {"volumes": 2, "names": ["00-CT_oblique.nrrd", "01-MR.nrrd"]}
    assert header["patch"] == 48  # the 128 default crop shrunk to the 40-pixel slices, rounded up to 16
    assert tensors and all(t.isfinite().all() for t in tensors.values())
    # ... and fits the network Segment fine-tunes (what `segment --encoder FILE` does with it).
    from ContrastiveSegLib.data.slices import InputSpec
    from ContrastiveSegLib.model import load_encoder_into
    from ContrastiveSegLib.networks import NetworkConfig, build_network

    network = build_network(NetworkConfig(in_channels=InputSpec().in_channels, num_classes=2))
    load_encoder_into(network, result.encoder_path, InputSpec())
    loaded = network.encoder.state_dict()
    assert all(np.array_equal(loaded[name].numpy(), tensor.numpy()) for name, tensor in tensors.items())
    # Progress: the announcement, one event per step with its loss, the file, the end.
    assert progress[0].stage == "pretrain" and "on 2 volume(s)" in progress[0].message
    steps = [p for p in progress if p.stage == "pretrain" and p.of > 0]
    assert [(p.step, p.of) for p in steps] == [(1, 2), (2, 2)] and all(p.loss > 0 for p in steps)
    assert [p.stage for p in progress[-2:]] == ["write", "done"]
    assert [overall_fraction(p, "pretrain") for p in (progress[0], steps[0], progress[-1])] == \
        pytest.approx([0.0, 0.49, 1.0])
    # The next Segment starts from it; new scenes get it from the settings.
    assert node.encoderFile == str(result.encoder_path)
    assert logic.optionsFromParameterNode(node)["encoder"] == str(result.encoder_path)
    assert settings.store[ContrastiveSeg.SETTINGS_ENCODER_FILE] == str(result.encoder_path)
    state = logic.stateDirectory()
    assert state.parent == tmp_path / "slicer-tmp" and state.stat().st_mode & 0o777 == 0o700
    assert not [p for p in state.iterdir() if p.name.startswith("pretrain-")]  # exported scans removed


@pytest.mark.slow
def test_an_unknown_method_is_one_line_from_the_cli_and_changes_nothing(scene, module, tmp_path):
    _, logic, node, settings = module
    ct, _ = _scans(scene)
    output = tmp_path / "bad.safetensors"
    result = logic.pretrain(ct, "simclrr", output, steps=2, device="cpu", waitForCompletion=True, timeout=120)
    assert not result.ok and result.run.exit_code == EXIT_BAD_INPUT and result.encoder_path is None
    assert result.message.startswith("unknown method 'simclrr' (known: ")
    assert result.message.endswith("did you mean 'simclr'?") and "\n" not in result.message
    assert not output.exists() and node.encoderFile == "" and not settings.store  # "": still unset


def test_unusable_input_is_refused_before_any_child_starts(scene, module, tmp_path):
    _, logic, node, _ = module
    with pytest.raises(InputError, match="no scan to pretrain on"):
        logic.pretrain(None, "simclr", tmp_path / "e.safetensors", waitForCompletion=True)
    ct, _ = _scans(scene)
    for kwargs, message in [(dict(data=tmp_path / "nowhere"), "folder not found: "),
                            (dict(outputPath=tmp_path / "e.pt"), "must end in .safetensors, got 'e.pt'"),
                            (dict(steps=0), "steps must be at least 1, got 0"),
                            (dict(minutes=-1.0), "minutes must be more than 0"),
                            (dict(device="gpu"), "unknown device 'gpu' .*did you mean 'cuda'"),
                            (dict(method=""), "choose a pretraining method")]:
        arguments = {**dict(data=ct, method="simclr", outputPath=tmp_path / "e.safetensors"), **kwargs}
        with pytest.raises(InputError, match=message):
            logic.pretrain(**arguments, waitForCompletion=True)
    node.pretrainSource, node.pretrainFolder = "A folder", ""  # no folder chosen
    with pytest.raises(InputError, match="choose the folder of scans"):
        logic.pretrainFromParameterNode(node, waitForCompletion=True)
    assert not (tmp_path / "e.safetensors").exists() and not logic.isRunning()


def test_a_folder_is_passed_to_the_cli_as_it_is(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    output = tmp_path / "out" / "enc.safetensors"
    job = PretrainRun(folder, output, PretrainOptions("lrc", steps=3, minutes=1.5, device="cpu"), python="py")
    assert job.prepare() == [folder] and output.parent.is_dir()
    assert job.command() == ["py", "-m", "ContrastiveSegLib", "pretrain", str(folder), "--method", "lrc", "-o",
                             str(output), "--steps", "3", "--minutes", "1.5", "--seed", "0", "--device", "cpu",
                             "--progress", "json"]


FAKE_OOM_CLI = '''
import json, sys
from ContrastiveSegLib.cli import build_parser
arguments = sys.argv[1:]
with open(sys.argv[0] + ".log", "a") as log:
    log.write(" ".join(arguments) + "\\n")
build_parser().parse_args(arguments[2:])  # only command lines the real CLI accepts (after -m ContrastiveSegLib)
print(json.dumps({"stage": "error", "message": "CUDA out of memory. Tried to allocate 3 GiB", "exit_code": 1}))
sys.exit(1)
'''


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell stands in for PythonSlicer")
def test_out_of_gpu_memory_is_reported_in_one_line_and_not_restarted(scene, tmp_path):
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_OOM_CLI)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    ct, _ = _scans(scene)
    output = tmp_path / "enc.safetensors"
    job = PretrainRun([ct], output, PretrainOptions(device="cuda:0"), state_dir=tmp_path / "state",
                      python=str(python))
    result = job.run(timeout=60)
    assert not result.ok and result.encoder_path is None and not output.exists()
    # Pretraining has no preset: the advice is what its panel can change (was: "the 'fast' preset", issue 16).
    assert result.message == ("Out of memory: CUDA out of memory. Tried to allocate 3 GiB Try the CPU or a smaller "
                              "batch size.")
    calls = Path(str(script) + ".log").read_text().splitlines()
    assert len(calls) == 1 and "--batch-size" not in calls[0]  # one child, with the user's (unset) batch size
    assert calls[0].split()[3] == "00-CT_oblique.nrrd"  # -m ContrastiveSegLib pretrain SCAN ... (in the work folder)
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.startswith("pretrain-")]  # scans removed
