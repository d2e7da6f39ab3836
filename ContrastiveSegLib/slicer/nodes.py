"""MRML nodes <-> arrays with geometry: the only code of the project that touches Slicer's scene.

- A scalar volume node becomes a :class:`~ContrastiveSegLib.io.volume.Volume` (array (k, j, i), ITK/LPS geometry)
  and back, exactly (oblique directions, anisotropic spacing, any origin): see :mod:`.geometry` for RAS vs LPS.
- A segmentation node becomes the sparse label map the CLI reads (one label value per segment, in segment order,
  0 = background on annotated slices, 255 = not annotated), on the volume's voxel grid, with a per-segment summary
  of which slices are painted. A segmentation on another grid is rejected with one line, or resampled on request
  with Slicer's own export (nearest neighbour, through any parent transform).
- A result label map becomes segments (same names, colours and terminology) in the same or a new segmentation
  node whose reference geometry is the input volume (what DICOM SEG export needs).

When a result is written, each segment remembers which slices were annotated and a checksum of every result
slice (segment tags). Reading that segmentation again treats the remembered slices, plus every slice the user has
edited since, as annotated: so "correct a slice or two, press Segment again" works in the result itself.

Works in Slicer and with the ``slicer-core`` wheel (no Qt, no ``slicer.app``): everything goes through the scene
the nodes live in and the static methods of ``vtkSlicerSegmentationsModuleLogic``.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.annotations import IGNORE, find_annotation_axis
from ContrastiveSegLib.io.volume import Volume
from ContrastiveSegLib.slicer.geometry import AXIS_LETTERS, Grid, describe_axis, voxel_offset

BACKGROUND_NAMES = ("background",)
"""A segment with one of these names (any case) holds explicit background scribbles (partial annotation)."""

TAG_ANNOTATED = "ContrastiveSeg.AnnotatedSlices"
TAG_HASHES = "ContrastiveSeg.ResultSliceHashes"
_MAX_LABEL = IGNORE - 1


# ---------------------------------------------------------------------------------------------------- volumes
def ijk_to_ras(volume_node) -> np.ndarray:
    """The node's 4x4 IJKToRAS matrix as numpy (local coordinates, before any parent transform)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_to_array(volume_node) -> Volume:
    """A copy of the node's voxels, shape (k, j, i), with its geometry in ITK/LPS conventions.

    Raises InputError (one line) for a node without voxels or with more than one component per voxel.
    """
    name = volume_node.GetName()
    image = volume_node.GetImageData()
    if image is None or min(image.GetDimensions()) < 1:
        raise InputError(f"volume '{name}' holds no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume '{name}' has {image.GetNumberOfScalarComponents()} components per voxel; "
                         "a single-channel volume is needed")
    grid = Grid.from_ijk_to_ras(ijk_to_ras(volume_node))
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    return Volume(array, grid.spacing, grid.origin, grid.direction)


def array_to_volume(volume: Volume, scene, name: str, *, labelmap: bool = False, node=None):
    """Put ``volume`` (array (k, j, i), ITK/LPS geometry) into a new (or the given) scalar or label map node."""
    if volume.array.ndim != 3:
        raise ValueError(f"a 3D (k, j, i) array is needed, got shape {volume.array.shape}")
    if node is None:
        node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(node_class, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    grid = Grid(tuple(volume.spacing), tuple(volume.origin), tuple(volume.direction))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(grid.ijk_to_ras()))
    node.CreateDefaultDisplayNodes()
    return node


# ------------------------------------------------------------------------------------------- segmentations
@dataclass(frozen=True)
class SegmentInfo:
    """One segment of the user's segmentation and the label value it has in the exchanged label map.

    ``slices`` are the indices (along the annotation axis) of the slices on which the segment is painted.
    """

    segment_id: str
    name: str
    color: tuple[float, float, float]
    label_value: int
    slices: tuple[int, ...] = ()
    terminology: str = ""


