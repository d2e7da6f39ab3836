"""``contrastiveseg demo`` end to end on the bundled sample (a 10-step budget), and its bad-output-folder errors."""
from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from ContrastiveSegLib.cli import main
from ContrastiveSegLib.data.sample import load_sample
from ContrastiveSegLib.evaluation import choose_annotated_slices, dice_per_label
from ContrastiveSegLib.visualize import DPI, PANEL_INCHES

OUTPUTS = ["image.nii.gz", "overlay.png", "reference.nii.gz", "results.json", "segmentation.nii.gz",
           "sparse_labels.nii.gz"]
METHODS = ["ContrastiveSeg", "Grow from seeds", "Fill between slices"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run shared by the tests below: 10 fine-tuning steps, both baselines, seed 0, on the CPU."""
    folder = tmp_path_factory.mktemp("demo") / "out"  # missing: the demo creates it
    code, out, err = _run(["demo", "-o", str(folder), "--steps", "10", "--device", "cpu", "--seed", "0"])
    results = json.loads((folder / "results.json").read_text()) if code == 0 else None
    return {"code": code, "out": out, "err": err, "folder": folder, "results": results}


def test_demo_writes_every_output_and_nothing_else(demo):
    assert demo["code"] == 0, demo["err"]
    assert sorted(p.name for p in demo["folder"].iterdir()) == OUTPUTS  # no temporary file left behind
    assert (demo["folder"] / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_hold_dice_per_structure_for_each_method(demo):
    results = demo["results"]
    ran = [m["name"] for m in results["methods"]]
    assert ran[0] == "ContrastiveSeg"
    # Every baseline either ran or was skipped with a one-line note saying why (its optional package is missing).
    assert sorted(ran + list(results["skipped"])) == sorted(METHODS)
    for name, reason in results["skipped"].items():
        assert f"note: {name} skipped: {reason}" in demo["err"] and "\n" not in reason
    for method in results["methods"]:
        assert set(method["dice"]) == {"grey matter", "white matter"}
        assert all(0.0 <= d <= 1.0 for d in method["dice"].values())
        assert method["mean_dice"] == pytest.approx(np.mean(list(method["dice"].values())), abs=1e-4)
        assert method["seconds"] > 0


def test_printed_table_matches_results(demo):
    text = demo["out"] + demo["err"]
    assert all(name in text for name in METHODS)
    for method in demo["results"]["methods"]:
        row = next(line for line in demo["out"].splitlines() if line.startswith(method["name"]))
        numbers = [float(v) for v in re.findall(r"\d+\.\d+", row)]
        expected = [method["dice"]["grey matter"], method["dice"]["white matter"], method["mean_dice"]]
        assert numbers[:3] == pytest.approx(expected, abs=5e-4)  # printed with 3 decimals


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
