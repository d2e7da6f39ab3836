"""fusion.md and quality.md from the fusion matrix (benchmarks/fusion_matrix.py) and the Slicer tools' rows.

    python benchmarks/fusion_report.py --merge K1.csv REST.csv    # once: results/fusion.csv from two device runs
    python benchmarks/fusion_report.py                            # fusion.md, quality.csv/.md, dice_vs_k.png

fusion.md: every candidate's mean Dice and margin over the best Slicer tool, on the tasks that chose and on the
tasks that only confirm (fusion_matrix.CHOOSE / CONFIRM), k = 2, 3, 5, with the worst cell and the largest seed
spread. quality.csv/.md: the default (the chosen candidate), the network alone and the previous default next to
Grow from seeds and Fill between slices, per task and k.
"""
from __future__ import annotations

import argparse
import collections
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fusion_matrix import CHOOSE, CONFIRM  # noqa: E402
from run_benchmark import FIELDS, summarise  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT = "contour x1 + growcut x2"  # the candidate the library runs (inference/fusion.py)
RENAMED = {DEFAULT: "ContrastiveSeg", "no prior": "no shape prior",
           "linear prior (previous default)": "previous default (linear prior)"}
NO_EXPERT_AT_K1 = ("contour", "2-seed")  # at k = 1 no prior applies: these equal the network alone (or its ensemble)
CONDITIONS = ("ours: NVIDIA H200, 16 processes side by side on 16 CPU cores, one torch thread each, cuda, 300 "
              "steps, seconds = fine-tuning + predicting every slice + the priors from the exported interpolations and "
              "grow-cut (the default's own grow-cut and interpolation runs cost about the Slicer tools' seconds on "
              "top); Slicer tools: one process on the shared 2-core machine")


