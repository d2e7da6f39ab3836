"""MRML nodes <-> arrays with geometry: the only code of the project that touches Slicer's scene.

- A scalar volume node becomes a :class:`~ContrastiveSegLib.io.volume.Volume` (array (k, j, i), ITK/LPS geometry)
  and back, exactly (oblique directions, anisotropic spacing, any origin): see :mod:`.geometry` for RAS vs LPS.
- A segmentation node becomes the sparse label map the CLI reads (one label value per segment, in segment order,
  0 = background on annotated slices, 255 = not annotated), on the volume's voxel grid, with a per-segment summary
  of which slices are painted. Slices may be painted in several planes (a few axial slices and a coronal one): the
  planes are found from the label map exactly as the library finds them (:func:`find_painted_planes`), so the
  summary describes what the CLI will read; two segments painted on the same voxel by slices of different planes
  contradict each other and are refused with one line. A segmentation on another grid is rejected with one line,
  or resampled on request with Slicer's own export (nearest neighbour, through any parent transform).
- A result label map becomes segments (same names, colours and terminology) in the same or a new segmentation
  node whose reference geometry is the input volume (what DICOM SEG export needs).

When a result is written, each segment remembers which slices were annotated and a checksum of every result
slice (segment tags). Reading that segmentation again treats the remembered slices, plus every slice the user has
edited since, as annotated: so "correct a slice or two, press Segment again" works in the result itself. A
single-plane annotation keeps the tag format of earlier versions (one axis); a several-plane one lists every plane
and keeps checksums along all three axes (see :func:`_annotated_tags`).

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
from ContrastiveSegLib.io.annotations import IGNORE, annotated_slice_indices, find_painted_planes, main_axis
from ContrastiveSegLib.io.volume import Volume
from ContrastiveSegLib.options import AXIS_LETTERS
from ContrastiveSegLib.slicer.geometry import Grid, describe_axis, slice_center_ras, voxel_offset

BACKGROUND_NAMES = ("background",)
"""A segment with one of these names (any case) holds explicit background scribbles (partial annotation)."""

TAG_ANNOTATED = "ContrastiveSeg.AnnotatedSlices"
TAG_HASHES = "ContrastiveSeg.ResultSliceHashes"
_PLANE_SEPARATOR = "/"
"""Between the planes of a several-plane tag. Not "|": Slicer's .seg.nrrd writer joins a segment's tags with it
and would cut the value there when the scene is loaded again."""
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
    grid = _scan_grid(volume_node)
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    return Volume(array, grid.spacing, grid.origin, grid.direction)


def _scan_grid(volume_node) -> Grid:
    """The grid of a volume node holding one channel of voxels; InputError (one line) for anything else."""
    name = volume_node.GetName()
    image = volume_node.GetImageData()
    if image is None or min(image.GetDimensions()) < 1:
        raise InputError(f"volume '{name}' holds no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume '{name}' has {image.GetNumberOfScalarComponents()} components per voxel; "
                         "a single-channel volume is needed")
    return Grid.from_ijk_to_ras(ijk_to_ras(volume_node))


def volume_view(volume_node) -> Volume:
    """The node's voxels as a :class:`Volume` whose array is a read-only view of the node's memory (no copy of a
    200 x 512 x 512 scan on Slicer's main thread), with the same checks and geometry as :func:`volume_to_array`.
    Only for reading at once (writing the exchange file): the view follows the node."""
    grid = _scan_grid(volume_node)
    view = slicer.util.arrayFromVolume(volume_node).view()
    view.flags.writeable = False
    return Volume(view, grid.spacing, grid.origin, grid.direction)


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
Planes = dict[int, tuple[int, ...]]
"""Painted slices per array axis, ``{axis: sorted slice indices}``, only axes with a painted slice."""


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of the user's segmentation and the label value it has in the exchanged label map.

    ``slices`` are the indices (along the annotation axis) of the slices on which the segment is painted;
    ``planes`` the painted slices in every plane, as ``((axis, slices), ...)`` pairs (a tuple, so that the info
    stays hashable), empty when unknown.
    """

    segment_id: str
    name: str
    color: tuple[float, float, float]
    label_value: int
    slices: tuple[int, ...] = ()
    terminology: str = ""
    planes: tuple[tuple[int, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class Annotation:
    """A segmentation read on a volume's grid: what the CLI's LABELS file holds, and a summary for the user.

    Attributes:
        labels: uint8 (k, j, i): segment ``n`` (1-based, background segment excluded) has value ``n`` on the
            painted voxels and 0 on the rest of the painted slices (background). With a background (scribble)
            segment, the painted slices hold 255 (IGNORE, not annotated) where nothing is painted, scribbles are
            0, and voxels off the painted slices are 0, which the library reads as unknown.
        axis: annotation axis of the array (0 = k, 1 = j, 2 = i): the plane with the most painted slices, the
            one the network slices along.
        slices: the painted slices along ``axis`` (``planes[axis]``).
        segments: the foreground segments in segment order; ``label_value`` = position + 1.
        plane: "axial", "coronal" or "sagittal" for ``axis``.
        resampled: True when the segmentation was on another grid and was resampled onto the volume's.
        overlap_voxels: voxels painted in more than one segment on the same slice (the later segment wins).
        planes: painted slices per axis, as the library reads ``labels`` (:func:`find_painted_planes`).
        plane_names: the anatomical plane of the slices along each array axis (axes 0, 1, 2).
    """

    labels: np.ndarray
    axis: int
    slices: tuple[int, ...]
    segments: tuple[SegmentInfo, ...]
    plane: str
    resampled: bool = False
    overlap_voxels: int = 0
    planes: Planes = None  # type: ignore[assignment]
    plane_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.planes is None:  # built by hand with one plane, as before several planes existed
            object.__setattr__(self, "planes", {self.axis: tuple(self.slices)})

    @property
    def cli_axis(self) -> int | None:
        """The ``--axis`` to give the CLI: the axis of a single-plane annotation (given, remembered or found:
        the CLI would find the same one), None for several planes, which only the CLI's own reading of the
        label map keeps whole (a forced axis would read every slice the other planes cross as annotated)."""
        return self.axis if len(self.planes) == 1 else None

    def plane_name(self, axis: int) -> str:
        """"axial", "coronal" or "sagittal" for array ``axis`` (the letter k, j or i when unknown)."""
        if axis == self.axis:
            return self.plane
        return self.plane_names[axis] if len(self.plane_names) == 3 else AXIS_LETTERS[axis]

    def ordered_axes(self) -> list[int]:
        """The painted planes' axes, the annotation axis first."""
        return [self.axis] + sorted(a for a in self.planes if a != self.axis)

    def painted_planes(self, info: SegmentInfo) -> dict[int, tuple[int, ...]]:
        """{axis: painted slices} of one segment (a single-plane segment: its slices along :attr:`axis`)."""
        return dict(info.planes) or {self.axis: info.slices}

    def painted_extents(self) -> dict[str, dict[str, dict[int, list[int]]]]:
        """Per segment name, per plane letter (k, j, i), per painted slice: ``[voxels, row_min, row_max, col_min,
        col_max]``, the segment's painted voxel count and bounding box in that slice (rows and columns of the
        (k, j, i) array with the slice's axis taken out). Where strokes landed, e.g. for a browser's test."""
        report: dict[str, dict[str, dict[int, list[int]]]] = {}
        for info in self.segments:
            mask = self.labels == info.label_value
            planes: dict[str, dict[int, list[int]]] = {}
            for axis, slices in self.painted_planes(info).items():
                moved = np.moveaxis(mask, axis, 0)
                for s in slices:
                    rows, cols = np.nonzero(moved[s])
                    if rows.size:
                        planes.setdefault(AXIS_LETTERS[axis], {})[int(s)] = [
                            int(rows.size), int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())]
            report[info.name] = planes
        return report

    def summary(self) -> list[str]:
        """One line per segment for the module panel, e.g. ``"Liver: 3 axial slices (k = 4, 10, 17)"`` or
        ``"Liver: 2 axial slices (k = 12, 30) + 1 coronal slice (j = 50)"``."""
        lines = []
        for info in self.segments:
            painted = self.painted_planes(info)
            parts = [_count_slices(len(painted[a]), self.plane_name(a), AXIS_LETTERS[a], painted[a])
                     for a in self.ordered_axes() if painted.get(a)]
            lines.append(f"{info.name}: " + (" + ".join(parts) or _count_slices(0, self.plane, "", ())))
        if self.overlap_voxels:
            lines.append(f"{self.overlap_voxels} voxels are painted in two segments; the later segment wins")
        if self.resampled:
            lines.append("the segmentation was resampled onto the volume's grid")
        return lines


def _count_slices(count: int, plane: str, letter: str, slices: Sequence[int]) -> str:
    """"2 axial slices (k = 12, 30)": at most 8 indices shown."""
    shown = ", ".join(str(s) for s in slices[:8]) + (", ..." if len(slices) > 8 else "")
    where = f" ({letter} = {shown})" if slices else ""
    return f"{count} {plane} slice{'' if count == 1 else 's'}{where}"


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


Box = tuple[slice, slice, slice]
"""A (k, j, i) box of a volume's voxel grid."""


def label_map(segmentation_node, volume_node) -> np.ndarray:
    """Every segment of ``segmentation_node`` as one label map (k, j, i) on ``volume_node``'s grid: segment n (in
    segment order, from 1) has value n, a later segment wins where two overlap; uint8 (uint16 from 255 segments).
    InputError (one line) when there is no segment."""
    ids = _segment_ids(segmentation_node)
    if not ids:
        raise InputError("the segmentation has no segment")
    labels = None
    for value, segment_id in enumerate(ids, start=1):
        mask = segment_mask(segmentation_node, segment_id, volume_node)
        if labels is None:
            labels = np.zeros(mask.shape, dtype=np.uint8 if len(ids) < 255 else np.uint16)
        labels[mask] = value
    return labels


def write_segmentation_file(segmentation_node, path) -> None:
    """Write ``segmentation_node`` as Slicer's ``.seg.nrrd`` (segment names, colours, terminology and tags),
    atomically: OutputError (one line) when it cannot be written, and then no partial file."""
    from ContrastiveSegLib.io.volume import atomic_write

    def write(tmp) -> None:
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(tmp))
        if not storage.WriteData(segmentation_node):
            raise OSError(f"Slicer could not write {tmp.name}")

    atomic_write(path, write)


def _segment_hits(segmentation_node, segment_id: str, reference: np.ndarray, shape: Sequence[int]):
    """(bool array of the segment's voxels, (k, j, i) index of its first voxel in the volume) read straight from
    the segment's binary labelmap (a shared layer holds several segments: the segment's own label value), or None
    when the segment holds no voxel. The labelmap must lie on the volume's grid (``reference``, the IJKToRAS
    matrix); no copy of the whole layer is made, only a compare and three reductions to the painted box."""
    image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if image is None or image.IsEmpty():
        return None
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    offset = voxel_offset(reference, slicer.util.arrayFromVTKMatrix(matrix))  # (i, j, k) of index (0, 0, 0)
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    layer = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    start = [extent[4] + offset[2], extent[2] + offset[1], extent[0] + offset[0]]  # (k, j, i) in the volume
    # clip the layer to the volume first: paint outside the volume is not part of the annotation
    low = [max(0, -s) for s in start]
    high = [min(d, n - s) for d, n, s in zip(layer.shape, shape, start)]
    if any(h <= lo for lo, h in zip(low, high)):
        return None
    hit = layer[low[0]:high[0], low[1]:high[1], low[2]:high[2]] == label
    ks = np.flatnonzero(hit.any(axis=(1, 2)))
    if ks.size == 0:
        return None
    hit = hit[ks[0]:ks[-1] + 1]
    js = np.flatnonzero(hit.any(axis=(0, 2)))
    is_ = np.flatnonzero(hit.any(axis=(0, 1)))
    hit = hit[:, js[0]:js[-1] + 1, is_[0]:is_[-1] + 1]
    first = (start[0] + low[0] + ks[0], start[1] + low[1] + js[0], start[2] + low[2] + is_[0])
    return hit, tuple(int(v) for v in first)


def _segment_masks(segmentation_node, ids: Sequence[str], volume_node, full: bool) -> tuple[dict, Box]:
    """Every segment of ``ids`` as a bool array on a box of the volume's grid, and that box: the smallest box
    holding every painted voxel (``full``: the whole volume). Reading only the painted box keeps the main thread
    fast on a large scan (a 200 x 512 x 512 CT painted on a few slices): no export of whole-volume label maps."""
    shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))
    reference = ijk_to_ras(volume_node)
    hits = {i: _segment_hits(segmentation_node, i, reference, shape) for i in ids}
    found = [h for h in hits.values() if h is not None]
    if full or not found:
        box = tuple(slice(0, n) for n in shape)
    else:
        low = [min(first[a] for _, first in found) for a in range(3)]
        high = [max(first[a] + hit.shape[a] for hit, first in found) for a in range(3)]
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    box_shape = tuple(b.stop - b.start for b in box)
    masks = {}
    for segment_id, found_hit in hits.items():
        mask = np.zeros(box_shape, dtype=bool)
        if found_hit is not None:
            hit, first = found_hit
            where = tuple(slice(f - b.start, f - b.start + n) for f, b, n in zip(first, box, hit.shape))
            mask[where] = hit
        masks[segment_id] = mask
    return masks, box


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())]


