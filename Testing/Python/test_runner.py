"""The child-process runner (ContrastiveSegLib.slicer.runner) and the helper under it
(ContrastiveSegLib.childprocess) with real child processes.

A small fake CLI (written to a temporary file) checks parsing, exit codes, cancel and timeouts in well under a
second each; the real CLI then runs on a phantom (a bright sphere, 3 annotated slices) for cancel, a bad input and
running out of GPU memory (simulated in the child: the library halves its batch, the runner only reports). A whole real
run (progress lines, result, Dice) is in test_slicer_bridge.py, from Slicer nodes to segments, and a real
pretraining run in test_slicer_pretrain.py. "No process survives" is checked in /proc: every process of the
child's group must be gone (or a zombie).
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ContrastiveSegLib import childprocess
from ContrastiveSegLib.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_INTERNAL, Cancelled, InputError
from ContrastiveSegLib.slicer.runner import CliProcess, Progress, cli_command, exit_message, format_duration

FAKE_CLI = textwrap.dedent('''
    import json, os, signal, subprocess, sys, time
    mode = sys.argv[1]
    def emit(**fields):
        print(json.dumps(fields), flush=True)
    if mode == "ok":
        print("a warning that is not JSON", flush=True)
        emit(stage="load", step=0, of=0, loss=None, eta_s=None)
        for step in range(1, 4):
            emit(stage="finetune", step=step, of=3, loss=1.0 / step, eta_s=3.0 - step)
        print("contrastiveseg: every slice along axis 0 is annotated", file=sys.stderr, flush=True)
        emit(stage="done", step=1, of=1, loss=None, eta_s=0.0,
             message="CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
    elif mode == "bad":
        emit(stage="error", message="labels not found: nowhere.nrrd", exit_code=2)
        print("contrastiveseg: error: labels not found: nowhere.nrrd", file=sys.stderr)
        sys.exit(2)
    elif mode == "internal":
        raise RuntimeError("something broke deep inside")
    elif mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode in ("hang", "stubborn"):
        if mode == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        emit(stage="finetune", step=1, of=100, loss=0.5, eta_s=99.0, message=str(worker.pid))
        time.sleep(120)
''')


@pytest.fixture(scope="module")
def fake_cli(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fake") / "fake_cli.py"
    path.write_text(FAKE_CLI)
    return path


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has exited; only its parent has not reaped it)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    if sys.platform.startswith("linux"):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _gone(pid: int, within_s: float = 2.0) -> bool:
    """True once ``pid`` has ended, waiting up to ``within_s`` (a killed process takes a moment to die)."""
    deadline = time.monotonic() + within_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


# ---------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("line, expected", [
    ('{"stage": "finetune", "step": 3, "of": 40, "loss": 0.25, "eta_s": 12.5}',
     Progress("finetune", 3, 40, 0.25, 12.5)),
    ('{"stage": "load", "step": 0, "of": 0, "loss": null, "eta_s": null, "message": "reading"}',
     Progress("load", message="reading")),
    ('{"stage": "error", "message": "bad", "exit_code": 2}', Progress("error", message="bad", exit_code=2)),
    ("Warning: something", None),
    ('{"not": "progress"}', None),
    ("{broken json", None),
])
def test_progress_lines_are_parsed(line, expected):
    assert Progress.parse(line) == expected


def test_progress_description_and_fraction():
    progress = Progress("finetune", 120, 400, 0.2314, 83.0)
    assert progress.fraction == pytest.approx(0.3)
    assert progress.describe() == "Fine-tuning 120/400 · loss 0.231 · 1 min 23 s left"
    assert format_duration(3725) == "1 h 02 min" and format_duration(7.4) == "7 s"


@pytest.mark.parametrize("code, error, cancelled, expected", [
    (0, "", False, "Done."),
    (2, "labels not found: x.nrrd", False, "labels not found: x.nrrd"),
    (130, "", False, "Cancelled; nothing was changed."),
    (-signal.SIGTERM, "", True, "Cancelled; nothing was changed."),
    (1, "ValueError: boom", False, "Internal error: ValueError: boom"),
    (1, "internal error: KeyError: 'x'", False, "Internal error: KeyError: 'x'"),
    (-signal.SIGKILL, "", False, "The worker process was killed by SIGKILL (out of memory?)."),
    (1, "CUDA out of memory. Tried to allocate 2 GiB", False,  # no command known: the CPU is always a way out
     "Out of memory: CUDA out of memory. Tried to allocate 2 GiB Try the CPU."),
    (1, "out of memory; try --preset fast, a smaller --batch-size, or a GPU", False,  # the CLI's own last word
     "Out of memory; try --preset fast, a smaller --batch-size, or a GPU"),
    (7, "", False, "The worker process failed with exit code 7."),
])
def test_exit_codes_map_to_one_line_messages(code, error, cancelled, expected):
    assert exit_message(code, error, cancelled) == expected


def test_cli_command_spells_options_like_the_cli():
    command = cli_command("segment", "img.nrrd", "lab.nrrd", python="py", o="out.nrrd", axis="k", steps=20,
                          init_model=None, model_out="m.safetensors", verbose=True, quiet=False)
    assert command == ["py", "-m", "ContrastiveSegLib", "segment", "img.nrrd", "lab.nrrd", "-o", "out.nrrd",
                       "--axis", "k", "--steps", "20", "--model-out", "m.safetensors", "--verbose",
                       "--progress", "json"]


# ------------------------------------------------------------------------------------- fake child process
def test_progress_streams_from_a_child_and_cpu_is_forced(fake_cli):
    process = CliProcess([sys.executable, str(fake_cli), "ok"], force_cpu=True)
    process.start()
    events = []
    result = process.wait(timeout=30, on_event=events.append)
    assert result is not None and result.ok and result.message == "Done."
    assert result.notes == ("every slice along axis 0 is annotated",)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.stage for p in progress] == ["load", "finetune", "finetune", "finetune", "done"]
    assert [p.loss for p in progress[1:4]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert progress[-1].message == "CUDA_VISIBLE_DEVICES=-1"
    assert "a warning that is not JSON" in events
    assert process.last_progress.stage == "done"


def test_bad_input_gives_exit_2_and_its_message(fake_cli):
    process = CliProcess([sys.executable, str(fake_cli), "bad"])
    process.start()
    result = process.wait(timeout=30)
    assert result.exit_code == EXIT_BAD_INPUT and not result.ok
    assert result.message == "labels not found: nowhere.nrrd"


def test_a_crash_reports_the_last_traceback_line(fake_cli):
    process = CliProcess([sys.executable, str(fake_cli), "internal"])
    process.start()
    result = process.wait(timeout=30)
    assert result.exit_code == 1
    assert result.message == "Internal error: RuntimeError: something broke deep inside"
    assert any("Traceback" in line for line in result.stderr_tail)


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_killed_child_is_reported(fake_cli):
    process = CliProcess([sys.executable, str(fake_cli), "killed"])
    process.start()
    result = process.wait(timeout=30)
    assert result.exit_code == -signal.SIGKILL and "killed by SIGKILL" in result.message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode, expected_code", [("hang", EXIT_CANCELLED), ("stubborn", -signal.SIGKILL)])
def test_cancel_kills_the_whole_process_tree(fake_cli, mode, expected_code):
    process = CliProcess([sys.executable, str(fake_cli), mode])
    process.start()
    worker = None
    deadline = time.monotonic() + 30
    while worker is None and time.monotonic() < deadline:
        for event in process.events():
            if isinstance(event, Progress) and event.message.isdigit():
                worker = int(event.message)
        time.sleep(0.05)
    assert worker is not None and _alive(worker) and _alive(process.pid)
    assert set(_group_members(process.pid)) == {process.pid, worker}

    process.cancel(grace_s=0.5)
    result = process.wait(timeout=10)
    assert result.cancelled and result.exit_code == expected_code
    assert result.message == "Cancelled; nothing was changed."
    time.sleep(0.1)
    assert not _alive(worker) and not _alive(process.pid)
    assert _group_members(process.pid) == []


# ------------------------------------------------------------------------- the helper: ContrastiveSegLib.childprocess
def test_the_slicer_side_of_a_run_loads_neither_torch_nor_numpy():
    # The Slicer GUI process imports these: torch there would take seconds and may not even be installed yet.
    code = ("import sys; import ContrastiveSegLib.childprocess, ContrastiveSegLib.slicer.runner, "
            "ContrastiveSegLib.slicer.childrun; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    done = childprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def test_run_returns_the_exit_code_and_the_output():
    code = "import sys; print('result'); print('one\\nlast words', file=sys.stderr); sys.exit(3)"
    done = childprocess.run([sys.executable, "-c", code], env=dict(os.environ, ANSWER="42"))
    assert (done.returncode, done.stdout, done.last_line()) == (3, "result\n", "last words")
    done = childprocess.run([sys.executable, "-c", "import os; print(os.environ['ANSWER'])"],
                            env=dict(os.environ, ANSWER="42"))
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "42", "")


def _hanging_child(fake_cli, mode: str) -> tuple[childprocess.ChildProcess, int]:
    """The fake CLI in ``mode`` (hang, stubborn), started; and the pid of the worker it started."""
    import json

    child = childprocess.ChildProcess([sys.executable, str(fake_cli), mode], stdout=childprocess.PIPE).start()
    worker = int(json.loads(child.stdout.readline())["message"])
    assert _alive(worker) and set(_group_members(child.pid)) == {child.pid, worker}
    return child, worker


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("ending", ["timeout", "cancel", "interrupt"])
def test_a_wait_that_ends_early_leaves_no_process(fake_cli, ending):
    import threading

    class Interrupted(threading.Event):
        """A cancel event whose third check is interrupted, as by Ctrl-C or the CLI's signal handler."""
        checks = 0

        def is_set(self) -> bool:
            Interrupted.checks += 1
            if Interrupted.checks == 3:
                raise KeyboardInterrupt
            return super().is_set()

    child, worker = _hanging_child(fake_cli, "stubborn")  # ignores SIGTERM: only the forced stop ends it
    cancel = Interrupted() if ending == "interrupt" else threading.Event()
    expected = {"timeout": subprocess.TimeoutExpired, "cancel": Cancelled, "interrupt": KeyboardInterrupt}[ending]
    if ending == "cancel":
        threading.Timer(0.3, cancel.set).start()
    with pytest.raises(expected):
        child.wait(timeout=0.3 if ending == "timeout" else 30, cancel=cancel, poll_s=0.05)
    assert child.poll() == -signal.SIGKILL and _gone(worker) and _group_members(child.pid) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stop_is_polite_first(fake_cli):
    child, worker = _hanging_child(fake_cli, "hang")  # exits 130 on SIGTERM, as the CLI does
    child.stop(grace_s=10)
    assert child.poll() == EXIT_CANCELLED and _gone(worker) and _group_members(child.pid) == []


