"""The fine-tuning pipeline's option combinations (issue 16): each either works or is refused up front in one
line, in the same words from every front end; the result's model is what was trained; the API uses the project's
thread rule; one name per constant."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ContrastiveSegLib import api, experimental, options
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.training import finetune as finetune_module
from conftest import HANG_GUARD_S

QUICK = {"steps": 2, "batch_size": 2, "preset": "fast", "device": "cpu"}
ROOT = Path(__file__).resolve().parents[2]


def _batch_sizes(monkeypatch) -> list[int]:
    """Record the batch size of every fine-tuning step (fine-tuning and self-training rounds alike)."""
    seen: list[int] = []
    original = finetune_module._training_step

    def recording(model, sampler, batch_size, *args, **kwargs):
        seen.append(batch_size)
        return original(model, sampler, batch_size, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "_training_step", recording)
    return seen


# ----------------------------------------------------------------------------------------------- bug 1
def test_self_training_works_with_bidirectional_consistency(phantom):
    # Was: a ValueError after fine-tuning had finished (the self-training round ran the one-decoder loop on the
    # two-decoder network), losing the whole run.
    result = experimental.segment(phantom.image, phantom.sparse, consistency="bidirectional", self_train=2, **QUICK)
    assert result.model.network.config.decoders == 2
    assert set(result.seconds) == {"prepare", "finetune", "self-train", "predict"}
    assert result.labels.shape == phantom.image.shape
    for s in phantom.slices:  # the painting is kept
        np.testing.assert_array_equal(result.labels[s], phantom.sparse[s])


# ----------------------------------------------------------------------------------------------- bug 2
def test_self_training_uses_the_callers_batch_size(phantom, monkeypatch):
    seen = _batch_sizes(monkeypatch)
    experimental.segment(phantom.image, phantom.sparse, self_train=3, **{**QUICK, "batch_size": 3})
    assert seen == [3] * (2 + 3)  # two fine-tuning steps, three self-training steps, all at the caller's 3


def test_self_training_runs_without_the_shape_prior(phantom, monkeypatch):
    # Was: silently skipped when the shape prior was off.
    seen = _batch_sizes(monkeypatch)
    result = experimental.segment(phantom.image, phantom.sparse, self_train=2, shape_prior=False, **QUICK)
    assert "self-train" in result.seconds and len(seen) == 2 + 2


# ----------------------------------------------------------------------------------------------- bug 4
def _module_constants() -> dict[str, dict[str, str]]:
    """Public module-level UPPER_CASE constants assigned a number: name -> {module: value source}."""
    found: dict[str, dict[str, str]] = {}
    for path in (ROOT / "ContrastiveSegLib").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                name = node.targets[0].id
                if name.isupper() and not name.startswith("_") and isinstance(node.value, ast.Constant) \
                        and isinstance(node.value.value, (int, float)):
                    found.setdefault(name, {})[str(path.relative_to(ROOT))] = ast.unparse(node.value)
    return found


def test_no_numeric_constant_name_has_two_values():
    # Was: PSEUDO_CONFIDENCE 0.9 in api.py and 0.95 in inference/shape_prior.py, two facts under one name.
    clashes = {name: homes for name, homes in _module_constants().items() if len(set(homes.values())) > 1}
    assert clashes == {}
    assert api.SELF_TRAIN_CONFIDENCE == 0.9 and not hasattr(api, "PSEUDO_CONFIDENCE")


# ----------------------------------------------------------------------------------------------- bug 6
@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"batch_size": 0}, "batch size must be >= 1, got 0"),
    ({"steps": 2.5}, "steps must be a whole number, got 2.5"),
    ({"adapt": "simclr", "adapt_steps": 0}, "adapt steps must be >= 1, got 0"),
    ({"adapt": "byol"}, "unknown method 'byol' (known: random, simclr, selfpaced, ideal, lrc, mixcl)"),
    ({"consistency": "mutual"}, "unknown consistency 'mutual' (known: off, bidirectional)"),
])
def test_one_check_one_wording_for_every_front_end(phantom, kwargs, message):
    with pytest.raises(InputError) as by_options:
        options.check_training_options(**kwargs)
    with pytest.raises(InputError) as by_the_api:
        api.segment(phantom.image, phantom.sparse, **{**QUICK, **kwargs})
    assert str(by_options.value) == str(by_the_api.value) == message


def test_a_refinement_with_adapt_or_consistency_is_refused_before_any_work(phantom, monkeypatch):
    model = api.finetune(phantom.image, phantom.sparse, **QUICK)
    seen = _batch_sizes(monkeypatch)
    for kwargs in ({"adapt": "simclr"}, {"consistency": "bidirectional"}):
        with pytest.raises(InputError, match="not to a refinement"):
            api.segment(phantom.image, phantom.sparse, init_model=model, **QUICK, **kwargs)
    assert seen == []


def test_option_values_have_one_home():
    # Written once in options.py, read by the code that uses them.
    import inspect

    from ContrastiveSegLib.inference import predict

    assert inspect.signature(predict.predict_volume).parameters["batch_size"].default == options.PREDICT_BATCH_SIZE
    source = (ROOT / "ContrastiveSegLib" / "api.py").read_text(encoding="utf-8")
    assert "batch_size=8" not in source and "steps: int = 100" not in source
    for path in (ROOT / "ContrastiveSegLib").rglob("*.py"):
        if path.name == "options.py" or "slicer" in path.parts:  # the Slicer side's two are left to its issue
            continue
        texts = [n.value for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not [t for t in texts if re.search(r"'fast' preset|preset fast|--preset 'fast'", t)], path


# ----------------------------------------------------------------------------------------------- bug 7
def test_predict_returns_no_model_and_segment_returns_the_trained_one(phantom):
    result = api.segment(phantom.image, phantom.sparse, **QUICK)
    assert result.model is not None and result.model.network.config.decoders == 1
    predicted = api.predict(result.model, phantom.image, labels=phantom.sparse, device="cpu")
    assert predicted.model is None  # nothing was trained by predict
    np.testing.assert_array_equal(predicted.labels, result.labels)


# ----------------------------------------------------------------------------------------------- threads
def test_the_python_api_applies_the_thread_rule(phantom):
    # A fresh interpreter with torch's own default (one thread per core) and no OMP_NUM_THREADS: inside an API
    # call torch runs on the project's default (here made 1 by a 2-CPU affinity), and the caller's count comes back
    # afterwards; an explicit threads= wins.
    code = """
