"""Unlabelled volumes for self-supervised pretraining: find them, check them cheaply, stream slices from them.

Pretraining may see hundreds of scans, so :class:`SliceStream` never holds more than ``pool_size + 1`` volumes in
memory: a pool of resident volumes that batches draw from, and one volume loading in a background thread (SimpleITK
and NumPy release the GIL) that replaces the pool's oldest-exhausted member. A batch follows the sampler of
Chaitanya et al. (NeurIPS 2020) and Peng et al. (NeurIPS 2021): a few volumes, several slices from each, stratified
along the volume so every part of the scan is represented, which is what makes the slice-position meta-label
informative. Each sample carries its meta-labels: normalised slice ``position`` in [0, 1), ``volume`` (index into
the full source list, identical on every rank) and ``tag`` (a per-volume user tag, -1 when unknown).

Under torch.distributed the volumes are sharded by rank (each rank loads a disjoint subset, like
``DistributedSampler``); with fewer volumes than ranks every rank sees every volume with its own random slices.
Arrays are (z, y, x); slices are taken along ``axis`` with the same :class:`~ContrastiveSegLib.data.slices.InputSpec`
fine-tuning uses, so a pretrained encoder plugs into fine-tuning unchanged.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import torch

from ContrastiveSegLib.data.intensity import check_finite, normalise_intensity
from ContrastiveSegLib.data.slices import InputSpec, SliceStack, coordinate_window, pad_end
from ContrastiveSegLib.data.superpixels import SuperpixelParams, cached_superpixels
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.annotations import IGNORE
from ContrastiveSegLib.io.volume import IMAGE_FILE_SUFFIXES

MIN_IN_PLANE = 16  # the encoder halves the slice four times: anything smaller has no bottleneck left
UNKNOWN_TAG = -1


# ----------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class FileVolume:
    """A volume on disk: one file (NIfTI, NRRD, MHA, a DICOM file) or one DICOM series (``files`` in order)."""

    path: Path
    files: tuple[str, ...] = ()
    tag: str | None = None

    @property
    def name(self) -> str:
        return str(self.path) if not self.files else f"{self.path} (DICOM series, {len(self.files)} files)"

    def header(self, tag_key: str | None = None) -> tuple[tuple[int, int, int], str | None]:
        """(z, y, x) size and the metadata value of ``tag_key`` (if any), read without loading voxels."""
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        from ContrastiveSegLib.io.volume import library_reason, native_stderr

        reader.SetFileName(self.files[0] if self.files else str(self.path))
        try:
            with native_stderr() as printed:  # ITK's warning block goes into the one line, not onto the terminal
                reader.ReadImageInformation()
        except RuntimeError as error:
            raise InputError(f"cannot read {self.name}: {library_reason(error, printed)}") from None
        size = list(reader.GetSize())
        if self.files:
            size = [*size[:2], len(self.files)]
        if len(size) != 3 or reader.GetNumberOfComponents() != 1:
            raise InputError(f"{self.name} is not a single-channel 3D volume (size {tuple(size)}, "
                             f"{reader.GetNumberOfComponents()} components)")
        tag = self.tag
        if tag is None and tag_key and reader.HasMetaDataKey(tag_key):
            tag = reader.GetMetaData(tag_key).strip() or None
        return (size[2], size[1], size[0]), tag

    def read(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(z, y, x) voxels and no labels; InputError (one line) when unreadable."""
        if not self.files:
            from ContrastiveSegLib.io.volume import read_volume

            return read_volume(self.path, what="volume").array, None
        import SimpleITK as sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(list(self.files))
        try:
            return sitk.GetArrayFromImage(reader.Execute()), None
        except RuntimeError as error:
            lines = str(error).strip().splitlines()
            raise InputError(f"cannot read {self.name}: {(lines[-1] if lines else 'unreadable')[:200]}") from None


