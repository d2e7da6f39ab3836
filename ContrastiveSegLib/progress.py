"""Progress events and cancellation shared by the API, the CLI and the Slicer runner.

An event is a plain dict: ``{"stage": str, "step": int, "of": int, "loss": float | None, "eta_s": float | None}``
plus an optional ``"message"``. The CLI prints them as JSON lines; the Slicer module parses those lines.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from ContrastiveSegLib.errors import Cancelled

ProgressCallback = Optional[Callable[[dict], None]]


class StageProgress:
    """Reports steps of one stage with an ETA from the mean step time so far; checks the cancel flag."""

    def __init__(self, stage: str, total: int, callback: ProgressCallback = None, cancel=None):
        self.stage = stage
        self.total = max(int(total), 1)
        self.callback = callback
        self.cancel = cancel
        self.start = time.perf_counter()

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")

    def update(self, step: int, loss: float | None = None, message: str | None = None) -> None:
        self.check_cancel()
        if self.callback is None:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / step * (self.total - step) if step > 0 else None
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
