"""``contrastiveseg demo`` end to end on the bundled sample, its baseline runner, and its bad-input errors.

The end-to-end run fine-tunes for 10 steps only (about 15-25 s on 2 busy cores). The real baselines run in
child processes; loading ITK's wrapping for Fill between slices alone takes 10-20 s, so the end-to-end run
swaps both for stand-ins (one that works, one whose package is "missing") and the real grow-cut runs through
the child-process runner on a tiny volume instead.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import threading

import numpy as np
import pytest
import SimpleITK as sitk

from ContrastiveSegLib import demo as demo_module
from ContrastiveSegLib.cli import main
from ContrastiveSegLib.data.sample import load_sample
from ContrastiveSegLib.errors import Cancelled
from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, dice_per_label
from ContrastiveSegLib.evaluation.pictures import DPI, PANEL_INCHES

OUTPUTS = ["image.nii.gz", "overlay.png", "reference.nii.gz", "results.json", "segmentation.nii.gz",
           "sparse_labels.nii.gz"]
METHODS = ["ContrastiveSeg", "Grow from seeds", "Fill between slices"]
MISSING_HINT = "Fill between slices needs ITK's contour interpolator: pip install itk-morphologicalcontourinterpolation"


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _stand_in_baseline(name, image, sparse, axis, spacing, cancel=None):
    """Grow from seeds: the sparse labels copied to the slice after each annotated one; Fill: package missing."""
    if name == "Fill between slices":
        raise ImportError(MISSING_HINT)
    labels = sparse.copy()
    annotated = np.flatnonzero(sparse.any(axis=(1, 2)))
    labels[annotated + 1] = sparse[annotated]
    return labels


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run shared by the tests below: 10 fine-tuning steps on the CPU, seed 0, stand-in baselines."""
    folder = tmp_path_factory.mktemp("demo") / "out"  # missing: the demo creates it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_module, "run_baseline", _stand_in_baseline)
        code, out, err = _run(["demo", "-o", str(folder), "--steps", "10", "--device", "cpu", "--seed", "0"])
    results = json.loads((folder / "results.json").read_text()) if code == 0 else None
    return {"code": code, "out": out, "err": err, "folder": folder, "results": results}


