"""Issue 18: hangs, signals, accepted-but-wrong inputs, tracebacks, misleading messages and memory, each at the
lowest level that shows it (the whole CLI runs them in benchmarks/hostile.py)."""
from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from test_cli_errors import _model, assert_bad_input, run
from ContrastiveSegLib.cli import main
from ContrastiveSegLib import options, progress, threads
from ContrastiveSegLib.data.unlabelled import find_volumes
from ContrastiveSegLib.errors import Cancelled, InputError
from ContrastiveSegLib.io.files import check_name_length, check_readable
from ContrastiveSegLib.io.volume import check_volume_suffix, check_writable, read_volume
from ContrastiveSegLib.zoo.weights import read_weights_header, save_weights

REPO = Path(__file__).resolve().parents[2]
FAST = ["--preset", "fast", "--steps", "2", "--device", "cpu", "--threads", "1"]


def _image(path: Path, shape=(6, 20, 20)) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random(shape).astype(np.float32)), str(path))
    return path


# ----------------------------------------------------------------------------------------------- option bounds
@pytest.mark.parametrize("values, phrase", [
    ({"steps": 0}, "--steps must be >= 1, got 0"),
    ({"steps": 10**12}, f"--steps must be <= {options.MAX_STEPS}"),
    ({"adapt_steps": 10**30}, "--adapt-steps must be <="),
    ({"seed": -1}, "--seed must be >= 0"),
    ({"seed": 2**70}, "--seed must be <= 4294967295"),
    ({"batch_size": 10**9}, "--batch-size must be <= 1024"),
    ({"checkpoint_every": -1}, "--checkpoint-every must be >= 0"),
    ({"lr": float("nan")}, "--lr must be a finite number > 0"),
    ({"lr": float("inf")}, "--lr must be a finite number > 0"),
    ({"lr": -1.0}, "--lr must be a finite number > 0"),
    ({"minutes": 1e30}, "--minutes must be a finite number > 0 and <= 527040"),
])
def test_every_count_and_rate_is_bounded(values, phrase):
    with pytest.raises(InputError, match=phrase.replace("+", r"\+")):
        options.check_bounds(values)


def test_bounds_accept_the_defaults_and_the_limits():
    options.check_bounds({"steps": options.MAX_STEPS, "seed": options.MAX_SEED, "lr": options.PRETRAIN_LEARNING_RATE,
                          "checkpoint_every": 0, "adapt_steps": options.ADAPT_STEPS, "patch": 16, "minutes": 0.5,
                          "steps_unrelated": 10**40, "batch_size": None})


def test_threads_are_bounded_and_a_bad_environment_is_settled(monkeypatch):
    with pytest.raises(InputError, match="--threads must be <= 256, got 4096"):
        threads.choose_threads(4096)
    monkeypatch.setenv("OMP_NUM_THREADS", "100000")
    with pytest.raises(InputError, match="OMP_NUM_THREADS=100000 asks for more than 256"):
        threads.choose_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "abc")  # ignored, as torch ignores it; then replaced before torch loads
    assert threads.choose_threads() == threads.default_threads()
    monkeypatch.delitem(sys.modules, "torch")
    threads.settle_environment(1)
    assert os.environ["OMP_NUM_THREADS"] == "1"


def test_omp_num_threads_abc_reaches_no_openmp_runtime(phantom_files):
    f = phantom_files
    env = {**os.environ, "OMP_NUM_THREADS": "abc", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "ContrastiveSegLib", "finetune", str(f.image), str(f.labels), "-o",
                           str(f.folder / "m.safetensors"), *FAST, "--progress", "none"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "libgomp" not in done.stderr


# ----------------------------------------------------------------------------------------------- reading volumes
def test_nan_and_inf_spacing_are_refused(tmp_path):
    source = _image(tmp_path / "a.nii.gz")
    for index, value in ((1, np.nan), (3, np.inf)):
        loaded = nibabel.load(str(source))
        header = loaded.header.copy()
        header["pixdim"][index] = value
        path = tmp_path / f"bad{index}.nii.gz"
        nibabel.save(nibabel.Nifti1Image(np.asarray(loaded.dataobj), None, header), str(path))
        with pytest.raises(InputError, match="unusable voxel spacing"):
            read_volume(path)


def test_sheared_or_scaled_directions_are_refused(tmp_path):
    data = np.zeros((4, 5, 6), np.float32).tobytes()
    sheared = tmp_path / "sheared.nrrd"
    sheared.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 6 5 4\n"
                        b"space directions: (1,0,0) (0.5,1,0) (0,0,1)\nencoding: raw\nendian: little\n"
                        b"space origin: (0,0,0)\n\n" + data)
    scaled = tmp_path / "scaled.mha"
    scaled.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 6 5 4\nElementType = MET_FLOAT\n"
                       b"TransformMatrix = 2 0 0 0 1 0 0 0 1\nElementDataFile = LOCAL\n" + data)
    for path in (sheared, scaled):
        with pytest.raises(InputError, match="not orthonormal"):
            read_volume(path)
    rotated = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    rotated.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(rotated, str(tmp_path / "rotated.nrrd"))
    assert read_volume(tmp_path / "rotated.nrrd").direction == pytest.approx((0, -1, 0, 1, 0, 0, 0, 0, 1))


