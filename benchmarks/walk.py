"""The walk of ``contrastiveseg segment``'s options from the CLI to the training loop (issue 16): which of the
project's functions the options pass through, in the order a run calls them, and how often the walk enters a file
and climbs back up. docs/pipeline.md gives the counts.

    OMP_NUM_THREADS=1 PYTHONPATH=CHECKOUT python benchmarks/walk.py CHECKOUT

A *stop* is a call of one of the project's functions (or of a project class's own ``__init__``) that receives an
option of ``segment`` or a bundle of them: a parameter named like an option (``steps``, ``device``, ``patch``,
``seed``, ...), or an argument that is the parsed arguments, a dict of options, the run's plan or the fine-tuning
config, or one of the option strings as argparse made them. Input and output paths, the progress callback and the
cancel event are not options here: they go to I/O and to the display, not to the trainer. The walk runs
``segment IMAGE LABELS -o OUT --preset fast --steps 1 --batch-size 2 --device cpu`` on the test phantom and stops
at the first training step. A *file visit* is a run of consecutive stops in one file; a *climb* is a file visit
that follows a return to a shallower call.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

OPTION_NAMES = {"axis", "preset", "encoder", "init_model", "steps", "batch_size", "seed", "adapt", "adapt_steps",
                "consistency", "device", "threads", "probabilities", "flip_tta", "postprocess", "shape_prior",
                "patch", "config", "plan", "options", "prediction", "args", "decoders", "encoder_path"}
ARGV_OPTIONS = ["--preset", "fast", "--steps", "1", "--batch-size", "2", "--device", "cpu"]
SKIPPED = ("<", "__repr__", "__eq__", "__hash__", "__getattr__")


def _is_bundle(value) -> bool:
    from ContrastiveSegLib.training.finetune import FinetuneConfig

    try:
        from ContrastiveSegLib.plan import TrainingPlan
    except ImportError:  # before the plan existed
        TrainingPlan = FinetuneConfig
    if isinstance(value, (argparse.Namespace, FinetuneConfig, TrainingPlan)):
        return True
    return isinstance(value, dict) and any(key in OPTION_NAMES for key in value)


def record(checkout: Path) -> list[tuple[int, str, str]]:
    """(depth, file relative to the package's folder, function) of every stop, in call order; ``checkout`` gives
    the test phantom (Testing/Python/conftest.py)."""
    sys.path.insert(0, str(checkout / "Testing" / "Python"))
    from conftest import make_phantom, write_image

    import ContrastiveSegLib
    from ContrastiveSegLib import cli
    from ContrastiveSegLib.training import finetune

    package = str(Path(ContrastiveSegLib.__file__).parent)  # the copy that runs (an installed one too)
    argv_strings = {id(s) for s in ARGV_OPTIONS}
    stops: list[tuple[int, str, str]] = []
    stack: list = []

    class Reached(Exception):
        pass

    def profile(frame, event, arg):
        if event == "return" and stack and stack[-1] is frame:
            stack.pop()
        if event != "call" or not frame.f_code.co_filename.startswith(package):
            return
        code = frame.f_code
        stack.append(frame)
        if code is finetune._training_step.__code__:
            raise Reached
        if code.co_name.startswith(SKIPPED):
            return
        count = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 4) + bool(code.co_flags & 8)
        names = code.co_varnames[:count]
        values = [frame.f_locals.get(name) for name in names]
        carries = any(name in OPTION_NAMES for name in names if name != "self") or any(
            _is_bundle(value) or id(value) in argv_strings for value in values)
        if carries:
            where = str(Path(code.co_filename).relative_to(Path(package).parent))
            owner = type(frame.f_locals["self"]).__name__ + "." if "self" in names[:1] else ""
            stops.append((len(stack), where, owner + code.co_name))

    phantom = make_phantom()
    with tempfile.TemporaryDirectory() as folder:
        image = write_image(phantom.image, Path(folder) / "image.nii.gz")
        labels = write_image(phantom.sparse, Path(folder) / "labels.nii.gz")
        argv = ["segment", str(image), str(labels), "-o", str(Path(folder) / "out.nii.gz"), *ARGV_OPTIONS,
                "--progress", "none"]
        sys.setprofile(profile)
        try:
            cli.main(argv)
        except Reached:
            pass
        finally:
            sys.setprofile(None)
    return stops


def summarise(stops: list[tuple[int, str, str]]) -> dict:
    """Stops, files, file visits per file, climbs."""
    visits: collections.Counter = collections.Counter()
    climbs = 0
    previous = None
    for depth, where, _ in stops:
        if previous is None or where != previous[1]:
            visits[where] += 1
            if previous is not None and depth < previous[0]:
                climbs += 1
        previous = (depth, where)
    return {"stops": len(stops), "files": len(visits), "visits": sum(visits.values()), "climbs": climbs,
            "most": visits.most_common(3)}


if __name__ == "__main__":
    walk = record(Path(sys.argv[1]).resolve())
    for number, (depth, where, name) in enumerate(walk, 1):
        print(f"{number:>3} {'  ' * min(depth - 1, 12)}{name}  ({where})")
    print(summarise(walk))
