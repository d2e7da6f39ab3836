"""The Segment Editor tools a Slicer user would reach for, each run in a fresh Python process.

The demo and the benchmark compare against them; prediction weighs grow-cut in as an expert
(:mod:`ContrastiveSegLib.inference.fusion`). The tools themselves are :mod:`~ContrastiveSegLib.baselines.growcut`
and :mod:`~ContrastiveSegLib.baselines.fill_between`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

GROW, FILL = "Grow from seeds", "Fill between slices"


def baseline_worker(folder: str) -> int:
    """Child-process side of :func:`run_baseline`: read ``inputs.npz`` in ``folder``, run the baseline it
    names, save ``labels.npy``; exit code 0 on success, 3 with ``message.txt`` when the tool's optional package is
    missing, 1 with ``message.txt`` on any other failure."""
    folder_path = Path(folder)
    inputs = np.load(folder_path / "inputs.npz")
    name, axis = str(inputs["name"]), int(inputs["axis"])
    try:
        from ContrastiveSegLib import baselines

        if name == GROW:
            whole = {"extent_growth_ratio": None} if bool(inputs["whole_volume"]) else {}
            labels = baselines.grow_from_seeds(inputs["image"], inputs["sparse"], axis, tuple(inputs["spacing"]),
                                               **whole)
        elif name == FILL:
            labels = baselines.fill_between_slices(inputs["sparse"], axis)
        else:
            raise ValueError(f"unknown baseline {name!r} (known: {GROW!r}, {FILL!r})")
    except ImportError as error:  # the message holds the pip hint
        (folder_path / "message.txt").write_text(" ".join(str(error).split()) or type(error).__name__)
        return 3
    except Exception as error:  # noqa: BLE001 - reported in one line by the parent
        (folder_path / "message.txt").write_text(f"{type(error).__name__}: {' '.join(str(error).split())}")
        return 1
    np.save(folder_path / "labels.npy", np.asarray(labels))
    return 0


def run_baseline(name: str, image: np.ndarray, sparse: np.ndarray, axis: int, spacing, cancel=None,
                 whole_volume: bool = False) -> np.ndarray:
    """Run the baseline ``name`` (GROW or FILL) in a fresh Python process and return its (z, y, x) label map
    (``whole_volume``: grow through the whole array rather than Slicer's box around the seeds; GROW only).

    Why a process: the two tools are native code from two toolkits (VTK in the slicer-core wheel, ITK's Python
    wrapping), and ITK's contour interpolator leaves the heap corrupted: the process aborts while shutting down
    ("malloc_consolidate(): unaligned fastbin chunk detected"), here every time grow-cut had run in the same
    process. One process per tool keeps such faults away from the caller, and a cancel can stop a tool mid-run.
    A plain ``python -c`` child rather than multiprocessing, which would re-import the caller's ``__main__``
    (breaking unguarded scripts). The seconds a caller measures include starting Python and loading its
    toolkit (ITK's wrapping alone takes 10-20 s to load on 2 cores).

    Raises:
        ImportError: the tool's optional package is missing (message: what to pip install).
        RuntimeError: the tool failed or its process died (message: why, one line).
        InputError: its temporary files could not be written (a full disk: one line).
        Cancelled: ``cancel`` was set while it ran.
    """
    from ContrastiveSegLib import childprocess

    package_root = str(Path(__file__).resolve().parents[2])  # so a source checkout works uninstalled
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [v for v in [env.get("PYTHONPATH")] if v])
    # os._exit skips the interpreter's teardown: ITK's contour interpolator leaves the heap in a state that
    # aborts the process while it shuts down, after the result is safely on disk.
    code = ("import os, sys; from ContrastiveSegLib.baselines.runner import baseline_worker; "
            "status = baseline_worker(sys.argv[1]); sys.stdout.flush(); sys.stderr.flush(); os._exit(status)")
    with childprocess.exchange_folder("contrastiveseg-baseline-", name) as folder:
        np.savez(Path(folder) / "inputs.npz", name=name, image=image, sparse=sparse, axis=int(axis),
                 spacing=np.asarray(spacing, float), whole_volume=bool(whole_volume))
        # A cancel kills the child and whatever it started (Fill between slices' own ITK worker) at once.
        done = childprocess.run([sys.executable, "-c", code, folder], env=env, cancel=cancel, poll_s=0.2)
        message_path = Path(folder) / "message.txt"
        message = message_path.read_text().strip() if message_path.is_file() else ""
        if done.returncode == 0:
            return np.load(Path(folder) / "labels.npy")
        if done.returncode == 3:
            raise ImportError(message)
        if not message:
            last = done.last_line()
            message = f"its process ended with exit code {done.returncode}" + (f": {last}" if last else "")
        raise RuntimeError(message)
