"""Follow one run from a GUI timer: whatever happens, the panel hears how it ended.

The module's widget starts a run, then a ``qt.QTimer`` calls :meth:`RunDriver.tick` every 200 ms (the browser
front end can call it from its own loop). ``tick`` hands the child's events on, and once the child has ended it
reads the result into the scene, remembers what the next run needs and calls the completion callback, exactly
once. An error while finishing (a RuntimeError writing a segment, a MemoryError on a huge result) becomes a failed
result with one line: the callback still runs, so the panel's Cancel button turns back into Segment and says what
happened. Cancel returns at once (:meth:`~.childrun.ChildRun.cancel`); the clean-up (the forced signal after the
grace period, reaping, removing the exchange files) happens in later ticks. No Qt, no MRML here.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


class RunDriver:
    """Drive ``job`` (a started :class:`~.childrun.ChildRun`) tick by tick.

    Args:
        on_event: each :class:`~.runner.Progress` or log line of the child.
        remember: ``remember(job, result)`` after a finish (store the model path, ...); may raise.
        completed: ``completed(result)``, called exactly once when the run has ended, whatever happened.
    """

    def __init__(self, job, on_event: Callable | None = None, remember: Callable | None = None,
                 completed: Callable | None = None) -> None:
        self.job, self.on_event, self.remember, self.completed = job, on_event, remember, completed
        self.result = None
        self.done = False

    @property
    def running(self) -> bool:
        return not self.done

    def tick(self) -> bool:
        """One look at the run; True while it goes on. Never raises and never blocks."""
        if self.done:
            return False
        try:
            for event in self.job.poll():
                if self.on_event is not None:
                    self.on_event(event)
            if self.job.running:
                return True
            result = self.job.finish()
            if self.remember is not None:
                self.remember(self.job, result)
        except Exception as error:  # noqa: BLE001 - any failure (MemoryError too) must bring the panel back
            result = self._failed(error)
        self._complete(result)
        return False

    def cancel(self) -> None:
        """Ask the run to stop; returns at once. The next ticks finish it."""
        if not self.done:
            self.job.cancel()

    def _failed(self, error: BaseException):
        logger.exception("ContrastiveSeg: the run failed while finishing")
        return self.job.failed(error)

    def _complete(self, result) -> None:
        self.done, self.result = True, result
        if self.completed is not None:
            try:
                self.completed(result)
            except Exception:  # noqa: BLE001 - a broken callback must not stop the timer's clean-up
                logger.exception("ContrastiveSeg: the completion callback failed")
