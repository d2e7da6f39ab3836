"""Volume I/O: geometry survives NIfTI, NRRD, MHA and a DICOM series; grids are compared field by field; writes are
atomic; unusable files give a one-line InputError."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import rotation_direction
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.volume import Volume, atomic_write, grid_difference, read_volume, write_volume

SPACING = (0.7, 1.3, 3.0)  # anisotropic, (x, y, z)
ORIGIN = (-101.25, 37.5, 12.125)
OBLIQUE = rotation_direction(25.0)


def _volume(dtype=np.int16, shape=(5, 7, 9)) -> Volume:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 3000, size=shape).astype(dtype)
    return Volume(array, SPACING, ORIGIN, OBLIQUE)


def _assert_same_geometry(read: Volume, expected: Volume, tolerance: float) -> None:
    np.testing.assert_allclose(read.spacing, expected.spacing, rtol=0, atol=tolerance)
    np.testing.assert_allclose(read.origin, expected.origin, rtol=0, atol=tolerance)
    np.testing.assert_allclose(read.direction, expected.direction, rtol=0, atol=tolerance)
    assert grid_difference(read, expected) is None


# NIfTI keeps the geometry in float32 (sform/quaternion), so ~1e-6 mm; NRRD and MHA write it as decimal text.
@pytest.mark.parametrize("suffix, tolerance", [(".nii.gz", 1e-5), (".nii", 1e-5), (".nrrd", 1e-9), (".mha", 1e-9)])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, suffix, tolerance, dtype):
    volume = _volume(dtype)
    path = tmp_path / f"volume{suffix}"
    write_volume(volume, path)
    read = read_volume(path)
    assert read.array.dtype == dtype
    np.testing.assert_array_equal(read.array, volume.array)
    _assert_same_geometry(read, volume, tolerance)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would create it, not mkstemp's 0600


def _write_dicom_series(volume: Volume, folder: Path, series: int = 1) -> None:
    """One 2D DICOM file per slice, with the per-slice position and the orientation in the tags that GDCM reads back
    (Image Position / Orientation (Patient)), all in one series."""
    folder.mkdir()
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    d = volume.direction
    orientation = "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))  # row, then column cosines
    stamp = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    series_uid = f"1.2.826.0.1.3680043.2.1125.424242.{series}"
    shared = {"0008|0020": stamp[0], "0008|0030": stamp[1], "0008|0060": "CT", "0020|000d": series_uid + ".1",
              "0020|000e": series_uid, "0020|0037": orientation, "0008|103e": "ContrastiveSeg test series",
              "0010|0010": "Phantom^Test", "0018|0050": f"{volume.spacing[2]:.6f}"}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # the series UID we set, not one GDCM invents per file
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in shared.items():
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_folder_round_trip(tmp_path):
    volume = _volume(np.int16, shape=(6, 8, 10))
    folder = tmp_path / "series"
    _write_dicom_series(volume, folder)
    read = read_volume(folder)
    np.testing.assert_array_equal(read.array, volume.array)
    # DICOM stores geometry as decimal strings (we wrote 6 decimals for positions, 10 for cosines).
    _assert_same_geometry(read, volume, 1e-5)


def test_dicom_folder_without_series_is_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a DICOM file")
    with pytest.raises(InputError, match="folder holds no DICOM series"):
        read_volume(tmp_path / "empty")


def test_dicom_folder_with_two_series_is_input_error(tmp_path):
    _write_dicom_series(_volume(np.int16, shape=(3, 4, 5)), tmp_path / "first")
    _write_dicom_series(_volume(np.int16, shape=(3, 4, 5)), tmp_path / "second", series=2)
    for file in (tmp_path / "second").iterdir():
        file.rename(tmp_path / "first" / f"b_{file.name}")
    with pytest.raises(InputError, match="holds 2 DICOM series; give a folder with one"):
        read_volume(tmp_path / "first")


@pytest.mark.parametrize("field, change, phrase", [
    ("array", lambda v: np.zeros((5, 7, 10), v.array.dtype), "size differs"),
    ("spacing", lambda v: (0.7, 1.3, 3.1), "spacing differs"),
    ("origin", lambda v: (-101.25, 38.5, 12.125), "origin differs"),
    ("direction", lambda v: rotation_direction(26.0), "direction differs"),
])
def test_grid_difference_names_the_field(field, change, phrase):
    a = _volume()
    b = Volume(a.array, a.spacing, a.origin, a.direction)
    setattr(b, field, change(a))
    message = grid_difference(a, b)
    assert message is not None and message.startswith(phrase)
    assert "\n" not in message


def test_grid_difference_tolerates_rounding():
    a = _volume()
    b = Volume(a.array.copy(), tuple(v * (1 + 1e-7) for v in SPACING), tuple(v + 1e-6 for v in ORIGIN),
               tuple(v + 1e-7 for v in OBLIQUE))
    assert grid_difference(a, b) is None


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"

    def half_write(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_write)
    assert os.listdir(tmp_path) == []

    target.write_bytes(b"previous result")  # a failed rewrite keeps the old file intact
    def interrupted(tmp):  # Ctrl-C half way through a write
        Path(tmp).write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert os.listdir(tmp_path) == ["out.nii.gz"] and target.read_bytes() == b"previous result"


def _write(array: np.ndarray, path: Path, *, vector: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


@pytest.mark.parametrize("make, phrase", [
    (lambda p: _write(np.zeros((8, 9), np.int16), p / "flat.nii.gz"), "is 2D; a 3D volume is needed"),
    (lambda p: _write(np.zeros((2, 3, 4, 5), np.int16), p / "time.nii.gz"), "is 4D; a 3D volume is needed"),
    (lambda p: _write(np.zeros((3, 4, 5, 3), np.uint8), p / "rgb.nrrd", vector=True), "3 components per voxel"),
    (lambda p: p / "missing.nii.gz", "image not found"),
    (lambda p: (p / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip") and p / "corrupt.nii.gz",
     "cannot read image"),
    (lambda p: (p / "text.nrrd").write_text("NRRD0004\ntype: nonsense\n") and p / "text.nrrd", "cannot read image"),
])
def test_unusable_files_give_one_line_input_error(tmp_path, make, phrase):
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        read_volume(path)
    message = str(info.value)
    assert phrase in message and str(path) in message
    assert "\n" not in message
