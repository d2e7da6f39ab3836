"""The weighting rules that benchmarks/expert_weights.py replays on its cached networks and grow-cuts.

Each rule turns one scan's evidence into the fused log probabilities ``log p_net + w_contour * log p_contour +
log p_growcut(w)``; grow-cut's weight is per structure, from its leave-one-out Dice D on the painted slices.
The rules differ only in that weight:

- ``default (contour x1 + growcut x2)``: the default before the per-scan rule, the same weight for every scan;
- ``loo logit a, floor f, least m``: ``max(m, a * (logit(D) - logit(f)))``: the log-odds that grow-cut is right on
  a slice it was not given, counted from a floor (the weight of a voter right with probability D, as in boosting);
- ``per-scan grow-cut weights (new default)``: the library's :func:`~ContrastiveSegLib.inference.fusion.growcut_weights`
  (a = 2, f = 0.05, m = 0 since 2026-12-06, benchmarks/network_trust.py; before, a = 1: ``loo logit 1, floor 0.05,
  least 0``, the previous default);
- ``no prior``: the network alone, for reference.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

D_RANGE = (0.01, 0.995)  # leave-one-out Dice clipped here before the logit (finite weights)


def _cached_evidence(classes: np.ndarray, num_classes: int, inplane):
    """The library's :class:`~ContrastiveSegLib.inference.fusion.GrowCutEvidence` with its distance maps kept: the
    rules differ only in the weights, so each slice's distances are computed once."""
    from ContrastiveSegLib.inference.fusion import GROWCUT_TAU, GrowCutEvidence

    class Cached(GrowCutEvidence):
        def distances(self, s):
            if s not in cache:
                cache[s] = super().distances(s)
            return cache[s]

    cache: dict = {}
    return Cached(classes, num_classes, tuple(inplane), GROWCUT_TAU * min(inplane))


def growcut_log_probs(evidence, weights) -> torch.Tensor:
    """(C, S, H, W) log probabilities of ``evidence`` with per-structure ``weights`` (None: the library's default,
    one weight for all): each structure's outline as ``sigmoid(-d * w_c / tau)``."""
    evidence.weights = None if weights is None else np.asarray(weights, float)
    return evidence.log_probs(np.arange(len(evidence.classes))).permute(1, 0, 2, 3)


def logit_weights(dice: np.ndarray, scale: float, floor: float = 0.5, least: float = 0.0) -> np.ndarray:
    """``max(least, scale * (logit(dice) - logit(floor)))`` per class (Dice clipped to :data:`D_RANGE`); NaN
    (nothing to tell it by) -> the fixed default weight."""
    from ContrastiveSegLib.inference.fusion import GROWCUT_WEIGHT

    d = np.clip(np.nan_to_num(dice, nan=0.5), *D_RANGE)
    weights = np.maximum(scale * (np.log(d / (1 - d)) - np.log(floor / (1 - floor))), least)
    return np.where(np.isnan(dice), GROWCUT_WEIGHT, weights)


RULES = {  # name: (contour weight, grow-cut weights from the leave-one-out Dice, or None for the old default)
    "no prior": (0.0, lambda dice: np.zeros_like(dice)),
    "default (contour x1 + growcut x2)": (1.0, None),
    "fixed x2 per structure": (1.0, lambda dice: np.full_like(dice, 2.0)),
    "per-scan grow-cut weights (new default)": (1.0, lambda dice: _library_weights(dice)),
}


PREVIOUS, NEW = "loo logit 1, floor 0.05, least 0", "per-scan grow-cut weights (new default)"


def _library_weights(dice: np.ndarray) -> np.ndarray:
    from ContrastiveSegLib.inference.fusion import growcut_weights

    return growcut_weights(dice)
for _scale, _floor, _least in ((0.5, 0.05, 0), (1, 0.05, 0), (1, 0.2, 0), (1, 0.05, 0.5), (1, 0.05, 1),
                               (1, 0.02, 0.5), (1.5, 0.05, 0.5)):
    RULES[f"loo logit {_scale:g}, floor {_floor:g}, least {_least:g}"] = (
        1.0, lambda dice, a=_scale, f=_floor, m=_least: logit_weights(dice, a, f, m))


