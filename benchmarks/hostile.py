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
import json
import os
import platform
import resource
import shutil
import signal
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
    return no problem). The output folder ``out`` must be empty after a refusal."""

    name: str
    argv: list
    out: Path
    phrase: str | None = None
    check: Callable[[], str | None] | None = None
    runs: int = 1  # a rerun replaces the outputs: nothing may be orphaned
    file_size_limit: int | None = None
    read_only: bool = False
    timeout: float = 300.0


@dataclass
class Outcome:
    code: int | str
    stderr: str
    seconds: float
    peak_mb: float
    left: list[str] = field(default_factory=list)
    verdict: str = ""
    message: str = ""


def _run(case: Case, logs: Path) -> Outcome:
    """Run ``case`` (``case.runs`` times; the last run counts) in a fresh process with its limits; the peak resident
    memory comes from wait4, per process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("CONTRASTIVESEG_DEBUG", None)

    def limits() -> None:  # in the child, before exec
        if case.file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.file_size_limit, case.file_size_limit))

    command = [sys.executable, "-m", "ContrastiveSegLib", *map(str, case.argv)]
    for _ in range(case.runs):
        with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
            start = time.perf_counter()
            process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                       preexec_fn=limits, cwd=logs)
            code, usage = None, None
            while code is None:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    code = os.waitstatus_to_exitcode(status)
                elif time.perf_counter() - start > case.timeout:
                    process.kill()
                    _, _, usage = os.wait4(process.pid, 0)
                    code = f"timeout {case.timeout:.0f} s"
                else:
                    time.sleep(0.05)
            process.returncode = code if isinstance(code, int) else -9
        seconds = time.perf_counter() - start
    return Outcome(code, (logs / "stderr").read_text(errors="replace"), seconds, usage.ru_maxrss / 1024)


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
    if case.phrase is not None:
        problems = []
        if outcome.code != 2:
            problems.append(f"exit {outcome.code}")
        if len(lines) != 1 or not errors:
            problems.append(f"{len(lines)} stderr lines")
        if case.phrase not in outcome.message.replace("…", str(root)):
            problems.append("other message")
        if outcome.left:
            problems.append("output left")
    else:
        problems = [] if outcome.code == 0 else [f"exit {outcome.code}"]
        if not problems and case.check is not None:
            problem = case.check()
            problems += [problem] if problem else []
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
         folder / "p.nii.gz", *COMMON], folder, f"cannot write {folder / 'p.nii.gz'}",
        file_size_limit=FILE_SIZE_LIMIT)
    folder = out("short-write-model")
    add(f"full disk: model past a {FILE_SIZE_LIMIT // 1024} KiB file-size limit (finetune)",
        ["finetune", image, labels, "-o", folder / "model.safetensors", *TRAIN, *COMMON], folder, "cannot write",
        file_size_limit=FILE_SIZE_LIMIT)

    def make_models() -> None:
        """After the control finetune: the model every model case starts from, and its crafted copies."""
        shutil.copyfile(root / "out" / "control-finetune" / "model.safetensors", model)
        for path, edit in crafted_files:
            _rewrite_model(model, path, edit)
        _cut(model, truncated_model, 0.5)

    return cases, make_models


# ----------------------------------------------------------------------------------------------- report
def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "—"


def _table(cases: list[Case], outcomes: list[Outcome], seconds: float, root: Path, jobs: int) -> str:
    import torch

    from ContrastiveSegLib import __version__

    expected = sum(o.verdict == "as expected" for o in outcomes)
    lines = ["# Hostile inputs through the CLI", "",
             f"{expected} of {len(cases)} cases as expected. Written by `python benchmarks/hostile.py` "
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
             "`…` is the temporary folder.", "",
             "| case | expected | exit | message (stderr, one line) | output folder afterwards | s | peak MB | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for case, outcome in zip(cases, outcomes):
        want = f"exit 2: \"{case.phrase.replace(str(root), '…')}\"" if case.phrase else "exit 0, outputs correct"
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
            with _read_only(case.out) if case.read_only else contextlib.nullcontext(True) as possible:
                outcome = _run(case, logs) if possible else None
            if outcome is None:
                return Outcome("—", "", 0.0, 0.0, verdict="skipped: root may not mount a read-only tmpfs here")
            _judge(case, outcome, root)
            print(f"{case.name}: exit {outcome.code}, {outcome.seconds:.1f} s, {outcome.verdict}", flush=True)
            return outcome

        outcomes = [one(0)]  # the control finetune: the model the other cases start from
        make_models()
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            outcomes += list(pool.map(one, range(1, len(cases))))
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
