"""Start a child process in a process group of its own, follow it without blocking, and end it together with
every process it started.

Three places run children, each for the same reason: work that must not take the caller down. The Slicer
module runs the CLI (:class:`ContrastiveSegLib.slicer.runner.CliProcess`, read line by line from a timer), the
demo runs each baseline in a fresh Python (:func:`ContrastiveSegLib.baselines.runner.run_baseline`), and Fill between slices
runs ITK's interpolator in a worker (:mod:`ContrastiveSegLib.baselines.fill_between`), because native toolkits
can corrupt the heap. Here is what they share: a new process group (POSIX session / Windows process group), so
that cancel reaches the child's own children (data-loader workers, a worker's worker); a polite stop then a
forced one (SIGTERM then SIGKILL to the group; CTRL_BREAK then ``taskkill /T /F`` on Windows); a wait that
honours a cancel event and a timeout.

Torch-free, numpy-free: the Slicer GUI process imports it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ContrastiveSegLib.errors import Cancelled, InputError

PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT


class ChildProcess:
    """One child process, leader of a new process group.

    Args:
        argv: the command line.
        env: the child's whole environment (None: this process').
        cwd: its working folder (None: this process').
        stdout, stderr: where its output goes: ``PIPE`` (then :attr:`stdout` / :attr:`stderr` are line-buffered
            UTF-8 text streams, read them from a thread), an open file, ``DEVNULL``, or ``STDOUT`` for stderr.
    The child's stdin is always empty (``DEVNULL``): nobody answers a prompt.
    """

    def __init__(self, argv: Sequence[str | os.PathLike], *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, stdout=DEVNULL, stderr=DEVNULL) -> None:
        if not argv:
            raise ValueError("the command line is empty")
        self.argv = [str(a) for a in argv]
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self._outputs = (stdout, stderr)
        self._process: subprocess.Popen | None = None

    # ------------------------------------------------------------------------------------------ start
    def start(self) -> ChildProcess:
        """Start the child in its own process group; returns self. RuntimeError when already started."""
        if self._process is not None:
            raise RuntimeError("this process was already started")
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # own session and process group: killpg reaches grandchildren
        if PIPE in self._outputs:
            # bufsize=1: line-buffered on our side, so a reader thread gets each line as soon as it is printed.
            kwargs.update(text=True, encoding="utf-8", errors="replace", bufsize=1)
        stdout, stderr = self._outputs
        self._process = subprocess.Popen(self.argv, stdin=DEVNULL, stdout=stdout, stderr=stderr, env=self.env,
                                         cwd=self.cwd, **kwargs)
        return self

    @property
    def stdout(self):
        """The child's stdout as a text stream (only with ``stdout=PIPE``)."""
        return None if self._process is None else self._process.stdout

    @property
    def stderr(self):
        """The child's stderr as a text stream (only with ``stderr=PIPE``)."""
        return None if self._process is None else self._process.stderr

    # ----------------------------------------------------------------------------------------- follow
    @property
    def pid(self) -> int | None:
        """The child's process id, which is also its process group's id (None before :meth:`start`)."""
        return None if self._process is None else self._process.pid

    def poll(self) -> int | None:
        """The exit code once the child has ended (negative: killed by that signal), else None. Never blocks."""
        return None if self._process is None else self._process.poll()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self, timeout: float | None = None, cancel=None, poll_s: float = 0.1, grace_s: float = 0.0) -> int:
        """Block until the child ends; returns its exit code.

        Args:
            timeout: seconds to wait (None: no limit); then the group is stopped and
                :class:`subprocess.TimeoutExpired` raised.
            cancel: a :class:`threading.Event` (anything with ``is_set()``), checked every ``poll_s`` seconds;
                once set, the group is stopped and :class:`~ContrastiveSegLib.errors.Cancelled` raised.
            grace_s: how long a stop lets the group end after the polite signal (0: straight to the forced one).
        Whatever ends the wait early (cancel, timeout, an exception such as a signal handler's ``Cancelled``)
        leaves no process of the group behind.
        """
        if self._process is None:
            raise RuntimeError("the process was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self._process.poll() is None:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled")
                if deadline is not None and time.monotonic() >= deadline:
                    raise subprocess.TimeoutExpired(self.argv, timeout)
                time.sleep(poll_s)
        except BaseException:
            self.stop(grace_s)
            raise
        return self._process.returncode

    # ------------------------------------------------------------------------------------------- stop
    def stop(self, grace_s: float = 5.0) -> None:
        """End the child and everything in its group: the polite signal (SIGTERM; CTRL_BREAK on Windows), up to
        ``grace_s`` seconds for the group to end on its own, then the forced one (SIGKILL to the group;
        ``taskkill /T /F``). Returns once the child is reaped. Does nothing before :meth:`start`."""
        if self._process is None:
            return
        if grace_s > 0 and self._process.poll() is None:
            self._signal_group(forced=False)
            try:
                self._process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        # The child's children may outlive it (they are in its group, not in the child): end them too.
        self._signal_group(forced=True)
        self._process.wait()

    def request_stop(self, forced: bool = False) -> None:
        """Send the polite (or, ``forced``, the forced) signal to the whole group and return at once, without
        waiting or reaping: for a caller that must not block (a GUI's main thread), which then polls
        :meth:`poll` and escalates to ``forced`` itself."""
        if self._process is not None and self._process.poll() is None:
            self._signal_group(forced=forced)
        elif self._process is not None and forced:
            self._signal_group(forced=True)  # the child is gone; its children in the group may not be

    def _signal_group(self, forced: bool) -> None:
        pid = self._process.pid
        if os.name == "nt":
            if forced:
                subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True, check=False)
            else:
                try:
                    self._process.send_signal(signal.CTRL_BREAK_EVENT)
                except OSError:
                    pass
            return
        try:
            os.killpg(pid, signal.SIGKILL if forced else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass  # the whole group is gone already


@dataclass(frozen=True)
class Finished:
    """A child that ran to its end: exit code (negative: killed by that signal) and its output as text."""

    returncode: int
    stdout: str
    stderr: str

    def last_line(self) -> str:
        """The last non-empty line of stderr, else of stdout ("" when both are empty): e.g. a traceback's end."""
        for text in (self.stderr, self.stdout):
            lines = text.strip().splitlines()
            if lines:
                return lines[-1].strip()
        return ""


def run(argv: Sequence[str | os.PathLike], *, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None, timeout: float | None = None, cancel=None,
        poll_s: float = 0.1) -> Finished:
    """Run ``argv`` to its end in a :class:`ChildProcess` and return its exit code and output.

    The output goes to temporary files rather than pipes, so a child that prints a lot cannot block on a full
    pipe while nobody reads it. ``timeout`` and ``cancel`` as in :meth:`ChildProcess.wait` (the group is killed,
    then :class:`subprocess.TimeoutExpired` or :class:`~ContrastiveSegLib.errors.Cancelled` is raised).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = ChildProcess(argv, env=env, cwd=cwd, stdout=out, stderr=err).start()
        code = child.wait(timeout=timeout, cancel=cancel, poll_s=poll_s)
        texts = []
        for stream in (out, err):
            stream.seek(0)
            texts.append(stream.read().decode("utf-8", errors="replace"))
    return Finished(code, *texts)


@contextlib.contextmanager
def exchange_folder(prefix: str, what: str):
    """A private temporary folder (removed afterwards) for the files a child reads and writes.

    A file system error inside the block (the temporary folder full, read-only or missing) becomes one line,
    :class:`~ContrastiveSegLib.errors.InputError` ``cannot write the temporary files of WHAT in TMP: REASON``,
    instead of an internal error: the user can free space or point TMPDIR elsewhere.
    """
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as folder:
            yield Path(folder)
    except OSError as error:
        raise InputError(f"cannot write the temporary files of {what} in {tempfile.gettempdir()}: "
                         f"{error.strerror or error} (free space there or set TMPDIR to another folder)") from None
