"""Volumes with their geometry: read anything SimpleITK reads, check grids, write atomically.

A :class:`Volume` keeps the voxel array in (z, y, x) = (k, j, i) order, as SimpleITK's ``GetArrayFromImage`` and
Slicer's ``arrayFromVolume`` return it, and the geometry in ITK (x, y, z) order (LPS physical space).
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import os
import shutil
import stat
import sys
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ContrastiveSegLib.errors import InputError, OutputError

# Grids that differ by less than this (relative for spacing, mm for origin, absolute for direction cosines) are
# the same grid: files written by different tools round geometry differently.
_TOLERANCE = 1e-4

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
"""File name endings of the scans the library reads (the last, .dcm, only as a DICOM series' file)."""


def volume_stem(name: str) -> str:
    """``name`` without its scan suffix (any case): "CT.nii.gz" -> "CT"; unchanged when it has none."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class Volume:
    """A 3D array with its physical geometry.

    Attributes:
        array: (z, y, x) voxels.
        spacing: voxel size in mm, ITK order (x, y, z).
        origin: physical position of voxel (0, 0, 0), ITK order, LPS.
        direction: 3x3 direction cosines, row-major, ITK convention.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def like(self, array: np.ndarray) -> "Volume":
        """A volume on this grid holding ``array`` (same spatial shape; a leading channel axis is allowed)."""
        if array.shape[-3:] != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not fit grid {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)


def _sitk():
    import SimpleITK as sitk

    return sitk


class IncompleteWriteError(OSError):
    """A writer finished without error but the file it left does not hold what was written (a full disk under a
    library that ignores short writes, a flaky network share). Its text is the one-line reason."""


_NATIVE_STDERR_LOCK = threading.RLock()  # re-entrant: a nested capture restores the outer one


@contextlib.contextmanager
def native_stderr():
    """Collect what C/C++ libraries print straight to file descriptor 2 while the block runs.

    niftilib (``** ERROR: NWAD: wrote only ...``), MetaIO (``M_ReadElementsData: data not read completely``) and
    ITK warnings write there, past Python's ``sys.stderr``, and the CLI promises one line. Yields a list that holds
    the printed lines once the block has ended (also when it raised). Where fd 2 cannot be redirected the block
    just runs.
    """
    printed: list[str] = []
    with _NATIVE_STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            saved = None
        if saved is None:
            yield printed
            return
        sink = tempfile.TemporaryFile()
        try:
            os.dup2(sink.fileno(), 2)
            try:
                yield printed
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                printed.extend(line.strip() for line in sink.read().decode("utf-8", "replace").splitlines()
                               if line.strip())
        finally:
            os.close(saved)
            sink.close()


def _library_reason(error: BaseException, printed: list[str]) -> str:
    """One line saying why a SimpleITK call failed: what the C library printed (it names the real cause, where
    ITK's exception may carry a stale errno such as "No such file or directory" for a truncated MHA), else the last
    line of the exception."""
    # Lines such as "WARNING: In /build/path/itkFoo.hxx, line 502" only locate the message; the next line is it.
    useful = [line for line in printed if not line.startswith(("WARNING: In ", "ERROR: In "))]
    if useful:
        return " ".join(" ".join(useful).split())[:200]
    text = str(error).strip()
    line = text.splitlines()[-1].strip() if text else type(error).__name__
    return line.removeprefix("sitk::ERROR: ")[:200]


def _check_regular(path: Path, what: str) -> None:
    """Refuse FIFOs, devices and sockets before anything opens them: open() on a FIFO without a writer blocks
    forever, inside C code where the Ctrl-C and SIGTERM handlers never run."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise InputError(f"{what} {path} is {kind}; give a regular file (or a folder holding one DICOM series)")


def _detached_data_file(path: Path) -> Path | None:
    """The data file a detached header (.mhd ``ElementDataFile``, .nhdr ``data file``) names, when it names a
    single file; LOCAL, lists and patterns are left to ITK."""
    name = path.name.lower()
    if not name.endswith((".mhd", ".nhdr")):
        return None
    separator, keys = ("=", ("elementdatafile",)) if name.endswith(".mhd") else (":", ("data file", "datafile"))
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16).decode("latin-1")
    except OSError:
        return None
    for line in head.splitlines():
        field, found, value = line.partition(separator)
        if found and field.strip().lower() in keys:
            value = value.strip()
            if not value or value.upper().startswith(("LOCAL", "LIST")) or "%" in value or " " in value:
                return None
            return path.parent / value
    return None


def _read_image(path: Path, what: str):
    sitk = _sitk()
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{path}: folder holds no DICOM series")
        if len(series) > 1:
            raise InputError(f"{path}: folder holds {len(series)} DICOM series; give a folder with one")
        names = reader.GetGDCMSeriesFileNames(str(path), series[0])
        reader.SetFileNames(names)
        reader.MetaDataDictionaryArrayUpdateOn()  # keep each slice's tags for the spacing check
        image = reader.Execute()
        _check_slice_spacing(reader, names, image, path, what)
        return image
    return sitk.ReadImage(str(path))


def _check_slice_spacing(reader, names, image, path: Path, what: str) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing or duplicated slice): ITK stacks the slices on
    one grid with the average spacing, so every voxel past the gap would sit at a wrong position."""
    if len(names) < 3:
        return
    positions = []
    for index in range(len(names)):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            return  # no Image Position (Patient) to check against
        try:
            positions.append([float(v) for v in reader.GetMetaData(index, "0020|0032").split("\\")])
        except ValueError:
            return
    if any(len(p) != 3 for p in positions):
        return
    normal = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]  # the slice axis (third column)
    gaps = np.diff(np.asarray(positions, dtype=float) @ normal)
    expected = float(np.median(gaps))
    # Positions are decimal strings the scanner rounded: allow 1% of the spacing (and a micrometre).
    tolerance = max(0.01 * abs(expected), 1e-3)
    worst = int(np.argmax(np.abs(gaps - expected)))
    if abs(gaps[worst] - expected) > tolerance or abs(expected) <= tolerance:
        first, second = Path(names[worst]).name, Path(names[worst + 1]).name
        raise InputError(f"{what} {path}: DICOM slices are unevenly spaced: {abs(gaps[worst]):.4g} mm between "
                         f"{first} and {second}, {abs(expected):.4g} mm between the others (a missing or duplicated "
                         "slice?)")


