"""Remake the shipped encoders: one per pretraining method, each by ``contrastiveseg pretrain`` on offline data.

    python Resources/Models/make_encoders.py [--methods simclr lrc ...] [--minutes 8] [--jobs 2]
    python Resources/Models/make_encoders.py --headers-only   # rewrite the headers' recorded names, no training

The corpus (written to a temporary folder, nothing downloaded):
- the MNI ICBM152 2009a T1 template at 1 mm (ships inside nilearn) and the bundled 2 mm sample (MR, tag "mr");
- four CT-like phantoms (``ContrastiveSegLib.evaluation.phantoms``, seeds 101-104: none of the benchmark's seeds 12-14),
  tag "ct".
The MNI template is also the image of the brain benchmark tasks: pretraining sees its voxels (never its labels),
which is what ``segment --adapt`` does on any scan; docs/methods.md says so beside the ablation.

Every method gets the same wall-clock budget (``--minutes`` of training on one CPU thread), so the ablation compares
methods at equal cost. Each run is one command line, recorded in models.json with the file's sha256.

The files' headers record the corpus by file name only (``data.names``), never a folder of the machine that made
them; ``--headers-only`` rewrites the header of files made before that rule (the tensors are kept byte for byte)
and updates their sha256 in models.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's ContrastiveSegLib, not an older installed one

from ContrastiveSegLib.evaluation.phantoms import make_ct_phantom, phantom_to_sitk  # noqa: E402
from ContrastiveSegLib.data.sample import _nilearn_paths  # noqa: E402
from ContrastiveSegLib.paths import sample_data_dir  # noqa: E402
from ContrastiveSegLib.training.checkpoint import absolute_paths, file_name  # noqa: E402
from ContrastiveSegLib.zoo.weights import HEADER_KEY, load_weights, sha256  # noqa: E402

METHODS = ("simclr", "selfpaced", "ideal", "lrc", "mixcl")
PHANTOM_SEEDS = (101, 102, 103, 104)
PHANTOM_SHAPE, PHANTOM_SPACING = (96, 192, 192), (1.6, 1.6, 2.5)  # as the benchmark's CT tasks
DESCRIPTIONS = {
    "simclr": "instance contrast on the encoder output (the global baseline)",
    "selfpaced": "self-paced supervised contrast over slice position, volume and modality meta-labels",
    "ideal": "IDEAL dense local contrast at corresponding locations of two views",
    "lrc": "LRC Felzenszwalb superpixel region contrast on top of the global loss",
    "mixcl": "MixCL identity + reconstruction consistency (label term unused: no labels in the corpus)",
}


def write_corpus(folder: Path) -> tuple[list[Path], Path]:
    """The pretraining volumes and a 'path,tag' CSV of their modality tags."""
    volumes: list[tuple[Path, str]] = [(Path(_nilearn_paths()[0]), "mr"),
                                       (sample_data_dir() / "mni152_t1_2mm.nii.gz", "mr")]
    for seed in PHANTOM_SEEDS:
        image, _ = phantom_to_sitk(make_ct_phantom(PHANTOM_SHAPE, PHANTOM_SPACING, seed, num_organs=5))
        path = folder / f"ct_phantom_{seed}.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True)
        volumes.append((path, "ct"))
    tags = folder / "tags.csv"
    tags.write_text("".join(f"{path},{tag}\n" for path, tag in volumes))
    return [path for path, _ in volumes], tags


def pretrain_command(method: str, volumes: list[Path], tags: Path, minutes: float, output: Path) -> list[str]:
    return [sys.executable, "-m", "ContrastiveSegLib", "pretrain", *map(str, volumes), "--method", method,
            "--tags", str(tags), "--minutes", str(minutes), "--batch-size", "8", "--patch", "128",
            "--axis", "k", "--seed", "0", "--device", "cpu", "--progress", "none", "-o", str(output)]


def recorded_command(method: str, minutes: float) -> str:
    """The command as models.json records it (corpus paths replaced by what they are)."""
    return (f"contrastiveseg pretrain MNI152_T1_1mm mni152_t1_2mm ct_phantom_{{101..104}} --method {method} "
            f"--tags tags.csv --minutes {minutes:g} --batch-size 8 --patch 128 --axis k --seed 0 --device cpu "
            f"(OMP_NUM_THREADS=1; Resources/Models/make_encoders.py)")


def rewrite_header(path: Path) -> None:
    """Record the corpus by file name in ``path``'s header; the tensors are written back unchanged."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    header = json.loads(metadata[HEADER_KEY])
    data = header.get("data", {})
    header["data"] = {**data, "names": [file_name(name) for name in data.get("names", [])]}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={**metadata, HEADER_KEY: json.dumps(header)})
    written = load_file(str(tmp))
    if written.keys() != tensors.keys() or not all(written[k].equal(v) for k, v in tensors.items()):
        tmp.unlink()
        raise SystemExit(f"{path}: the rewritten tensors differ; nothing replaced")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one CPU thread each")
    parser.add_argument("--headers-only", action="store_true",
                        help="rewrite the existing files' headers (names, not paths) and their sha256; no training")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    manifest_path = HERE / "models.json"
    entries = {e["name"]: e for e in json.loads(manifest_path.read_text())} if manifest_path.is_file() else {}
    if args.headers_only:
        for method in args.methods:
            path = HERE / f"{method}.safetensors"
            rewrite_header(path)
            entries[method]["sha256"] = sha256(path)  # every other field of the entry stays as it is
            print(f"{method}: header rewritten, sha256 {entries[method]['sha256'][:12]}", flush=True)
        manifest_path.write_text(json.dumps([entries[m] for m in METHODS if m in entries], indent=2) + "\n")
        return
    with tempfile.TemporaryDirectory() as tmp:
        volumes, tags = write_corpus(Path(tmp))

        def run(method: str) -> str:
            output = HERE / f"{method}.safetensors"
            command = pretrain_command(method, volumes, tags, args.minutes, output)
            print("running:", shlex.join(command), flush=True)
            subprocess.run(command, env=env, check=True)
            return method

        with ThreadPoolExecutor(args.jobs) as pool:
            for method in pool.map(run, args.methods):
                _, header = load_weights(HERE / f"{method}.safetensors", kind="encoder")
                leaks = absolute_paths(header)
                if leaks:  # the build machine's folders must not ship
                    raise SystemExit(f"{method}.safetensors: header fields {leaks} hold absolute paths")
                previous = entries.get(method, {})
                entries[method] = {
                    "name": method, "file": f"{method}.safetensors", "method": method,
                    "description": DESCRIPTIONS[method],
                    "data": "MNI152 2009a T1 1 mm + 2 mm (nilearn, bundled sample), 4 CT phantoms (seeds 101-104)",
                    "command": recorded_command(method, args.minutes),
                    "steps": header.get("steps"), "seconds": header.get("seconds"),
                    "input": header.get("input"),
                    "features": header.get("features"),
                    "sha256": sha256(HERE / f"{method}.safetensors"),
                    # the default is chosen by the ablation (benchmarks/results/ablation.md), by hand, and kept here
                    **({"default": True} if previous.get("default") else {})}
                print(f"{method}: {entries[method]['steps']} steps, sha256 {entries[method]['sha256'][:12]}",
                      flush=True)
    ordered = [entries[m] for m in METHODS if m in entries]
    manifest_path.write_text(json.dumps(ordered, indent=2) + "\n")


if __name__ == "__main__":
    main()
