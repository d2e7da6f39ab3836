"""The node <-> array bridge (ContrastiveSegLib.slicer.nodes) against real MRML nodes from the slicer-core wheel.

Each test builds a fresh vtkMRMLScene with the application, colour and segmentations logics registered as Slicer
does at start-up, and checks numbers: geometry against SimpleITK and against Slicer's own NRRD writer, label values
and annotated slices voxel by voxel, names/colours/reference geometry of written segments.
"""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)
import SimpleITK as sitk  # noqa: E402

from ContrastiveSegLib import options as options_module  # noqa: E402
from ContrastiveSegLib.errors import InputError  # noqa: E402
from ContrastiveSegLib.io.annotations import IGNORE, decode_annotation  # noqa: E402
from ContrastiveSegLib.io.volume import Volume, read_volume, write_volume  # noqa: E402
from ContrastiveSegLib.slicer import nodes  # noqa: E402
from ContrastiveSegLib.slicer.geometry import Grid, describe_axis, voxel_offset  # noqa: E402


def _rotation(angle: float, axis: int) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    a, b = [n for n in range(3) if n != axis]
    rotation = np.eye(3)
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
    return rotation


OBLIQUE = tuple((_rotation(0.3, 2) @ _rotation(-0.2, 0)).reshape(-1))
SHAPE = (9, 11, 13)  # (k, j, i)


def _volume(scene, direction=OBLIQUE, spacing=(0.7, 0.9, 2.5), origin=(-40.0, 25.5, 112.0)):
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=SHAPE).astype(np.float32), spacing, origin, direction)
    return volume, nodes.array_to_volume(volume, scene, "CT")


def _paint(segmentation_node, segment_id, mask, ijk_to_ras):
    oriented = nodes._oriented_mask(mask.astype(np.uint8), ijk_to_ras)
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        oriented.GetExtent())


def _segmentation(scene, volume_node, painted: dict[str, tuple[tuple[float, float, float], np.ndarray]]):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Annotations")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    ids = []
    for name, (color, mask) in painted.items():
        segment_id = node.GetSegmentation().AddEmptySegment("", name, list(color))
        if mask is not None:
            _paint(node, segment_id, mask, nodes.ijk_to_ras(volume_node))
        ids.append(segment_id)
    return node, ids


def _slab(k_slices, j=slice(3, 7), i=slice(4, 9)):
    mask = np.zeros(SHAPE, dtype=bool)
    for k in k_slices:
        mask[k, j, i] = True
    return mask


# ----------------------------------------------------------------------------------------------- geometry
def test_ijk_to_ras_hand_computed():
    grid = Grid((2.0, 3.0, 4.0), (10.0, 20.0, 30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    expected = np.array([[-2, 0, 0, -10], [0, -3, 0, -20], [0, 0, 4, 30], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(grid.ijk_to_ras(), expected)
    back = Grid.from_ijk_to_ras(expected)
    np.testing.assert_allclose(back.spacing, (2, 3, 4))
    np.testing.assert_allclose(back.origin, (10, 20, 30))
    np.testing.assert_allclose(back.direction, np.eye(3).reshape(-1), atol=1e-12)


def test_ijk_to_ras_agrees_with_simpleitk_on_an_oblique_grid():
    grid = Grid((0.7, 0.9, 2.5), (-40.0, 25.5, 112.0), OBLIQUE)
    image = sitk.Image(13, 11, 9, sitk.sitkUInt8)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    for index in [(0, 0, 0), (12, 0, 3), (5, 10, 8)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = grid.ijk_to_ras() @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)
    back = Grid.from_ijk_to_ras(grid.ijk_to_ras())
    np.testing.assert_allclose(back.direction, OBLIQUE, atol=1e-12)
    np.testing.assert_allclose(back.origin, grid.origin, atol=1e-12)


def test_voxel_offset_and_plane_names():
    grid = Grid((0.7, 0.9, 2.5), (0.0, 0.0, 0.0), OBLIQUE).ijk_to_ras()
    shifted = grid.copy()
    shifted[:3, 3] += grid[:3, :3] @ np.array([2.0, -1.0, 3.0])
    np.testing.assert_array_equal(voxel_offset(grid, shifted), [2, -1, 3])
    half = grid.copy()
    half[:3, 3] += grid[:3, :3] @ np.array([0.5, 0, 0])
    assert voxel_offset(grid, half) is None
    finer = grid.copy()
    finer[:3, :3] *= 0.5
    assert voxel_offset(grid, finer) is None
    identity = Grid((1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)).ijk_to_ras()
    assert [describe_axis(identity, a) for a in (0, 1, 2)] == ["axial", "coronal", "sagittal"]


# ------------------------------------------------------------------------------------------------ volumes
def test_volume_round_trip_is_exact_and_matches_slicers_own_writer(scene, tmp_path):
    volume, node = _volume(scene)
    back = nodes.volume_to_array(node)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-12)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-12)
    np.testing.assert_allclose(node.GetSpacing(), volume.spacing, rtol=1e-12)
    np.testing.assert_allclose(node.GetOrigin(), np.array(volume.origin) * [-1, -1, 1], atol=1e-9)

    # Slicer's NRRD writer (RAS -> LPS done by Slicer) and our exchange file must describe the same grid.
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "slicer.nrrd"))
    assert storage.WriteData(node)
    write_volume(back, tmp_path / "ours.nrrd")
    theirs, ours = read_volume(tmp_path / "slicer.nrrd"), read_volume(tmp_path / "ours.nrrd")
    np.testing.assert_array_equal(theirs.array, ours.array)
    for field in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(theirs, field), getattr(ours, field), atol=1e-6)


