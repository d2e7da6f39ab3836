"""The files the module hands to the worker process, written fast: raw (uncompressed) NRRD straight from memory.

The exchange files live a few seconds in this session's private folder and are read once by the child, so
compression buys nothing and costs most of the main thread's time: the library's :func:`~ContrastiveSegLib.io.volume
.write_volume` gzips (right for files a user keeps), about 3.7 s for a 200 x 512 x 512 CT and its label map. A raw
NRRD is a short text header and the voxels as they sit in memory (``ndarray.tofile``, no copy of the array), and
SimpleITK, which the CLI reads with, reads it back bit for bit with its geometry (tested in
Testing/Python/test_slicer_main_thread.py).

The file is written beside its final name and renamed into place, so a full disk leaves no half file under it:
the one-line :class:`~ContrastiveSegLib.errors.InputError` says what happened. No MRML, no Qt.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ContrastiveSegLib.errors import InputError

# NRRD's names of the numpy types a scan or a label map comes in (the NRRD format, "type" field).
_NRRD_TYPES = {
    np.dtype(np.int8): "signed char", np.dtype(np.uint8): "uchar", np.dtype(np.int16): "short",
    np.dtype(np.uint16): "ushort", np.dtype(np.int32): "int", np.dtype(np.uint32): "uint",
    np.dtype(np.int64): "longlong", np.dtype(np.uint64): "ulonglong", np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}


def _vector(values) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def nrrd_header(shape: tuple[int, int, int], dtype, spacing, origin, direction) -> bytes:
    """The header of a raw little-endian NRRD of a (k, j, i) array with ITK/LPS geometry (spacing (x, y, z),
    origin, row-major direction: column c is the direction of voxel axis c)."""
    dtype = np.dtype(dtype).newbyteorder("=")
    if dtype not in _NRRD_TYPES:
        raise ValueError(f"no NRRD type for {dtype}")
    matrix = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, dtype=float)
    lines = ["NRRD0004", f"type: {_NRRD_TYPES[dtype]}", "dimension: 3", "space: left-posterior-superior",
             "sizes: " + " ".join(str(n) for n in reversed(shape)),
             "space directions: " + " ".join(_vector(matrix[:, c]) for c in range(3)),
             "kinds: domain domain domain", "endian: little", "encoding: raw",
             f"space origin: {_vector(origin)}", "", ""]
    return "\n".join(lines).encode("ascii")


def write_raw_nrrd(array: np.ndarray, path: str | os.PathLike, spacing, origin, direction) -> Path:
    """Write ``array`` (k, j, i) as a raw NRRD with ITK/LPS geometry; atomic. Returns the path.

    ``array`` may be a view of a Slicer volume's voxels: it is written as it is (C order), never copied unless it
    is not contiguous or not little-endian. Raises InputError (one line) when the file cannot be written whole.
    """
    path = Path(path)
    if array.ndim != 3:
        raise ValueError(f"a 3D (k, j, i) array is needed, got shape {array.shape}")
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as stream:
            stream.write(nrrd_header(data.shape, data.dtype, spacing, origin, direction))
            data.tofile(stream)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise InputError(f"could not write {path.name} for the worker process: {error.strerror or error}") from None
    return path
