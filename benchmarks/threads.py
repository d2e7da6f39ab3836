"""Threads benchmark: how many torch threads a default install should use, on a quiet and on a busy machine.

    python benchmarks/threads.py [--threads 1 2] [--steps 30] [--repeats 2]

Runs ``contrastiveseg segment`` (a fresh process, as a user runs it) on the bundled 2 mm MNI sample with 3 painted
axial slices and ``--steps`` fine-tuning steps, once per thread count, on a quiet machine and with one busy-looping
process per CPU but one (another program the user runs, or Slicer's GUI next to the worker). Writes
``results/threads.md`` with the wall seconds of each run; the default rule (``threads.default_threads``) is printed
next to them.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _busy(stop) -> None:  # pragma: no cover - a load generator
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _inputs(folder: Path) -> tuple[Path, Path]:
    import numpy as np
    import SimpleITK as sitk

    from ContrastiveSegLib.data.sample import load_sample
    from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, sparse_annotation

    image, labels = load_sample("mni152_2mm")
    reference = sitk.GetArrayFromImage(labels)
    sparse = sitk.GetImageFromArray(
        sparse_annotation(reference, 0, choose_annotated_slices(reference, 0, 3)).astype(np.uint8))
    sparse.CopyInformation(labels)
    sitk.WriteImage(image, str(folder / "image.nii.gz"))
    sitk.WriteImage(sparse, str(folder / "labels.nii.gz"))
    return folder / "image.nii.gz", folder / "labels.nii.gz"


def _run(image: Path, labels: Path, out: Path, threads: int, steps: int) -> float:
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    command = [sys.executable, "-m", "ContrastiveSegLib", "segment", str(image), str(labels), "-o", str(out),
               "--steps", str(steps), "--threads", str(threads), "--progress", "none", "--device", "cpu"]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    from ContrastiveSegLib.threads import default_threads

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        image, labels = _inputs(Path(folder))
        for load in ("quiet", "busy"):
            stop = multiprocessing.Event()
            hogs = [multiprocessing.Process(target=_busy, args=(stop,)) for _ in range(max(1, cpus - 1))] \
                if load == "busy" else []
            for hog in hogs:
                hog.start()
            try:
                for threads in args.threads:
                    times = [_run(image, labels, Path(folder) / "out.nii.gz", threads, args.steps)
                             for _ in range(args.repeats)]
                    rows.append((load, threads, times))
                    print(load, threads, [round(t, 1) for t in times], flush=True)
            finally:
                stop.set()
                for hog in hogs:
                    hog.join()
    lines = [f"# Threads: `contrastiveseg segment` on the 2 mm MNI sample, {args.steps} steps, wall seconds",
             "", f"{cpus} CPUs; busy = {max(1, cpus - 1)} busy-looping process(es) beside the run; the default "
             f"rule gives {default_threads()} thread(s) here. Each run {args.repeats} times.", "",
             "| machine | threads | seconds (each run) | mean |", "|---|---|---|---|"]
    for load, threads, times in rows:
        lines.append(f"| {load} | {threads} | {', '.join(f'{t:.1f}' for t in times)} | "
                     f"{sum(times) / len(times):.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