def test_vector_volume_is_rejected_with_one_line(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "RGB")
    slicer.util.updateVolumeFromArray(node, np.zeros((3, 4, 5, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="3 components per voxel") as error:
        nodes.volume_to_array(node)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------ segmentations
def test_two_segments_become_label_values_in_segment_order(scene):
    volume, volume_node = _volume(scene, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    liver, tumor = _slab([2, 5]), _slab([5, 7], j=slice(5, 6), i=slice(6, 8))
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((0.8, 0.3, 0.2), liver),
                                                          "Tumor": ((0.1, 0.9, 0.1), tumor)})
    count = scene.GetNumberOfNodes()
    annotation = nodes.read_annotation(segmentation, volume_node)
    assert scene.GetNumberOfNodes() == count  # the temporary label maps and colour tables are gone
    expected = np.zeros(SHAPE, dtype=np.uint8)
    expected[liver] = 1
    expected[tumor] = 2  # the later segment wins where both are painted
    np.testing.assert_array_equal(annotation.labels, expected)
    assert annotation.axis == 0 and annotation.plane == "axial"
    assert annotation.slices == (2, 5, 7)
    assert [(s.name, s.label_value, s.slices) for s in annotation.segments] == [("Liver", 1, (2, 5)),
                                                                               ("Tumor", 2, (5, 7))]
    np.testing.assert_allclose(annotation.segments[0].color, (0.8, 0.3, 0.2), atol=1e-6)
    assert annotation.overlap_voxels == int((liver & tumor).sum()) == 2
    assert annotation.summary()[:2] == ["Liver: 2 axial slices (k = 2, 5)", "Tumor: 2 axial slices (k = 5, 7)"]
    # The library decodes exactly these slices from the exchanged label map.
    decoded = decode_annotation(annotation.labels)
    assert decoded.axis == 0 and decoded.slices.tolist() == [2, 5, 7] and decoded.label_values == (0, 1, 2)


def test_annotation_along_i_on_an_oblique_volume(scene):
    _, volume_node = _volume(scene)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:7, 3:8, 4] = True
    mask[1:5, 2:6, 9] = True
    segmentation, _ = _segmentation(scene, volume_node, {"Kidney": ((0, 0, 1), mask)})
    annotation = nodes.read_annotation(segmentation, volume_node)
    np.testing.assert_array_equal(annotation.labels, mask.astype(np.uint8))
    assert annotation.axis == 2 and annotation.slices == (4, 9)
    assert annotation.plane == describe_axis(nodes.ijk_to_ras(volume_node), 2)