def _slice_hashes(mask: np.ndarray, axis: int) -> list[int]:
    moved = np.moveaxis(mask, axis, 0)
    return [zlib.crc32(np.packbits(moved[s]).tobytes()) for s in range(moved.shape[0])]


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape)


def _annotated_tags(annotation: Annotation, mask: np.ndarray) -> tuple[str, str]:
    """(TAG_ANNOTATED, TAG_HASHES) values for a result segment ``mask`` written after ``annotation``.

    One plane: ``"k;9x11x13;2,6"`` and one checksum per slice along that axis, the format of earlier versions
    (which keep reading it). Several planes: ``"k;9x11x13;12,30/j;9x11x13;50"`` and checksums along all three
    axes, ``"k;<hashes>/j;<hashes>/i;<hashes>"``, so that a correction in any plane is found (see
    :func:`_edited_slices`). Earlier versions cannot parse the latter and ignore it, as they do damaged tags.
    """
    shape = _shape_text(mask.shape)
    if len(annotation.planes) == 1:
        listed = ",".join(str(s) for s in annotation.slices)
        hashes = ",".join(f"{h:08x}" for h in _slice_hashes(mask, annotation.axis))
        return f"{AXIS_LETTERS[annotation.axis]};{shape};{listed}", hashes
    planes = _PLANE_SEPARATOR.join(
        f"{AXIS_LETTERS[a]};{shape};{','.join(str(s) for s in annotation.planes[a])}"
        for a in annotation.ordered_axes())
    hashes = _PLANE_SEPARATOR.join(
        f"{AXIS_LETTERS[a]};{','.join(f'{h:08x}' for h in _slice_hashes(mask, a))}" for a in range(3))
    return planes, hashes


