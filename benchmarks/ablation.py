"""The pretraining ablation table: benchmarks/results/ablation.csv (written by ``run_benchmark.py --ablation``)
summarised into ablation.md.

    python benchmarks/ablation.py [--out benchmarks/results]

Per variant (random initialisation, each shipped encoder, adaptation on the scan, bidirectional consistency):
mean Dice over seeds per task and k, the mean over tasks at k <= 3 and its difference to ``none`` (the goal:
+0.03 for the best pretraining), the one-off pretraining cost of a shipped encoder (models.json) and the mean
seconds of a ``segment`` run as benchmarked.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's library, not an installed one
from tasks import ABLATION  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.03


def load_rows(path: Path) -> list[dict]:
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["k"], row["seed"], row["mean_dice"] = int(row["k"]), int(row["seed"]), float(row["mean_dice"])
        row["seconds"] = float(row["seconds"])
    return rows


def summarise(rows: list[dict], encoders: list[dict]) -> str:
    """The Markdown of ablation.md."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    order = [name for name, _ in ABLATION]
    variants = sorted(dict.fromkeys(r["method"] for r in rows),
                      key=lambda v: order.index(v) if v in order else len(order))
    ks = sorted({r["k"] for r in rows})
    pretrain_seconds = {e["name"]: e.get("seconds") for e in encoders}

    def values(variant, task=None, k=None, max_k=None):
        return [r["mean_dice"] for r in rows if r["method"] == variant and (task is None or r["task"] == task)
                and (k is None or r["k"] == k) and (max_k is None or r["k"] <= max_k)]

    def cell(variant, task, k):
        found = values(variant, task, k)
        return f"{np.mean(found):.3f}" if found else ""

    def task_mean(variant, max_k):
        """Mean over tasks (each task the mean of its seeds and k <= max_k); None unless every task has rows."""
        per_task = [values(variant, task, max_k=max_k) for task in tasks]
        return float(np.mean([np.mean(v) for v in per_task])) if all(per_task) else None

    # One column per variant, one row per (task, k): the variants are what the eye compares.
    baseline = task_mean("none", 3)
    lines = ["| task | k | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for task in tasks:
        for k in ks:
            lines.append(f"| {task} | {k} | " + " | ".join(cell(v, task, k) for v in variants) + " |")
    for k in ks:
        per_k = [[values(v, task, k) for task in tasks] for v in variants]
        lines.append(f"| mean over tasks | {k} | " + " | ".join(
            f"{np.mean([np.mean(x) for x in found]):.3f}" if all(found) else "" for found in per_k) + " |")
    means = [task_mean(v, 3) for v in variants]
    lines.append("| **mean over tasks, k <= 3** | | " +
                 " | ".join("" if m is None else f"**{m:.3f}**" for m in means) + " |")
    lines.append("| difference to none | | " + " | ".join(
        "" if m is None or baseline is None or v == "none" else f"{m - baseline:+.3f}"
        for v, m in zip(variants, means)) + " |")
    costs = []
    for variant in variants:
        cost = pretrain_seconds.get(variant)
        costs.append(f"{cost / 60:.0f} min, once" if cost else ("per scan" if variant.startswith("adapt") else "-"))
    lines.append("| pretraining (1 CPU thread) | | " + " | ".join(costs) + " |")
    lines.append("| seconds per segment run | | " + " | ".join(
        f"{np.mean([r['seconds'] for r in rows if r['method'] == v]):.0f}" for v in variants) + " |")
    seeds = sorted({r["seed"] for r in rows})
    spread = []
    for variant in variants:
        for task in tasks:
            for k in ks:
                found = values(variant, task, k)
                if len(found) > 1:
                    spread.append(np.std(found))
    text = ("# Pretraining ablation: mean Dice over structures (mean over seeds " + ", ".join(map(str, seeds)) +
            ")\n\n" + "\n".join(lines) + "\n\n"
            f"Goal: the best pretraining beats `none` by at least {GOAL} Dice averaged over tasks at k <= 3. "
            f"Median standard deviation over seeds of one (variant, task, k) cell: "
            f"{np.median(spread) if spread else float('nan'):.3f}. Pretraining of the shipped encoders: "
            "Resources/Models/make_encoders.py (one CPU thread each, equal time budget); fine-tuning: the default "
            "preset, one torch thread per process, two processes on the 2 CPU cores.\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    manifest = ROOT / "Resources" / "Models" / "models.json"
    encoders = json.loads(manifest.read_text()) if manifest.is_file() else []
    text = summarise(load_rows(args.out / "ablation.csv"), encoders)
    (args.out / "ablation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
