"""The options users pick have one home, :mod:`ContrastiveSegLib.options`, and one check per kind.

The module must load without torch or MONAI (the Slicer GUI process fills its panel from it); every validator
takes the known values and refuses a near miss in one line naming the known values and the nearest one; the CLI's
choices, defaults and help, and the Slicer panel's Choice lists and defaults, are the module's own values.
"""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from ContrastiveSegLib import options
from ContrastiveSegLib.cli import build_parser, main
from ContrastiveSegLib.errors import EXIT_BAD_INPUT, InputError

from conftest import HANG_GUARD_S  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "ContrastiveSeg" / "ContrastiveSeg.py"


def test_the_module_loads_without_torch_or_monai():
    code = ("import sys; import ContrastiveSegLib.options; "
            "print(sorted(m for m in ('torch', 'monai', 'numpy') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S,
                               cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------- the validators
@pytest.mark.parametrize("value, expected", [
    ("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:0", "cuda:0"), ("cuda:12", "cuda:12"),
    ("mps", "mps"), (" CUDA:1 ", "cuda:1"), ("", "auto"), (None, "auto"),
])
def test_check_device_accepts_every_form_and_normalises_it(value, expected):
    assert options.check_device(value) == expected


@pytest.mark.parametrize("check, known", [
    (options.check_preset, options.PRESET_NAMES),
    (options.check_consistency, options.CONSISTENCY_MODES),
])
def test_named_options_accept_their_known_values(check, known):
    assert known and all(check(value) == value for value in known)


def test_axis_letters_name_the_array_axes():
    assert [options.axis_index(letter) for letter in options.AXIS_LETTERS] == [0, 1, 2]
    assert {letter: options.axis_index(letter) for letter in "ijk"} == {"i": 2, "j": 1, "k": 0}  # (z, y, x)


@pytest.mark.parametrize("check, value, kind, nearest", [
    (options.check_device, "gpu", "device", "cuda"),  # an alias: difflib alone would say 'cpu'
    (options.check_device, "cdua", "device", "cuda"),
    (options.check_device, "mpss", "device", "mps"),
    (options.check_preset, "fsat", "preset", "fast"),
    (options.check_preset, "defualt", "preset", "default"),
    (options.check_consistency, "bidirectonal", "consistency", "bidirectional"),
    (options.axis_index, "kk", "axis", "k"),
])
def test_a_near_miss_is_one_line_with_the_known_values_and_the_nearest(check, value, kind, nearest):
    with pytest.raises(InputError) as raised:
        check(value)
    message = str(raised.value)
    assert raised.value.exit_code == EXIT_BAD_INPUT and "\n" not in message
    assert message.startswith(f"unknown {kind} '{value}' (known: ")
    assert message.endswith(f"; did you mean '{nearest}'?")


def test_the_known_values_are_listed_and_nothing_is_guessed_for_a_far_miss():
    assert str(pytest.raises(InputError, options.check_device, "cuda:x").value).startswith(
        "unknown device 'cuda:x' (known: auto, cpu, cuda, cuda:N, mps)")
    message = str(pytest.raises(InputError, options.check_preset, "turbo").value)
    assert message == f"unknown preset 'turbo' (known: {', '.join(options.PRESET_NAMES)})"


def test_presets_and_budgets_are_whole_positive_numbers():
    assert options.DEFAULT_PRESET in options.PRESETS and options.DEFAULT_CONSISTENCY in options.CONSISTENCY_MODES
    for preset in options.PRESETS.values():
        assert all(isinstance(v, int) and v >= 1 for v in (preset.steps, preset.batch_size, preset.patch))
    assert 0 < options.REFINE_FRACTION < 1
    assert options.CONSISTENCY_DECODERS[options.DEFAULT_CONSISTENCY] == 1


def test_the_training_configs_are_built_from_the_presets():
    from ContrastiveSegLib.presets import PRESETS, preset_config
    from ContrastiveSegLib.training.finetune import FinetuneConfig
    from ContrastiveSegLib.training.pretrain import PretrainConfig

    for name, numbers in options.PRESETS.items():
        config = preset_config(name)
        assert (config.steps, config.batch_size, config.patch) == (numbers.steps, numbers.batch_size, numbers.patch)
    assert list(PRESETS) == list(options.PRESET_NAMES)
    # FinetuneConfig's own defaults are the default preset's numbers (taken from options.PRESETS).
    default, plain = options.PRESETS[options.DEFAULT_PRESET], FinetuneConfig()
    assert (plain.steps, plain.batch_size, plain.patch) == (default.steps, default.batch_size, default.patch)
    assert PretrainConfig().steps == options.PRETRAIN_STEPS
    assert PretrainConfig().batch_size == options.PRETRAIN_BATCH_SIZE
    assert PretrainConfig().learning_rate == options.PRETRAIN_LEARNING_RATE
    assert preset_config(options.DEFAULT_PRESET, refine=True).steps == round(default.steps * options.REFINE_FRACTION)


# ----------------------------------------------------------------------------------------- the CLI
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_the_clis_choices_and_defaults_are_the_modules():
    commands = _subcommands()
    for name in ("segment", "finetune"):
        parser = commands[name]
        assert tuple(_option(parser, "--consistency").choices) == options.CONSISTENCY_MODES
        assert _option(parser, "--consistency").default == options.DEFAULT_CONSISTENCY
        assert sorted(_option(parser, "--axis").choices) == sorted(options.AXIS_LETTERS)
        assert _option(parser, "--adapt-steps").default == options.ADAPT_STEPS
        preset = _option(parser, "--preset")
        assert preset.default == options.DEFAULT_PRESET and all(p in preset.help for p in options.PRESET_NAMES)
    for name in ("segment", "finetune", "predict", "demo", "pretrain"):
        parser = commands[name]
        device = _option(parser, "--device")
        assert device.default == options.DEFAULT_DEVICE and device.help == options.device_help()
        assert tuple(_option(parser, "--progress").choices) == options.PROGRESS_MODES
    for name in ("demo", "pretrain"):
        assert sorted(_option(commands[name], "--axis").choices) == sorted(options.AXIS_LETTERS)
    assert _option(commands["demo"], "--preset").default == options.DEFAULT_PRESET
    assert _option(commands["pretrain"], "--batch-size").default == options.PRETRAIN_BATCH_SIZE
    assert _option(commands["pretrain"], "--patch").default == options.PRETRAIN_PATCH
    assert _option(commands["pretrain"], "--lr").default == options.PRETRAIN_LEARNING_RATE
    assert str(options.PRETRAIN_STEPS) in _option(commands["pretrain"], "--steps").help


@pytest.mark.parametrize("argv, phrase", [
    (["segment", "image.nii.gz", "labels.nii.gz", "-o", "out.nii.gz", "--preset", "fsat"],
     "unknown preset 'fsat' (known: default, fast); did you mean 'fast'?"),
    (["predict", "image.nii.gz", "--model", "m.safetensors", "-o", "out.nii.gz", "--device", "gpu"],
     "unknown device 'gpu' (known: auto, cpu, cuda, cuda:N, mps); did you mean 'cuda'?"),
    (["pretrain", "scans", "--method", "simclr", "-o", "e.safetensors", "--device", "cdua"],
     "did you mean 'cuda'?"),
    (["demo", "--preset", "defualt"], "did you mean 'default'?"),
])
def test_the_cli_refuses_a_near_miss_before_any_work(tmp_path, monkeypatch, capsys, argv, phrase):
    monkeypatch.chdir(tmp_path)  # the files named do not exist: the check comes first
    assert main(argv + ["--progress", "json"]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("contrastiveseg: error: ") and phrase in lines[0]
    event = json.loads(captured.out.strip().splitlines()[-1])  # front ends get the error as JSON too
    assert event["stage"] == "error" and phrase in event["message"]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- the Slicer module
def _parameter_annotations() -> dict[str, ast.expr]:
    """name -> annotation of the @parameterNodeWrapper class of ContrastiveSeg.py, as syntax."""
    tree = ast.parse(MODULE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            return {item.target.id: item.annotation for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in ContrastiveSeg.py")


def test_the_panels_choices_name_no_option_value_of_their_own():
    """The source check, which runs without Slicer: the device, preset and axis Choice lists spell out no value."""
    annotations = _parameter_annotations()
    for name in ("device", "preset", "axis"):
        literals = [n.value for n in ast.walk(annotations[name]) if isinstance(n, ast.Constant)
                    and isinstance(n.value, str)]
        assert literals == [], f"{name}: {literals} written in ContrastiveSeg.py instead of taken from options"
    source = MODULE.read_text()
    for value in ("fast", "bidirectional", "mps"):
        assert f'"{value}"' not in source


def test_the_panels_choice_lists_and_defaults_are_the_modules(monkeypatch, tmp_path, scene):
    from test_slicer_ui import _stand_ins

    _stand_ins(monkeypatch, scene, tmp_path)
    import ContrastiveSeg

    hints = typing.get_type_hints(ContrastiveSeg.ContrastiveSegParameterNode, vars(ContrastiveSeg),
                                  include_extras=True)

    def choices(name: str) -> list:
        return next(m.choices for m in hints[name].__metadata__ if hasattr(m, "choices"))

    assert choices("device") == list(options.DEVICE_KINDS)
    assert choices("preset") == list(options.PRESET_NAMES)
    assert choices("axis") == [ContrastiveSeg.AXIS_FROM_PAINT, *options.AXIS_LETTERS]
    node = ContrastiveSeg.ContrastiveSegParameterNode()
    assert (node.device, node.preset, node.pretrainSteps) == (options.DEFAULT_DEVICE, options.DEFAULT_PRESET,
                                                              options.PRETRAIN_STEPS)
    logic = ContrastiveSeg.ContrastiveSegLogic()
    node.axis = "i"
    assert logic.optionsFromParameterNode(node)["axis"] == options.axis_index("i") == 2


def test_api_and_cli_share_the_count_bounds():
    """One rule for the API and the CLI: the same bounds, the message naming the argument as each caller spells it."""
    with pytest.raises(InputError, match=r"^steps must be <= 1000000, got 1000000000000$"):
        options.check_training_options(steps=10**12)
    with pytest.raises(InputError, match=r"^--steps must be <= 1000000, got 1000000000000$"):
        options.check_bounds({"steps": 10**12})
    with pytest.raises(InputError, match=r"^batch size must be >= 1, got 0$"):
        options.check_training_options(batch_size=0)
    options.check_training_options(steps=options.MAX_STEPS, batch_size=options.MAX_BATCH_SIZE)


def test_the_clis_option_check_runs_in_one_place_in_a_fixed_order():
    # options.check_command_options: bounds, then the free-text choices, then the training options; the first
    # failure is the message, and the device comes back normalised (the CLI stores it on its arguments).
    values = vars(build_parser().parse_args(["segment", "image.nii.gz", "labels.nii.gz", "-o", "out.nii.gz",
                                             "--device", "CPU", "--steps", "3"]))
    assert options.check_command_options("segment", values) == {"device": "cpu"}
    with pytest.raises(InputError, match="^--steps must be"):  # bounds before a wrong preset
        options.check_command_options("segment", {**values, "steps": 10**12, "preset": "fsat"})
    with pytest.raises(InputError, match="preset 'fsat'.*'fast'"):  # the choice before the training options
        options.check_command_options("segment", {**values, "preset": "fsat", "adapt": "byol"})
    with pytest.raises(InputError, match="unknown method 'byol'"):
        options.check_command_options("segment", {**values, "adapt": "byol"})
    with pytest.raises(InputError, match="not to a refinement"):
        options.check_command_options("finetune", {**values, "consistency": "bidirectional",
                                                   "init_model": Path("m.safetensors")})
    # predict has no training options: the same values pass there.
    assert options.check_command_options("predict", {**values, "adapt": "byol"}) == {"device": "cpu"}
