"""``contrastiveseg pretrain`` and ``contrastiveseg methods``: the command-line half of pretraining.

``cli.py`` registers these with :func:`add_pretrain_parser` / :func:`add_methods_parser` and dispatches to
:func:`run_pretrain` / :func:`run_methods` (``(args, progress, cancel) -> exit code``); its ``main`` turns InputError
into one line and exit code 2. The same command runs under ``torchrun --nproc-per-node N -m ContrastiveSegLib
pretrain ...``; only rank 0 reports progress and writes files.
"""
from __future__ import annotations

import argparse
import csv
import json
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ContrastiveSegLib import options
from ContrastiveSegLib.errors import Cancelled, InputError
from ContrastiveSegLib.threads import add_threads_option

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def add_pretrain_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``pretrain`` subcommand (it brings its own ``--device``, ``--threads`` and ``--progress``).

    The method list in the help is not imported from the registry: that would load torch for every command,
    even a one-line refusal; an unknown --method is reported with the registry's list when the command runs."""
    p = subparsers.add_parser(
        "pretrain", help="self-supervised pretraining of an encoder on unlabelled volumes",
        description="Pretrain a 2.5D encoder on unlabelled volumes (files, folders, DICOM series) and write it as "
                    ".safetensors for 'segment --encoder'. Runs under torchrun for several GPUs or machines.")
    p.add_argument("data", nargs="+", type=Path, metavar="DATA", help="volume files or folders (searched "
                   "recursively for NIfTI, NRRD, MHA and DICOM series)")
    p.add_argument("--method", required=True, help="a pretraining method (see 'contrastiveseg methods')")
    p.add_argument("-o", "--output", type=Path, required=True, help="encoder file to write (.safetensors)")
    p.add_argument("--steps", type=int, help=f"stop after this many steps (default {options.PRETRAIN_STEPS} unless "
                   "--minutes is given)")
    p.add_argument("--minutes", type=float, help="stop after this much training time")
    p.add_argument("--batch-size", type=int, default=options.PRETRAIN_BATCH_SIZE,
                   help=f"crops per step and per process (default {options.PRETRAIN_BATCH_SIZE})")
    p.add_argument("--patch", type=int, default=options.PRETRAIN_PATCH,
                   help=f"crop size in pixels, a multiple of 16 (default {options.PRETRAIN_PATCH})")
    p.add_argument("--lr", type=float, default=options.PRETRAIN_LEARNING_RATE,
                   help=f"peak AdamW learning rate (default {options.PRETRAIN_LEARNING_RATE:g})")
    p.add_argument("--axis", choices=sorted(options.AXIS_LETTERS), default="k", help="slice along this image "
                   "index axis (default k: the slices of the third index, axial for most scans)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a method hyper-parameter (repeatable), e.g. --param temperature=0.2; lists are "
                        "comma-separated")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="write a checkpoint every N steps")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default: OUTPUT with .checkpoint.safetensors)")
    p.add_argument("--resume", type=Path, metavar="CKPT", help="continue from a checkpoint of the same method")
    p.add_argument("--tag-key", help="image metadata key whose value is a volume's tag meta-label "
                   "(e.g. 0008|0060, the DICOM modality)")
    p.add_argument("--tags", type=Path, metavar="CSV", help="CSV of 'path,tag' lines giving volumes' tags")
    p.add_argument("--pool-size", type=int, default=4, help="volumes held in memory at once (default 4)")
    p.add_argument("--cache-dir", type=Path, help="superpixel cache folder (default: the user cache folder)")
    p.add_argument("--features", default=None, help=argparse.SUPPRESS)  # encoder widths, for tests only
    p.add_argument("--device", default=options.DEFAULT_DEVICE, help=options.device_help())
    add_threads_option(p)  # per process: under torchrun, OMP_NUM_THREADS (torchrun sets 1) is the default
    p.add_argument("--progress", choices=options.PROGRESS_MODES, default=None,
                   help="progress display (default: a bar on a terminal, else none)")
    return p


def add_methods_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``methods`` subcommand."""
    p = subparsers.add_parser("methods", help="list the pretraining methods and their parameters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def parse_value(key: str, text: str, default: Any) -> Any:
    """``text`` converted to the type of ``default`` (bool, int, float, str, or a comma-separated list)."""
    try:
        if isinstance(default, bool):
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, (tuple, list)):
            kind = type(default[0]) if default else float
            return [kind(v) for v in text.split(",") if v.strip()]
        return text
    except ValueError:
        raise InputError(f"--param {key}={text}: expected a {type(default).__name__} like {default!r}") from None


def parse_params(method: str, items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> keyword arguments for :func:`ContrastiveSegLib.methods.get_method`."""
    from ContrastiveSegLib.methods import method_parameters

    try:
        known = method_parameters(method)
    except ValueError as error:
        raise InputError(str(error)) from None
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"--param expects KEY=VALUE, got '{item}'")
        if key not in known:
            raise InputError(f"method '{method}' has no parameter '{key}' (its parameters: "
                             f"{', '.join(known) or 'none'})")
        params[key] = parse_value(key, text.strip(), known[key])
    return params


