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
import sys
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ContrastiveSegLib.errors import InputError, OutputError
from ContrastiveSegLib.io.files import check_name_length, check_readable, check_regular_file

# Grids that differ by less than this (relative for spacing, mm for origin, absolute for direction cosines) are
# the same grid: files written by different tools round geometry differently.
_TOLERANCE = 1e-4

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
"""File name endings of the scans the library reads (the last, .dcm, only as a DICOM series' file)."""
IMAGE_FILE_SUFFIXES = VOLUME_SUFFIXES[:-1]
"""The single-file formats among them: what SimpleITK writes, and what a folder of scans is searched for."""


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


def library_reason(error: BaseException, printed: list[str]) -> str:
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
    check_regular_file(path, what, hint="give a regular file (or a folder holding one DICOM series)")


_MAX_LISTED_FILES = 100_000  # data files one detached header may name (a slice per file)


def detached_data_files(path: Path) -> list[Path]:
    """The data files a detached header (.mhd ``ElementDataFile``, .nhdr ``data file``) names: one file, a
    ``LIST`` (the names on the lines that follow) or a pattern (``slice%03d.raw 1 40 1``); empty for any other
    file and for ``LOCAL``. Read before ITK opens any of them, so that a FIFO among them is refused instead of
    blocking the read."""
    name = path.name.lower()
    if not name.endswith((".mhd", ".nhdr")) or not path.is_file():
        return []
    separator, keys = ("=", ("elementdatafile",)) if name.endswith(".mhd") else (":", ("data file", "datafile"))
    try:
        with open(path, "rb") as handle:
            lines = handle.read(1 << 22).decode("latin-1").splitlines()
    except OSError:
        return []
    for number, line in enumerate(lines):
        field, found, value = line.partition(separator)
        if not found or field.strip().lower() not in keys:
            continue
        words = value.split()
        if not words or words[0].upper() == "LOCAL":
            return []
        if words[0].upper() == "LIST":
            names = [entry.strip() for entry in lines[number + 1:] if entry.strip()]
            return [path.parent / entry for entry in names[:_MAX_LISTED_FILES]]
        if "%" in words[0] and len(words) >= 4:
            try:
                first, last, step = (int(w) for w in words[1:4])
                if step == 0 or (last - first) // step >= _MAX_LISTED_FILES:
                    return []
                stop = last + (1 if step > 0 else -1)
                return [path.parent / (words[0] % index) for index in range(first, stop, step)]
            except (TypeError, ValueError):
                return []
        return [path.parent / value.strip()]
    return []


# deflate, the only compression these formats use, shrinks data at most 1032:1: a header declaring more voxel
# bytes than that times what is on disk lies about its size (a 368-byte NIfTI declaring 1 GiB).
_MAX_COMPRESSION = 1032