def test_background_segment_makes_unpainted_voxels_ignored(scene):
    _, volume_node = _volume(scene)
    fg = _slab([4])
    bg = np.zeros(SHAPE, dtype=bool)
    bg[4, 0:2, 0:3] = True
    segmentation, _ = _segmentation(scene, volume_node, {"Background": ((0, 0, 0), bg), "Lesion": ((1, 0, 0), fg)})
    annotation = nodes.read_annotation(segmentation, volume_node)
    assert [s.name for s in annotation.segments] == ["Lesion"]
    assert (annotation.labels[fg] == 1).all() and (annotation.labels[bg] == 0).all()
    # The rest of the painted slice is "not annotated"; off it the label map holds 0, which the library reads as
    # unknown (IGNORE everywhere would make its plane search walk every voxel of the volume).
    assert (annotation.labels[4][~(fg | bg)[4]] == IGNORE).all() and not annotation.labels[[0, 1, 2, 3, 5]].any()
    # What the CLI learns: only the painted voxels are known, exactly as with IGNORE on every other voxel.
    decoded = decode_annotation(annotation.labels, annotation.cli_axis)
    everywhere = np.where(fg, 1, np.where(bg, 0, IGNORE)).astype(np.uint8)
    np.testing.assert_array_equal(decoded.target, decode_annotation(everywhere).target)
    assert (decoded.target[~(fg | bg)] == IGNORE).all() and annotation.summary() == ["Lesion: 1 axial slice (k = 4)"]


def test_nothing_painted_is_one_line_input_error(scene):
    _, volume_node = _volume(scene)
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), None)})
    with pytest.raises(InputError, match="no annotated slice"):
        nodes.read_annotation(segmentation, volume_node)


def test_segmentation_on_another_grid_is_rejected_or_resampled(scene):
    _, volume_node = _volume(scene, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(1.0, 1.0, 2.0),
                             origin=(0.0, 0.0, 0.0))
    # Painted on a grid of half the voxel size (e.g. a resampled copy of the scan).
    fine = Grid((0.5, 0.5, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Fine")
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "Liver", [1, 0, 0])
    mask = np.zeros((18, 22, 26), dtype=bool)
    mask[6:8, 4:10, 6:14] = True  # fine slices 6-7 = 6 mm..7.5 mm: inside coarse slice 3 (6 mm, 2 mm thick)
    _paint(segmentation, segment_id, mask, fine.ijk_to_ras())
    with pytest.raises(InputError, match="different voxel grid") as error:
        nodes.read_annotation(segmentation, volume_node)
    assert "\n" not in str(error.value) and "(0.5, 0.5, 1) vs (1, 1, 2)" in str(error.value)
    annotation = nodes.read_annotation(segmentation, volume_node, resample=True)
    assert annotation.resampled and annotation.slices == (3,)
    assert annotation.labels.sum() == 3 * 4  # j 2..4, i 3..6 of the coarse grid


def test_whole_voxel_shift_is_the_same_grid(scene):
    _, volume_node = _volume(scene)
    matrix = nodes.ijk_to_ras(volume_node)
    shifted = matrix.copy()
    shifted[:3, 3] += matrix[:3, :3] @ np.array([2.0, 1.0, 0.0])  # a labelmap cropped/padded by Slicer
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Shifted")
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "Liver", [1, 0, 0])
    small = np.zeros((SHAPE[0], 5, 5), dtype=bool)
    small[6, 1:3, 1:4] = True
    _paint(segmentation, segment_id, small, shifted)
    annotation = nodes.read_annotation(segmentation, volume_node)
    expected = np.zeros(SHAPE, dtype=np.uint8)
    expected[6, 2:4, 3:6] = 1
    assert not annotation.resampled
    np.testing.assert_array_equal(annotation.labels, expected)