def _edited_slices(changed: dict[int, set[int]], order: Sequence[int]) -> tuple[int, set[int]] | None:
    """(axis, slices) the user edited, from the slices whose checksum changed along each stored axis.

    With one stored axis (single-plane tags) these are the changed slices along it. With three, an edit changes
    one slice along its own plane's axis and a slice along each other axis for every row and column it touches:
    the axis with the fewest changed slices is the one it was made in (ties: ``order``, the painted planes
    first). Edits in several planes between two runs cannot be told apart by checksums of whole slices; then
    the smallest one-plane explanation is taken (more slices than edited, never fewer).
    """
    if not any(changed.values()):
        return None
    rank = {a: n for n, a in enumerate([*order, *(a for a in range(3) if a not in order)])}
    axis = min(changed, key=lambda a: (len(changed[a]), rank[a]))
    return axis, changed[axis]


def _remembered_slices(segment, mask: np.ndarray) -> dict[int, set[int]] | None:
    """{axis: slices} this segment marks as annotated: the remembered ones plus every slice edited since the
    result was written. None when the segment carries no (or stale) ContrastiveSeg tags."""
    annotated, hashes = _get_tag(segment, TAG_ANNOTATED), _get_tag(segment, TAG_HASHES)
    if not annotated or not hashes:
        return None
    try:
        planes: dict[int, set[int]] = {}
        for entry in annotated.split(_PLANE_SEPARATOR):
            axis_letter, shape, listed = entry.split(";")
            if shape != _shape_text(mask.shape):
                return None
            planes[AXIS_LETTERS.index(axis_letter)] = {int(s) for s in listed.split(",") if s}
        if ";" in hashes:  # several planes: checksums along every axis, each list named by its axis
            stored = {}
            for entry in hashes.split(_PLANE_SEPARATOR):
                axis_letter, listed = entry.split(";")
                stored[AXIS_LETTERS.index(axis_letter)] = [int(h, 16) for h in listed.split(",")]
        elif len(planes) == 1:  # one plane (and every earlier version): checksums along its axis
            stored = {next(iter(planes)): [int(h, 16) for h in hashes.split(",")]}
        else:
            return None
    except ValueError:
        return None  # tags written by someone else, or damaged: ignore them
    changed = {}
    for axis, listed in stored.items():
        current = _slice_hashes(mask, axis)
        if len(listed) != len(current):
            return None
        changed[axis] = {s for s, (a, b) in enumerate(zip(listed, current)) if a != b}
    edited = _edited_slices(changed, list(planes))
    if edited is not None:
        planes.setdefault(edited[0], set()).update(edited[1])
    return planes


