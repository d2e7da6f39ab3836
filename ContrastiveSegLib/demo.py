"""``contrastiveseg demo``: the whole job on the bundled real sample, next to Slicer's own tools.

The bundled MNI ICBM152 2009 T1 template at 2 mm (:mod:`ContrastiveSegLib.data.sample`) with its grey- and
white-matter labels plays the clinician's scan: k slices of the reference are "annotated" the way the benchmark
does it (evenly between 10 % and 90 % of the brain's extent, benchmarks/README.md), ContrastiveSeg segments
the whole volume from them, and so do the two Segment Editor tools a Slicer user would reach for instead
("Grow from seeds" and "Fill between slices", :mod:`ContrastiveSegLib.baselines`). The demo prints Dice per
structure and seconds per method and writes, into the output folder::

    image.nii.gz  sparse_labels.nii.gz  segmentation.nii.gz  reference.nii.gz  overlay.png  results.json

Every file is written atomically and only after every method ran; ``results.json`` comes last, so its presence
means the folder is complete.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ContrastiveSegLib import options
from ContrastiveSegLib.baselines.runner import FILL, GROW, run_baseline
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.progress import ProgressCallback, emit

SAMPLE = "mni152_2mm"
OURS = "ContrastiveSeg"
# The issue asks for the demo to finish within 3 minutes on 2 CPU cores. Measured here on the 2 mm sample, the
# "default" preset fine-tunes in about 60 s on one thread (channels-last, batch-norm U-Net) and predicts in 1 s;
# with both baselines (each in its own process, ITK's load included) the demo stays inside the budget, so it shows
# what `segment` does by default.
DEFAULT_PRESET = options.DEFAULT_PRESET
# What the demo writes, in the order it lists them for the user.
OUTPUT_FILES = (("image.nii.gz", "the sample scan"), ("sparse_labels.nii.gz", "its annotated slices"),
                ("segmentation.nii.gz", f"{OURS}'s result"), ("reference.nii.gz", "the full reference labels"),
                ("overlay.png", "the picture"), ("results.json", "the numbers"))


def add_demo_arguments(parser) -> None:
    """The demo's options (the CLI adds --device, --threads and --progress)."""
    parser.add_argument("-o", "--output", type=Path, default=Path("contrastiveseg_demo"),
                        help="output folder, created if missing; its parent must exist (default ./contrastiveseg_demo)")
    parser.add_argument("--k", type=int, default=3, help="number of annotated slices (default 3)")
    parser.add_argument("--axis", choices=sorted(options.AXIS_LETTERS), default="k",
                        help="annotation axis as an image index axis (default k: axial slices)")
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"fine-tuning preset, {' | '.join(options.PRESET_NAMES)} (default {DEFAULT_PRESET}: "
                             "the demo's time budget)")
    parser.add_argument("--encoder", default=None, help="encoder name or .safetensors file, or "
                        f"'{options.RANDOM_INIT}' (default: the same as `contrastiveseg segment`)")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps, overriding the preset (e.g. 15 for a quick smoke run)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip Grow from seeds and Fill between slices")


def _check_output_folder(folder: Path) -> Path:
    """Fail before any work when the folder cannot be made: its parent must exist, and it must not be a file."""
    folder = Path(folder)
    parent = folder.absolute().parent
    if not parent.is_dir():
        raise InputError(f"the output folder's parent does not exist: {parent}")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output {folder} exists and is not a folder")
    return folder


def _score(prediction: np.ndarray, reference: np.ndarray, names: dict[int, str]) -> dict[str, float]:
    from ContrastiveSegLib.evaluation.metrics import dice_per_label

    scores = dice_per_label(prediction, reference, list(names))
    return {names[value]: round(float(score), 4) for value, score in scores.items()}


def format_table(methods: list[dict], structures: list[str]) -> str:
    """The printed results: one row per method, Dice per structure, their mean, and seconds."""
    width = max(len(m["name"]) for m in methods) + 2
    header = f"{'method':<{width}}" + "".join(f"{s:>14}" for s in structures) + f"{'mean Dice':>11}{'seconds':>9}"
    lines = [header, "-" * len(header)]
    for method in methods:
        cells = "".join(f"{method['dice'][s]:>14.3f}" for s in structures)
        lines.append(f"{method['name']:<{width}}{cells}{method['mean_dice']:>11.3f}{method['seconds']:>9.1f}")
    return "\n".join(lines)