# ---------------------------------------------------------------------------------------------- results
def test_result_goes_to_a_new_node_with_names_colours_and_reference_geometry(scene):
    _, volume_node = _volume(scene)
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((0.8, 0.3, 0.2), _slab([2])),
                                                          "Tumor": ((0.1, 0.9, 0.1), _slab([2], j=slice(1, 2)))})
    annotation = nodes.read_annotation(segmentation, volume_node)
    result = np.zeros(SHAPE, dtype=np.uint8)
    result[1:8, 3:7, 4:9] = 1
    result[3:5, 1:2, 2:6] = 2
    output = nodes.write_result(result, volume_node, annotation.segments, name="CT result")
    assert output is not segmentation and output.GetName() == "CT result"
    written = output.GetSegmentation()
    assert [written.GetNthSegment(n).GetName() for n in range(written.GetNumberOfSegments())] == ["Liver", "Tumor"]
    np.testing.assert_allclose(written.GetNthSegment(1).GetColor(), (0.1, 0.9, 0.1), atol=1e-6)
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert output.GetNodeReferenceID(role) == volume_node.GetID()
    for n, value in enumerate((1, 2)):
        mask = nodes.segment_mask(output, written.GetNthSegmentID(n), volume_node)
        np.testing.assert_array_equal(mask, result == value)


def test_correcting_a_slice_of_the_result_in_the_same_node(scene):
    _, volume_node = _volume(scene, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    sparse = _slab([2, 6])
    segmentation, (liver_id,) = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), sparse)})
    first = nodes.read_annotation(segmentation, volume_node)
    result = np.zeros(SHAPE, dtype=np.uint8)
    result[1:8, 3:7, 4:9] = 1
    nodes.write_result(result, volume_node, first.segments, segmentation, annotation=first)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1  # written into the same segment id
    assert nodes.segment_mask(segmentation, liver_id, volume_node).sum() == result.sum()

    # Unchanged result: only the slices the user annotated are labels; the model's output is not.
    again = nodes.read_annotation(segmentation, volume_node)
    assert again.slices == (2, 6)
    np.testing.assert_array_equal(again.labels, result * np.isin(np.arange(SHAPE[0]), [2, 6])[:, None, None])

    # The user corrects slice 4: it becomes annotated, with the corrected voxels.
    corrected = nodes.segment_mask(segmentation, liver_id, volume_node)
    corrected[4] = False
    corrected[4, 3:5, 4:6] = True
    _paint(segmentation, liver_id, corrected, nodes.ijk_to_ras(volume_node))
    third = nodes.read_annotation(segmentation, volume_node)
    assert third.slices == (2, 4, 6)
    np.testing.assert_array_equal(third.labels[4], corrected[4].astype(np.uint8))
    assert third.labels[3].sum() == 0 and third.labels[7].sum() == 0


# ------------------------------------------------------------------------------------ a whole run (no GUI)
FAKE_LIBRARY_CLI = '''
import json, os, runpy, sys
if sys.argv[1:2] == ["-m"] and sys.argv[2] != "ContrastiveSegLib":  # the module's own workers run for real
    module = sys.argv[2]
    sys.argv = [module] + sys.argv[3:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    sys.exit(0)
import numpy as np
import SimpleITK as sitk
from ContrastiveSegLib.cli import build_parser
from ContrastiveSegLib.errors import InputError
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(sys.argv[3:]) + "\\n")
try:  # only command lines the real CLI accepts (after "-m ContrastiveSegLib")
    args = build_parser().parse_args(sys.argv[3:])
except InputError as error:
    print(json.dumps({"stage": "error", "message": f"the real CLI refuses this: {error}", "exit_code": 2}))
    sys.exit(2)
if os.environ.get("FAKE_MODE") == "oom":  # what the library prints when it halves its batch and goes on
    print('{"stage": "finetune", "step": 0, "of": 0, "message": "out of GPU memory: retrying with batch size 4"}',
          flush=True)
if os.environ.get("FAKE_MODE") == "oom at batch 1":  # the CLI's last word when even batch size 1 does not fit
    print('{"stage": "error", "message": "out of memory; try --preset fast, a smaller --batch-size, or a GPU", '
          '"exit_code": 1}', flush=True)
    sys.exit(1)
image = sitk.ReadImage(str(args.image))
if args.command == "segment":
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(args.labels)))
    # "Propagate": every slice gets the union of the annotated slices (axis k).
    result = np.broadcast_to(labels.max(axis=0), labels.shape).astype(np.uint8)
    open(args.model_out, "wb").write(b"weights")
else:
    result = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    result[2:5, 3:7, 4:9] = 1
out = sitk.GetImageFromArray(result)
out.CopyInformation(image)
sitk.WriteImage(out, str(args.output))
if args.probabilities:
    p = np.zeros((*result.shape, 2), np.float32)
    p[..., 0] = 0.95
    p[7, ..., 0] = 0.5  # slice 7 is the uncertain one
    p[..., 1] = 1 - p[..., 0]
    prob = sitk.GetImageFromArray(p, isVector=True)
    prob.CopyInformation(image)
    sitk.WriteImage(prob, str(args.probabilities))
print('{"stage": "done", "step": 1, "of": 1, "loss": null, "eta_s": 0}', flush=True)
'''


