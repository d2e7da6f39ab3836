"""The browser front end's scene logic (ContrastiveSegLib.web.session / .scans) against real MRML nodes.

No trame and no browser here (those are in test_web.py): what a page may open, uploads, the painted-slice report
the page shows, a Segment run in the worker child through the shared bridge, and Save.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.volume import Volume, read_volume, write_volume
from ContrastiveSegLib.web.scans import ScanFolders, save_upload

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")

from ContrastiveSegLib.slicer import nodes  # noqa: E402  (needs slicer)
from ContrastiveSegLib.slicer.job import JobOptions  # noqa: E402
from ContrastiveSegLib.web.session import Session  # noqa: E402


def _sphere_scan(folder: Path) -> tuple[Path, np.ndarray]:
    k, j, i = np.mgrid[:20, :40, :40]
    sphere = (((k - 10) * 2.0) ** 2 + (j - 20) ** 2 + (i - 18) ** 2) <= 64
    rng = np.random.default_rng(0)
    image = Volume((sphere + rng.normal(0, 0.15, sphere.shape)).astype(np.float32), (1.0, 1.0, 2.0),
                   (-20.0, 10.0, 5.0))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sphere.nii.gz"
    write_volume(image, path)
    return path, sphere


def _paint(session: Session, segment_id: str, mask: np.ndarray) -> None:
    oriented = nodes._oriented_mask(mask.astype(np.uint8), nodes.ijk_to_ras(session.volume_node))
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented, session.segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        oriented.GetExtent())


def _painted_session(scene, tmp_path: Path, slices: list[int]):
    """A session with the sphere scan open and ``slices`` of the sphere painted in its first segment, whose runs
    use this Python with one thread. Returns (session, segment id, painted mask, sphere)."""
    _, sphere = _sphere_scan(tmp_path / "data")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    session = Session(scene, ScanFolders([tmp_path / "data"]), tmp_path / "out", python=sys.executable, env=env)
    session.load_path("sphere.nii.gz")
    segment_id = session.segment_names()[0][0]
    painted = np.zeros(sphere.shape, dtype=bool)
    painted[slices] = sphere[slices]
    _paint(session, segment_id, painted)
    return session, segment_id, painted, sphere


def _finish(session: Session):
    """Follow the run as the page does (polling) until it ends; returns its status."""
    while session.running:
        session.poll()
        time.sleep(0.1)
    return session.poll()


# ------------------------------------------------------------------------------------------------ scans
def test_scans_only_inside_the_given_folders(tmp_path):
    scan, _ = _sphere_scan(tmp_path / "data")
    secret = tmp_path / "secret.nii.gz"
    secret.write_bytes(scan.read_bytes())
    (tmp_path / "data" / "link.nii.gz").symlink_to(secret)
    folders = ScanFolders([tmp_path / "data"])
    assert folders.resolve("sphere.nii.gz") == scan.resolve()  # relative to the first folder
    assert folders.resolve(str(scan)) == scan.resolve()
    for outside in (str(secret), "../secret.nii.gz", "link.nii.gz", "/etc/passwd"):
        with pytest.raises(InputError, match="outside the folders"):
            folders.resolve(outside)
    with pytest.raises(InputError, match="not found"):
        folders.resolve("missing.nii.gz")
    assert folders.listing() == [str(tmp_path / "data" / "link.nii.gz"), str(scan)]
    with pytest.raises(InputError, match="scan or folder not found: /nowhere"):
        ScanFolders(["/nowhere"])
    only_file = ScanFolders([scan])
    assert only_file.resolve(str(scan)) == scan.resolve()
    with pytest.raises(InputError, match="outside"):
        only_file.resolve(str(secret))


def test_uploads_are_bounded_named_safely_and_leave_nothing_on_refusal(tmp_path):
    folder = tmp_path / "uploads"
    with pytest.raises(InputError, match=r"'big.nii.gz' is 2 MiB; uploads are limited to 1 MiB"):
        save_upload("big.nii.gz", b"x" * (2 << 20), folder, limit=1 << 20)
    with pytest.raises(InputError, match="is empty"):
        save_upload("a.nrrd", b"", folder)
    with pytest.raises(InputError, match="not a scan file"):
        save_upload("notes.txt", b"hello", folder)
    assert not folder.exists() or list(folder.iterdir()) == []
    path = save_upload("../../etc/evil name.nii.gz", b"data", folder)
    assert path == folder / "evil_name.nii.gz" and path.read_bytes() == b"data"
    assert sorted(p.name for p in folder.iterdir()) == ["evil_name.nii.gz"]


def test_a_bad_upload_is_one_line_and_the_scene_keeps_nothing(scene, tmp_path):
    session = Session(scene, ScanFolders([tmp_path]), tmp_path / "out")
    with pytest.raises(InputError) as error:
        session.load_upload("broken.nii.gz", b"not a nifti file at all")
    assert "\n" not in str(error.value) and "broken.nii.gz" in str(error.value)
    assert str(session.state_dir) not in str(error.value)
    assert session.volume_node is None and scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0
    assert list((session.state_dir / "uploads").iterdir()) == []


# ---------------------------------------------------------------------------------------------- painting
def test_painted_report_names_slices_and_where_on_them(scene, tmp_path):
    scan, sphere = _sphere_scan(tmp_path / "data")
    session = Session(scene, ScanFolders([tmp_path / "data"]), tmp_path / "out")
    session.load_path("sphere.nii.gz")
    assert [n for _, n, _ in session.segment_names()] == ["Segment 1"]
    lines, report = session.painted()
    assert lines == ["no annotated slice: paint at least one slice of a segment of 'sphere segmentation'"]
    first = session.segment_names()[0][0]
    stroke = np.zeros(sphere.shape, dtype=bool)
    stroke[7, 18:21, 10:30] = True  # a horizontal stroke, 3 rows x 20 columns, on k = 7
    stroke[12, 19:22, 12:26] = True
    _paint(session, first, stroke)
    second = session.add_segment("Other")
    other = np.zeros(sphere.shape, dtype=bool)
    other[12, 2:5, 2:6] = True
    _paint(session, second, other)
    lines, report = session.painted()
    assert lines == ["Segment 1: 2 axial slices (k = 7, 12)", "Other: 1 axial slice (k = 12)"]
    assert report == {"Segment 1": {"k": {7: [60, 18, 20, 10, 29], 12: [42, 19, 21, 12, 25]}},
                      "Other": {"k": {12: [12, 2, 4, 2, 5]}}}
    labels = session.label_map()  # both segments as one label map, in segment order
    assert labels.dtype == np.uint8 and labels.shape == sphere.shape
    assert labels[7, 19, 15] == 1 and labels[12, 3, 3] == 2 and labels[0, 0, 0] == 0
    assert np.bincount(labels.ravel()).tolist() == [labels.size - 114, 60 + 42, 12]


def test_a_second_scan_replaces_the_first(scene, tmp_path):
    _sphere_scan(tmp_path / "data")
    session = Session(scene, ScanFolders([tmp_path / "data"]), tmp_path / "out")
    session.load_path("sphere.nii.gz")
    session.load_path("sphere.nii.gz")
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1


@pytest.mark.slow
def test_segment_in_the_child_then_save_and_predict_only(scene, tmp_path):
    """Paint 3 slices -> Segment (20 steps, CPU child) -> result in the same node -> Save -> Predict only."""
    session, segment_id, painted, sphere = _painted_session(scene, tmp_path, [7, 10, 13])
    session.start("segment", JobOptions(preset="fast", steps=20, device="cpu", show_uncertainty=True))
    with pytest.raises(InputError, match="already going on"):
        session.start("segment", JobOptions(device="cpu"))
    seen = []
    while session.running:
        seen.append(session.poll().line)
        time.sleep(0.1)
    status = session.poll()
    assert status.ok, status.line
    assert any(line.startswith("Fine-tuning") and "loss" in line and "left" in line for line in seen), seen
    mask = nodes.segment_mask(session.segmentation_node, segment_id, session.volume_node)
    dice = 2 * (mask & sphere).sum() / (mask.sum() + sphere.sum())
    assert dice > 0.5, f"Dice {dice:.3f}"
    assert session.uncertainty_node is not None and session.suggestion is not None
    assert session.suggestion[0] not in (7, 10, 13)
    assert session.suggestion_text().startswith(f"Paint axial slice k = {session.suggestion[0]} next")
    assert not list(session.state_dir.glob("probabilities-*"))  # scored in a child, then removed

    written = session.save("result")
    assert sorted(written) == ["model", "nifti", "seg"]
    labels = read_volume(written["nifti"])
    assert np.array_equal(labels.array == 1, mask)
    reloaded = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(reloaded)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(written["seg"]))
    assert storage.ReadData(reloaded)
    assert reloaded.GetSegmentation().GetNthSegment(0).GetName() == "Segment 1"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "result.nii.gz", "result.safetensors", "result.safetensors.segments.json", "result.seg.nrrd"]

    painting = session.segmentation_node
    session.start("predict", JobOptions(device="cpu"), model_path="result.safetensors")
    assert _finish(session).ok
    predicted = session.segmentation_node
    assert predicted is not painting and painting.GetScene() is scene  # the painting is kept, the prediction new
    names = [predicted.GetSegmentation().GetNthSegment(n).GetName()
             for n in range(predicted.GetSegmentation().GetNumberOfSegments())]
    assert names == ["Segment 1"]

    assert session.can_undo
    session.undo_result()  # Predict only's node goes, the painting shows again
    assert predicted.GetScene() is None and session.segmentation_node is painting and not session.can_undo
    with pytest.raises(InputError, match="no result to take back"):
        session.undo_result()


@pytest.mark.slow
def test_cancel_leaves_the_paint_and_refine_continues_from_the_last_model(scene, tmp_path):
    session, segment_id, painted, sphere = _painted_session(scene, tmp_path, [7, 13])
    with pytest.raises(InputError, match="no model to refine yet"):
        session.start("segment", JobOptions(device="cpu"), refine=True)

    session.start("segment", JobOptions(preset="fast", steps=5000, device="cpu"))
    wait = time.monotonic() + 300
    while session.status.stage != "finetune" and time.monotonic() < wait:  # cancel in the middle of training
        session.poll()
        time.sleep(0.1)
    session.cancel()  # returns at once: the next polls end the run
    _finish(session)
    assert not session.running and session.status.ok is False and session.status.cancelled
    assert "cancel" in session.status.line.lower()
    mask = nodes.segment_mask(session.segmentation_node, segment_id, session.volume_node)
    assert np.array_equal(mask, painted)  # the scene is as it was
    assert session.last_model is None

    session.start("segment", JobOptions(preset="fast", steps=10, device="cpu"))
    status = _finish(session)
    first_model = session.last_model
    assert status.ok and first_model is not None
    first = nodes.segment_mask(session.segmentation_node, segment_id, session.volume_node)
    session.start("segment", JobOptions(preset="fast", steps=5, device="cpu"), refine=True)
    assert session.job.options.init_model == str(first_model)
    assert "--init-model" in session.job.command()
    assert _finish(session).ok and session.last_model != first_model
    assert not first_model.exists()  # only the latest model stays in the private folder
    session.undo_result()  # the refined result goes, the first one is back in the same node
    assert np.array_equal(nodes.segment_mask(session.segmentation_node, segment_id, session.volume_node), first)


# ---------------------------------------------------------------------------------------- the command line
def test_web_command_says_what_to_install_without_the_extra(capsys, monkeypatch):
    from ContrastiveSegLib.cli import main
    from ContrastiveSegLib.web import cli as web_cli

    monkeypatch.setattr(web_cli.importlib.util, "find_spec", lambda name: None)
    assert main(["web"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["contrastiveseg: error: the browser front end needs the 'web' extra (trame_slicer, "
                   "trame_vuetify missing): pip install 'contrastiveseg[web]'"]


def test_web_command_checks_port_and_scans_before_starting(capsys, monkeypatch, tmp_path):
    from ContrastiveSegLib.cli import build_parser, main
    from ContrastiveSegLib.web import cli as web_cli

    monkeypatch.setattr(web_cli.importlib.util, "find_spec", lambda name: object())
    assert main(["web", "--port", "70000"]) == 2
    assert "--port must be between 1 and 65535, got 70000" in capsys.readouterr().err
    assert main(["web", str(tmp_path / "missing.nii.gz")]) == 2
    assert f"scan or folder not found: {tmp_path / 'missing.nii.gz'}" in capsys.readouterr().err
    args = build_parser().parse_args(["web"])
    assert (args.host, args.port, args.scans) == ("127.0.0.1", 8080, [])
