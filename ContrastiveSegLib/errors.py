"""Exceptions that the front ends (CLI, Slicer module) turn into one-line messages and exit codes."""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130


class InputError(ValueError):
    """Something the user gave us is unusable. The message is one line, meant for the user; exit code 2."""

    exit_code = EXIT_BAD_INPUT


class OutputError(InputError, OSError):
    """An output cannot be written (a read-only folder, a full disk, a write that fell short). One line for the user
    and exit code 2, like the other problems the user can fix; also an OSError for code that handles file-system
    failures."""


class Cancelled(BaseException):
    """The user (or a signal) asked the run to stop. Exit code 130.

    A BaseException, like KeyboardInterrupt: a signal handler raises it wherever the run happens to be, and code
    that wraps every ``Exception`` in one of its own (MONAI's padding turns any error into a ValueError naming the
    tensor's shape) must let it through rather than turn a cancel into an internal error."""

    exit_code = EXIT_CANCELLED


class OutOfMemory(MemoryError):
    """The device ran out of memory even at batch size 1 (:func:`ContrastiveSegLib.device.halve_batch`). A
    MemoryError, so it is reported as out of memory in one line (exit code 1) like running out of host memory; its
    message says what ran out and what to do, and the CLI prints it as it is."""