def read_volume(path: str | os.PathLike, *, what: str = "image") -> Volume:
    """Read a 3D volume (NIfTI, NRRD, MHA/MHD, a DICOM file or a folder holding one DICOM series).

    Raises InputError with one line for a missing, unreadable, truncated or non-regular file (FIFO, device), a
    singular direction matrix, a DICOM series with unevenly spaced slices, a volume that is not 3D, or a
    multi-component (vector/RGB) image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_dir():
        _check_regular(path, what)
        data_file = _detached_data_file(path)
        if data_file is not None and data_file.exists():
            _check_regular(data_file, f"{what} data file")
    try:
        with native_stderr() as printed:
            image = _read_image(path, what)
    except InputError:
        raise
    except Exception as error:  # SimpleITK raises RuntimeError with a multi-line ITK trace
        if "determinant is 0" in str(error):
            # ITK's text ends with the matrix it refused, so its last line would read "0 0 1".
            raise InputError(f"cannot read {what} {path}: the image's direction matrix is singular (its axes are "
                             "not independent, so voxels have no place in space); fix the file's orientation (NRRD "
                             "'space directions', MetaImage 'TransformMatrix', NIfTI qform/sform)") from None
        raise InputError(f"cannot read {what} {path}: {_library_reason(error, printed)}") from None
    if image.GetDimension() != 3:
        raise InputError(f"{what} {path} is {image.GetDimension()}D; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a single-channel 3D volume is needed")
    array = _sitk().GetArrayFromImage(image)
    if min(array.shape) < 1:
        raise InputError(f"{what} {path} is empty (shape {array.shape})")
    if _is_nifti(path):
        problem = nifti_problem(path)
        if problem is not None:
            raise InputError(f"{what} {path} is damaged: {problem}")
        _check_nifti_finite(path, what)
    return Volume(array, tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def nifti_problem(path: str | os.PathLike) -> str | None:
    """None when a NIfTI file holds every voxel byte its header declares, else why not (one line).

    ITK's NIfTI reader fills whatever a truncated file lacks with zeros and says nothing, and its writer ignores
    short writes; so compare the data the file holds with what its header declares (for .nii.gz, decompress the
    whole stream: a cut stream has no end marker, a damaged one fails its CRC).
    """
    import nibabel

    path = Path(path)
    if path.name.lower().endswith(".gz"):
        held = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    held += len(chunk)
        except EOFError:
            return "its compressed data ends early (the file was cut short)"
        except (gzip.BadGzipFile, zlib.error) as error:
            return f"its compressed data is corrupt ({str(error)[:100]})"
    else:
        held = os.path.getsize(path)
    try:
        stored = nibabel.load(str(path)).dataobj  # the proxy keeps the file's vox_offset, the image's header not
        offset = int(stored.offset)
        declared = int(np.prod(stored.shape, dtype=np.int64)) * np.dtype(stored.dtype).itemsize
    except Exception:
        if held < 348:  # sizeof(nifti_1_header), the smallest NIfTI header
            return f"it holds {held} bytes, less than a NIfTI header"
        return None  # a header nibabel does not parse but ITK did: ITK's reading stands
    if held < offset + declared:
        return f"it holds {max(held - offset, 0)} of the {declared} bytes of voxel data its header declares"
    return None


def _check_nifti_finite(path: Path, what: str) -> None:
    """ITK's NIfTI reader silently turns NaN voxels into 0, so look at the stored values themselves."""
    import nibabel

    try:
        stored = nibabel.load(str(path))
    except Exception:  # a header nibabel does not parse but ITK did: ITK's reading stands
        return
    if np.issubdtype(stored.get_data_dtype(), np.floating):
        raw = np.asanyarray(stored.dataobj)
        bad = np.count_nonzero(~np.isfinite(raw))
        if bad:
            raise InputError(f"{what} holds {bad} NaN or infinite voxels")


