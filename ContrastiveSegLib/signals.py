"""The signals that cancel a CLI run, and the moments before the CLI's own handlers exist.

SIGINT (Ctrl-C), SIGTERM (``kill``, a batch scheduler) and SIGHUP (a closed terminal or SSH session) all end a run
the same way: exit code 130 and one line naming what was already written
(:class:`~ContrastiveSegLib.progress.Cancellation`). ``python -m ContrastiveSegLib`` calls
:func:`hold_early_signals` before it imports anything heavy, so that a signal during start-up is not a
KeyboardInterrupt traceback or a silent death by SIGTERM: it is held, and the CLI's ``main`` turns it into the
cancel line as soon as its handlers are installed. Imports nothing but the standard library.
"""
from __future__ import annotations

import signal

CANCEL_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
"""Every signal that ends a run with exit code 130 (the shell's code for Ctrl-C, used for all three)."""

_held: list[int] = []


def _hold(signum, frame) -> None:
    _held.append(signum)


def hold_early_signals() -> None:
    """Until the CLI installs its handlers, record cancel signals instead of dying of them."""
    for signum in CANCEL_SIGNALS:
        signal.signal(signum, _hold)


def early_signal() -> int | None:
    """The first cancel signal held by :func:`hold_early_signals`, once (None when none arrived)."""
    return _held.pop(0) if _held else None
