"""Segmentations painted in several planes (axial AND coronal or sagittal slices), read by the Slicer bridge
(ContrastiveSegLib.slicer.nodes) from real MRML nodes of the slicer-core wheel.

What a Slicer user does: paint a structure on two axial slices and one coronal slice. The bridge must hand the
CLI a label map that holds exactly the painted voxels, describe it per plane, pass no ``--axis`` (which would read
every axial slice the coronal one crosses as annotated), refuse two segments painted on the same voxel by
crossing slices, and remember every plane's slices in a result it writes back.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

from ContrastiveSegLib.cli import build_parser  # noqa: E402
from ContrastiveSegLib.errors import InputError  # noqa: E402
from ContrastiveSegLib.io.annotations import IGNORE, decode_annotation  # noqa: E402
from ContrastiveSegLib.io.volume import Volume, read_volume  # noqa: E402
from ContrastiveSegLib.slicer import nodes  # noqa: E402
from test_slicer_bridge import _paint, _segmentation  # noqa: E402

SHAPE = (24, 30, 32)  # (k, j, i)
IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)  # k axial, j coronal, i sagittal


def _volume(scene, direction=IDENTITY):
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=SHAPE).astype(np.float32), (0.8, 0.8, 1.5), (-10.0, 4.0, 20.0), direction)
    return nodes.array_to_volume(volume, scene, "MR")


def _ball(centre, radii) -> np.ndarray:
    grid = np.indices(SHAPE) - np.asarray(centre)[:, None, None, None]
    return np.sum(grid ** 2 / np.asarray(radii, dtype=float)[:, None, None, None] ** 2, axis=0) <= 1


LIVER = _ball((12, 15, 11), (9, 8, 7))
SPLEEN = _ball((12, 15, 24), (7, 6, 5))


def _on(structure: np.ndarray, *, k=(), j=(), i=()) -> np.ndarray:
    """``structure`` painted on the given axial (k), coronal (j) and sagittal (i) slices only."""
    painted = np.zeros(SHAPE, dtype=bool)
    for axis, slices in enumerate((k, j, i)):
        for s in slices:
            index = [slice(None)] * 3
            index[axis] = s
            painted[tuple(index)] = structure[tuple(index)]
    return painted


def _planes(planes) -> dict[int, list[int]]:
    return {int(a): [int(s) for s in v] for a, v in planes.items()}


def _command(scene, volume_node, segmentation, tmp_path, **options) -> list[str]:
    """The segment command line the module builds for this painting (checked against the real parser)."""
    from ContrastiveSegLib.slicer.job import Job, JobOptions

    job = Job("segment", volume_node, segmentation, None, JobOptions(device="cpu", **options),
              state_dir=tmp_path / "state", python="py")
    job.prepare()
    command = job.command()
    build_parser().parse_args(command[3:])  # raises InputError on a command line the CLI refuses
    return command, job


def test_two_axial_and_one_coronal_slice(scene, tmp_path):
    volume_node = _volume(scene)
    liver = _on(LIVER, k=(8, 16), j=(15,))
    spleen = _on(SPLEEN, k=(8,))  # its axial slice crosses the liver's coronal slice, painted nowhere else
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((0.8, 0.3, 0.2), liver),
                                                          "Spleen": ((0.2, 0.3, 0.8), spleen)})
    annotation = nodes.read_annotation(segmentation, volume_node)

    # Exactly the painted voxels, each with its segment's value; 0 (background on the painted slices) elsewhere.
    expected = np.zeros(SHAPE, dtype=np.uint8)
    expected[liver] = 1
    expected[spleen] = 2
    np.testing.assert_array_equal(annotation.labels, expected)
    assert _planes(annotation.planes) == {0: [8, 16], 1: [15]}
    assert annotation.axis == 0 and annotation.plane == "axial" and annotation.slices == (8, 16)
    assert annotation.cli_axis is None and annotation.overlap_voxels == 0
    assert annotation.summary() == ["Liver: 2 axial slices (k = 8, 16) + 1 coronal slice (j = 15)",
                                    "Spleen: 1 axial slice (k = 8)"]
    assert dict(annotation.segments[0].planes) == {0: (8, 16), 1: (15,)}

    # The library reads the same planes from the label map; the coronal slice is annotated everywhere (its
    # zero voxels are background), the axial slices it crosses only on its line.
    decoded = decode_annotation(annotation.labels)
    assert _planes(decoded.planes) == {0: [8, 16], 1: [15]} and decoded.axis == 0
    assert (decoded.target[:, 15] != IGNORE).all() and (decoded.target[3, 14] == IGNORE).all()

    # No --axis: the CLI finds the planes itself. The exchanged file holds the same label map.
    command, job = _command(scene, volume_node, segmentation, tmp_path)
    assert "--axis" not in command
    np.testing.assert_array_equal(read_volume(job.paths["labels"]).array, expected)


def test_a_forced_axis_is_one_plane_and_reaches_the_cli(scene, tmp_path):
    volume_node = _volume(scene)
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), _on(LIVER, k=(8, 16), j=(15,)))})
    annotation = nodes.read_annotation(segmentation, volume_node, axis=0)
    assert list(annotation.planes) == [0] and annotation.cli_axis == 0  # the user's choice, as the CLI's --axis
    command, _ = _command(scene, volume_node, segmentation, tmp_path, axis=0)
    assert command[command.index("--axis") + 1] == "k"


def test_plane_names_follow_the_volume_orientation(scene):
    # A volume stored in coronal slices: its k axis points anterior, so k slices are coronal, j slices axial.
    volume_node = _volume(scene, direction=(1, 0, 0, 0, 0, -1, 0, 1, 0))
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), _on(LIVER, k=(8, 16), j=(15,)))})
    annotation = nodes.read_annotation(segmentation, volume_node)
    assert annotation.summary() == ["Liver: 2 coronal slices (k = 8, 16) + 1 axial slice (j = 15)"]


def test_result_round_trip_keeps_every_painted_voxel_and_every_plane(scene, tmp_path):
    volume_node = _volume(scene)
    liver, spleen = _on(LIVER, k=(8, 16), j=(15,)), _on(SPLEEN, k=(8, 16), i=(24,))
    segmentation, (liver_id, spleen_id) = _segmentation(
        scene, volume_node, {"Liver": ((0.8, 0.3, 0.2), liver), "Spleen": ((0.2, 0.3, 0.8), spleen)})
    first = nodes.read_annotation(segmentation, volume_node)
    assert _planes(first.planes) == {0: [8, 16], 1: [15], 2: [24]}

    # A result that fills in the structures and keeps the annotated voxels as they were read (the painted slices,
    # background included: the spleen is not painted on the liver's coronal slice), written over the paint.
    result = np.zeros(SHAPE, dtype=np.uint8)
    result[LIVER] = 1
    result[SPLEEN] = 2
    annotated = decode_annotation(first.labels).target != IGNORE
    result[annotated] = first.labels[annotated]
    nodes.write_result(result, volume_node, first.segments, segmentation, annotation=first)
    tag = nodes._get_tag(segmentation.GetSegmentation().GetSegment(liver_id), nodes.TAG_ANNOTATED)
    assert tag == "k;24x30x32;8,16/j;24x30x32;15/i;24x30x32;24"

    # Saved as .seg.nrrd and loaded again (Slicer joins a segment's tags with "|": the planes must survive).
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "result.seg.nrrd"))
    assert storage.WriteData(segmentation)
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Loaded")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(tmp_path / "result.seg.nrrd"))
    assert reader.ReadData(loaded)
    for node in (segmentation, loaded):
        again = nodes.read_annotation(node, volume_node)
        # Only the annotated slices are labels, and on them every painted voxel is back exactly as painted.
        np.testing.assert_array_equal(again.labels, first.labels)
        assert _planes(again.planes) == _planes(first.planes) and again.summary() == first.summary()

    # The user corrects sagittal slice 6 of the liver (a plane never painted): that slice joins the annotation.
    corrected = nodes.segment_mask(segmentation, liver_id, volume_node)
    corrected[:, :, 6] = False
    corrected[10:15, 12:18, 6] = True
    _paint(segmentation, liver_id, corrected, nodes.ijk_to_ras(volume_node))
    third = nodes.read_annotation(segmentation, volume_node)
    assert _planes(third.planes) == {0: [8, 16], 1: [15], 2: [6, 24]}
    np.testing.assert_array_equal(third.labels[:, :, 6], corrected[:, :, 6].astype(np.uint8))
    off = np.ones(SHAPE, dtype=bool)
    off[[8, 16]] = off[:, 15] = off[:, :, [6, 24]] = False
    assert not third.labels[off].any()  # the model's output elsewhere is not taken for labels
    np.testing.assert_array_equal(nodes.segment_mask(segmentation, spleen_id, volume_node), result == 2)


def test_single_plane_results_keep_the_earlier_tag_format(scene):
    volume_node = _volume(scene)
    segmentation, (liver_id,) = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), _on(LIVER, k=(8, 16)))})
    first = nodes.read_annotation(segmentation, volume_node)
    assert _planes(first.planes) == {0: [8, 16]} and first.cli_axis == 0
    nodes.write_result(LIVER.astype(np.uint8), volume_node, first.segments, segmentation, annotation=first)
    segment = segmentation.GetSegmentation().GetSegment(liver_id)
    assert nodes._get_tag(segment, nodes.TAG_ANNOTATED) == "k;24x30x32;8,16"
    # One CRC-32 of the packed bits per axial slice, exactly as earlier versions wrote and read them.
    expected = ",".join(f"{zlib.crc32(np.packbits(LIVER[k]).tobytes()):08x}" for k in range(SHAPE[0]))
    assert nodes._get_tag(segment, nodes.TAG_HASHES) == expected
    again = nodes.read_annotation(segmentation, volume_node)
    np.testing.assert_array_equal(again.labels, first.labels)
    assert again.summary() == ["Liver: 2 axial slices (k = 8, 16)"]


def test_segments_painted_on_one_voxel_by_crossing_slices_are_refused(scene):
    volume_node = _volume(scene)
    liver = _on(LIVER, k=(8,))
    spleen = _on(LIVER, j=(15,))  # painted over the liver where the coronal slice crosses axial slice 8
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), liver), "Spleen": ((0, 0, 1), spleen)})
    overlap = int((liver & spleen).sum())
    assert overlap > 0
    with pytest.raises(InputError) as error:
        nodes.read_annotation(segmentation, volume_node)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"'Liver' (axial slice k = 8) and 'Spleen' (coronal slice j = 15) overlap at "
                              f"{overlap} voxels: a voxel can hold one structure")


def test_a_nested_segment_on_the_same_slice_still_wins_in_several_planes(scene):
    volume_node = _volume(scene)
    liver = _on(LIVER, k=(8, 16), j=(15,))
    tumor = np.zeros(SHAPE, dtype=bool)
    tumor[16, 12:15, 8:12] = True  # inside the liver on axial slice 16, off the coronal slice
    segmentation, _ = _segmentation(scene, volume_node, {"Liver": ((1, 0, 0), liver), "Tumor": ((0, 1, 0), tumor)})
    annotation = nodes.read_annotation(segmentation, volume_node)
    assert annotation.overlap_voxels == int((liver & tumor).sum()) == 12
    assert (annotation.labels[tumor] == 2).all() and (annotation.labels[liver & ~tumor] == 1).all()
    assert annotation.summary()[1:] == ["Tumor: 1 axial slice (k = 16)",
                                        "12 voxels are painted in two segments; the later segment wins"]


def test_background_scribbles_in_several_planes(scene):
    volume_node = _volume(scene)
    lesion = _on(LIVER, k=(8,), j=(15,))
    scribbles = np.zeros(SHAPE, dtype=bool)
    scribbles[8, 0:3, 0:10] = True
    scribbles[2:6, 15, 25:30] = True  # on the coronal slice, off every axial slice the lesion is painted on
    segmentation, _ = _segmentation(scene, volume_node, {"Background": ((0, 0, 0), scribbles),
                                                          "Lesion": ((1, 0, 0), lesion)})
    annotation = nodes.read_annotation(segmentation, volume_node)
    assert _planes(annotation.planes) == {0: [8], 1: [15]} and annotation.cli_axis is None
    assert annotation.summary() == ["Lesion: 1 axial slice (k = 8) + 1 coronal slice (j = 15)"]
    # Only what is painted is known, in both planes: the lesion, and the scribbles as background.
    decoded = decode_annotation(annotation.labels)
    expected = np.where(lesion, 1, np.where(scribbles, 0, IGNORE)).astype(np.uint8)
    np.testing.assert_array_equal(decoded.target, expected)


@pytest.mark.skipif(__import__("importlib").util.find_spec("ContrastiveSegLib.cli") is None,
                    reason="ContrastiveSegLib.cli is not there yet")
@pytest.mark.slow
def test_the_real_cli_keeps_a_painting_in_two_planes(scene, tmp_path):
    """Nodes -> exchange files -> real CLI (20 fine-tuning steps on the CPU) -> the same segmentation: no --axis,
    and every annotated voxel of both planes comes back exactly as painted, so reading the result again gives
    the same label map."""
    import os
    import sys

    from ContrastiveSegLib.slicer.job import Job, JobOptions

    k, j, i = np.mgrid[:20, :40, :40]
    sphere = (((k - 10) * 1.5) ** 2 + (j - 20) ** 2 + (i - 19) ** 2) <= 100
    rng = np.random.default_rng(0)
    image = Volume((sphere + rng.normal(0, 0.2, sphere.shape)).astype(np.float32), (1.0, 1.0, 1.5),
                   (-20.0, 8.0, 3.0), IDENTITY)
    volume_node = nodes.array_to_volume(image, scene, "Phantom")
    painted = np.zeros(sphere.shape, dtype=bool)
    painted[[7, 13]] = sphere[[7, 13]]
    painted[:, 20] |= sphere[:, 20]
    segmentation, (segment_id,) = _segmentation(scene, volume_node, {"Sphere": ((0.9, 0.4, 0.2), painted)})
    first = nodes.read_annotation(segmentation, volume_node)
    assert _planes(first.planes) == {0: [7, 13], 1: [20]}

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    job = Job("segment", volume_node, segmentation, segmentation,
              JobOptions(preset="fast", steps=20, device="cpu", probabilities=False), state_dir=tmp_path,
              python=sys.executable, env=env)
    result = job.run(timeout=300)
    assert result.ok, (result.message, result.run.stderr_tail)
    assert "--axis" not in job.command()
    mask = nodes.segment_mask(segmentation, segment_id, volume_node)
    annotated = decode_annotation(first.labels).target != IGNORE
    np.testing.assert_array_equal(mask[annotated], painted[annotated])
    again = nodes.read_annotation(segmentation, volume_node)
    np.testing.assert_array_equal(again.labels, first.labels)
    assert again.summary() == first.summary() == ["Sphere: 2 axial slices (k = 7, 13) + 1 coronal slice (j = 20)"]
