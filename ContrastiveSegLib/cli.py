"""``contrastiveseg``: the command line over :mod:`ContrastiveSegLib.api`.

Every failure the user can cause ends in one line on stderr (``contrastiveseg: error: ...``) and exit code 2;
a cancelled run (Ctrl-C, SIGTERM or SIGHUP, at any moment) exits 130 with a line naming any output already in
place (the outputs move into place together, after the whole run succeeded). With ``--progress json`` stdout
carries one JSON object per line (stage, step, of, loss, eta_s, message) for the Slicer module and other front
ends; the last one (stage "done") holds the run's summary under ``summary``. Off a terminal, ``segment`` logs its
stages on stderr (:class:`~ContrastiveSegLib.progress.StageLog`), from the point where no input can be refused any
more.

``segment``, ``finetune`` and ``predict`` end with a summary (time per stage, device and threads, encoder, plane,
volume per label, Dice against ``--reference``, files written): on stdout at a terminal, else on stderr, so that
stdout stays the JSON lines under ``--progress json``. torch runs on ``--threads`` threads (default:
:func:`ContrastiveSegLib.threads.default_threads`, which leaves one CPU free).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ContrastiveSegLib import options
from ContrastiveSegLib.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_INTERNAL, Cancelled, InputError, OutOfMemory
from ContrastiveSegLib.progress import Cancellation, ProgressPrinter, open_standard_streams, writing
from ContrastiveSegLib.signals import CANCEL_SIGNALS, early_signal
from ContrastiveSegLib.threads import add_threads_option, apply_threads, choose_threads, settle_environment

# A label map of painted structures holds a few values; an image holds hundreds or thousands. More than this many
# distinct values in LABELS means the arguments were most likely given the other way round (the case:
# a 241-class model trained without a word).
MAX_LABEL_VALUES = 50
_MAX_FLOAT_LABEL = 2.0**53  # the largest whole number a float64 holds exactly


class _ArgumentParser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage already; keep its message to one line (no usage block of a dozen lines before
    the words that matter), with where to look for the rest."""

    def error(self, message: str) -> None:  # pragma: no cover - exercised through main()
        raise InputError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------------------------- progress output
def _default_progress(command: str) -> str:
    """A bar at a terminal; elsewhere (a log, a pipe) stage lines on stderr for the commands that train or predict,
    else nothing."""
    if sys.stderr.isatty():
        return "bar"
    return "log" if command in ("segment", "finetune", "predict") else "none"


# ----------------------------------------------------------------------------------------------- arguments
def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--axis", choices=sorted(options.AXIS_LETTERS), help="annotation axis as an image index "
                        "axis (k = slices of the third index, axial for most scans); found automatically if omitted")
    # No choices= for --preset and --device: main() checks them (options.check_*), so that a near miss gets a
    # "did you mean" and, under --progress json, the error event too.
    parser.add_argument("--preset", default=options.DEFAULT_PRESET, help=options.preset_help())
    from ContrastiveSegLib.zoo.registry import encoder_help

    parser.add_argument("--encoder", default=None, help="shipped encoder name, a .safetensors file, or "
                        f"'{options.RANDOM_INIT}' ({encoder_help()})")
    parser.add_argument("--init-model", type=Path, help="continue fine-tuning from this model (refinement)")
    parser.add_argument("--steps", type=int, help="fine-tuning steps (overrides the preset)")
    parser.add_argument("--batch-size", type=int, help="fine-tuning batch size (overrides the preset)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--adapt", metavar="METHOD", help="first pretrain the encoder on this scan alone with a "
                        "pretraining method (see 'contrastiveseg methods'), starting from --encoder if given")
    parser.add_argument("--adapt-steps", type=int, default=options.ADAPT_STEPS,
                        help=f"steps of --adapt (default {options.ADAPT_STEPS})")
    parser.add_argument("--consistency", choices=options.CONSISTENCY_MODES, default=options.DEFAULT_CONSISTENCY,
                        help="bidirectional: two decoders label the unannotated slices for each other (IDEAL); "
                             f"default {options.DEFAULT_CONSISTENCY}")


