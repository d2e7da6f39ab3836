"""Progress events and cancellation shared by the API, the CLI and the Slicer runner.

An event is a plain dict: ``{"stage": str, "step": int, "of": int, "loss": float | None, "eta_s": float | None}``
plus an optional ``"message"``. The CLI shows them (:class:`ProgressPrinter`) as JSON lines, which the Slicer module
parses, as a terminal bar, or as stage lines for a log; :class:`Cancellation` is the CLI's cancel flag, which also
knows which outputs a cancelled run had already written.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections import deque
from typing import Callable, Optional

from ContrastiveSegLib.errors import Cancelled, OutputError

ProgressCallback = Optional[Callable[[dict], None]]


class StageProgress:
    """Reports steps of one stage with an ETA from the recent step rate; checks the cancel flag.

    The ETA uses the time of the last :data:`ETA_WINDOW` updates only, not the mean since the stage began: the first
    steps are slow (memory allocation, cuDNN autotuning, thread-pool start-up, a machine busy with the previous
    stage), and a mean over them overestimated a 1,006 s run as 4,205 s. Only the first update, which has nothing
    recent to go by, uses the time since the stage began.

    ``after_steps`` is the work of the run's later stages (a ``segment``'s prediction after fine-tuning), in this
    stage's steps: the ETA counts it too, so that it says when the run ends, not only this stage (an ETA of the
    fine-tuning alone ran low by the prediction's time: 302 s said, 385 s left).
    """

    ETA_WINDOW = 20  # updates; long enough to smooth step-to-step jitter, short enough to follow a change of pace

    def __init__(self, stage: str, total: int, callback: ProgressCallback = None, cancel=None, *,
                 clock: Callable[[], float] = time.perf_counter, after_steps: float = 0.0):
        self.stage = stage
        self.after_steps = max(float(after_steps), 0.0)
        self.total = max(int(total), 1)
        self.callback = callback
        self.cancel = cancel
        self.clock = clock
        self.start = clock()
        self._recent: deque[tuple[int, float]] = deque(maxlen=self.ETA_WINDOW)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")

    def eta(self, step: int, now: float) -> float | None:
        """Seconds left after ``step`` at time ``now`` (this stage and ``after_steps``), from the recent step rate
        (None before the first step)."""
        if step <= 0:
            return None
        remaining = max(self.total - step, 0) + self.after_steps
        if self._recent and step > self._recent[0][0]:
            first_step, first_time = self._recent[0]
            seconds_per_step = (now - first_time) / (step - first_step)
        else:  # the first update: only the time since the stage began to go by
            seconds_per_step = (now - self.start) / step
        return max(seconds_per_step, 0.0) * remaining

    def update(self, step: int, loss: float | None = None, message: str | None = None) -> None:
        self.check_cancel()
        if self.callback is None:
            return
        now = self.clock()
        eta = self.eta(step, now)
        self._recent.append((int(step), now))
        event = {"stage": self.stage, "step": int(step), "of": self.total,
                 "loss": None if loss is None else round(float(loss), 5),
                 "eta_s": None if eta is None else round(eta, 1)}
        if message:
            event["message"] = message
        self.callback(event)


def emit(callback: ProgressCallback, stage: str, message: str | None = None, **extra) -> None:
    """A one-off event (stage boundaries, warnings)."""
    if callback is not None:
        event = {"stage": stage, "step": 0, "of": 0, "loss": None, "eta_s": None, **extra}
        if message:
            event["message"] = message
        callback(event)


# ----------------------------------------------------------------------------------------------- standard streams
_closed_at_start: set[str] = set()


def open_standard_streams() -> None:
    """Give a process started with a closed standard stream (``>&-``, ``2>&-``) /dev/null in its place, remembering
    which were closed: the next file opened would otherwise take descriptor 1 or 2, and library messages would
    be written into it (an output volume). Python leaves ``sys.stdout``/``sys.stderr`` None then, where print()
    silently does nothing (and ``print(file=None)`` writes to stdout): they get /dev/null too."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:  # a lower descriptor was closed too and took it; the loop reaches it in order
                os.dup2(opened, fd)
                os.close(opened)
            _closed_at_start.add(name)
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "r" if fd == 0 else "w", encoding="utf-8"))
            _closed_at_start.add(name)


