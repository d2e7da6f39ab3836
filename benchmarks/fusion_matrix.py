"""The fusion candidates of issue 14, from one trained network per (task, k, seed), on many processes at once.

    python benchmarks/fusion_matrix.py export --cache benchmarks/work/fusion   # here: tasks, interpolations, baselines
    python benchmarks/fusion_matrix.py run --cache benchmarks/work/fusion --device cuda --workers 12 --out DIR

Why two steps: the candidates' contour prior needs ITK's contour interpolation (slicer-core or ITK's wrapping), and
a GPU machine may have neither (nor SimpleITK to read the scans). ``export`` saves every task's arrays and every
interpolation a (task, k) asks for (all painted slices, and each inner painted slice held out) keyed by its input,
plus the Slicer tools' rows; ``run`` replays them, so the numbers are those of the library's own code path.

Per (task, k, seed) the network is fine-tuned once (api.finetune, default preset) and predicts every slice once;
every candidate is that prediction fused with a prior (or not), then the library's post-processing
(keep-touching-components, the painted voxels pasted in). Rows go to fusion.csv (run_benchmark's columns).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHOOSE = ["ct-lookalike-axial", "ct-tubes-axial", "ct-organs-axial", "mni2mm-gmwm-axial", "chest-ct-lungs-axial",
          "mni1mm-deepgrey-axial"]
CONFIRM = ["ct-shapes-coronal", "mni2mm-ventricles-coronal", "chest-ct-spine-coronal", "mni1mm-hippocampus-coronal"]
KS = [1, 2, 3, 5]
WEIGHTS = (1.0, 2.0, 4.0, 8.0)


def _key(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).hexdigest()


class Recording:
    """An interpolator that runs ITK's and remembers each answer by its input."""

    def __init__(self):
        from ContrastiveSegLib.inference.contour_prior import itk_interpolator

        self.run, self.seen = itk_interpolator, {}

    def __call__(self, classes):
        out = self.run(classes)
        self.seen[_key(classes)] = out
        return out


class Replaying:
    """An interpolator that answers from an export (KeyError for an input it has not seen)."""

    def __init__(self, path: Path):
        with np.load(path) as data:
            self.known = {name: data[name] for name in data.files}

    def __call__(self, classes):
        return self.known[_key(classes)]


def export(cache: Path, tasks: list[str], ks: list[int], baselines_for: list[str]) -> None:
    """Save each task's arrays, the interpolations its (task, k) priors ask for, and the Slicer tools' rows."""
    from run_benchmark import append_row, score_row
    from tasks import TASKS

    from ContrastiveSegLib.api import read_annotation
    from ContrastiveSegLib.baselines.runner import FILL, GROW, run_baseline
    from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, sparse_annotation
    from ContrastiveSegLib.inference.contour_prior import contour_prior_of

    cache.mkdir(parents=True, exist_ok=True)
    for name in tasks:
        task = TASKS[name]
        image, reference, spacing, _ = task.load()
        dtype = np.int16 if np.allclose(image, np.round(image)) and np.abs(image).max() < 32000 else np.float32
        if not name.startswith("ct-"):  # the phantoms are made where they run
            np.savez_compressed(cache / f"{name}.npz", image=image.astype(dtype), reference=reference,
                                spacing=np.asarray(spacing))
        recording = Recording()
        for k in ks:
            slices = choose_annotated_slices(reference, task.axis, k)
            sparse = sparse_annotation(reference, task.axis, slices)
            annotation = read_annotation(image, sparse, task.axis)
            from ContrastiveSegLib.data.case import PreparedCase, spec_for

            case = PreparedCase.build(image, annotation, spacing, spec_for(image, annotation))
            contour_prior_of(case.targets, annotation.num_classes, task.axis, spacing, recording)
            if name in baselines_for:
                for method in (GROW, FILL):
                    start = time.perf_counter()
                    prediction = run_baseline(method, image, sparse, task.axis, spacing)
                    row = score_row(task, method, k, 0, prediction, reference, time.perf_counter() - start)
                    append_row(cache / "baselines.csv", row)
                    print(json.dumps(row), flush=True)
        np.savez_compressed(cache / f"{name}-interpolations.npz", **recording.seen)
        print(f"exported {name}: {len(recording.seen)} interpolations", flush=True)