@dataclass(frozen=True)
class Annotation:
    """A segmentation read on a volume's grid: what the CLI's LABELS file holds, and a summary for the user.

    Attributes:
        labels: uint8 (k, j, i): segment ``n`` (1-based, background segment excluded) has value ``n`` on the
            annotated slices, 0 is background there, 255 (IGNORE) is not annotated.
        axis: annotation axis of the array (0 = k, 1 = j, 2 = i).
        slices: every annotated slice along ``axis``.
        segments: the foreground segments in segment order; ``label_value`` = position + 1.
        plane: "axial", "coronal" or "sagittal" for ``axis``.
        resampled: True when the segmentation was on another grid and was resampled onto the volume's.
        overlap_voxels: voxels painted in more than one segment (the later segment wins).
    """

    labels: np.ndarray
    axis: int
    slices: tuple[int, ...]
    segments: tuple[SegmentInfo, ...]
    plane: str
    resampled: bool = False
    overlap_voxels: int = 0

    def summary(self) -> list[str]:
        """One line per segment for the module panel, e.g. ``"Liver: 3 axial slices (k = 4, 10, 17)"``."""
        lines = []
        letter = AXIS_LETTERS[self.axis]
        for info in self.segments:
            shown = ", ".join(str(s) for s in info.slices[:8]) + (", ..." if len(info.slices) > 8 else "")
            plural = "" if len(info.slices) == 1 else "s"
            where = f" ({letter} = {shown})" if info.slices else ""
            lines.append(f"{info.name}: {len(info.slices)} {self.plane} slice{plural}{where}")
        if self.overlap_voxels:
            lines.append(f"{self.overlap_voxels} voxels are painted in two segments; the later segment wins")
        if self.resampled:
            lines.append("the segmentation was resampled onto the volume's grid")
        return lines


def _segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def _get_tag(segment, key: str) -> str:
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else ""


def _source_representation(segmentation) -> str:
    # Slicer 5.4 renamed "master" to "source" representation; support both.
    getter = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName
    return getter()


def _grid_problem(segmentation_node, volume_node) -> str | None:
    """Why the segmentation's painted voxels are not on the volume's voxel grid, or None when they are."""
    seg_name, vol_name = segmentation_node.GetName(), volume_node.GetName()
    if segmentation_node.GetTransformNodeID() != volume_node.GetTransformNodeID():
        return f"segmentation '{seg_name}' and volume '{vol_name}' are under different transforms"
    segmentation = segmentation_node.GetSegmentation()
    if _source_representation(segmentation) != slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName():
        return f"segmentation '{seg_name}' is stored as {_source_representation(segmentation)}, not painted voxels"
    reference = ijk_to_ras(volume_node)
    for segment_id in _segment_ids(segmentation_node):
        image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
        if image is None or image.IsEmpty():
            continue
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        other = slicer.util.arrayFromVTKMatrix(matrix)
        if voxel_offset(reference, other) is None:
            vol_spacing = np.linalg.norm(reference[:3, :3], axis=0)
            seg_spacing = np.linalg.norm(other[:3, :3], axis=0)
            return (f"segmentation '{seg_name}' is on a different voxel grid than volume '{vol_name}' (spacing "
                    f"{_fmt(seg_spacing)} vs {_fmt(vol_spacing)} mm, or shifted or rotated)")
    return None


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.3g}" for v in values) + ")"


def segment_mask(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """A segment as a bool array (k, j, i) on the volume's grid, through Slicer's export (resamples if needed)."""
    scene = volume_node.GetScene()
    before = _node_ids(scene)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__ContrastiveSeg_temp__")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, volume_node):
            raise InputError(f"Slicer could not export segment '{segment_id}' of '{segmentation_node.GetName()}'")
        return slicer.util.arrayFromVolume(labelmap) > 0
    finally:
        # The export adds a display node and a colour table beside the label map: remove all it added.
        for node_id in reversed([i for i in _node_ids(scene) if i not in before]):
            node = scene.GetNodeByID(node_id)
            if node is not None:
                scene.RemoveNode(node)


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())]


def _slice_hashes(mask: np.ndarray, axis: int) -> list[int]:
    moved = np.moveaxis(mask, axis, 0)
    return [zlib.crc32(np.packbits(moved[s]).tobytes()) for s in range(moved.shape[0])]


