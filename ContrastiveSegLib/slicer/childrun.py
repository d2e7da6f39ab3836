"""What every module run has in common: one CLI child at a time, followed by polling, cancelled as a tree.

Out of GPU memory is handled in the child, not here: fine-tuning and prediction halve their batch and retry the
step (:func:`ContrastiveSegLib.device.halve_batch`), announcing it as a progress message; a child that runs out of
memory all the same ends with a one-line message, which the run's result carries (:func:`~.runner.exit_message`).

:class:`~.job.Job` (Segment, Predict only) and :class:`~.pretraining.PretrainRun` (Pretrain) subclass
:class:`ChildRun` and say only what to write before (:meth:`ChildRun.prepare`), what to run
(:meth:`ChildRun.command`) and what to read after (:meth:`ChildRun.finish`). The module's Logic drives any of them
the same way: from a ``qt.QTimer`` (``poll`` every 200 ms until ``running`` is False, then ``finish``) or, in a
batch script, with :meth:`ChildRun.run`. No MRML, no Qt here. :func:`private_state_dir` is where runs keep what
outlives them (models, probabilities).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ContrastiveSegLib.options import check_device
from ContrastiveSegLib.errors import EXIT_INTERNAL, InputError
from ContrastiveSegLib.slicer.runner import ChildOutcome, CliProcess, Progress, RunResult

_STATE_DIRS: dict[str, Path] = {}  # parent folder -> this process' private folder in it


def private_state_dir(parent: str | os.PathLike | None = None) -> Path:
    """This process' folder for what runs keep between them (fine-tuned models, probabilities), inside ``parent``
    (None: the system's temporary folder).

    The folder is made by :func:`tempfile.mkdtemp`, with mode 0700 and a unique name. Only its owner can list or
    read it, and every later call of this process gets the same one, so "refine from the last model" still finds
    the files. A fixed shared folder (``/tmp/ContrastiveSeg``) would let other users read a patient's model and
    probabilities, and would fail for the second user. When ``parent`` cannot be written (Slicer's temporary
    folder made by another user), the system's temporary folder is used.
    """
    key = os.fspath(parent) if parent is not None else ""
    folder = _STATE_DIRS.get(key)
    if folder is None or not folder.is_dir():
        try:
            if parent is not None:
                Path(parent).mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix="ContrastiveSeg-", dir=parent))
        except OSError:
            if parent is None:
                raise
            folder = Path(tempfile.mkdtemp(prefix="ContrastiveSeg-"))
        if not _STATE_DIRS:
            atexit.register(remove_state_dirs)  # a patient's model and probabilities never outlive the session
        _STATE_DIRS[key] = folder
    return folder


def remove_state_dirs() -> list[Path]:
    """Remove every private folder this process made (:func:`private_state_dir`) with all it holds: the module
    calls this when it closes (and it runs at interpreter exit); what the user saved elsewhere stays. Returns the
    folders removed."""
    removed = []
    for key, folder in list(_STATE_DIRS.items()):
        shutil.rmtree(folder, ignore_errors=True)
        del _STATE_DIRS[key]
        removed.append(folder)
    return removed


class ChildRun:
    """One run of the CLI in a child process, from start to a :class:`~.runner.RunResult`.

    Args:
        device: the run's device; "cpu" hides every GPU from the child.
        python, env: the child's interpreter and base environment (see :class:`~.runner.CliProcess`).
    """

    outcome_class = ChildOutcome
    """What :meth:`finish` returns; :meth:`failed` makes one for a run that broke while finishing."""

    def __init__(self, device: str, python: str | None, env: Mapping[str, str] | None) -> None:
        self.device = check_device(device)  # the CLI's check; normalised, so "cpu" means the CPU however typed
        self.python, self.env = python, env
        self.paths: dict[str, Path] = {}  # filled by prepare(); empty means "not prepared yet"
        self.cwd: Path | None = None  # the child's working folder (None: this process')
        self._process: CliProcess | None = None
        self._run: RunResult | None = None
        self._started = 0.0

    # ----------------------------------------------------------------------------- what subclasses give
    def prepare(self) -> object:
        """Check the input and write the exchange files into ``self.paths``. Raises InputError (one line)."""
        raise NotImplementedError

    def command(self) -> list[str]:
        """The CLI command line."""
        raise NotImplementedError

    def finish(self) -> object:
        """Read the child's outputs (on success), remove the exchange files, return the result."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- start
    def start(self) -> None:
        """Prepare (when not done yet) and start the child process. Raises InputError (one line) when the child
        cannot be started (no interpreter at that path, too many processes); the exchange files are removed."""
        if not self.paths:
            self.prepare()
        self._started = self._started or time.monotonic()
        process = CliProcess(self.command(), force_cpu=self.device == "cpu", env=self.env, cwd=self.cwd)
        try:
            process.start()
        except OSError as error:
            self.discard()
            raise InputError(f"could not start the worker process ({process.command[0]}): "
                             f"{error.strerror or error}") from None
        self._process = process

    def discard(self) -> None:
        """Remove the exchange files of a run that will not run (its work folder)."""
        work = getattr(self, "_work", None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ follow
    @property
    def running(self) -> bool:
        return self._process is not None and self._run is None

    @property
    def seconds(self) -> float:
        """Wall time since the start."""
        return time.monotonic() - self._started if self._started else 0.0

    def poll(self) -> list[Progress | str]:
        """New events of the child (never blocks); when it has ended, also records its result."""
        if self._process is None or self._run is not None:
            return []
        events = self._process.events()
        result = self._process.result()
        if result is not None:
            events += self._process.events()  # the last lines, read before the result was made
            self._run = result
        return events

    def cancel(self) -> None:
        """Ask the child and its children to stop, and return at once (Slicer's main thread calls this); keep
        polling until ``running`` is False, then :meth:`finish`. Nothing is written."""
        if self._process is not None:
            self._process.cancel()

    def run(self, on_event: Callable[[Progress | str], None] | None = None, timeout: float | None = None,
            poll_s: float = 0.2):
        """Start, wait (handing events to ``on_event``; cancel after ``timeout`` s) and finish: the batch path."""
        if self._process is None:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._run is None:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if self._run is None:
                if deadline is not None and time.monotonic() > deadline:
                    self.cancel()  # returns at once; the loop polls until the group has gone
                    deadline = None
                time.sleep(poll_s)
        return self.finish()

    def failed(self, error: BaseException):
        """The outcome of a run that broke outside the child (writing the result into the scene ran out of memory,
        Slicer refused a segment): failed, with one line saying what happened; the child's output tail kept."""
        tail = self._run.stderr_tail if self._run is not None else ()
        return self.outcome_class(RunResult(EXIT_INTERNAL, error_line(error), False, tail))

    def _ended(self) -> RunResult:
        if self._run is None:
            raise RuntimeError("the run has not ended; poll() until running is False")
        return self._run


def error_line(error: BaseException, doing: str = "putting the result into the scene") -> str:
    """One line for the panel about an unexpected error while ``doing`` something (never a traceback)."""
    if isinstance(error, MemoryError):
        return f"Out of memory while {doing}; close other data or free memory, then try again."
    text = " ".join(str(error).split())[:300]
    return f"Failed while {doing} ({type(error).__name__}{': ' + text if text else ''})."