@pytest.fixture()
def fake_python(tmp_path):
    """An executable standing in for PythonSlicer: runs the fake CLI with the arguments the job passes."""
    import os
    import sys

    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_LIBRARY_CLI)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    wrapper.chmod(0o755)
    log = tmp_path / "calls.log"
    return str(wrapper), {**os.environ, "FAKE_LOG": str(log)}, log


@pytest.mark.skipif(__import__("os").name == "nt", reason="a POSIX shell stands in for PythonSlicer")
def test_a_whole_segment_run_without_gui(scene, fake_python, tmp_path):
    import sys

    from ContrastiveSegLib.slicer.job import Job, JobOptions, segments_file
    from ContrastiveSegLib.slicer.scoring import ScoringRun, suggest_from_scores

    python, env, log = fake_python
    _, volume_node = _volume(scene, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((0.8, 0.3, 0.2), _slab([2, 6]))})
    options = JobOptions(preset="fast", steps=20, device="cpu", show_uncertainty=True)
    job = Job("segment", volume_node, segmentation, None, options, state_dir=tmp_path / "state", python=python,
              env=env)
    events = []
    result = job.run(on_event=events.append, timeout=60)
    assert result.ok, result.message
    assert [e.stage for e in events if hasattr(e, "stage")] == ["done"]
    call = log.read_text().split()
    assert call[:1] == ["segment"] and call[call.index("--axis") + 1] == "k"
    assert call[call.index("--steps") + 1] == "20" and call[call.index("--progress") + 1] == "json"

    output = result.segmentation_node
    assert output is not segmentation and output.GetName() == "Annotations result"
    liver = output.GetSegmentation().GetSegmentIdBySegmentName("Liver")
    expected = np.broadcast_to(_slab([2]).any(axis=0), SHAPE)
    np.testing.assert_array_equal(nodes.segment_mask(output, liver, volume_node), expected)
    assert result.suggestion is None and result.uncertainty_node is None  # scored by a worker, not here
    scored = ScoringRun(result.probabilities_path, SHAPE, entropy=True, python=sys.executable).run(timeout=60)
    assert scored.ok, scored.message
    assert suggest_from_scores(scored.scores, result.annotation.axis, result.annotation.slices)[0] == 7
    entropy = read_volume(scored.entropy_path).array
    assert entropy.shape == SHAPE and entropy[7].mean() == pytest.approx(1.0, abs=1e-5)
    assert entropy[6].mean() == pytest.approx(0.2864, abs=1e-3)  # -(.95 ln .95 + .05 ln .05) / ln 2
    assert result.model_path.read_bytes() == b"weights" and segments_file(result.model_path).is_file()
    assert not any(p.name.startswith("run-") for p in (tmp_path / "state").iterdir())  # exchange files removed

    # Predict only with the saved model: names and colours come back from the model's segments file.
    predict = Job("predict", volume_node, None, None, JobOptions(device="cpu", probabilities=False),
                  model_path=result.model_path, state_dir=tmp_path / "state", python=python, env=env)
    predicted = predict.run(timeout=60)
    assert predicted.ok, predicted.message
    segment = predicted.segmentation_node.GetSegmentation().GetNthSegment(0)
    assert segment.GetName() == "Liver"
    np.testing.assert_allclose(segment.GetColor(), (0.8, 0.3, 0.2), atol=1e-6)


