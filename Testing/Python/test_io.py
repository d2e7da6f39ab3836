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
from ContrastiveSegLib.io.volume import (IMAGE_FILE_SUFFIXES, Volume, atomic_write, grid_difference, read_volume,
                                         write_volume)

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


def test_dicom_folder_without_series_is_input_error(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a DICOM file")
    with pytest.raises(InputError, match="folder holds no DICOM series"):
        read_volume(tmp_path / "empty")
    assert capfd.readouterr().err == ""  # GDCM's "No Series were found" warning does not leak past the one line


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

    with pytest.raises(InputError, match=r"cannot write .*out\.nii\.gz: disk full$"):
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


# ----------------------------------------------------------------------------------------------- writes that fall short
def _truncating_writer(monkeypatch, keep: float = 2 / 3) -> None:
    """SimpleITK.WriteImage that, like ITK's NIfTI writer on a full disk, returns without error after writing only
    part of the data: the largest file it wrote (the data file of a detached header) is cut to ``keep``."""
    real = sitk.WriteImage

    def short_write(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        written = max(Path(name).parent.iterdir(), key=lambda f: f.stat().st_size)
        data = written.read_bytes()
        written.write_bytes(data[:int(len(data) * keep)])

    monkeypatch.setattr(sitk, "WriteImage", short_write)


@pytest.mark.parametrize("channels", [None, 3], ids=["3D", "4D probabilities"])
@pytest.mark.parametrize("suffix", IMAGE_FILE_SUFFIXES)
def test_short_write_is_refused_and_leaves_nothing(tmp_path, monkeypatch, suffix, channels):
    shape = (5, 7, 9) if channels is None else (channels, 5, 7, 9)
    volume = Volume(np.random.default_rng(1).random(shape, dtype=np.float32), SPACING, ORIGIN, OBLIQUE)
    out = tmp_path / f"out{suffix}"
    _truncating_writer(monkeypatch)
    with pytest.raises(InputError) as info:
        write_volume(volume, out)
    message = str(info.value)
    assert message.startswith(f"cannot write {out}: ") and "\n" not in message
    assert os.listdir(tmp_path) == []  # nothing at OUT, no temporary file or folder


def test_short_write_keeps_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "out.nii.gz"
    write_volume(_volume(), out)
    before = out.read_bytes()
    _truncating_writer(monkeypatch, keep=0.99)  # only the gzip trailer is lost
    with pytest.raises(InputError, match="incomplete"):
        write_volume(_volume(np.int16, shape=(6, 7, 9)), out)
    assert os.listdir(tmp_path) == ["out.nii.gz"] and out.read_bytes() == before


def test_short_write_of_a_weights_file_is_refused(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    from ContrastiveSegLib.zoo.weights import save_weights

    real = safetensors.torch.save_file

    def short_write(tensors, name, metadata=None):
        real(tensors, name, metadata=metadata)
        Path(name).write_bytes(Path(name).read_bytes()[:-100])

    monkeypatch.setattr(safetensors.torch, "save_file", short_write)
    out = tmp_path / "model.safetensors"
    with pytest.raises(InputError, match=r"cannot write .*model\.safetensors: the file written does not read back"):
        save_weights(out, {"w": torch.arange(1000, dtype=torch.float32)}, {"kind": "model"})
    assert os.listdir(tmp_path) == []


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (root only; skipped where mounting is not allowed): what a real full disk does to ITK."""
    folder = tmp_path / "small"
    folder.mkdir()
    import subprocess

    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield folder
    finally:
        # Lazily: ITK's NRRD writer leaks the descriptor of a detached data file it failed to write.
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_real_full_disk_is_refused_for_every_format(full_disk, capfd):
    volume = Volume(np.random.default_rng(2).random((16, 48, 48), dtype=np.float32), SPACING, ORIGIN, OBLIQUE)
    for suffix in IMAGE_FILE_SUFFIXES:  # 147 KiB of incompressible voxels: none fits
        out = full_disk / f"out{suffix}"
        with pytest.raises(InputError, match=f"cannot write {out}: ") as info:
            write_volume(volume, out)
        assert "\n" not in str(info.value)
        assert os.listdir(full_disk) == [], suffix
    assert capfd.readouterr().err == ""  # niftilib's "** ERROR: NWAD: wrote only ..." does not leak


# ----------------------------------------------------------------------------------------------- detached headers
@pytest.mark.parametrize("suffix, data_name, field", [(".mhd", "out.zraw", "ElementDataFile = out.zraw"),
                                                      (".nhdr", "out.raw.gz", "data file: out.raw.gz")])
def test_detached_header_names_its_final_data_file(tmp_path, suffix, data_name, field):
    volume = _volume()
    out = tmp_path / f"out{suffix}"
    for _ in range(2):  # a rerun replaces both files, orphans nothing
        write_volume(volume, out)
    assert sorted(os.listdir(tmp_path)) == sorted([out.name, data_name])
    assert field in out.read_text(errors="replace")
    np.testing.assert_array_equal(read_volume(out).array, volume.array)


# ----------------------------------------------------------------------------------------------- damaged inputs
def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


@pytest.mark.parametrize("what", ["image", "labels"])
@pytest.mark.parametrize("suffix, keep, phrase", [
    (".nii", 0.6, "of the 630 bytes of voxel data its header declares"),
    (".nii.gz", 0.6, "compressed data ends early"),
    (".nii.gz", 0.995, "compressed data ends early"),  # only the gzip trailer (CRC, size) is missing
])
def test_truncated_nifti_is_refused(tmp_path, what, suffix, keep, phrase):
    dtype = np.int16 if what == "image" else np.uint8
    volume = _volume(dtype)
    volume.array = np.abs(volume.array) % 7 if what == "labels" else volume.array
    path = tmp_path / f"{what}{suffix}"
    write_volume(volume, path)
    _cut(path, keep)
    with pytest.raises(InputError) as info:
        read_volume(path, what=what)
    message = str(info.value)
    assert message.startswith(f"{what} {path} is damaged: ") and phrase.replace("630", str(volume.array.nbytes)) \
        in message and "\n" not in message


def test_truncated_metaimage_gives_the_real_reason(tmp_path, capfd):
    path = tmp_path / "image.mha"
    write_volume(_volume(), path)
    _cut(path, 0.6)
    with pytest.raises(InputError, match="data not read completely") as info:
        read_volume(path)
    assert "\n" not in str(info.value) and "No such file" not in str(info.value)
    assert capfd.readouterr().err == ""  # MetaIO's own lines do not reach the terminal


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_singular_direction_gives_the_reason(tmp_path, capfd, suffix):
    """ITK refuses a direction matrix with determinant 0 with a text whose last line is the matrix ("0 0 1")."""
    voxels = np.zeros((4, 5, 6), np.int16).tobytes()
    path = tmp_path / f"singular{suffix}"
    if suffix == ".mha":
        head = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                "TransformMatrix = 1 0 0 1 0 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 1\nDimSize = 6 5 4\n"
                "ElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    else:
        head = ("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 6 5 4\n"
                "space directions: (1,0,0) (1,0,0) (0,0,1)\nencoding: raw\nendian: little\n"
                "space origin: (0,0,0)\n\n")
    path.write_bytes(head.encode() + voxels)
    with pytest.raises(InputError, match="the image's direction matrix is singular") as info:
        read_volume(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert capfd.readouterr().err == ""


# ----------------------------------------------------------------------------------------------- non-regular files
def test_device_is_refused_before_opening(tmp_path):
    with pytest.raises(InputError, match=r"image /dev/null is a device; give a regular file"):
        read_volume("/dev/null")


def test_fifo_as_detached_data_file_is_refused(tmp_path):
    header = tmp_path / "image.mhd"
    write_volume(_volume(), header)
    (tmp_path / "image.zraw").unlink()
    os.mkfifo(tmp_path / "image.zraw")  # reading would block forever without a writer
    with pytest.raises(InputError, match="image data file .*image.zraw is a FIFO"):
        read_volume(header)


# ----------------------------------------------------------------------------------------------- DICOM slice spacing
def test_dicom_series_with_a_missing_slice_is_refused(tmp_path, capfd):
    volume = _volume(np.int16, shape=(6, 8, 10))
    folder = tmp_path / "series"
    _write_dicom_series(volume, folder)
    (folder / "slice003.dcm").unlink()
    with pytest.raises(InputError) as info:
        read_volume(folder)
    message = str(info.value)
    assert "DICOM slices are unevenly spaced: 6 mm between slice002.dcm and slice004.dcm, 3 mm between the " \
        "others" in message and "\n" not in message
    assert capfd.readouterr().err == ""  # ITK's "Non uniform sampling" warning does not leak


# ----------------------------------------------------------------------------------------------- output checks
def test_read_only_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    from ContrastiveSegLib.io.volume import check_writable

    folder = tmp_path / "ro"
    folder.mkdir()
    deny_writes(folder, monkeypatch)
    with pytest.raises(InputError, match=f"output folder {folder} is not writable"):
        check_writable(folder / "out.nii.gz")
    assert os.listdir(folder) == []


def deny_writes(folder: Path, monkeypatch) -> None:
    """Make ``folder`` refuse new entries: chmod 0555, and, for root (whom permission bits do not stop), an
    os.mkdir / os.open that raise EACCES there, as a read-only folder would."""
    import errno

    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real_mkdir, real_open = os.mkdir, os.open

    def denied(path):
        return Path(os.path.abspath(path)).parent == Path(os.path.abspath(folder))

    def mkdir(path, *args, **kwargs):
        if denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
