"""ContrastiveSeg inside a real Slicer: the widget, the PythonSlicer child process, and the whole flow.

Runs as ctest ``py_ContrastiveSegSelfTest`` (Slicer --testing), or from Slicer's Python console:
``import ContrastiveSegSelfTest, unittest; unittest.main(module=ContrastiveSegSelfTest, exit=False)``.
The light tests need no torch. The heavy ones fine-tune for real on a synthetic volume on the CPU (about a minute)
and run only with ``CONTRASTIVESEG_HEAVY_TESTS=1`` and the dependencies installed.
"""
from __future__ import annotations

import os
import time
import unittest

import numpy as np
import qt
import slicer

HEAVY = os.environ.get("CONTRASTIVESEG_HEAVY_TESTS") == "1"


def _sphere_scene(paint_slices=(9, 12, 15)):
    """A 24x48x48 noisy volume with a bright sphere, and a segmentation with the sphere painted on 3 slices."""
    k, j, i = np.mgrid[:24, :48, :48]
    sphere = (((k - 12) * 2.0) ** 2 + (j - 24) ** 2 + (i - 22) ** 2) <= 81
    rng = np.random.default_rng(0)
    image = (sphere * 200.0 + rng.normal(0, 30, sphere.shape)).astype(np.float32)
    ijk_to_ras = np.diag([-1.0, -1.0, 2.0, 1.0])
    ijk_to_ras[:3, 3] = (24.0, -10.0, 5.0)
    volume = slicer.util.addVolumeFromArray(image, ijk_to_ras, name="Phantom")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Painted")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "Sphere", [0.9, 0.4, 0.2])
    painted = np.zeros(sphere.shape, dtype=np.uint8)
    for s in paint_slices:
        painted[s] = sphere[s]
    slicer.util.updateSegmentBinaryLabelmapFromArray(painted, segmentation, segment_id, volume)
    return volume, segmentation, sphere


