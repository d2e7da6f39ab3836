"""One answer per press (issue 14, direction 3): what averaging several short trainings buys, and what it costs.

    python benchmarks/expert_weights.py networks --workers 2                                  # 300 steps, seeds 0-2
    python benchmarks/expert_weights.py networks --workers 2 --steps 150 --seeds 0 1 2 3 4 5  # 150 steps, seeds 0-5
    python benchmarks/expert_weights.py growcut
    python benchmarks/seed_ensembles.py                   # -> results/seed_ensembles.csv and .md

A "press" is what one user run would produce: ``members`` networks fine-tuned from different seeds, their
probabilities averaged, then fused with the experts (the default per-scan rule) and post-processed exactly as the
library does (``expert_rules.CellEvidence``). The spread of a configuration is max - min of its presses' Dice.
Presses are disjoint groups of seeds where the cache has enough of them (150 steps: seeds 0-5, three presses of
two); the 300-step pairs share members (seeds 0-2 give the pairs 01, 02, 12), which understates their spread.
Cost: fine-tuning steps relative to the default's single 300-step network, and the number of network
predictions.
"""
from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from expert_rules import (SUMMARY_HEADER, _best_tools, default_fusion, load_network,  # noqa: E402
                          per_cell_lines, read_cells, replay_cells, replay_parser, summary_lines)
from expert_weights import network_folder  # noqa: E402

DEFAULT_STEPS = 300
# name: (fine-tuning steps of each member, members per press)
CONFIGS = {
    "1 network x 300 steps (default)": (300, 1),
    "2 networks x 300 steps": (300, 2),
    "1 network x 150 steps": (150, 1),
    "2 networks x 150 steps": (150, 2),
    "3 networks x 150 steps": (150, 3),
}
PRESSES = 3


def presses(seeds: list[int], members: int) -> list[tuple[int, ...]]:
    """Up to :data:`PRESSES` groups of ``members`` seeds: disjoint when there are enough seeds, else every
    combination (they then share members)."""
    if len(seeds) >= members * PRESSES or members == 1:
        return [tuple(seeds[i * members:(i + 1) * members]) for i in range(min(PRESSES, len(seeds) // members))]
    return list(itertools.combinations(seeds, members))[:PRESSES]


def averaged(log_probs: list[torch.Tensor]) -> torch.Tensor:
    """(C, S, H, W) log of the members' mean probability."""
    return torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(log_probs))


def cached_seeds(cache: Path, steps: int, name: str, k: int) -> list[int]:
    folder = network_folder(cache, None if steps == DEFAULT_STEPS else steps)
    return sorted(int(p.stem.rsplit("-s", 1)[1]) for p in folder.glob(f"{name}-k{k}-s*.npz")
                  if not p.name.endswith(".part.npz"))


def evaluate_cell(cache: str, name: str, k: int) -> list[dict]:
    """Every configuration's presses on one (task, k), fused with the default per-scan rule: run_benchmark's rows
    (``seed`` = the press) plus the seeds averaged (``members``)."""
    from run_benchmark import score_row

    cache_path = Path(cache)
    found = default_fusion(cache_path, name, k)
    if found is None:
        return []
    cell, fuse = found
    rows = []
    for config, (steps, members) in CONFIGS.items():
        folder = network_folder(cache_path, None if steps == DEFAULT_STEPS else steps)
        for press, group in enumerate(presses(cached_seeds(cache_path, steps, name, k), members)):
            net = averaged([load_network(folder / f"{name}-k{k}-s{s}.npz") for s in group])
            labels = fuse(net)
            row = score_row(cell.task, config, k, press, labels, cell.reference, 0.0, "default/cpu")
            rows.append(row | {"members": "+".join(map(str, group))})
    return rows


def evaluate(cache: Path, tasks: list[str], ks: list[int], out: Path, workers: int) -> None:
    """:func:`evaluate_cell` on every (task, k), ``workers`` cells at a time; rows to ``out/seed_ensembles.csv``."""
    replay_cells(evaluate_cell, cache, tasks, ks, out / "seed_ensembles.csv", ["members"], workers)


def summarise(table: Path, markdown: Path) -> None:
    """Per configuration: cost, mean margin over the best Slicer tool, the worst cell, cells below it, cells with
    a spread above 0.02, mean and largest spread; then per cell."""
    cells, tools = read_cells(table), _best_tools()
    lines = ["# Averaging short trainings (issue 14, direction 3): spread bought against time", "",
             __doc__.split("\n\n", 2)[2].strip().replace("\n", " "), "",
             "Command: see the top of `benchmarks/seed_ensembles.py` (the networks of `expert_weights.py`, CPU, one "
             "torch thread, two processes on the 2-core machine; the 150-step networks in `net-150steps/`).", "",
             f"| configuration | fine-tuning (x default) | predictions | set | {SUMMARY_HEADER} |",
             "|---|---|---|---" + "|---" * (SUMMARY_HEADER.count("|") + 1) + "|"]
    cost = {config: f"{config} | {members * steps / DEFAULT_STEPS:g} | {members}"
            for config, (steps, members) in CONFIGS.items()}
    lines += summary_lines(cells, tools, CONFIGS, label=cost.get)
    lines += ["", "Reading (2026-12-05): 150 steps cost 0.030 of margin; at the default's time, averaging short members "
              "narrows the spread but loses more Dice than it wins back; two full networks gain on both counts at twice "
              "the training. The default stays one 300-step network (docs/finetuning.md)."]
    lines += ["", "Per cell: mean Dice over presses [max - min] (margin over the best Slicer tool).", ""]
    lines += per_cell_lines(cells, tools, list(CONFIGS))
    markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    args = replay_parser(__doc__.splitlines()[0], seeds=False).parse_args()
    if not args.summary_only:
        evaluate(args.cache, args.tasks, args.k, args.out, args.workers)
    summarise(args.out / "seed_ensembles.csv", args.out / "seed_ensembles.md")


if __name__ == "__main__":
    main()