@dataclass(frozen=True, eq=False)
class ArrayVolume:
    """A volume already in memory (the scan being segmented, for on-the-fly adaptation).

    Attributes:
        array: (z, y, x) intensities.
        labels: optional (z, y, x) class targets (0..C-1, 255 = not annotated), for MixCL's label term.
        name: shown in messages.
        tag: optional per-volume meta-label.
    """

    array: np.ndarray
    labels: np.ndarray | None = None
    name: str = "array"
    tag: str | None = None

    def header(self, tag_key: str | None = None) -> tuple[tuple[int, int, int], str | None]:
        if self.array.ndim != 3:
            raise InputError(f"{self.name} must be a 3D (z, y, x) array, got shape {self.array.shape}")
        if self.labels is not None and self.labels.shape != self.array.shape:
            raise InputError(f"{self.name}: labels of shape {self.labels.shape} do not match {self.array.shape}")
        return tuple(int(s) for s in self.array.shape), self.tag  # type: ignore[return-value]

    def read(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self.array, self.labels


VolumeSource = Union[FileVolume, ArrayVolume]


def _is_volume_file(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_FILE_SUFFIXES)


def find_volumes(paths: Sequence[str | os.PathLike]) -> list[FileVolume]:
    """Expand DATA arguments into volumes: a file is one volume; a folder is searched recursively for volume files
    (NIfTI, NRRD, MHA/MHD) and DICOM series (one volume per series). Hidden files and folders are skipped.

    Raises InputError when a path does not exist or nothing usable is found.
    """
    import SimpleITK as sitk

    from ContrastiveSegLib.io.files import check_readable, check_regular_file, irregular_kind
    from ContrastiveSegLib.io.volume import native_stderr

    hint = "pretraining reads regular files and folders only"
    volumes: list[FileVolume] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"data not found: {path}")
        check_readable(path, "data")
        if not path.is_dir():
            check_regular_file(path, "data", hint=hint)  # a FIFO or /dev/zero: refused, never opened
            volumes.append(FileVolume(path))
            continue
        found_here = 0
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files = sorted(f for f in files if not f.startswith("."))
            others = False
            for name in files:
                # Before any reader opens it (ITK's header read, GDCM's scan): a FIFO blocks open() for ever.
                kind = irregular_kind(Path(folder) / name)
                if kind is not None and kind != "a folder":
                    raise InputError(f"data folder {path} holds {Path(folder) / name}, which is {kind}; {hint} "
                                     "(move it out)")
                if _is_volume_file(Path(name)):
                    volumes.append(FileVolume(Path(folder) / name))
                    found_here += 1
                elif not name.lower().endswith((".raw", ".zraw", ".json", ".txt", ".csv", ".md")):
                    others = True
            if others:  # only folders with unknown files can hold DICOM: GDCM's scan is slow on big trees
                with native_stderr():  # GDCM's warnings on files that are no DICOM: not for the terminal
                    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
                for series in series_ids:
                    with native_stderr():
                        names = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series))
                    volumes.append(FileVolume(Path(folder), names))
                    found_here += 1
        if not found_here:
            raise InputError(f"{path}: folder holds no volume (NIfTI, NRRD, MHA or DICOM series)")
    if not volumes:
        raise InputError("no data given: name at least one volume file or folder")
    return volumes


@dataclass(frozen=True)
class SourceInfo:
    """What :func:`check_sources` learnt from the headers: (z, y, x) shapes and integer tag ids (-1 unknown)."""

    shapes: tuple[tuple[int, int, int], ...]
    tags: tuple[int, ...]
    tag_names: tuple[str, ...]


def check_sources(sources: Sequence[VolumeSource], axis: int = 0, *, tag_key: str | None = None,
                  tags: Mapping[str, str] | None = None) -> SourceInfo:
    """Read every header (no voxels) and fail early, with one line, on an unreadable volume or one whose slices
    along ``axis`` are smaller than :data:`MIN_IN_PLANE` pixels.

    ``tags`` maps a volume's name (or file path) to a user tag; otherwise ``tag_key`` names a metadata key
    (e.g. DICOM ``0008|0060`` modality) to read. Tags become integer ids in sorted order, the same on every rank.
    """
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    if not sources:
        raise InputError("no data given: name at least one volume file or folder")
    shapes, names = [], []
    for source in sources:
        shape, tag = source.header(tag_key)
        if tags is not None:
            tag = tags.get(str(getattr(source, "path", source.name)), tags.get(source.name, tag))
        in_plane = tuple(s for a, s in enumerate(shape) if a != axis)
        if min(shape) < 1:
            raise InputError(f"{source.name} is empty (shape {shape})")
        if min(in_plane) < MIN_IN_PLANE:
            raise InputError(f"{source.name}: slices along axis {axis} are {in_plane[0]} x {in_plane[1]} pixels; "
                             f"the network needs at least {MIN_IN_PLANE} x {MIN_IN_PLANE}")
        shapes.append(shape)
        names.append(tag)
    tag_names = tuple(sorted({t for t in names if t is not None}))
    ids = tuple(tag_names.index(t) if t is not None else UNKNOWN_TAG for t in names)
    return SourceInfo(tuple(shapes), ids, tag_names)