def _training_options(args) -> dict:
    """The keyword arguments of api.finetune / api.segment that come from _add_training_options."""
    return {"axis": options.axis_index(args.axis) if args.axis else None, "preset": args.preset,
            "encoder": args.encoder, "init_model": _load_init_model(args), "seed": args.seed, "steps": args.steps,
            "batch_size": args.batch_size, "adapt": args.adapt, "adapt_steps": args.adapt_steps,
            "consistency": args.consistency}


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=options.DEFAULT_DEVICE, help=options.device_help())
    add_threads_option(parser)
    parser.add_argument("--progress", choices=options.PROGRESS_MODES, default=None,
                        help="progress display: json lines on stdout (for front ends), a bar on stderr, or none "
                             "(default: a bar on a terminal; else stage lines with the seconds elapsed on stderr)")


def _add_prediction_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probabilities", type=Path, metavar="PROBS", help="also write per-class probabilities "
                        "(4D volume, channel c = the c-th label value, background first; the header records them)")
    parser.add_argument("--tta", action="store_true", help="average with a left-right flipped pass")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="keep components that touch no annotated voxel of their class")
    parser.add_argument("--no-shape-prior", action="store_true",
                        help="do not weigh in the painted outlines interpolated between the painted slices "
                             "(contour prior) nor Slicer's grow-cut from them")
    parser.add_argument("--reference", type=Path, metavar="LABELS", help="a full reference label map on the "
                        "image's grid: the summary gives Dice and the volume difference per label against it (with "
                        "--progress json also the final event, under summary.reference)")
    parser.add_argument("--overlay", type=Path, metavar="PNG", help="also draw a PNG montage of slices with the "
                        "segmentation (and the reference) over the image")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="contrastiveseg", description="Segment a whole 3D volume from a few annotated "
                             "slices (few-label fine-tuning with contrastively pretrained encoders).")
    from ContrastiveSegLib import __version__

    parser.add_argument("--version", action="version", version=f"contrastiveseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser, metavar="COMMAND",
                                help="what to do; 'contrastiveseg COMMAND --help' describes each")

    seg = sub.add_parser("segment", help="fine-tune on the annotated slices and segment the whole volume")
    seg.add_argument("image", type=Path, help="volume: .nii/.nii.gz/.nrrd/.mha or a DICOM series folder")
    seg.add_argument("labels", type=Path, help="label map on the image grid with a few annotated slices "
                     "(255 = not annotated)")
    seg.add_argument("-o", "--output", type=Path, required=True, help="output label map")
    seg.add_argument("--model-out", type=Path, help="also save the fine-tuned model (.safetensors)")
    _add_training_options(seg)
    _add_prediction_options(seg)
    _add_common_options(seg)

    fin = sub.add_parser("finetune", help="fine-tune on the annotated slices and save the model")
    fin.add_argument("image", type=Path, help="volume: .nii/.nii.gz/.nrrd/.mha or a DICOM series folder")
    fin.add_argument("labels", type=Path, help="label map on the image grid with a few annotated slices "
                     "(255 = not annotated)")
    fin.add_argument("-o", "--output", type=Path, required=True, help="model file (.safetensors)")
    _add_training_options(fin)
    _add_common_options(fin)

    pre = sub.add_parser("predict", help="segment a volume with a fine-tuned model")
    pre.add_argument("image", type=Path, help="volume: .nii/.nii.gz/.nrrd/.mha or a DICOM series folder")
    pre.add_argument("--model", type=Path, required=True, help="model written by finetune / segment --model-out")
    pre.add_argument("--labels", type=Path, help="this scan's sparse annotation, if any: its painted "
                     "slices are kept and guide the shape prior and the post-processing")
    pre.add_argument("-o", "--output", type=Path, required=True, help="output label map")
    _add_prediction_options(pre)
    _add_common_options(pre)

    demo = sub.add_parser("demo", help="run the whole job on the bundled MNI152 sample and compare with Slicer's "
                          "own tools")
    from ContrastiveSegLib.demo import add_demo_arguments

    add_demo_arguments(demo)
    _add_common_options(demo)

    enc = sub.add_parser("encoders", help="list the shipped pretrained encoders")
    enc.add_argument("--json", action="store_true", help="machine-readable output")

    from ContrastiveSegLib.cli_pretrain import add_methods_parser, add_pretrain_parser

    add_pretrain_parser(sub)  # adds its own --device, --threads and --progress
    add_methods_parser(sub)
    from ContrastiveSegLib.web.cli import add_web_parser

    add_web_parser(sub)
    return parser


