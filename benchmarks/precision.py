"""bf16 on the CPU (issue 14, direction 5): what the arithmetic costs in Dice, and what it saves in time.

    python benchmarks/expert_weights.py networks --workers 2 --precision float32   # -> net-float32/
    python benchmarks/expert_weights.py networks --workers 2 --precision bf16      # -> net-bf16/
    python benchmarks/expert_weights.py growcut
    python benchmarks/precision.py                        # -> results/precision.csv and .md

The same (task, k, seed) fine-tuned and predicted twice, in float32 and under bf16 autocast (the library's switch,
``device.CPU_BF16_VARIABLE``), each network then fused with the experts and post-processed exactly as the library
does (``expert_rules.CellEvidence``, the default per-scan rule). Seconds: each network's fine-tuning plus its
prediction over the whole stack, as saved by ``expert_weights.py networks`` (two processes on the 2-core machine,
so both precisions met the same kind of load; end-to-end times are ``speed.py``'s).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from expert_rules import (SUMMARY_HEADER, _best_tools, default_fusion, load_network,  # noqa: E402
                          per_cell_lines, read_cells, replay_cells, replay_parser, summary_lines)
from expert_weights import network_folder  # noqa: E402

PRECISIONS = ("float32", "bf16")


def evaluate_cell(cache: str, name: str, k: int, seeds: list[int]) -> list[dict]:
    """Both precisions' networks on one (task, k), fused with the default per-scan rule: run_benchmark's rows,
    ``seconds`` = the network's fine-tuning and prediction."""
    from run_benchmark import score_row

    cache_path = Path(cache)
    found = default_fusion(cache_path, name, k)
    if found is None:
        return []
    cell, fuse = found
    rows = []
    for precision in PRECISIONS:
        for seed in seeds:
            path = network_folder(cache_path, None, precision) / f"{name}-k{k}-s{seed}.npz"
            if not path.is_file():
                continue
            with np.load(path) as data:
                seconds = float(data["seconds"])
            labels = fuse(load_network(path))
            rows.append(score_row(cell.task, precision, k, seed, labels, cell.reference, seconds, "default/cpu"))
    return rows


def paired_lines(table: Path) -> list[str]:
    """bf16 against float32 on the same (task, k, seed): how many rose, fell, stayed within 0.005; the mean and
    the largest fall; the mean seconds of each and their ratio."""
    import csv

    rows = list(csv.DictReader(table.open()))
    dice = {(r["method"], r["task"], r["k"], r["seed"]): float(r["mean_dice"]) for r in rows}
    seconds = {(r["method"], r["task"], r["k"], r["seed"]): float(r["seconds"]) for r in rows}
    pairs = [key[1:] for key in dice if key[0] == "bf16" and ("float32", *key[1:]) in dice]
    if not pairs:
        return []
    diff = np.array([dice[("bf16", *p)] - dice[("float32", *p)] for p in pairs])
    worst = pairs[int(np.argmin(diff))]
    time32 = np.array([seconds[("float32", *p)] for p in pairs])
    time16 = np.array([seconds[("bf16", *p)] for p in pairs])
    return ["| networks paired | bf16 higher by > 0.005 | lower by > 0.005 | within 0.005 | mean change | largest fall "
            "| float32 s (mean) | bf16 s (mean) | time ratio |", "|---|---|---|---|---|---|---|---|---|",
            f"| {len(pairs)} | {int((diff > 0.005).sum())} | {int((diff < -0.005).sum())} | "
            f"{int((abs(diff) <= 0.005).sum())} | {diff.mean():+.4f} | {diff.min():+.3f} ({worst[0]} k = {worst[1]}, "
            f"seed {worst[2]}) | {time32.mean():.1f} | {time16.mean():.1f} | {time16.sum() / time32.sum():.2f} |"]


def summarise(table: Path, markdown: Path, reading: str) -> None:
    """Per precision: the summary of :func:`expert_rules.set_summary` on the choosing, confirming and all tasks;
    the paired comparison; then per cell."""
    cells, tools = read_cells(table), _best_tools()
    lines = ["# bf16 on the CPU: Dice and time", "", __doc__.split("\n\n", 2)[2].strip().replace("\n", " "), "",
             "Command: see the top of `benchmarks/precision.py` (default preset, CPU, one torch thread per network, "
             "two processes on the 2-core machine).", "",
             f"| precision | set | {SUMMARY_HEADER} |", "|---|---" + "|---" * (SUMMARY_HEADER.count("|") + 1) + "|"]
    lines += summary_lines(cells, tools, PRECISIONS)
    lines += [""] + paired_lines(table)
    if reading:
        lines += ["", f"Reading: {reading}"]
    lines += ["", "Per cell: mean Dice over seeds [max - min] (margin over the best Slicer tool).", ""]
    lines += per_cell_lines(cells, tools, list(PRECISIONS))
    markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = replay_parser(__doc__.splitlines()[0])
    parser.add_argument("--reading", default="", help="a line of interpretation, written under the tables")
    args = parser.parse_args()
    if not args.summary_only:
        replay_cells(evaluate_cell, args.cache, args.tasks, args.k, args.out / "precision.csv", [], args.workers,
                     args.seeds)
    summarise(args.out / "precision.csv", args.out / "precision.md", args.reading)


if __name__ == "__main__":
    main()