@pytest.mark.skipif(__import__("os").name == "nt", reason="a POSIX shell stands in for PythonSlicer")
def test_out_of_memory_is_handled_in_the_child_and_only_reported_here(scene, fake_python, tmp_path):
    from ContrastiveSegLib.slicer.job import Job, JobOptions

    python, env, log = fake_python
    _, volume_node = _volume(scene)
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), _slab([3]))})
    job = Job("segment", volume_node, segmentation, segmentation, JobOptions(device="cuda", probabilities=False),
              state_dir=tmp_path, python=python, env={**env, "FAKE_MODE": "oom"})
    messages = []
    result = job.run(on_event=lambda e: messages.append(getattr(e, "message", e)), timeout=60)
    assert result.ok, result.message
    assert "out of GPU memory: retrying with batch size 4" in messages  # the child's own note, passed on
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and "--batch-size" not in calls[0]  # one child: the Slicer side restarts nothing
    assert result.segmentation_node is segmentation  # written into the user's segmentation, as asked


@pytest.mark.skipif(__import__("os").name == "nt", reason="a POSIX shell stands in for PythonSlicer")
@pytest.mark.parametrize("kind", ["segment", "predict"])
def test_out_of_memory_at_batch_size_1_is_one_line_and_changes_nothing(scene, fake_python, tmp_path, kind):
    from ContrastiveSegLib.slicer.job import Job, JobOptions

    python, env, log = fake_python
    _, volume_node = _volume(scene)
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), _slab([3]))})
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights")
    job = Job(kind, volume_node, segmentation if kind == "segment" else None, segmentation,
              JobOptions(device="cuda", probabilities=False), model_path=model if kind == "predict" else None,
              state_dir=tmp_path / "state", python=python, env={**env, "FAKE_MODE": "oom at batch 1"})
    result = job.run(timeout=60)
    assert not result.ok and not result.run.cancelled
    assert result.message == "Out of memory; try --preset fast, a smaller --batch-size, or a GPU"
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and "--batch-size" not in calls[0]
    assert nodes.read_annotation(segmentation, volume_node).slices == (3,)  # the paint is as it was


@pytest.mark.skipif(__import__("os").name == "nt", reason="POSIX file modes")
def test_models_and_probabilities_go_to_a_folder_only_this_user_can_read(scene, fake_python, tmp_path,
                                                                          monkeypatch):
    import os
    import stat
    import tempfile

    from ContrastiveSegLib.slicer import childrun
    from ContrastiveSegLib.slicer.job import Job, JobOptions

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the system's temporary folder, for this test
    monkeypatch.setattr(childrun, "_STATE_DIRS", {}, raising=False)  # a new session
    python, env, _ = fake_python
    _, volume_node = _volume(scene, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), _slab([2, 6]))})
    first = Job("segment", volume_node, segmentation, None, JobOptions(device="cpu"), python=python, env=env)
    result = first.run(timeout=60)
    assert result.ok, result.message
    folder = first.state_dir
    assert folder != tmp_path / "ContrastiveSeg" and folder.parent == tmp_path  # not a fixed, shared name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
    assert result.model_path.parent == folder and result.probabilities_path.parent == folder
    # The next run of this session keeps its files in the same folder (refine from the last model finds it).
    second = Job("segment", volume_node, segmentation, None, JobOptions(device="cpu", init_model=str(
        result.model_path)), python=python, env=env)
    assert second.state_dir == folder


@pytest.mark.skipif(__import__("os").name == "nt", reason="a POSIX shell stands in for PythonSlicer")
def test_adapt_and_consistency_reach_the_cli_for_new_models_and_are_refused_for_a_refinement(scene, fake_python,
                                                                                               tmp_path):
    from ContrastiveSegLib.slicer.job import Job, JobOptions

    python, env, log = fake_python
    _, volume_node = _volume(scene)
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), _slab([3]))})
    options = JobOptions(device="cpu", probabilities=False, adapt="mixcl", consistency="bidirectional")
    job = Job("segment", volume_node, segmentation, None, options, state_dir=tmp_path, python=python, env=env)
    job.prepare()
    command = " ".join(job.command())
    assert "--adapt mixcl" in command and "--consistency bidirectional" in command
    # A refinement continues its model: the job refuses adapt / consistency in the API's words (one shared
    # check, options.check_training_options), before any file is written, instead of dropping them silently.
    previous = str(tmp_path / "previous.safetensors")
    for chosen in (dict(adapt="mixcl"), dict(consistency="bidirectional")):
        with pytest.raises(InputError) as refused:
            JobOptions(device="cpu", init_model=previous, **chosen)
        with pytest.raises(InputError) as by_the_api:
            options_module.check_training_options(refine=True, **chosen)
        assert str(refused.value) == str(by_the_api.value)
        assert "not to a refinement" in str(refused.value)