def _slices_with(mask: np.ndarray, axis: int) -> set[int]:
    other = tuple(a for a in range(3) if a != axis)
    return {int(s) for s in np.flatnonzero(mask.any(axis=other))}


def _on_slices(shape: Sequence[int], planes: dict[int, Sequence[int]]) -> np.ndarray:
    """Bool array of ``shape``: True on every slice of ``planes``."""
    keep = np.zeros(shape, dtype=bool)
    for axis, slices in planes.items():
        index: list = [slice(None)] * 3
        index[axis] = sorted(int(s) for s in slices)
        keep[tuple(index)] = True
    return keep


def _annotated_region(segmentation, foreground: list[str], masks: dict[str, np.ndarray],
                      axis: int | None) -> tuple[dict[int, set[int]], np.ndarray] | None:
    """({axis: annotated slices}, mask of those slices) when some segments hold a previous result, else None.

    In a segment that holds a result, paint on a slice that was neither annotated nor edited since is the
    model's own output, not a label. Segments without the tags (added since) count on every painted slice: the
    slices along the result's axis, as before several planes existed, unless the segment is painted in several
    planes itself (or ``axis`` is given: then along it).
    """
    remembered = {i: _remembered_slices(segmentation.GetSegment(i), masks[i]) for i in foreground}
    tracked = [r for r in remembered.values() if r is not None]
    if not tracked:
        return None
    planes: dict[int, set[int]] = {}
    for found in tracked:
        for found_axis, slices in found.items():
            if axis is None or found_axis == axis:
                planes.setdefault(found_axis, set()).update(slices)
    along = axis if axis is not None else (next(iter(planes)) if len(planes) == 1 else None)
    for segment_id, found in remembered.items():
        mask = masks[segment_id]
        if found is not None or not mask.any():
            continue
        own = None
        if axis is None:
            own = {a: set(int(s) for s in v) for a, v in find_painted_planes(mask.astype(np.uint8)).items()}
        if own is None or (len(own) == 1 and along is not None):
            own = {along: _slices_with(mask, along)}
        for own_axis, slices in own.items():
            planes.setdefault(own_axis, set()).update(slices)
    return planes, _on_slices(masks[foreground[0]].shape, planes)