def export_growcut(cache: Path, tasks: list[str], ks: list[int]) -> None:
    """Save Slicer's Grow from seeds on each (task, k) as class indices in stack order (``{name}-growcut.npz``,
    one array per k): the intensity-driven evidence a fusion candidate weighs in."""
    from tasks import TASKS

    from ContrastiveSegLib.baselines.runner import GROW, run_baseline
    from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, sparse_annotation

    for name in tasks:
        task = TASKS[name]
        image, reference, spacing, _ = task.load()
        values = sorted(task.structures)
        maps = {}
        for k in ks:
            slices = choose_annotated_slices(reference, task.axis, k)
            grown = run_baseline(GROW, image, sparse_annotation(reference, task.axis, slices), task.axis, spacing)
            lookup = np.zeros(max(int(grown.max()), max(values)) + 1, np.uint8)
            present = [v for v in values if (np.moveaxis(reference, task.axis, 0)[np.sort(slices)] == v).any()]
            lookup[present] = np.arange(1, len(present) + 1)
            maps[str(k)] = np.moveaxis(lookup[grown], task.axis, 0)
        np.savez_compressed(cache / f"{name}-growcut.npz", **maps)
        print(f"grow-cut exported {name}", flush=True)


GROWCUT_TAU = 2.0  # voxels: the grow-cut outline's uncertainty (its own slices are exact, the rest is intensity)


def growcut_log_probs(classes: np.ndarray, num_classes: int, inplane) -> "torch.Tensor":
    """(S, C, H, W) log probabilities from a (S, H, W) grow-cut class map: the outline's signed distance through
    a sigmoid of width :data:`GROWCUT_TAU` voxels."""
    import torch

    from ContrastiveSegLib.inference.shape_prior import _log_categorical, signed_distance

    tau = GROWCUT_TAU * min(inplane)
    informative = torch.ones(num_classes - 1, dtype=torch.bool)
    out = []
    for s in range(len(classes)):
        d = np.stack([signed_distance(classes[s] == c, inplane) for c in range(1, num_classes)])
        d = np.where(np.isfinite(d), d, np.where(d > 0, 1e3, -1e3)).astype(np.float32)
        out.append(_log_categorical(torch.from_numpy(d), tau, informative))
    return torch.stack(out)


def _candidates(net_log: list, prior_linear, prior_contour, num_classes, growcut=None):
    """{name: [(seed index, (S, H, W) classes before post-processing)]} from the seeds' (C, S, H, W) network log
    probabilities and the priors' unweighted (S, C, H, W) log probabilities (None: no prior)."""
    import torch

    out: dict[str, list] = {}

    def fused(log_net, log_prior, weight):
        if log_prior is None:
            return log_net.argmax(0)
        return (log_net + weight * log_prior.permute(1, 0, 2, 3)).argmax(0)

    for i, log_net in enumerate(net_log):
        out.setdefault("no prior", []).append((i, fused(log_net, None, 0)))
        out.setdefault("linear prior (previous default)", []).append((i, fused(log_net, prior_linear, 1.0)))
        for weight in WEIGHTS:
            out.setdefault(f"contour prior x{weight:g}", []).append((i, fused(log_net, prior_contour, weight)))
        if growcut is not None:
            for weight in WEIGHTS[:3]:
                with_contour = log_net if prior_contour is None else log_net + weight * prior_contour.permute(1, 0, 2, 3)
                for grow in (1.0, 2.0):
                    out.setdefault(f"contour x{weight:g} + growcut x{grow:g}", []).append(
                        (i, fused(with_contour, growcut, grow)))
    if prior_contour is not None:
        out["contour prior alone"] = [(0, prior_contour.argmax(1))]
    pairs = [(0, 1), (1, 2), (0, 2)]
    for i, (a, b) in enumerate(pairs):
        if b < len(net_log):
            mean = torch.logsumexp(torch.stack([net_log[a], net_log[b]]), 0)
            out.setdefault("2-seed ensemble + contour x1", []).append((i, fused(mean, prior_contour, 1.0)))
    return out


