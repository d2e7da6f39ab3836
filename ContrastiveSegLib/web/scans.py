"""Which scans a page may open, and uploads: the server's only ways to read files on a user's behalf.

A page names a scan by a path; the server opens it only when it lies inside one of the folders (or is one of
the files) given on the command line, after following symbolic links, so ``../`` or a link cannot reach the rest
of the disk. An upload is written to the session's private folder only after its size is checked, and then read
like any input (:func:`ContrastiveSegLib.io.volume.read_volume`): a bad file is one line, and nothing is kept.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.volume import VOLUME_SUFFIXES
from ContrastiveSegLib.web import MAX_UPLOAD_BYTES

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def is_scan_name(name: str) -> bool:
    """True for a file name with a volume suffix the library reads (.nii.gz, .nrrd, ...)."""
    lower = name.lower()
    return any(lower.endswith(suffix) for suffix in VOLUME_SUFFIXES)


class ScanFolders:
    """The files and folders the server was given (``contrastiveseg web SCAN_OR_FOLDER ...``).

    Args:
        places: files or folders; each must exist (InputError, one line, otherwise).
    """

    def __init__(self, places: Iterable[str | os.PathLike]) -> None:
        self.files: list[Path] = []
        self.folders: list[Path] = []
        for place in places:
            path = Path(place).expanduser()
            if not path.exists():
                raise InputError(f"scan or folder not found: {place}")
            resolved = path.resolve()
            (self.folders if resolved.is_dir() else self.files).append(resolved)

    def resolve(self, name: str | os.PathLike) -> Path:
        """The real path of ``name`` when the server may open it; InputError (one line) otherwise.

        ``name`` is absolute, or relative to the first given folder.
        """
        text = str(name).strip()
        if not text:
            raise InputError("no scan named")
        path = Path(text).expanduser()
        if not path.is_absolute() and self.folders:
            path = self.folders[0] / path
        real = path.resolve()
        allowed = real in self.files or any(real == f or f in real.parents for f in self.folders)
        if not allowed:
            raise InputError(f"'{text}' is outside the folders this server was started with")
        if not real.exists():
            raise InputError(f"scan not found: {text}")
        return real

    def listing(self, limit: int = 200) -> list[str]:
        """The scans the page may offer: the given files, then scans (and DICOM folders) in the given folders."""
        found = [str(f) for f in self.files]
        for folder in self.folders:
            for root, dirs, files in os.walk(folder):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if is_scan_name(name) and not name.lower().endswith(".dcm"):
                        found.append(str(Path(root) / name))
                if any(name.lower().endswith(".dcm") for name in files):
                    found.append(root)
                if len(found) >= limit:
                    return found[:limit]
        return found


def save_upload(name: str, content: bytes, folder: Path, *, limit: int = MAX_UPLOAD_BYTES) -> Path:
    """Write an uploaded scan into ``folder`` (the session's private folder) and return its path.

    The name keeps only its last component and safe characters; the suffix must be one the library reads.
    InputError (one line) for an empty, too large or unreadable-by-name upload; nothing is left behind then.
    """
    base = _SAFE_NAME.sub("_", Path(str(name)).name).lstrip(".") or "upload"
    if not is_scan_name(base):
        raise InputError(f"'{name}' is not a scan file: upload .nii.gz, .nii, .nrrd or .mha")
    if not content:
        raise InputError(f"'{name}' is empty")
    if len(content) > limit:
        raise InputError(f"'{name}' is {len(content) / 2**20:.0f} MiB; uploads are limited to "
                         f"{limit / 2**20:.0f} MiB (start the server with the scan's folder instead)")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / base
    partial = folder / f".{base}.partial"
    try:
        partial.write_bytes(content)
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise InputError(f"could not store the upload '{name}': {error.strerror or error}") from None
    return target