def _contour_log_probs(cache: Path, name: str, k: int, targets, num_classes, axis, spacing) -> torch.Tensor | None:
    """(C, S, H, W) unweighted contour-prior log probabilities, cached per (task, k) (ITK's interpolation runs in
    child processes: seconds per call)."""
    from ContrastiveSegLib.inference.contour_prior import contour_prior_of

    path = cache / "contour" / f"{name}-k{k}.npz"
    if path.is_file():
        with np.load(path) as data:
            return None if data["log"].size == 0 else torch.from_numpy(data["log"].astype(np.float32))
    prior = contour_prior_of(targets, num_classes, axis, spacing, weight=1.0)
    log = np.zeros(0, np.float16) if prior is None else (
        prior.log_probs(np.arange(len(targets))).permute(1, 0, 2, 3).numpy().astype(np.float16))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, log=log)
    return None if log.size == 0 else torch.from_numpy(log.astype(np.float32))


@dataclass
class CellEvidence:
    """What every rule of one (task, k) shares: the task, its reference, the painting's targets, grow-cut's
    leave-one-out Dice, the contour prior's and grow-cut's evidence."""
    task: object
    reference: np.ndarray
    targets: np.ndarray
    num_classes: int
    dice: np.ndarray
    contour: torch.Tensor | None
    evidence: object
    default_growcut: torch.Tensor
    lookup: np.ndarray

    def labels(self, net: torch.Tensor, contour_weight: float, weights: np.ndarray | None,
               components: bool = True, fill: bool = True) -> np.ndarray:
        """The label map of ``net`` ((C, S, H, W) log probabilities) fused as a rule says (``weights`` None: the
        library's old fixed default) and post-processed as the library does (``components`` False: without its
        keep-the-painted-components step; ``fill`` False: without grow-cut filling the slices where a painted
        structure vanished)."""
        from ContrastiveSegLib.inference.postprocess import (fill_vanished_slices, keep_annotated_components,
                                                            paste_annotations)

        fused = net.clone()
        if self.contour is not None and contour_weight:
            fused += contour_weight * self.contour
        fused += self.default_growcut if weights is None else growcut_log_probs(self.evidence, weights)
        classes = fused.argmax(0).numpy().astype(np.uint8)
        if components:
            classes = keep_annotated_components(classes, self.targets, self.num_classes)
        if fill:
            fill_vanished_slices(classes, self.evidence.classes, self.targets, self.num_classes)
        paste_annotations(classes, self.targets)
        return self.lookup[np.moveaxis(classes, 0, self.task.axis)]


def cell_evidence(cache: Path, name: str, k: int) -> CellEvidence | None:
    """The shared evidence of (task ``name``, ``k``) from the cache; None when its grow-cut is not cached."""
    from expert_weights import _cell

    from ContrastiveSegLib import api
    from ContrastiveSegLib.data.case import PreparedCase, spec_for
    from ContrastiveSegLib.inference.fusion import leave_one_out_dice
    from ContrastiveSegLib.inference.shape_prior import stack_spacing

    grown_path = cache / "growcut" / f"{name}-k{k}.npz"
    if not grown_path.is_file():
        return None
    task, image, reference, spacing, sparse, _ = _cell(name, k)
    annotation = api.read_annotation(image, sparse, task.axis)
    case = PreparedCase.build(image, annotation, spacing, spec_for(image, annotation))
    targets, num_classes = case.targets, annotation.num_classes
    with np.load(grown_path) as data:
        grown = data["all"]
        held = {int(key.split("_")[1]): data[key] for key in data.files if key.startswith("held_")}
    evidence = _cached_evidence(grown, num_classes, stack_spacing(spacing, task.axis)[0])
    return CellEvidence(task, reference, targets, num_classes, leave_one_out_dice(targets, held, num_classes),
                        _contour_log_probs(cache, name, k, targets, num_classes, task.axis, spacing), evidence,
                        growcut_log_probs(evidence, None), api.label_lookup(annotation.label_values))


def default_fusion(cache: Path, name: str, k: int):
    """(the cell's :class:`CellEvidence`, ``fuse``) where ``fuse(log_probs)`` gives the labels of a (C, S, H, W)
    network output fused and post-processed by the default rule (:data:`NEW`), in one torch thread; None when the
    cell is not cached."""
    torch.set_num_threads(1)
    cell = cell_evidence(cache, name, k)
    if cell is None:
        return None
    contour_weight, weigh = RULES[NEW]
    weights = weigh(cell.dice)
    return cell, lambda log_probs: cell.labels(log_probs, contour_weight, weights)


def load_network(path: Path) -> torch.Tensor:
    """(C, S, H, W) float32 log probabilities of one cached network."""
    with np.load(path) as data:
        return torch.from_numpy(data["log_probs"].astype(np.float32))


