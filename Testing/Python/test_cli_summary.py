"""What a run tells the user: the end-of-run summary, ``--reference`` (Dice and volume difference), ``--overlay``,
the probabilities file's channel labels, ``--no-shape-prior``, and image and labels given the other way round.

The runs train for 3 steps only: these tests check what is reported and written, not segmentation quality
(test_cli_segment.py does that).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PHANTOM_SPACING, dice, make_phantom, write_image
from ContrastiveSegLib import cli
from ContrastiveSegLib.cli import main
from ContrastiveSegLib.io.volume import (CHANNEL_LABELS_KEY, Volume, channel_labels_metadata, read_channel_labels,
                                         write_volume)
from ContrastiveSegLib.report import RunSummary, label_volumes, reference_scores

TRAIN = ["--preset", "fast", "--steps", "3", "--batch-size", "2", "--seed", "0", "--device", "cpu"]
VOXEL_ML = float(np.prod(PHANTOM_SPACING)) / 1000.0
PNG = b"\x89PNG\r\n\x1a\n"


def _main(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _no_training(monkeypatch) -> None:
    from ContrastiveSegLib import api

    def trained(*args, **kwargs):
        raise AssertionError("training started before the inputs were checked")

    for name in ("segment", "finetune", "predict"):
        monkeypatch.setattr(api, name, trained)


def _bad_input(argv, monkeypatch, folder: Path) -> str:
    """Exit 2, one stderr line, nothing new in ``folder``, no training; returns the line."""
    _no_training(monkeypatch)
    before = set(os.listdir(folder))
    code, _, err = _main(argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("contrastiveseg: error: "), err
    assert set(os.listdir(folder)) == before
    return err.strip()


class Run:
    folder: Path
    image: Path
    labels: Path
    reference: Path
    output: Path
    probabilities: Path
    overlay: Path
    model: Path
    events: list
    err: str


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """One segment run with every reporting option, progress as JSON."""
    r = Run()
    r.folder = tmp_path_factory.mktemp("summary")
    phantom = make_phantom()
    r.image = write_image(phantom.image, r.folder / "image.nii.gz")
    r.labels = write_image(phantom.sparse, r.folder / "labels.nii.gz")
    r.reference = write_image(phantom.reference, r.folder / "reference.nii.gz")
    r.output, r.probabilities = r.folder / "seg.nii.gz", r.folder / "probs.nrrd"
    r.overlay, r.model = r.folder / "overlay.png", r.folder / "model.safetensors"
    code, out, r.err = _main(["segment", r.image, r.labels, "-o", r.output, "--probabilities", r.probabilities,
                              "--model-out", r.model, "--reference", r.reference, "--overlay", r.overlay,
                              "--progress", "json", *TRAIN])
    assert code == 0, r.err
    r.events = [json.loads(line) for line in out.strip().splitlines()]  # stdout: JSON lines only
    return r


# ----------------------------------------------------------------------------------------------- the summary
def test_json_lines_stay_parseable_and_the_last_carries_the_summary(run):
    assert all({"stage", "step", "of"} <= set(event) for event in run.events)
    done = run.events[-1]
    assert done["stage"] == "done"
    summary = done["summary"]
    assert summary["command"] == "segment" and summary["plane"] == "k" and summary["annotated_slices"] == 3
    assert summary["device"] == "cpu" and summary["threads"] >= 1 and summary["encoder"]
    # Reading the files and loading torch are two lines: 'load' is the files' time, not torch's 20 s.
    assert list(summary["seconds"]) == ["load", "import torch", "prepare", "finetune", "predict", "evaluate",
                                        "write"]
    assert all(v >= 0 for v in summary["seconds"].values())
    # The last message names every file written, not only the label map.
    assert done["message"] == "wrote " + ", ".join(str(p) for p in (run.probabilities, run.model, run.overlay,
                                                                      run.output))
    assert summary["files"] == [{"path": str(run.probabilities), "kind": "probabilities"},
                                {"path": str(run.model), "kind": "model"},
                                {"path": str(run.overlay), "kind": "overlay picture"},
                                {"path": str(run.output), "kind": "label map"}]
    assert summary["probabilities_channels"] == [0, 1, 2]


def test_summary_volumes_are_those_of_the_written_label_map(run):
    labels = _array(run.output)
    rows = run.events[-1]["summary"]["labels"]
    assert [row["label"] for row in rows] == [1, 2]
    for row in rows:
        voxels = int(np.count_nonzero(labels == row["label"]))
        assert row["voxels"] == voxels
        assert row["ml"] == pytest.approx(voxels * VOXEL_ML, abs=1e-3)


def test_reference_dice_and_volume_difference_are_those_of_the_files(run):
    labels, reference = _array(run.output), _array(run.reference)
    rows = run.events[-1]["summary"]["reference"]
    assert [row["label"] for row in rows] == [1, 2]
    for row in rows:
        value = row["label"]
        assert row["dice"] == pytest.approx(dice(labels, reference, value), abs=1e-4)
        predicted, expected = np.count_nonzero(labels == value), np.count_nonzero(reference == value)
        assert row["reference_ml"] == pytest.approx(expected * VOXEL_ML, abs=1e-3)
        assert row["difference_ml"] == pytest.approx((predicted - expected) * VOXEL_ML, abs=1e-3)
        assert row["difference_percent"] == pytest.approx(100 * (predicted - expected) / expected, abs=0.06)


def test_printed_summary_goes_to_stderr_with_one_line_per_fact(run):
    lines = run.err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("summary of segment: "))
    text = "\n".join(lines[start:])
    assert "  device     cpu, " in text and " CPU thread" in text
    assert "  plane      slices along k (3 annotated slices)" in text
    assert "  time       load " in text and "finetune" in text and "write" in text
    summary = run.events[-1]["summary"]
    for row in summary["labels"]:
        assert f"  label {row['label']:<4} {row['voxels']:>10,} voxels" in text
    for row in summary["reference"]:
        assert f"  label {row['label']:<4} Dice {row['dice']:.3f}" in text
    assert "channels   of the probabilities: 0 = background, 1 = label 1, 2 = label 2" in text
    for path in (run.probabilities, run.model, run.overlay, run.output):
        assert f"  wrote      {path} (" in text
    # No summary line reads as a note or an error to a front end that watches for "contrastiveseg: ".
    assert not any(line.startswith("contrastiveseg: ") for line in lines[start:])


def test_summary_goes_to_stdout_at_a_terminal_unless_progress_is_json(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    class Printer:
        def __init__(self, mode):
            self.mode = mode

    monkeypatch.setattr("sys.stdout", Terminal())
    assert cli._summary_stream(None) is cli.sys.stdout
    assert cli._summary_stream(Printer("bar")) is cli.sys.stdout
    assert cli._summary_stream(Printer("json")) is cli.sys.stderr
    monkeypatch.setattr("sys.stdout", io.StringIO())  # a pipe or a file
    assert cli._summary_stream(None) is cli.sys.stderr


def test_finetune_and_predict_end_with_a_summary(run, tmp_path):
    model = tmp_path / "model.safetensors"
    code, out, err = _main(["finetune", run.image, run.labels, "-o", model, *TRAIN])
    assert code == 0, err
    assert out == ""  # not a terminal: everything on stderr
    assert "summary of finetune: " in err and f"  wrote      {model} (model)" in err
    assert "  plane      slices along k (3 annotated slices)" in err and "(painted)" in err
    output, overlay, probabilities = tmp_path / "out.nrrd", tmp_path / "pred.png", tmp_path / "p.nii.gz"
    code, out, err = _main(["predict", run.image, "--model", model, "--labels", run.labels, "-o", output,
                            "--reference", run.reference, "--overlay", overlay, "--probabilities", probabilities,
                            "--device", "cpu"])
    assert code == 0, err
    assert "summary of predict: " in err and "Dice" in err and f"  wrote      {output} (label map)" in err
    # predict used a fine-tuned model: it says so, not "encoder random" as if the model were untrained
    assert f"  model      {model} (fine-tuned from encoder random)" in err and "  encoder " not in err
    assert overlay.read_bytes()[:8] == PNG
    assert read_channel_labels(probabilities) == (0, 1, 2)  # NIfTI: in the description
    assert sitk.ReadImage(str(probabilities)).GetMetaData("descrip") == "channel labels: 0-2"


# ----------------------------------------------------------------------------------------------- overlay
def test_overlay_is_a_png(run):
    data = run.overlay.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG
    from matplotlib.image import imread

    picture = imread(str(run.overlay))
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100


def test_overlay_of_another_type_is_refused_before_work(phantom_files, monkeypatch):
    f = phantom_files
    line = _bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--overlay",
                       f.folder / "overlay.jpg"], monkeypatch, f.folder)
    assert "overlay" in line and "must end in .png" in line


# ----------------------------------------------------------------------------------------------- reference
def test_reference_scores_on_known_arrays():
    labels = np.zeros((4, 10, 10), np.uint8)
    reference = np.zeros_like(labels)
    reference[1:3, 2:7, 2:7] = 1  # 50 voxels
    labels[1:3, 2:7, 3:8] = 1  # 50 voxels, 40 of them shared
    reference[3, 0:2, 0:5] = 2  # 10 voxels that the labels miss entirely
    labels[0, 0, 0] = 3  # 1 voxel the reference does not have
    rows = {row["label"]: row for row in reference_scores(labels, reference, (2.0, 1.0, 0.5))}  # 1 mm3 voxels
    assert rows[1]["dice"] == pytest.approx(0.8) and rows[1]["difference_ml"] == 0.0
    assert rows[1]["ml"] == rows[1]["reference_ml"] == pytest.approx(0.05)
    assert rows[2]["dice"] == 0.0 and rows[2]["difference_ml"] == pytest.approx(-0.01)
    assert rows[2]["difference_percent"] == -100.0
    assert rows[3]["dice"] == 0.0 and rows[3]["difference_percent"] is None
    assert reference_scores(labels, labels, (1, 1, 1))[0]["dice"] == 1.0


def test_reference_scores_on_the_phantom_against_a_shifted_copy(phantom):
    shifted = np.roll(phantom.reference, 2, axis=2)
    rows = {row["label"]: row for row in reference_scores(shifted, phantom.reference, PHANTOM_SPACING)}
    for value in (1, 2):
        assert rows[value]["dice"] == pytest.approx(dice(shifted, phantom.reference, value), abs=1e-4)
        assert 0.5 < rows[value]["dice"] < 1.0
        assert rows[value]["difference_ml"] == pytest.approx(0.0, abs=1e-9)  # a shift keeps the volume
    volumes = {row["label"]: row for row in label_volumes(phantom.reference, PHANTOM_SPACING, values=[1, 2, 5])}
    assert volumes[5]["voxels"] == 0  # a structure asked for but absent is reported as empty
    assert volumes[1]["ml"] == pytest.approx(np.count_nonzero(phantom.reference == 1) * VOXEL_ML, abs=1e-3)


@pytest.mark.parametrize("command", ["segment", "predict"])
@pytest.mark.parametrize("change, phrase", [({"spacing": (0.9, 0.9, 3.0)}, "spacing differs"),
                                            ({"crop": True}, "size differs")])
def test_reference_on_another_grid_is_refused_before_work(phantom_files, monkeypatch, command, change, phrase):
    f = phantom_files
    change = dict(change)  # the parameter's dict is shared by both commands
    reference = f.phantom.reference[:, :, :40] if change.pop("crop", False) else f.phantom.reference
    other = write_image(reference, f.folder / "reference_other_grid.nii.gz", **change)
    (f.folder / "m.safetensors").write_bytes(b"")  # a model file is there (a missing one is refused first)
    inputs = [f.image, "--model", f.folder / "m.safetensors"] if command == "predict" else [f.image, f.labels]
    line = _bad_input([command, *inputs, "-o", f.folder / "out.nii.gz", "--reference", other, "--device", "cpu"],
                      monkeypatch, f.folder)
    assert "image and reference are on different grids: " + phrase in line


def test_an_image_given_as_reference_is_refused(phantom_files, monkeypatch):
    f = phantom_files
    line = _bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--reference", f.image],
                      monkeypatch, f.folder)
    assert "reference labels are not integers" in line and "rather than a label map" in line


# ----------------------------------------------------------------------------------------------- swapped inputs
@pytest.mark.parametrize("command", ["segment", "finetune"])
def test_image_and_labels_swapped_are_refused_before_training(phantom_files, monkeypatch, command):
    f = phantom_files
    out = f.folder / ("model.safetensors" if command == "finetune" else "out.nii.gz")
    line = _bad_input([command, f.labels, f.image, "-o", out], monkeypatch, f.folder)
    assert "did you swap the image and the labels?" in line and f"contrastiveseg {command} IMAGE LABELS" in line


@pytest.mark.parametrize("dtype", [np.int16, np.uint8])
def test_an_integer_image_as_labels_is_refused_by_its_many_values(phantom_files, monkeypatch, dtype):
    """A CT in Hounsfield units or an 8-bit MR passed as LABELS: whole numbers, but hundreds of them."""
    f = phantom_files
    image = np.clip(np.round(f.phantom.image * 2), 0, 255).astype(dtype)
    assert len(np.unique(image)) > 100
    as_labels = write_image(image, f.folder / "integer_image.nii.gz")
    line = _bad_input(["segment", f.image, as_labels, "-o", f.folder / "out.nii.gz"], monkeypatch, f.folder)
    assert "distinct values; a label map of painted structures holds at most 50" in line
    assert "did you swap the image and the labels?" in line


def test_an_image_as_predict_labels_is_refused(phantom_files, monkeypatch):
    f = phantom_files
    (f.folder / "m.safetensors").write_bytes(b"")  # a model file is there (a missing one is refused first)
    line = _bad_input(["predict", f.image, "--model", f.folder / "m.safetensors", "--labels", f.image, "-o",
                       f.folder / "out.nii.gz"], monkeypatch, f.folder)
    assert "labels are not integers" in line and "rather than this scan's sparse label map" in line


def test_a_label_map_with_many_structures_is_still_accepted(phantom_files, monkeypatch):
    """Up to 50 label values pass the check (and go on to training)."""
    from ContrastiveSegLib import api

    f = phantom_files
    many = f.phantom.sparse.astype(np.uint16)
    for value in range(3, 51):  # 48 more structures, one voxel row each on an annotated slice
        many[f.phantom.slices[0], value - 3, 0] = value
    labels = write_image(many, f.folder / "many.nii.gz")
    reached = {}

    def segment(image, labels, spacing, **kwargs):
        reached["values"] = len(np.unique(labels)) - 1
        raise cli.InputError("stopped by the test")

    monkeypatch.setattr(api, "segment", segment)
    code, _, err = _main(["segment", f.image, labels, "-o", f.folder / "out.nii.gz"])
    assert code == 2 and "stopped by the test" in err
    assert reached["values"] == 50


# ----------------------------------------------------------------------------------------------- --no-shape-prior
@pytest.mark.parametrize("flag, expected", [([], True), (["--no-shape-prior"], False)])
def test_no_shape_prior_reaches_the_api(phantom_files, monkeypatch, flag, expected):
    from ContrastiveSegLib import api

    f = phantom_files
    seen = {}

    def capture(*args, **kwargs):
        seen["shape_prior"] = kwargs["shape_prior"]
        raise cli.InputError("stopped by the test")

    monkeypatch.setattr(api, "segment", capture)
    monkeypatch.setattr(api, "predict", capture)
    monkeypatch.setattr("ContrastiveSegLib.model.TrainedModel.load", lambda path: None)
    (f.folder / "m.safetensors").write_bytes(b"")  # there, though never read (load is replaced)
    assert _main(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", *flag])[0] == 2
    assert seen.pop("shape_prior") is expected
    assert _main(["predict", f.image, "--model", f.folder / "m.safetensors", "-o", f.folder / "out.nii.gz",
                  *flag])[0] == 2
    assert seen.pop("shape_prior") is expected
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["segment"].format_help()
    assert "do not weigh in the painted outlines interpolated between the painted slices" in " ".join(
        help_text.split())


# ----------------------------------------------------------------------------------------------- channel labels
def test_probabilities_file_records_its_channel_labels(run):
    assert read_channel_labels(run.probabilities) == (0, 1, 2)
    header = sitk.ImageFileReader()
    header.SetFileName(str(run.probabilities))
    header.ReadImageInformation()
    assert header.GetMetaData(CHANNEL_LABELS_KEY) == "0,1,2"  # an NRRD key/value field


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("values", [(0, 1, 2), (0, 3, 7, 8, 9, 300), tuple(range(0, 120))])
def test_channel_labels_round_trip(tmp_path, suffix, values):
    path = tmp_path / f"probs{suffix}"
    channels = np.random.default_rng(0).random((len(values), 2, 3, 4)).astype(np.float32)
    write_volume(Volume(channels, (0.5, 0.6, 2.0)), path, metadata=channel_labels_metadata(values))
    assert read_channel_labels(path) == values
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), channels)


def test_labels_that_do_not_fit_the_nifti_description_are_left_out_there(tmp_path):
    values = tuple(range(0, 400, 2))  # no runs to compress: far beyond 80 characters
    metadata = channel_labels_metadata(values)
    for suffix, expected in ((".nii.gz", None), (".nrrd", values)):
        path = tmp_path / f"probs{suffix}"
        write_volume(Volume(np.zeros((2, 2, 3, 4), np.float32)), path, metadata=metadata)
        assert read_channel_labels(path) == expected
    assert read_channel_labels(tmp_path / "probs.nii.gz") is None  # never a wrong, truncated list


def test_a_file_without_channel_labels_reads_as_none(run):
    assert read_channel_labels(run.output) is None


def test_run_summary_without_outputs_says_so():
    lines = RunSummary("segment").lines()
    assert lines[0] == "summary of segment: 0.0 s in all" and lines[-1] == "  wrote      nothing"


def test_no_evaluate_time_without_a_reference_and_label_names_from_the_header(run, tmp_path):
    # A label map saved by Slicer as a segmentation (.seg.nrrd) names its segments: the summary uses the names.
    labels = sitk.ReadImage(str(run.labels))
    for index, (value, name) in enumerate([(1, "liver"), (2, "left kidney")]):
        labels.SetMetaData(f"Segment{index}_Name", name)
        labels.SetMetaData(f"Segment{index}_LabelValue", str(value))
    named = tmp_path / "painted.seg.nrrd"
    sitk.WriteImage(labels, str(named))
    output = tmp_path / "out.nii.gz"
    code, out, err = _main(["segment", run.image, named, "-o", output, "--progress", "json", *TRAIN])
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])["summary"]
    assert "evaluate" not in summary["seconds"]  # nothing was evaluated: no "evaluate 0.0 s"
    assert summary["label_names"] == {"1": "liver", "2": "left kidney"}
    assert "  label 1 (liver) " in err and "  label 2 (left kidney) " in err
