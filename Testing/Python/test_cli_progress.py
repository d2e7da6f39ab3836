"""What a run shows while it works and says when it is cancelled: the stage lines of ``segment`` in a log (stderr not
a terminal), held back until no input can be refused any more; ``--progress json`` and ``none`` untouched; the
terminal bar (tqdm); and a cancel message that names exactly the outputs already in place.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HANG_GUARD_S, write_image
from ContrastiveSegLib.cli import main
from ContrastiveSegLib.errors import Cancelled
from ContrastiveSegLib.progress import Cancellation, ProgressPrinter, StageLog, writing

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["--preset", "fast", "--steps", "3", "--batch-size", "2", "--seed", "0", "--device", "cpu"]
STAGE_LINE = re.compile(r"^\[ *(\d+\.\d) s\] (.+)$")


def _main(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()  # neither is a terminal, as in a log or a pipe
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


class FakeClock:
    def __init__(self):
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _event(stage, step=0, of=0, message=None, loss=None, eta=None) -> dict:
    event = {"stage": stage, "step": step, "of": of, "loss": loss, "eta_s": eta}
    if message:
        event["message"] = message
    return event


# ----------------------------------------------------------------------------------------------- the log's lines
def test_log_holds_its_lines_until_the_first_step_then_prints_them_with_their_own_times(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    clock = FakeClock()
    log = StageLog(clock)
    log(_event("load", message="reading image.nii.gz"))
    clock.now += 2.5
    log(_event("finetune", message="fine-tuning on 3 painted slices"))
    assert err.getvalue() == ""  # an input may still be refused: nothing yet
    clock.now += 1.0
    log(_event("finetune", 1, 20, loss=0.5, eta=19.0))
    assert err.getvalue().splitlines() == ["[    0.0 s] reading image.nii.gz",
                                           "[    2.5 s] fine-tuning on 3 painted slices",
                                           "[    3.5 s] finetune 1/20 loss 0.5000 eta 19s"]
    # From now on at once, one line per tenth of the stage's steps; a new stage without a message is named.
    for step in range(2, 21):
        clock.now += 1.0
        log(_event("finetune", step, 20, loss=0.5, eta=20.0 - step))
    log(_event("predict", 1, 4))
    lines = err.getvalue().splitlines()
    steps = [int(m.group(1)) for m in (re.search(r"finetune (\d+)/20", line) for line in lines) if m]
    assert steps == [1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert lines[-2:] == ["[   22.5 s] predicting", "[   22.5 s] predict 1/4"]


def test_log_lines_of_a_refused_run_never_appear(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    log = StageLog(FakeClock())
    log(_event("load", message="reading image.nii.gz"))
    log(_event("finetune", message="fine-tuning on 3 painted slices"))
    assert err.getvalue() == ""  # the run stops here with its one error line


def test_log_of_a_run_without_steps_starts_at_its_write_stage(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    log = StageLog(FakeClock())
    log(_event("load", message="reading image.nii.gz"))
    log(_event("write", message="writing out.nii.gz"))
    assert err.getvalue().splitlines() == ["[    0.0 s] reading image.nii.gz", "[    0.0 s] writing out.nii.gz"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from conftest import make_phantom

    folder = tmp_path_factory.mktemp("progress")
    phantom = make_phantom()
    return (write_image(phantom.image, folder / "image.nii.gz"), write_image(phantom.sparse, folder / "labels.nii.gz"),
            phantom)


def test_segment_off_a_terminal_logs_its_stages_then_the_summary(inputs, tmp_path):
    image, labels, _ = inputs
    out = tmp_path / "out.nii.gz"
    code, stdout, err = _main(["segment", image, labels, "-o", out, *TRAIN])
    assert code == 0, err
    assert stdout == ""
    lines = err.splitlines()
    summary = next(i for i, line in enumerate(lines) if line.startswith("summary of segment"))
    stages = [STAGE_LINE.match(line) for line in lines[:summary]]
    assert all(stages), lines[:summary]
    seconds = [float(m.group(1)) for m in stages]
    assert seconds == sorted(seconds)  # elapsed time since the start, never going back
    texts = [m.group(2) for m in stages]
    assert texts[0] == f"reading {image}"
    assert texts[1].startswith("fine-tuning on 3 painted slices")
    assert [t for t in texts if t.startswith("finetune ")] == [t for t in texts if re.match(r"finetune [123]/3 ", t)]
    predicting = texts.index("predicting")
    assert texts[predicting - 1].startswith("finetune 3/3 loss ") and texts[predicting + 1].startswith("predict ")
    assert texts[-3].startswith("predict 16/16") and texts[-2:] == [f"writing {out}", f"wrote {out}"]
    assert not any(line.startswith("contrastiveseg: ") for line in lines)


def test_finetune_and_predict_off_a_terminal_log_their_stages_too(inputs, tmp_path):
    # Was: nothing until the end (10 minutes of silence in a log).
    image, labels, _ = inputs
    model, out = tmp_path / "m.safetensors", tmp_path / "out.nii.gz"
    for argv, first, counted, last in (
            (["finetune", image, labels, "-o", model, *TRAIN], f"reading {image}", "finetune 3/3 ",
             f"wrote {model}"),
            (["predict", image, "--model", model, "-o", out, "--device", "cpu"], f"reading {image}", "predict 16/16",
             f"wrote {out}")):
        code, stdout, err = _main(argv)
        assert code == 0, err
        assert stdout == ""
        lines = err.splitlines()
        end = next(i for i, line in enumerate(lines) if line.startswith("summary of "))
        texts = [STAGE_LINE.match(line).group(2) for line in lines[:end]]
        assert texts[0] == first and texts[-1] == last
        assert any(t.startswith(counted) for t in texts) and texts[-2] == f"writing {argv[argv.index('-o') + 1]}"


@pytest.mark.parametrize("mode", ["json", "none"])
def test_json_and_none_print_no_stage_line(inputs, tmp_path, mode):
    image, labels, _ = inputs
    code, stdout, err = _main(["segment", image, labels, "-o", tmp_path / "out.nii.gz", "--progress", mode, *TRAIN])
    assert code == 0, err
    assert err.splitlines()[0].startswith("summary of segment")  # the summary only: no stage line before it
    if mode == "json":
        events = [json.loads(line) for line in stdout.splitlines()]  # every line of stdout is JSON
        assert events[-1]["stage"] == "done" and any(e["stage"] == "finetune" for e in events)
    else:
        assert stdout == ""


@pytest.mark.slow  # the real CLI in a child interpreter
def test_a_refusal_found_by_the_api_is_still_one_line_in_a_real_process(inputs, tmp_path):
    """The labels are read and pass the CLI's checks; --init-model with other classes is refused inside the API,
    after the "reading" stage began: stderr is still the error line alone."""
    from test_cli_errors import _model

    image, labels, _ = inputs
    model = _model(tmp_path / "binary.safetensors", label_values=(0, 1))
    before = sorted(os.listdir(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "ContrastiveSegLib", "segment", str(image), str(labels), "-o",
                             str(tmp_path / "out.nii.gz"), "--init-model", str(model), "--threads", "1", *TRAIN],
                            capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("contrastiveseg: error: model classes [0, 1]")
    assert sorted(os.listdir(tmp_path)) == before


# ----------------------------------------------------------------------------------------------- the terminal bar
def test_bar_draws_each_stage_with_our_eta_and_messages_above_it(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    printer = ProgressPrinter("bar")
    printer(_event("finetune", message="fine-tuning on 3 painted slices"))
    for step in (1, 2, 3):
        printer(_event("finetune", step, 3, loss=1.0 / step, eta=3.0 - step))
    printer(_event("predict", 1, 2))
    printer.error("cancelled; nothing was written", 130)  # the bar ends its line before the error line
    text = err.getvalue()
    assert text.startswith("fine-tuning on 3 painted slices\n")
    assert "3/3, loss 0.3333 eta 0s" in text and " finetune " in text
    assert "predict" in text and "1/2" in text
    assert text.endswith("\n")
    assert printer._bar is None


def test_json_error_event_is_one_json_line(capsys):
    ProgressPrinter("json").error("labels not found", 2)
    out = capsys.readouterr().out
    assert json.loads(out) == {"stage": "error", "message": "labels not found", "exit_code": 2}


# ----------------------------------------------------------------------------------------------- cancel messages
def test_cancellation_names_what_is_in_place_and_what_is_not():
    cancel = Cancellation()
    assert cancel.message() == "cancelled; nothing was written"
    with pytest.raises(Cancelled):
        with cancel.writing([("p.nii.gz", "probabilities"), ("out.nii.gz", "label map")]) as moved:
            moved("p.nii.gz", "probabilities")
            cancel.on_signal()  # deferred: the block finishes first
            assert cancel.is_set()
    assert cancel.message() == "cancelled after writing p.nii.gz (probabilities); not written: out.nii.gz (label map)"
    cancel.on_signal()  # a second signal while the first unwinds: recorded, not raised over the cleanup
    fresh = Cancellation()
    with pytest.raises(Cancelled):
        fresh.on_signal()  # outside a write: at once
    with writing(None, [("x", "y")]) as moved:  # an in-process caller's plain event: nothing recorded
        moved("x", "y")


def _signal_after_first_commit(monkeypatch, signum: int) -> None:
    """The issue's case: the signal arrives right after the first output moved into place."""
    from ContrastiveSegLib.io import volume

    commit = volume.StagedFile.commit
    sent = []

    def commit_then_signal(self):
        commit(self)
        if not sent:
            sent.append(self.path)
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(volume.StagedFile, "commit", commit_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cancel_after_the_first_output_says_what_was_written(tmp_path, monkeypatch, signum):
    from test_cli_errors import _model

    from conftest import make_phantom

    phantom = make_phantom()
    image = write_image(phantom.image, tmp_path / "image.nii.gz")
    model = _model(tmp_path / "model.safetensors", label_values=(0, 1, 2))
    out, probabilities = tmp_path / "out.nii.gz", tmp_path / "p.nii.gz"
    _signal_after_first_commit(monkeypatch, signum)
    code, _, err = _main(["predict", image, "--model", model, "-o", out, "--probabilities", probabilities,
                          "--device", "cpu", "--progress", "none"])
    assert code == 130
    # The outputs move into place together: the signal waits for the label map, and the message names both.
    assert err.strip() == (f"contrastiveseg: error: cancelled after writing {probabilities} (probabilities), "
                           f"{out} (label map)")
    assert out.is_file() and probabilities.is_file()
    assert sorted(os.listdir(tmp_path)) == ["image.nii.gz", "model.safetensors", "out.nii.gz", "p.nii.gz"]


def test_cancel_after_finetune_saved_its_model_says_so(inputs, tmp_path, monkeypatch):
    from ContrastiveSegLib.model import TrainedModel

    image, labels, _ = inputs
    save = TrainedModel.save

    def save_then_signal(self, path):
        save(self, path)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(TrainedModel, "save", save_then_signal)
    model = tmp_path / "model.safetensors"
    code, _, err = _main(["finetune", image, labels, "-o", model, "--progress", "none", *TRAIN])
    assert code == 130
    assert err.strip() == f"contrastiveseg: error: cancelled after writing {model} (model)"
    assert model.is_file()
