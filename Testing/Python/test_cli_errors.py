"""Every bad input of the issue: exit code 2, one line on stderr naming the problem, no output file, no traceback.

Most cases run ``ContrastiveSegLib.cli.main`` in-process; two run ``python -m ContrastiveSegLib`` for real to prove
nothing but the one line reaches stderr.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import HANG_GUARD_S, PHANTOM_ORIGIN, PHANTOM_SPACING, rotation_direction, write_image
from ContrastiveSegLib.cli import main
from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.model import TrainedModel
from ContrastiveSegLib.networks import Encoder, NetworkConfig, build_network
from ContrastiveSegLib.zoo.weights import save_weights

REPO = Path(__file__).resolve().parents[2]
FAST = ["--preset", "fast", "--steps", "2", "--device", "cpu"]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_bad_input(argv, capsys, phrase: str, folder: Path) -> str:
    """Run the CLI, expect exit 2 and one stderr line holding ``phrase``, and no new file in ``folder``."""
    before = set(os.listdir(folder))
    code, _, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("contrastiveseg: error: ") and phrase in lines[0], lines[0]
    assert "Traceback" not in err
    assert set(os.listdir(folder)) == before  # no output, no temporary file
    return lines[0]


def _model(path: Path, label_values=(0, 1), axis: int = 0) -> Path:
    spec = InputSpec()
    network = build_network(NetworkConfig(in_channels=spec.in_channels, num_classes=len(label_values)))
    TrainedModel(network, tuple(label_values), axis, spec, PHANTOM_SPACING).save(path)
    return path


# ----------------------------------------------------------------------------------------------- unreadable inputs
def test_missing_image(phantom_files, capsys):
    f = phantom_files
    assert_bad_input(["segment", f.folder / "nope.nii.gz", f.labels, "-o", f.folder / "out.nii.gz"], capsys,
                     "image not found", f.folder)


def test_missing_labels(phantom_files, capsys):
    f = phantom_files
    assert_bad_input(["segment", f.image, f.folder / "nope.nii.gz", "-o", f.folder / "out.nii.gz"], capsys,
                     "labels not found", f.folder)


def test_unreadable_image(phantom_files, capsys):
    f = phantom_files
    bad = f.folder / "broken.nii.gz"
    bad.write_bytes(b"this is not an image")
    assert_bad_input(["segment", bad, f.labels, "-o", f.folder / "out.nii.gz"], capsys, "cannot read image", f.folder)


# ----------------------------------------------------------------------------------------------- grids
@pytest.mark.parametrize("change, phrase", [
    ({"crop": True}, "size differs"),
    ({"spacing": (0.9, 0.9, 3.0)}, "spacing differs"),
    ({"origin": (PHANTOM_ORIGIN[0] + 5.0, *PHANTOM_ORIGIN[1:])}, "origin differs"),
    ({"direction": rotation_direction(30.0)}, "direction differs"),
])
def test_image_and_labels_on_different_grids(phantom_files, capsys, change, phrase):
    f = phantom_files
    labels = f.phantom.sparse[:, :, :40] if change.pop("crop", False) else f.phantom.sparse
    other = write_image(labels, f.folder / "other_grid.nii.gz", **change)
    line = assert_bad_input(["segment", f.image, other, "-o", f.folder / "out.nii.gz"], capsys,
                            "image and labels are on different grids: " + phrase, f.folder)
    assert line.count("differs") == 1


# ----------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("make_labels, phrase", [
    (lambda sparse: sparse.astype(np.float32) * 0.5, "labels are not integers"),
    (lambda sparse: np.zeros_like(sparse), "no annotated slice"),
    (lambda sparse: np.full_like(sparse, 255), "no annotated slice"),
    (lambda sparse: sparse.astype(np.int16) * -1, "labels must be >= 0"),
])
def test_unusable_labels(phantom_files, capsys, make_labels, phrase):
    f = phantom_files
    labels = write_image(make_labels(f.phantom.sparse), f.folder / "bad_labels.nii.gz")
    assert_bad_input(["segment", f.image, labels, "-o", f.folder / "out.nii.gz", *FAST], capsys, phrase, f.folder)


def test_every_slice_annotated_returns_the_labels(phantom_files, capsys):
    f = phantom_files
    full = f.phantom.reference.copy()
    full[:, 0, 0] = 1  # the end slices hold no structure: give every slice one labelled voxel
    labels = write_image(full, f.folder / "full.nii.gz")
    out = f.folder / "out.nii.gz"
    code, _, err = run(["segment", f.image, labels, "-o", out, "--axis", "k", *FAST], capsys)
    assert code == 0
    # One remark for the user; the rest of stderr is the stage lines of the log (stderr is not a terminal) and the
    # run's summary, which says nothing was trained.
    lines = err.splitlines()
    remarks = [line for line in lines if line.startswith("contrastiveseg: ")]
    assert len(remarks) == 1 and "nothing to segment" in remarks[0], err
    summary = next(i for i, line in enumerate(lines) if line.startswith("summary of segment"))
    assert all(line in remarks or line.startswith("[") for line in lines[:summary]), err
    assert f"wrote      {out} (label map)" in "\n".join(lines[summary:])
    written = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(written), full)
    assert written.GetDirection() == pytest.approx(rotation_direction(), abs=1e-6)


# ----------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("array, phrase", [
    (np.zeros((48, 48), np.float32), "is 2D; a 3D volume is needed"),
    (np.zeros((2, 16, 48, 48), np.float32), "is 4D; a 3D volume is needed"),
])
def test_image_not_3d(phantom_files, capsys, array, phrase):
    f = phantom_files
    image = f.folder / "wrong_dim.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=False), str(image))  # 4D scalar, not 3D vector
    assert_bad_input(["segment", image, f.labels, "-o", f.folder / "out.nii.gz"], capsys, phrase, f.folder)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_image_with_nan_or_infinite_voxels(phantom_files, capsys, bad_value, suffix):
    f = phantom_files
    array = f.phantom.image.copy()
    array[3, 10, 10:13] = bad_value
    image = write_image(array, f.folder / f"bad_voxels{suffix}")
    assert_bad_input(["segment", image, f.labels, "-o", f.folder / "out.nii.gz", *FAST], capsys,
                     "image holds 3 NaN or infinite voxels", f.folder)


def test_nifti_image_with_nan_voxels(phantom_files, capsys):
    f = phantom_files
    array = f.phantom.image.copy()
    array[3, 10, 10:13] = np.nan
    image = write_image(array, f.folder / "bad_voxels.nii.gz")
    assert_bad_input(["segment", image, f.labels, "-o", f.folder / "out.nii.gz", *FAST], capsys,
                     "NaN or infinite voxels", f.folder)


# ----------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("command", ["segment", "finetune", "predict"])
def test_output_folder_does_not_exist(phantom_files, capsys, command):
    f = phantom_files
    suffix = ".safetensors" if command == "finetune" else ".nii.gz"
    out = f.folder / "no_such_folder" / f"out{suffix}"
    (f.folder / "m.safetensors").write_bytes(b"")  # a model file is there (a missing one is refused first)
    inputs = [f.image, "--model", f.folder / "m.safetensors"] if command == "predict" else [f.image, f.labels]
    assert_bad_input([command, *inputs, "-o", out], capsys, "output folder does not exist", f.folder)


def test_output_of_unknown_type(phantom_files, capsys):
    f = phantom_files
    assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.png"], capsys, "unknown file type",
                     f.folder)


# ----------------------------------------------------------------------------------------------- encoders and models
def test_encoder_with_other_input_channels(phantom_files, capsys):
    f = phantom_files
    encoder = f.folder / "enc7.safetensors"
    save_weights(encoder, Encoder(in_channels=7).state_dict(),
                 {"kind": "encoder", "input_channels": 7, "features": [8, 16, 32, 64, 128]})
    line = assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--encoder", encoder,
                             *FAST], capsys, "takes 7 input channels, this image gives 5", f.folder)
    assert "enc7.safetensors" in line


def test_encoder_with_other_widths(phantom_files, capsys):
    f = phantom_files
    encoder = f.folder / "narrow.safetensors"
    features = (4, 8, 16, 32, 64)
    save_weights(encoder, Encoder(in_channels=5, features=features).state_dict(),
                 {"kind": "encoder", "input_channels": 5, "features": list(features)})
    assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--encoder", encoder, *FAST],
                     capsys, "has widths (4, 8, 16, 32, 64)", f.folder)


def test_unknown_encoder_name_lists_the_known_ones(phantom_files, capsys):
    f = phantom_files
    line = assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--encoder", "imagenet",
                             *FAST], capsys, "unknown encoder 'imagenet' (known: random", f.folder)
    assert "known:" in line


def test_unknown_preset(phantom_files, capsys):
    f = phantom_files
    assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--preset", "turbo"], capsys,
                     "unknown preset 'turbo' (known: default, fast)", f.folder)


def test_predict_labels_with_a_value_the_model_does_not_know(phantom_files, capsys):
    f = phantom_files
    model = _model(f.folder / "binary.safetensors", label_values=(0, 1))
    assert_bad_input(["predict", f.image, "--model", model, "--labels", f.labels, "-o", f.folder / "out.nii.gz",
                      "--device", "cpu"], capsys, "labels hold values [2] that the model does not know", f.folder)


def test_refine_a_model_with_other_classes(phantom_files, capsys):
    f = phantom_files
    model = _model(f.folder / "binary.safetensors", label_values=(0, 1))
    assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--init-model", model, *FAST],
                     capsys, "model classes [0, 1] do not match the labels' values [0, 1, 2]", f.folder)


def test_refine_a_model_trained_along_another_axis(phantom_files, capsys):
    f = phantom_files
    model = _model(f.folder / "sagittal.safetensors", label_values=(0, 1, 2), axis=2)
    assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--init-model", model, "--axis",
                      "k", *FAST], capsys, "model was trained on slices along i, the labels are painted on slices along k", f.folder)


@pytest.mark.parametrize("make_model, phrase", [
    (lambda p: p.write_bytes(os.urandom(300)) and p, "is not a readable safetensors file"),
    (lambda p: p.write_bytes(b"") or p, "is not a readable safetensors file"),
    (lambda p: p.with_name("absent.safetensors"), "model not found"),
    (lambda p: save_weights(p, Encoder(5).state_dict(), {"kind": "encoder"}) or p, "holds a encoder, not a model"),
    (lambda p: save_weights(p, {"w": torch.zeros(2)}, {"kind": "model"}) or p, "header field 'network' is missing"),
])
def test_unusable_model_file(phantom_files, capsys, make_model, phrase):
    f = phantom_files
    model = make_model(f.folder / "model.safetensors")
    assert_bad_input(["predict", f.image, "--model", model, "-o", f.folder / "out.nii.gz", "--device", "cpu"],
                     capsys, phrase, f.folder)


def test_truncated_model_file(phantom_files, capsys):
    f = phantom_files
    model = _model(f.folder / "model.safetensors")
    model.write_bytes(model.read_bytes()[:-1000])  # an interrupted copy
    assert_bad_input(["predict", f.image, "--model", model, "-o", f.folder / "out.nii.gz", "--device", "cpu"],
                     capsys, "is not a readable safetensors file", f.folder)


# ----------------------------------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_requested_without_a_gpu(phantom_files, capsys):
    f = phantom_files
    assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--device", "cuda"], capsys,
                     "no CUDA GPU is available", f.folder)


def test_unknown_device(phantom_files, capsys):
    f = phantom_files
    assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--device", "tpu"], capsys,
                     "unknown device 'tpu'", f.folder)


def test_json_progress_reports_the_error_as_json(phantom_files, capsys):
    f = phantom_files
    code, out, err = run(["segment", f.folder / "nope.nii.gz", f.labels, "-o", f.folder / "out.nii.gz",
                          "--progress", "json"], capsys)
    assert code == 2
    events = [json.loads(line) for line in out.strip().splitlines()]
    assert events[-1]["stage"] == "error" and events[-1]["exit_code"] == 2
    assert "image not found" in events[-1]["message"]


# ----------------------------------------------------------------------------------------------- a real process
def _subprocess(args: list, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("CONTRASTIVESEG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ContrastiveSegLib", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("case", ["corrupt image", "labels not integers"])
def test_no_traceback_reaches_stderr_of_a_real_process(phantom_files, case):
    f = phantom_files
    image, labels = f.image, f.labels
    if case == "corrupt image":
        image = f.folder / "broken.nrrd"
        image.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\nshort")
        phrase = "cannot read image"
    else:
        labels = write_image(f.phantom.sparse.astype(np.float32) + 0.25, f.folder / "float.nii.gz")
        phrase = "labels are not integers"
    before = set(os.listdir(f.folder))
    result = _subprocess(["segment", image, labels, "-o", f.folder / "out.nii.gz", "--device", "cpu"])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("contrastiveseg: error: ") and phrase in result.stderr
    assert set(os.listdir(f.folder)) == before


# ----------------------------------------------------------------------------------------------- issue 10: data loss
def test_short_write_leaves_no_output_at_all(phantom_files, capsys, monkeypatch):
    """A writer that stops short without saying so (ITK's NIfTI writer on a full disk): exit 2, one line, and
    neither the label map nor the probabilities written before it are left."""
    from test_io import _truncating_writer

    f = phantom_files
    model = _model(f.folder / "model.safetensors", label_values=(0, 1, 2))
    _truncating_writer(monkeypatch)
    # --progress none: off a terminal predict logs its stages (issue 16), which a failure found only when writing
    # follows; the error itself is one line.
    line = assert_bad_input(["predict", f.image, "--model", model, "-o", f.folder / "out.nii.gz", "--probabilities",
                             f.folder / "p.nii.gz", "--device", "cpu", "--progress", "none"], capsys, "cannot write",
                            f.folder)
    assert "incomplete" in line


@pytest.mark.parametrize("what", ["image", "labels"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_input_is_refused(phantom_files, capsys, what, suffix):
    f = phantom_files
    source = f.image if what == "image" else f.labels
    cut = write_image(sitk.GetArrayFromImage(sitk.ReadImage(str(source))), f.folder / f"cut_{what}{suffix}")
    cut.write_bytes(cut.read_bytes()[:int(cut.stat().st_size * 0.6)])  # an interrupted copy
    image, labels = (cut, f.labels) if what == "image" else (f.image, cut)
    assert_bad_input(["segment", image, labels, "-o", f.folder / "out.nii.gz", *FAST], capsys,
                     f"{what} {cut} is damaged", f.folder)


def test_fifo_image_is_refused_without_hanging(phantom_files):
    """open() on a FIFO without a writer blocks forever, deaf to Ctrl-C: it must be refused before opening."""
    f = phantom_files
    fifo = f.folder / "image.nii.gz.fifo"
    os.mkfifo(fifo)
    before = set(os.listdir(f.folder))
    try:
        result = _subprocess(["segment", fifo, f.labels, "-o", f.folder / "out.nii.gz", "--device", "cpu"],
                             timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a FIFO hung")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"image {fifo} is a FIFO" in result.stderr
    assert set(os.listdir(f.folder)) == before


def test_fifo_model_is_refused(phantom_files, capsys):
    f = phantom_files
    fifo = f.folder / "model.safetensors"
    os.mkfifo(fifo)
    assert_bad_input(["predict", f.image, "--model", fifo, "-o", f.folder / "out.nii.gz", "--device", "cpu"], capsys,
                     f"model {fifo} is a FIFO", f.folder)


# ----------------------------------------------------------------------------------------------- issue 10: refused late
def _no_training(monkeypatch) -> None:
    """Fail loudly if a command gets as far as training: the refusals below must come first."""
    from ContrastiveSegLib import api

    def trained(*args, **kwargs):
        raise AssertionError("training started before the outputs were checked")

    monkeypatch.setattr(api, "segment", trained)
    monkeypatch.setattr(api, "finetune", trained)


@pytest.mark.parametrize("command, output_option, name", [
    ("segment", "-o", "out.nii.gz"),
    ("segment", "--model-out", "model.safetensors"),
    ("segment", "--probabilities", "p.nii.gz"),
    ("finetune", "-o", "model.safetensors"),
    ("predict", "-o", "out.nii.gz"),
    ("predict", "--probabilities", "p.nii.gz"),
])
def test_read_only_output_folder_is_refused_before_any_work(phantom_files, capsys, monkeypatch, command,
                                                            output_option, name):
    from test_io import deny_writes

    f = phantom_files
    read_only = f.folder / "read_only"
    read_only.mkdir()
    model = _model(f.folder / "given.safetensors", label_values=(0, 1, 2))
    _no_training(monkeypatch)
    deny_writes(read_only, monkeypatch)
    inputs = [f.image, "--model", model] if command == "predict" else [f.image, f.labels]
    outputs = ["-o", read_only / name] if output_option == "-o" else \
        ["-o", f.folder / "out.nii.gz", output_option, read_only / name]
    assert_bad_input([command, *inputs, *outputs, "--device", "cpu"], capsys,
                     f"output folder {read_only} is not writable", f.folder)
    assert os.listdir(read_only) == []


@pytest.mark.parametrize("command", ["segment", "predict"])
def test_same_file_for_two_outputs_is_refused(phantom_files, capsys, monkeypatch, command):
    f = phantom_files
    model = _model(f.folder / "given.safetensors", label_values=(0, 1, 2))
    _no_training(monkeypatch)
    inputs = [f.image, "--model", model] if command == "predict" else [f.image, f.labels]
    out = f.folder / "out.nii.gz"
    assert_bad_input([command, *inputs, "-o", out, "--probabilities", f"{f.folder}/../{f.folder.name}/out.nii.gz",
                      "--device", "cpu"], capsys, f"{out} is given for two outputs", f.folder)