def write_stdout(text: str, what: str) -> None:
    """Write ``text`` to stdout and flush; OutputError (one line, exit code 2) when stdout was closed when the
    process started or its reader has gone (a closed pipe, a full device). stdout is then pointed at /dev/null, so
    that Python's flush at exit does not fail a second time."""
    if "stdout" in _closed_at_start:
        raise OutputError(f"stdout is closed, so the {what} cannot be written; run without '>&-'")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as error:
        _silence_stdout()
        reason = (error.strerror or type(error).__name__).lower()
        raise OutputError(f"cannot write the {what} to stdout ({reason}); its reader has gone or its device is "
                          "full") from None


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


# ----------------------------------------------------------------------------------------------- showing events
# What a stage is doing, for the log's line when the stage starts without a message of its own.
_STAGE_WORDS = {"finetune": "fine-tuning", "predict": "predicting", "pretrain": "pretraining",
                "self-train": "self-training"}
# Events from these stages come only after every input was read and checked (see StageLog).
_CHECKED_STAGES = ("write", "done")


def _loss_and_eta(event: dict) -> str:
    """``loss 0.4123 eta 12s`` (either part only when the event has it): the bar's and the log's words."""
    loss = f"loss {event['loss']:.4f}" if event.get("loss") is not None else ""
    eta = f"eta {event['eta_s']:.0f}s" if event.get("eta_s") is not None else ""
    return " ".join(part for part in (loss, eta) if part)


class StageLog:
    """Progress as plain lines on stderr for a log (stderr not a terminal): ``[   12.3 s] fine-tuning on ...``,
    one line per stage boundary or message and one per tenth of a stage's steps, with the seconds since the run
    began.

    Bad input ends a run with exactly one line on stderr. So the lines are held back until the run is past every
    check: its first completed step, or its write or done stage (the API checks its inputs before the first step).
    An error before that leaves the held lines unprinted; after it they are printed at once, each with its own
    time.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.start = clock()
        self._held: list[str] | None = []  # None once the run is past its checks
        self._stage: str | None = None
        self._tenth = -1

    def __call__(self, event: dict) -> None:
        stage, step, of = event.get("stage"), int(event.get("step") or 0), int(event.get("of") or 0)
        lines = []
        if event.get("message"):
            lines.append(event["message"])
        elif stage != self._stage and stage in _STAGE_WORDS:
            lines.append(_STAGE_WORDS[stage])
        if stage != self._stage:
            self._stage, self._tenth = stage, -1
        if of and step >= 1 and (step * 10 // of > self._tenth or step == 1):
            self._tenth = step * 10 // of
            lines.append(f"{stage} {step}/{of} {_loss_and_eta(event)}".rstrip())
        stamp = f"[{self.clock() - self.start:7.1f} s] "
        if self._held is not None:
            self._held.extend(stamp + line for line in lines)
            if step >= 1 or stage in _CHECKED_STAGES:
                lines, self._held = self._held, None
            else:
                return
        else:
            lines = [stamp + line for line in lines]
        if lines:
            sys.stderr.write("".join(line + "\n" for line in lines))
            sys.stderr.flush()


class ProgressPrinter:
    """Shows progress events in one of four modes: ``json`` (one JSON object per line on stdout, for front ends),
    ``bar`` (a terminal bar per stage on stderr, drawn by tqdm), ``log`` (:class:`StageLog` lines on stderr) or
    ``none``."""

    def __init__(self, mode: str):
        self.mode = mode
        self._log = StageLog() if mode == "log" else None
        self._bar = None  # the tqdm bar of the stage under way
        self._bar_stage: str | None = None

    def __call__(self, event: dict) -> None:
        if self.mode == "json":
            write_stdout(json.dumps(event) + "\n", "progress")
        elif self.mode == "bar":
            self._draw(event)
        elif self.mode == "log":
            self._log(event)

    def _draw(self, event: dict) -> None:
        from tqdm import tqdm  # only a terminal needs it (the Slicer module reads JSON lines)

        if event.get("message"):
            tqdm.write(event["message"], file=sys.stderr)  # above the bar, which is redrawn below it
        if not event.get("of"):
            return
        if self._bar is None or self._bar_stage != event["stage"] or event["step"] < self._bar.n:
            self._close_bar()
            # Our ETA (the recent step rate, as the JSON lines and the Slicer module show it), not tqdm's own.
            self._bar = tqdm(total=event["of"], desc=f"{event['stage']:>9}", file=sys.stderr, leave=True,
                             mininterval=0.2, dynamic_ncols=True,
                             bar_format="{desc} {bar} {n_fmt}/{total_fmt}{postfix}")
            self._bar_stage = event["stage"]
        self._bar.set_postfix_str(_loss_and_eta(event), refresh=False)
        self._bar.update(event["step"] - self._bar.n)
        if event["step"] >= event["of"]:
            self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def error(self, message: str, code: int) -> None:
        """Before the CLI's one error line: the JSON error event, or the bar closed so the line starts afresh."""
        if self.mode == "json":
            try:
                write_stdout(json.dumps({"stage": "error", "message": message, "exit_code": code}) + "\n",
                             "progress")
            except OSError:  # the reader has gone: the error line on stderr is all that is left
                pass
        self._close_bar()