def _painted_planes(marked: np.ndarray, axis: int | None) -> dict[int, np.ndarray]:
    """The painted slices of a label map as the library reads it: along ``axis`` when given (the CLI's
    ``--axis``: every slice holding a labelled voxel), else found in every plane."""
    if axis is not None:
        return {axis: annotated_slice_indices(marked, axis)}
    return find_painted_planes(marked)


def _attribute(mask: np.ndarray, planes: dict[int, np.ndarray], order: Sequence[int]) -> dict[int, list[int]]:
    """The painted slices that hold a segment's voxels: {axis: slices}, a subset of ``planes``.

    Where slices of two planes cross, a voxel lies on both, so a segment painted on an axial slice also marks a
    line of every coronal slice painted (by another segment) across it. The slices are taken greedily, the one
    holding most of the segment's voxels not yet explained first (ties: ``order``), as the library finds the
    planes, so the crossing lines do not add slices the segment was never painted on.
    """
    if len(planes) == 1:
        axis = next(iter(planes))
        return {axis: sorted(_slices_with(mask, axis) & {int(s) for s in planes[axis]})}
    # Counts of not yet explained voxels per slice, updated as slices are taken: each voxel is visited once
    # after the sort, so a segment painted on every slice (a finished segmentation) costs one pass, not one
    # pass per slice.
    points = np.argwhere(mask)
    counts, groups, allowed = {}, {}, {}
    for axis in order:
        allowed[axis] = np.zeros(mask.shape[axis], dtype=bool)
        allowed[axis][planes[axis]] = True
        counts[axis] = np.bincount(points[:, axis], minlength=mask.shape[axis]) * allowed[axis]
        by_slice = np.argsort(points[:, axis], kind="stable")
        groups[axis] = by_slice, np.searchsorted(points[by_slice, axis], np.arange(mask.shape[axis] + 1))
    uncovered = np.ones(len(points), dtype=bool)
    chosen: dict[int, list[int]] = {}
    while True:
        best = None
        for axis in order:
            s = int(np.argmax(counts[axis]))
            if counts[axis][s] > 0 and (best is None or counts[axis][s] > best[2]):
                best = (axis, s, int(counts[axis][s]))
        if best is None:
            break  # every voxel explained (the planes cover every painted voxel)
        axis, s, _ = best
        by_slice, starts = groups[axis]
        members = by_slice[starts[s]:starts[s + 1]]
        newly = members[uncovered[members]]
        uncovered[newly] = False
        for other in order:
            counts[other] -= np.bincount(points[newly, other], minlength=mask.shape[other]) * allowed[other]
        chosen.setdefault(axis, []).append(s)
    return {axis: sorted(slices) for axis, slices in chosen.items()}