def test_run_with_a_timeout_raises_and_keeps_no_child(tmp_path):
    marker = tmp_path / "still running"
    code = f"import time; time.sleep(3); open({str(marker)!r}, 'w').close()"
    with pytest.raises(subprocess.TimeoutExpired):
        childprocess.run([sys.executable, "-c", code], timeout=0.5)
    time.sleep(4)
    assert not marker.exists()  # the child was killed at the timeout, not left to finish


# ------------------------------------------------------------------------------------------ the real CLI
needs_cli = pytest.mark.skipif(importlib.util.find_spec("ContrastiveSegLib.cli") is None,
                               reason="ContrastiveSegLib.cli is not there yet")


def _phantom(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """24x48x48 noisy volume with a bright sphere (radius 9 voxels); the sphere painted on 3 axial slices."""
    from ContrastiveSegLib.io.volume import Volume, write_volume

    rng = np.random.default_rng(0)
    k, j, i = np.mgrid[:24, :48, :48]
    sphere = (((k - 12) * 2.0) ** 2 + (j - 24) ** 2 + (i - 22) ** 2) <= 9.0 ** 2
    image = (sphere * 1.0 + rng.normal(0, 0.15, sphere.shape)).astype(np.float32)
    labels = np.zeros(sphere.shape, dtype=np.uint8)
    for s in (9, 12, 15):
        labels[s] = sphere[s]
    grid = dict(spacing=(1.0, 1.0, 2.0), origin=(-24.0, 10.0, 5.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_volume(Volume(image, **grid), folder / "image.nrrd")
    write_volume(Volume(labels, **grid), folder / "labels.nrrd")
    return folder / "image.nrrd", folder / "labels.nrrd", sphere


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return _phantom(tmp_path_factory.mktemp("phantom"))


def _real(*arguments, **options) -> CliProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    process = CliProcess(cli_command(*arguments, python=sys.executable, **options), force_cpu=True, env=env)
    process.start()
    return process


@pytest.mark.slow
@needs_cli
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_real_cli_cancel_leaves_no_output_and_no_process(phantom, tmp_path):
    image, labels, _ = phantom
    out = tmp_path / "result.nrrd"
    process = _real("segment", image, labels, o=out, preset="fast", steps=5000, device="cpu")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.running:
        if any(isinstance(e, Progress) and e.stage == "finetune" for e in process.events()):
            break
        time.sleep(0.1)
    process.cancel(grace_s=10)
    result = process.wait(timeout=30)
    assert result.cancelled and result.exit_code in (EXIT_CANCELLED, -signal.SIGTERM, -signal.SIGKILL)
    assert not out.exists()
    assert _group_members(process.pid) == []


@needs_cli
def test_real_cli_bad_input_exits_2_with_its_message(phantom, tmp_path):
    # A bad option value is refused by the argument parser, before any file is read or written.
    image, labels, _ = phantom
    process = _real("segment", image, labels, o=tmp_path / "out.nrrd", axis="q", device="cpu")
    result = process.wait(timeout=120)
    assert result.exit_code == EXIT_BAD_INPUT and not (tmp_path / "out.nrrd").exists()
    assert "--axis" in result.message and "'q'" in result.message and "\n" not in result.message


# The real CLI, with a GPU that has room for at most LIMIT crops or slices per forward pass: every convolution of a
# bigger batch raises torch.OutOfMemoryError, as CUDA would.
GREEDY_CLI = """
import sys, torch
LIMIT = int(sys.argv[1])
forward = torch.nn.Conv2d.forward
def greedy(self, x):
    if x.shape[0] > LIMIT:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
    return forward(self, x)
torch.nn.Conv2d.forward = greedy
from ContrastiveSegLib.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@needs_cli
def test_real_cli_out_of_memory_halves_the_batch_in_the_child_and_the_runner_only_reports(phantom, tmp_path):
    image, labels, sphere = phantom
    out = tmp_path / "result.nrrd"
    command = cli_command("segment", image, labels, python=sys.executable, o=out, preset="fast", steps=3,
                          batch_size=8, device="cpu", encoder="random")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    process = CliProcess([sys.executable, "-c", GREEDY_CLI, "2", *command[3:]], force_cpu=True, env=env)
    process.start()
    events = []
    result = process.wait(timeout=300, on_event=events.append)
    assert result.ok, (result.message, result.stderr_tail)
    notes = [(e.stage, e.message) for e in events if isinstance(e, Progress) and "out of GPU memory" in e.message]
    # fine-tuning: 8 -> 4 -> 2 crops; prediction: its 16 slices per batch -> 8 -> 4 -> 2
    assert notes == [("finetune", "out of GPU memory: retrying with batch size 4"),
                     ("finetune", "out of GPU memory: retrying with batch size 2"),
                     ("predict", "out of GPU memory: retrying with batch size 8"),
                     ("predict", "out of GPU memory: retrying with batch size 4"),
                     ("predict", "out of GPU memory: retrying with batch size 2")]
    assert [e.step for e in events if isinstance(e, Progress) and e.stage == "finetune" and e.of] == [1, 2, 3]
    assert out.is_file()

    # Not even one slice fits: the child stops with one line, and writes nothing.
    out.unlink()
    process = CliProcess([sys.executable, "-c", GREEDY_CLI, "0", *command[3:]], force_cpu=True, env=env)
    process.start()
    result = process.wait(timeout=300)
    assert result.exit_code == EXIT_INTERNAL and not out.exists()
    assert result.message.startswith("Out of memory") and "\n" not in result.message


# ------------------------------------------------------------- what the module shows besides the run itself
def test_entropy_and_next_slice_suggestion(tmp_path):
    import SimpleITK as sitk

    from ContrastiveSegLib.slicer.uncertainty import normalized_entropy, read_probabilities, suggest_slice

    p = np.zeros((2, 6, 4, 5), dtype=np.float32)
    p[1] = 0.01
    p[1, 2] = 0.5            # slice 2: uniform -> entropy 1 everywhere
    p[1, 4, :2] = 0.5        # slice 4: half the slice uniform -> mean entropy about 0.5 + a bit
    p[0] = 1 - p[1]
    entropy = normalized_entropy(p)
    h = -(0.01 * np.log(0.01) + 0.99 * np.log(0.99)) / np.log(2)  # = 0.0808
    assert entropy[0, 0, 0] == pytest.approx(h, abs=1e-5) and entropy[2].min() == pytest.approx(1.0, abs=1e-5)
    assert suggest_slice(entropy, 0) == (2, pytest.approx(1.0, abs=1e-5))
    assert suggest_slice(entropy, 0, annotated=[2]) == (4, pytest.approx((1 + h) / 2, abs=1e-5))

    # The file as the library writes it (cli.py: write_volume of a (C, k, j, i) array): a 4D scalar image whose
    # fourth axis is the class, on the volume's (here oblique) grid.
    from ContrastiveSegLib.io.volume import Volume, write_volume

    oblique = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    write_volume(Volume(p, (0.5, 0.6, 2.0), (1.0, -2.0, 3.0), oblique), tmp_path / "p.nrrd")
    assert sitk.ReadImage(str(tmp_path / "p.nrrd")).GetDimension() == 4
    read = read_probabilities(tmp_path / "p.nrrd", shape=(6, 4, 5))
    np.testing.assert_array_equal(read.array, p)
    assert (read.spacing, read.origin, read.direction) == ((0.5, 0.6, 2.0), (1.0, -2.0, 3.0), oblique)
    # A vector image (one component per class), as other tools write it, reads the same.
    image = sitk.GetImageFromArray(np.moveaxis(p, 0, -1), isVector=True)
    image.SetSpacing((0.5, 0.6, 2.0))
    sitk.WriteImage(image, str(tmp_path / "v.nrrd"))
    np.testing.assert_array_equal(read_probabilities(tmp_path / "v.nrrd", shape=(6, 4, 5)).array, p)
    with pytest.raises(InputError, match="has shape"):
        read_probabilities(tmp_path / "p.nrrd", shape=(6, 4, 6))


def test_requirements_and_gpus_are_read_without_importing_torch():
    from ContrastiveSegLib.slicer.environment import device_summary, missing_requirements, parse_nvidia_smi

    assert missing_requirements(("numpy>=1.0", "numpy>=999", "surely-not-a-package-xyz")) == [
        "numpy>=999", "surely-not-a-package-xyz"]
    with pytest.raises(ValueError):
        missing_requirements(("numpy; rm -rf",))
    gpus = parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 81559\n1, Tesla T4, 15360\nNo devices were found\n")
    assert [(g.index, g.name, g.memory_mib) for g in gpus] == [(0, "NVIDIA H100 80GB HBM3", 81559),
                                                                (1, "Tesla T4", 15360)]
    assert device_summary(gpus) == "GPU: cuda:0 NVIDIA H100 80GB HBM3 (80 GB); cuda:1 Tesla T4 (15 GB)"
    assert "small GPU memory" in device_summary(parse_nvidia_smi("0, GeForce GTX 1050, 4096"))


def test_one_progress_bar_over_the_whole_run():
    from ContrastiveSegLib.slicer.runner import overall_fraction

    assert overall_fraction(Progress("load")) == 0.0
    assert overall_fraction(Progress("finetune", 50, 100)) == pytest.approx(0.45)
    assert overall_fraction(Progress("predict", 1, 2)) == pytest.approx(0.91)
    assert overall_fraction(Progress("done", 1, 1)) == 1.0
    assert overall_fraction(Progress("predict", 1, 2), "predict") == pytest.approx(0.525)
    assert overall_fraction(Progress("pretrain", 1, 2), "pretrain") == pytest.approx(0.49)
    assert overall_fraction(Progress("pretrain", message="pretraining 'simclr' on 2 volume(s)"), "pretrain") == 0.0
    assert overall_fraction(Progress("write"), "pretrain") == pytest.approx(0.98)
    assert Progress("pretrain", 1, 2, 3.4796, 0.2).describe() == "Pretraining 1/2 · loss 3.480 · 0 s left"
    with pytest.raises(ValueError, match="kind must be one of"):
        overall_fraction(Progress("load"), "train")