def read_tags(path: Path, sources: list) -> list:
    """``sources`` with the tags of a CSV of 'path,tag' lines (paths as given or absolute); InputError naming the
    line for a malformed file."""
    if not path.is_file():
        raise InputError(f"tags file not found: {path}")
    tags = {}
    with open(path, newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 2:
                raise InputError(f"{path} line {number}: expected 'path,tag', got {','.join(row)!r}")
            tags[str(Path(row[0].strip()).resolve())] = row[1].strip()
    return [replace(s, tag=tags.get(str(s.path.resolve()), s.tag)) for s in sources]


def _cache_dir(args) -> Path:
    if args.cache_dir is not None:
        return args.cache_dir
    from ContrastiveSegLib.paths import user_cache_dir

    return user_cache_dir() / "superpixels"


def run_pretrain(args, progress, cancel) -> int:
    """``contrastiveseg pretrain``: check everything the user gave, pretrain, write the encoder. Exit code 0."""
    from ContrastiveSegLib.data.unlabelled import StreamConfig, find_volumes
    from ContrastiveSegLib.io.volume import check_writable
    from ContrastiveSegLib.methods import DEFAULT_FEATURES, method_class
    from ContrastiveSegLib.training.checkpoint import default_checkpoint_path
    from ContrastiveSegLib.training.pretrain import PretrainConfig, pretrain_encoder

    try:
        method_class(args.method)
    except ValueError as error:
        raise InputError(str(error)) from None
    params = parse_params(args.method, args.param)
    check_writable(args.output, what="encoder file")
    if not args.output.name.endswith(".safetensors"):
        raise InputError(f"encoder file {args.output} must end in .safetensors")
    checkpoint = args.checkpoint or default_checkpoint_path(args.output)
    if args.checkpoint_every:
        check_writable(checkpoint, what="checkpoint")
    features = DEFAULT_FEATURES
    if args.features:
        try:
            features = tuple(int(v) for v in args.features.split(","))
        except ValueError:
            raise InputError(f"--features expects 5 comma-separated widths, got {args.features}") from None
    try:
        config = PretrainConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                                learning_rate=args.lr, seed=args.seed, checkpoint_every=args.checkpoint_every,
                                checkpoint_path=checkpoint, resume=args.resume)
        stream = StreamConfig(pool_size=args.pool_size, cache_dir=_cache_dir(args))
        if args.patch < 16 or args.patch % 16:
            raise ValueError(f"--patch must be a multiple of 16, got {args.patch}")
    except ValueError as error:
        raise InputError(str(error)) from None
    sources = find_volumes(args.data)
    if args.tags is not None:
        sources = read_tags(args.tags, sources)
    started = int(time.time())  # whole seconds: some file systems keep mtimes that coarse
    try:
        job = pretrain_encoder(sources, args.method, args.output, config, params=params,
                               axis=options.axis_index(args.axis), features=features, patch=args.patch,
                               stream=stream, tag_key=args.tag_key, device=args.device, progress=progress,
                               cancel=cancel)
    except (Cancelled, KeyboardInterrupt):
        _note_checkpoint(cancel, checkpoint, started)
        raise
    if job.context.is_main:
        from ContrastiveSegLib.progress import emit

        emit(progress, "done", f"wrote {args.output}", seconds=round(job.result.seconds, 1), steps=job.result.steps)
    return 0


def _note_checkpoint(cancel, checkpoint: Path, started: float) -> None:
    """A cancelled pretraining keeps the checkpoint it wrote: say so in the cancel message (with how to resume),
    instead of "nothing was written". A checkpoint older than this run (the one resumed from) is not news."""
    from ContrastiveSegLib.progress import Cancellation

    try:
        written_now = checkpoint.is_file() and checkpoint.stat().st_mtime >= started
    except OSError:
        written_now = False
    if written_now and isinstance(cancel, Cancellation):
        cancel.written.append((str(checkpoint), f"checkpoint; continue with --resume {checkpoint}"))


def _shown(value: Any) -> str:
    """A parameter's default as ``--param`` takes it (a list comma-separated)."""
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def run_methods(args, progress, cancel) -> int:
    """``contrastiveseg methods``: one line per method, or JSON with keys, parameters and defaults."""
    from ContrastiveSegLib.methods import METHODS, method_parameters
    from ContrastiveSegLib.progress import write_stdout

    if args.json:
        entries = [{"name": name, "description": cls.description, "batch_keys": list(cls.required_keys),
                    "parameters": {k: list(v) if isinstance(v, tuple) else v
                                   for k, v in method_parameters(name).items()}}
                   for name, cls in METHODS.items()]
        text = json.dumps(entries, indent=2) + "\n"
    else:
        lines = []
        for name, cls in METHODS.items():
            lines.append(f"{name:<10} {cls.description}")
            parameters = method_parameters(name)
            if parameters:  # as the README promises: each method's parameters with their defaults
                lines.append(textwrap.fill("parameters: " + ", ".join(f"{k}={_shown(v)}" for k, v in parameters.items()),
                                           width=110, initial_indent=" " * 11, subsequent_indent=" " * 23))
        lines.append("\nset a parameter with pretrain --param KEY=VALUE (contrastiveseg methods --json: machine-readable)")
        text = "\n".join(lines) + "\n"
    write_stdout(text, "list of methods")  # stdout closed or its reader gone: one line on stderr, exit 2
    return 0
