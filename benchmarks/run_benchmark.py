"""Quality benchmark: ContrastiveSeg against Slicer's "Grow from seeds" and "Fill between slices" on the same
sparse annotations (the protocol: benchmarks/README.md).

    python benchmarks/run_benchmark.py --out benchmarks/results                 # everything
    python benchmarks/run_benchmark.py --tasks mni2mm-gmwm-axial --k 3 --seeds 0  # a subset
    python benchmarks/run_benchmark.py --ablation --no-baselines                 # pretraining ablation
    python benchmarks/run_benchmark.py --candidates --no-baselines --k 3 5       # the shape candidates

Per task, k and seed: k slices evenly spaced over 10-90 % of the structures' extent are kept, the rest hidden;
every method segments the volume; Dice per structure is scored over the whole volume. Rows are appended to
quality.csv as they come (an interrupted run keeps what it measured); the Markdown table, the Dice-vs-k plot and
one overlay per task are rebuilt from the CSV at the end. Baselines are deterministic and run once per (task, k).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's library, not an installed one
from tasks import ABLATION, CANDIDATES, OUR_METHODS, TASKS  # noqa: E402

from ContrastiveSegLib import api, experimental  # noqa: E402
from ContrastiveSegLib.baselines.runner import FILL, GROW, run_baseline  # noqa: E402
from ContrastiveSegLib.evaluation.metrics import (  # noqa: E402
    choose_annotated_slices, dice_per_label, sparse_annotation)

FIELDS = ["task", "method", "k", "seed", "mean_dice", "dice", "seconds", "preset"]


def append_row(path: Path, row: dict) -> None:
    """Append ``row`` (the :data:`FIELDS`) to the CSV at ``path``, with a header when the file is new; synced, so
    a run stopped midway keeps every finished row."""
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        handle.flush()
        os.fsync(handle.fileno())


def score_row(task, method, k, seed, prediction, reference, seconds, preset="") -> dict:
    """One CSV row: the mean and per-structure Dice of ``prediction`` against ``reference``."""
    scores = dice_per_label(prediction, reference, list(task.structures))
    return {"task": task.name, "method": method, "k": k, "seed": seed,
            "mean_dice": round(float(np.mean(list(scores.values()))), 4),
            "dice": json.dumps({task.structures[v]: round(d, 4) for v, d in scores.items()}),
            "seconds": round(seconds, 1), "preset": preset}


PREDICTION_OPTIONS = ("shape_prior",)  # api.predict options: they do not change the trained network


def _segment(trained: dict, image, sparse, spacing, axis, preset, seed, kwargs) -> tuple[np.ndarray, float]:
    """(labels, seconds) of ``api.segment`` for one variant. The trained model is cached in ``trained`` by its
    training options, so variants that differ only in :data:`PREDICTION_OPTIONS` are trained once; the seconds of
    a reused model include its training time, as a separate run's would. The candidates' experimental options
    (``self_train``, ``prior_labels``) go through :mod:`ContrastiveSegLib.experimental`, which takes every other
    option as the API does."""
    start = time.perf_counter()
    if kwargs.get("self_train"):
        labels = experimental.segment(image, sparse, spacing, axis=axis, preset=preset, seed=seed, **kwargs).labels
        return labels, time.perf_counter() - start
    training = {key: value for key, value in kwargs.items() if key not in PREDICTION_OPTIONS}
    key = json.dumps(training, sort_keys=True)
    if key not in trained:
        trained[key] = (experimental.finetune(image, sparse, spacing, axis=axis, preset=preset, seed=seed,
                                              **training),
                        time.perf_counter() - start)
    model, training_seconds = trained[key]
    start = time.perf_counter()
    prediction = {key: value for key, value in kwargs.items() if key in PREDICTION_OPTIONS}
    labels = api.predict(model, image, labels=sparse, spacing=spacing, **prediction).labels
    return labels, training_seconds + time.perf_counter() - start


def run(tasks: list[str], ks: list[int], seeds: list[int], out: Path, preset: str, baselines: bool,
        overlays: bool, methods: list[tuple[str, dict]] = OUR_METHODS, csv_name: str = "quality.csv",
        overlay_k: int = 3) -> None:
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / csv_name
    for name in tasks:
        task = TASKS[name]
        image, reference, spacing, direction = task.load()
        for k in ks:
            slices = choose_annotated_slices(reference, task.axis, k)
            sparse = sparse_annotation(reference, task.axis, slices)
            layers = {"reference": reference}
            for seed in seeds:
                trained: dict = {}  # variants that differ only in how they predict share one trained model
                for method, kwargs in methods:
                    labels, seconds = _segment(trained, image, sparse, spacing, task.axis, preset, seed, kwargs)
                    row = score_row(task, method, k, seed, labels, reference, seconds, preset)
                    append_row(csv_path, row)
                    print(json.dumps(row), flush=True)
                    if seed == seeds[0]:
                        layers[method] = labels
            if baselines:
                for method in (GROW, FILL):
                    start = time.perf_counter()
                    try:
                        prediction = run_baseline(method, image, sparse, task.axis, spacing)
                    except (ImportError, RuntimeError) as error:
                        print(f"{method} skipped on {name}: {error}", file=sys.stderr)
                        continue
                    row = score_row(task, method, k, 0, prediction, reference, time.perf_counter() - start)
                    append_row(csv_path, row)
                    print(json.dumps(row), flush=True)
                    layers[method] = prediction
            if overlays and k == overlay_k:
                from ContrastiveSegLib.evaluation.pictures import montage_slices, overlay_montage

                overlay_montage(image, layers, task.axis, montage_slices(reference, task.axis, slices), out /
                                f"overlay-{name}-k{k}.png", spacing=spacing, direction=direction,
                                annotated=slices, label_names=task.structures, title=f"{task.description}, k={k}")
    if csv_name == "quality.csv":
        summarise(out)
    elif csv_name == "candidates.csv":
        summarise_variants(out)


CONDITIONS = "as run: one torch thread per process, two processes on the 2 CPU cores"


def summarise(out: Path, conditions: str = CONDITIONS, preamble: str = "") -> None:
    """quality.md (mean over seeds, per k, margin of ours over the best baseline) and dice_vs_k.png from the CSV;
    ``conditions`` says how the seconds were measured, ``preamble`` goes above the table."""
    from ContrastiveSegLib.evaluation.pictures import dice_vs_k_plot

    with open(out / "quality.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["k"], row["mean_dice"] = int(row["k"]), float(row["mean_dice"])
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    order = [name for name, _ in OUR_METHODS] + [GROW, FILL]
    methods = sorted(dict.fromkeys(r["method"] for r in rows),
                     key=lambda m: order.index(m) if m in order else len(order))
    ks = sorted({r["k"] for r in rows})
    baselines = [m for m in methods if m in (GROW, FILL)]
    ours = [m for m in methods if m not in baselines]

    def values(task, method, k):
        return [r["mean_dice"] for r in rows if r["task"] == task and r["method"] == method and r["k"] == k]

    def mean(task, method, k):
        found = values(task, method, k)
        return (float(np.mean(found)), len(found)) if found else (None, 0)

    def cell(task, method, k):
        """The mean over seeds, and the seed spread (max - min) in brackets where there are several seeds."""
        found = values(task, method, k)
        if not found:
            return ""
        spread = f" [{max(found) - min(found):.3f}]" if len(found) > 1 else ""
        return f"{np.mean(found):.3f}{spread}"

    lines = ["| task | method | " + " | ".join(f"k={k}" for k in ks) + " | seeds |",
             "|---|---|" + "---|" * len(ks) + "---|"]
    for task in tasks:
        for method in methods:
            cells, n = [], 0
            for k in ks:
                n = max(n, mean(task, method, k)[1])
                cells.append(cell(task, method, k))
            if any(cells):
                lines.append(f"| {task} | {method} | " + " | ".join(cells) + f" | {n} |")
        for method in ours:
            margins = []
            for k in ks:
                value, _ = mean(task, method, k)
                best = [mean(task, b, k)[0] for b in baselines if mean(task, b, k)[0] is not None]
                margins.append("" if value is None or not best else f"{value - max(best):+.3f}")
            if any(margins):
                lines.append(f"| {task} | {method} - best baseline | " + " | ".join(margins) + " | |")
    seconds = {m: np.mean([float(r["seconds"]) for r in rows if r["method"] == m]) for m in methods}
    text = ("# Quality: mean Dice over structures (mean over seeds [max - min over seeds])\n\n" + preamble +
            "\n".join(lines) + "\n\nGrow from seeds and Fill between slices are deterministic: one run per (task, k). "
            f"Mean seconds per run ({conditions}): " +
            ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items()) + "\n")
    (out / "quality.md").write_text(text)
    dice_vs_k_plot(rows, out / "dice_vs_k.png", title="Dice vs annotated slices")
    print(text)


def summarise_variants(out: Path, csv_name: str = "candidates.csv", md_name: str = "candidates.md") -> str:
    """A table with one column per variant (mean over seeds [max - min]) per task and k, the mean over tasks and
    the mean seconds per run, from ``csv_name`` into ``md_name``."""
    with open(out / csv_name) as handle:
        rows = list(csv.DictReader(handle))
    variants = list(dict.fromkeys(r["method"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    ks = sorted({int(r["k"]) for r in rows})

    def found(task, variant, k):
        return [float(r["mean_dice"]) for r in rows
                if r["task"] == task and r["method"] == variant and int(r["k"]) == k]

    lines = ["| task | k | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for task in tasks:
        for k in ks:
            cells = []
            for variant in variants:
                values = found(task, variant, k)
                cells.append("" if not values else f"{np.mean(values):.3f} [{max(values) - min(values):.3f}]"
                             if len(values) > 1 else f"{values[0]:.3f}")
            if any(cells):
                lines.append(f"| {task} | {k} | " + " | ".join(cells) + " |")
    for k in ks:
        cells = []
        for variant in variants:
            means = [np.mean(found(t, variant, k)) for t in tasks if found(t, variant, k)]
            complete = len(means) == sum(1 for t in tasks if any(found(t, v, k) for v in variants))
            cells.append(f"{np.mean(means):.3f}" if means and complete else "")
        lines.append(f"| **mean over tasks** | {k} | " + " | ".join(cells) + " |")
    seconds = [f"{np.mean([float(r['seconds']) for r in rows if r['method'] == v]):.0f}" for v in variants]
    lines.append("| seconds per run | | " + " | ".join(seconds) + " |")
    seeds = sorted({int(r["seed"]) for r in rows})
    text = (f"# {md_name[:-3].capitalize()}: mean Dice over structures (mean over seeds {seeds} [max - min])\n\n"
            + "\n".join(lines) + "\n")
    (out / md_name).write_text(text)
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--k", nargs="+", type=int, default=[1, 2, 3, 5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--no-overlays", action="store_true")
    parser.add_argument("--overlay-k", type=int, default=3, help="the k whose seed-0 run is drawn (default 3)")
    parser.add_argument("--summarise-only", action="store_true", help="rebuild the tables from quality.csv")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 lets two runs share 2 cores)")
    parser.add_argument("--ablation", action="store_true", help="run the pretraining ablation variants into "
                        "ablation.csv instead of quality.csv (summarise with benchmarks/ablation.py)")
    parser.add_argument("--candidates", action="store_true", help="run the shape candidates (tasks.CANDIDATES) "
                        "into candidates.csv (summarise with benchmarks/ablation.py --candidates)")
    parser.add_argument("--variants", nargs="+", help="only these variants (names in tasks.py)")
    args = parser.parse_args()
    if args.threads:
        from ContrastiveSegLib.threads import apply_threads

        apply_threads(args.threads)  # the API's entry points keep this choice (threads.use_threads)
    if args.summarise_only:
        if args.candidates:
            summarise_variants(args.out)
        else:
            summarise(args.out)
        return
    methods = ABLATION if args.ablation else CANDIDATES if args.candidates else OUR_METHODS
    if args.variants:
        methods = [(name, kwargs) for name, kwargs in methods if name in args.variants]
        if not methods:
            parser.error(f"no variant named {args.variants}")
    csv_name = "ablation.csv" if args.ablation else "candidates.csv" if args.candidates else "quality.csv"
    run(args.tasks, args.k, args.seeds, args.out, args.preset, not args.no_baselines,
        not args.no_overlays and csv_name == "quality.csv", methods, csv_name, args.overlay_k)


if __name__ == "__main__":
    main()
