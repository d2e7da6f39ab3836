"""Run the library's command line in a child process and follow it: the Slicer module's only way to train.

Why a child process: training must not freeze Slicer's GUI, and a crash in torch or CUDA (out of memory, a bad
driver) must not take Slicer down. The child is ``PythonSlicer -m ContrastiveSegLib segment ... --progress json``
(or ``sys.executable`` outside Slicer); it prints one JSON object per line on stdout::

    {"stage": "finetune", "step": 120, "of": 400, "loss": 0.23, "eta_s": 41.0, "message": "..."}
    {"stage": "error", "message": "labels not found: x.nrrd", "exit_code": 2}

Two reader threads turn stdout into :class:`Progress` events in a queue and keep the tail of stderr; the caller
drains the queue from its own thread (Slicer's widget with a ``qt.QTimer``, a batch script by :meth:`wait`).
Slicer's ``launchConsoleProcess(blocking=False)`` is not used because it starts the child in Slicer's own process
group, so cancel could not reach the child's children (data-loader workers); here the child leads a new process
group (POSIX session / Windows process group) and cancel ends the whole group
(:class:`ContrastiveSegLib.childprocess.ChildProcess`, which the demo and the baselines use too).

No MRML, no Qt, no ``slicer`` import: tested with a real child process in plain pytest.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ContrastiveSegLib.childprocess import PIPE, ChildProcess
from ContrastiveSegLib.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_INTERNAL, EXIT_OK
from ContrastiveSegLib.options import LOW_MEMORY_PRESET

_NOTE_PREFIX = "contrastiveseg: "
_ERROR_PREFIX = "contrastiveseg: error: "
_STDERR_LINES = 40
_READER_GRACE_S = 5.0  # how long after the child's exit its output may still be arriving
_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class Progress:
    """One progress line of the CLI. ``stage`` is load, finetune, predict, pretrain, write, done, or error."""

    stage: str
    step: int = 0
    of: int = 0
    loss: float | None = None
    eta_s: float | None = None
    message: str = ""
    exit_code: int | None = None

    @classmethod
    def parse(cls, line: str) -> Progress | None:
        """The progress object on ``line``, or None when the line is not one (a warning, a log line)."""
        text = line.strip()
        if not text.startswith("{"):
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("stage"), str):
            return None

        def number(key: str, kind: type):
            value = data.get(key)
            return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        return cls(stage=data["stage"], step=number("step", int) or 0, of=number("of", int) or 0,
                   loss=number("loss", float), eta_s=number("eta_s", float),
                   message=str(data.get("message") or ""), exit_code=number("exit_code", int))

    @property
    def fraction(self) -> float:
        """Progress of this stage in [0, 1] (0 when the stage has no step count)."""
        return min(max(self.step / self.of, 0.0), 1.0) if self.of > 0 else 0.0

    def describe(self) -> str:
        """A short line for a status label, e.g. ``"Fine-tuning 120/400 · loss 0.231 · 41 s left"``."""
        names = {"load": "Loading", "finetune": "Fine-tuning", "predict": "Segmenting", "pretrain": "Pretraining",
                 "write": "Writing", "done": "Done", "error": "Failed"}
        parts = [names.get(self.stage, self.stage.capitalize())]
        if self.of > 0:
            parts[0] += f" {self.step}/{self.of}"
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.eta_s is not None and self.stage not in ("done", "error"):
            parts.append(format_duration(self.eta_s) + " left")
        if self.message:
            parts.append(self.message)
        return " · ".join(parts)


def format_duration(seconds: float) -> str:
    """``41 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass(frozen=True)
class RunResult:
    """How the child ended. ``message`` is one line for the user; ``stderr_tail`` goes to the log."""

    exit_code: int
    message: str
    cancelled: bool = False
    stderr_tail: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # the CLI's remarks for the user ("contrastiveseg: ..." lines on stderr)

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK and not self.cancelled


@dataclass
class ChildOutcome:
    """Base of what a Slicer-side run returns: the child's :class:`RunResult` and, from it, ``ok`` and ``message``."""

    run: RunResult

    @property
    def ok(self) -> bool:
        return self.run.ok

    @property
    def message(self) -> str:
        return self.run.message


def memory_advice(command: Sequence[str] = ()) -> str:
    """What the user of the Slicer job that ran ``command`` (a :func:`cli_command` line) can change when it ran out
    of memory, in the module's words: a segmentation has a device, a preset (the low-memory one's smaller crops,
    unless it already runs it) and a batch size; pretraining a device and a batch size; anything else (prediction)
    only the device."""
    command = [str(part) for part in command]
    subcommand = command[command.index("ContrastiveSegLib") + 1] if "ContrastiveSegLib" in command[:-1] else None
    if subcommand in ("segment", "finetune"):
        preset = command[command.index("--preset") + 1] if "--preset" in command[:-1] else None
        if preset != LOW_MEMORY_PRESET:
            return f"Try the CPU, the '{LOW_MEMORY_PRESET}' preset or a smaller batch size."
        return "Try the CPU or a smaller batch size."
    if subcommand == "pretrain":
        return "Try the CPU or a smaller batch size."
    return "Try the CPU."


