"""A clinician's session in Slicer, item by item (issue 15), below the Qt widget: the bridge on slicer-core nodes,
runs with a real child process, the driver the panel's timer ticks, and the module's Logic with the stand-ins of
test_slicer_ui.py. Slicer's behaviours these tests rely on, with the file they are taken from:

- qMRMLNodeComboBox::addNode (Libs/MRML/Widgets/qMRMLNodeComboBox.cxx, line 590) creates the node through
  qMRMLNodeFactory::createNode (Libs/MRML/Widgets/qMRMLNodeFactory.cxx, line 59), which adds it to the scene with
  no display node: a bare ``AddNewNodeByClass`` here is that node.
- Painting changes a segment's binary labelmap and fires vtkSegmentation::SourceRepresentationModified
  (Libs/vtkSegmentationCore/vtkSegmentation.h, enum at line 98); SegmentModified is not fired for it.
- parameterNodeWrapper: a pathlib.Path parameter defaults to ``Path()`` (Base/Python/slicer/parameterNodeWrapper/
  serializers.py, PathSerializer.default, line 331) and the ctkPathLineEdit connector writes ``str(value)``
  (guiConnectors.py, line 705), i.e. "."; Choice and WithinRange raise ValueError (validators.py, lines 137, 95).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

from test_slicer_bridge import SHAPE, _paint, _segmentation, _slab, _volume, fake_python  # noqa: E402, F401

from ContrastiveSegLib.errors import InputError  # noqa: E402
from ContrastiveSegLib.io.volume import read_volume  # noqa: E402
from ContrastiveSegLib.slicer import nodes, panel  # noqa: E402

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
POSIX = pytest.mark.skipif(os.name == "nt", reason="a POSIX shell stands in for PythonSlicer")


def _job(scene, tmp_path, fake_python, output=None, **options):
    from ContrastiveSegLib.slicer.job import Job, JobOptions

    _, volume = _volume(scene, direction=IDENTITY)
    painted, _ = _segmentation(scene, volume, {"Liver": ((0.8, 0.3, 0.2), _slab([2, 6]))})
    python, env, _ = fake_python
    job = Job("segment", volume, painted, output, JobOptions(device="cpu", **options), state_dir=tmp_path / "state",
              python=python, env=env)
    return job, volume, painted


# ------------------------------------------------------------------- 1. every output segmentation is shown
@POSIX
def test_a_result_into_a_node_made_by_the_selector_gets_a_display_node(scene, tmp_path, fake_python):
    from_selector = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Result")  # as qMRMLNodeComboBox adds it
    assert from_selector.GetDisplayNode() is None
    job, _, _ = _job(scene, tmp_path, fake_python, output=from_selector)
    result = job.run(timeout=60)
    assert result.ok, result.message
    assert result.segmentation_node is from_selector and from_selector.GetDisplayNode() is not None
    assert from_selector.GetDisplayNode().GetVisibility() == 1


# ------------------------------------------------------------ 3. the summary follows the brush, not only names
def test_painting_fires_the_events_the_summary_listens_to(scene):
    _, volume = _volume(scene, direction=IDENTITY)
    painted, ids = _segmentation(scene, volume, {"Liver": ((0.8, 0.3, 0.2), None)})
    fired = []
    tags = [painted.AddObserver(getattr(slicer.vtkSegmentation, name), lambda caller, event, n=name: fired.append(n))
            for name in panel.SUMMARY_EVENTS]
    # The Segment Editor's effects end a stroke with SetBinaryLabelmapToSegment, as _paint does
    _paint(painted, ids[0], _slab([3]), nodes.ijk_to_ras(volume))
    for tag in tags:
        painted.RemoveObserver(tag)
    assert "SourceRepresentationModified" in fired  # what painting fires
    assert "SegmentModified" not in fired  # the only content event the summary used to listen to


def test_the_summary_is_read_again_when_volume_axis_or_resampling_change_and_says_what_a_run_uses():
    class Node:
        inputVolume = inputSegmentation = None
        axis, allowResampling = "auto", False

    node = Node()
    before = panel.summary_state(node)
    for name, value in (("axis", "k"), ("allowResampling", True)):
        setattr(node, name, value)
        assert panel.summary_state(node) != before
        before = panel.summary_state(node)
    assert panel.summary_text(True, "segment", None) == panel.RUN_TEXT["segment"]
    assert panel.summary_text(True, None, ["Liver: 2 axial slices (k = 2, 6)"]) == "Liver: 2 axial slices (k = 2, 6)"
    assert panel.summary_text(False, None, None) == panel.CHOOSE_TEXT


# --------------------------------------------------------------------- 4. the main thread stays light
def test_the_painted_box_reading_equals_slicers_whole_volume_export(scene):
    _, volume = _volume(scene)  # oblique, anisotropic
    painted, ids = _segmentation(scene, volume, {"Liver": ((1, 0, 0), _slab([2, 6])),
                                                 "Kidney": ((0, 1, 0), _slab([4], j=slice(8, 10), i=slice(1, 3)))})
    masks, box = nodes._segment_masks(painted, ids, volume, full=False)
    assert box == (slice(2, 7), slice(3, 10), slice(1, 9))  # the painted voxels' bounding box, nothing more
    for segment_id in ids:
        whole = nodes.segment_mask(painted, segment_id, volume)  # Slicer's export onto the whole grid
        inside = np.zeros(SHAPE, bool)
        inside[box] = masks[segment_id]
        np.testing.assert_array_equal(inside, whole)
    annotation = nodes.read_annotation(painted, volume)
    assert annotation.labels.shape == SHAPE and annotation.slices == (2, 4, 6)
    assert set(np.unique(annotation.labels[4])) == {0, 2} and annotation.labels[3].sum() == 0


def test_the_exchange_file_is_read_back_exactly_with_its_geometry(scene, tmp_path):
    from ContrastiveSegLib.slicer.exchange import write_raw_nrrd

    original, volume = _volume(scene)
    view = nodes.volume_view(volume)
    assert np.shares_memory(view.array, slicer.util.arrayFromVolume(volume))  # no copy of the scan
    write_raw_nrrd(view.array, tmp_path / "image.nrrd", view.spacing, view.origin, view.direction)
    back = read_volume(tmp_path / "image.nrrd")
    np.testing.assert_array_equal(back.array, original.array)
    np.testing.assert_allclose(back.spacing, original.spacing, rtol=1e-12)
    np.testing.assert_allclose(back.origin, original.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, original.direction, atol=1e-12)
    assert not list(tmp_path.glob("*.partial"))


@POSIX
def test_no_uncertainty_is_computed_when_finishing_a_run(scene, tmp_path, fake_python, monkeypatch):
    from ContrastiveSegLib.slicer import uncertainty

    def forbidden(*args, **kwargs):
        raise AssertionError("the entropy is computed on the main thread")

    monkeypatch.setattr(uncertainty, "normalized_entropy", forbidden)
    job, _, _ = _job(scene, tmp_path, fake_python, show_uncertainty=True)
    result = job.run(timeout=60)
    assert result.ok and result.probabilities_path.is_file() and result.uncertainty_node is None


# ------------------------------------------------------------------------------ 5. cancel returns at once
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_cancel_returns_before_the_child_has_gone_and_the_timer_finishes_it(tmp_path):
    from ContrastiveSegLib.slicer.runner import CliProcess

    stubborn = tmp_path / "stubborn.py"  # ignores the polite signal: only the forced one ends it
    stubborn.write_text("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                        "print('{\"stage\": \"finetune\", \"step\": 1, \"of\": 9}', flush=True)\ntime.sleep(60)\n")
    process = CliProcess([sys.executable, str(stubborn)])
    process.start()
    deadline = time.monotonic() + 30
    while not process.events() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.cancel(grace_s=1.0)
    assert process.running and process.result() is None  # returned while the child still runs
    result = process.wait(timeout=30)  # the polls (the panel's timer) send the forced signal after the grace
    assert result.cancelled and result.exit_code == -9 and result.message == "Cancelled; nothing was changed."


# --------------------------------------------------------- 6. every way a run ends brings the panel back
@POSIX
@pytest.mark.parametrize("error", [RuntimeError("Slicer could not write segment 'Liver'"), MemoryError()])
def test_an_error_at_the_end_still_reaches_the_panel_in_one_line(scene, tmp_path, fake_python, monkeypatch, error):
    from ContrastiveSegLib.slicer.driver import RunDriver

    job, _, painted = _job(scene, tmp_path, fake_python, output=None)
    segmentations_before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(nodes, "write_result", broken)
    completed = []
    job.prepare()
    job.start()
    driver = RunDriver(job, completed=completed.append)
    deadline = time.monotonic() + 60
    while driver.tick() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(completed) == 1 and not driver.tick() and len(completed) == 1  # called exactly once
    result = completed[0]
    assert not result.ok and not result.run.cancelled and "\n" not in result.message
    assert ("Out of memory" in result.message) if isinstance(error, MemoryError) else \
        ("Slicer could not write segment 'Liver'" in result.message)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == segmentations_before
    state = tmp_path / "state"
    assert not list(state.glob("model-*")) and not list(state.glob("run-*"))  # nothing left for nobody


def test_a_worker_that_cannot_start_is_one_line_and_leaves_no_files(scene, tmp_path):
    from ContrastiveSegLib.slicer.job import Job, JobOptions

    _, volume = _volume(scene, direction=IDENTITY)
    painted, _ = _segmentation(scene, volume, {"Liver": ((0.8, 0.3, 0.2), _slab([2, 6]))})
    job = Job("segment", volume, painted, None, JobOptions(device="cpu"), state_dir=tmp_path,
              python=str(tmp_path / "no-such-PythonSlicer"))
    with pytest.raises(InputError, match="could not start the worker process") as caught:
        job.start()
    assert "\n" not in str(caught.value) and not job.running
    assert not list(tmp_path.glob("run-*"))


# ------------------------------------------------------------------- 7. nothing of the patient left behind
def test_the_session_folder_is_removed_when_the_module_closes(tmp_path):
    from ContrastiveSegLib.slicer.childrun import private_state_dir, remove_state_dirs

    folder = private_state_dir(tmp_path)
    (folder / "model-1.safetensors").write_bytes(b"weights")
    assert folder in remove_state_dirs() and not folder.exists()
    assert private_state_dir(tmp_path) != folder  # a new session gets a new private folder


# ----------------------------------------------------------------------------------------- 8. transforms
def _shifted(scene, volume):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, 3] = (10.0, -20.0, 30.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def test_suggested_slice_and_uncertainty_land_where_the_transformed_volume_is(scene):
    _, volume = _volume(scene, direction=IDENTITY)
    local = nodes.slice_center_world(volume, 0, 4)
    transform = _shifted(scene, volume)
    np.testing.assert_allclose(nodes.slice_center_world(volume, 0, 4), local + (10.0, -20.0, 30.0), atol=1e-9)
    entropy = np.zeros(SHAPE, np.float32)
    uncertainty = nodes.put_uncertainty(entropy, volume)
    assert uncertainty.GetTransformNodeID() == transform.GetID()


def test_the_entropy_map_is_loaded_straight_into_the_node_under_the_volumes_transform(scene, tmp_path):
    from ContrastiveSegLib.slicer.exchange import write_raw_nrrd

    original, volume = _volume(scene)
    transform = _shifted(scene, volume)
    entropy = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    write_raw_nrrd(entropy, tmp_path / "entropy.nrrd", original.spacing, original.origin, original.direction)
    node = nodes.put_uncertainty_file(tmp_path / "entropy.nrrd", volume)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), entropy)
    np.testing.assert_allclose(nodes.ijk_to_ras(node), nodes.ijk_to_ras(volume), atol=1e-12)
    assert node.GetTransformNodeID() == transform.GetID() and nodes.find_uncertainty_node(volume) is node
    display = node.GetDisplayNode()  # 0 = sure, 1 = guessing; no automatic window computed over every voxel
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))


# ------------------------------------------------- 10. the uncertainty node is found by its mark, not its name
def test_a_users_own_node_named_like_the_uncertainty_is_left_alone(scene):
    _, volume = _volume(scene, direction=IDENTITY)
    users = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{volume.GetName()} uncertainty")
    assert nodes.find_uncertainty_node(volume) is None
    made = nodes.put_uncertainty(np.ones(SHAPE, np.float32), volume)
    assert made is not users and nodes.find_uncertainty_node(volume) is made
    again = nodes.put_uncertainty(np.zeros(SHAPE, np.float32), volume)
    assert again is made and users.GetImageData() is None


# ----------------------------------------------------------------------------------------------- undo
@POSIX
@pytest.mark.parametrize("into_input", [True, False])
def test_undo_restores_the_segmentation_from_before_the_run(scene, tmp_path, fake_python, into_input):
    from ContrastiveSegLib.slicer.job import Job, JobOptions

    _, volume = _volume(scene, direction=IDENTITY)
    painted, ids = _segmentation(scene, volume, {"Liver": ((0.8, 0.3, 0.2), _slab([2, 6]))})
    before = nodes.segment_mask(painted, ids[0], volume)
    python, env, _ = fake_python
    job = Job("segment", volume, painted, painted if into_input else None, JobOptions(device="cpu"),
              state_dir=tmp_path, python=python, env=env)
    result = job.run(timeout=60)
    assert result.ok and result.undo is not None
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    nodes.undo_result(result.undo)
    if into_input:
        np.testing.assert_array_equal(nodes.segment_mask(painted, ids[0], volume), before)
        assert nodes._get_tag(painted.GetSegmentation().GetSegment(ids[0]), nodes.TAG_ANNOTATED) == ""
        assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
    else:
        assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count - 1
        assert result.segmentation_node.GetScene() is None


# -------------------------------------------------------------------------------------- registered sample
def test_the_registered_sample_loads_the_brain_with_three_painted_slices(scene):
    from ContrastiveSegLib.slicer import sample

    registered = {}

    class SampleDataLogic:  # the one static method of Slicer's SampleData.SampleDataLogic the module calls
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            registered.update(kwargs)

    loaded = []
    sample.register_sample(SampleDataLogic, lambda: scene, "thumb.png", on_loaded=lambda *n: loaded.append(n))
    assert registered["category"] == "ContrastiveSeg" and registered["sampleName"] == sample.SAMPLE_NAME
    volume, segmentation = registered["customDownloader"](object())  # what pressing the button does
    assert loaded == [(volume, segmentation)]
    annotation = nodes.read_annotation(segmentation, volume)
    assert [s.name for s in annotation.segments] == ["Grey matter", "White matter"]
    assert annotation.plane == "axial" and len(annotation.slices) == 3
    assert segmentation.GetDisplayNode() is not None


def test_shortcuts_are_distinct_key_sequences():
    import re

    keys = list(panel.SHORTCUTS.values())
    assert len(set(keys)) == len(keys) == 3
    assert all(re.fullmatch(r"(Ctrl\+)?(Shift\+)?[A-Z]", key) for key in keys)


# ----------------------------------------------- the module's Logic: selector, undo, paths, saving, clean-up
@POSIX
def test_the_logic_reuses_the_node_it_made_undoes_and_cleans_up(monkeypatch, tmp_path, scene):
    from test_slicer_ui import fake_pythonslicer

    fake_pythonslicer(monkeypatch, scene, tmp_path)
    import ContrastiveSeg

    logic = ContrastiveSeg.ContrastiveSegLogic()
    node = ContrastiveSeg.ContrastiveSegParameterNode()
    monkeypatch.setattr(logic, "getParameterNode", lambda: node)
    assert (node.encoderFile, node.modelFile, node.pretrainFolder, node.pretrainOutput) == ("", "", "", "")
    _, volume = _volume(scene, direction=IDENTITY)
    painted, _ = _segmentation(scene, volume, {"Liver": ((0.8, 0.3, 0.2), _slab([2, 6]))})
    node.inputVolume, node.inputSegmentation, node.device = volume, painted, "cpu"

    first = logic.segmentFromParameterNode(node, waitForCompletion=True, timeout=60)
    assert first.ok and node.outputSegmentation is first.segmentation_node  # the selector shows the new node
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    second = logic.segmentFromParameterNode(node, waitForCompletion=True, timeout=60)
    assert second.segmentation_node is first.segmentation_node  # a rerun replaces it
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count

    # Suggest: scored once in a worker, then read from its small file.
    plane, index, _ = logic.suggestNextSlice(volume, painted, node, jump=False)
    assert (plane, index) == ("axial", 7) and logic.scoresReady(node)

    # Undo takes the second result back to the first (the node existed before the second run).
    assert logic.canUndo() and logic.undoLastResult() == "The last result was taken back."
    assert not logic.canUndo() and node.outputSegmentation is first.segmentation_node

    # Saving where nothing can be written: one line, no half file.
    with pytest.raises(InputError, match="could not save the model"):
        logic.saveModel(node, tmp_path / "missing-folder" / "model.safetensors")

    state = logic.stateDirectory()
    assert any(state.iterdir())
    logic.forgetRunFiles(node)
    assert not any(p.name.startswith(("model-", "probabilities-")) for p in state.iterdir())
    logic.cleanup()
    assert not state.exists()


def test_the_stand_in_keeps_slicers_path_default_which_is_why_the_module_uses_text():
    """The stand-in's Path default is Path(), as Slicer's (serializers.py line 331), shown as '.' by the
    connector (guiConnectors.py line 705); the module's path fields are text, shown empty."""
    import typing

    from test_slicer_ui import parameterNodeWrapper

    class WithPath:
        encoder: Path

    assert str(parameterNodeWrapper(WithPath)().encoder) == "."
    assert panel.path_text(Path()) == "" and panel.path_text("") == "" and panel.path_text("/a/b") == "/a/b"
    assert typing.get_type_hints(WithPath)["encoder"] is Path


