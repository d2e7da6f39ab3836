"""Hostile inputs through the real command line: what each class of damaged, crafted or merely unusual input gets.

    python benchmarks/hostile.py [--out benchmarks/results] [--keep FOLDER] [--jobs 2]

Builds small inputs in a temporary folder (a 16 x 48 x 48 phantom of two ellipsoids on an oblique, anisotropic
grid, its sparse labels, and a model fine-tuned on them by the CLI itself), runs ``python -m ContrastiveSegLib ...``
in a fresh process per case (``--threads 1``; ``--preset fast --steps 2`` where a case trains) and writes
``results/hostile.md``: per case the expected outcome (exit 2 with one line that names the problem and nothing left
in the output folder, or exit 0 with correct outputs), the exit code, the one-line message, what the output folder
holds afterwards, the process's peak memory, and whether that is what was expected. A full disk is a file-size
limit (RLIMIT_FSIZE, SIGXFSZ ignored): the write stops short as on a full disk, without root. A read-only folder is
one the process may not write: chmod 0555, and for root (whom permission bits do not stop) a read-only tmpfs
mounted on it (the case is skipped where root may not mount).
About two minutes on 2 cores; the exit status is 1 when a case did not go as expected.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TRAIN = ["--preset", "fast", "--steps", "2", "--seed", "0"]
COMMON = ["--threads", "1", "--device", "cpu"]
STAGE_LINE = re.compile(r"^\[\s*\d+(\.\d+)? s\] ")  # a stage line of a run's log (not a terminal)
SHAPE = (16, 48, 48)  # (z, y, x)
SPACING = (0.9, 0.9, 2.5)  # (x, y, z) mm
ORIGIN = (-20.0, 15.5, 7.25)
ANNOTATED = (4, 8, 11)  # slices along z
FILE_SIZE_LIMIT = 64 * 1024  # bytes: the label map fits, the probabilities and a model do not


# ----------------------------------------------------------------------------------------------- inputs
def _direction() -> tuple[float, ...]:
    """An oblique proper rotation (20 degrees about z, then 10 about x), row-major."""
    a, b = np.radians(20.0), np.radians(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple(float(v) for v in (rx @ rz).ravel())


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32, reference uint8 with 0/1/2, sparse uint8 with only ANNOTATED slices labelled)."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    nz, ny, nx = SHAPE
    first = ((z - nz * .5) / (nz * .4)) ** 2 + ((y - ny * .38) / (ny * .2)) ** 2 + ((x - nx * .32) / (nx * .18)) ** 2 <= 1
    second = ((z - nz * .5) / (nz * .42)) ** 2 + ((y - ny * .62) / (ny * .16)) ** 2 + \
        ((x - nx * .68) / (nx * .2)) ** 2 <= 1
    reference = np.zeros(SHAPE, np.uint8)
    reference[first], reference[second & ~first] = 1, 2
    image = np.choose(reference, [20.0, 100.0, 60.0]).astype(np.float32)
    image += np.random.default_rng(0).normal(0.0, 12.0, SHAPE).astype(np.float32)
    sparse = np.zeros(SHAPE, np.uint8)
    for s in ANNOTATED:
        sparse[s] = reference[s]
    return image, reference, sparse


def _write(array: np.ndarray, path: Path, *, spacing=SPACING, direction=None) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    image.SetDirection(direction or _direction())
    sitk.WriteImage(image, str(path))
    return path


def _cut(source: Path, path: Path, keep: float = 0.6) -> Path:
    """A copy of ``source`` that stops at ``keep`` of its length: an interrupted copy or download."""
    data = source.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def _dicom_series(image: np.ndarray, folder: Path, missing: int) -> Path:
    """One DICOM file per slice (positions and orientation in the tags GDCM reads), slice ``missing`` left out."""
    folder.mkdir()
    volume = sitk.GetImageFromArray(np.round(image).astype(np.int16))
    volume.SetSpacing(SPACING)
    volume.SetOrigin(ORIGIN)
    volume.SetDirection(_direction())
    d = volume.GetDirection()
    uid = "1.2.826.0.1.3680043.2.1125.424242.7"
    shared = {"0008|0060": "CT", "0020|000d": uid + ".1", "0020|000e": uid, "0010|0010": "Phantom^Hostile",
              "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
              "0018|0050": f"{SPACING[2]:.6f}"}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        if k == missing:
            continue
        plane = volume[:, :, k]
        for tag, value in shared.items():
            plane.SetMetaData(tag, value)
        plane.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))))
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0008|0018", f"{uid}.{k + 1}")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    return folder


def _singular_nrrd(path: Path) -> Path:
    """A NRRD whose first two axes point the same way (direction determinant 0)."""
    nz, ny, nx = SHAPE
    head = (f"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: {nx} {ny} {nz}\n"
            "space directions: (1,0,0) (1,0,0) (0,0,1)\nencoding: raw\nendian: little\nspace origin: (0,0,0)\n\n")
    path.write_bytes(head.encode() + np.zeros(SHAPE, np.int16).tobytes())
    return path


def _rewrite_model(source: Path, path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the model ``source`` whose JSON header ``edit`` changed in place (the tensors untouched)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ContrastiveSegLib.zoo.weights import HEADER_KEY

    with safe_open(str(source), framework="pt") as handle:
        header = json.loads(handle.metadata()[HEADER_KEY])
    edit(header)
    save_file(load_file(str(source)), str(path), metadata={HEADER_KEY: json.dumps(header)})
    return path


def _set(*keys_and_value) -> Callable[[dict], None]:
    *keys, value = keys_and_value

    def edit(header: dict) -> None:
        for key in keys[:-1]:
            header = header[key]
        header[keys[-1]] = value
    return edit


# ----------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One run of the CLI. ``phrase`` is in the refusal's one line (None: the run must succeed and ``check`` must
    return no problem). The output folder ``out`` must hold nothing after a refusal but the ``existing`` files
    (name -> sha256), unchanged."""

    name: str
    argv: list
    out: Path
    phrase: str | None = None
    check: Callable[[], str | None] | None = None
    runs: int = 1  # a rerun replaces the outputs: nothing may be orphaned
    file_size_limit: int | None = None
    read_only: bool = False
    timeout: float = 300.0
    code: int | None = None  # the exit code expected (default: 2 with a phrase, else 0)
    existing: dict = field(default_factory=dict)  # files in ``out`` before the run that must stay as they are
    env: dict = field(default_factory=dict)  # environment variables for the run
    stdout: str | None = None  # "closed" (>&-), "broken" (a pipe whose reader has gone), "full" (/dev/full)
    close_stderr: bool = False  # 2>&-
    deleted_cwd: bool = False  # run in a working folder deleted before the command starts
    signal: tuple | None = None  # (signum, text to wait for on stdout or None, seconds after it)
    judge: Callable[["Outcome"], str | None] | None = None  # a further check on the outcome (stderr, stdout)
    max_peak_mb: float | None = None
    skip: str | None = None  # why the case cannot run here
    after_work: bool = False  # found only after work began: the log's stage lines ("[  12.3 s] ...") may precede it


