"""Self-supervised pretraining from Slicer: the scans in the scene (or a folder) -> the CLI -> an encoder file.

    volume nodes --(nodes.py)--> scan-NN.nrrd in a work folder --\\
                                                                   >-- pretrain DATA... --method M -o ENC (child)
    or a folder of scans (NIfTI, NRRD, MHA, DICOM series) --------/

The child is ``python -m ContrastiveSegLib pretrain`` (``cli_pretrain.py``), so the GUI stays responsive and a
cancel kills the whole process tree exactly as for Segment (:class:`~.childrun.ChildRun`). :class:`PretrainRun`
and :class:`PretrainOutcome` are this module's run and its result; the library's own pretraining job is
:class:`ContrastiveSegLib.training.pretrain.PretrainJob`. The encoder it writes
(safetensors, header ``kind: "encoder"``) is what ``segment --encoder FILE`` starts from; the module's Logic makes
it the encoder of the next Segment run. The work folder with the exported scans is removed at the end; the CLI
writes the encoder atomically, so a cancelled or failed run leaves no file behind.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.options import DEFAULT_DEVICE, METHOD_NAMES, RANDOM_INIT, check_device
from ContrastiveSegLib.slicer import nodes
from ContrastiveSegLib.slicer.childrun import ChildRun, private_state_dir
from ContrastiveSegLib.slicer.exchange import write_raw_nrrd
from ContrastiveSegLib.slicer.nodes import ROLE_ATTRIBUTE
from ContrastiveSegLib.slicer.runner import ChildOutcome, RunResult, cli_command

OFFERED_METHODS = tuple(name for name in METHOD_NAMES if name != RANDOM_INIT)
"""The pretraining methods the module offers: :data:`ContrastiveSegLib.options.METHOD_NAMES` (the registry's
names, torch-free) without :data:`~ContrastiveSegLib.options.RANDOM_INIT` (no pretraining is not worth a run). What each does: docs/methods.md."""
DEFAULT_METHOD = "simclr"


@dataclass
class PretrainOptions:
    """What the user chose. ``steps`` and ``minutes`` None: the CLI's budget
    (:data:`~ContrastiveSegLib.options.PRETRAIN_STEPS`); both: whichever ends first. ``batch_size`` None: the CLI's
    (:data:`~ContrastiveSegLib.options.PRETRAIN_BATCH_SIZE` crops per step)."""

    method: str = DEFAULT_METHOD
    steps: int | None = None
    minutes: float | None = None
    device: str = DEFAULT_DEVICE
    batch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # The method name itself is checked by the CLI, whose message lists the known ones and the nearest.
        if not isinstance(self.method, str) or not self.method.strip():
            raise InputError(f"choose a pretraining method ({', '.join(OFFERED_METHODS)})")
        self.device = check_device(self.device)
        if self.steps is not None and self.steps < 1:
            raise InputError(f"steps must be at least 1, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise InputError(f"minutes must be more than 0, got {self.minutes}")
        if self.batch_size is not None and self.batch_size < 2:
            raise InputError(f"a contrastive batch needs at least 2 crops, got batch size {self.batch_size}")


@dataclass
class PretrainOutcome(ChildOutcome):
    """How a pretraining run ended; ``encoder_path`` is the written encoder (None unless it succeeded)."""

    encoder_path: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def scene_scans(scene) -> list:
    """The scalar volume nodes of ``scene`` that are scans: holding voxels, one component, not label maps or
    vector volumes (other node classes) and not a volume the module made (the uncertainty map)."""
    scans = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        image = node.GetImageData()
        if (node.GetClassName() == "vtkMRMLScalarVolumeNode" and node.GetAttribute(ROLE_ATTRIBUTE) is None
                and image is not None and min(image.GetDimensions()) >= 1
                and image.GetNumberOfScalarComponents() == 1):
            scans.append(node)
    return scans


def _file_name(index: int, node_name: str) -> str:
    # The encoder's header records these names, so keep the node's name, made safe for any file system.
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", node_name).strip("._")[:60] or "scan"
    return f"{index:02d}-{safe}.nrrd"


class PretrainRun(ChildRun):
    """Pretrain an encoder on ``sources`` and write it to ``output``.

    Args:
        sources: volume nodes (exported to NRRD in a work folder under ``state_dir``), or a folder the CLI
            searches recursively for scans.
        output: the encoder file to write (.safetensors); its folder is created when missing.
        options: method, budget, device (see :class:`PretrainOptions`).
        python, env: the child's interpreter and base environment (see :class:`~.runner.CliProcess`).
    """

    outcome_class = PretrainOutcome

    def __init__(self, sources: Sequence | str | os.PathLike, output: str | os.PathLike,
                 options: PretrainOptions | None = None, *, state_dir: str | os.PathLike | None = None,
                 python: str | None = None, env: Mapping[str, str] | None = None) -> None:
        self.options = options or PretrainOptions()
        super().__init__(self.options.device, python, env)
        self.output = Path(output).absolute()
        if not self.output.name.endswith(".safetensors"):
            raise InputError(f"the encoder file must end in .safetensors, got '{self.output.name}'")
        if isinstance(sources, (str, os.PathLike)):
            self.folder: Path | None = Path(sources).absolute()
            self.volume_nodes: list = []
        else:
            self.folder, self.volume_nodes = None, list(sources)
            if not self.volume_nodes:
                raise InputError("no scan to pretrain on: load a volume or choose a folder")
        self.state_dir = Path(state_dir) if state_dir else private_state_dir()
        self._work: Path | None = None

    def prepare(self) -> list[Path]:
        """Check the folder, or export every volume node to NRRD in a work folder (the child's ``cwd``).
        Returns the data paths given to the CLI."""
        if self.folder is not None:
            if not self.folder.is_dir():
                raise InputError(f"folder not found: {self.folder}")
            self.paths = {"data": self.folder}
        else:
            # Views of the nodes' voxels, written raw (exchange.py): no copy and no compression of every scan in
            # the scene on Slicer's main thread. InputError for an empty one, before anything is written.
            volumes = [nodes.volume_view(node) for node in self.volume_nodes]
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._work = Path(tempfile.mkdtemp(prefix="pretrain-", dir=self.state_dir))
            # The child runs in the work folder and gets bare file names: the encoder's header records the
            # scans by name ("00-CT.nrrd"), not by a temporary path that is gone after the run.
            self.cwd = self._work
            try:
                for index, (node, volume) in enumerate(zip(self.volume_nodes, volumes)):
                    name = _file_name(index, node.GetName())
                    write_raw_nrrd(volume.array, self._work / name, volume.spacing, volume.origin, volume.direction)
                    self.paths[f"scan{index}"] = Path(name)
            except BaseException:
                shutil.rmtree(self._work, ignore_errors=True)  # e.g. a full disk: leave nothing behind
                self.paths = {}
                raise
        self.output.parent.mkdir(parents=True, exist_ok=True)
        return list(self.paths.values())

    def command(self) -> list[str]:
        """``python -m ContrastiveSegLib pretrain DATA... --method M -o OUTPUT [--steps N] [--minutes M] ...``."""
        o = self.options
        return cli_command("pretrain", *self.paths.values(), python=self.python, method=o.method, o=self.output,
                           steps=o.steps, minutes=o.minutes, batch_size=o.batch_size, seed=o.seed,
                           device=o.device)

    def finish(self) -> PretrainOutcome:
        """The result, with the encoder path when the child succeeded; removes the exported scans."""
        run = self._ended()
        try:
            outcome = PretrainOutcome(run, seconds=self.seconds, notes=list(run.notes))
            if run.ok:
                if not self.output.is_file():
                    outcome.run = RunResult(1, f"the pretraining ended without writing {self.output}", False,
                                            run.stderr_tail)
                else:
                    outcome.encoder_path = self.output
            return outcome
        finally:
            if self._work is not None:
                shutil.rmtree(self._work, ignore_errors=True)
