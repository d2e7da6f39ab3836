"""What the coordinate channels do at few painted slices: the default against no coordinate channels and against
coordinate dropout during fine-tuning, on the benchmark's tasks, slices and seeds.

Why: at k = 2 the benchmark paints the slices at 10 % and 90 % of a structure's extent, small cross-sections near
its ends. There the default's seed spread on ``ct-lookalike-axial`` is 0.26 Dice (benchmarks/results/quality.md);
the question is whether the network learns "the structure is only where it was painted" from the coordinate
channels. The variants are made here, in the benchmark, by patching the library for this process only; the
library itself has no such option:

- ``default``: ``api.segment`` as shipped;
- ``no coordinates``: new models get no coordinate channels (``data.case.DEFAULT_SPEC.coordinates = False``);
- ``coordinate dropout P``: during fine-tuning, a crop's coordinate channels are set to 0 with probability P
  (one random stream for the whole process, drawn in run order), so the network must also segment without them;
  prediction sees them;
- ``coordinate jitter``: during fine-tuning, each crop's coordinate channels are scaled by 0.75-1.25 and shifted by
  up to 0.15 per axis (the same stream), so position stays a cue but only an approximate one.

Writes ``results/coordinates.csv`` (one row per run, the columns of quality.csv with the variant as ``method``) and
``results/coordinates.md`` (mean over seeds with the spread).

    python benchmarks/coordinates.py --tasks ct-lookalike-axial --k 2 3 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ContrastiveSegLib import api  # noqa: E402
from ContrastiveSegLib.data import augment, case  # noqa: E402
from run_benchmark import append_row, score_row  # noqa: E402
from tasks import TASKS, sparse_cases  # noqa: E402

DROPOUT_STREAM_SEED = 123
JITTER_SCALE = (0.75, 1.25)  # per crop and axis, the coordinate channels are scaled by this much ...
JITTER_SHIFT = 0.15  # ... and shifted by up to this much: "where" stays a cue, but an approximate one


def _patched(variant: str, dropout: float):
    """Set the library up for ``variant``; returns the function that undoes it."""
    spec, call = case.DEFAULT_SPEC, augment.BatchAugmenter.__call__
    if variant == "no coordinates":
        case.DEFAULT_SPEC = dataclasses.replace(spec, coordinates=False)
    elif variant.startswith("coordinate dropout"):
        def dropped(self, inputs, targets):
            out, warped = call(self, inputs, targets)
            k = self.image_channels
            if out.shape[1] > k:
                drop = torch.from_numpy(_STREAM.random(out.shape[0]) < dropout).to(out.device)
                out = out.clone()
                out[drop, k:] = 0.0
            return out, warped
        augment.BatchAugmenter.__call__ = dropped
    elif variant == "coordinate jitter":
        def jittered(self, inputs, targets):
            out, warped = call(self, inputs, targets)
            k = self.image_channels
            if out.shape[1] > k:
                n = out.shape[0]
                scale = torch.from_numpy(_STREAM.uniform(*JITTER_SCALE, (n, 2, 1, 1))).to(out)
                shift = torch.from_numpy(_STREAM.uniform(-JITTER_SHIFT, JITTER_SHIFT, (n, 2, 1, 1))).to(out)
                out = out.clone()
                out[:, k:] = out[:, k:] * scale + shift
            return out, warped
        augment.BatchAugmenter.__call__ = jittered

    def undo() -> None:
        case.DEFAULT_SPEC, augment.BatchAugmenter.__call__ = spec, call
    return undo


_STREAM = np.random.default_rng(DROPOUT_STREAM_SEED)


def summarise(rows: list[dict]) -> str:
    """The markdown table: mean Dice over seeds [max - min] per task, k and variant."""
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        cells.setdefault((r["task"], int(r["k"]), r["method"]), []).append(float(r["mean_dice"]))
    variants = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["# Coordinate channels at few painted slices: mean Dice over seeds [max - min]", "",
             "| task | k | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for task, k in dict.fromkeys((t, k) for t, k, _ in cells):
        values = [cells.get((task, k, v)) for v in variants]
        lines.append(f"| {task} | {k} | " + " | ".join(
            "" if v is None else f"{np.mean(v):.3f} [{max(v) - min(v):.3f}] (n={len(v)})" for v in values) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["ct-lookalike-axial"])
    parser.add_argument("--k", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["default", "no coordinates", "coordinate dropout"])
    parser.add_argument("--dropout", type=float, default=0.5, help="probability of dropping a crop's coordinates")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    from ContrastiveSegLib.threads import apply_threads

    apply_threads(1)  # the API's entry points keep this choice (threads.use_threads)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "coordinates.csv"
    for task, image, reference, spacing, k, sparse in sparse_cases(args.tasks, args.k):
        for seed in args.seeds:
            for variant in args.variants:
                label = f"coordinate dropout {args.dropout}" if variant == "coordinate dropout" else variant
                undo = _patched(variant, args.dropout)
                try:
                    start = time.perf_counter()
                    labels = api.segment(image, sparse, spacing, axis=task.axis, seed=seed).labels
                    seconds = time.perf_counter() - start
                finally:
                    undo()
                row = score_row(task, label, k, seed, labels, reference, seconds, "default")
                append_row(csv_path, row)
                print(json.dumps(row), flush=True)
    rows = list(csv.DictReader(open(csv_path)))
    (args.out / "coordinates.md").write_text(summarise(rows))


if __name__ == "__main__":
    main()