# ----------------------------------------------------------------------------------------------- cancelling
class Cancellation(threading.Event):
    """The cancel flag of one CLI run (set by Ctrl-C or SIGTERM through :meth:`on_signal`), which also records the
    outputs the run has moved into place, so that a cancel says exactly what was written (:meth:`message`).

    The API polls it like any ``threading.Event``.
    """

    def __init__(self):
        super().__init__()
        self.written: list[tuple[str, str]] = []  # (path, what), in the order moved into place
        self.expected: list[tuple[str, str]] = []  # every output of the run, once it starts moving them into place
        self._writing = False
        self._deferred = False

    def on_signal(self, signum=None, frame=None) -> None:
        """Signal handler: set the flag and stop the run at once (:class:`Cancelled`); while the outputs move into
        place (:meth:`writing`), right after the last of them instead."""
        first = not self.is_set()
        self.set()
        if self._writing:
            self._deferred = True
            return
        if first:  # a second signal while the first unwinds must not interrupt the cleanup and the cancel line
            raise Cancelled("cancelled")

    @contextlib.contextmanager
    def writing(self, outputs: list[tuple[str, str]]):
        """Around moving a run's ``outputs`` ((path, what) each) into place; yields ``moved(path, what)``, to call
        after each move. A signal waits until the block ends: the outputs appear together (a label map never
        without the probabilities beside it, a .mhd never without its header), and every file in place is
        recorded."""
        self.expected = [(str(path), what) for path, what in outputs]
        self._writing = True
        try:
            yield lambda path, what: self.written.append((str(path), what))
        finally:
            self._writing = False
        if self._deferred:
            self._deferred = False
            raise Cancelled("cancelled")

    def message(self) -> str:
        """``cancelled; nothing was written``, or which outputs are in place and which are not."""
        if not self.written:
            return "cancelled; nothing was written"
        listed = ", ".join(f"{path} ({what})" for path, what in self.written)
        missing = [(path, what) for path, what in self.expected if (path, what) not in self.written]
        rest = "; not written: " + ", ".join(f"{path} ({what})" for path, what in missing) if missing else ""
        return f"cancelled after writing {listed}{rest}"


def writing(cancel, outputs: list[tuple[str, str]]):
    """``cancel.writing(outputs)`` for a :class:`Cancellation`; for anything else (a plain ``threading.Event`` or
    None, from an in-process caller) a block whose ``moved(path, what)`` does nothing."""
    if isinstance(cancel, Cancellation):
        return cancel.writing(outputs)
    return contextlib.nullcontext(lambda path, what: None)
