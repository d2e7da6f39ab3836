"""Per-scan expert weights (issue 14, direction 2): how much to trust grow-cut, decided by the scan itself.

    python benchmarks/expert_weights.py networks --workers 2        # fine-tune once per (task, k, seed), keep log p
    python benchmarks/expert_weights.py growcut                     # grow-cut from all painted slices and each left out
    python benchmarks/expert_weights.py evaluate                    # every weighting rule on the cached outputs
    python benchmarks/expert_weights.py report                      # quality.csv/.md, dice_vs_k.png, README table

Why three steps: on a CPU-only machine a fine-tuning costs about a minute, a fusion rule a fraction of a second.
``networks`` saves each network's log probabilities over the whole stack (float16, stack order); ``growcut`` saves
Slicer's grow-cut from every painted slice and, for each painted slice, the grow-cut from the others on that
slice (the leave-one-out that tells per scan and per structure how well grow-cut predicts a slice it was not
given); ``evaluate`` replays every rule through the library's own fusion and post-processing and writes rows in
run_benchmark's columns (``expert_weights.csv``) and the summary table (``expert_weights.md``).
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusion_matrix import CHOOSE, CONFIRM  # noqa: E402

KS = [2, 3, 5]
CONDITIONS = ("ours: networks fine-tuned on the CPU (default preset, bf16 as the library chooses on this AVX512-BF16 "
              "CPU, one torch thread, two processes on 2 cores) and "
              "replayed through each fusion, so their seconds are not comparable and are given as 0 (end-to-end times: "
              "benchmarks/results/speed.md); Slicer tools: one process on the shared 2-core machine")
DEFAULT_CACHE = Path(__file__).resolve().parent / "work" / "experts"


def _cell(name: str, k: int):
    """(task, image, reference, spacing, sparse annotation, painted slice indices) of one (task, k)."""
    from tasks import TASKS

    from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, sparse_annotation

    task = TASKS[name]
    image, reference, spacing, _ = task.load()
    slices = choose_annotated_slices(reference, task.axis, k)
    return task, image, reference, spacing, sparse_annotation(reference, task.axis, slices), slices


PRECISIONS = {"auto": None, "float32": "0", "bf16": "1"}
"""``--precision``: the value of the library's CPU bf16 switch (``device.CPU_BF16_VARIABLE``) for each choice
(auto: the library decides, as a user's run does)."""


def network_folder(cache: Path, steps: int | None, precision: str = "auto") -> Path:
    """Where the networks fine-tuned for ``steps`` steps (None: the default preset's) in ``precision`` keep their
    log probabilities."""
    return cache / ("net" + ("" if steps is None else f"-{steps}steps") + ("" if precision == "auto" else f"-{precision}"))


def network_job(cache: str, name: str, k: int, seed: int, steps: int | None = None, precision: str = "auto") -> str:
    """Fine-tune the default network (``steps``: the preset's unless given; ``precision``: a key of
    :data:`PRECISIONS`) on one (task, k, seed) and save its (C, S, H, W) log probabilities."""
    import os

    import torch

    from ContrastiveSegLib.device import CPU_BF16_VARIABLE

    if PRECISIONS[precision] is not None:  # each job runs in its own spawned process: the setting stays there
        os.environ[CPU_BF16_VARIABLE] = PRECISIONS[precision]

    torch.set_num_threads(1)
    from ContrastiveSegLib import api
    from ContrastiveSegLib.data.case import PreparedCase
    from ContrastiveSegLib.inference.predict import predict_volume

    out = network_folder(Path(cache), steps, precision) / f"{name}-k{k}-s{seed}.npz"
    if out.is_file():
        return f"{out.name} (cached)"
    task, image, _, spacing, sparse, _ = _cell(name, k)
    start = time.perf_counter()
    model = api.finetune(image, sparse, spacing, axis=task.axis, seed=seed, device="cpu", steps=steps)
    case = PreparedCase.build(image, api.read_annotation(image, sparse, model.axis, model.label_values), spacing,
                              model.spec, axis=model.axis)
    _, probs = predict_volume(model.network, case.stack, torch.device("cpu"), divisor=model.network.config.divisor,
                              keep_probabilities=True)
    seconds = time.perf_counter() - start
    log = np.log(np.clip(probs, 1e-30, None)).clip(-60, 0).astype(np.float16)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".part.npz")
    np.savez_compressed(partial, log_probs=log, label_values=np.asarray(model.label_values), seconds=seconds)
    partial.replace(out)
    return f"{out.name} {seconds:.0f} s"