def _wait(condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        slicer.app.processEvents()
        time.sleep(0.05)
    return condition()


class ContrastiveSegSelfTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_widget_binds_the_parameter_node(self):
        slicer.util.selectModule("ContrastiveSeg")
        widget = slicer.modules.contrastiveseg.widgetRepresentation().self()
        volume, segmentation, _ = _sphere_scene()
        node = widget.logic.getParameterNode()
        node.inputVolume = volume
        node.inputSegmentation = segmentation
        node.preset = "fast"
        self.assertIs(widget.ui.inputVolumeSelector.currentNode(), volume)
        self.assertEqual(widget.ui.presetComboBox.currentText, "fast")
        widget.ui.stepsSpinBox.value = 25
        self.assertEqual(node.steps, 25)
        self.assertEqual(widget.ui.segmentButton.text, "Segment")
        self.assertTrue(widget.ui.segmentButton.enabled)
        widget.updateSummary()
        self.assertEqual(widget.ui.summaryLabel.text, "Sphere: 3 axial slices (k = 9, 12, 15)")

    def test_paths_empty_gpu_label_hidden_shortcuts_and_undo_in_the_panel(self):
        from ContrastiveSegLib.slicer import panel

        slicer.util.selectModule("ContrastiveSeg")
        widget = slicer.modules.contrastiveseg.widgetRepresentation().self()
        node = widget.logic.getParameterNode()
        for name, parameter in panel.PATH_FIELDS.items():  # never "." for an unset path
            self.assertEqual(getattr(widget.ui, name).currentPath, getattr(node, parameter))
        widget.ui.modelPathLineEdit.currentPath = "/tmp/model.safetensors"
        self.assertEqual(node.modelFile, "/tmp/model.safetensors")
        node.device = "cpu"
        self.assertFalse(widget.ui.gpuIndexLabel.visible)
        self.assertEqual(sorted(s.key.toString() for s in widget._shortcuts), sorted(panel.SHORTCUTS.values()))
        self.assertFalse(widget.ui.undoButton.enabled)

    def test_pretraining_section_binds_the_parameter_node(self):
        from ContrastiveSegLib.errors import InputError

        slicer.util.selectModule("ContrastiveSeg")
        widget = slicer.modules.contrastiveseg.widgetRepresentation().self()
        node = widget.logic.getParameterNode()
        self.assertEqual(widget.ui.pretrainMethodComboBox.currentText, node.pretrainMethod)
        widget.ui.pretrainStepsSpinBox.value = 50
        self.assertEqual(node.pretrainSteps, 50)
        self.assertEqual(widget.ui.pretrainButton.text, "Pretrain")
        node.pretrainSource = "A folder"
        self.assertTrue(widget.ui.pretrainFolderLineEdit.enabled)
        with self.assertRaises(InputError):  # no folder chosen: refused before anything starts
            widget.logic.pretrainFromParameterNode(node)
        node.pretrainSource = "Scans in the scene"
        self.assertFalse(widget.ui.pretrainFolderLineEdit.enabled)
        with self.assertRaises(InputError):  # the scene is empty
            widget.logic.pretrainFromParameterNode(node)
        self.assertFalse(widget.logic.isRunning())

    def test_unpainted_segmentation_gives_one_line_in_the_panel(self):
        slicer.util.selectModule("ContrastiveSeg")
        widget = slicer.modules.contrastiveseg.widgetRepresentation().self()
        volume, segmentation, _ = _sphere_scene(paint_slices=())
        node = widget.logic.getParameterNode()
        node.inputVolume, node.inputSegmentation = volume, segmentation
        widget.updateSummary()
        self.assertTrue(widget.ui.summaryLabel.text.startswith("no annotated slice"))
        self.assertNotIn("\n", widget.ui.summaryLabel.text)

    def test_pythonslicer_child_finds_the_library(self):
        from ContrastiveSegLib.slicer.runner import CliProcess, python_executable

        command = [python_executable(), "-c",
                   "import json, ContrastiveSegLib; print(json.dumps({'stage': 'done', 'message': "
                   "ContrastiveSegLib.__version__}))"]
        process = CliProcess(command, env=slicer.util.startupEnvironment(), force_cpu=True)
        process.start()
        result = process.wait(timeout=120)
        self.assertTrue(result.ok, result.stderr_tail)
        import ContrastiveSegLib

        self.assertEqual(process.last_progress.message, ContrastiveSegLib.__version__)

    @unittest.skipUnless(HEAVY, "set CONTRASTIVESEG_HEAVY_TESTS=1 (fine-tunes for real, about a minute)")
    def test_segment_in_batch_mode_then_suggest_and_refine(self):
        from ContrastiveSeg import ContrastiveSegLogic

        volume, segmentation, sphere = _sphere_scene()
        logic = ContrastiveSegLogic()
        result = logic.segment(volume, segmentation, preset="fast", steps=20, device="cpu",
                               waitForCompletion=True, timeout=600)
        self.assertTrue(result.ok, result.message)
        output = result.segmentation_node
        segment_id = output.GetSegmentation().GetSegmentIdBySegmentName("Sphere")
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(output, segment_id, volume).astype(bool)
        dice = 2 * (mask & sphere).sum() / (mask.sum() + sphere.sum())
        self.assertGreater(dice, 0.5)
        plane, index, _ = logic.suggestNextSlice(volume, segmentation, jump=False)
        self.assertEqual(plane, "axial")
        self.assertNotIn(index, (9, 12, 15))
        # Refine: the second run starts from the first run's model.
        node = logic.getParameterNode()
        node.inputVolume, node.inputSegmentation, node.device, node.preset, node.steps = \
            volume, segmentation, "cpu", "fast", 10
        second = logic.segmentFromParameterNode(node, waitForCompletion=True, timeout=600)
        self.assertTrue(second.ok, second.message)

    @unittest.skipUnless(HEAVY, "set CONTRASTIVESEG_HEAVY_TESTS=1 (pretrains and fine-tunes for real)")
    def test_pretrain_on_the_scene_then_segment_from_the_new_encoder(self):
        from ContrastiveSeg import ContrastiveSegLogic

        volume, segmentation, _ = _sphere_scene()
        logic = ContrastiveSegLogic()
        result = logic.pretrain(None, "simclr", steps=5, device="cpu", waitForCompletion=True, timeout=600)
        self.assertTrue(result.ok, result.message)
        node = logic.getParameterNode()
        self.assertEqual(str(node.encoderFile), str(result.encoder_path))
        node.inputVolume, node.inputSegmentation, node.device, node.preset, node.steps = \
            volume, segmentation, "cpu", "fast", 10
        segmented = logic.segmentFromParameterNode(node, waitForCompletion=True, timeout=600)
        self.assertTrue(segmented.ok, segmented.message)

    @unittest.skipUnless(HEAVY, "set CONTRASTIVESEG_HEAVY_TESTS=1 (starts a real fine-tuning)")
    def test_cancel_from_the_panel_keeps_the_scene(self):
        slicer.util.selectModule("ContrastiveSeg")
        widget = slicer.modules.contrastiveseg.widgetRepresentation().self()
        volume, segmentation, _ = _sphere_scene()
        node = widget.logic.getParameterNode()
        node.inputVolume, node.inputSegmentation, node.device, node.steps = volume, segmentation, "cpu", 5000
        nodes_before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        widget.ui.segmentButton.click()
        self.assertTrue(_wait(lambda: widget.ui.progressBar.value > 5, 300), widget.ui.statusLabel.text)
        self.assertEqual(widget.ui.segmentButton.text, "Cancel")
        widget.ui.segmentButton.click()
        self.assertTrue(_wait(lambda: not widget.logic.isRunning() and widget.ui.segmentButton.text == "Segment",
                              30))
        self.assertEqual(widget.ui.statusLabel.text, "Cancelled; nothing was changed.")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), nodes_before)
        qt.QApplication.processEvents()