def _remembered_slices(segment, mask: np.ndarray) -> tuple[int, set[int]] | None:
    """(axis, slices) this segment marks as annotated: the remembered ones plus every slice edited since the
    result was written. None when the segment carries no (or stale) ContrastiveSeg tags."""
    annotated, hashes = _get_tag(segment, TAG_ANNOTATED), _get_tag(segment, TAG_HASHES)
    if not annotated or not hashes:
        return None
    try:
        axis_letter, shape, listed = annotated.split(";")
        axis = AXIS_LETTERS.index(axis_letter)
        if shape != "x".join(str(n) for n in mask.shape):
            return None
        slices = {int(s) for s in listed.split(",") if s}
        stored = [int(h, 16) for h in hashes.split(",")]
    except ValueError:
        return None  # tags written by someone else, or damaged: ignore them
    current = _slice_hashes(mask, axis)
    if len(stored) != len(current):
        return None
    return axis, slices | {s for s, (a, b) in enumerate(zip(stored, current)) if a != b}


def _annotated_region(segmentation, foreground: list[str], masks: dict[str, np.ndarray],
                      axis: int | None) -> tuple[int, np.ndarray] | None:
    """(axis, mask of the annotated slices) when some segments hold a previous result, else None.

    In a segment that holds a result, paint on a slice that was neither annotated nor edited since is the
    model's own output, not a label. Segments without the tags (added since) count on every painted slice.
    """
    remembered = {i: _remembered_slices(segmentation.GetSegment(i), masks[i]) for i in foreground}
    tracked = [r for r in remembered.values() if r is not None]
    if not tracked:
        return None
    if axis is None:
        axis = tracked[0][0]
    other = tuple(a for a in range(3) if a != axis)
    slices: set[int] = set()
    for segment_id, found in remembered.items():
        if found is None:
            slices |= {int(s) for s in np.flatnonzero(masks[segment_id].any(axis=other))}
        elif found[0] == axis:
            slices |= found[1]
    keep = np.zeros(masks[foreground[0]].shape, dtype=bool)
    index: list = [slice(None)] * 3
    index[axis] = sorted(slices)
    keep[tuple(index)] = True
    return axis, keep


def read_annotation(segmentation_node, volume_node, *, axis: int | None = None,
                    resample: bool = False) -> Annotation:
    """The segmentation's painted slices as the CLI's sparse label map on ``volume_node``'s grid.

    Args:
        axis: annotation axis of the (k, j, i) array; None finds it (the axis whose slices hold all paint).
        resample: accept a segmentation on another voxel grid (resampled nearest-neighbour by Slicer).
            Off by default because a slice painted on one grid spreads over parts of several slices of another.

    Raises InputError (one line) when nothing is painted, the grids differ and ``resample`` is off, the paint
    lies outside the volume, or there are more than 254 segments.
    """
    if axis is not None and axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (k, j, i), got {axis}")
    seg_name = segmentation_node.GetName()
    problem = _grid_problem(segmentation_node, volume_node)
    if problem and not resample:
        raise InputError(f"{problem}; paint on '{volume_node.GetName()}' or allow resampling")
    segmentation = segmentation_node.GetSegmentation()
    ids = _segment_ids(segmentation_node)
    background = [i for i in ids if segmentation.GetSegment(i).GetName().strip().lower() in BACKGROUND_NAMES]
    foreground = [i for i in ids if i not in background]
    if not foreground:
        raise InputError(f"segmentation '{seg_name}' has no segment to learn (only a background segment)")
    if len(foreground) > _MAX_LABEL:
        raise InputError(f"segmentation '{seg_name}' has {len(foreground)} segments; "
                         f"at most {_MAX_LABEL} are supported")

    masks = {i: segment_mask(segmentation_node, i, volume_node) for i in ids}
    shape = next(iter(masks.values())).shape
    keep = _annotated_region(segmentation, foreground, masks, axis)
    if keep is not None:
        axis, keep = keep
    else:
        keep = np.ones(shape, dtype=bool)

    labels = np.zeros(shape, dtype=np.uint8)
    painted = np.zeros(shape, dtype=np.int32)
    for value, segment_id in enumerate(foreground, start=1):
        mask = masks[segment_id] & keep
        labels[mask] = value
        painted += mask
    if background:
        # Background scribbles are always the user's own, wherever they are.
        scribbles = np.zeros(shape, dtype=bool)
        for segment_id in background:
            scribbles |= masks[segment_id]
        # Explicit background: only painted voxels are known, everything else is "not annotated".
        labels = np.where(labels > 0, labels, np.where(scribbles, 0, IGNORE)).astype(np.uint8)
    if not (painted > 0).any():
        if any(not segmentation_node.GetBinaryLabelmapInternalRepresentation(i).IsEmpty() for i in foreground):
            raise InputError(f"the painted voxels of '{seg_name}' lie outside volume '{volume_node.GetName()}'")
        raise InputError(f"no annotated slice: paint at least one slice of a segment of '{seg_name}'")
    if axis is None:
        axis = find_annotation_axis(labels)

    other = tuple(a for a in range(3) if a != axis)
    infos = []
    for value, segment_id in enumerate(foreground, start=1):
        segment = segmentation.GetSegment(segment_id)
        slices = np.flatnonzero((masks[segment_id] & keep).any(axis=other))
        infos.append(SegmentInfo(segment_id, segment.GetName(), tuple(float(c) for c in segment.GetColor()), value,
                                 tuple(int(s) for s in slices),
                                 _get_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName())))
    all_slices = np.flatnonzero(((labels > 0) & (labels != IGNORE)).any(axis=other))
    return Annotation(labels, int(axis), tuple(int(s) for s in all_slices), tuple(infos),
                      describe_axis(ijk_to_ras(volume_node), axis), bool(problem), int((painted > 1).sum()))