def _check_crossings(kept: dict[str, np.ndarray], names: dict[str, str], attributed: dict[str, dict[int, list]],
                     plane_name, shape: Sequence[int], corner: Sequence[int] = (0, 0, 0)) -> None:
    """Refuse, in one line, two segments painted on the same voxel by slices of two different planes.

    Each painted slice says what its voxels are: the last segment painted there on that slice (as in one plane,
    where the later segment wins over a nested one). Where an axial and a coronal slice cross, both speak for
    the crossing voxels; when they name different segments the painting contradicts itself and no label map can
    keep both: "every painted voxel comes back exactly as painted" would be false for one of them.
    """
    ids = list(kept)
    votes = {}
    for axis in sorted({a for found in attributed.values() for a in found}):
        vote = np.zeros(shape, dtype=np.uint8)
        for value, segment_id in enumerate(ids, start=1):
            slices = attributed[segment_id].get(axis)
            if slices:
                on = np.zeros(shape[axis], dtype=bool)
                on[slices] = True
                vote[kept[segment_id] & on.reshape([-1 if a == axis else 1 for a in range(3)])] = value
        votes[axis] = vote
    groups: dict[tuple[int, int, int, int, int, int], int] = {}
    contradicted = np.zeros(shape, dtype=bool)
    axes = sorted(votes)
    for n, a in enumerate(axes):
        for b in axes[n + 1:]:
            conflict = (votes[a] != 0) & (votes[b] != 0) & (votes[a] != votes[b])
            if not conflict.any():
                continue
            contradicted |= conflict
            points = np.argwhere(conflict)
            pairs = np.stack([votes[a][conflict], points[:, a], votes[b][conflict], points[:, b]], axis=1)
            for (va, sa, vb, sb), count in zip(*np.unique(pairs.astype(np.int64), axis=0, return_counts=True)):
                # the earlier segment first, each with the slice that painted it
                key = (int(va), a, int(sa), int(vb), b, int(sb)) if va < vb else (int(vb), b, int(sb), int(va), a,
                                                                                    int(sa))
                groups[key] = groups.get(key, 0) + int(count)
    if not groups:
        return
    # the largest contradiction, the first in segment and slice order among equals
    (first, axis_a, slice_a, second, axis_b, slice_b), count = max(sorted(groups.items()), key=lambda g: g[1])
    others = int(contradicted.sum()) - count
    more = f" (and {others} more voxels where other painted slices cross)" if others > 0 else ""

    def where(axis: int, index: int) -> str:
        return f"{plane_name(axis)} slice {AXIS_LETTERS[axis]} = {index + corner[axis]}"

    raise InputError(f"'{names[ids[first - 1]]}' ({where(axis_a, slice_a)}) and '{names[ids[second - 1]]}' "
                     f"({where(axis_b, slice_b)}) overlap at {count} voxel{'' if count == 1 else 's'}{more}: "
                     "a voxel can hold one structure; erase one of them where the slices cross")


def read_annotation(segmentation_node, volume_node, *, axis: int | None = None,
                    resample: bool = False) -> Annotation:
    """The segmentation's painted slices as the CLI's sparse label map on ``volume_node``'s grid.

    Args:
        axis: annotation axis of the (k, j, i) array, a single plane (the CLI's ``--axis``); None finds the
            painted planes, one or several, as the library does from the label map.
        resample: accept a segmentation on another voxel grid (resampled nearest-neighbour by Slicer).
            Off by default because a slice painted on one grid spreads over parts of several slices of another.

    Only the box holding the painted voxels is read from the segments' labelmaps (no whole-volume export: fast
    on Slicer's main thread for a large scan); a segment carrying a previous result's tags, or a segmentation on
    another grid (resampled by Slicer's export), is read on the whole volume.

    Raises InputError (one line) when nothing is painted, the grids differ and ``resample`` is off, the paint
    lies outside the volume, two segments are painted on the same voxel by slices of different planes, or
    there are more than 254 segments.
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

    volume_shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))
    if problem:  # another grid: Slicer's own export resamples each segment onto the volume's whole grid
        masks = {i: segment_mask(segmentation_node, i, volume_node) for i in ids}
        box = tuple(slice(0, n) for n in volume_shape)
    else:
        # Only the painted box is read; a segment carrying result tags (a previous result in this node) is
        # checked slice by slice against the checksums of the whole volume, so then the box is the whole volume.
        tagged = any(_get_tag(segmentation.GetSegment(i), TAG_ANNOTATED) for i in foreground)
        masks, box = _segment_masks(segmentation_node, ids, volume_node, full=tagged)
    corner = tuple(b.start for b in box)
    shape = tuple(b.stop - b.start for b in box)
    region = _annotated_region(segmentation, foreground, masks, axis)
    if region is not None:
        remembered, keep = region
        if axis is None and len(remembered) == 1:
            axis = next(iter(remembered))  # a single-plane result is read along its axis, as before
        kept = {i: masks[i] & keep for i in foreground}
    else:
        kept = {i: masks[i] for i in foreground}

    labels = np.zeros(shape, dtype=np.uint8)
    painted = np.zeros(shape, dtype=np.int32)
    for value, segment_id in enumerate(foreground, start=1):
        labels[kept[segment_id]] = value
        painted += kept[segment_id]
    if not (painted > 0).any():
        if any(not segmentation_node.GetBinaryLabelmapInternalRepresentation(i).IsEmpty() for i in foreground):
            raise InputError(f"the painted voxels of '{seg_name}' lie outside volume '{volume_node.GetName()}'")
        raise InputError(f"no annotated slice: paint at least one slice of a segment of '{seg_name}'")
    # The planes and axis the CLI will read from this label map (given --axis only for a single plane), found in
    # the box: the plane search depends on the painted voxels only, so indices in the box plus its corner are
    # the volume's (IGNORE, added below, is never a painted voxel).
    planes = _painted_planes(labels, axis)
    full_labels = np.zeros(volume_shape, dtype=np.uint8)
    full_labels[box] = labels
    if background:
        # Background scribbles are always the user's own, wherever they are. Explicit background: only painted
        # voxels are known, the rest of each painted slice is "not annotated" (IGNORE), and voxels off the
        # painted slices stay 0, which the library reads as unknown (IGNORE on every voxel of the volume would
        # make its plane search walk every voxel).
        scribbles = np.zeros(shape, dtype=bool)
        for segment_id in background:
            scribbles |= masks[segment_id]
        layout = _painted_planes(((painted > 0) | scribbles).astype(np.uint8), axis)
        layout = {a: np.asarray(v) + corner[a] for a, v in layout.items()}
        full_labels[_on_slices(volume_shape, layout) & (full_labels == 0)] = IGNORE
        full_labels[box][scribbles & (painted == 0)] = 0
    axis = main_axis(planes) if axis is None else axis
    matrix = ijk_to_ras(volume_node)
    plane_names = tuple(describe_axis(matrix, a) for a in range(3))
    order = [axis] + sorted(a for a in planes if a != axis)
    attributed = {i: _attribute(kept[i], planes, order) for i in foreground}
    names = {i: segmentation.GetSegment(i).GetName() for i in foreground}
    if len(planes) > 1:
        _check_crossings(kept, names, attributed, lambda a: plane_names[a], shape, corner)

    infos = []
    for value, segment_id in enumerate(foreground, start=1):
        segment = segmentation.GetSegment(segment_id)
        own = attributed[segment_id]
        infos.append(SegmentInfo(segment_id, names[segment_id], tuple(float(c) for c in segment.GetColor()), value,
                                 tuple(int(s) + corner[axis] for s in own.get(axis, ())),
                                 _get_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName()),
                                 tuple((a, tuple(int(s) + corner[a] for s in own[a])) for a in order if own.get(a))))
    return Annotation(full_labels, int(axis), tuple(int(s) + corner[axis] for s in planes[axis]), tuple(infos),
                      plane_names[axis], bool(problem), int((painted > 1).sum()),
                      {int(a): tuple(int(s) + corner[a] for s in planes[a]) for a in order}, plane_names)


# ---------------------------------------------------------------------------------------------------- results
def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest (k, j, i) box holding every True voxel of ``mask`` (one voxel at the origin when none)."""
    box = []
    for axis in range(3):
        found = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(found[0]), int(found[-1]) + 1) if found.size else slice(0, 1))
        if not found.size:
            return (slice(0, 1),) * 3
    return tuple(box)


