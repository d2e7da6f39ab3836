"""Issue 18, data loss first: an output that is an input is refused before anything runs (exit 2, one line), for
every command and every way of naming the same file (the same path, ``sub/..``, a symbolic link, a hard link, a
detached header's data file); and stale staging folders left by a killed run are removed by the next one."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from test_cli_errors import _model, assert_bad_input
from ContrastiveSegLib.io.volume import remove_stale_staging, write_volume, Volume

FAST = ["--preset", "fast", "--steps", "2", "--device", "cpu", "--threads", "1"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("how", ["image", "labels", "dotdot", "symlink", "hardlink", "probabilities"])
def test_segment_output_that_is_an_input_is_refused(phantom_files, capsys, how):
    f = phantom_files
    (f.folder / "sub").mkdir()
    before = {p: _digest(p) for p in (f.image, f.labels)}
    output = {"image": f.image, "labels": f.labels, "dotdot": f.folder / "sub" / ".." / "image.nii.gz",
              "probabilities": f.folder / "seg.nii.gz"}.get(how)
    if how == "symlink":
        output = f.folder / "link.nii.gz"
        output.symlink_to(f.image)
    if how == "hardlink":
        output = f.folder / "hard.nii.gz"
        os.link(f.image, output)
    argv = ["segment", f.image, f.labels, "-o", output, *FAST]
    if how == "probabilities":
        argv += ["--probabilities", f.image]
    line = assert_bad_input(argv, capsys, "would overwrite an input", f.folder)
    assert ("is the labels" if how == "labels" else "is the image") in line
    assert {p: _digest(p) for p in before} == before  # the scan and the painting are untouched


def test_predict_labels_as_output_is_refused(phantom_files, capsys):
    f = phantom_files
    model = _model(f.folder / "m.safetensors", label_values=(0, 1, 2))
    before = _digest(f.labels)
    assert_bad_input(["predict", f.image, "--model", model, "--labels", f.labels, "-o", f.labels, "--threads", "1"],
                     capsys, f"output {f.labels} is the labels {f.labels}", f.folder)
    assert _digest(f.labels) == before


def test_finetune_over_the_model_it_refines_is_refused(phantom_files, capsys):
    f = phantom_files
    model = _model(f.folder / "m.safetensors", label_values=(0, 1, 2))
    assert_bad_input(["finetune", f.image, f.labels, "--init-model", model, "-o", model, *FAST], capsys,
                     "is the model to refine", f.folder)


def test_model_out_over_the_encoder_is_refused(phantom_files, capsys):
    f = phantom_files
    encoder = _model(f.folder / "enc.safetensors")
    assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "s.nii.gz", "--encoder", encoder,
                      "--model-out", encoder, *FAST], capsys, "is the encoder", f.folder)


def test_detached_header_data_file_counts_as_the_input(phantom_files, capsys):
    """An .mhd output writes NAME.zraw beside it: that must not be the input's data file either."""
    f = phantom_files
    header = f.folder / "scan.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
                      "ElementDataFile = seg.zraw\n")
    (f.folder / "seg.zraw").write_bytes(bytes(64))
    assert_bad_input(["segment", header, f.labels, "-o", f.folder / "seg.mhd", *FAST], capsys,
                     "would overwrite an input", f.folder)


def test_pretrain_output_over_its_data_or_checkpoint_is_refused(phantom_files, capsys):
    f = phantom_files
    encoder = _model(f.folder / "enc.safetensors")
    assert_bad_input(["pretrain", f.image, "--method", "simclr", "-o", encoder, "--resume", encoder, "--threads",
                      "1"], capsys, "is the checkpoint to resume", f.folder)


def test_stale_staging_folder_of_a_dead_run_is_removed(tmp_path):
    """A SIGKILL while staging leaves ``.NAME.tmp-PID@HOST-*``; the next successful write of NAME removes it, but
    not the folder of a run that is still alive (two runs writing the same output) nor an unknown layout."""
    import socket
    import subprocess
    import sys

    import numpy as np

    output = tmp_path / "seg.nii.gz"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".seg.nii.gz.tmp-{int(dead.stdout)}@{host}-abcd1234"
    live = tmp_path / f".seg.nii.gz.tmp-{os.getppid()}@{host}-efgh5678"
    other = tmp_path / ".seg.nii.gz.tmp-unknown"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "seg.nii.gz").write_bytes(b"half")
    write_volume(Volume(np.zeros((2, 3, 4), np.uint8)), output)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["seg.nii.gz", live.name, other.name])
    assert remove_stale_staging(output) == []
