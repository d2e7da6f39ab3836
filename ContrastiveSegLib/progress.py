"""Progress events and cancellation shared by the API, the CLI and the Slicer runner.

An event is a plain dict: ``{"stage": str, "step": int, "of": int, "loss": float | None, "eta_s": float | None}``
plus an optional ``"message"``. The CLI prints them as JSON lines; the Slicer module parses those lines.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Optional

from ContrastiveSegLib.errors import Cancelled

ProgressCallback = Optional[Callable[[dict], None]]


class StageProgress:
    """Reports steps of one stage with an ETA from the recent step rate; checks the cancel flag.

    The ETA uses the time of the last :data:`ETA_WINDOW` updates only, not the mean since the stage began: the first
    steps are slow (memory allocation, cuDNN autotuning, thread-pool start-up, a machine busy with the previous
    stage), and a mean over them overestimated a 1,006 s run as 4,205 s. Only the first update, which has nothing
    recent to go by, uses the time since the stage began.
    """

    ETA_WINDOW = 20  # updates; long enough to smooth step-to-step jitter, short enough to follow a change of pace

    def __init__(self, stage: str, total: int, callback: ProgressCallback = None, cancel=None, *,
                 clock: Callable[[], float] = time.perf_counter):
        self.stage = stage
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
        """Seconds left after ``step`` at time ``now``, from the recent step rate (None before the first step)."""
        if step <= 0:
            return None
        remaining = max(self.total - step, 0)
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