def run_job(cache: str, name: str, k: int, seeds: list[int], device: str, threads: int,
            steps: int | None = None) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    from run_benchmark import score_row
    from tasks import TASKS

    from ContrastiveSegLib import api
    from ContrastiveSegLib.data.case import PreparedCase
    from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, sparse_annotation
    from ContrastiveSegLib.inference.contour_prior import contour_prior_of
    from ContrastiveSegLib.inference.postprocess import keep_annotated_components, paste_annotations
    from ContrastiveSegLib.inference.predict import predict_volume

    task = TASKS[name]
    if name.startswith("ct-"):  # phantoms: made here (numpy only), as in run_benchmark
        image, reference, spacing, _ = task.load()
    else:
        with np.load(Path(cache) / f"{name}.npz") as data:
            image, reference, spacing = data["image"].astype(np.float32), data["reference"], tuple(data["spacing"])
    slices = choose_annotated_slices(reference, task.axis, k)
    sparse = sparse_annotation(reference, task.axis, slices)
    net_log, models, train_seconds = [], [], []
    for seed in seeds:
        start = time.perf_counter()
        model = api.finetune(image, sparse, spacing, axis=task.axis, seed=seed, device=device, steps=steps)
        case = PreparedCase.build(image, api.read_annotation(image, sparse, model.axis, model.label_values),
                                  spacing, model.spec, axis=model.axis)
        _, probs = predict_volume(model.network, case.stack, torch.device(device),
                                  divisor=model.network.config.divisor, keep_probabilities=True)
        net_log.append(torch.from_numpy(probs).clamp_min(1e-30).log())
        train_seconds.append(time.perf_counter() - start)
        models.append(model)
    targets, num_classes = case.targets, len(model.label_values)
    start = time.perf_counter()
    linear = api.shape_prior_of(targets, num_classes, task.axis, spacing)
    contour = contour_prior_of(targets, num_classes, task.axis, spacing, Replaying(Path(cache) /
                                                                                  f"{name}-interpolations.npz"),
                               weight=1.0)
    prior_seconds = time.perf_counter() - start
    every = np.arange(targets.shape[0])
    log_linear = None if linear is None else linear.log_probs(every)
    log_contour = None if contour is None else contour.log_probs(every)
    log_growcut = None
    if (Path(cache) / f"{name}-growcut.npz").is_file():
        from ContrastiveSegLib.inference.shape_prior import stack_spacing

        with np.load(Path(cache) / f"{name}-growcut.npz") as data:
            if str(k) in data.files:
                log_growcut = growcut_log_probs(data[str(k)], num_classes, stack_spacing(spacing, task.axis)[0])
    lookup = api.label_lookup(model.label_values)
    rows = []
    for method, results in _candidates(net_log, log_linear, log_contour, num_classes, log_growcut).items():
        for i, classes in results:
            classes = keep_annotated_components(classes.numpy().astype(np.uint8), targets, num_classes)
            paste_annotations(classes, targets)
            labels = lookup[np.moveaxis(classes, 0, task.axis)]
            seconds = (0.0 if method == "contour prior alone" else
                       train_seconds[i] * (2 if "ensemble" in method else 1)) + prior_seconds
            row = score_row(task, method, k, seeds[i] if "ensemble" not in method else i, labels, reference,
                            seconds, f"default/{device}")
            rows.append(row)
    return rows


def run(cache: Path, tasks: list[str], ks: list[int], seeds: list[int], device: str, workers: int, out: Path,
        threads: int, steps: int | None = None, deadline: float | None = None) -> None:
    """Every (task, k) job on ``workers`` processes; rows appended as jobs finish. After ``deadline`` seconds the
    unfinished jobs are dropped and their processes killed (what finished is kept)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, wait

    from run_benchmark import append_row

    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    # the long jobs first: the 1 mm brains, then the larger k
    jobs = sorted(((name, k) for k in ks for name in tasks), key=lambda job: (not job[0].startswith("mni1mm"), -job[1]))
    # spawn: each worker starts CUDA on its own (a forked CUDA context is unusable)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    futures = {pool.submit(run_job, str(cache), name, k, seeds, device, threads, steps): (name, k)
               for name, k in jobs}
    pending = set(futures)
    while pending:
        left = None if deadline is None else deadline - (time.monotonic() - start)
        if left is not None and left <= 0:
            print(f"deadline: {len(pending)} jobs dropped: {sorted(futures[f] for f in pending)}", flush=True)
            break
        done, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
        for future in done:
            try:
                rows = future.result()
            except Exception as error:  # one failed job must not lose the others' rows
                print(f"{futures[future]} failed: {type(error).__name__}: {error}", flush=True)
                continue
            for row in rows:
                append_row(out / "fusion.csv", row)
            print(f"[{time.monotonic() - start:.0f} s] done {futures[future]}: " +
                  ", ".join(f"{r['method']}={r['mean_dice']}" for r in rows if r["seed"] == seeds[0]), flush=True)
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["export", "growcut", "run"])
    parser.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "work" / "fusion")
    parser.add_argument("--tasks", nargs="+", default=CHOOSE + CONFIRM)
    parser.add_argument("--k", nargs="+", type=int, default=KS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--baselines-for", nargs="*", default=[], help="tasks whose Slicer-tool rows to compute")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, help="fine-tuning steps (default: the preset's; fewer for a smoke test)")
    parser.add_argument("--deadline", type=float, help="seconds after which unfinished jobs are dropped")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.mode == "export":
        export(args.cache, args.tasks, args.k, args.baselines_for)
    elif args.mode == "growcut":
        export_growcut(args.cache, args.tasks, args.k)
    else:
        run(args.cache, args.tasks, args.k, args.seeds, args.device, args.workers, args.out, args.threads, args.steps,
            args.deadline)


if __name__ == "__main__":
    main()
