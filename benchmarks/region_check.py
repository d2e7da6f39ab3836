"""Does predicting only inside the region (ContrastiveSegLib/inference/region.py) change the answer? One fine-tuning
per (task, k, seed) with the default preset, then the same model predicts twice, over the whole volume (as before)
and over the region only: identical voxels, Dice of each against the reference, the region's share of the volume
and the prediction seconds of each, into ``results/region.md``.

    OMP_NUM_THREADS=1 python benchmarks/region_check.py --tasks ct-organs-axial ct-tubes-axial --k 2 3 --seeds 0
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--k", nargs="+", type=int, default=[3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the preset's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "region.md")
    args = parser.parse_args()
    import torch

    from tasks import sparse_cases

    from ContrastiveSegLib import api
    from ContrastiveSegLib.evaluation.metrics import mean_dice
    from ContrastiveSegLib.inference import region as region_module
    from ContrastiveSegLib.io.annotations import decode_annotation
    from ContrastiveSegLib.threads import choose_threads

    torch.set_num_threads(choose_threads(None))
    lines = ["# Prediction inside the region vs over the whole volume (same fine-tuned model)", "",
             f"`python benchmarks/region_check.py {' '.join(sys.argv[1:])}`, {torch.get_num_threads()} thread(s), "
             "default preset.", "",
             "| task | k | seed | region share | voxels differing | Dice whole | Dice region | predict s whole "
             "| predict s region |", "|---|---|---|---|---|---|---|---|---|"]
    chosen = region_module.region_of_case
    whole = lambda targets, classes, axis, spacing, shape: region_module.Region.whole(shape)  # noqa: E731
    for task, image, reference, spacing, k, sparse in sparse_cases(args.tasks, args.k):
        annotation = decode_annotation(sparse, task.axis)
        targets = np.moveaxis(annotation.target, task.axis, 0)
        share = chosen(targets, annotation.num_classes, task.axis, spacing, targets.shape).mask(targets.shape).mean()
        for seed in args.seeds:
            model = api.finetune(image, sparse, spacing, axis=task.axis, seed=seed, steps=args.steps, device="cpu")
            results = {}
            for label, chooser in (("whole", whole), ("region", chosen)):
                api.region_of_case = chooser
                start = time.perf_counter()
                results[label] = (api.predict(model, image, labels=sparse, spacing=spacing, device="cpu").labels,
                                  time.perf_counter() - start)
            api.region_of_case = chosen
            differing = int((results["whole"][0] != results["region"][0]).sum())
            dice = {label: mean_dice(results[label][0], reference, list(task.structures)) for label in results}
            row = (f"| {task.name} | {k} | {seed} | {share:.2f} | {differing} | {dice['whole']:.4f} | "
                   f"{dice['region']:.4f} | {results['whole'][1]:.1f} | {results['region'][1]:.1f} |")
            print(row, flush=True)
            lines.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