def test_complex_image_is_refused(tmp_path):
    path = tmp_path / "c.nii.gz"
    nibabel.save(nibabel.Nifti1Image((np.ones((6, 5, 4)) * (1 + 2j)).astype(np.complex64), np.eye(4)), str(path))
    with pytest.raises(InputError, match="holds complex values"):
        read_volume(path)


def test_declared_size_is_checked_before_any_voxel_is_read(tmp_path):
    header = nibabel.Nifti1Header()
    header.set_data_shape((1024, 1024, 512))
    header.set_data_dtype(np.int16)
    liar = tmp_path / "liar.nii"
    liar.write_bytes(header.binaryblock + bytes(4))
    with pytest.raises(InputError, match="declares 1.0 GB of voxel data, but the file holds 352 bytes"):
        read_volume(liar)
    huge = tmp_path / "huge.mha"
    huge.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4096 4096 2048\nElementType = MET_FLOAT\n"
                     b"ElementDataFile = LOCAL\n" + bytes(1000))
    with pytest.raises(InputError, match="declares 128.0 GB of voxel data"):
        read_volume(huge)


def test_metaimage_list_naming_a_fifo_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "slice1.raw")
    (tmp_path / "slice0.raw").write_bytes(bytes(4 * 20))
    header = tmp_path / "list.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 5 2\nElementType = MET_FLOAT\n"
                      "ElementDataFile = LIST 2D\nslice0.raw\nslice1.raw\n")
    with pytest.raises(InputError, match="slice1.raw is a FIFO"):
        read_volume(header)
    pattern = tmp_path / "pattern.mhd"
    pattern.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 5 2\nElementType = MET_FLOAT\n"
                       "ElementDataFile = slice%d.raw 0 1 1\n")
    with pytest.raises(InputError, match="slice1.raw is a FIFO"):
        read_volume(pattern)


def test_unreadable_file_is_reported_as_unreadable(tmp_path, monkeypatch):
    path = _image(tmp_path / "a.nii.gz")
    real_open = builtins.open

    def denied(file, *args, **kwargs):  # what mode 000 gives a user that is not root
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(InputError, match=r"cannot be read \(permission denied\)"):
        check_readable(path, "image")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_mode_000_image_is_reported_as_unreadable(tmp_path):
    path = _image(tmp_path / "a.nii.gz")
    path.chmod(0)
    with pytest.raises(InputError, match=r"cannot be read \(permission denied\)"):
        read_volume(path)


# ----------------------------------------------------------------------------------------------- outputs
def test_output_names_are_checked_against_the_file_system(tmp_path):
    check_writable(tmp_path / ("b" * 240 + ".nii.gz"))  # 247 bytes: fits a 255-byte limit, with its staging folder
    with pytest.raises(InputError, match="allows at most 255"):
        check_name_length(tmp_path / ("a" * 300 + ".nii.gz"))
    with pytest.raises(InputError, match="allows at most 255"):
        check_writable(tmp_path / ("a" * 300 + ".nii.gz"))


def test_upper_case_suffix_is_refused_before_the_run(tmp_path):
    with pytest.raises(InputError, match=r"lower case \(.nii.gz\)"):
        check_volume_suffix(tmp_path / "SEG.NII.GZ")
    check_volume_suffix(tmp_path / "seg.nii.gz")


def test_a_valid_247_character_output_name_is_written(phantom_files, capsys):
    f = phantom_files
    name = "c" * 240 + ".nii.gz"
    code, _, err = run(["segment", f.image, f.labels, "-o", f.folder / name, *FAST], capsys)
    assert code == 0, err
    assert (f.folder / name).is_file()
    assert not [p for p in os.listdir(f.folder) if p.startswith(".")]


def test_deleted_working_folder_with_a_relative_output(phantom_files, capsys, monkeypatch):
    f = phantom_files
    gone = f.folder / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    code, _, err = run(["segment", f.image, f.labels, "-o", "seg.nii.gz", *FAST], capsys)
    assert code == 2 and err.strip() == ("contrastiveseg: error: the working folder no longer exists, so seg.nii.gz "
                                         "has no place; cd to an existing folder or give absolute paths")