def exit_message(exit_code: int, error: str = "", cancelled: bool = False, command: Sequence[str] = ()) -> str:
    """The one-line message for a child's exit code (negative: killed by that signal, as subprocess reports);
    ``command`` is the child's command line, for advice it can follow (:func:`memory_advice`)."""
    error = " ".join(error.split())[:_MESSAGE_CHARS]
    if cancelled or exit_code == EXIT_CANCELLED or exit_code in (-signal.SIGINT, -signal.SIGTERM):
        return "Cancelled; nothing was changed."
    if exit_code == EXIT_OK:
        return "Done."
    if exit_code == EXIT_BAD_INPUT:
        return error or "The input was rejected (exit code 2)."
    if error.lower().startswith("out of memory"):  # the CLI's own last word: it already says what to try
        return error[0].upper() + error[1:]
    if "out of memory" in error.lower():
        return f"Out of memory: {error} {memory_advice(command)}"
    if exit_code == EXIT_INTERNAL:
        if error.lower().startswith("internal error: "):  # the CLI's own wording already says it
            error = error[len("internal error: "):]
        return f"Internal error: {error or 'see the Python console for the traceback'}"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        hint = " (out of memory?)" if exit_code == -getattr(signal, "SIGKILL", 9) else ""
        return f"The worker process was killed by {name}{hint}."
    return f"The worker process failed with exit code {exit_code}" + (f": {error}" if error else ".")


def library_root() -> Path:
    """The folder that holds the ContrastiveSegLib package (put on the child's PYTHONPATH)."""
    return Path(__file__).resolve().parent.parent.parent


def python_executable() -> str:
    """PythonSlicer inside Slicer (Slicer's own interpreter, set up by its launcher), else this interpreter."""
    slicer_module = sys.modules.get("slicer")
    if slicer_module is not None and hasattr(slicer_module, "app"):
        found = shutil.which("PythonSlicer") or shutil.which("PythonSlicer.exe")
        if found:
            return found
        sibling = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if sibling.is_file():
            return str(sibling)
    return sys.executable


