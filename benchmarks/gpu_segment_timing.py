"""End-to-end ``api.segment`` seconds and peak GPU memory on the CT-sized phantom (512 x 512 x 300, 0.8 x 0.8 x
2.5 mm, k = 3), for a GPU machine without SimpleITK (the CLI path is benchmarks/speed.py --device cuda).

    python benchmarks/gpu_segment_timing.py --device cuda --out DIR      # writes DIR/gpu_timing.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch

    from ContrastiveSegLib import api
    from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, mean_dice, sparse_annotation
    from ContrastiveSegLib.evaluation.phantoms import make_ct_phantom

    phantom = make_ct_phantom((300, 512, 512), (0.8, 0.8, 2.5), seed=3, num_organs=4)
    sparse = sparse_annotation(phantom.labels, 0, choose_annotated_slices(phantom.labels, 0, 3))
    results = {}
    if args.device.startswith("cuda"):
        torch.ones(1, device=args.device).sum().item()  # CUDA's start-up is not the product's time
    for run in ("warm CUDA",):
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = api.segment(phantom.image, sparse, phantom.spacing, axis=0, device=args.device, seed=0)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        results[run] = {"seconds": round(time.perf_counter() - start, 1),
                        "stages": {k: round(v, 1) for k, v in result.seconds.items()},
                        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                        if args.device.startswith("cuda") else None,
                        "mean_dice": round(mean_dice(result.labels, phantom.labels), 4)}
        print(json.dumps(results[run]), flush=True)
    results["device"] = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_timing.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