# ----------------------------------------------------------------------------------------------- weights
def test_non_finite_weights_are_refused_naming_the_file(phantom_files, capsys):
    f = phantom_files
    model = _model(f.folder / "m.safetensors", label_values=(0, 1, 2))
    from safetensors.torch import load_file

    header, _ = read_weights_header(model)
    tensors = load_file(str(model))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone().fill_(float("inf"))
    bad = f.folder / "bad.safetensors"
    header.pop("format_version")
    save_weights(bad, tensors, header)
    line = assert_bad_input(["predict", f.image, "--model", bad, "-o", f.folder / "o.nii.gz", "--threads", "1"],
                            capsys, f"model {bad} holds", f.folder)
    assert "NaN or infinite values in tensor" in line
    assert_bad_input(["finetune", f.image, f.labels, "--init-model", bad, "-o", f.folder / "o.safetensors", *FAST],
                     capsys, f"model {bad} holds", f.folder)


def test_escape_codes_in_header_text_are_escaped(tmp_path):
    path = tmp_path / "e.safetensors"
    from ContrastiveSegLib.networks import Encoder

    save_weights(path, Encoder(5).state_dict(), {"kind": "encoder", "method": "\x1b[31mred\x1b[0m\x07"})
    header, _ = read_weights_header(path, kind="encoder")
    assert header["method"] == "\\x1b[31mred\\x1b[0m\\x07"


# ----------------------------------------------------------------------------------------------- pretraining data
def test_pretraining_data_must_be_regular_files(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _image(folder / "a.nii.gz", (4, 40, 40))
    os.mkfifo(folder / "b.nii.gz")
    with pytest.raises(InputError, match="which is a FIFO"):
        find_volumes([folder])
    with pytest.raises(InputError, match="data /dev/zero is a device"):
        find_volumes(["/dev/zero"])


def test_junk_pretraining_folder_prints_one_line(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "scan.nii.gz").write_bytes(b"not a volume " * 50)
    (folder / "notes.bin").write_bytes(os.urandom(2048))
    done = subprocess.run([sys.executable, "-m", "ContrastiveSegLib", "pretrain", str(folder), "--method", "simclr",
                           "-o", str(tmp_path / "e.safetensors"), "--threads", "1"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "cannot read" in done.stderr, done.stderr


# ----------------------------------------------------------------------------------------------- streams, argparse
def test_argparse_error_is_one_line(capsys):
    code, _, err = run(["segment", "x.nii.gz"], capsys)
    assert code == 2
    assert err == ("contrastiveseg: error: the following arguments are required: labels, -o/--output "
                   "(see 'contrastiveseg segment --help')\n")


def test_methods_with_stdout_closed_or_gone(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_closed_at_start", {"stdout"})
    code, out, err = run(["methods", "--json"], capsys)
    assert code == 2 and out == "" and "stdout is closed" in err
    monkeypatch.setattr(progress, "_closed_at_start", set())

    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Gone())
    code = main(["methods", "--json"])
    assert code == 2
    assert "cannot write the list of methods to stdout (broken pipe)" in capsys.readouterr().err


def test_stderr_closed_prints_nothing_on_stdout(phantom_files):
    f = phantom_files
    done = subprocess.run(f"{sys.executable} -m ContrastiveSegLib segment {f.folder / 'missing.nii.gz'} {f.labels} "
                          f"-o {f.folder / 'o.nii.gz'} --threads 1 2>&-", shell=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 2 and done.stdout == ""


# ----------------------------------------------------------------------------------------------- cancelling
def test_cancel_passes_through_code_that_wraps_every_exception(monkeypatch):
    """MONAI's padding turns any Exception into a ValueError naming the tensor; a cancel must come through."""
    from monai.transforms.croppad import functional

    raised: list[BaseException] = []

    def interrupted(*args, **kwargs):  # where a signal handler raises: inside torch's pad
        raise raised[-1]

    monkeypatch.setattr(functional, "pad_pt", interrupted)
    raised.append(RuntimeError("cancelled"))  # what Cancelled used to be: replaced by MONAI's ValueError
    with pytest.raises(ValueError, match="constant"):
        functional.pad_nd(torch.zeros(1, 4, 4), [(0, 0), (0, 2), (0, 2)], mode="constant", value=255)
    raised.append(Cancelled("cancelled"))
    with pytest.raises(Cancelled):
        functional.pad_nd(torch.zeros(1, 4, 4), [(0, 0), (0, 2), (0, 2)], mode="constant", value=255)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_signal_during_fine_tuning_exits_130_with_the_line(phantom_files, signum):
    f = phantom_files
    child = subprocess.Popen([sys.executable, "-m", "ContrastiveSegLib", "segment", str(f.image), str(f.labels), "-o",
                              str(f.folder / "seg.nii.gz"), "--preset", "fast", "--steps", "2000", "--threads", "1",
                              "--device", "cpu", "--progress", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for line in child.stdout:
            if json.loads(line)["stage"] == "finetune":
                break
        child.send_signal(signum)
        _, err = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 130
    assert err == "contrastiveseg: error: cancelled; nothing was written\n"
    assert not (f.folder / "seg.nii.gz").exists()