# ----------------------------------------------------------------------------------------------- streaming
@dataclass(frozen=True)
class StreamConfig:
    """How slices are drawn (defaults and reasons in docs/methods.md, "Pretraining data").

    Attributes:
        patch: crop height and width (a multiple of 16; smaller slices are padded).
        slices_per_volume: slices per volume in a batch, stratified along the volume (4, as Chaitanya et al.'s
            four partitions).
        pool_size: volumes resident at once; memory is bounded by ``pool_size + 1`` volumes.
        draws_per_volume: slices drawn from a volume before it makes room for the next (only when the rank has
            more volumes than the pool holds).
        superpixels: compute (cached) Felzenszwalb superpixels and return them under "superpixels" (LRC).
        superpixel_params: their parameters (the axis is set to the stream's).
        cache_dir: superpixel cache folder (None: no cache).
        labels: return "labels" (class targets, 255 where unknown; all 255 for volumes without labels).
        prefetch: load the next volume in a background thread.
    """

    patch: int = 128
    slices_per_volume: int = 4
    pool_size: int = 4
    draws_per_volume: int = 256
    superpixels: bool = False
    superpixel_params: SuperpixelParams = field(default_factory=SuperpixelParams)
    cache_dir: Path | None = None
    labels: bool = False
    prefetch: bool = True

    def __post_init__(self) -> None:
        if self.patch < MIN_IN_PLANE or self.patch % MIN_IN_PLANE:
            raise ValueError(f"patch must be a multiple of {MIN_IN_PLANE} (>= {MIN_IN_PLANE}), got {self.patch}")
        for name in ("slices_per_volume", "pool_size", "draws_per_volume"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class _Resident:
    index: int  # global index of the source: the "volume" meta-label
    stack: SliceStack
    superpixels: torch.Tensor | None  # (S, H, W) int32, slices first
    labels: torch.Tensor | None  # (S, H, W) int16, slices first
    tag: int
    remaining: int
    low: float  # intensity used to pad crops (the volume's background)


class SliceStream:
    """Batches of 2.5D slice crops streamed from many volumes with bounded memory.

    Args:
        sources: the volumes (:class:`FileVolume` or :class:`ArrayVolume`), in the same order on every rank.
        spec: the input spec (channels) shared with fine-tuning.
        axis: slicing axis of the (z, y, x) arrays.
        config: see :class:`StreamConfig`.
        info: the result of :func:`check_sources` (computed when None).
        seed: the volume order depends on ``seed`` only (identical on all ranks); slice draws on (seed, rank).
        rank, world_size: this process's shard.

    ``batch(B)`` returns a dict: "image" (B, C, P, P) float32; "position" (B,) float32 in [0, 1); "volume" and
    "tag" (B,) int64; with ``config.superpixels`` "superpixels" (B, P, P) int64 (renumbered 0.. per crop, -1
    outside the body or the slice); with ``config.labels`` "labels" (B, P, P) int64 (255 where unknown).
    """

    def __init__(self, sources: Sequence[VolumeSource], spec: InputSpec = InputSpec(), axis: int = 0,
                 config: StreamConfig = StreamConfig(), info: SourceInfo | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.sources = list(sources)
        self.spec, self.axis, self.config = spec, axis, config
        self.info = info or check_sources(self.sources, axis)
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.superpixel_params = replace(config.superpixel_params, axis=axis)
        self.rng = np.random.default_rng([self.seed, rank, 0x5EED])
        self._epoch = 0
        self._queue: list[int] = []
        self.loads = 0  # volumes loaded so far (for tests and logs)
        self.shard = self._shard(0)
        self.pool_size = min(config.pool_size, len(self.shard))
        self._executor = ThreadPoolExecutor(max_workers=1) if config.prefetch else None
        self._pending: Future | None = None
        self._pending_index = -1
        self.pool: list[_Resident] = [self._load(self._next_index()) for _ in range(self.pool_size)]
        self._prefetch()

    # -------------------------------------------------------------------------------------------- volume order
    def _shard(self, epoch: int) -> list[int]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.sources))
        if len(self.sources) >= self.world_size:
            order = order[self.rank::self.world_size]
        return [int(i) for i in order]

    @property
    def cycles(self) -> bool:
        """Whether volumes are swapped in and out (the shard is larger than the pool)."""
        return len(self.shard) > self.pool_size

    def _next_index(self) -> int:
        if not self._queue:
            self._queue = self._shard(self._epoch)
            self._epoch += 1
        return self._queue.pop(0)

    def _prefetch(self) -> None:
        if self.cycles and self._pending is None:
            index = self._next_index()
            self._pending = self._executor.submit(self._load, index) if self._executor else None
            self._pending_index = index

    def _take_prefetched(self) -> _Resident:
        if self._pending is None:
            return self._load(self._pending_index)
        pending, self._pending = self._pending, None
        return pending.result()

    def _load(self, index: int) -> _Resident:
        source = self.sources[index]
        array, labels = source.read()
        check_finite(np.asarray(array), what=source.name)
        if array.ndim != 3 or min(s for a, s in enumerate(array.shape) if a != self.axis) < MIN_IN_PLANE:
            raise InputError(f"{source.name}: shape {array.shape} is too small for the network "
                             f"(slices along axis {self.axis} need {MIN_IN_PLANE} x {MIN_IN_PLANE} pixels)")
        ids = None
        if self.config.superpixels:
            ids = cached_superpixels(array, self.config.cache_dir, self.superpixel_params)
            ids = torch.from_numpy(np.ascontiguousarray(np.moveaxis(ids, self.axis, 0)))
        normalised = normalise_intensity(np.asarray(array))
        del array
        stack = SliceStack(normalised, self.axis, self.spec)
        targets = None
        if self.config.labels and labels is not None:
            targets = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(labels, np.int16), self.axis, 0)))
        self.loads += 1
        return _Resident(index, stack, ids, targets, self.info.tags[index], self.config.draws_per_volume,
                         float(stack.slices.min()))

    def reseed(self, step: int) -> None:
        """Restart the slice draws from (seed, rank, step): a resumed run continues deterministically."""
        self.rng = np.random.default_rng([self.seed, self.rank, 0x5EED, int(step)])

    def close(self) -> None:
        """Stop the background loader (pending work is dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "SliceStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------- batches
    def batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """A batch of ``batch_size`` crops (see the class docstring for the keys and shapes)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        k = self.config.slices_per_volume
        m = math.ceil(batch_size / k)
        chosen = self.rng.choice(len(self.pool), size=m, replace=m > len(self.pool))
        samples: list[tuple[_Resident, int]] = []
        for p in chosen:
            resident = self.pool[int(p)]
            n = resident.stack.num_slices
            # One slice per stratum of the volume: index floor((j + u) * n / k) for stratum j.
            strata = np.floor((np.arange(k) + self.rng.random(k)) * n / k).astype(int)
            samples.extend((resident, int(s)) for s in strata)
        samples = samples[:batch_size]
        crops = [self._crop(resident, s) for resident, s in samples]
        out = {"image": torch.stack([c[0] for c in crops]),
               "position": torch.tensor([(s + 0.5) / r.stack.num_slices for r, s in samples], dtype=torch.float32),
               "volume": torch.tensor([r.index for r, _ in samples], dtype=torch.int64),
               "tag": torch.tensor([r.tag for r, _ in samples], dtype=torch.int64)}
        if self.config.superpixels:
            out["superpixels"] = torch.stack([c[1] for c in crops])
        if self.config.labels:
            out["labels"] = torch.stack([c[2] for c in crops])
        self._rotate(samples)
        return out

    def _rotate(self, samples: list[tuple[_Resident, int]]) -> None:
        for resident, _ in samples:
            resident.remaining -= 1
        if not self.cycles:
            return
        for position, resident in enumerate(self.pool):
            if resident.remaining <= 0:
                self.pool[position] = self._take_prefetched()
                self._prefetch()
                break  # at most one swap per batch, so a step never waits for more than one load

    def _crop(self, resident: _Resident, s: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        stack, p = resident.stack, self.config.patch
        height, width = stack.height, stack.width
        top = int(self.rng.integers(0, max(height - p, 0) + 1))
        left = int(self.rng.integers(0, max(width - p, 0) + 1))
        rows = slice(top, top + p)
        cols = slice(left, left + p)
        k = 2 * self.spec.context + 1
        image = stack.inputs([s])[0]
        image = pad_end(image[:k], p, p, resident.low)[:, rows, cols]
        if self.spec.coordinates:
            # Coordinates continue linearly into the padding, so they still say where a pixel lies in the slice.
            coords = coordinate_window(height, width, top, left, p)
            image = torch.cat([image, coords])
        ids = labels = None
        if self.config.superpixels:
            crop = pad_end(resident.superpixels[s], p, p, -1)[rows, cols].long()
            # Renumber 0.. per crop: ids only need to be unique within an image, and small ids stay exact in the
            # float resampling of the spatial augmentation.
            values, inverse = torch.unique(crop, return_inverse=True)
            ids = inverse - 1 if values[0] < 0 else inverse
            ids = torch.where(crop < 0, torch.full_like(crop, -1), ids)
        if self.config.labels:
            if resident.labels is None:
                labels = torch.full((p, p), IGNORE, dtype=torch.int64)
            else:
                labels = pad_end(resident.labels[s], p, p, IGNORE)[rows, cols].long()
        return image, ids, labels