def _oriented_mask(mask: np.ndarray, ijk_to_ras_matrix: np.ndarray, box=None):
    """``mask[box]`` (the whole mask when ``box`` is None) as a uint8 vtkOrientedImageData on the volume's grid:
    its extent is the box's voxel indices, so it lands where the box is."""
    box = box or tuple(slice(0, n) for n in mask.shape)
    part = mask[box]
    image = slicer.vtkOrientedImageData()
    image.SetExtent(box[2].start, box[2].stop - 1, box[1].start, box[1].stop - 1, box[0].start, box[0].stop - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_matrix))
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(part.shape)
    voxels[:] = part
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
        _place_beside(target_node, volume_node)
    # Whoever made the node: one the user added from a node selector (qMRMLNodeComboBox::addNode creates the node
    # through qMRMLNodeFactory, which adds no display node) or a script would show nothing without one, and
    # SetBinaryLabelmapToSegment does not add one either. Does nothing when the node has one already.
    target_node.CreateDefaultDisplayNodes()
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
        # The segment is cleared, then only its bounding box goes to Slicer: a structure in a large CT is a
        # fraction of the volume, and replacing over the whole volume's extent costs Slicer 4x more (0.33 s vs
        # 0.09 s for a liver in a 200 x 512 x 512 CT, benchmarks/slicer_main_thread.py).
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        logic.ClearSegment(target_node, segment_id)
        oriented = _oriented_mask(mask, matrix, _bounding_box(mask))
        if not logic.SetBinaryLabelmapToSegment(oriented, target_node, segment_id, logic.MODE_REPLACE,
                                                oriented.GetExtent()):
            raise RuntimeError(f"Slicer could not write segment '{info.name}' into '{target_node.GetName()}'")
        if annotation is not None:
            annotated, hashes = _annotated_tags(annotation, mask)
            segment.SetTag(TAG_ANNOTATED, annotated)
            segment.SetTag(TAG_HASHES, hashes)
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


# ------------------------------------------------------------------------------------------------------- undo
@dataclass
class ResultUndo:
    """What :func:`undo_result` needs to take a written result back: the segmentation node, whether the run made
    it, and (when it did not) a copy of its segments as they were before the result was written."""

    node: object
    created: bool
    saved: object = None  # a vtkSegmentation copy; None when the node was made by the run


def snapshot_before_result(target_node) -> ResultUndo | None:
    """Remember ``target_node``'s segments before a result is written into it (None: the run makes a new node).

    A deep copy of the node's vtkSegmentation: the binary labelmaps (shared layers included), names, colours,
    tags and the source representation, so :func:`undo_result` restores exactly what the user had. The copy of a
    200 x 512 x 512 layer is one memory copy (about 50 MB), not a re-export."""
    if target_node is None:
        return None
    saved = slicer.vtkSegmentation()
    saved.DeepCopy(target_node.GetSegmentation())
    return ResultUndo(target_node, False, saved)