def cli_command(subcommand: str, *arguments: str | os.PathLike, python: str | None = None,
                **options: object) -> list[str]:
    """``[python, -m, ContrastiveSegLib, subcommand, *arguments, --option value ..., --progress json]``.

    ``options`` use underscores for dashes (``model_out="m.safetensors"`` -> ``--model-out m.safetensors``),
    one-letter keys are short options (``o="out.nrrd"`` -> ``-o out.nrrd``); None and False are left out, True
    is a bare flag.
    """
    command = [python or python_executable(), "-m", "ContrastiveSegLib", subcommand, *map(str, arguments)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = f"-{key}" if len(key) == 1 else "--" + key.replace("_", "-")
        command += [flag] if value is True else [flag, str(value)]
    if "progress" not in options:
        command += ["--progress", "json"]
    return command


class CliProcess:
    """One child process running the CLI, followed through a queue of events.

    Args:
        command: the full command line (see :func:`cli_command`).
        force_cpu: hide every GPU from the child (``CUDA_VISIBLE_DEVICES=-1``).
        env: the base environment (Slicer passes its start-up environment); defaults to this process'.
        cwd: working folder of the child.

    Events (from :meth:`events`) are :class:`Progress` objects for JSON lines and plain strings for any other
    stdout or stderr line (meant for the log).
    """

    def __init__(self, command: Sequence[str], *, force_cpu: bool = False, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None) -> None:
        if not command:
            raise ValueError("command is empty")
        self.command = [str(c) for c in command]
        self.force_cpu = force_cpu
        self._base_env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self._process: ChildProcess | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self._threads: list[threading.Thread] = []
        self._error: str = ""
        self._notes: list[str] = []
        self._cancelled = False
        self._force_at: float | None = None  # when a cancel escalates to the forced signal
        self._ended_at: float | None = None  # when the child's exit was first seen
        self.last_progress: Progress | None = None

    # ------------------------------------------------------------------------------------------ life cycle
    def environment(self) -> dict[str, str]:
        """The child's environment: the base one plus the library on PYTHONPATH, unbuffered UTF-8 output."""
        env = dict(self._base_env)
        paths = [str(library_root())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive as they are printed
        env["PYTHONIOENCODING"] = "utf-8"
        if self.force_cpu:
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        return env

    def start(self) -> None:
        """Start the child in its own process group (:class:`~ContrastiveSegLib.childprocess.ChildProcess`).
        Raises RuntimeError when already started."""
        if self._process is not None:
            raise RuntimeError("this process was already started")
        self._process = ChildProcess(self.command, env=self.environment(), cwd=self.cwd, stdout=PIPE,
                                     stderr=PIPE).start()
        for stream, handler in ((self._process.stdout, self._on_stdout), (self._process.stderr, self._on_stderr)):
            thread = threading.Thread(target=self._read, args=(stream, handler), daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def cancel(self, grace_s: float = 5.0) -> None:
        """Stop the child and everything it started, returning at once (Slicer's main thread calls this): SIGTERM
        to the group now (the CLI then exits 130 without writing); :meth:`result`, which the caller polls, sends
        SIGKILL to the group once ``grace_s`` have passed. On Windows: CTRL_BREAK, then ``taskkill /T /F``."""
        if self._process is None or self._cancelled:
            return
        self._cancelled = True
        self._force_at = time.monotonic() + grace_s
        self._process.request_stop(forced=grace_s <= 0)

    # -------------------------------------------------------------------------------------------- output
    def _read(self, stream, handler: Callable[[str], None]) -> None:
        for line in stream:
            handler(line.rstrip("\r\n"))
        stream.close()

    def _on_stdout(self, line: str) -> None:
        progress = Progress.parse(line)
        if progress is None:
            if line.strip():
                self._queue.put(line)
            return
        if progress.stage == "error":
            self._error = progress.message
        self._queue.put(progress)

    def _on_stderr(self, line: str) -> None:
        if not line.strip():
            return
        self._stderr.append(line)
        if line.startswith(_ERROR_PREFIX):
            self._error = self._error or line[len(_ERROR_PREFIX):]
        elif line.startswith(_NOTE_PREFIX):
            self._notes.append(line[len(_NOTE_PREFIX):])
        self._queue.put(line)

    def events(self) -> list[Progress | str]:
        """Everything the child printed since the last call (never blocks)."""
        drained: list[Progress | str] = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, Progress):
                self.last_progress = event
            drained.append(event)
        return drained

    # ------------------------------------------------------------------------------------------- results
    def result(self) -> RunResult | None:
        """How the child ended, or None while it runs. Never blocks: after the child's exit it returns None until
        the reader threads have seen the last line (at most ``_READER_GRACE_S``: a grandchild outside the group
        may hold the pipes open). After a cancel's grace period, sends the forced signal to the group."""
        code = None if self._process is None else self._process.poll()
        if self._force_at is not None and time.monotonic() >= self._force_at:
            self._force_at = None
            self._process.request_stop(forced=True)  # the group, also when the child itself is gone
        if code is None:
            return None
        if self._force_at is not None:  # a cancelled child ended within its grace period: end what it left
            self._force_at = None
            self._process.request_stop(forced=True)
        self._ended_at = self._ended_at or time.monotonic()
        if any(t.is_alive() for t in self._threads) and time.monotonic() - self._ended_at < _READER_GRACE_S:
            return None
        error = self._error
        if not error and code not in (EXIT_OK, EXIT_BAD_INPUT) and self._stderr:
            error = self._stderr[-1]  # e.g. the last line of a traceback
        cancelled = self._cancelled and code != EXIT_OK
        message = exit_message(code, error, cancelled, self.command)
        return RunResult(code, message, cancelled, tuple(self._stderr), tuple(self._notes))

    def wait(self, timeout: float | None = None, on_event: Callable[[Progress | str], None] | None = None,
             poll_s: float = 0.1) -> RunResult | None:
        """Block until the child ends (or ``timeout`` s pass: then None), handing each event to ``on_event``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.events():
                if on_event is not None:
                    on_event(event)
            result = self.result()
            if result is not None:
                for event in self.events():
                    if on_event is not None:
                        on_event(event)
                return result
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)


# Share of the whole run each stage takes, per kind of run, for one progress bar over the run.
_SPANS = {
    "segment": {"load": (0.0, 0.05), "finetune": (0.05, 0.85), "predict": (0.85, 0.97), "write": (0.97, 1.0),
                "done": (1.0, 1.0)},
    "predict": {"load": (0.0, 0.1), "predict": (0.1, 0.95), "write": (0.95, 1.0), "done": (1.0, 1.0)},
    "pretrain": {"pretrain": (0.0, 0.98), "write": (0.98, 1.0), "done": (1.0, 1.0)},
}


def overall_fraction(progress: Progress, kind: str = "segment") -> float:
    """Where ``progress`` is in the whole run of ``kind`` (segment, predict, pretrain), in [0, 1]: fine-tuning
    takes 80 % of a Segment run's bar, the training loop 98 % of a Pretrain run's."""
    if kind not in _SPANS:
        raise ValueError(f"kind must be one of {', '.join(_SPANS)}, got {kind!r}")
    start, end = _SPANS[kind].get(progress.stage, (0.0, 0.0))
    return start + (end - start) * progress.fraction
