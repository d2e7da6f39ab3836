"""Speed and memory benchmark (benchmarks/README.md):

- end-to-end seconds and peak resident memory of ``contrastiveseg segment`` (a fresh process, as a user runs it)
  on the 1 mm MNI brain (197 x 233 x 189) and a CT-sized phantom (512 x 512 x 300 at 0.8 x 0.8 x 2.5 mm), with
  the default and the fast preset;
- the fine-tuning loop's throughput relative to a plain PyTorch loop, and whole-slice prediction relative to
  MONAI's sliding_window_inference (benchmarks/throughput.py), side by side in one process.

    python benchmarks/speed.py --out benchmarks/results [--device cpu|cuda] [--skip-ct]

``--whole-volume`` adds, before each run, the same run predicting over the whole volume as before the prediction
region (ContrastiveSegLib/inference/region.py; the library is patched in that child process only), side by side
under the same load; ``--inline-experts`` likewise runs each with the experts computed after the training (as
before they ran beside it); ``--float32`` likewise with the CPU kept in float32 (as before bf16 autocast on a CPU
that computes it natively: ``device.CPU_BF16_VARIABLE=0``); ``--skip-ratios`` leaves out the throughput ratios;
``--name`` writes ``NAME.md``/``NAME.json`` instead of ``speed.md``/``speed.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _volumes(folder: Path, skip_ct: bool, skip_brain: bool = False) -> dict[str, tuple[Path, Path]]:
    import SimpleITK as sitk

    from ContrastiveSegLib.evaluation.phantoms import make_ct_phantom, phantom_to_sitk
    from ContrastiveSegLib.data.sample import load_sample
    from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, sparse_annotation

    cases = {}
    if not skip_brain:
        image, labels = load_sample("mni152_1mm")
        reference = sitk.GetArrayFromImage(labels)
        sparse = sparse_annotation(reference, 0, choose_annotated_slices(reference, 0, 3))
        cases["mni1mm 197x233x189"] = (image, sparse, labels)
    if not skip_ct:
        phantom = make_ct_phantom((300, 512, 512), (0.8, 0.8, 2.5), seed=3, num_organs=4)
        image, labels = phantom_to_sitk(phantom)
        sparse = sparse_annotation(phantom.labels, 0, choose_annotated_slices(phantom.labels, 0, 3))
        cases["ct 512x512x300"] = (image, sparse, labels)
    paths = {}
    for name, (image, sparse, labels) in cases.items():
        stem = name.split()[0]
        sparse_image = sitk.GetImageFromArray(sparse.astype(np.uint8))
        sparse_image.CopyInformation(labels)
        sitk.WriteImage(image, str(folder / f"{stem}-image.nii.gz"))
        sitk.WriteImage(sparse_image, str(folder / f"{stem}-labels.nii.gz"))
        paths[name] = (folder / f"{stem}-image.nii.gz", folder / f"{stem}-labels.nii.gz")
    return paths


# The CLI with prediction over the whole volume: what segment did before the prediction region.
WHOLE_VOLUME = ("import sys; from ContrastiveSegLib import api; from ContrastiveSegLib.inference.region import Region; "
                "api.region_of_case = lambda targets, classes, axis, spacing, shape: Region.whole(shape); "
                "from ContrastiveSegLib.cli import main; sys.argv[0] = 'contrastiveseg'; sys.exit(main())")


# The CLI with the experts (contour interpolation, grow-cut) computed when prediction starts, after the training,
# as before they ran beside it (api.ExpertsRun).
INLINE_EXPERTS = """
import sys
from ContrastiveSegLib import api
from ContrastiveSegLib.inference.fusion import fused_prior_of

class InlineExperts:
    def __init__(self, case, num_classes, cancel=None):
        self.case, self.num_classes = case, num_classes

    def result(self):
        case = self.case
        return fused_prior_of(case.image, case.targets, self.num_classes, case.axis, case.spacing)

    def stop(self):
        pass

