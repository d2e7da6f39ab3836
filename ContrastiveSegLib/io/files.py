"""Checks on the files a run names, before anything is read or written: the hostile-input guards that are about
paths rather than contents.

- :func:`refuse_output_is_input`: an output that is one of the inputs (the same name after resolving links and
  ``..``, or the same inode through a hard link) would overwrite the scan the run is reading.
- :func:`check_regular_file` / :func:`check_readable`: FIFOs, devices and sockets are refused before anything
  opens them (``open()`` on a FIFO without a writer blocks forever, inside C code where no signal handler runs);
  a file without read permission is reported as such, not as missing.
- :func:`check_name_length`: an output name longer than the folder's file system allows.
- :func:`check_working_folder`: relative paths under a working folder that was deleted.

Every refusal is an :class:`~ContrastiveSegLib.errors.InputError` with one line (exit code 2 in the CLI).
Nothing here imports torch, numpy or SimpleITK: the CLI calls these before loading any of them.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ContrastiveSegLib.errors import InputError

NAME_MAX_FALLBACK = 255  # bytes per file name on every common file system, where pathconf cannot tell


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def irregular_kind(path: str | os.PathLike) -> str | None:
    """None for a regular file (links followed) or a missing one; else what it is ("a FIFO", "a device", ...)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


def check_regular_file(path: str | os.PathLike, what: str, *, hint: str = "give a regular file") -> None:
    """InputError unless ``path`` is a regular file (links followed); never opens it. A missing file is reported
    as not found, a FIFO/device/socket/folder by its kind."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except OSError as error:
        raise InputError(f"{what} {path} cannot be read ({(error.strerror or str(error)).lower()})") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {path} is {_kind(mode)}; {hint}")


def check_readable(path: str | os.PathLike, what: str) -> None:
    """InputError ``WHAT PATH cannot be read (permission denied)`` when the process may not read ``path`` (a regular
    file or a folder); opening it is the only test that also holds for root, ACLs and read-protected mounts."""
    path = Path(path)
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb"):
                pass
    except PermissionError:
        raise InputError(f"{what} {path} cannot be read (permission denied)") from None
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise InputError(f"{what} not found: {path}") from None
        raise InputError(f"{what} {path} cannot be read ({(error.strerror or str(error)).lower()})") from None


def check_input_file(path: str | os.PathLike, what: str, *, hint: str = "give a regular file") -> Path:
    """``path`` as a Path when it is a regular file this process may read; else one-line InputError (not found,
    a FIFO/device/folder, permission denied). Never blocks on a FIFO. torch-free: the CLI asks it about
    ``--model`` / ``--init-model`` before torch loads, and the weights reader asks it again."""
    check_regular_file(path, what, hint=hint)
    check_readable(path, what)
    return Path(path)


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """(the resolved, case-normalised name, (st_dev, st_ino) when the file exists)."""
    resolved = os.path.normcase(os.path.realpath(path))
    try:
        info = os.stat(path)
        return resolved, (info.st_dev, info.st_ino)
    except OSError:
        return resolved, None


def detached_output_data(path: Path) -> Path | None:
    """The data file SimpleITK writes beside a detached header output (.mhd -> .zraw, .nhdr -> .raw.gz)."""
    name = path.name.lower()
    if name.endswith(".mhd"):
        return path.with_name(path.name[:-4] + ".zraw")
    if name.endswith(".nhdr"):
        return path.with_name(path.name[:-5] + ".raw.gz")
    return None


def refuse_output_is_input(outputs: Iterable[tuple[str, Path | None]],
                           inputs: Iterable[tuple[str, Path | None]]) -> None:
    """InputError when an output (``(what, path)``; None paths are skipped) is one of the inputs: the same file
    after resolving links and ``..``, or the same inode (a hard link). Detached headers count with their data
    file on both sides (an input's .raw, an output's .zraw / .raw.gz). Runs before anything is read."""
    from ContrastiveSegLib.io.volume import detached_data_files

    known: dict = {}
    for what, path in inputs:
        if path is None:
            continue
        path = Path(path)
        for member in [path, *detached_data_files(path)]:
            name, inode = _identity(member)
            known[name] = (what, path)
            if inode is not None:
                known[inode] = (what, path)
    for what, path in outputs:
        if path is None:
            continue
        path = Path(path)
        for member in (path, detached_output_data(path)):
            if member is None:
                continue
            name, inode = _identity(member)
            found = known.get(name) or (known.get(inode) if inode is not None else None)
            if found is not None:
                raise InputError(f"{what} {path} is the {found[0]} {found[1]}: writing it would overwrite an "
                                 "input; give the output another name")


def name_limit(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` allows."""
    try:
        return int(os.pathconf(folder if str(folder) else ".", "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX_FALLBACK


def check_name_length(path: str | os.PathLike, what: str = "output") -> None:
    """InputError when ``path``'s file name is longer than its folder's file system allows (checked against
    ``pathconf(PC_NAME_MAX)``, so a name that fits is accepted however long)."""
    path = Path(path)
    limit = name_limit(path.parent)
    length = len(os.fsencode(path.name))
    if length > limit:
        raise InputError(f"{what} name {path.name[:40]}... is {length} bytes long; the file system of "
                         f"{path.parent} allows at most {limit}")


def check_working_folder(paths: Iterable[Path | None]) -> None:
    """InputError when a relative path is given but the working folder no longer exists (deleted under the
    shell): every relative path would be resolved against nothing."""
    relative = [p for p in paths if p is not None and not Path(p).is_absolute()]
    if not relative:
        return
    try:
        os.getcwd()
    except OSError:
        raise InputError(f"the working folder no longer exists, so {relative[0]} has no place; cd to an existing "
                         "folder or give absolute paths") from None
