"""One user's work in the browser, on an MRML scene: load a scan, paint, Segment in the worker child, save.

The page (:mod:`.app`) only gathers inputs and shows what this returns. Everything that reads the painting,
runs a child or writes a result goes through the bridge the Slicer module uses (:mod:`ContrastiveSegLib.slicer`),
so the two front ends cannot drift apart:

    scan file --(io.read_volume)--> volume node
    painted segments --(nodes.read_annotation)--> slice summary, Job --(child CLI)--> segments in the same node
    probabilities --(scoring.ScoringRun, a second child)--> uncertainty volume + the slice to paint next

Both children are followed by a :class:`~ContrastiveSegLib.slicer.driver.RunDriver` that :meth:`Session.poll`
ticks (the page's asyncio loop calls it, as the module's Qt timer does); Cancel returns at once and later polls
end the run. The result replaces the paint in the user's own segmentation node, as in the Slicer module (Undo
result takes it back), and each segment remembers which slices were painted: correcting a slice and pressing
Segment again refines (from the last model) on the painted slices plus the corrected ones. No trame import, so
this is tested against the slicer-core wheel.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.volume import atomic_write, read_volume, volume_stem, write_volume
from ContrastiveSegLib.options import AXIS_LETTERS
from ContrastiveSegLib.slicer import nodes
from ContrastiveSegLib.slicer.childrun import private_state_dir
from ContrastiveSegLib.slicer.driver import RunDriver
from ContrastiveSegLib.slicer.job import Job, JobOptions, JobResult, segments_file
from ContrastiveSegLib.slicer.runner import Progress, overall_fraction
from ContrastiveSegLib.slicer.scoring import ScoringOutcome, place_scores, remove_run_files, scoring_run
from ContrastiveSegLib.web.scans import ScanFolders, save_upload

SEGMENT_COLORS = ((0.93, 0.40, 0.30), (0.30, 0.60, 0.95), (0.35, 0.80, 0.40), (0.95, 0.80, 0.25),
                  (0.70, 0.45, 0.85), (0.30, 0.85, 0.85))
"""Colours of the segments the page adds, in order (then repeated)."""


@dataclass
class RunStatus:
    """What the page shows of a run: one line, a fraction of the whole run, and whether it is still going."""

    running: bool = False
    kind: str = ""
    line: str = ""
    fraction: float = 0.0
    stage: str = ""
    loss: float | None = None
    eta_s: float | None = None
    ok: bool | None = None  # None while running or before any run
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)


class Session:
    """The scene-side state of the one page the server serves.

    Args:
        scene: the MRML scene the views show (trame-slicer's ``SlicerApp.scene``).
        folders: where scans may be read (:class:`~.scans.ScanFolders`).
        output_dir: where Save writes the segmentation and the model (the page also offers them as downloads).
        python, env: the worker child's interpreter and environment (:class:`~ContrastiveSegLib.slicer.job.Job`).
    """

    def __init__(self, scene, folders: ScanFolders, output_dir: str | Path, *, python: str | None = None,
                 env=None) -> None:
        self.scene, self.folders = scene, folders
        self.output_dir = Path(output_dir)
        self.python, self.env = python, env
        self.state_dir = private_state_dir()
        self.volume_node = None
        self.segmentation_node = None
        self.uncertainty_node = None
        self.scan_path: Path | None = None
        self.job: Job | None = None
        self.driver: RunDriver | None = None  # follows the run, then the scoring of its uncertainty
        self._painting = None  # the segmentation node before the last run (Undo result shows it again)
        self.status = RunStatus()
        self.last_result: JobResult | None = None
        self.last_model: Path | None = None
        self.suggestion: tuple[int, float] | None = None
        self.suggestion_axis: int | None = None

    # ------------------------------------------------------------------------------------------- scans
    def load_path(self, name: str):
        """Open a scan the server may read (see :meth:`~.scans.ScanFolders.resolve`); returns the volume node."""
        return self._load(self.folders.resolve(name))

    def load_upload(self, name: str, content: bytes):
        """Open an uploaded scan (bounded and checked: :func:`~.scans.save_upload`); returns the volume node."""
        path = save_upload(name, content, self.state_dir / "uploads")
        try:
            return self._load(path)
        except InputError as error:  # name the upload, not the private folder it was kept in
            raise InputError(str(error).replace(str(path), path.name)) from None
        finally:
            path.unlink(missing_ok=True)

    def _load(self, path: Path):
        if self.running:
            raise InputError("a run is going on: cancel it before opening another scan")
        volume = read_volume(path)  # one-line InputError for anything the CLI would refuse too
        if volume.array.ndim != 3:
            raise InputError(f"{path.name} is not a 3D scan")
        for node in (self.segmentation_node, self.uncertainty_node, self.volume_node):
            if node is not None and node.GetScene() is self.scene:
                self.scene.RemoveNode(node)
        name = volume_stem(path.name)
        self.volume_node = nodes.array_to_volume(volume, self.scene, name or "scan")
        self.segmentation_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
        self.segmentation_node.CreateDefaultDisplayNodes()
        self.segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(self.volume_node)
        self.uncertainty_node = None
        self._forget_run_files()
        self.scan_path, self.last_model, self.last_result = path, None, None
        self.suggestion = self.suggestion_axis = None
        self.status = RunStatus()
        self.add_segment()
        return self.volume_node

    # ----------------------------------------------------------------------------------------- segments
    def add_segment(self, name: str | None = None) -> str:
        """Add an empty segment (the next colour; "Segment N" unless named); returns its id."""
        segmentation = self._segmentation().GetSegmentation()
        count = segmentation.GetNumberOfSegments()
        color = SEGMENT_COLORS[count % len(SEGMENT_COLORS)]
        return segmentation.AddEmptySegment("", (name or "").strip() or f"Segment {count + 1}", list(color))

    def segment_names(self) -> list[tuple[str, str, str]]:
        """(id, name, colour as #rrggbb) of every segment, in order."""
        segmentation = self._segmentation().GetSegmentation()
        out = []
        for n in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(n)
            rgb = "#" + "".join(f"{int(round(c * 255)):02x}" for c in segment.GetColor())
            out.append((segmentation.GetNthSegmentID(n), segment.GetName(), rgb))
        return out

    def annotation(self) -> nodes.Annotation:
        """The painting as the CLI will read it (InputError, one line, when there is nothing to learn)."""
        return nodes.read_annotation(self._segmentation(), self._volume())

    def painted(self) -> tuple[list[str], dict]:
        """(summary lines for the panel, :meth:`~ContrastiveSegLib.slicer.nodes.Annotation.painted_extents`); a
        one-line reason instead when nothing is painted yet."""
        try:
            annotation = self.annotation()
        except InputError as error:
            return [str(error)], {}
        return annotation.summary(), annotation.painted_extents()

    # --------------------------------------------------------------------------------------------- runs
    @property
    def running(self) -> bool:
        """A run (or the scoring of its uncertainty, which follows it) is going on."""
        return self.driver is not None and self.driver.running

    def start(self, kind: str, options: JobOptions, *, model_path: str | Path | None = None,
              refine: bool = False) -> None:
        """Start a Segment ("segment") or Predict only ("predict") run in the worker child; :meth:`poll` follows it.

        ``refine`` continues from the last fine-tuned model (the result's corrected slices are read as painted).
        InputError (one line) for unusable input; nothing in the scene changes until the run has succeeded.
        """
        if self.running:
            raise InputError("a run is already going on")
        volume = self._volume()
        if kind == "segment":
            if refine:
                if self.last_model is None or not self.last_model.is_file():
                    raise InputError("no model to refine yet: press Segment first")
                options.init_model = str(self.last_model)
            job = Job("segment", volume, self._segmentation(), self._segmentation(), options,
                      state_dir=self.state_dir, python=self.python, env=self.env)
        else:
            path = self._model_path(model_path)
            # Predict only writes a new segmentation node, so the painting is kept.
            job = Job("predict", volume, None, None, options, model_path=path, state_dir=self.state_dir,
                      python=self.python, env=self.env)
        job.prepare()  # reads the painting; InputError before any child starts
        job.start()  # InputError when the child cannot be started
        self.job, self._painting = job, self.segmentation_node
        self.status = RunStatus(running=True, kind=kind, line="Starting…")
        self.driver = RunDriver(job, self._on_event, self._remember, self._completed)

    def _model_path(self, model_path) -> Path:
        """The model for Predict only: the last one of this session, one saved in the output folder, or one inside
        the folders the server was given."""
        if model_path in (None, ""):
            if self.last_model is None:
                raise InputError("choose a saved model to predict with")
            return self.last_model
        path = Path(str(model_path).strip()).expanduser()
        saved = (self.output_dir / path.name).resolve()
        if path.name == str(model_path).strip() and saved.is_file():
            path = saved  # a bare name: a model Save wrote
        else:
            path = self.folders.resolve(model_path)
        if not path.is_file():
            raise InputError(f"model file not found: {model_path}")
        return path

    def poll(self) -> RunStatus:
        """Follow the run (never blocks; the page calls it from its loop, as Slicer's module from a timer): the
        newest progress, then the result put into the scene, then the uncertainty scored in a worker child."""
        if self.driver is not None:
            self.driver.tick()
        return self.status

    def _on_event(self, event) -> None:
        if isinstance(event, Progress):
            self.status.stage, self.status.loss, self.status.eta_s = event.stage, event.loss, event.eta_s
            self.status.line = event.describe()
            self.status.fraction = overall_fraction(event, self.status.kind)

    def _remember(self, job: Job, result: JobResult) -> None:
        """What the next run needs from a finished one (called by the driver, before :meth:`_completed`)."""
        if not result.ok:
            return
        if result.model_path is not None:
            if self.last_model is not None and self.last_model != result.model_path:
                remove_run_files(self.last_model)  # only the latest model stays in the private folder
            self.last_model = result.model_path

    def _completed(self, result: JobResult) -> None:
        job, self.job = self.job, None
        self.last_result = result
        self.status.ok = result.ok
        self.status.cancelled = result.run.cancelled
        self.status.notes = list(result.notes)
        if not result.ok:
            self.status.running = False
            self.status.line = result.message
            return
        self.status.fraction = 1.0
        if result.segmentation_node is not None and result.segmentation_node is not self.segmentation_node:
            self.segmentation_node = result.segmentation_node  # Predict only: show (and save) the new node
        self.suggestion = self.suggestion_axis = None
        self.status.line = f"Done in {result.seconds:.0f} s"
        if result.probabilities_path is None:
            self.status.running = False
            return
        try:  # the uncertainty, scored in a worker child; the run line says when it is ready
            run = scoring_run(result.probabilities_path, self.volume_node,
                              entropy=job.options.show_uncertainty, python=self.python, env=self.env)
            run.start()
        except InputError as error:
            self._scored_note(str(error))
            return
        self.status.line += "; scoring the uncertainty…"
        self.driver = RunDriver(run, None, self._place_scores, self._scored)

    def _place_scores(self, run, outcome: ScoringOutcome) -> None:
        result = self.last_result
        painting = result.annotation is not None and result.segmentation_node is self.segmentation_node
        place_scores(outcome, self.volume_node, self.annotation if painting else None)
        remove_run_files(run.probabilities_path)  # scored: the suggestion and the volume are all the page uses

    def _scored(self, outcome: ScoringOutcome) -> None:
        if not outcome.ok:
            self._scored_note(outcome.message)
            return
        self.uncertainty_node = outcome.uncertainty_node or self.uncertainty_node
        if outcome.suggestion is not None:
            self.suggestion, self.suggestion_axis = outcome.suggestion, self.last_result.annotation.axis
        self.status.line = f"Done in {self.last_result.seconds:.0f} s"
        self.status.running = False

    def _scored_note(self, message: str) -> None:
        self.status.line = f"Done in {self.last_result.seconds:.0f} s"
        if not self.last_result.run.cancelled:
            self.status.notes.append(f"no uncertainty: {message}")
        self.status.running = False

    def cancel(self) -> None:
        """Ask the child (and its children) to stop; returns at once. The next polls end the run; the scene stays
        as it was (a cancelled scoring only loses the uncertainty)."""
        if self.driver is not None:
            self.driver.cancel()

    @property
    def can_undo(self) -> bool:
        """A result is in the scene that :meth:`undo_result` can take back."""
        return not self.running and self.last_result is not None and self.last_result.undo is not None

    def undo_result(self) -> None:
        """Take the last result back: the painting as it was before that Segment, or no Predict only node."""
        if self.running:
            raise InputError("a run is going on: cancel it first")
        undo = self.last_result.undo if self.last_result is not None else None
        if undo is None:
            raise InputError("no result to take back")
        self.last_result.undo = None
        if undo.created and self.segmentation_node is undo.node:
            self.segmentation_node = self._painting  # Predict only's node goes: the painting shows again
        nodes.undo_result(undo)
        self.suggestion = self.suggestion_axis = None

    def suggestion_text(self) -> str:
        """"Paint axial slice k = 40 next (uncertainty 0.31)", or "" before a Segment run."""
        if self.suggestion is None or self.suggestion_axis is None:
            return ""
        index, score = self.suggestion
        annotation = self.last_result.annotation if self.last_result else None
        plane = annotation.plane_name(self.suggestion_axis) if annotation else ""
        return f"Paint {plane} slice {AXIS_LETTERS[self.suggestion_axis]} = {index} next (uncertainty {score:.2f})"

    # --------------------------------------------------------------------------------------------- save
    def label_map(self) -> np.ndarray:
        """The segmentation as one label map (k, j, i) on the scan's grid: segment n (in order) has value n."""
        return nodes.label_map(self._segmentation(), self._volume())

    def save(self, stem: str | None = None) -> dict[str, Path]:
        """Write the segmentation (.seg.nrrd, Slicer's format with names and colours, and a NIfTI label map) and,
        after a Segment run, the fine-tuned model with its segments file, into the output folder; each file is
        written atomically. Returns {"seg": ..., "nifti": ..., ["model": ...]}."""
        segmentation_node, volume = self._segmentation(), self._volume()
        stem = stem or segmentation_node.GetName().replace(" ", "_")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        written = {"seg": self.output_dir / f"{stem}.seg.nrrd", "nifti": self.output_dir / f"{stem}.nii.gz"}
        labels = self.label_map()  # InputError before any file is written
        nodes.write_segmentation_file(segmentation_node, written["seg"])
        write_volume(nodes.volume_to_array(volume).like(labels), written["nifti"])
        if self.last_model is not None and self.last_model.is_file():
            written["model"] = self.output_dir / f"{stem}.safetensors"
            atomic_write(written["model"], lambda tmp: shutil.copyfile(self.last_model, tmp))
            source = segments_file(self.last_model)
            if source.is_file():
                atomic_write(segments_file(written["model"]), lambda tmp: shutil.copyfile(source, tmp))
        return written

    def _forget_run_files(self) -> None:
        """Remove the files the last runs left in the private folder (a new scan: they are of no more use)."""
        if self.last_model is not None:
            remove_run_files(self.last_model)

    # ------------------------------------------------------------------------------------------ helpers
    def _volume(self):
        if self.volume_node is None:
            raise InputError("open a scan first")
        return self.volume_node

    def _segmentation(self):
        if self.segmentation_node is None:
            raise InputError("open a scan first")
        return self.segmentation_node