api.ExpertsRun = InlineExperts
from ContrastiveSegLib.cli import main
sys.argv[0] = 'contrastiveseg'
sys.exit(main())
"""


def _run_cli(image: Path, labels: Path, output: Path, preset: str, device: str, whole_volume: bool = False,
             inline_experts: bool = False, float32: bool = False) -> dict:
    """Wall seconds of one CLI run and its per-stage seconds (from the final progress event); ``whole_volume``:
    predicting every voxel, as before the prediction region; ``inline_experts``: the experts computed after the
    training, as before they ran beside it; ``float32``: no bf16 autocast on the CPU."""
    from ContrastiveSegLib.device import CPU_BF16_VARIABLE

    entry = (["-c", WHOLE_VOLUME] if whole_volume else ["-c", INLINE_EXPERTS] if inline_experts
             else ["-m", "ContrastiveSegLib"])
    command = [sys.executable, *entry, "segment", str(image), str(labels), "-o", str(output),
               "--preset", preset, "--device", device, "--progress", "json"]
    start = time.perf_counter()
    env = dict(os.environ, **({CPU_BF16_VARIABLE: "0"} if float32 else {}))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"segment failed: {stderr.decode().strip()[-300:]}")
    stages = {}
    for line in stdout.decode().splitlines():
        event = json.loads(line)
        if event.get("stage") == "done" and "seconds" in event:
            stages = event["seconds"]
    return {"seconds": round(seconds, 1), "stages": {k: round(v, 1) for k, v in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-ct", action="store_true")
    parser.add_argument("--presets", nargs="+", default=["default", "fast"])
    parser.add_argument("--whole-volume", action="store_true", help="also run each as before the region")
    parser.add_argument("--skip-ratios", action="store_true")
    parser.add_argument("--skip-brain", action="store_true")
    parser.add_argument("--after-first", action="store_true", help="with --whole-volume: the new run first")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration, interleaved")
    parser.add_argument("--inline-experts", action="store_true",
                        help="also run each with the experts computed after the training (as before), side by side")
    parser.add_argument("--float32", action="store_true",
                        help="also run each with the CPU in float32 (as before bf16), side by side")
    parser.add_argument("--name", default="speed", help="the result files' name (NAME.md, NAME.json)")
    args = parser.parse_args()
    import resource

    import torch

    from throughput import inference_throughput_ratio, loop_throughput_ratio

    from ContrastiveSegLib.threads import choose_threads

    args.out.mkdir(parents=True, exist_ok=True)
    # The CLI runs choose their own thread count (--threads absent: OMP_NUM_THREADS, else the default rule), which is
    # what a default install gets; the throughput ratios run in this process with torch's own count.
    torch.set_num_threads(choose_threads(None))
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
               f"{choose_threads(None)} thread(s) for the CLI runs and the ratios "
               f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})" +
               (f", {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else ""))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for name, (image, labels) in _volumes(folder, args.skip_ct, args.skip_brain).items():
            for repeat in range(args.repeats):
                for preset in args.presets:
                    order = [False, True] if args.after_first else [True, False]
                    variants = [(whole, False, False) for whole in (order if args.whole_volume else [False])]
                    if args.inline_experts:
                        variants = [(False, inline, False) for inline in (order if repeat % 2 else order[::-1])]
                    if args.float32:
                        variants = [(False, False, old) for old in (order if repeat % 2 else order[::-1])]
                    for whole, inline, float32 in variants:
                        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                        result = _run_cli(image, labels, folder / "out.nii.gz", preset, args.device, whole, inline,
                                          float32)
                        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                        # RUSAGE_CHILDREN keeps the largest child so far: report it only when this run raised it.
                        result["peak_rss_gb"] = (round(peak / 1024 ** 2, 2) if peak > before
                                                 else f"<= {before / 1024 ** 2:.2f}")
                        result["load"] = round(os.getloadavg()[0], 1)
                        label = (f"{preset}, whole volume (before)" if whole else
                                 f"{preset}, experts after training (before)" if inline else
                                 f"{preset}, float32 (before)" if float32 else preset)
                        rows.append({"volume": name, "preset": label, **result})
                        print(json.dumps(rows[-1]), flush=True)
        if args.skip_ratios:
            _write(args, machine, rows, None)
            return

        import SimpleITK as sitk

        from ContrastiveSegLib.data.sample import load_sample
        from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, sparse_annotation

        device = torch.device(args.device)
        image, labels = load_sample("mni152_1mm")
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        reference = sitk.GetArrayFromImage(labels)
        sparse = sparse_annotation(reference, 0, choose_annotated_slices(reference, 0, 3))
        loop = loop_throughput_ratio(array, sparse, device)
        inference = inference_throughput_ratio(array, device)
    _write(args, machine, rows, {**loop, **inference})


def _write(args, machine: str, rows: list[dict], ratios: dict | None) -> None:
    """speed.md and speed.json (suffixed by the device when not the CPU); ``ratios`` None: the table of runs only."""
    if ratios is not None:
        print(json.dumps(ratios), flush=True)
    lines = [f"# Speed and memory\n\nMachine: {machine}\n",
             "| volume | preset | end-to-end s | fine-tune s | predict s | peak RSS (GB) | load (1 min) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['volume']} | {row['preset']} | {row['seconds']} | {row['stages'].get('finetune', '')} "
                     f"| {row['stages'].get('predict', '')} | {row['peak_rss_gb']} | {row.get('load', '')} |")
    if ratios is not None:
        lines += ["", "| ratio | value | ours (slices/s) | reference (slices/s) |", "|---|---|---|---|",
                  f"| fine-tuning loop / plain PyTorch loop | {ratios['loop_ratio']:.2f} | "
                  f"{ratios['loop_slices_per_s']:.1f} | {ratios['plain_slices_per_s']:.1f} |",
                  f"| whole-slice prediction / sliding_window_inference | {ratios['inference_ratio']:.2f} | "
                  f"{ratios['predict_slices_per_s']:.1f} | {ratios['sliding_window_slices_per_s']:.1f} |"]
    lines.append("")
    suffix = "" if args.device == "cpu" else "-" + args.device.replace(":", "")
    (args.out / f"{args.name}{suffix}.md").write_text("\n".join(lines))
    (args.out / f"{args.name}{suffix}.json").write_text(json.dumps({"machine": machine, "runs": rows, "ratios": ratios},
                                                             indent=2))
    print("\n".join(lines))

if __name__ == "__main__":
    main()
