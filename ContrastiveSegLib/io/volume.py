"""Volumes with their geometry: read anything SimpleITK reads, check grids, write atomically.

A :class:`Volume` keeps the voxel array in (z, y, x) = (k, j, i) order, as SimpleITK's ``GetArrayFromImage`` and
Slicer's ``arrayFromVolume`` return it, and the geometry in ITK (x, y, z) order (LPS physical space).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ContrastiveSegLib.errors import InputError

# Grids that differ by less than this (relative for spacing, mm for origin, absolute for direction cosines) are
# the same grid: files written by different tools round geometry differently.
_TOLERANCE = 1e-4

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


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


def _read_image(path: Path):
    sitk = _sitk()
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{path}: folder holds no DICOM series")
        if len(series) > 1:
            raise InputError(f"{path}: folder holds {len(series)} DICOM series; give a folder with one")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def read_volume(path: str | os.PathLike, *, what: str = "image") -> Volume:
    """Read a 3D volume (NIfTI, NRRD, MHA/MHD, a DICOM file or a folder holding one DICOM series).

    Raises InputError with one line for a missing or unreadable file, a volume that is not 3D, or a multi-component
    (vector/RGB) image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    try:
        image = _read_image(path)
    except InputError:
        raise
    except Exception as error:  # SimpleITK raises RuntimeError with a multi-line ITK trace
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise InputError(f"cannot read {what} {path}: {first_line[:200]}") from None
    if image.GetDimension() != 3:
        raise InputError(f"{what} {path} is {image.GetDimension()}D; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a single-channel 3D volume is needed")
    array = _sitk().GetArrayFromImage(image)
    if min(array.shape) < 1:
        raise InputError(f"{what} {path} is empty (shape {array.shape})")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_finite(path, what)
    return Volume(array, tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))


def _check_nifti_finite(path: Path, what: str) -> None:
    """ITK's NIfTI reader silently turns NaN voxels into 0, so look at the stored values themselves."""
    import nibabel

    stored = nibabel.load(str(path))
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
    """Fail early (before any work) when ``path`` cannot be written: its folder must exist, the suffix be known."""
    path = Path(path)
    if not path.parent.is_dir() and str(path.parent) not in ("", "."):
        raise InputError(f"{what} folder does not exist: {path.parent}")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name")
    return path


def check_volume_suffix(path: Path, *, what: str = "output") -> None:
    if not str(path).lower().endswith(_VOLUME_SUFFIXES[:-1]):
        raise InputError(f"{what} {path}: unknown file type; use .nii.gz, .nii, .nrrd or .mha")


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The temporary name keeps the real suffix (SimpleITK picks the format from it), so an interrupted run leaves at
    most a hidden ``.tmp-*`` file, never a half-written output.
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=suffix, dir=path.parent or ".")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file private (0600); give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_volume(volume: Volume, path: str | os.PathLike) -> None:
    """Write ``volume`` atomically, compressed, with its geometry."""
    sitk = _sitk()
    image = to_sitk(volume)
    atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), True))


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