def to_sitk(volume: Volume):
    """A SimpleITK image of ``volume``; a leading channel axis (C, z, y, x) becomes a 4D image whose fourth axis
    is the channel (what NIfTI readers, nibabel and Slicer's multi-volume loader expect), spacing 1 along it."""
    sitk = _sitk()
    array = volume.array
    if array.ndim == 4:
        channels = [_with_geometry(sitk.GetImageFromArray(channel), volume) for channel in array]
        return sitk.JoinSeries(channels, 0.0, 1.0)
    return _with_geometry(sitk.GetImageFromArray(array), volume)


def _with_geometry(image, volume: Volume):
    image.SetSpacing([float(v) for v in volume.spacing])
    image.SetOrigin([float(v) for v in volume.origin])
    image.SetDirection([float(v) for v in volume.direction])
    return image


def from_sitk(image) -> Volume:
    """The inverse of :func:`to_sitk` for scalar images."""
    sitk = _sitk()
    return Volume(sitk.GetArrayFromImage(image), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                  tuple(image.GetDirection()))


def check_writable(path: str | os.PathLike, *, what: str = "output") -> Path:
    """Fail early (before any work) when ``path`` cannot be written: its folder must exist and let us create files
    (a read-only folder or file system, missing permissions), and ``path`` must not be a folder, FIFO or device."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir() and str(folder) not in ("", "."):
        raise InputError(f"{what} folder does not exist: {folder}")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise InputError(f"{what} {path} exists and is not a regular file")
    # Create (and remove) what the write will create, a hidden folder beside the output: permission bits alone do
    # not tell (root, ACLs, a file system mounted read-only).
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=folder))
    except OSError as error:
        raise OutputError(f"{what} folder {folder} is not writable ({error.strerror or error})") from None
    return path


def check_volume_suffix(path: Path, *, what: str = "output") -> None:
    """InputError unless ``path`` ends in a volume suffix SimpleITK writes (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd)."""
    if not str(path).lower().endswith(VOLUME_SUFFIXES[:-1]):
        raise InputError(f"{what} {path}: unknown file type; use .nii.gz, .nii, .nrrd or .mha")


class StagedFile:
    """An output written and checked in a hidden folder beside its destination, not yet in place.

    :meth:`commit` moves it into place, :meth:`discard` removes it (a no-op once committed). Several outputs of one
    run are staged first and committed together, so a failure or Ctrl-C while writing any of them leaves none.
    """

    def __init__(self, path: Path, folder: Path):
        self.path = path
        self._folder: Path | None = folder

    def commit(self) -> None:
        """Move the staged files into place: data files first, then the file named ``path`` (for .mhd/.nhdr the
        header, which names its data file by its final name), each by an atomic rename."""
        folder = self._folder
        if folder is None:
            raise RuntimeError(f"{self.path} was already committed or discarded")
        for data in sorted(f for f in folder.iterdir() if f.name != self.path.name):
            os.replace(data, self.path.parent / data.name)
        os.replace(folder / self.path.name, self.path)
        self._folder = None
        shutil.rmtree(folder, ignore_errors=True)

    def discard(self) -> None:
        """Remove the staged files (nothing happens once committed)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def stage(path: str | os.PathLike, write: Callable[[Path], None], *,
          verify: Callable[[Path], None] | None = None) -> StagedFile:
    """Call ``write(tmp)``, then ``verify(tmp)``, where ``tmp`` has ``path``'s name inside a hidden folder beside
    ``path``; return the :class:`StagedFile` to commit.

    Keeping the final name lets SimpleITK pick the format from the suffix and lets a detached header (.mhd, .nhdr)
    name its data file as it will be called. ``verify`` raises :class:`IncompleteWriteError` (or any OSError) when
    the file does not hold what was written. Any OSError becomes a one-line OutputError ("cannot write PATH: why");
    on any failure, Ctrl-C included, nothing is left behind.
    """
    path = Path(path)
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    tmp = folder / path.name
    try:
        write(tmp)
        if not tmp.is_file():
            raise IncompleteWriteError("the writer left no file")
        if verify is not None:
            verify(tmp)
        umask = _umask()
        for written in folder.iterdir():
            # Give the files the permissions a plain open() would (mkstemp-style writers make them 0600), and put
            # them on disk before they replace an older output: a crash then leaves the old or the new, not a hole.
            os.chmod(written, 0o666 & ~umask)
            _fsync(written)
    except InputError as error:  # from a writer that writes atomically itself (a model's save): name the output
        shutil.rmtree(folder, ignore_errors=True)
        raise type(error)(str(error).replace(str(tmp), str(path))) from None
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        if error.errno != errno.ENOSPC and _disk_nearly_full(folder):
            reason += "; the disk is full"
        shutil.rmtree(folder, ignore_errors=True)
        raise OutputError(f"cannot write {path}: {reason}") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return StagedFile(path, folder)