# ----------------------------------------------------------------------------------------------- inputs
_SWAP_HINT = ("; did you swap the image and the labels? The image comes first: contrastiveseg {command} IMAGE "
              "LABELS")
_PREDICT_HINT = "; is it an image rather than this scan's sparse label map?"
_REFERENCE_HINT = "; is it an image rather than a label map?"


def _distinct_values(array, limit: int) -> tuple[int, bool]:
    """How many distinct values other than 0 and 255 ``array`` holds, and whether that count is exact. A strided
    sample of about a million voxels is looked at first: an image passed as labels shows hundreds of values there
    already, and then the whole volume (up to a few hundred million voxels) is not sorted for nothing."""
    flat = array.ravel()
    sample = flat[::max(1, flat.size // 1_000_000)]
    count = _count_values(sample)
    if count > limit or sample.size == flat.size:
        return count, sample.size == flat.size
    return _count_values(flat), True


def _count_values(flat) -> int:
    import numpy as np

    if flat.dtype.kind in "ui" and flat.dtype.itemsize <= 2:  # label maps: a histogram, linear time, no sort
        low = int(flat.min())
        shifted = flat.astype(np.int32) - low if low < 0 else flat
        present = np.flatnonzero(np.bincount(shifted)) + min(low, 0)
    else:
        present = np.unique(flat)
    return int(np.count_nonzero((present != 0) & (present != 255)))


def _check_label_map(volume, path: Path, what: str, hint: str) -> None:
    """Refuse, before any work, a label map that looks like an image (the arguments swapped, or the wrong file):
    non-integer values, or more distinct values than painted structures ever have (:data:`MAX_LABEL_VALUES`)."""
    import numpy as np

    array = volume.array
    if np.issubdtype(array.dtype, np.floating):
        # Slab by slab: no second full-size copy of a large float volume.
        for slab in array:
            # Whole numbers beyond 2**53 are not exact as floats and overflow every integer type a label map
            # is read into (1e20 became -9223372036854775808).
            bad = ~np.isfinite(slab) | (slab != np.round(slab)) | (np.abs(slab) > _MAX_FLOAT_LABEL)
            if bad.any():
                example = float(slab[bad].flat[0])
                if np.isfinite(example) and example == round(example):
                    raise InputError(f"{what} {path} hold {example:g}, beyond any label value (at most "
                                     f"{_MAX_FLOAT_LABEL:.0f}){hint}")
                raise InputError(f"{what} are not integers: {path} holds {example:g}; a label map holds whole "
                                 f"numbers (0 = background){hint}")
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise InputError(f"{what} must hold integers, got {array.dtype} in {path}{hint}")
    count, exact = _distinct_values(array, MAX_LABEL_VALUES)
    if count > MAX_LABEL_VALUES:
        raise InputError(f"{what} {path} hold {'' if exact else 'at least '}{count} distinct values; a label map of "
                         f"painted structures holds at most {MAX_LABEL_VALUES}{hint}")


def _read_inputs(image_path: Path, labels_path: Path | None, reference_path: Path | None = None, *,
                 hint: str = ""):
    """The image, the sparse labels and the reference as Volumes (None where not given), on one grid, the label
    maps checked for looking like images."""
    from ContrastiveSegLib.io.volume import grid_difference, read_volume

    image = read_volume(image_path, what="image")

    def label_map(path: Path | None, what: str, description: str, map_hint: str):
        """The label map at ``path`` on the image's grid and looking like a label map, or None."""
        if path is None:
            return None
        volume = read_volume(path, what=what)
        difference = grid_difference(image, volume)
        if difference is not None:
            raise InputError(f"image and {what} are on different grids: {difference}")
        _check_label_map(volume, path, description, map_hint)
        return volume

    return (image, label_map(labels_path, "labels", "labels", hint),
            label_map(reference_path, "reference", "reference labels", _REFERENCE_HINT))


def _check_outputs(*paths: Path | None, volumes=(), models=(), pictures=()) -> None:
    """Refuse, before any work, outputs that cannot be written (missing or read-only folder, a folder or FIFO in
    the way), of an unknown type, or one file named for two outputs (the second would replace the first)."""
    from ContrastiveSegLib.io.volume import check_volume_suffix, check_writable

    seen: dict[str, Path] = {}
    for path in paths:
        if path is None:
            continue
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            also = "" if str(seen[key]) == str(path) else f" (also as {path})"
            raise InputError(f"{seen[key]} is given for two outputs{also}; give each output its own file")
        seen[key] = path
    for path in paths:
        if path is not None:
            check_writable(path)
    for path in volumes:
        if path is not None:
            check_volume_suffix(path)
    for path in models:
        if path is not None and path.suffix != ".safetensors":
            raise InputError(f"model file {path} must end in .safetensors")
    for path in pictures:
        if path is not None and path.suffix.lower() != ".png":
            raise InputError(f"overlay {path} must end in .png")


# argparse destinations of the files a command reads and writes (every command's, pretrain's included).
_INPUT_ARGS = {"image": "image", "labels": "labels", "reference": "reference", "model": "model",
               "init_model": "model to refine", "tags": "tags file", "data": "data"}
_OUTPUT_ARGS = {"output": "output", "probabilities": "probabilities", "model_out": "model output",
                "overlay": "overlay", "checkpoint": "checkpoint"}


def _given_paths(args, names: dict) -> list:
    """(what, Path) for each path option of ``names`` that ``args`` has (a list option gives one per item)."""
    found = []
    for name, what in names.items():
        value = getattr(args, name, None)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Path):
                found.append((what, item))
    return found


def _check_paths(args) -> None:
    """Before anything is read (and before torch loads): a missing model file, relative paths under a deleted
    working folder, and an output that is an input
    (``-o`` naming the image, a hard link to it, ``sub/../image.nii.gz``): refused in one line. A checkpoint may
    be the one resumed from (that is how a resumed pretraining keeps writing it)."""
    from ContrastiveSegLib.io.files import check_input_file, check_working_folder, refuse_output_is_input

    for path in (getattr(args, "init_model", None), getattr(args, "model", None)):
        if path is not None:  # a missing model file in a second, not after torch has loaded
            check_input_file(path, "model")
    inputs = _given_paths(args, _INPUT_ARGS)
    encoder = getattr(args, "encoder", None)
    if isinstance(encoder, str) and encoder.strip() and os.path.lexists(encoder):
        inputs.append(("encoder", Path(encoder)))
    resume = getattr(args, "resume", None)
    outputs = _given_paths(args, _OUTPUT_ARGS)
    check_working_folder([path for _, path in inputs + outputs] + [resume])
    refuse_output_is_input([o for o in outputs if o[0] != "checkpoint"],
                           inputs + ([("checkpoint to resume", resume)] if resume is not None else []))
    refuse_output_is_input([o for o in outputs if o[0] == "checkpoint"], inputs)


def _load_init_model(args):
    if getattr(args, "init_model", None) is None:
        return None
    from ContrastiveSegLib.model import TrainedModel

    return TrainedModel.load(args.init_model)


# ----------------------------------------------------------------------------------------------- torch and timing
def _start_torch(args) -> None:
    """Size torch's thread pools (``args.threads``, resolved by main) before its first operation; the previous size
    is kept on ``args`` so that main can restore it for an in-process caller."""
    previous, _ = apply_threads(args.threads)
    if getattr(args, "threads_before", None) is None:
        args.threads_before = previous


def _restore_threads(args) -> None:
    previous = getattr(args, "threads_before", None)
    if previous is not None:
        import torch

        torch.set_num_threads(previous)


class _Clock:
    """Wall seconds per stage, in the order the stages ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _device_name(device: str) -> str:
    """The device a run used, in words: ``cpu``, ``cuda:0 (NVIDIA H200)``."""
    from ContrastiveSegLib.device import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        import torch

        return f"{resolved} ({torch.cuda.get_device_name(resolved)})"
    return str(resolved)


def _new_summary(command: str, args, model, axis: int | None, labels):
    """A RunSummary with what every command reports: device, threads, encoder, plane and its annotated slices."""
    import torch

    from ContrastiveSegLib.io.annotations import annotated_slice_indices
    from ContrastiveSegLib.report import RunSummary, read_label_names

    summary = RunSummary(command, device=_device_name(args.device), threads=torch.get_num_threads(),
                         encoder=None if model is None else model.encoder, axis=axis)
    if command == "predict":  # the model was fine-tuned; its encoder is only where that started
        summary.encoder, summary.model = None, f"{args.model} (fine-tuned from encoder {model.encoder})"
    if getattr(args, "labels", None) is not None:
        summary.label_names = read_label_names(args.labels)
    if labels is not None and axis is not None:
        summary.annotated_slices = int(len(annotated_slice_indices(labels.array, axis)))
    return summary


def _summary_stream(progress):
    """Where the summary goes: stdout at a terminal, else stderr (stdout may be JSON lines, or a pipe the caller
    reads for something else)."""
    if getattr(progress, "mode", None) == "json" or not sys.stdout.isatty():
        return sys.stderr
    return sys.stdout


def _finish(summary, clock: _Clock, progress, message: str, **extra) -> None:
    """The final progress event (with the summary) and the printed summary."""
    from ContrastiveSegLib.progress import emit

    summary.seconds = dict(clock.seconds)
    if summary.files:  # every file written, not only the last (the probabilities beside the label map, ...)
        message = "wrote " + ", ".join(path for path, _ in summary.files)
    emit(progress, "done", message, **extra, summary=summary.as_dict())
    print("\n".join(summary.lines()), file=_summary_stream(progress), flush=True)


# ----------------------------------------------------------------------------------------------- outputs
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _verify_png(path: Path) -> None:
    from ContrastiveSegLib.io.volume import IncompleteWriteError

    with open(path, "rb") as handle:
        if handle.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
            raise IncompleteWriteError("the picture written is not a PNG")


def _overlay_writer(image, layers: dict, axis: int, annotated, title: str):
    """``write(path)`` drawing the demo's montage (:mod:`ContrastiveSegLib.evaluation.pictures`): the middle annotated
    slice and the unannotated slices farthest from any annotation, each label layer over the image."""
    from ContrastiveSegLib.evaluation.pictures import montage_slices, overlay_montage

    extent = layers.get("reference", next(iter(layers.values())))
    rows = montage_slices(extent, axis, annotated, rows=4)

    def write(path: Path) -> None:
        overlay_montage(image.array, layers, axis, rows, path, spacing=image.spacing, direction=image.direction,
                        annotated=annotated, title=title)

    return write


def _overlay(args, image, segmentation, reference, labels, axis: int, summary):
    """The overlay writer for ``--overlay`` (None without it): reference (if any) and segmentation columns, the
    segmentation's mean Dice against the reference in its title."""
    if getattr(args, "overlay", None) is None:
        return None
    import numpy as np

    from ContrastiveSegLib.io.annotations import annotated_slice_indices

    layers = {} if reference is None else {"reference": reference.array}
    name = "segmentation"
    if summary.reference:
        name += f" (mean Dice {np.mean([row['dice'] for row in summary.reference]):.3f})"
    layers[name] = segmentation
    annotated = [] if labels is None else [int(s) for s in annotated_slice_indices(labels.array, axis)]
    title = f"{args.image.name}: slices along {options.AXIS_LETTERS[axis]}"
    return _overlay_writer(image, layers, axis, annotated, title)


def _write_result(result, image, args, *, channels=None, overlay=None, cancel=None) -> list[tuple[str, str]]:
    """Write the outputs of a segment or predict run together; returns (path, what) of each file written. A
    :class:`~ContrastiveSegLib.progress.Cancellation` ``cancel`` records each file as it moves into place."""
    from ContrastiveSegLib.io.volume import channel_labels_metadata, stage, stage_volume

    # Every output is written and read back beside its destination first; only when all of them are complete do
    # they move into place (probabilities and model first, the label map last: the label map appearing means the
    # run is complete). A full disk or Ctrl-C while writing any of them leaves none.
    staged, written = [], []
    try:
        if getattr(args, "probabilities", None) is not None and result.probabilities is not None:
            metadata = None if channels is None else channel_labels_metadata(channels)
            staged.append(stage_volume(image.like(result.probabilities), args.probabilities, metadata=metadata))
            written.append((str(args.probabilities), "probabilities"))
        if getattr(args, "model_out", None) is not None and result.model is not None:
            staged.append(stage(args.model_out, result.model.save))
            written.append((str(args.model_out), "model"))
        if overlay is not None:
            staged.append(stage(args.overlay, overlay, verify=_verify_png))
            written.append((str(args.overlay), "overlay picture"))
        staged.append(stage_volume(image.like(result.labels), args.output))
        written.append((str(args.output), "label map"))
        with writing(cancel, written) as moved:  # a Ctrl-C now waits until all are in place
            for item, (path, what) in zip(staged, written):
                item.commit()
                moved(path, what)
    finally:
        for item in staged:
            item.discard()
    return written


def _evaluate(summary, result_labels, reference, spacing, label_values, clock: _Clock, args) -> None:
    """Volumes per label of the result, and Dice / volume difference against ``--reference``."""
    from ContrastiveSegLib.report import label_volumes, reference_scores

    values = None if label_values is None else [v for v in label_values if v != 0]
    summary.volumes = label_volumes(result_labels, spacing, values=values)
    if reference is not None:  # the only part worth a line of the time summary
        with clock("evaluate"):
            summary.reference = reference_scores(result_labels, reference.array, spacing)
        summary.reference_path = str(args.reference)


# ----------------------------------------------------------------------------------------------- commands
def cmd_segment(args, progress, cancel) -> int:
    from ContrastiveSegLib.progress import emit

    _check_outputs(args.output, args.probabilities, args.model_out, args.overlay,
                   volumes=(args.output, args.probabilities), models=(args.model_out,), pictures=(args.overlay,))
    clock = _Clock()
    emit(progress, "load", f"reading {args.image}")
    with clock("load"):
        image, labels, reference = _read_inputs(args.image, args.labels, args.reference,
                                                hint=_SWAP_HINT.format(command="segment"))
    with clock("import torch"):  # its own line of the summary: 20 s on a busy machine, whatever the file
        _start_torch(args)
        from ContrastiveSegLib import api  # torch loads here, after the cheap checks above
    result = api.segment(image.array, labels.array, image.spacing, device=args.device, **_training_options(args),
                         probabilities=args.probabilities is not None, flip_tta=args.tta,
                         postprocess=not args.no_postprocess, shape_prior=not args.no_shape_prior,
                         progress=progress, cancel=cancel)
    clock.seconds.update(result.seconds)
    if result.message:
        print(f"contrastiveseg: {result.message}", file=sys.stderr)
    model = result.model
    summary = _new_summary("segment", args, model, result.axis, labels)
    if result.message:
        summary.notes.append(result.message)
    _evaluate(summary, result.labels, reference, image.spacing, None if model is None else model.label_values,
              clock, args)
    channels = None if model is None or result.probabilities is None else tuple(model.label_values)
    summary.channels = channels
    emit(progress, "write", f"writing {args.output}")
    with clock("write"):
        summary.files = _write_result(result, image, args, channels=channels, cancel=cancel,
                                      overlay=_overlay(args, image, result.labels, reference, labels, result.axis,
                                                      summary))
    _finish(summary, clock, progress, f"wrote {args.output}", seconds=result.seconds)
    return 0


def cmd_finetune(args, progress, cancel) -> int:
    from ContrastiveSegLib.progress import emit
    from ContrastiveSegLib.report import label_volumes

    _check_outputs(args.output, models=(args.output,))
    clock = _Clock()
    emit(progress, "load", f"reading {args.image}")
    with clock("load"):
        image, labels, _ = _read_inputs(args.image, args.labels, hint=_SWAP_HINT.format(command="finetune"))
    with clock("import torch"):
        _start_torch(args)
        from ContrastiveSegLib import api
    with clock("finetune"):
        model = api.finetune(image.array, labels.array, image.spacing, device=args.device,
                             **_training_options(args), progress=progress, cancel=cancel)
    emit(progress, "write", f"writing {args.output}")
    with clock("write"), writing(cancel, [(args.output, "model")]) as moved:
        model.save(args.output)
        moved(args.output, "model")
    summary = _new_summary("finetune", args, model, model.axis, labels)
    summary.volumes = label_volumes(labels.array, image.spacing, values=[v for v in model.label_values if v != 0])
    summary.volumes_of = "painted"
    summary.files = [(str(args.output), "model")]
    _finish(summary, clock, progress, f"wrote {args.output}")
    return 0


def cmd_predict(args, progress, cancel) -> int:
    from ContrastiveSegLib.progress import emit

    _check_outputs(args.output, args.probabilities, args.overlay, volumes=(args.output, args.probabilities),
                   pictures=(args.overlay,))
    clock = _Clock()
    emit(progress, "load", f"reading {args.image}")
    with clock("load"):
        image, labels, reference = _read_inputs(args.image, args.labels, args.reference, hint=_PREDICT_HINT)
    with clock("import torch"):
        _start_torch(args)
        from ContrastiveSegLib import api
        from ContrastiveSegLib.model import TrainedModel
    with clock("load"):
        model = TrainedModel.load(args.model)
        if labels is not None:
            from ContrastiveSegLib.io.annotations import decode_annotation

            values = decode_annotation(labels.array, model.axis).label_values
            if set(values) - set(model.label_values):
                raise InputError(f"labels hold values {sorted(set(values) - set(model.label_values))} that the "
                                 f"model does not know (model classes {list(model.label_values)})")
    with clock("predict"):
        result = api.predict(model, image.array, labels=None if labels is None else labels.array,
                             spacing=image.spacing, device=args.device, probabilities=args.probabilities is not None,
                             flip_tta=args.tta, postprocess=not args.no_postprocess,
                             shape_prior=not args.no_shape_prior, progress=progress, cancel=cancel)
    summary = _new_summary("predict", args, model, model.axis, labels)
    _evaluate(summary, result.labels, reference, image.spacing, model.label_values, clock, args)
    channels = None if result.probabilities is None else tuple(model.label_values)
    summary.channels = channels
    emit(progress, "write", f"writing {args.output}")
    with clock("write"):
        summary.files = _write_result(result, image, args, channels=channels, cancel=cancel,
                                      overlay=_overlay(args, image, result.labels, reference, labels, model.axis,
                                                      summary))
    _finish(summary, clock, progress, f"wrote {args.output}")
    return 0


def cmd_encoders(args, progress, cancel) -> int:
    from ContrastiveSegLib.progress import write_stdout
    from ContrastiveSegLib.zoo.registry import default_encoder, shipped_encoders

    # 'random' is listed like the shipped ones, and the default is marked whichever it is (the same name as
    # segment --help, the README and the run summary give).
    default = default_encoder()
    entries = [{"name": options.RANDOM_INIT, "method": options.RANDOM_INIT,
                "description": "random initialisation (no pretraining)"}, *shipped_encoders()]
    for entry in entries:
        entry["default"] = entry["name"] == default
    if args.json:
        lines = [json.dumps(entries, indent=2)]
    else:
        lines = [f"{'name':<12} {'method':<10} {'steps':>6}  description"]
        for entry in entries:
            mark = " (default)" if entry["default"] else ""
            lines.append(f"{entry['name']:<12} {entry.get('method', ''):<10} {entry.get('steps') or '':>6}  "
                         f"{entry.get('description', '')}{mark}")
        if len(entries) > 1:
            lines.append(f"trained on: {entries[1].get('data', '')}; use one with 'segment --encoder NAME'")
    write_stdout("\n".join(lines) + "\n", "list of encoders")
    return 0


def cmd_demo(args, progress, cancel) -> int:
    from ContrastiveSegLib.demo import run_demo

    _start_torch(args)
    return run_demo(args, progress, cancel)


def cmd_pretrain(args, progress, cancel) -> int:
    from ContrastiveSegLib.cli_pretrain import run_pretrain

    _start_torch(args)
    return run_pretrain(args, progress, cancel)


def cmd_methods(args, progress, cancel) -> int:
    from ContrastiveSegLib.cli_pretrain import run_methods

    return run_methods(args, progress, cancel)


def cmd_web(args, progress, cancel) -> int:
    """The browser front end (ContrastiveSegLib.web, imported only here: it needs the 'web' extra)."""
    from ContrastiveSegLib.web.cli import run_web

    return run_web(args)


COMMANDS = {"segment": cmd_segment, "finetune": cmd_finetune, "predict": cmd_predict, "encoders": cmd_encoders,
            "demo": cmd_demo, "pretrain": cmd_pretrain, "methods": cmd_methods, "web": cmd_web}


# ----------------------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 internal error, 2 bad input, 130 cancelled: SIGINT, SIGTERM or
    SIGHUP at any moment, with the line naming what was written)."""
    open_standard_streams()  # before any file is opened: a closed fd 1 or 2 must not become an output's
    cancel = Cancellation()  # stops the run; the message says which outputs were already written
    printer = ProgressPrinter("none")
    _on_signal = cancel.on_signal

    previous = {s: signal.getsignal(s) for s in CANCEL_SIGNALS}
    if threading.current_thread() is threading.main_thread():
        for s in previous:
            signal.signal(s, _on_signal)
    args = None
    try:
        if early_signal() is not None:  # held by ``python -m ContrastiveSegLib`` while it started
            raise Cancelled("cancelled")
        args = build_parser().parse_args(argv)
        if hasattr(args, "progress"):
            printer = ProgressPrinter(args.progress or _default_progress(args.command))
        _check_arguments(args)
        return COMMANDS[args.command](args, printer if printer.mode != "none" else None, cancel)
    except InputError as error:
        return _fail(printer, str(error), EXIT_BAD_INPUT)
    except (Cancelled, KeyboardInterrupt):
        return _fail(printer, cancel.message(), EXIT_CANCELLED)
    except OutOfMemory as error:  # the GPU, even at batch size 1: its message says what to do
        return _fail(printer, str(error), EXIT_INTERNAL)
    except MemoryError:
        return _fail(printer, _host_memory_message(args), EXIT_INTERNAL)
    except Exception as error:  # the last resort: one line, the full trace only on request
        if os.environ.get("CONTRASTIVESEG_DEBUG"):
            raise
        return _fail(printer, f"internal error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                     " (set CONTRASTIVESEG_DEBUG=1 for the traceback)", EXIT_INTERNAL)
    finally:
        if threading.current_thread() is threading.main_thread():
            for s, handler in previous.items():
                signal.signal(s, handler)
        _restore_threads(args)


def _host_memory_message(args) -> str:
    """Out of host memory: what the command at hand can change (only the training commands have crops)."""
    if getattr(args, "command", None) in ("segment", "finetune"):
        return (f"out of memory; try smaller crops (--preset {options.LOW_MEMORY_PRESET}), a smaller --batch-size, "
                "or a machine with more memory")
    return "out of memory; try a machine with more memory"


def run() -> int:
    """The process's entry point (the ``contrastiveseg`` script, ``python -m ContrastiveSegLib``): :func:`main`,
    then the cancel signals ignored while the interpreter shuts down. Python puts back the default handlers while
    it finalises (a few tenths of a second after a torch run), and a SIGTERM then would kill a run that has
    finished and said so with -15 and no word."""
    code = main()
    for signum in CANCEL_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    return code


def _check_arguments(args) -> None:
    """Every check of the parsed arguments that needs no torch, before any work (about a second, against the 20 s
    that loading torch takes on a busy 2-core machine): threads (and OMP_NUM_THREADS, settled before torch loads),
    the options (:func:`ContrastiveSegLib.options.check_command_options`, the rules the API and the Slicer job
    apply too; the free-text ones normalised here), the paths."""
    if hasattr(args, "threads"):
        args.threads = choose_threads(args.threads)  # a bad --threads is one line before any work
        settle_environment(args.threads)
    for name, value in options.check_command_options(args.command, vars(args)).items():
        setattr(args, name, value)
    _check_paths(args)


def _fail(printer: ProgressPrinter, message: str, code: int) -> int:
    message = " ".join(message.split())  # one line, always
    printer.error(message, code)
    try:
        print(f"contrastiveseg: error: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr on a full device or closed: the exit code is all that is left
        pass
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
