"""``--threads``, the default thread count that never oversubscribes, and help text for every option.

No timing here: the measurements behind the default are in ContrastiveSegLib/threads.py; these tests pin the rule
and the plumbing.
"""
from __future__ import annotations

import argparse
import os

import pytest
import torch

from ContrastiveSegLib import threads
from ContrastiveSegLib.cli import build_parser, main
from ContrastiveSegLib.errors import InputError

# The smallest argument list each command that takes --threads parses with.
COMMANDS = {
    "segment": ["segment", "image.nii.gz", "labels.nii.gz", "-o", "out.nii.gz"],
    "finetune": ["finetune", "image.nii.gz", "labels.nii.gz", "-o", "model.safetensors"],
    "predict": ["predict", "image.nii.gz", "--model", "model.safetensors", "-o", "out.nii.gz"],
    "pretrain": ["pretrain", "data", "--method", "simclr", "-o", "encoder.safetensors"],
    "demo": ["demo", "-o", "demo_out"],
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_working_command_accepts_threads(command):
    args = build_parser().parse_args([*COMMANDS[command], "--threads", "3"])
    assert args.threads == 3
    assert build_parser().parse_args(COMMANDS[command]).threads is None  # None: the default rule decides


@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 1), (8, 7)])
def test_default_leaves_one_cpu_free(monkeypatch, cpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert threads.available_cpus() == cpus
    assert threads.default_threads() == expected
    assert threads.default_threads(cpus) == expected


@pytest.mark.parametrize("cpus, expected", [(None, 1), (1, 1), (2, 1), (8, 7)])
def test_default_without_an_affinity_mask_counts_the_cpus(monkeypatch, cpus, expected):
    """macOS and Windows have no sched_getaffinity; os.cpu_count() may say None."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert threads.default_threads() == expected


def test_the_affinity_mask_wins_over_the_cpu_count(monkeypatch):
    """A container or taskset limit: 2 CPUs allowed on a 64-core machine gives 1 thread, not 63."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert threads.default_threads() == 1


def test_choose_threads_takes_the_option_then_omp_num_threads_then_the_rule(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(5) == 5
    assert threads.choose_threads(None) == 3
    for ignored in ("", "0", "-2", "four"):
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert threads.choose_threads(None) == 7
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.choose_threads(None) == 7
    for bad in (0, -1, True):
        with pytest.raises(InputError, match="--threads must be a whole number >= 1"):
            threads.choose_threads(bad)


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_threads_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, command, value):
    monkeypatch.chdir(tmp_path)
    code = main([*COMMANDS[command], "--threads", value])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == f"contrastiveseg: error: --threads must be a whole number >= 1, got {value}\n"
    assert os.listdir(tmp_path) == []


def test_threads_apply_during_the_command_and_are_restored_after(phantom_files, capsys, monkeypatch):
    """The command runs on --threads threads; an in-process caller gets its own setting back afterwards."""
    from ContrastiveSegLib import api

    seen = {}

    def finetune(*args, **kwargs):
        seen["threads"] = torch.get_num_threads()
        raise InputError("stopped by the test")

    monkeypatch.setattr(api, "finetune", finetune)
    before = torch.get_num_threads()
    f = phantom_files
    code = main(["finetune", str(f.image), str(f.labels), "-o", str(f.folder / "m.safetensors"), "--threads", "2"])
    assert code == 2 and "stopped by the test" in capsys.readouterr().err
    assert seen["threads"] == 2
    assert torch.get_num_threads() == before


def test_apply_threads_tolerates_a_started_interop_pool():
    """torch sizes its inter-op pool once per process: a second command in the same process must not fail."""
    before = torch.get_num_threads()
    try:
        threads.apply_threads(1)
        previous, now = threads.apply_threads(1)  # the inter-op pool is fixed by now
        assert (previous, now) == (1, 1)
    finally:
        torch.set_num_threads(before)


def test_every_argument_of_every_command_has_help():
    parser = build_parser()
    missing = []
    for name, sub in _subparsers(parser).items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    top = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert all((a.help or "").strip() for a in top)