def _read(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def merge(k1: Path, rest: Path) -> None:
    """results/fusion.csv: k = 1 from the first device run, k = 2, 3, 5 from the second (the first ran before two
    fixes of the prior, which change nothing at k = 1, where no prior is built). At k = 1 the library uses no expert
    (two painted slices are needed), so every fusion's k = 1 row is the network alone's."""
    first = [r for r in _read(k1) if r["k"] == "1"]
    alone = [r for r in first if r["method"] == "no prior"]
    rows = [r for r in first if r["method"] in ("no prior", "linear prior (previous default)")]
    later = _read(rest)
    for method in dict.fromkeys(r["method"] for r in later):
        if method.startswith("2-seed"):
            rows += [dict(r, method=method) for r in first if r["method"].startswith("2-seed")]
        elif method.startswith("contour") and method != "contour prior alone":
            rows += [dict(r, method=method) for r in alone]
    rows += later
    with open(RESULTS / "fusion.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _baselines() -> list[dict]:
    """Grow from seeds and Fill between slices, once per (task, k): the committed quality rows of the phantom and
    2 mm tasks, and the real-data tasks' rows from the export (benchmarks/work/fusion/baselines.csv, committed as
    results/baselines-real.csv)."""
    rows = [r for r in _read(RESULTS / "quality.csv") if r["method"] in ("Grow from seeds", "Fill between slices")]
    rows += _read(RESULTS / "baselines-real.csv")
    return list({(r["task"], r["method"], r["k"]): r for r in rows}.values())


def fusion_table(rows: list[dict], baselines: list[dict]) -> str:
    best = collections.defaultdict(float)
    for r in baselines:
        best[(r["task"], int(r["k"]))] = max(best[(r["task"], int(r["k"]))], float(r["mean_dice"]))
    found = collections.defaultdict(list)
    seconds = collections.defaultdict(list)
    for r in rows:
        found[(r["task"], int(r["k"]), r["method"])].append(float(r["mean_dice"]))
        seconds[r["method"]].append(float(r["seconds"]))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| candidate | choose: mean | margin | worst | cells below | confirm: mean | margin | worst | cells below "
             "| largest seed spread | seconds |", "|---|" + "---|" * 10]
    for method in methods:
        cells = []
        spreads = []
        for group in (CHOOSE, CONFIRM):
            values, margins = [], []
            for task in group:
                for k in (2, 3, 5):
                    v = found.get((task, k, method))
                    if not v:
                        continue
                    values.append(np.mean(v))
                    margins.append(np.mean(v) - best[(task, k)])
                    spreads.append(max(v) - min(v))
            cells += [f"{np.mean(values):.3f}", f"{np.mean(margins):+.3f}", f"{min(margins):+.3f}",
                      f"{sum(m < 0 for m in margins)}/{len(margins)}"]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {max(spreads):.3f} | {np.mean(seconds[method]):.0f} |")
    return "\n".join(lines)


def report() -> None:
    rows = _read(RESULTS / "fusion.csv")
    baselines = _baselines()
    table = fusion_table(rows, baselines)
    text = (f"# Fusion candidates (issue 14): one trained network per (task, k, seed), every fusion of it\n\n"
            f"Chosen on: {', '.join(CHOOSE)}. Confirmed on: {', '.join(CONFIRM)}. k = 2, 3, 5; seeds 0, 1, 2 (the "
            "2-seed ensembles: the three pairs). Margin: mean Dice minus the best Slicer tool of the cell; worst: the "
            "lowest cell margin. Conditions: " + CONDITIONS + ".\n\n"
            "Command: `python benchmarks/fusion_matrix.py export --baselines-for chest-ct-lungs-axial "
            "chest-ct-spine-coronal mni1mm-deepgrey-axial mni1mm-hippocampus-coronal` and `... growcut` here, then "
            "`python benchmarks/fusion_matrix.py run --device cuda --workers 16 --k 2 3 5` on the GPU machine, "
            "`python benchmarks/fusion_report.py`.\n\n" + table + "\n\n"
            f"The default is `{DEFAULT}` (inference/fusion.py): the best margin on the choosing tasks among the "
            "single-network fusions, and it holds on the confirming ones. 'contour prior alone' is the prior's "
            "arg-max without the network (beyond the painted slices it is nearly flat, so it is no tool of its "
            "own). The 2-seed ensemble halves the spread at twice the training time and is not the default.\n")
    timing = RESULTS / "gpu_timing.json"
    if timing.is_file():
        import json

        run = json.loads(timing.read_text())["warm CUDA"]
        text += (f"\nEnd to end on the GPU machine (`benchmarks/gpu_segment_timing.py --device cuda`, 512 x 512 x 300 CT "
                 f"phantom, k = 3, warm CUDA): {run['seconds']} s ({run['stages']}), peak GPU memory "
                 f"{run['peak_gpu_gib']} GiB, Dice {run['mean_dice']}. That machine had neither ITK nor slicer-core, so "
                 "this is the linear prior's path (the experts fall back); how the prediction stage splits between "
                 "the network and the prior's per-slice distance maps on the CPU was not measured.\n")
    (RESULTS / "fusion.md").write_text(text)
    print(text)
    quality = [dict(r, method=RENAMED[r["method"]]) for r in rows if r["method"] in RENAMED] + baselines
    with open(RESULTS / "quality.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(quality)
    summarise(RESULTS, conditions=CONDITIONS, preamble=(
        f"ContrastiveSeg = the default ({DEFAULT}: the network fused with the contour prior and Slicer's grow-cut, "
        "benchmarks/results/fusion.md); no shape prior = the same trained network alone; previous default = the same "
        "network with the linear shape prior. At k = 1 no prior applies (two painted slices are needed). Chosen on: "
        f"{', '.join(CHOOSE)}; confirmed on: {', '.join(CONFIRM)}.\n\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merge", nargs=2, type=Path, metavar=("K1_CSV", "REST_CSV"))
    args = parser.parse_args()
    if args.merge:
        merge(*args.merge)
    report()


if __name__ == "__main__":
    main()
