"""The uncertainty of a result, computed in a worker process: Slicer's main thread only reads a small JSON.

The probability file of a Segment run holds every class for every voxel: (2, 100, 512, 512) float32 for a CT
half-covered by one structure, 11.5 s and +0.9 GB to turn into an entropy map on Slicer's main thread. Here a
child process (``python -m ContrastiveSegLib.slicer.scoring``, started like every run, :class:`~.childrun.ChildRun`)
reads it and writes:

- ``scores.json``: the mean normalised entropy of every slice along each of the three axes
  (:func:`~.uncertainty.slice_scores`), so "Suggest next slice" is an argmax on the main thread, for any plane;
- ``entropy.nrrd`` (only when the user shows the uncertainty): the (k, j, i) entropy map as a raw NRRD on the
  probability file's grid, which the module loads into a volume node.

The child prints the CLI's JSON progress lines, so the runner follows and cancels it as it does a Segment run.
Run after each successful Segment or Predict (the panel's Suggest button waits for it), never on the main thread.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ContrastiveSegLib.errors import EXIT_BAD_INPUT, EXIT_OK, InputError
from ContrastiveSegLib.slicer.childrun import ChildRun
from ContrastiveSegLib.slicer.runner import ChildOutcome, RunResult

SCORES_NAME, ENTROPY_NAME = "scores.json", "entropy.nrrd"


def scores_file(probabilities_path: str | os.PathLike) -> Path:
    """Where the scores of a probability file go: beside it, named after it (removed with it)."""
    path = Path(probabilities_path)
    return path.with_name(path.name + "." + SCORES_NAME)


def entropy_file(probabilities_path: str | os.PathLike) -> Path:
    path = Path(probabilities_path)
    return path.with_name(path.name + "." + ENTROPY_NAME)


def read_scores(probabilities_path: str | os.PathLike) -> dict[int, np.ndarray] | None:
    """{axis: mean entropy per slice} written by the worker for this probability file, or None when not (yet)."""
    path = scores_file(probabilities_path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {int(axis): np.asarray(values, dtype=np.float64) for axis, values in data["scores"].items()}


def suggest_from_scores(scores: Mapping[int, np.ndarray], axis: int, annotated=()) -> tuple[int, float]:
    """(slice, score): the most uncertain slice along ``axis`` not in ``annotated``. InputError when all are."""
    from ContrastiveSegLib.slicer.uncertainty import best_slice

    return best_slice(scores[axis], annotated)


def score(probabilities_path: Path, shape: tuple[int, int, int] | None, entropy: bool) -> dict:
    """What the worker does: read, score every slice along each axis, write scores (and the entropy map)."""
    from ContrastiveSegLib.slicer.exchange import write_raw_nrrd
    from ContrastiveSegLib.slicer.uncertainty import normalized_entropy, read_probabilities, slice_scores

    probabilities = read_probabilities(probabilities_path, shape)
    voxels = normalized_entropy(probabilities.array)
    scores = {str(axis): [round(float(v), 7) for v in slice_scores(voxels, axis)] for axis in range(3)}
    if entropy:
        write_raw_nrrd(voxels, entropy_file(probabilities_path), probabilities.spacing, probabilities.origin,
                       probabilities.direction)
    target = scores_file(probabilities_path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps({"shape": list(voxels.shape), "scores": scores}))
    os.replace(partial, target)
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ContrastiveSegLib.slicer.scoring",
                                     description="Score the uncertainty of a result (ContrastiveSeg module).")
    parser.add_argument("probabilities", type=Path)
    parser.add_argument("--shape", help="k,j,i the probability file must have")
    parser.add_argument("--entropy", action="store_true", help="also write the entropy map")
    parser.add_argument("--progress", default="json")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else None
    try:
        score(args.probabilities, shape, args.entropy)
    except InputError as error:
        print(json.dumps({"stage": "error", "message": str(error), "exit_code": EXIT_BAD_INPUT}), flush=True)
        return EXIT_BAD_INPUT
    print(json.dumps({"stage": "done", "step": 1, "of": 1, "message": "uncertainty scored"}), flush=True)
    return EXIT_OK


@dataclass
class ScoringOutcome(ChildOutcome):
    """How a scoring run ended: the scores per axis and, when asked, the entropy map file; after
    :func:`place_scores`, the uncertainty volume node and the suggested (slice, score)."""

    scores: dict[int, np.ndarray] = field(default_factory=dict)
    entropy_path: Path | None = None
    uncertainty_node: object = None
    suggestion: tuple[int, float] | None = None


class ScoringRun(ChildRun):
    """Score ``probabilities_path`` in a child process (see the module docstring)."""

    def __init__(self, probabilities_path: str | os.PathLike, shape: tuple[int, int, int] | None = None, *,
                 entropy: bool = False, python: str | None = None, env: Mapping[str, str] | None = None) -> None:
        super().__init__("cpu", python, env)
        self.probabilities_path = Path(probabilities_path)
        self.shape, self.entropy = shape, entropy

    def prepare(self) -> None:
        if not self.probabilities_path.is_file():
            raise InputError("run Segment first: the uncertainty comes from the last result")
        self.paths = {"probabilities": self.probabilities_path, "scores": scores_file(self.probabilities_path)}

    def command(self) -> list[str]:
        command = [self.python or sys.executable, "-m", "ContrastiveSegLib.slicer.scoring",
                   str(self.probabilities_path), "--progress", "json"]
        if self.shape is not None:
            command += ["--shape", ",".join(str(n) for n in self.shape)]
        return command + (["--entropy"] if self.entropy else [])

    def finish(self) -> ScoringOutcome:
        outcome = ScoringOutcome(self._ended())
        if outcome.ok:
            scores = read_scores(self.probabilities_path)
            if scores is None:
                outcome.run = RunResult(1, "the uncertainty worker wrote no scores", False, outcome.run.stderr_tail)
                return outcome
            outcome.scores = scores
            path = entropy_file(self.probabilities_path)
            outcome.entropy_path = path if self.entropy and path.is_file() else None
        return outcome


def scoring_run(probabilities_path: str | os.PathLike, volume_node, *, entropy: bool, python: str | None = None,
                env: Mapping[str, str] | None = None) -> ScoringRun:
    """A prepared :class:`ScoringRun` of a result's probabilities on ``volume_node``'s grid (what both front ends
    start after a successful run). InputError (one line) when there is no probability file."""
    shape = tuple(reversed(volume_node.GetImageData().GetDimensions())) if volume_node is not None else None
    run = ScoringRun(probabilities_path, shape, entropy=entropy, python=python, env=env)
    run.prepare()
    return run


def place_scores(outcome: ScoringOutcome, volume_node, read_annotation: Callable | None = None) -> None:
    """Put a finished scoring run into the scene: the entropy map (if any) as ``volume_node``'s uncertainty volume
    (``outcome.uncertainty_node``; the file is removed once loaded) and, when ``read_annotation()`` gives the
    painting, ``outcome.suggestion``: the most uncertain slice not painted yet along its axis (None when every
    slice is painted or the painting cannot be read). Nothing on a failed run."""
    from ContrastiveSegLib.slicer import nodes

    outcome.suggestion = outcome.uncertainty_node = None
    if not outcome.ok or volume_node is None:
        return
    if outcome.entropy_path is not None:
        outcome.uncertainty_node = nodes.put_uncertainty_file(outcome.entropy_path, volume_node)
        outcome.entropy_path.unlink(missing_ok=True)
    if read_annotation is not None:
        try:
            annotation = read_annotation()
            outcome.suggestion = suggest_from_scores(outcome.scores, annotation.axis, annotation.slices)
        except InputError:
            pass


def remove_run_files(path: str | os.PathLike) -> None:
    """Remove a model or probability file a run left, with the files beside it (segments, scores, entropy)."""
    from ContrastiveSegLib.slicer.job import segments_file

    path = Path(path)
    for each in (path, segments_file(path), scores_file(path), entropy_file(path)):
        each.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