def test_bad_options_and_inputs_are_one_line_errors(scene):
    from ContrastiveSegLib.slicer.job import Job, JobOptions

    # The CLI's own checks (ContrastiveSegLib.options), with its wording and its "did you mean".
    with pytest.raises(InputError, match="unknown device 'gpu' .*did you mean 'cuda'"):
        JobOptions(device="gpu")
    with pytest.raises(InputError, match=r"unknown preset 'slow' \(known: default, fast\)"):
        JobOptions(preset="slow")
    with pytest.raises(InputError, match="unknown consistency 'mutual'"):
        JobOptions(consistency="mutual")
    _, volume_node = _volume(scene)
    with pytest.raises(InputError, match="choose the segmentation"):
        Job("segment", volume_node)
    with pytest.raises(InputError, match="model file not found"):
        Job("predict", volume_node, model_path="/nowhere/model.safetensors").prepare()


@pytest.mark.skipif(__import__("importlib").util.find_spec("ContrastiveSegLib.cli") is None,
                    reason="ContrastiveSegLib.cli is not there yet")
@pytest.mark.slow
def test_the_real_cli_from_nodes_to_segments(scene, tmp_path):
    """Nodes (oblique, anisotropic) -> exchange files -> real CLI (fine-tune 20 steps on the CPU) -> segments."""
    import os
    import sys

    from ContrastiveSegLib.slicer.job import Job, JobOptions
    from ContrastiveSegLib.slicer.runner import Progress

    k, j, i = np.mgrid[:24, :48, :48]
    sphere = (((k - 12) * 2.0) ** 2 + (j - 24) ** 2 + (i - 22) ** 2) <= 81
    rng = np.random.default_rng(0)
    image = Volume((sphere + rng.normal(0, 0.15, sphere.shape)).astype(np.float32), (1.0, 1.0, 2.0),
                   (-24.0, 10.0, 5.0), OBLIQUE)
    volume_node = nodes.array_to_volume(image, scene, "Phantom")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Painted")
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "Sphere", [0.9, 0.4, 0.2])
    painted = np.zeros(sphere.shape, dtype=bool)
    painted[[9, 12, 15]] = sphere[[9, 12, 15]]
    _paint(segmentation, segment_id, painted, nodes.ijk_to_ras(volume_node))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    options = JobOptions(preset="fast", steps=20, device="cpu", show_uncertainty=True)
    events = []
    result = Job("segment", volume_node, segmentation, None, options, state_dir=tmp_path, python=sys.executable,
                 env=env).run(on_event=events.append, timeout=300)
    assert result.ok, (result.message, result.run.stderr_tail)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.stage for p in progress][0] == "load" and progress[-1].stage == "done"
    steps = [p for p in progress if p.stage == "finetune" and p.of > 0]
    assert [p.step for p in steps] == list(range(1, 21)) and all(p.loss is not None for p in steps)
    assert steps[-1].loss < steps[0].loss  # it learns
    output = result.segmentation_node
    mask = nodes.segment_mask(output, output.GetSegmentation().GetSegmentIdBySegmentName("Sphere"), volume_node)
    dice = 2 * (mask & sphere).sum() / (mask.sum() + sphere.sum())
    assert dice > 0.5, f"Dice {dice:.3f}"
    from ContrastiveSegLib.slicer.scoring import ScoringRun, suggest_from_scores

    scored = ScoringRun(result.probabilities_path, sphere.shape, entropy=True, python=sys.executable,
                        env=env).run(timeout=120)
    assert scored.ok, scored.message
    assert suggest_from_scores(scored.scores, 0, (9, 12, 15))[0] not in (9, 12, 15)
    uncertainty = nodes.put_uncertainty(read_volume(scored.entropy_path).array, volume_node)
    assert slicer.util.arrayFromVolume(uncertainty).shape == sphere.shape