def test_the_screenshot_url_names_a_picture_in_the_repository():
    import re

    from PIL import Image

    root = Path(__file__).resolve().parents[2]
    urls = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', (root / "CMakeLists.txt").read_text()).group(1)
    for url in urls.split():
        path = root / url.split("/main/", 1)[1]
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 800


# ------------------------------------------------------------- the panel's wiring, with Qt's stand-ins
def test_the_panel_wiring_gpu_label_paths_shortcuts_and_summary(monkeypatch, request, tmp_path, scene):
    from test_slicer_ui import _stand_ins, _start_module

    _stand_ins(monkeypatch, scene, tmp_path)
    import ContrastiveSeg
    import qt

    node = ContrastiveSeg.ContrastiveSegParameterNode()
    widget, ui = _start_module(monkeypatch, request, ContrastiveSeg, node)
    for device, shown in (("cpu", False), ("cuda", True)):  # 10: the label goes with its box
        node.device = device
        widget.updateGui()
        assert ui.gpuIndexLabel.visible is shown and ui.gpuIndexSpinBox.visible is shown
    assert all(getattr(ui, name).currentPath == "" for name in panel.PATH_FIELDS)  # 9: never "."
    ui.modelPathLineEdit.emit("currentPathChanged(QString)", "/data/model.safetensors")
    assert node.modelFile == "/data/model.safetensors"
    node.encoderFile = "/data/encoder.safetensors"
    widget.updateGui()
    assert ui.encoderPathLineEdit.currentPath == "/data/encoder.safetensors"
    made = {s.key: s for s in qt.QShortcut.made}
    assert set(made) == set(panel.SHORTCUTS.values())
    assert {s.context for s in made.values()} == {qt.Qt.WidgetWithChildrenShortcut}
    assert made[panel.SHORTCUT_UNDO].slot == widget.onUndoButton
    # 3: during a run the summary says what the run uses
    _, volume = _volume(scene, direction=IDENTITY)
    painted, _ = _segmentation(scene, volume, {"Liver": ((0.8, 0.3, 0.2), _slab([2, 6]))})
    node.inputVolume, node.inputSegmentation = volume, painted
    widget.updateSummary()
    assert ui.summaryLabel.text == "Liver: 2 axial slices (k = 2, 6)"
    monkeypatch.setattr(widget.logic, "isRunning", lambda: True)
    widget.updateSummary()
    assert ui.summaryLabel.text == panel.RUN_TEXT["segment"]


def test_the_self_test_adds_no_module_path_slicers_macro_adds_already():
    """slicer_add_python_unittest starts Slicer with the build tree's module paths itself (Slicer,
    CMake/SlicerMacroPythonTesting.cmake, line 47); a second --additional-module-paths loads the module twice."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "Testing" / "Slicer" / "CMakeLists.txt").read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "slicer_add_python_unittest(SCRIPT ContrastiveSegSelfTest.py)" in code
    assert "--additional-module-paths" not in code and "SLICER_ARGS" not in code