import numpy as np, torch
from ContrastiveSegLib import api, threads
threads.available_cpus = lambda: 2
torch.set_num_threads(3)
seen = []
original = api.PreparedCase.build
def spy(*args, **kwargs):
    seen.append(torch.get_num_threads())
    return original(*args, **kwargs)
api.PreparedCase.build = spy
image = np.random.default_rng(0).normal(size=(6, 32, 32)).astype(np.float32)
labels = np.full(image.shape, 255, np.uint8); labels[1] = 0; labels[1, 8:20, 8:20] = 1; labels[4] = labels[1]
api.finetune(image, labels, steps=1, batch_size=1, preset="fast", device="cpu")
after = torch.get_num_threads()
api.finetune(image, labels, steps=1, batch_size=1, preset="fast", device="cpu", threads=2)
print(seen, after)
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                               timeout=HANG_GUARD_S)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split("\n")[0] == "[1, 2] 3"


# ----------------------------------------------------------------------------------------------- combinations
@pytest.mark.slow  # sixteen short runs
def test_every_combination_of_the_trainers_plug_ins_works_or_is_refused_up_front(phantom):
    # The variants of the one trainer: one or two decoders, a refinement, the experimental self-training round
    # and prior labels. Each combination either runs to a label map or is refused in one line before any step.
    import itertools

    small = {**QUICK, "steps": 1, "batch_size": 1}
    base = api.finetune(phantom.image, phantom.sparse, **small)
    outcomes = {}
    for consistency, refine, self_train, prior_labels in itertools.product(
            ("off", "bidirectional"), (False, True), (0, 1), (False, True)):
        try:
            result = experimental.segment(phantom.image, phantom.sparse, consistency=consistency,
                                          init_model=base if refine else None, self_train=self_train,
                                          prior_labels=prior_labels, **small)
        except InputError as error:
            assert "\n" not in str(error)
            outcomes[consistency, refine, self_train, prior_labels] = "refused"
        else:
            assert result.labels.shape == phantom.image.shape
            outcomes[consistency, refine, self_train, prior_labels] = "works"
    refused = {key for key, outcome in outcomes.items() if outcome == "refused"}
    assert refused == {key for key in outcomes if key[0] == "bidirectional" and key[1]}  # only: refine + 2 decoders


# ----------------------------------------------------------------------------------------------- the walk
def test_the_walk_of_segments_options_to_the_trainer_enters_no_file_more_than_three_times(monkeypatch):
    # benchmarks/walk.py follows `segment`'s options from the CLI to the first training step (docs/pipeline.md):
    # no file entered more than three times, and the walk ends in the one training loop.
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import walk

    stops = walk.record(ROOT)
    summary = walk.summarise(stops)
    assert stops[0][2] == "_check_arguments" and stops[-1][2] == "train_segmentation"
    assert summary["most"][0][1] <= 3, summary
    assert summary["stops"] <= 46, summary  # 50 before issue 16's plug-in trainer; docs/pipeline.md