def _fsync(path: Path) -> None:
    if os.name == "nt":  # Windows flushes only through a handle opened for writing; its renames are not POSIX's
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _disk_nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *,
                 verify: Callable[[Path], None] | None = None) -> None:
    """Write ``path`` through :func:`stage` and move it into place at once: OutputError (one line) when it cannot
    be written completely; an interrupted or failed run leaves the previous file as it was and at most a hidden
    ``.NAME.tmp-*`` folder (only after kill -9), never a half-written output."""
    stage(path, write, verify=verify).commit()


def stage_volume(volume: Volume, path: str | os.PathLike, *, metadata: dict[str, str] | None = None) -> StagedFile:
    """Stage ``volume`` (3D, or 4D with a leading channel axis) compressed, with its geometry, read back and
    compared voxel for voxel before it may be committed. ``metadata`` (key -> text) goes into the file's header
    where the format keeps it: NRRD key/value fields and MetaImage header lines for every key; NIfTI keeps only
    the ``ITK_FileNotes`` key, as its 80-character ``descrip`` field."""
    sitk = _sitk()
    image = to_sitk(volume)
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))

    def write(tmp: Path) -> None:
        try:
            with native_stderr() as printed:
                sitk.WriteImage(image, str(tmp), True)
        except RuntimeError as error:
            raise IncompleteWriteError(_library_reason(error, printed)) from None

    return stage(path, write, verify=lambda tmp: verify_volume_file(tmp, volume.array))


def write_volume(volume: Volume, path: str | os.PathLike, *, metadata: dict[str, str] | None = None) -> None:
    """Write ``volume`` atomically, compressed, with its geometry (and ``metadata``, see :func:`stage_volume`);
    InputError (one line) when it cannot be written completely (a full disk, a read-only folder), and then nothing
    is left at ``path``."""
    stage_volume(volume, path, metadata=metadata).commit()


# Which label value each channel of a probabilities file stands for. NRRD and MetaImage keep it under its own key;
# NIfTI has no free key/value storage that ITK writes, so it goes into the 80-character description (``descrip``,
# which ITK reads and writes as ``ITK_FileNotes``) as "channel labels: 0,1,2" (runs as "0-40").
CHANNEL_LABELS_KEY = "ContrastiveSeg_channel_labels"
_NOTES_KEY = "ITK_FileNotes"
_NOTES_PREFIX = "channel labels: "
_NIFTI_DESCRIP_CHARS = 79  # descrip is char[80], NUL-terminated


