"""How many CPU threads torch may use: one rule for the CLI, the demo and the Slicer module.

torch's default (one thread per core) oversubscribes a machine that is doing anything else: on a 2-core machine
with one other busy process, fine-tuning ran 12x slower with torch's default than with one thread (30 steps:
126.7 s vs 10.1 s), because every parallel region waits for its slowest thread and a preempted thread stalls them
all. Leaving one CPU to the rest of the system (the desktop, Slicer's GUI, the other job) costs little when the
machine is quiet and avoids that collapse when it is not.

This module does not import torch at import time: the CLI reads and checks its arguments before loading torch.
"""
from __future__ import annotations

import contextlib
import os
import sys

from ContrastiveSegLib.errors import InputError

_chosen: int | None = None  # the count an entry point of this process chose explicitly (apply_threads)


MAX_THREADS = 256
"""The most threads ``--threads`` / ``OMP_NUM_THREADS`` may ask for: more than any CPU a process runs on has cores
to use (4096 ran a 24 GB machine out of memory on thread stacks before any work)."""


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the platform has one (a container or ``taskset``
    limit, a batch scheduler's allocation), else ``os.cpu_count()``; at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        count = os.cpu_count() or 1
    return max(1, count)


def default_threads(cpus: int | None = None) -> int:
    """The default thread count: one fewer than ``cpus`` (default :func:`available_cpus`), at least 1.

    So 1 on a 1- or 2-core machine, 7 on 8 cores: one CPU stays free for whatever else runs (see the module text).
    """
    cpus = available_cpus() if cpus is None else int(cpus)
    return max(1, cpus - 1)


def _environment_threads() -> int | None:
    """``OMP_NUM_THREADS`` when it holds a positive whole number (the user's or torchrun's explicit choice, which
    torch itself honours), else None (unset or not a number, which torch ignores too). InputError above
    :data:`MAX_THREADS`."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        value = int(text)
    except ValueError:
        return None
    if value > MAX_THREADS:
        raise InputError(f"OMP_NUM_THREADS={text[:20]} asks for more than {MAX_THREADS} threads; set it to at most "
                         f"the CPUs to use ({available_cpus()} here) or unset it")
    return value if value >= 1 else None


def settle_environment(count: int) -> None:
    """Put the chosen thread count into ``OMP_NUM_THREADS`` while torch is not loaded yet: the OpenMP runtime reads
    it when torch loads and prints two lines of its own for a value such as 'abc', and it sizes its first thread
    pool by it. Once torch is loaded this changes nothing (:func:`apply_threads` sizes the pools then)."""
    if "torch" not in sys.modules:
        os.environ["OMP_NUM_THREADS"] = str(int(count))


def choose_threads(requested: int | None = None) -> int:
    """The thread count to use: ``requested`` (``--threads``) when given, else ``OMP_NUM_THREADS`` when set (torchrun
    sets it to 1 per process), else :func:`default_threads`.

    Raises InputError (one line) when ``requested`` is not a whole number >= 1.
    """
    if requested is None:
        return _environment_threads() or default_threads()
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise InputError(f"--threads must be a whole number >= 1, got {requested}")
    if requested > MAX_THREADS:
        raise InputError(f"--threads must be <= {MAX_THREADS}, got {requested} (this process may use "
                         f"{available_cpus()} CPUs)")
    return requested


def apply_threads(count: int) -> tuple[int, int]:
    """Make torch use ``count`` threads for its operators and, where torch still allows it, between operators.

    Returns torch's previous intra-op thread count and the count now in use, so an in-process caller (tests, a
    notebook) can restore the first with ``torch.set_num_threads``. The inter-op pool can be sized only once per
    process, before any parallel work has started; later calls leave it as it is.
    """
    global _chosen
    _chosen = int(count)
    return _set_threads(count)


def _set_threads(count: int) -> tuple[int, int]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        torch.set_num_interop_threads(int(count))
    except RuntimeError:  # "cannot set number of interop threads after parallel work has started or ..."
        pass
    return previous, torch.get_num_threads()


@contextlib.contextmanager
def use_threads(requested: int | None = None):
    """The Python API's entry points (:mod:`ContrastiveSegLib.api`) run inside this: torch uses ``requested``
    threads, else the count this process chose already (:func:`apply_threads`: the CLI's ``--threads``, a
    benchmark's), else :func:`choose_threads`'s default, the same rule as the CLI and the Slicer module; the
    previous count comes back on leaving. Yields the count in use."""
    import torch

    if requested is None and _chosen is not None:
        yield torch.get_num_threads()
        return
    previous, count = _set_threads(choose_threads(requested))
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def add_threads_option(parser) -> None:
    """Add ``--threads N`` to an argparse parser (validated by :func:`choose_threads` when the command runs, so a
    bad value is one line and exit code 2)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: OMP_NUM_THREADS when set, else one fewer than the "
                             f"CPUs this process may use, at least 1: {default_threads()} here)")