# ---------------------------------------------------------------------------------------------------- results
def _oriented_mask(mask: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*reversed(mask.shape))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_matrix))
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(mask.shape)
    voxels[:] = mask
    return image


def write_result(labels: np.ndarray, volume_node, segments: Sequence[SegmentInfo], target_node=None, *,
                 name: str | None = None, annotation: Annotation | None = None, closed_surface: bool = False):
    """Put a result label map (k, j, i) on ``volume_node``'s grid into segments of ``target_node``.

    Segment ``info`` receives the voxels equal to ``info.label_value``; in the node it was read from it keeps its
    id, elsewhere it is found by name or created with the same name, colour and terminology. ``target_node`` None
    creates a new segmentation node called ``name``. The reference geometry becomes the volume's, the parent
    transform and subject-hierarchy folder those of the volume. With ``annotation``, each segment remembers the
    annotated slices and a checksum per result slice (see the module docstring). Returns the segmentation node.
    """
    matrix = ijk_to_ras(volume_node)
    image = volume_node.GetImageData()
    if labels.shape != tuple(reversed(image.GetDimensions())):
        raise ValueError(f"result shape {labels.shape} does not match volume '{volume_node.GetName()}' "
                         f"shape {tuple(reversed(image.GetDimensions()))}")
    scene = volume_node.GetScene()
    if target_node is None:
        name = name or f"{volume_node.GetName()} segmentation"
        target_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        target_node.CreateDefaultDisplayNodes()
        _place_beside(target_node, volume_node)
    target_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    target_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    segmentation = target_node.GetSegmentation()
    for info in segments:
        segment_id = info.segment_id if segmentation.GetSegment(info.segment_id) else \
            segmentation.GetSegmentIdBySegmentName(info.name)
        if not segment_id:
            segment_id = segmentation.AddEmptySegment(info.segment_id, info.name, list(info.color))
        segment = segmentation.GetSegment(segment_id)
        segment.SetColor(*info.color)
        if info.terminology:
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), info.terminology)
        mask = labels == info.label_value
        oriented = _oriented_mask(mask.astype(np.uint8), matrix)
        if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                oriented, target_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
                oriented.GetExtent()):
            raise RuntimeError(f"Slicer could not write segment '{info.name}' into '{target_node.GetName()}'")
        if annotation is not None:
            shape = "x".join(str(n) for n in labels.shape)
            listed = ",".join(str(s) for s in annotation.slices)
            segment.SetTag(TAG_ANNOTATED, f"{AXIS_LETTERS[annotation.axis]};{shape};{listed}")
            segment.SetTag(TAG_HASHES, ",".join(f"{h:08x}" for h in _slice_hashes(mask, annotation.axis)))
    if closed_surface:
        target_node.CreateClosedSurfaceRepresentation()
    return target_node


def _place_beside(node, volume_node) -> None:
    """Put ``node`` in the volume's subject-hierarchy folder (study), so results stay with their scan."""
    hierarchy = node.GetScene().GetSubjectHierarchyNode()
    if hierarchy is None:
        return
    volume_item = hierarchy.GetItemByDataNode(volume_node)
    item = hierarchy.GetItemByDataNode(node)
    invalid = hierarchy.GetInvalidItemID()
    if volume_item != invalid and item != invalid:
        hierarchy.SetItemParent(item, hierarchy.GetItemParent(volume_item))
