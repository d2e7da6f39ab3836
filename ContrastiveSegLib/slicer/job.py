"""One Segment (fine-tune + predict) or Predict-only run, from Slicer nodes to Slicer nodes through the CLI.

    nodes --(nodes.py)--> image.nrrd + labels.nrrd --(runner.py: child CLI)--> result.nrrd [+ probabilities]
          <--(nodes.py)-- segments, uncertainty volume, suggested next slice

The module's Logic drives a :class:`Job` from a ``qt.QTimer`` (``poll`` every 200 ms) and a batch script with
:meth:`Job.run` (both from :class:`~.childrun.ChildRun`). Nothing in the scene changes until the child has
succeeded, so a cancelled or failed run leaves the user's segmentation as it was. Out of GPU memory: the child
halves its own batch (of crops when fine-tuning, of slices when predicting) and says so; the run is not restarted.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.volume import Volume, grid_difference, read_volume
from ContrastiveSegLib.options import (AXIS_LETTERS, DEFAULT_CONSISTENCY, DEFAULT_DEVICE, DEFAULT_PRESET,
                                       check_device, check_preset, check_training_options)
from ContrastiveSegLib.slicer import nodes
from ContrastiveSegLib.slicer.childrun import ChildRun, private_state_dir
from ContrastiveSegLib.slicer.exchange import write_raw_nrrd
from ContrastiveSegLib.slicer.runner import ChildOutcome, RunResult, cli_command

ROLE_ATTRIBUTE = nodes.ROLE_ATTRIBUTE  # kept here too: earlier code imports it from this module


@dataclass
class JobOptions:
    """What the user chose. ``steps`` / ``batch_size`` None: the preset's; ``axis`` None: the painted planes,
    one or several, found from the paint (an axis forces a single plane, the CLI's ``--axis``).
    ``batch_size`` is a fine-tuning option: a Predict only run refuses it."""

    encoder: str | None = None
    device: str = DEFAULT_DEVICE
    preset: str = DEFAULT_PRESET
    steps: int | None = None
    seed: int = 0
    axis: int | None = None
    batch_size: int | None = None
    init_model: str | None = None
    probabilities: bool = True
    show_uncertainty: bool = False
    resample: bool = False
    closed_surface: bool = False
    output_name: str | None = None
    adapt: str | None = None  # pretraining method run on this scan before fine-tuning (segment --adapt)
    consistency: str = DEFAULT_CONSISTENCY  # one of options.CONSISTENCY_MODES (segment --consistency)

    def __post_init__(self) -> None:
        # The CLI's own checks (ContrastiveSegLib.options), here before any file is written or child started.
        self.device = check_device(self.device)
        check_preset(self.preset)
        # The API's own check: adapt or consistency with a refinement is refused here as there, never dropped.
        check_training_options(steps=self.steps, batch_size=self.batch_size, adapt=self.adapt,
                               consistency=self.consistency, refine=bool(self.init_model))


@dataclass
class JobResult(ChildOutcome):
    """How a run ended and what it put in the scene."""

    segmentation_node: object | None = None
    uncertainty_node: object | None = None  # filled by the module once the scoring worker is done (scoring.py)
    model_path: Path | None = None
    probabilities_path: Path | None = None
    suggestion: tuple[int, float] | None = None  # idem
    undo: nodes.ResultUndo | None = None  # how to take the result back (nodes.undo_result)
    annotation: nodes.Annotation | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def segments_file(model_path: Path) -> Path:
    """The JSON beside a saved model that keeps its segments' names and colours for Predict only."""
    return model_path.with_name(model_path.name + ".segments.json")


def _save_segments(model_path: Path, annotation: nodes.Annotation) -> None:
    entries = [dict(name=s.name, color=list(s.color), label_value=s.label_value, terminology=s.terminology)
               for s in annotation.segments]
    segments_file(model_path).write_text(json.dumps({"axis": AXIS_LETTERS[annotation.axis], "segments": entries},
                                                    indent=1))


def _load_segments(model_path: Path, values: list[int]) -> tuple[nodes.SegmentInfo, ...]:
    """Segments for the label values of a prediction: from the model's JSON, else "Segment N" in Slicer colours."""
    path = segments_file(model_path)
    known = {}
    if path.is_file():
        for entry in json.loads(path.read_text()).get("segments", []):
            known[int(entry["label_value"])] = entry
    palette = [(0.9, 0.3, 0.2), (0.2, 0.6, 0.9), (0.3, 0.8, 0.3), (0.9, 0.8, 0.2), (0.7, 0.4, 0.8)]
    infos = []
    for value in values:
        entry = known.get(value, {})
        color = tuple(entry.get("color", palette[(value - 1) % len(palette)]))
        infos.append(nodes.SegmentInfo("", entry.get("name", f"Segment {value}"), color, value,
                                       terminology=entry.get("terminology", "")))
    return tuple(infos)


class Job(ChildRun):
    """A Segment or Predict run on ``volume_node``.

    Args:
        kind: "segment" (fine-tune on the painted slices, then segment) or "predict" (apply ``model_path``).
        segmentation_node: the user's annotations (segment only).
        output_node: where the result goes: None for a new segmentation node, or any segmentation node
            (``segmentation_node`` itself to replace the paint by the result).
        state_dir: where models and probability files are kept between runs (refine, suggest next slice). None:
            this process' private folder (:func:`~.childrun.private_state_dir`, readable only by its owner).
        python, env: the child's interpreter and base environment (see :class:`~.runner.CliProcess`).
    """

    outcome_class = JobResult

    def __init__(self, kind: str, volume_node, segmentation_node=None, output_node=None,
                 options: JobOptions | None = None, *, model_path: str | Path | None = None,
                 state_dir: str | Path | None = None, python: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        if kind not in ("segment", "predict"):
            raise ValueError(f"kind must be 'segment' or 'predict', got {kind!r}")
        if kind == "segment" and segmentation_node is None:
            raise InputError("choose the segmentation that holds the painted slices")
        if kind == "predict" and not model_path:
            raise InputError("choose a saved model to predict with")
        if volume_node is None:
            raise InputError("choose the volume to segment")
        if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError(f"'{volume_node.GetName()}' is a label map, not a scan: choose the volume to segment")
        self.options = options or JobOptions()
        if kind == "predict" and self.options.batch_size is not None:
            raise InputError("Predict only has no batch size: the batch size is a fine-tuning option")
        super().__init__(self.options.device, python, env)
        self.kind, self.volume_node, self.segmentation_node = kind, volume_node, segmentation_node
        self.output_node = output_node
        self.model_path = Path(model_path) if model_path else None
        self.state_dir = Path(state_dir) if state_dir else private_state_dir()
        self.annotation: nodes.Annotation | None = None
        self.volume: Volume | None = None
        self._work: Path | None = None

    # ------------------------------------------------------------------------------------------- start
    def prepare(self) -> nodes.Annotation | None:
        """Read the nodes and write the exchange files. Raises InputError (one line) for unusable input.

        Runs on Slicer's main thread, so it is kept cheap on a large scan: the annotation is read from the painted
        box only (:func:`~.nodes.read_annotation`), the volume's voxels are written from the node's own memory
        without a copy, and both files are raw NRRD (:mod:`.exchange`); benchmarks/slicer_main_thread.py times it.
        """
        self.volume = nodes.volume_view(self.volume_node)
        if self.kind == "segment":
            self.annotation = nodes.read_annotation(self.segmentation_node, self.volume_node,
                                                    axis=self.options.axis, resample=self.options.resample)
        elif not self.model_path.is_file():
            raise InputError(f"model file not found: {self.model_path}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._work = Path(tempfile.mkdtemp(prefix="run-", dir=self.state_dir))
        stamp = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]  # unique even for runs in one second
        self.paths = {"image": self._work / "image.nrrd", "result": self._work / "result.nrrd"}
        geometry = (self.volume.spacing, self.volume.origin, self.volume.direction)
        write_raw_nrrd(self.volume.array, self.paths["image"], *geometry)
        if self.annotation is not None:
            self.paths["labels"] = self._work / "labels.nrrd"
            write_raw_nrrd(self.annotation.labels, self.paths["labels"], *geometry)
            self.paths["model"] = self.state_dir / f"model-{stamp}.safetensors"
        if self.options.probabilities:
            self.paths["probabilities"] = self.state_dir / f"probabilities-{stamp}.nrrd"
        return self.annotation

    def command(self) -> list[str]:
        """The CLI command line of this run (files from :meth:`prepare`)."""
        o, paths = self.options, self.paths
        common = dict(o=paths["result"], device=o.device, probabilities=paths.get("probabilities"))
        if self.kind == "predict":
            return cli_command("predict", paths["image"], python=self.python, model=self.model_path, **common)
        # No --axis for a painting in several planes: the CLI finds the same planes in the label map, while a
        # forced axis would read every slice the other planes cross as annotated (see Annotation.cli_axis).
        axis = self.annotation.cli_axis
        return cli_command("segment", paths["image"], paths["labels"], python=self.python,
                           axis=None if axis is None else AXIS_LETTERS[axis], seed=o.seed, encoder=o.encoder or None,
                           preset=o.preset, steps=o.steps, model_out=paths["model"],
                           init_model=o.init_model or None, batch_size=o.batch_size, adapt=o.adapt,
                           consistency=None if o.consistency == DEFAULT_CONSISTENCY else o.consistency,
                           **common)

    # ----------------------------------------------------------------------------------------- finish
    def finish(self) -> JobResult:
        """Read the child's outputs into the scene (on success) and remove the exchange files."""
        self._ended()
        outcome = JobResult(self._run, annotation=self.annotation, seconds=self.seconds,
                            notes=list(self._run.notes))
        try:
            if self._run.ok:
                self._read_outputs(outcome)
        except InputError as error:
            outcome.run = RunResult(2, str(error), False, self._run.stderr_tail)
            self._discard_outputs(outcome)
        except BaseException:
            self._discard_outputs(outcome)  # a model nobody remembers would stay on disk until Slicer closes
            raise
        finally:
            if self._work is not None:
                shutil.rmtree(self._work, ignore_errors=True)
        return outcome

    def _discard_outputs(self, outcome: JobResult) -> None:
        """Remove what the child wrote for a run that failed while finishing, and take back a partly written
        result."""
        for key in ("model", "probabilities"):
            path = self.paths.get(key)
            if path is not None:
                path.unlink(missing_ok=True)
                if key == "model":
                    segments_file(path).unlink(missing_ok=True)
        outcome.model_path = outcome.probabilities_path = None
        if outcome.undo is not None:
            nodes.undo_result(outcome.undo)
            outcome.segmentation_node, outcome.undo = None, None

    def _read_outputs(self, outcome: JobResult) -> None:
        result = read_volume(self.paths["result"], what="result")
        difference = grid_difference(result, self.volume)
        if difference:
            raise InputError(f"the result is not on the volume's grid ({difference})")
        labels = result.array  # label values as the CLI wrote them (uint8): no widening copy of the volume
        if self.annotation is not None:
            segments = self.annotation.segments
        else:
            values = [int(v) for v in np.unique(labels) if v != 0]
            segments = _load_segments(self.model_path, values)
        target = self.output_node
        name = self.options.output_name or (f"{self.segmentation_node.GetName()} result" if self.segmentation_node
                                            else f"{self.volume_node.GetName()} segmentation")
        outcome.undo = nodes.snapshot_before_result(target)
        outcome.segmentation_node = nodes.write_result(labels, self.volume_node, segments, target, name=name,
                                                       annotation=self.annotation,
                                                       closed_surface=self.options.closed_surface)
        outcome.undo = outcome.undo or nodes.ResultUndo(outcome.segmentation_node, True)
        if "model" in self.paths and self.paths["model"].is_file():
            outcome.model_path = self.paths["model"]
            _save_segments(outcome.model_path, self.annotation)
        probabilities = self.paths.get("probabilities")
        if probabilities is not None and probabilities.is_file():
            # Scored by a worker process afterwards (scoring.py), never here: 11.5 s on a large CT.
            outcome.probabilities_path = probabilities