def undo_result(undo: ResultUndo) -> None:
    """Take back a result: remove the node the run made, or give the node its segments from before the run."""
    node = undo.node
    scene = node.GetScene()
    if undo.created:
        if scene is not None:
            scene.RemoveNode(node)
        return
    node.GetSegmentation().DeepCopy(undo.saved)
    node.Modified()


# ------------------------------------------------------------------------------------------------- transforms
def local_to_world(node, point) -> np.ndarray:
    """``point`` (RAS in ``node``'s local coordinates) in world coordinates, through the node's parent transforms
    (linear or not); unchanged for a node without a parent transform."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.asarray(point, dtype=float)
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, transform)
    return np.asarray(transform.TransformPoint([float(v) for v in point]), dtype=float)


def slice_center_world(volume_node, axis: int, index: int) -> np.ndarray:
    """World RAS position of the centre of slice ``index`` along array ``axis`` (0 = k, 1 = j, 2 = i) of
    ``volume_node``: where the slice views must jump to show that slice, also for a transformed volume."""
    shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))
    return local_to_world(volume_node, slice_center_ras(ijk_to_ras(volume_node), shape, axis, index))


UNCERTAINTY_ROLE = "uncertainty"
ROLE_ATTRIBUTE = "ContrastiveSeg.Role"
"""Node attribute marking volumes the module made (value "uncertainty"): they are not scans to pretrain on, and
they are found again by this mark, never by name (a user's own node of the same name is left alone)."""
SOURCE_ATTRIBUTE = "ContrastiveSeg.SourceVolumeID"


def find_uncertainty_node(volume_node):
    """The uncertainty volume the module made for ``volume_node`` (by its marks, not its name), or None."""
    scene = volume_node.GetScene()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.GetAttribute(ROLE_ATTRIBUTE) == UNCERTAINTY_ROLE and \
                node.GetAttribute(SOURCE_ATTRIBUTE) == volume_node.GetID():
            return node
    return None


def put_uncertainty(entropy: np.ndarray, volume_node, node=None):
    """Show ``entropy`` (k, j, i) on ``volume_node``'s grid as a volume marked as the module's uncertainty map of
    that volume, under the volume's parent transform (so it lands where the volume is)."""
    volume = Volume(entropy, *_itk_geometry(volume_node))
    node = node or find_uncertainty_node(volume_node) or volume_node.GetScene().AddNewNodeByClass(
        "vtkMRMLScalarVolumeNode", f"{volume_node.GetName()} uncertainty")
    _fixed_window(node)
    node = array_to_volume(volume, volume_node.GetScene(), node.GetName(), node=node)
    node.SetAttribute(ROLE_ATTRIBUTE, UNCERTAINTY_ROLE)
    node.SetAttribute(SOURCE_ATTRIBUTE, volume_node.GetID())
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    return node


def put_uncertainty_file(path, volume_node, node=None):
    """:func:`put_uncertainty` from the worker's raw float32 NRRD entropy map (:mod:`.scoring`), read straight
    into the node's voxel memory: one read of the file, no intermediate array (200 MB for a large CT)."""
    from pathlib import Path

    shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))
    count = int(np.prod(shape))
    path = Path(path)
    header = path.stat().st_size - 4 * count
    if header <= 0:
        raise InputError(f"the uncertainty file {path.name} does not fit volume '{volume_node.GetName()}'")
    image = vtk.vtkImageData()
    image.SetDimensions(*reversed(shape))
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    with open(path, "rb") as stream:
        stream.seek(header)
        if stream.readinto(memoryview(voxels).cast("B")) != 4 * count:
            raise InputError(f"the uncertainty file {path.name} is incomplete")
    if voxels.dtype.byteorder == ">":  # the worker writes little-endian
        voxels.byteswap(inplace=True)
    scene = volume_node.GetScene()
    node = node or find_uncertainty_node(volume_node) or scene.AddNewNodeByClass(
        "vtkMRMLScalarVolumeNode", f"{volume_node.GetName()} uncertainty")
    _fixed_window(node)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(volume_node)))
    node.SetAttribute(ROLE_ATTRIBUTE, UNCERTAINTY_ROLE)
    node.SetAttribute(SOURCE_ATTRIBUTE, volume_node.GetID())
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    return node


def _fixed_window(node) -> None:
    """Give an uncertainty volume its display before its voxels: the window is the entropy's own range [0, 1],
    so Slicer does not compute an automatic window over every voxel (0.7 s for a 200 x 512 x 512 map)."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)


def _itk_geometry(volume_node):
    grid = Grid.from_ijk_to_ras(ijk_to_ras(volume_node))
    return grid.spacing, grid.origin, grid.direction