@dataclass
class Outcome:
    code: int | str
    stderr: str
    seconds: float
    peak_mb: float
    left: list[str] = field(default_factory=list)
    verdict: str = ""
    message: str = ""
    stdout: str = ""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(case: Case, logs: Path) -> Outcome:
    """Run ``case`` (``case.runs`` times; the last run counts) in a fresh process with its limits; the peak resident
    memory comes from wait4, per process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p),
           "OMP_NUM_THREADS": "1", **case.env}
    env.pop("CONTRASTIVESEG_DEBUG", None)
    gone = logs / "gone"

    def limits() -> None:  # in the child, before exec
        if case.file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.file_size_limit, case.file_size_limit))
        if case.stdout == "closed":
            os.close(1)
        if case.close_stderr:
            os.close(2)
        if case.deleted_cwd:
            os.chdir(gone)
            os.rmdir(gone)

    command = [sys.executable, "-m", "ContrastiveSegLib", *map(str, case.argv)]
    for _ in range(case.runs):
        if case.deleted_cwd:
            gone.mkdir(exist_ok=True)
        with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err, \
                contextlib.ExitStack() as stack:
            stdout = out
            if case.stdout == "full":
                stdout = stack.enter_context(open("/dev/full", "wb"))
            elif case.stdout == "broken":
                reader, writer = os.pipe()
                os.close(reader)
                stdout = writer
            start = time.perf_counter()
            process = subprocess.Popen(command, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                       preexec_fn=limits, cwd=logs)
            if case.stdout == "broken":
                os.close(writer)
            code, usage, signalled = None, None, case.signal is None
            while code is None:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    code = os.waitstatus_to_exitcode(status)
                elif time.perf_counter() - start > case.timeout:
                    process.kill()
                    _, _, usage = os.wait4(process.pid, 0)
                    code = f"timeout {case.timeout:.0f} s"
                else:
                    if not signalled:
                        signalled = _maybe_signal(process, case.signal, logs / "stdout", start)
                    time.sleep(0.01)
            process.returncode = code if isinstance(code, int) else -9
        seconds = time.perf_counter() - start
    return Outcome(code, (logs / "stderr").read_text(errors="replace"), seconds, usage.ru_maxrss / 1024,
                   stdout=(logs / "stdout").read_text(errors="replace"))


_SEEN: dict[int, float] = {}  # process id -> when the text waited for appeared


def _maybe_signal(process, spec: tuple, stdout: Path, start: float) -> bool:
    """Send ``spec``'s signal once its text is on stdout (or from the start) and its delay has passed."""
    signum, text, delay = spec
    now = time.perf_counter()
    if process.pid not in _SEEN:
        if text is not None and text not in stdout.read_text(errors="replace"):
            return False
        _SEEN[process.pid] = now if text is not None else start
    if now - _SEEN[process.pid] < delay:
        return False
    process.send_signal(signum)
    return True


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` read-only while the block runs: chmod 0555; for root, whom permission bits do not stop, a read-only
    tmpfs mounted on it (EROFS, as a read-only file system). Yields False where that cannot be done."""
    folder.chmod(0o555)
    mounted = False
    try:
        if os.geteuid() == 0:
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                                     capture_output=True).returncode == 0
            yield mounted
        else:
            yield True
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
        folder.chmod(0o755)


def _judge(case: Case, outcome: Outcome, root: Path) -> None:
    outcome.left = sorted(os.listdir(case.out))
    lines = outcome.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("contrastiveseg: error: ")]
    outcome.message = (errors[-1][len("contrastiveseg: error: "):] if errors else "").replace(str(root), "…")
    expected_code = case.code if case.code is not None else (2 if case.phrase is not None else 0)
    problems = [] if outcome.code == expected_code else [f"exit {outcome.code}"]
    if case.phrase is not None:
        extra = [line for line in lines[:-1] if not (case.after_work and STAGE_LINE.match(line))]
        if not lines or extra or not lines[-1].startswith("contrastiveseg: error: "):
            problems.append(f"{len(lines)} stderr lines")
        if case.phrase not in outcome.message.replace("…", str(root)):
            problems.append("other message")
        kept = {name: _sha(case.out / name) if (case.out / name).is_file() else "folder" for name in outcome.left}
        if expected_code == 130 and "nothing was written" not in outcome.message:
            # A cancel after the outputs moved into place: every file there is one the line names.
            unnamed = [name for name in outcome.left if name not in case.existing and name not in outcome.message]
            problems += [f"unnamed output {', '.join(unnamed)}"] if unnamed else []
        elif sorted(kept) != sorted(case.existing):
            problems.append("output left")
        if any(kept.get(name) != digest for name, digest in case.existing.items()):
            problems.append("an input was changed")
    elif not problems and case.check is not None:
        problem = case.check()
        problems += [problem] if problem else []
    if case.judge is not None:
        problem = case.judge(outcome)
        problems += [problem] if problem else []
    if case.max_peak_mb is not None and outcome.peak_mb > case.max_peak_mb:
        problems.append(f"peak {outcome.peak_mb:.0f} MB > {case.max_peak_mb:.0f} MB")
    outcome.verdict = "as expected" if not problems else "**differs**: " + ", ".join(problems)


def _labels_check(path: Path, sparse: np.ndarray, values: set[int]) -> Callable[[], str | None]:
    """The output is on the image's grid, holds only ``values`` and keeps the painted slices verbatim."""
    def check() -> str | None:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        if array.shape != SHAPE or not np.allclose(image.GetDirection(), _direction(), atol=1e-5):
            return "grid differs"
        if not set(np.unique(array).tolist()) <= values:
            return f"values {sorted(set(np.unique(array).tolist()))}"
        if any(not np.array_equal(array[s], sparse[s]) for s in ANNOTATED):
            return "painted slices changed"
        return None
    return check


def _detached_check(folder: Path, header: str, data: str, field_text: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if sorted(os.listdir(folder)) != sorted([header, data]):
            return f"folder holds {sorted(os.listdir(folder))}"
        if field_text not in (folder / header).read_text(errors="replace"):
            return f"header does not name {data}"
        return None
    return check


def build_cases(root: Path) -> tuple[list[Case], Callable[[], None]]:
    """The inputs in ``root/in`` and the cases; the second value makes the model the crafted cases start from."""
    inputs = root / "in"
    inputs.mkdir()
    image_array, reference, sparse = _phantom()
    image = _write(image_array, inputs / "image.nii.gz")
    labels = _write(sparse, inputs / "labels.nii.gz")
    model = inputs / "model.safetensors"
    cases: list[Case] = []

    def out(name: str) -> Path:
        folder = root / "out" / name
        folder.mkdir(parents=True)
        return folder

    def add(name: str, argv: list, folder: Path, phrase: str | None = None, **options) -> None:
        cases.append(Case(name, argv, folder, phrase, **options))

    # Controls: the same inputs, nothing hostile.
    folder = out("control-finetune")
    add("control: finetune the phantom (the model the model cases start from)",
        ["finetune", image, labels, "-o", folder / "model.safetensors", *TRAIN, *COMMON], folder,
        check=lambda f=folder: None if (f / "model.safetensors").is_file() else "no model")
    folder = out("control-segment")
    add("control: segment the phantom", ["segment", image, labels, "-o", folder / "seg.nii.gz", *TRAIN, *COMMON],
        folder, check=_labels_check(folder / "seg.nii.gz", sparse, {0, 1, 2}))

    # Unusual but valid.
    for suffix, data, field_text in ((".mhd", "seg.zraw", "ElementDataFile = seg.zraw"),
                                     (".nhdr", "seg.raw.gz", "data file: seg.raw.gz")):
        folder = out(f"detached{suffix}")
        add(f"{suffix} output (header + data file), run twice", ["predict", image, "--model", model, "--labels",
            labels, "-o", folder / f"seg{suffix}", *COMMON], folder, runs=2,
            check=_detached_check(folder, f"seg{suffix}", data, field_text))
    big = sparse.astype(np.uint32)
    big[big == 2] = 70000
    big_labels = _write(big, inputs / "labels_70000.nii.gz")
    folder = out("labels-70000")
    add("label value 70000 (> 65535, uint32)", ["segment", image, big_labels, "-o", folder / "seg.nii.gz", *TRAIN,
        *COMMON], folder, check=_labels_check(folder / "seg.nii.gz", big, {0, 1, 70000}))

    # Damaged and unusual files.
    plain_image = _write(image_array, inputs / "image.nii")
    plain_labels = _write(sparse, inputs / "labels.nii")
    for what, source in (("image", plain_image), ("image", image), ("labels", plain_labels), ("labels", labels)):
        suffix = ".nii.gz" if source.name.endswith(".gz") else ".nii"
        cut = _cut(source, inputs / f"cut_{what}{suffix}")
        pair = [cut, labels] if what == "image" else [image, cut]
        folder = out(f"truncated-{what}{suffix}")
        add(f"truncated {what} {suffix} (60 % of the file)", ["segment", *pair, "-o", folder / "seg.nii.gz", *TRAIN,
            *COMMON], folder, f"{what} {cut} is damaged")
    empty_file = inputs / "empty.nii.gz"
    empty_file.write_bytes(b"")
    folder = out("zero-byte-image")
    add("image file of 0 bytes", ["segment", empty_file, labels, "-o", folder / "seg.nii.gz", *COMMON], folder,
        "cannot read image")
    fifo = inputs / "fifo.nii.gz"
    os.mkfifo(fifo)
    folder = out("fifo-image")
    add("FIFO as image (no writer: open() would block)", ["segment", fifo, labels, "-o", folder / "seg.nii.gz",
        *COMMON], folder, f"image {fifo} is a FIFO", timeout=60)
    folder = out("device-image")
    add("/dev/zero as image (endless)", ["segment", "/dev/zero", labels, "-o", folder / "seg.nii.gz", *COMMON], folder,
        "image /dev/zero is a device", timeout=60)
    series = _dicom_series(image_array, inputs / "dicom_missing_slice", missing=7)
    folder = out("dicom-missing-slice")
    add("DICOM series with slice 8 of 16 missing", ["segment", series, labels, "-o", folder / "seg.nii.gz", *COMMON],
        folder, "DICOM slices are unevenly spaced")
    empty_folder = inputs / "empty_folder"
    empty_folder.mkdir()
    folder = out("empty-folder")
    add("empty folder as image", ["segment", empty_folder, labels, "-o", folder / "seg.nii.gz", *COMMON], folder,
        "holds no DICOM series")
    singular = _singular_nrrd(inputs / "singular.nrrd")
    folder = out("singular-direction")
    add("image with a singular direction matrix (.nrrd)", ["segment", singular, labels, "-o", folder / "seg.nii.gz",
        *COMMON], folder, "direction matrix is singular")
    nan_array = image_array.copy()
    nan_array[3, 10, 10:13] = np.nan
    nan_image = _write(nan_array, inputs / "nan.nrrd")
    folder = out("nan-voxels")
    add("image with 3 NaN voxels", ["segment", nan_image, labels, "-o", folder / "seg.nii.gz", *TRAIN, *COMMON],
        folder, "image holds 3 NaN or infinite voxels")
    flat = inputs / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(image_array[8]), str(flat))
    folder = out("2d-image")
    add("2D image", ["segment", flat, labels, "-o", folder / "seg.nii.gz", *COMMON], folder, "is 2D")

    # Arguments that do not fit together.
    folder = out("swapped")
    add("image and labels swapped", ["segment", labels, image, "-o", folder / "seg.nii.gz", *TRAIN, *COMMON], folder,
        "did you swap the image and the labels")
    other_grid = _write(sparse, inputs / "labels_other_spacing.nii.gz", spacing=(0.9, 0.9, 3.0))
    folder = out("other-grid")
    add("labels on another grid (spacing)", ["segment", image, other_grid, "-o", folder / "seg.nii.gz", *COMMON],
        folder, "image and labels are on different grids: spacing differs")
    unpainted = _write(np.zeros_like(sparse), inputs / "labels_empty.nii.gz")
    folder = out("no-annotation")
    add("labels with no painted voxel", ["segment", image, unpainted, "-o", folder / "seg.nii.gz", *TRAIN, *COMMON],
        folder, "no annotated slice")
    folder = out("same-path")
    add("-o X --probabilities X", ["segment", image, labels, "-o", folder / "x.nii.gz", "--probabilities",
        folder / "x.nii.gz", *TRAIN, *COMMON], folder, "is given for two outputs")
    folder = out("read-only")
    add("read-only output folder", ["segment", image, labels, "-o", folder / "seg.nii.gz", *TRAIN, *COMMON], folder,
        f"output folder {folder} is not writable", read_only=True)
    folder = out("missing-folder")
    add("output folder missing", ["segment", image, labels, "-o", folder / "nowhere" / "seg.nii.gz", *COMMON], folder,
        "output folder does not exist")

    # Crafted model files (predict: no training).
    crafted = [("axis 7", "axis7", _set("axis", 7), "header field 'axis' must be an integer from 0 to 2"),
               ("context 1000", "context1000", _set("input", "context", 1000),
                "header field 'input.context' must be an integer from 0 to 8"),
               ("NaN intensity window", "nan-window", _set("input", "window", [float("nan"), 0.99]),
                "header field 'input.window' must be two quantiles"),
               ("axis as text \"0\"", "axis-text", _set("axis", "0"),
                "header field 'axis' must be an integer from 0 to 2"),
               ("label values as text \"0,1,2\"", "labels-text", _set("label_values", "0,1,2"),
                "header field 'label_values' must be a list of integers"),
               ("network.in_channels 7, input spec 5", "in-channels", _set("network", "in_channels", 7),
                "header field 'network.in_channels' is 7"),
               ("huge network: widths 1024 x 5, two decoders (about 1.2 GB declared)", "huge",
                lambda h: h["network"].update(features=[1024] * 5, decoder_features=1024, decoders=2),
                "does not match the network its header declares")]
    crafted_files = []
    for title, slug, edit, phrase in crafted:
        path = inputs / f"model_{slug}.safetensors"
        crafted_files.append((path, edit))
        folder = out(f"model-{slug}")
        add(f"model header: {title}", ["predict", image, "--model", path, "-o", folder / "seg.nii.gz", *COMMON],
            folder, phrase)
    truncated_model = inputs / "model_truncated.safetensors"
    folder = out("model-truncated")
    add("model file cut short", ["predict", image, "--model", truncated_model, "-o", folder / "seg.nii.gz", *COMMON],
        folder, "is not a readable safetensors file")

    # A full disk: writes stop at FILE_SIZE_LIMIT bytes.
    folder = out("short-write-probabilities")
    add(f"full disk: probabilities past a {FILE_SIZE_LIMIT // 1024} KiB file-size limit",
        ["predict", image, "--model", model, "--labels", labels, "-o", folder / "seg.nii.gz", "--probabilities",
         folder / "p.nii.gz", *COMMON], folder, "cannot write",  # the experts' temporary files or p.nii.gz
        file_size_limit=FILE_SIZE_LIMIT, after_work=True)
    folder = out("short-write-model")
    add(f"full disk: model past a {FILE_SIZE_LIMIT // 1024} KiB file-size limit (finetune)",
        ["finetune", image, labels, "-o", folder / "model.safetensors", *TRAIN, *COMMON], folder, "cannot write",
        file_size_limit=FILE_SIZE_LIMIT, after_work=True)

    derived = _issue18_cases(root, inputs, out, add, image, labels, model, image_array, sparse)

    def make_models() -> None:
        """After the control finetune: the model every model case starts from, and its crafted copies."""
        shutil.copyfile(root / "out" / "control-finetune" / "model.safetensors", model)
        for path, edit in crafted_files:
            _rewrite_model(model, path, edit)
        _cut(model, truncated_model, 0.5)
        for make in derived:
            make()

    return cases, make_models


def _with_nan_weights(source: Path, path: Path, *, encoder: bool = False) -> Path:
    """A copy of the model ``source`` with one NaN weight; ``encoder``: only its encoder, as an encoder file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ContrastiveSegLib.zoo.weights import HEADER_KEY, save_weights

    with safe_open(str(source), framework="pt") as handle:
        header = json.loads(handle.metadata()[HEADER_KEY])
    tensors = load_file(str(source))
    if encoder:
        tensors = {name[len("encoder."):]: t for name, t in tensors.items() if name.startswith("encoder.")}
        network = header["network"]
        header = {"kind": "encoder", "input_channels": network["in_channels"], "features": network["features"],
                  "input": header["input"], **({"norm": network["norm"]} if "norm" in network else {})}
    name = next(n for n, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    header.pop("format_version", None)
    save_weights(path, tensors, header)
    return path


def _no_escape(outcome: "Outcome") -> str | None:
    return "escape code printed" if "\x1b" in outcome.stderr + outcome.stdout else None


def _quiet_stdout(outcome: "Outcome") -> str | None:
    return f"stdout holds {outcome.stdout[:60]!r}" if outcome.stdout.strip() else None


def _no_libgomp(outcome: "Outcome") -> str | None:
    return "libgomp lines" if "libgomp" in outcome.stderr else None


def _issue18_cases(root: Path, inputs: Path, out: Callable[[str], Path], add: Callable, image: Path, labels: Path,
                   model: Path, image_array: np.ndarray, sparse: np.ndarray) -> list[Callable[[], None]]:
    """The classes of issue 18: outputs that are inputs, hangs, signals, accepted-but-wrong inputs, tracebacks,
    misleading messages, memory. Returns what to make once the control model exists."""
    import nibabel

    derived: list[Callable[[], None]] = []
    nz, ny, nx = SHAPE

    # Data loss: an output that resolves to an input is refused before anything runs; the input stays as it was.
    def copies(name: str) -> tuple[Path, Path, Path]:
        folder = out(name)
        return folder, Path(shutil.copy(image, folder / "image.nii.gz")), Path(shutil.copy(labels,
                                                                                             folder / "labels.nii.gz"))
    folder, img, lab = copies("same-as-image")
    add("output = input: segment -o IMAGE", ["segment", img, lab, "-o", img, *TRAIN, *COMMON], folder,
        "would overwrite an input", existing=["image.nii.gz", "labels.nii.gz"])
    folder, img, lab = copies("same-as-labels")
    add("output = input: segment -o LABELS", ["segment", img, lab, "-o", lab, *TRAIN, *COMMON], folder,
        "would overwrite an input", existing=["image.nii.gz", "labels.nii.gz"])
    folder, img, lab = copies("same-dotdot")
    (folder / "sub").mkdir()
    add("output = input: segment -o sub/../IMAGE", ["segment", img, lab, "-o", folder / "sub" / ".." / img.name,
        *TRAIN, *COMMON], folder, "would overwrite an input", existing=["image.nii.gz", "labels.nii.gz", "sub"])
    folder, img, lab = copies("same-probabilities")
    add("output = input: --probabilities IMAGE", ["segment", img, lab, "-o", folder / "seg.nii.gz",
        "--probabilities", img, *TRAIN, *COMMON], folder, "would overwrite an input",
        existing=["image.nii.gz", "labels.nii.gz"])
    folder, img, lab = copies("same-hardlink")
    os.link(img, folder / "hard.nii.gz")
    add("output = input: -o a hard link to IMAGE", ["segment", img, lab, "-o", folder / "hard.nii.gz", *TRAIN,
        *COMMON], folder, "would overwrite an input", existing=["image.nii.gz", "labels.nii.gz", "hard.nii.gz"])
    folder, img, lab = copies("same-predict-labels")
    add("output = input: predict --labels LABELS -o LABELS", ["predict", img, "--model", model, "--labels", lab,
        "-o", lab, *COMMON], folder, "would overwrite an input", existing=["image.nii.gz", "labels.nii.gz"])
    folder = out("same-init-model")
    refine = folder / "model.safetensors"
    derived.append(lambda: shutil.copyfile(model, refine))
    add("output = input: finetune --init-model M -o M", ["finetune", image, labels, "--init-model", refine, "-o",
        refine, *TRAIN, *COMMON], folder, "would overwrite an input", existing=["model.safetensors"])

    # Hangs: special files anywhere a read would open them; counts bounded.
    fifo = inputs / "fifo_data.raw"
    os.mkfifo(fifo)
    listed = inputs / "list_fifo.mhd"
    listed.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {nx} {ny} {nz}\nElementType = MET_FLOAT\n"
                      f"ElementDataFile = LIST 2D\n{fifo.name}\n")
    folder = out("mhd-list-fifo")
    add("MetaImage ElementDataFile = LIST naming a FIFO", ["segment", listed, labels, "-o", folder / "seg.nii.gz",
        *COMMON], folder, "is a FIFO", timeout=60)
    fifo_folder = inputs / "pretrain_fifo"
    fifo_folder.mkdir()
    shutil.copy(image, fifo_folder / "a.nii.gz")
    os.mkfifo(fifo_folder / "b.nii.gz")
    pretrain = ["--method", "simclr", "--batch-size", "2", "--patch", "32", "--features", "4,8,8,8,8"]
    folder = out("pretrain-fifo")
    add("pretrain: a folder holding a FIFO named *.nii.gz", ["pretrain", fifo_folder, *pretrain, "-o",
        folder / "enc.safetensors", *COMMON], folder, "which is a FIFO", timeout=60)
    folder = out("pretrain-dev-zero")
    add("pretrain: /dev/zero as data", ["pretrain", "/dev/zero", *pretrain, "-o", folder / "enc.safetensors",
        *COMMON], folder, "data /dev/zero is a device", timeout=60)
    encoder_fifo = inputs / "encoder_fifo.safetensors"
    os.mkfifo(encoder_fifo)
    folder = out("encoder-fifo")
    add("--encoder a FIFO", ["segment", image, labels, "-o", folder / "seg.nii.gz", "--encoder", encoder_fifo,
        *TRAIN, *COMMON], folder, "is a FIFO", timeout=60)
    folder = out("steps-1e12")
    add("--steps 1000000000000", ["segment", image, labels, "-o", folder / "seg.nii.gz", *TRAIN, "--steps",
        10**12, *COMMON], folder, "--steps must be <= 1000000", timeout=60)
    folder = out("pretrain-steps-1e30")
    add("pretrain --steps 10^30", ["pretrain", image, *pretrain, "-o", folder / "enc.safetensors", "--steps",
        10**30, *COMMON], folder, "--steps must be <= 1000000", timeout=60)
    folder = out("batch-1e9")
    add("--batch-size 10^9", ["segment", image, labels, "-o", folder / "seg.nii.gz", *TRAIN, "--batch-size", 10**9,
        *COMMON], folder, "--batch-size must be <= 1024", timeout=60)

    # Signals: exit 130 and the line on what was written, at any moment.
    long_run = ["--preset", "fast", "--steps", "400", "--seed", "0", "--progress", "json", *COMMON]
    for title, signum, text, delay in (("SIGINT 0.3 s after start", signal.SIGINT, None, 0.3),
                                       ("SIGTERM 0.3 s after start", signal.SIGTERM, None, 0.3),
                                       ("SIGINT at the first fine-tuning step", signal.SIGINT, '"finetune"', 0.0),
                                       ("SIGINT 0.5 s into fine-tuning", signal.SIGINT, '"finetune"', 0.5),
                                       ("SIGINT 1.3 s into fine-tuning", signal.SIGINT, '"finetune"', 1.3),
                                       ("SIGTERM 0.8 s into fine-tuning", signal.SIGTERM, '"finetune"', 0.8),
                                       ("SIGHUP 0.8 s into fine-tuning", signal.SIGHUP, '"finetune"', 0.8),
                                       ("SIGTERM while predicting", signal.SIGTERM, '"predict"', 0.0)):
        folder = out("signal-" + "-".join(title.lower().replace(".", "").split()))
        steps = ["--steps", 60] if text == '"predict"' else []  # reach the prediction soon on a busy machine
        add(f"{title} (segment with probabilities)", ["segment", image, labels, "-o", folder / "seg.nii.gz",
            "--probabilities", folder / "p.nii.gz", *long_run, *steps], folder, "cancelled", code=130,
            signal=(signum, text, delay), timeout=300)
    folder = out("signal-pretrain")
    add("SIGTERM 1 s into pretraining", ["pretrain", image, *pretrain, "-o", folder / "enc.safetensors", "--steps",
        5000, "--progress", "json", *COMMON], folder, "cancelled", code=130,
        signal=(signal.SIGTERM, '"pretrain"', 1.0), timeout=300)
    folder = out("stale-staging")
    stale = folder / f".seg.nii.gz.tmp-{_dead_pid()}@{socket.gethostname()}-k1ll3d00"
    stale.mkdir()
    (stale / "seg.nii.gz").write_bytes(b"half a file")
    add("a staging folder left by SIGKILL, then a successful run", ["segment", image, labels, "-o",
        folder / "seg.nii.gz", *TRAIN, *COMMON], folder,
        check=lambda f=folder: None if sorted(os.listdir(f)) == ["seg.nii.gz"] else f"left {os.listdir(f)}")

    # Accepted but wrong: refused now.
    header = nibabel.load(str(image)).header
    for what, index, value in (("NaN", 1, float("nan")), ("inf", 3, float("inf"))):
        bad = header.copy()
        bad["pixdim"][index] = value
        path = inputs / f"spacing_{what}.nii.gz"
        nibabel.save(nibabel.Nifti1Image(np.asarray(nibabel.load(str(image)).dataobj), None, bad), str(path))
        folder = out(f"spacing-{what}")
        add(f"NIfTI with {what} spacing", ["segment", path, labels, "-o", folder / "seg.nii.gz", *TRAIN, *COMMON],
            folder, "unusable voxel spacing")
    sheared = inputs / "sheared.nrrd"
    sheared.write_bytes((f"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
                         f"sizes: {nx} {ny} {nz}\nspace directions: (0.9,0,0) (0.45,0.9,0) (0,0,2.5)\n"
                         "encoding: raw\nendian: little\nspace origin: (0,0,0)\n\n").encode()
                        + image_array.astype("<f4").tobytes())
    scaled = inputs / "scaled.mha"
    scaled.write_bytes((f"ObjectType = Image\nNDims = 3\nDimSize = {nx} {ny} {nz}\nElementType = MET_FLOAT\n"
                        "TransformMatrix = 2 0 0 0 1 0 0 0 1\nElementSpacing = 0.9 0.9 2.5\nBinaryData = True\n"
                        "BinaryDataByteOrderMSB = False\nElementDataFile = LOCAL\n").encode()
                       + image_array.astype("<f4").tobytes())
    for title, path in (("NRRD with sheared space directions", sheared),
                        ("MHA with TransformMatrix = 2 0 0 0 1 0 0 0 1", scaled)):
        folder = out(path.stem + "-direction")
        add(title, ["segment", path, _write(sparse, inputs / f"labels_{path.stem}.nrrd", spacing=(0.9, 0.9, 2.5),
            direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)), "-o", folder / "seg.nii.gz", *TRAIN, *COMMON], folder,
            "not orthonormal")
    nan_model, nan_encoder = inputs / "model_nan_weights.safetensors", inputs / "encoder_nan.safetensors"
    derived.append(lambda: _with_nan_weights(model, nan_model))
    derived.append(lambda: _with_nan_weights(model, nan_encoder, encoder=True))
    folder = out("nan-model")
    add("a model with a NaN weight (predict)", ["predict", image, "--model", nan_model, "-o", folder / "seg.nii.gz",
        *COMMON], folder, f"model {nan_model} holds 1 NaN or infinite values")
    folder = out("nan-encoder")
    add("an --encoder with a NaN weight", ["segment", image, labels, "--encoder", nan_encoder, "-o",
        folder / "seg.nii.gz", *TRAIN, *COMMON], folder, f"encoder {nan_encoder} holds 1 NaN or infinite values")
    folder = out("nan-init-model")
    add("an --init-model with a NaN weight", ["finetune", image, labels, "--init-model", nan_model, "-o",
        folder / "m.safetensors", *TRAIN, *COMMON], folder, f"model {nan_model} holds 1 NaN or infinite values")
    escape_model = inputs / "model_escape.safetensors"
    derived.append(lambda: _rewrite_model(model, escape_model, _set("encoder", "\x1b[2J\x1b[31mred\x1b]0;title\x07")))
    folder = out("escape-codes")
    add("model header field with terminal escape codes (printed in the summary)", ["predict", image, "--model",
        escape_model, "-o", folder / "seg.nii.gz", *COMMON], folder, judge=_no_escape,
        check=lambda f=folder: None if (f / "seg.nii.gz").is_file() else "no output")
    folder = out("pretrain-steps-0")
    existing = folder / "enc.safetensors"
    derived.append(lambda: shutil.copyfile(model, existing))
    add("pretrain --steps 0 over an existing file", ["pretrain", image, *pretrain, "-o", existing, "--steps", 0,
        *COMMON], folder, "--steps must be >= 1", existing=["enc.safetensors"])
    folder = out("methods-stdout-closed")
    add("methods --json with stdout closed (>&-)", ["methods", "--json"], folder, "stdout is closed", stdout="closed")

    # Tracebacks and exit 1 where a one-line refusal belongs.
    for title, extra, phrase, env in (
            ("--seed -1", ["--seed", -1], "--seed must be >= 0", {}),
            ("--seed 2^70", ["--seed", 2**70], "--seed must be <= 4294967295", {}),
            ("--threads 2^70", ["--threads", 2**70], "--threads must be <= 256", {}),
            ("--threads 4096", ["--threads", 4096], "--threads must be <= 256", {}),
            ("OMP_NUM_THREADS=100000", [], "OMP_NUM_THREADS=100000 asks for more than 256",
             {"OMP_NUM_THREADS": "100000"})):
        folder = out("option-" + "-".join(title.replace("=", " ").replace("^", "e").split()).lower())
        argv = ["segment", image, labels, "-o", folder / "seg.nii.gz", *TRAIN, "--device", "cpu", *extra]
        if "--threads" not in extra and not env:
            argv += ["--threads", 1]
        add(title, argv, folder, phrase, env=env)
    for value in ("nan", "-1", "inf"):
        folder = out(f"pretrain-lr-{value}")
        add(f"pretrain --lr {value}", ["pretrain", image, *pretrain, "-o", folder / "enc.safetensors", "--lr", value,
            *COMMON], folder, "--lr must be a finite number > 0")
    extreme = image_array.copy()
    extreme[::2] = 3.0e38
    extreme[1::2] = -3.0e38
    folder = out("float-limit")
    add("image intensities near the float limit (+-3e38)", ["segment", _write(extreme, inputs / "extreme.nii.gz"),
        labels, "-o", folder / "seg.nii.gz", *TRAIN, *COMMON], folder, "beyond the +-1e+15")
    complex_image = inputs / "complex.nii.gz"
    affine = np.diag([*SPACING, 1.0])
    nibabel.save(nibabel.Nifti1Image(np.transpose(image_array + 1j * image_array, (2, 1, 0)).astype(np.complex64),
                                     affine), str(complex_image))
    folder = out("complex")
    add("a complex-valued image", ["segment", complex_image, labels, "-o", folder / "seg.nii.gz", *TRAIN, *COMMON],
        folder, "holds complex values")
    folder = out("name-too-long")
    add("an output name of 307 bytes", ["segment", image, labels, "-o", folder / ("a" * 300 + ".nii.gz"), *TRAIN,
        *COMMON], folder, "allows at most 255")
    folder = out("deleted-cwd")
    add("a deleted working folder with a relative -o", ["segment", image, labels, "-o", "seg.nii.gz", *TRAIN,
        *COMMON], folder, "the working folder no longer exists", deleted_cwd=True)
    for how in ("broken", "full"):
        folder = out(f"progress-json-{how}")
        add(f"--progress json into a {'pipe whose reader has gone' if how == 'broken' else 'full device (/dev/full)'}",
            ["segment", image, labels, "-o", folder / "seg.nii.gz", *TRAIN, *COMMON, "--progress", "json"], folder,
            "cannot write the progress to stdout", stdout=how)
    folder = out("stderr-closed")
    add("stderr closed (2>&-) on a refusal: exit 2, nothing on stdout", ["segment", inputs / "missing.nii.gz",
        labels, "-o", folder / "seg.nii.gz", *COMMON], folder, code=2, close_stderr=True, judge=_quiet_stdout)

    # Messages that mislead.
    locked = inputs / "locked.nii.gz"
    shutil.copy(image, locked)
    locked.chmod(0)
    folder = out("mode-000")
    add("an image of mode 000", ["segment", locked, labels, "-o", folder / "seg.nii.gz", *COMMON], folder,
        "cannot be read (permission denied)", skip="root reads a file of mode 000" if os.geteuid() == 0 else None)
    folder = out("name-247")
    name = "b" * 240 + ".nii.gz"
    add("a valid output name of 247 characters", ["segment", image, labels, "-o", folder / name, *TRAIN, *COMMON],
        folder, check=lambda f=folder, n=name: None if (f / n).is_file() else "no output")
    huge_labels = sparse.astype(np.float32)
    huge_labels[4, 0, 0] = 1e20
    folder = out("labels-1e20")
    add("labels holding 1e20", ["segment", image, _write(huge_labels, inputs / "labels_1e20.nii.gz"), "-o",
        folder / "seg.nii.gz", *TRAIN, *COMMON], folder, "beyond any label value")
    folder = out("encoder-empty")
    add("--encoder \"\"", ["segment", image, labels, "-o", folder / "seg.nii.gz", "--encoder", "", *TRAIN, *COMMON],
        folder, "--encoder is empty")
    folder = out("upper-case-suffix")
    add("-o SEG.NII.GZ", ["segment", image, labels, "-o", folder / "SEG.NII.GZ", *TRAIN, *COMMON], folder,
        "in lower case")
    folder = out("argparse")
    add("a missing argument (argparse): one line, no usage block", ["segment", image, "--threads", 1], folder,
        "the following arguments are required")
    folder = out("omp-abc")
    add("OMP_NUM_THREADS=abc: no libgomp lines", ["segment", image, labels, "-o", folder / "seg.nii.gz", *TRAIN,
        "--device", "cpu", "--progress", "none"], folder, env={"OMP_NUM_THREADS": "abc"}, judge=_no_libgomp,
        check=lambda f=folder: None if (f / "seg.nii.gz").is_file() else "no output")
    junk = inputs / "junk_folder"
    junk.mkdir()
    (junk / "scan.nii.gz").write_bytes(b"not a volume at all " * 50)
    (junk / "notes.bin").write_bytes(os.urandom(2048))
    folder = out("pretrain-junk")
    add("pretrain on a folder of junk: one line, no ITK warning block", ["pretrain", junk, *pretrain, "-o",
        folder / "enc.safetensors", *COMMON], folder, "cannot read")

    # Memory: a header's declared size checked against the file before any voxel is read.
    liar = inputs / "liar.nii"
    lie = nibabel.Nifti1Header()
    lie.set_data_shape((1024, 1024, 512))
    lie.set_data_dtype(np.int16)
    liar.write_bytes(lie.binaryblock + bytes(20))
    folder = out("declared-1gib")
    add("a 368-byte NIfTI declaring 1024 x 1024 x 512 int16", ["segment", liar, labels, "-o", folder / "seg.nii.gz",
        *COMMON], folder, "declares 1.0 GB of voxel data", max_peak_mb=400)
    liar_mha = inputs / "liar.mha"
    liar_mha.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4096 4096 2048\nElementType = MET_FLOAT\n"
                         b"ElementDataFile = LOCAL\n" + bytes(1000))
    folder = out("declared-128gib")
    add("an MHA declaring 4096 x 4096 x 2048 float32 in 1 KB", ["segment", liar_mha, labels, "-o",
        folder / "seg.nii.gz", *COMMON], folder, "declares 128.0 GB of voxel data", max_peak_mb=400)
    return derived


def _dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


# ----------------------------------------------------------------------------------------------- report
def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "—"


def _table(cases: list[Case], outcomes: list[Outcome], seconds: float, root: Path, jobs: int) -> str:
    import torch

    from ContrastiveSegLib import __version__

    expected = sum(o.verdict == "as expected" for o in outcomes)
    skipped = [case.name for case, o in zip(cases, outcomes) if o.verdict.startswith("skipped")]
    skip_note = f", {len(skipped)} skipped here ({'; '.join(skipped)})" if skipped else ""
    lines = ["# Hostile inputs through the CLI", "",
             f"{expected} of {len(cases)} cases as expected{skip_note}. Written by `python benchmarks/hostile.py` "
             f"(contrastiveseg {__version__}, Python {platform.python_version()}, torch {torch.__version__}, "
             f"SimpleITK {sitk.Version.VersionString()}; {platform.system()} {platform.machine()}, "
             f"{os.cpu_count()} CPUs, running as {'root' if os.geteuid() == 0 else 'a user'}; "
             f"{time.strftime('%Y-%m-%d')}; {seconds:.0f} s in all).", "",
             f"Each case is one `python -m ContrastiveSegLib ...` process ({jobs} side by side) with "
             "`--threads 1 --device cpu` (and "
             f"`{' '.join(TRAIN)}` where it trains) on a 16 x 48 x 48 phantom, stderr not a terminal (the default "
             "progress: stage lines for `segment`, which a refusal must not show). Refused: exit 2, exactly one "
             "stderr line naming the problem, nothing in the output folder. Accepted: exit 0 and the outputs "
             "checked (grid, values, painted slices kept; a detached header naming its final data file and no "
             f"orphan after a rerun). Full disk: `RLIMIT_FSIZE` of {FILE_SIZE_LIMIT // 1024} KiB with SIGXFSZ "
             "ignored, so a write past it fails with EFBIG as on a full disk. Read-only folder: chmod 0555"
             + (" and a read-only tmpfs mounted on it (root ignores permission bits)." if os.geteuid() == 0
                else "."),
             "Output = input: the output names an input (the same path, `..`, a hard link); the inputs' sha256 "
             "must be unchanged afterwards. Signals: sent at a moment in the run (after start, or after the first "
             "JSON progress event of a stage, `--progress json`); expected exit 130 and one line saying what was "
             "written (nothing in the folder that the line does not name). Streams: stdout closed (`>&-`), a pipe "
             "whose reader has gone, `/dev/full`; stderr closed (`2>&-`: exit 2 and nothing on stdout). A killed "
             "run's staging folder is made with the id of a process that has ended. Peak MB is checked where memory "
             "is the point (a header declaring more than its file holds).",
             "`…` is the temporary folder.", "",
             "| case | expected | exit | message (stderr, one line) | output folder afterwards | s | peak MB | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for case, outcome in zip(cases, outcomes):
        code = case.code if case.code is not None else (2 if case.phrase else 0)
        want = (f"exit {code}: \"{case.phrase.replace(str(root), '…')}\"" if case.phrase else
                "exit 0, outputs correct" if code == 0 else f"exit {code}")
        want += "; inputs unchanged" if case.existing else ""
        left = ", ".join(outcome.left) if outcome.left else "empty"
        message = outcome.message if case.phrase or outcome.code != 0 else ""
        lines.append(f"| {_cell(case.name)} | {_cell(want)} | {outcome.code} | {_cell(message)} | {_cell(left)} | "
                     f"{outcome.seconds:.1f} | {outcome.peak_mb:.0f} | {outcome.verdict} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for hostile.md (default benchmarks/results)")
    parser.add_argument("--keep", type=Path, help="build the cases in this new folder and keep it")
    parser.add_argument("--jobs", type=int, default=2, help="cases run side by side (default 2: one per core of a "
                        "2-core machine, each process on one thread)")
    parser.add_argument("--only", action="append", metavar="TEXT", help="run only the cases whose name holds TEXT "
                        "(repeatable; the control finetune always runs)")
    args = parser.parse_args()
    from ContrastiveSegLib.io.volume import atomic_write

    root = Path(tempfile.mkdtemp(prefix="hostile-")) if args.keep is None else args.keep
    root.mkdir(exist_ok=True)
    start = time.perf_counter()
    try:
        cases, make_models = build_cases(root)

        def one(number: int) -> Outcome:
            case, logs = cases[number], root / "logs" / str(number)
            logs.mkdir(parents=True)
            if case.skip:
                return Outcome("—", "", 0.0, 0.0, verdict=f"skipped: {case.skip}")
            case.existing = {name: _sha(case.out / name) if (case.out / name).is_file() else "folder"
                             for name in case.existing}
            with _read_only(case.out) if case.read_only else contextlib.nullcontext(True) as possible:
                outcome = _run(case, logs) if possible else None
            if outcome is None:
                return Outcome("—", "", 0.0, 0.0, verdict="skipped: root may not mount a read-only tmpfs here")
            _judge(case, outcome, root)
            print(f"{case.name}: exit {outcome.code}, {outcome.seconds:.1f} s, {outcome.verdict}", flush=True)
            return outcome

        outcomes = [one(0)]  # the control finetune: the model the other cases start from
        make_models()
        chosen = [n for n in range(1, len(cases)) if not args.only or any(o in cases[n].name for o in args.only)]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            outcomes += list(pool.map(one, chosen))
        cases = [cases[0]] + [cases[n] for n in chosen]
        text = _table(cases, outcomes, time.perf_counter() - start, root, args.jobs)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / "hostile.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        print(f"wrote {args.out / 'hostile.md'}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if all(o.verdict == "as expected" or o.verdict.startswith("skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
