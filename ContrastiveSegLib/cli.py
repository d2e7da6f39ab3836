"""``contrastiveseg``: the command line over :mod:`ContrastiveSegLib.api`.

Every failure the user can cause ends in one line on stderr (``contrastiveseg: error: ...``) and exit code 2;
a cancelled run (Ctrl-C, SIGTERM) exits 130; nothing is written unless the whole run succeeded. With
``--progress json`` stdout carries one JSON object per line (stage, step, of, loss, eta_s, message) for the
Slicer module and other front ends.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ContrastiveSegLib.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_INTERNAL, Cancelled, InputError

AXES = {"i": 2, "j": 1, "k": 0}  # ITK index axis -> axis of the (z, y, x) array


class _ArgumentParser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage already; keep its message to one line."""

    def error(self, message: str) -> None:  # pragma: no cover - exercised through main()
        self.print_usage(sys.stderr)
        raise InputError(message)


# ----------------------------------------------------------------------------------------------- progress output
class ProgressPrinter:
    """Turns progress events into JSON lines (``json``), a one-line terminal bar (``bar``) or nothing."""

    def __init__(self, mode: str):
        self.mode = mode
        self._last_bar = 0.0

    def __call__(self, event: dict) -> None:
        if self.mode == "json":
            print(json.dumps(event), flush=True)
        elif self.mode == "bar":
            now = time.monotonic()
            final = event.get("step") == event.get("of")
            if event.get("message"):
                sys.stderr.write("\r\033[K" + event["message"] + "\n")
            if event.get("of") and (final or now - self._last_bar > 0.2):
                self._last_bar = now
                done = event["step"] / event["of"]
                bar = "#" * int(done * 30)
                loss = f" loss {event['loss']:.4f}" if event.get("loss") is not None else ""
                eta = f" eta {event['eta_s']:.0f}s" if event.get("eta_s") is not None else ""
                sys.stderr.write(f"\r\033[K{event['stage']:>9} [{bar:<30}] {event['step']}/{event['of']}{loss}{eta}")
                if final:
                    sys.stderr.write("\n")
                sys.stderr.flush()

    def error(self, message: str, code: int) -> None:
        if self.mode == "json":
            print(json.dumps({"stage": "error", "message": message, "exit_code": code}), flush=True)


def _default_progress() -> str:
    return "bar" if sys.stderr.isatty() else "none"


# ----------------------------------------------------------------------------------------------- arguments
def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--axis", choices=sorted(AXES), help="annotation axis as an image index axis "
                        "(k = slices of the third index, axial for most scans); found automatically if omitted")
    parser.add_argument("--preset", default="default", help="fast | default (default: default)")
    parser.add_argument("--encoder", default=None, help="shipped encoder name, a .safetensors file, or 'none' "
                        "for random initialisation (default: the shipped default, see 'contrastiveseg encoders')")
    parser.add_argument("--init-model", type=Path, help="continue fine-tuning from this model (refinement)")
    parser.add_argument("--steps", type=int, help="fine-tuning steps (overrides the preset)")
    parser.add_argument("--batch-size", type=int, help="fine-tuning batch size (overrides the preset)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--adapt", metavar="METHOD", help="first pretrain the encoder on this scan alone with a "
                        "pretraining method (see 'contrastiveseg methods'), starting from --encoder if given")
    parser.add_argument("--adapt-steps", type=int, default=100, help="steps of --adapt (default 100)")
    parser.add_argument("--consistency", choices=("none", "bidirectional"), default="none",
                        help="bidirectional: two decoders label the unannotated slices for each other (IDEAL)")


def _training_options(args) -> dict:
    """The keyword arguments of api.finetune / api.segment that come from _add_training_options."""
    return {"axis": _axis(args), "preset": args.preset, "encoder": args.encoder,
            "init_model": _load_init_model(args), "seed": args.seed, "steps": args.steps,
            "batch_size": args.batch_size, "adapt": args.adapt, "adapt_steps": args.adapt_steps,
            "consistency": args.consistency}


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    parser.add_argument("--progress", choices=("json", "bar", "none"), default=None,
                        help="progress display (default: a bar on a terminal, else none)")