def _pixel_bytes(reader) -> int:
    """Bytes per voxel of the image ``reader`` has read the information of (all components)."""
    import re

    text = _sitk().GetPixelIDValueAsString(reader.GetPixelID())
    bits = re.search(r"(\d+)-bit", text)
    size = int(bits.group(1)) // 8 if bits else 8
    components = max(int(reader.GetNumberOfComponents()), 1)
    if "complex" in text and components == 1:
        components = 2
    return size * components


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_declared_size(path: Path, data_files: list[Path], what: str) -> None:
    """Refuse, from the header alone (no voxel read), a file that declares more voxel data than it can hold (more
    than :data:`_MAX_COMPRESSION` times its bytes on disk; for an uncompressed NIfTI, more than it holds) or more
    than this machine's memory: ITK would allocate the declared buffer before finding out."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with native_stderr():
            reader.ReadImageInformation()
        declared = int(np.prod([int(n) for n in reader.GetSize()], dtype=object)) * _pixel_bytes(reader)
    except Exception:  # noqa: BLE001 - the full read reports what is wrong with the file, in one line
        return
    on_disk = os.path.getsize(path) + sum(os.path.getsize(f) for f in data_files if f.is_file())
    if declared > _MAX_COMPRESSION * on_disk + (1 << 16):
        raise InputError(f"{what} {path} is damaged: its header declares {_bytes(declared)} of voxel data, but the "
                         f"file holds {_bytes(on_disk)}")
    memory = _physical_memory()
    if memory is not None and declared > memory:
        raise InputError(f"{what} {path} declares {_bytes(declared)} of voxel data, more than this machine's "
                         f"memory ({_bytes(memory)})")
    if _is_nifti(path) and not path.name.lower().endswith(".gz"):
        problem = nifti_problem(path)
        if problem is not None:
            raise InputError(f"{what} {path} is damaged: {problem}")


def _bytes(count: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


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
    if not os.path.isdir(path):
        _check_regular(path, what)  # missing, a name too long, a FIFO or device: one line, nothing opened
    check_readable(path, what)
    if not path.is_dir():
        data_files = [f for f in detached_data_files(path) if os.path.lexists(f)]
        for data_file in data_files:
            _check_regular(data_file, f"{what} data file")
            check_readable(data_file, f"{what} data file")
        _check_declared_size(path, data_files, what)
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
        raise InputError(f"cannot read {what} {path}: {library_reason(error, printed)}") from None
    if "complex" in image.GetPixelIDTypeAsString():
        raise InputError(f"{what} {path} holds complex values ({image.GetPixelIDTypeAsString()}); a real-valued "
                         "volume is needed (take the magnitude first)")
    if image.GetDimension() != 3:
        raise InputError(f"{what} {path} is {image.GetDimension()}D; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a single-channel 3D volume is needed")
    _check_geometry(image, path, what)
    array = _sitk().GetArrayFromImage(image)
    if min(array.shape) < 1:
        raise InputError(f"{what} {path} is empty (shape {array.shape})")
    if _is_nifti(path):
        problem = nifti_problem(path) if path.name.lower().endswith(".gz") else None  # .nii: checked before
        if problem is not None:
            raise InputError(f"{what} {path} is damaged: {problem}")
        _check_nifti_finite(path, what)
    return Volume(array, tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))


_ORTHONORMAL_TOLERANCE = 1e-3  # scanners write direction cosines to 6 decimals or fewer; a shear is far larger


def _check_geometry(image, path: Path, what: str) -> None:
    """Refuse a grid that puts voxels nowhere or somewhere wrong: spacing that is not finite and positive, an origin
    that is not finite, or direction cosines that are not orthonormal (a sheared or scaled NRRD 'space
    directions', a MetaImage 'TransformMatrix' such as 2 0 0 0 1 0 0 0 1). Outputs keep the image's geometry as
    spacing, origin and an orthonormal direction, which cannot say a shear: such an output would not lie on the
    image's grid."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or not np.all(spacing > 0):
        raise InputError(f"{what} {path} has an unusable voxel spacing {_fmt(spacing)}; every spacing must be a "
                         "finite number > 0 mm (fix the file's header)")
    if _is_nifti(path):
        _check_nifti_spacing(path, what)
    if not np.all(np.isfinite(image.GetOrigin())):
        raise InputError(f"{what} {path} has a non-finite origin {_fmt(image.GetOrigin())} (fix the file's header)")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or \
            np.abs(direction.T @ direction - np.eye(3)).max() > _ORTHONORMAL_TOLERANCE:
        raise InputError(f"{what} {path} has direction cosines that are not orthonormal {_fmt(direction.ravel())} "
                         "(sheared or scaled axes); resample it onto a grid with perpendicular unit axes first")


def _check_nifti_spacing(path: Path, what: str) -> None:
    """ITK reads a NaN or infinite NIfTI pixdim as 1 mm; the header's own numbers must be finite."""
    import nibabel

    try:
        pixdim = np.asarray(nibabel.load(str(path)).header["pixdim"][1:4], dtype=float)
    except Exception:  # noqa: BLE001 - a header nibabel does not parse but ITK did: ITK's reading stands
        return
    if not np.all(np.isfinite(pixdim)):
        raise InputError(f"{what} {path} has an unusable voxel spacing {_fmt(pixdim)} in its header; every "
                         "spacing must be a finite number > 0 mm (fix the file's header)")


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
    check_name_length(path, what)  # first: the checks below would fail on such a name with ENAMETOOLONG
    if not folder.is_dir() and str(folder) not in ("", "."):
        raise InputError(f"{what} folder does not exist: {folder}")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise InputError(f"{what} {path} exists and is not a regular file")
    # Create (and remove) what the write will create, a hidden folder beside the output: permission bits alone do
    # not tell (root, ACLs, a file system mounted read-only).
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{_short_name(path)}.probe-", dir=folder))
    except OSError as error:
        raise OutputError(f"{what} folder {folder} is not writable ({error.strerror or error})") from None
    return path


def check_volume_suffix(path: Path, *, what: str = "output") -> None:
    """InputError unless ``path`` ends in a volume suffix SimpleITK writes (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd),
    in lower case: ITK's NIfTI and MetaImage writers refuse ``.NII.GZ`` or ``.MHA`` (after the whole run)."""
    name = str(path)
    if not name.lower().endswith(IMAGE_FILE_SUFFIXES):
        raise InputError(f"{what} {path}: unknown file type; use .nii.gz, .nii, .nrrd or .mha")
    if not name.endswith(IMAGE_FILE_SUFFIXES):
        suffix = next(s for s in VOLUME_SUFFIXES if name.lower().endswith(s))
        raise InputError(f"{what} {path}: write the file type in lower case ({suffix}); the writers do not take "
                         f"{name[-len(suffix):]}")


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
        remove_stale_staging(self.path)

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
        folder = Path(tempfile.mkdtemp(prefix=_staging_prefix(path) + f"{os.getpid()}@{_host()}-", dir=path.parent))
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


_SHORT_NAME = 64  # characters of the output's name in its hidden staging folder's name (the file keeps its own)


def _short_name(path: Path) -> str:
    """The output's name as the hidden folders beside it start (cut, so that a name that just fits the file
    system still leaves room for the folder's suffix)."""
    return path.name[:_SHORT_NAME]


def _staging_prefix(path: Path) -> str:
    """``.NAME.tmp-``: what every staging folder of ``path`` is called, before ``PID@HOST-RANDOM``."""
    return f".{_short_name(path)}.tmp-"


def _host() -> str:
    import socket

    return socket.gethostname().replace("/", "_") or "localhost"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def remove_stale_staging(path: str | os.PathLike) -> list[Path]:
    """Remove the staging folders of ``path`` (``.NAME.tmp-PID@HOST-*`` beside it) whose process is gone: what a
    run killed with SIGKILL (or a power cut) while staging left behind. Folders of a live process (another run
    writing the same output at this moment), of another host (a shared folder) or of an unknown layout are left
    alone. Returns the folders removed."""
    path = Path(path)
    prefix, host, removed = _staging_prefix(path), _host(), []
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        owner, at, rest = name[len(prefix):].partition("@")
        if not at or not owner.isdigit() or rest.rpartition("-")[0] != host:
            continue
        if int(owner) == os.getpid() or _alive(int(owner)):
            continue
        folder = path.parent / name
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


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
            raise IncompleteWriteError(library_reason(error, printed)) from None

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
        raise IncompleteWriteError(f"the file written does not read back: {library_reason(error, printed)}") \
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