def test_demo_writes_every_output_and_nothing_else(demo):
    assert demo["code"] == 0, demo["err"]
    assert sorted(p.name for p in demo["folder"].iterdir()) == OUTPUTS  # no temporary file left behind
    assert (demo["folder"] / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_hold_dice_per_structure_for_each_method(demo):
    results = demo["results"]
    assert [m["name"] for m in results["methods"]] == ["ContrastiveSeg", "Grow from seeds"]
    # A baseline whose package is missing is skipped with a one-line note carrying its pip hint.
    assert results["skipped"] == {"Fill between slices": MISSING_HINT}
    assert f"note: Fill between slices skipped: {MISSING_HINT}\n" in demo["err"]
    for method in results["methods"]:
        assert set(method["dice"]) == {"grey matter", "white matter"}
        assert all(0.0 <= d <= 1.0 for d in method["dice"].values())
        assert method["mean_dice"] == pytest.approx(np.mean(list(method["dice"].values())), abs=1e-4)
        assert method["seconds"] >= 0
    # The stand-in holds the 3 annotated slices and a copy of each on the next slice, the rest empty: its Dice,
    # scored by the demo against the whole reference, must be the one computed here from those 6 slices.
    image, labels = load_sample("mni152_2mm")
    reference = sitk.GetArrayFromImage(labels)
    prediction = np.zeros_like(reference)
    rows = np.array(results["annotated_slices"])
    prediction[rows] = prediction[rows + 1] = reference[rows]
    expected = dice_per_label(prediction, reference, [1, 2])
    grow = results["methods"][1]["dice"]
    assert [grow["grey matter"], grow["white matter"]] == pytest.approx([expected[1], expected[2]], abs=1e-4)
    assert max(expected.values()) < 0.2


def test_printed_table_matches_results(demo):
    assert all(name in demo["out"] for name in METHODS[:2]) and METHODS[2] in demo["err"]
    for method in demo["results"]["methods"]:
        row = next(line for line in demo["out"].splitlines() if line.startswith(method["name"]))
        numbers = [float(v) for v in re.findall(r"\d+\.\d+", row)]
        expected = [method["dice"]["grey matter"], method["dice"]["white matter"], method["mean_dice"]]
        assert numbers[:3] == pytest.approx(expected, abs=5e-4 + 1e-9)  # printed with 3 decimals (a half rounds either way)


def test_demo_says_what_dice_is_against_what_the_baselines_are_and_what_it_wrote(demo):
    out = demo["out"]
    assert "Dice: overlap with the sample's full grey matter and white matter labels (reference.nii.gz)" in out
    assert "Grow from seeds grows the annotated slices" in out and "Fill between slices interpolates" in out
    listing = next(line for line in out.splitlines() if line.startswith("wrote "))
    assert str(demo["folder"]) in listing and all(f"{name} (" in listing for name in OUTPUTS)
    assert demo["results"]["threads"] >= 1


def test_volumes_keep_the_sample_grid_and_the_scores_are_those_of_the_files(demo):
    image, labels = load_sample("mni152_2mm")
    reference = sitk.GetArrayFromImage(labels)
    results = demo["results"]
    slices = choose_annotated_slices(reference, 0, 3, [1, 2])
    assert results["annotated_slices"] == slices and results["k"] == 3 and results["axis"] == "k"
    volumes = {name: sitk.ReadImage(str(demo["folder"] / name)) for name in OUTPUTS if name.endswith(".nii.gz")}
    for volume in volumes.values():
        assert volume.GetSize() == image.GetSize() == (99, 117, 95)
        assert volume.GetSpacing() == pytest.approx(image.GetSpacing())
        assert volume.GetOrigin() == pytest.approx(image.GetOrigin())
        assert volume.GetDirection() == pytest.approx(image.GetDirection())
    arrays = {name: sitk.GetArrayFromImage(v) for name, v in volumes.items()}
    np.testing.assert_array_equal(arrays["reference.nii.gz"], reference)
    np.testing.assert_array_equal(arrays["image.nii.gz"], sitk.GetArrayFromImage(image))
    sparse = arrays["sparse_labels.nii.gz"]
    assert np.flatnonzero(sparse.any(axis=(1, 2))).tolist() == slices
    np.testing.assert_array_equal(sparse[slices], reference[slices])
    segmentation = arrays["segmentation.nii.gz"]
    np.testing.assert_array_equal(segmentation[slices], reference[slices])  # annotated slices are kept as drawn
    scores = dice_per_label(segmentation, reference, [1, 2])
    ours = results["methods"][0]["dice"]
    assert [ours["grey matter"], ours["white matter"]] == pytest.approx([scores[1], scores[2]], abs=1e-4)


def test_overlay_has_one_column_per_layer(demo):
    from matplotlib.image import imread

    picture = imread(str(demo["folder"] / "overlay.png"))
    columns = 2 + len(demo["results"]["methods"])  # image, reference, then each method that ran
    assert picture.shape[1] == int(round(columns * PANEL_INCHES * DPI))
    assert picture.shape[0] > 3 * PANEL_INCHES * DPI  # four rows of slices


@pytest.mark.parametrize("make_bad, expected", [
    (lambda tmp: tmp / "missing" / "out", "parent does not exist"),
    (lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt", "exists and is not a folder"),
])
def test_bad_output_folder_is_a_one_line_error_and_writes_nothing(tmp_path, make_bad, expected):
    target = make_bad(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out, err = _run(["demo", "-o", str(target), "--steps", "1"])
    assert code == 2
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("option, expected", [(["--k", "0"], "--k must be at least 1"),
                                              (["--preset", "slow"], "unknown preset 'slow'"),
                                              (["--steps", "0"], "steps must be >= 1")])
def test_bad_options_fail_before_any_work(tmp_path, option, expected):
    code, out, err = _run(["demo", "-o", str(tmp_path / "out"), *option])
    assert code == 2 and expected in err
    assert not (tmp_path / "out").exists()


def test_no_baselines_runs_only_contrastiveseg(tmp_path, monkeypatch):
    from ContrastiveSegLib import api

    def fake_segment(image, labels, spacing, **kwargs):
        return api.SegmentResult(labels=labels.copy(), axis=kwargs["axis"])

    def no_baseline(*args, **kwargs):
        raise AssertionError("a baseline ran despite --no-baselines")

    monkeypatch.setattr(api, "segment", fake_segment)
    monkeypatch.setattr(demo_module, "run_baseline", no_baseline)
    code, out, err = _run(["demo", "-o", str(tmp_path / "out"), "--no-baselines", "--k", "1"])
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [m["name"] for m in results["methods"]] == ["ContrastiveSeg"] and results["skipped"] == {}
    assert results["k"] == 1 and "Grow from seeds" not in out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("slicer") is None, reason="slicer-core is not installed")
def test_real_grow_from_seeds_runs_in_a_child_process():
    # A bright 10 x 10 square on 0, through all 9 slices, annotated on slices 1 and 7: grow-cut's paths into
    # the square cost nothing and out of it 100, so every slice comes out exactly like the truth (Slicer's
    # 3-voxel margin around the seeds reaches slices 0 and 8).
    image = np.zeros((9, 20, 20), np.float32)
    image[:, 5:15, 5:15] = 100
    truth = (image > 0).astype(np.uint8)
    sparse = np.zeros_like(truth)
    sparse[[1, 7]] = truth[[1, 7]]
    labels = demo_module.run_baseline("Grow from seeds", image, sparse, 0, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(labels, truth)


def test_child_failures_and_cancel_are_reported(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    image = np.zeros((3, 4, 4), np.float32)
    sparse = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(RuntimeError, match="ValueError: unknown baseline 'nonsense'"):
        demo_module.run_baseline("nonsense", image, sparse, 0, (1.0, 1.0, 1.0))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        demo_module.run_baseline("Grow from seeds", image, sparse, 0, (1.0, 1.0, 1.0), cancel)
    assert not list(tmp_path.iterdir())  # its working folder is gone