def run_demo(args, progress: ProgressCallback, cancel) -> int:
    """Run the demo for the parsed ``args``; returns the exit code (0). User errors raise InputError."""
    import torch

    from ContrastiveSegLib import api
    from ContrastiveSegLib.data.sample import LABEL_NAMES, load_sample
    from ContrastiveSegLib.device import resolve_device
    from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, sparse_annotation
    from ContrastiveSegLib.io.volume import from_sitk
    from ContrastiveSegLib.presets import preset_config

    folder = _check_output_folder(args.output)
    if args.k < 1:
        raise InputError(f"--k must be at least 1, got {args.k}")
    preset_config(args.preset, steps=args.steps)  # an unknown preset or bad --steps fails before any work
    axis = options.axis_index(args.axis)
    emit(progress, "load", f"loading the bundled sample {SAMPLE}")
    image_sitk, labels_sitk = load_sample(SAMPLE)
    image, reference = from_sitk(image_sitk), from_sitk(labels_sitk)
    names = dict(LABEL_NAMES)  # label value -> structure name
    slices = choose_annotated_slices(reference.array, axis, args.k, list(names))
    sparse = sparse_annotation(reference.array, axis, slices)
    emit(progress, "annotate", f"annotated {len(slices)} slices along {args.axis}: {slices}")

    methods: list[dict] = []
    layers: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    result = api.segment(image.array, sparse, image.spacing, axis=axis, preset=args.preset, encoder=args.encoder,
                         device=args.device, seed=args.seed, steps=args.steps, progress=progress, cancel=cancel)
    methods.append({"name": OURS, "seconds": time.perf_counter() - start, "stages": result.seconds})
    layers[OURS] = result.labels
    if result.message:
        print(f"contrastiveseg: {result.message}", file=sys.stderr)

    skipped: dict[str, str] = {}
    if not args.no_baselines:
        for name in (GROW, FILL):
            emit(progress, "baseline", f"running {name}")
            start = time.perf_counter()
            try:
                labels = run_baseline(name, image.array, sparse, axis, image.spacing, cancel)
            except (ImportError, RuntimeError) as error:  # say why in one line and go on without it
                skipped[name] = " ".join(str(error).split()) or type(error).__name__
                print(f"note: {name} skipped: {skipped[name]}", file=sys.stderr)
                continue
            methods.append({"name": name, "seconds": time.perf_counter() - start})
            layers[name] = labels

    structures = [names[value] for value in sorted(names)]
    for method in methods:
        method["dice"] = _score(layers[method["name"]], reference.array, names)
        method["mean_dice"] = round(float(np.mean(list(method["dice"].values()))), 4)
        method["seconds"] = round(method["seconds"], 2)
    # stdout carries JSON lines under --progress json; keep it parseable and put the table on stderr there.
    table_stream = sys.stderr if getattr(args, "progress", None) == "json" else sys.stdout
    print(f"\nDice on {SAMPLE} from k = {len(slices)} annotated slices along {args.axis} {slices}:",
          file=table_stream)
    print(format_table(methods, structures), file=table_stream)
    print(f"Dice: overlap with the sample's full {' and '.join(structures)} labels (reference.nii.gz), over the "
          "whole volume; 1 = identical.", file=table_stream)
    if not args.no_baselines:
        print(f"Baselines, the Segment Editor tools a Slicer user would reach for, on the same slices: {GROW} grows "
              f"the annotated slices into the volume by intensity (grow-cut); {FILL} interpolates the annotated "
              "outlines between the slices (morphological contour interpolation).", file=table_stream)
    table_stream.flush()

    summary = {
        "sample": SAMPLE, "axis": args.axis, "k": len(slices), "annotated_slices": [int(s) for s in slices],
        "preset": args.preset, "steps": args.steps, "seed": args.seed, "device": str(resolve_device(args.device)),
        "threads": torch.get_num_threads(),
        "encoder": args.encoder, "structures": {str(v): n for v, n in sorted(names.items())},
        "methods": methods, "skipped": skipped,
    }
    _write_outputs(folder, image, reference, sparse, layers, slices, axis, summary, progress)
    print(f"wrote {folder}{os.sep}: " + ", ".join(f"{name} ({what})" for name, what in OUTPUT_FILES),
          file=table_stream, flush=True)
    emit(progress, "done", f"wrote {folder}", seconds={m["name"]: m["seconds"] for m in methods})
    return 0


def _write_outputs(folder: Path, image, reference, sparse: np.ndarray, layers: dict[str, np.ndarray],
                   slices: list[int], axis: int, summary: dict, progress: ProgressCallback) -> None:
    """Write the volumes, the overlay and results.json (last: its presence marks a complete folder)."""
    from ContrastiveSegLib.data.sample import LABEL_NAMES
    from ContrastiveSegLib.io.volume import atomic_write, write_volume
    from ContrastiveSegLib.evaluation.pictures import montage_slices, overlay_montage

    emit(progress, "write", f"writing {folder}")
    folder.mkdir(exist_ok=True)
    write_volume(image, folder / "image.nii.gz")
    write_volume(reference, folder / "reference.nii.gz")
    write_volume(image.like(sparse), folder / "sparse_labels.nii.gz")
    write_volume(image.like(layers[OURS]), folder / "segmentation.nii.gz")
    rows = montage_slices(reference.array, axis, slices, rows=4)
    # Each method's column says its mean Dice against the reference column, so the picture reads on its own.
    dice = {m["name"]: m["mean_dice"] for m in summary["methods"]}
    titled = {(f"{name} (mean Dice {dice[name]:.3f})" if name in dice else name): labels
              for name, labels in layers.items()}
    overlay_montage(image.array, {"reference": reference.array, **titled}, axis, rows, folder / "overlay.png",
                    spacing=image.spacing, direction=image.direction, annotated=slices, label_names=LABEL_NAMES,
                    title=f"{SAMPLE}: {len(slices)} annotated slices {list(slices)}")
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(folder / "results.json", lambda tmp: Path(tmp).write_text(text))
