"""Refinement benchmark: one more painted slice, from the previous model (``--init-model``) or afresh.

    python benchmarks/refine.py [--tasks ...] [--seeds 0 1] [--threads 1]

Per task and seed: fine-tune on k = 3 slices (the benchmark's choice), then paint one more slice (the middle of
the widest gap between painted slices, where a user would look first) and segment again, once starting from the
k = 3 model (a third of the steps, ``presets.REFINE_FRACTION``) and once from scratch with the default preset.
Writes ``results/refine.csv`` and ``results/refine.md``: Dice and seconds of both, side by side. The goal:
the refinement at most a third of a fresh run's time and at least as good.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tasks import TASKS  # noqa: E402

from ContrastiveSegLib import api  # noqa: E402
from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, mean_dice, sparse_annotation  # noqa: E402

FIELDS = ["task", "seed", "fresh_dice", "fresh_seconds", "refine_dice", "refine_seconds", "k3_dice"]
DEFAULT_TASKS = ["mni2mm-gmwm-axial", "ct-lookalike-axial", "mni2mm-ventricles-coronal"]


def one_more_slice(slices: list[int]) -> int:
    """The middle of the widest gap between consecutive painted slices."""
    gaps = np.diff(slices)
    widest = int(np.argmax(gaps))
    return int(slices[widest] + gaps[widest] // 2)


def run(tasks: list[str], seeds: list[int], out: Path) -> list[dict]:
    rows = []
    for name in tasks:
        task = TASKS[name]
        image, reference, spacing, _ = task.load()
        slices = choose_annotated_slices(reference, task.axis, 3)
        more = sorted(slices + [one_more_slice(slices)])
        first, second = (sparse_annotation(reference, task.axis, s) for s in (slices, more))
        structures = list(task.structures)
        for seed in seeds:
            previous = api.segment(image, first, spacing, axis=task.axis, seed=seed)
            start = time.perf_counter()
            refined = api.segment(image, second, spacing, axis=task.axis, seed=seed, init_model=previous.model)
            refine_seconds = time.perf_counter() - start
            start = time.perf_counter()
            fresh = api.segment(image, second, spacing, axis=task.axis, seed=seed)
            fresh_seconds = time.perf_counter() - start
            row = {"task": name, "seed": seed, "k3_dice": round(mean_dice(previous.labels, reference, structures), 4),
                   "fresh_dice": round(mean_dice(fresh.labels, reference, structures), 4),
                   "fresh_seconds": round(fresh_seconds, 1),
                   "refine_dice": round(mean_dice(refined.labels, reference, structures), 4),
                   "refine_seconds": round(refine_seconds, 1)}
            print(row, flush=True)
            rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "refine.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| task | seed | k = 3 | fresh k = 4 | refined k = 4 | fresh s | refined s | time ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['seed']} | {r['k3_dice']:.3f} | {r['fresh_dice']:.3f} | "
                     f"{r['refine_dice']:.3f} | {r['fresh_seconds']:.0f} | {r['refine_seconds']:.0f} | "
                     f"{r['refine_seconds'] / r['fresh_seconds']:.2f} |")
    (out / "refine.md").write_text("# Refinement after one more painted slice\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        from ContrastiveSegLib.threads import apply_threads

        apply_threads(args.threads)  # the API's entry points keep this choice (threads.use_threads)
    run(args.tasks, args.seeds, args.out)


if __name__ == "__main__":
    main()