def _add_prediction_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probabilities", type=Path, help="also write per-class probabilities (4D volume)")
    parser.add_argument("--tta", action="store_true", help="average with a left-right flipped pass")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="keep components that touch no annotated voxel of their class")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="contrastiveseg", description="Segment a whole 3D volume from a few annotated "
                             "slices (few-label fine-tuning with contrastively pretrained encoders).")
    from ContrastiveSegLib import __version__

    parser.add_argument("--version", action="version", version=f"contrastiveseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

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
    fin.add_argument("image", type=Path)
    fin.add_argument("labels", type=Path)
    fin.add_argument("-o", "--output", type=Path, required=True, help="model file (.safetensors)")
    _add_training_options(fin)
    _add_common_options(fin)

    pre = sub.add_parser("predict", help="segment a volume with a fine-tuned model")
    pre.add_argument("image", type=Path)
    pre.add_argument("--model", type=Path, required=True, help="model written by finetune / segment --model-out")
    pre.add_argument("--labels", type=Path, help="this scan's sparse annotation, if any (used to post-process)")
    pre.add_argument("-o", "--output", type=Path, required=True, help="output label map")
    _add_prediction_options(pre)
    _add_common_options(pre)

    demo = sub.add_parser("demo", help="run the whole job on the bundled MNI152 sample and compare with Slicer's "
                          "own tools")
    from ContrastiveSegLib.demo import add_demo_arguments

    add_demo_arguments(demo)
    _add_common_options(demo)

    enc = sub.add_parser("encoders", help="list the shipped pretrained encoders")
    enc.add_argument("--json", action="store_true")

    from ContrastiveSegLib.cli_pretrain import add_methods_parser, add_pretrain_parser

    add_pretrain_parser(sub)  # adds its own --device and --progress
    add_methods_parser(sub)
    return parser


# ----------------------------------------------------------------------------------------------- commands
def _read_inputs(image_path: Path, labels_path: Path | None):
    from ContrastiveSegLib.io.volume import grid_difference, read_volume

    image = read_volume(image_path, what="image")
    labels = None
    if labels_path is not None:
        labels = read_volume(labels_path, what="labels")
        difference = grid_difference(image, labels)
        if difference is not None:
            raise InputError(f"image and labels are on different grids: {difference}")
    return image, labels


def _check_outputs(*paths: Path | None, volumes=(), models=()) -> None:
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


def _axis(args) -> int | None:
    return AXES[args.axis] if getattr(args, "axis", None) else None


def _load_init_model(args):
    if getattr(args, "init_model", None) is None:
        return None
    from ContrastiveSegLib.model import TrainedModel

    return TrainedModel.load(args.init_model)


def _write_result(result, image, args) -> None:
    from ContrastiveSegLib.io.volume import stage, stage_volume

    # Every output is written and read back beside its destination first; only when all of them are complete do
    # they move into place (probabilities and model first, the label map last: the label map appearing means the
    # run is complete). A full disk or Ctrl-C while writing any of them leaves none.
    staged = []
    try:
        if getattr(args, "probabilities", None) is not None and result.probabilities is not None:
            staged.append(stage_volume(image.like(result.probabilities), args.probabilities))
        if getattr(args, "model_out", None) is not None and result.model is not None:
            staged.append(stage(args.model_out, result.model.save))
        staged.append(stage_volume(image.like(result.labels), args.output))
        for item in staged:
            item.commit()
    finally:
        for item in staged:
            item.discard()


def cmd_segment(args, progress, cancel) -> int:
    from ContrastiveSegLib.progress import emit

    _check_outputs(args.output, args.probabilities, args.model_out, volumes=(args.output, args.probabilities),
                   models=(args.model_out,))
    emit(progress, "load", f"reading {args.image}")
    image, labels = _read_inputs(args.image, args.labels)
    from ContrastiveSegLib import api  # torch loads here, after the cheap checks above
    result = api.segment(image.array, labels.array, image.spacing, device=args.device, **_training_options(args),
                         probabilities=args.probabilities is not None, flip_tta=args.tta,
                         postprocess=not args.no_postprocess, progress=progress, cancel=cancel)
    if result.message:
        print(f"contrastiveseg: {result.message}", file=sys.stderr)
    emit(progress, "write", f"writing {args.output}")
    _write_result(result, image, args)
    emit(progress, "done", f"wrote {args.output}", seconds=result.seconds)
    return 0


def cmd_finetune(args, progress, cancel) -> int:
    from ContrastiveSegLib.progress import emit

    _check_outputs(args.output, models=(args.output,))
    image, labels = _read_inputs(args.image, args.labels)
    from ContrastiveSegLib import api
    model = api.finetune(image.array, labels.array, image.spacing, device=args.device, **_training_options(args),
                         progress=progress, cancel=cancel)
    model.save(args.output)
    emit(progress, "done", f"wrote {args.output}")
    return 0


def cmd_predict(args, progress, cancel) -> int:
    from ContrastiveSegLib.progress import emit

    _check_outputs(args.output, args.probabilities, volumes=(args.output, args.probabilities))
    image, labels = _read_inputs(args.image, args.labels)
    from ContrastiveSegLib import api
    from ContrastiveSegLib.model import TrainedModel

    model = TrainedModel.load(args.model)
    if labels is not None:
        from ContrastiveSegLib.io.annotations import decode_annotation

        values = decode_annotation(labels.array, model.axis).label_values
        if set(values) - set(model.label_values):
            raise InputError(f"labels hold values {sorted(set(values) - set(model.label_values))} that the model "
                             f"does not know (model classes {list(model.label_values)})")
    result = api.predict(model, image.array, labels=None if labels is None else labels.array, device=args.device,
                         probabilities=args.probabilities is not None, flip_tta=args.tta,
                         postprocess=not args.no_postprocess, progress=progress, cancel=cancel)
    result.model = None
    _write_result(result, image, args)
    emit(progress, "done", f"wrote {args.output}")
    return 0


def cmd_encoders(args, progress, cancel) -> int:
    from ContrastiveSegLib.zoo.registry import shipped_encoders

    entries = shipped_encoders()
    if args.json:
        print(json.dumps(entries, indent=2))
    elif not entries:
        print("no pretrained encoders are shipped yet; 'none' (random initialisation) is always available")
    else:
        print(f"{'name':<12} {'method':<10} {'steps':>6}  description")
        for entry in entries:
            mark = " (default)" if entry.get("default") else ""
            print(f"{entry['name']:<12} {entry.get('method', ''):<10} {entry.get('steps') or '':>6}  "
                  f"{entry.get('description', '')}{mark}")
        print(f"trained on: {entries[0].get('data', '')}; use one with 'segment --encoder NAME'")
    return 0


def cmd_demo(args, progress, cancel) -> int:
    from ContrastiveSegLib.demo import run_demo

    return run_demo(args, progress, cancel)


def cmd_pretrain(args, progress, cancel) -> int:
    from ContrastiveSegLib.cli_pretrain import run_pretrain

    return run_pretrain(args, progress, cancel)


def cmd_methods(args, progress, cancel) -> int:
    from ContrastiveSegLib.cli_pretrain import run_methods

    return run_methods(args, progress, cancel)


COMMANDS = {"segment": cmd_segment, "finetune": cmd_finetune, "predict": cmd_predict, "encoders": cmd_encoders,
            "demo": cmd_demo, "pretrain": cmd_pretrain, "methods": cmd_methods}


# ----------------------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 internal error, 2 bad input, 130 cancelled)."""
    cancel = threading.Event()
    printer = ProgressPrinter("none")

    def _on_signal(signum, frame):  # finish the current step, write nothing, exit 130
        cancel.set()
        raise Cancelled("cancelled")

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if threading.current_thread() is threading.main_thread():
        for s in previous:
            signal.signal(s, _on_signal)
    try:
        args = build_parser().parse_args(argv)
        printer = ProgressPrinter(args.progress or _default_progress()) if hasattr(args, "progress") else printer
        return COMMANDS[args.command](args, printer if printer.mode != "none" else None, cancel)
    except InputError as error:
        return _fail(printer, str(error), EXIT_BAD_INPUT)
    except Cancelled:
        return _fail(printer, "cancelled; nothing was written", EXIT_CANCELLED)
    except KeyboardInterrupt:
        return _fail(printer, "cancelled; nothing was written", EXIT_CANCELLED)
    except MemoryError:
        return _fail(printer, "out of memory; try --preset fast, a smaller --batch-size, or a GPU", EXIT_INTERNAL)
    except Exception as error:  # the last resort: one line, the full trace only on request
        if os.environ.get("CONTRASTIVESEG_DEBUG"):
            raise
        return _fail(printer, f"internal error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                     " (set CONTRASTIVESEG_DEBUG=1 for the traceback)", EXIT_INTERNAL)
    finally:
        if threading.current_thread() is threading.main_thread():
            for s, handler in previous.items():
                signal.signal(s, handler)


def _fail(printer: ProgressPrinter, message: str, code: int) -> int:
    message = " ".join(message.split())  # one line, always
    printer.error(message, code)
    print(f"contrastiveseg: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