def _compress_values(values) -> str:
    """``0,1,2,3,7`` as ``0-3,7``: runs of consecutive values as ranges, so long label lists fit NIfTI's 80 chars."""
    values = [int(v) for v in values]
    parts: list[str] = []
    index = 0
    while index < len(values):
        end = index
        while end + 1 < len(values) and values[end + 1] == values[end] + 1:
            end += 1
        parts.append(str(values[index]) if end == index else f"{values[index]}-{values[end]}")
        index = end + 1
    return ",".join(parts)


def _expand_values(text: str) -> tuple[int, ...] | None:
    """The inverse of :func:`_compress_values`; None for text that is not such a list."""
    values: list[int] = []
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            if dash:
                values.extend(range(int(first), int(last) + 1))
            else:
                values.append(int(first))
    except ValueError:
        return None
    return tuple(values) or None


def channel_labels_metadata(label_values) -> dict[str, str]:
    """The header fields that record which label value each channel of a probabilities volume stands for
    (channel ``c`` = ``label_values[c]``, background first): pass to :func:`write_volume` / :func:`stage_volume`.
    Where the list does not fit NIfTI's description it is left out there (NRRD and MetaImage always keep it)."""
    text = _compress_values(label_values)
    metadata = {CHANNEL_LABELS_KEY: ",".join(str(int(v)) for v in label_values)}
    if len(_NOTES_PREFIX) + len(text) <= _NIFTI_DESCRIP_CHARS:
        metadata[_NOTES_KEY] = _NOTES_PREFIX + text
    return metadata


def read_channel_labels(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The label value of each channel of a probabilities file written with :func:`channel_labels_metadata`, read
    from its header only; None when the file does not record them."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with native_stderr():
        reader.ReadImageInformation()
    keys = set(reader.GetMetaDataKeys())
    if CHANNEL_LABELS_KEY in keys:
        return _expand_values(reader.GetMetaData(CHANNEL_LABELS_KEY))
    for key in (_NOTES_KEY, "descrip"):
        if key in keys and reader.GetMetaData(key).startswith(_NOTES_PREFIX):
            return _expand_values(reader.GetMetaData(key)[len(_NOTES_PREFIX):])
    return None


def verify_volume_file(path: Path, expected: np.ndarray) -> None:
    """Raise :class:`IncompleteWriteError` unless the volume file ``path`` reads back as ``expected``.

    ITK's NIfTI writer does not report a short write, and its reader fills what is missing with zeros, so NIfTI
    files also have to hold every byte their header declares; the NRRD and MetaImage readers refuse short data.
    """
    sitk = _sitk()
    if _is_nifti(path):
        problem = nifti_problem(path)
        if problem is not None:
            raise IncompleteWriteError(f"the file written is incomplete: {problem}")
    try:
        with native_stderr() as printed:
            image = sitk.ReadImage(str(path))
        read = sitk.GetArrayViewFromImage(image)  # a view: no second copy of a large 4D volume
    except RuntimeError as error:
        raise IncompleteWriteError(f"the file written does not read back: {_library_reason(error, printed)}") \
            from None
    expected = np.asarray(expected)
    if read.shape != expected.shape or not np.array_equal(read, expected,
                                                          equal_nan=np.issubdtype(expected.dtype, np.inexact)):
        raise IncompleteWriteError("the file written does not read back as what was written")


def grid_difference(a: Volume, b: Volume) -> str | None:
    """None when ``a`` and ``b`` share a voxel grid, else which of size/spacing/origin/direction differs and how."""
    if a.array.shape != b.array.shape:
        return f"size differs: {a.array.shape[::-1]} vs {b.array.shape[::-1]} (x, y, z)"
    spacing_a, spacing_b = np.asarray(a.spacing), np.asarray(b.spacing)
    if not np.allclose(spacing_a, spacing_b, rtol=_TOLERANCE, atol=0):
        return f"spacing differs: {_fmt(spacing_a)} vs {_fmt(spacing_b)} mm"
    tolerance_mm = _TOLERANCE * 100 * float(spacing_a.max())
    if not np.allclose(a.origin, b.origin, rtol=0, atol=tolerance_mm):
        return f"origin differs: {_fmt(a.origin)} vs {_fmt(b.origin)} mm"
    if not np.allclose(a.direction, b.direction, rtol=0, atol=_TOLERANCE * 10):
        return f"direction differs: {_fmt(a.direction)} vs {_fmt(b.direction)}"
    return None


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