def networks(cache: Path, tasks: list[str], ks: list[int], seeds: list[int], workers: int,
             steps: int | None = None, precision: str = "auto") -> None:
    """Every (task, k, seed) network, seed by seed (a cut-short run leaves whole seeds), longest jobs first."""
    jobs = [(name, k, seed) for seed in seeds for name in tasks for k in ks]
    jobs.sort(key=lambda job: (job[2], not job[0].startswith("mni1mm"), -job[1]))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(network_job, str(cache), *job, steps, precision): job for job in jobs}
        for future in as_completed(futures):
            try:
                print(f"{time.strftime('%H:%M:%S')} {future.result()}", flush=True)
            except Exception as error:  # one failed job must not lose the others
                print(f"{futures[future]} failed: {type(error).__name__}: {error}", flush=True)


def growcut(cache: Path, tasks: list[str], ks: list[int]) -> None:
    """Per (task, k): the grow-cut from all painted slices (``all``, (S, H, W) class indices in stack order) and,
    per painted slice, the grow-cut from the others on that slice (``held_{position}``, (H, W))."""
    from ContrastiveSegLib.api import read_annotation
    from ContrastiveSegLib.data.case import PreparedCase, spec_for
    from ContrastiveSegLib.inference.fusion import held_out_growcut, slicer_growcut

    for name in tasks:
        for k in ks:
            out = cache / "growcut" / f"{name}-k{k}.npz"
            if out.is_file():
                continue
            task, image, _, spacing, sparse, _ = _cell(name, k)
            annotation = read_annotation(image, sparse, task.axis)
            case = PreparedCase.build(image, annotation, spacing, spec_for(image, annotation))
            start = time.perf_counter()
            every, held = held_out_growcut(image, case.targets, annotation.num_classes, task.axis, spacing,
                                           slicer_growcut)
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(out, all=every, **{f"held_{p}": h for p, h in held.items()})
            print(f"{time.strftime('%H:%M:%S')} grow-cut {name} k={k}: {time.perf_counter() - start:.0f} s",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["networks", "growcut", "evaluate", "report"])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--tasks", nargs="+", default=CHOOSE + CONFIRM)
    parser.add_argument("--k", nargs="+", type=int, default=KS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None,
                        help="networks: fine-tuning steps (default: the preset's), cached apart from the default's")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                        help="networks: CPU arithmetic (auto: as the library decides), cached apart unless auto")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.mode == "networks":
        networks(args.cache, args.tasks, args.k, args.seeds, args.workers, args.steps, args.precision)
    elif args.mode == "growcut":
        growcut(args.cache, args.tasks, args.k)
    elif args.mode == "evaluate":
        from expert_rules import evaluate

        evaluate(args.cache, args.tasks, args.k, args.seeds, args.out)
    else:
        from expert_rules import write_quality

        table = write_quality(args.out / "expert_weights.csv", args.out, CONDITIONS)
        readme = Path(__file__).resolve().parent.parent / "README.md"
        text = readme.read_text()
        start, end = text.index("<!-- QUALITY TABLE -->"), text.index("<!-- /QUALITY TABLE -->")
        readme.write_text(text[:start] + "<!-- QUALITY TABLE -->\n" + table + "\n" + text[end:])
        print(table)


if __name__ == "__main__":
    main()