def evaluate(cache: Path, tasks: list[str], ks: list[int], seeds: list[int], out: Path) -> None:
    """Score every rule on every cached (task, k, seed); rows to ``out/expert_weights.csv``."""
    from run_benchmark import FIELDS, score_row

    from ContrastiveSegLib.inference.fusion import GROWCUT_WEIGHT

    out.mkdir(parents=True, exist_ok=True)
    table = out / "expert_weights.csv"
    for name in tasks:
        for k in ks:
            nets = [cache / "net" / f"{name}-k{k}-s{seed}.npz" for seed in seeds]
            start = time.perf_counter()
            cell = cell_evidence(cache, name, k) if any(p.is_file() for p in nets) else None
            if cell is None:
                print(f"skip {name} k={k}: not cached", flush=True)
                continue
            for seed, path in zip(seeds, nets):
                if not path.is_file():
                    continue
                net = load_network(path)
                for rule, (contour_weight, weigh) in RULES.items():
                    weights = None if weigh is None else weigh(cell.dice)
                    # the network alone has no grow-cut to fill from (the library: no prior, no filling)
                    labels = cell.labels(net, contour_weight, weights, fill=rule != "no prior")
                    row = score_row(cell.task, rule, k, seed, labels, cell.reference, 0.0, "default/cpu")
                    shown = np.full(cell.num_classes - 1, GROWCUT_WEIGHT) if weights is None else weights
                    row["loo_dice"] = json.dumps([round(float(d), 3) for d in cell.dice])
                    row["growcut_weights"] = json.dumps([round(float(w), 2) for w in shown])
                    _append(table, row, FIELDS + ["loo_dice", "growcut_weights"])
            print(f"{time.strftime('%H:%M:%S')} {name} k={k}: loo dice {np.round(cell.dice, 3).tolist()} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    summarise(table, out / "expert_weights.md")


def _append(path: Path, row: dict, fields: list[str]) -> None:
    """run_benchmark's columns plus the rule's evidence (leave-one-out Dice, the weights it gave)."""
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def summarise(table: Path, markdown: Path) -> None:
    """Mean over seeds per cell, margin over the best Slicer tool, per rule on the choosing and confirming tasks."""
    from fusion_matrix import CHOOSE, CONFIRM

    rows = list(csv.DictReader(table.open()))
    cells, tools = read_cells(table), _best_tools()
    rules = list(dict.fromkeys(row["method"] for row in rows))
    seeds = sorted({int(row["seed"]) for row in rows})
    lines = ["# Grow-cut's weight per scan (issue 14, direction 2): rules replayed on cached networks", "",
             f"Chosen on: {', '.join(CHOOSE)}. Confirmed on: {', '.join(CONFIRM)}. k = 2, 3, 5; seeds "
             f"{', '.join(map(str, seeds))}: one network per (task, k, seed), fine-tuned with the default preset on "
             "the CPU (one torch thread, two processes on the 2-core machine), its log probabilities kept and fused "
             "by each rule through the library's post-processing. Margin: mean Dice over seeds minus the best "
             "Slicer tool of the cell (benchmarks/results/quality.csv); worst: the lowest cell margin.", "",
             "Commands: `python benchmarks/expert_weights.py networks --workers 2`, `... growcut`, `... evaluate`, "
             "`... report`.", "",
             "The logit variants tie on the choosing tasks (within 0.002 of the mean margin, noise at three seeds); "
             "the one-parameter form (floor 0.05, no minimum weight) became the default "
             "(`inference/fusion.py: growcut_weights`), at scale 1 (`loo logit 1, floor 0.05, least 0`, the "
             "previous default) and since 2026-12-06 at scale 2 (chosen among 1 to 4 with the other trust "
             "variants, benchmarks/results/network_trust.md). The networks were fine-tuned again on 2026-12-06 on a "
             "fresh machine; they differ from the earlier CPU networks by up to a few hundredths of Dice per cell "
             "(the deep grey nuclei at k = 3, seed 0, network alone: 0.825 against 0.832), so these rows replace the "
             "earlier ones rather than extend them. Since 2026-12-06 (later the same day) the networks are the bf16 ones "
             "the library now trains on such a CPU (benchmarks/results/precision.md: the same Dice as float32 within "
             "the seed noise); the rules' rows above were chosen on the float32 networks.", "",
             f"| rule | set | {SUMMARY_HEADER} |", "|---|---" + "|---" * (SUMMARY_HEADER.count("|") + 1) + "|"]
    lines += summary_lines(cells, tools, rules, (("choose", CHOOSE), ("confirm", CONFIRM)))
    lines += ["", "Per cell: mean Dice over seeds [max - min] (margin over the best Slicer tool).", ""]
    lines += per_cell_lines(cells, tools, [PREVIOUS, NEW, "no prior"])
    markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def read_cells(table: Path) -> dict[tuple, list[float]]:
    """{(method, task, k): mean Dice per seed or press} from a table in run_benchmark's columns."""
    cells: dict[tuple, list[float]] = {}
    for row in csv.DictReader(table.open()):
        cells.setdefault((row["method"], row["task"], int(row["k"])), []).append(float(row["mean_dice"]))
    return cells


SUMMARY_HEADER = "cells | mean | margin | worst | below | spread > 0.02 | mean spread | largest spread"


def set_summary(cells: dict[tuple, list[float]], tools: dict[tuple, float], method: str, names) -> str | None:
    """One method on the tasks ``names``, as the columns of :data:`SUMMARY_HEADER` ("a | b | ..."): how many cells,
    mean Dice, mean margin over the best Slicer tool, the worst cell's margin, cells below it, cells whose seeds
    differ by more than 0.02, mean and largest spread; None when no cell has both."""
    keys = [key for key in cells if key[0] == method and key[1] in names and (key[1], key[2]) in tools]
    if not keys:
        return None
    means = [np.mean(cells[key]) for key in keys]
    margins = [m - tools[(key[1], key[2])] for m, key in zip(means, keys)]
    spreads = [max(cells[key]) - min(cells[key]) for key in keys]
    return (f"{len(keys)} | {np.mean(means):.3f} | {np.mean(margins):+.3f} | {min(margins):+.3f} | "
            f"{sum(m < 0 for m in margins)} | {sum(s > 0.02 for s in spreads)} | {np.mean(spreads):.3f} | "
            f"{max(spreads):.3f}")


def summary_lines(cells: dict[tuple, list[float]], tools: dict[tuple, float], methods, sets=None,
                  label=lambda method: method) -> list[str]:
    """Markdown rows "| label(method) | set | :func:`set_summary` |", per method and per (set name, task names) of
    ``sets`` (default: the choosing tasks, the confirming ones, all), skipping a set with no cell."""
    from fusion_matrix import CHOOSE, CONFIRM

    sets = sets or (("choose", CHOOSE), ("confirm", CONFIRM), ("all", CHOOSE + CONFIRM))
    lines = []
    for method in methods:
        for name, tasks in sets:
            summary = set_summary(cells, tools, method, tasks)
            if summary is not None:
                lines.append(f"| {label(method)} | {name} | {summary} |")
    return lines


def replay_cells(job, cache: Path, tasks: list[str], ks: list[int], table: Path, extra_fields: list[str],
                 workers: int, *job_args) -> None:
    """``job(str(cache), name, k, *job_args)`` -> rows, on every (task, k), ``workers`` cells at a time in spawned
    processes; ``table`` rewritten with run_benchmark's columns plus ``extra_fields``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from run_benchmark import FIELDS

    table.parent.mkdir(parents=True, exist_ok=True)
    table.unlink(missing_ok=True)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(job, str(cache), name, k, *job_args): (name, k) for name in tasks for k in ks}
        for future in as_completed(futures):
            for row in future.result():
                _append(table, row, FIELDS + extra_fields)
            print(f"{time.strftime('%H:%M:%S')} {futures[future]}", flush=True)


def replay_parser(description: str, seeds: bool = True):
    """The command line the replay scripts share: ``--cache --tasks --k [--seeds] --out --workers --summary-only``
    (every cached task and k, seeds 0-2, results/ beside this file, two processes)."""
    import argparse

    from expert_weights import DEFAULT_CACHE, KS
    from fusion_matrix import CHOOSE, CONFIRM

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--tasks", nargs="+", default=CHOOSE + CONFIRM)
    parser.add_argument("--k", nargs="+", type=int, default=KS)
    if seeds:
        parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--summary-only", action="store_true", help="rebuild the .md from the .csv")
    return parser


def per_cell_lines(cells: dict[tuple, list[float]], tools: dict[tuple, float], methods: list[str]) -> list[str]:
    """A markdown table: per (task, k), each method's mean Dice [max - min] (margin over the best Slicer tool)."""
    from fusion_matrix import CHOOSE, CONFIRM

    lines = ["| task | k | best tool | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for task, k in sorted({(key[1], key[2]) for key in cells}, key=lambda c: (c[0] not in CHOOSE, c[0], c[1])):
        best = tools.get((task, k))
        if best is None:
            continue
        row = [task + (" (confirms)" if task in CONFIRM else ""), str(k), f"{best:.3f}"]
        for method in methods:
            v = cells.get((method, task, k))
            row.append("" if not v else f"{np.mean(v):.3f} [{max(v) - min(v):.3f}] ({np.mean(v) - best:+.3f})")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _best_tools() -> dict[tuple, float]:
    """{(task, k): the best Slicer tool's mean Dice} from benchmarks/results/quality.csv."""
    best: dict[tuple, float] = {}
    quality = Path(__file__).resolve().parent / "results" / "quality.csv"
    for row in csv.DictReader(quality.open()):
        if row["method"] in ("Grow from seeds", "Fill between slices"):
            key = (row["task"], int(row["k"]))
            best[key] = max(best.get(key, 0.0), float(row["mean_dice"]))
    return best


QUALITY_NAMES = {NEW: "ContrastiveSeg", PREVIOUS: "grow-cut log-odds x1", "no prior": "no shape prior"}


def write_quality(table: Path, results: Path, conditions: str) -> str:
    """results/quality.csv and .md, dice_vs_k.png from the replayed rules (k = 2, 3, 5) and the committed k = 1 and
    Slicer-tool rows; returns the README's table (the default against the best Slicer tool per cell)."""
    from run_benchmark import FIELDS, summarise

    old = list(csv.DictReader((results / "quality.csv").open()))
    keep = [r for r in old if r["method"] in ("Grow from seeds", "Fill between slices")]
    k1 = [r for r in old if r["k"] == "1" and r["method"] == "no shape prior"]  # no expert applies at k = 1
    rows = list(keep)
    for name in QUALITY_NAMES.values():
        rows += [dict(r, method=name, seconds="0") for r in k1]  # seconds: not comparable, see CONDITIONS
    rows += [{field: r[field] for field in FIELDS} | {"method": QUALITY_NAMES[r["method"]]}
             for r in csv.DictReader(table.open()) if r["method"] in QUALITY_NAMES]
    with open(results / "quality.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    from fusion_matrix import CHOOSE, CONFIRM

    summarise(results, conditions=conditions, preamble=(
        "ContrastiveSeg = the default: the network fused with the contour prior and Slicer's grow-cut, grow-cut "
        "weighted per scan and structure by twice the log-odds of its leave-one-out Dice (benchmarks/results/"
        "expert_weights.md, network_trust.md), and grow-cut's answer taken on a slice between two painted slices of a "
        "structure where the prediction lost it; grow-cut log-odds x1 = the same with the log-odds once (the default "
        "until 2026-12-06, which had no filling either: benchmarks/results/network_trust.md has it as it was); no shape "
        "prior = the same networks alone. k = 2, "
        "3, 5: one network per (task, k, seed) trained on the CPU and replayed through each fusion "
        "(benchmarks/expert_weights.py); k = 1: the earlier GPU run's network alone (no expert applies with one "
        f"painted slice). Chosen on: {', '.join(CHOOSE)}; confirmed on: {', '.join(CONFIRM)}.\n\n"))
    found: dict[tuple, list[float]] = {}
    best: dict[tuple, tuple[float, str]] = {}
    for r in rows:
        key = (r["task"], int(r["k"]))
        if r["method"] == "ContrastiveSeg":
            found.setdefault(key, []).append(float(r["mean_dice"]))
        elif r["method"] in ("Grow from seeds", "Fill between slices"):
            short = "GfS" if r["method"] == "Grow from seeds" else "FbS"
            if float(r["mean_dice"]) > best.get(key, (-1.0, ""))[0]:
                best[key] = (float(r["mean_dice"]), short)
    lines = ["| task (role) | k=1 | k=2 | k=3 | k=5 |", "|---|---|---|---|---|"]
    for task in CHOOSE + CONFIRM:
        cells = []
        for k in (1, 2, 3, 5):
            v, (b, name) = found.get((task, k), []), best.get((task, k), (float("nan"), "?"))
            cells.append("" if not v else f"{np.mean(v):.3f} [{max(v) - min(v):.3f}] vs {b:.3f} {name} "
                                          f"({np.mean(v) - b:+.3f})")
        role = "chooses" if task in CHOOSE else "confirms"
        lines.append(f"| {task} ({role}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)
