"""Crafted model, encoder and checkpoint headers (issue 10, items 8 and 9): each class of bad header is refused
with one line and exit code 2 before anything is built, never "internal error" (exit 1) and never an empty
segmentation (exit 0); a header declaring a huge network is compared with the file's tensors before any network
is allocated.

Every case starts from a valid file (a model written by ``TrainedModel.save``, a copy of a shipped encoder, a
checkpoint written by ``save_checkpoint``) and rewrites its JSON header or its tensors, as a hostile tester would.
No network is trained.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import write_image
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.methods import get_method
from ContrastiveSegLib.model import TrainedModel
from ContrastiveSegLib.paths import models_dir
from ContrastiveSegLib.training.checkpoint import load_checkpoint, read_checkpoint_header, save_checkpoint
from ContrastiveSegLib.zoo.weights import HEADER_KEY, check_header, read_weights_header
from test_cli_errors import FAST, _model, assert_bad_input

torch.set_num_threads(1)
SMALL = (8, 8, 16, 16, 32)  # pretraining widths small enough for a checkpoint made in milliseconds


def rewrite(path: Path, header: Callable[[dict], object] | None = None,
            tensors: Callable[[dict], object] | None = None, raw: str | None = None) -> Path:
    """Rewrite ``path``'s header (``header`` edits the dict in place) or its tensors (``tensors`` edits the dict
    of tensors in place), or store ``raw`` as the header text."""
    with safe_open(str(path), framework="pt") as handle:
        text = handle.metadata()[HEADER_KEY]
    weights = load_file(str(path))
    content = json.loads(text)
    if header is not None:
        header(content)
    if tensors is not None:
        tensors(weights)
    save_file(weights, str(path), metadata={HEADER_KEY: raw if raw is not None else json.dumps(content)})
    return path


def setter(*keys_and_value):
    """An edit that sets header[k1][k2]... = value."""
    *keys, value = keys_and_value

    def edit(header: dict) -> None:
        for key in keys[:-1]:
            header = header[key]
        header[keys[-1]] = value
    return edit


def remover(*keys):
    def edit(header: dict) -> None:
        for key in keys[:-1]:
            header = header[key]
        del header[keys[-1]]
    return edit


def as_int8(weights: dict) -> None:
    """Every floating-point tensor as int8: load_state_dict would cast it back to float without a word."""
    for name, tensor in weights.items():
        if tensor.is_floating_point():
            weights[name] = (tensor * 100).to(torch.int8)


NAN = float("nan")

# ----------------------------------------------------------------------------------------------- models
MODEL_CASES = {
    "label value beyond 64 bits": (setter("label_values", [0, 2**70]), None,
                                   "header field 'label_values' must fit in 64 bits"),
    "label value not an integer": (setter("label_values", [0, 1.5]), None,
                                   "header field 'label_values' must be a list of integers"),
    "label value true": (setter("label_values", [0, True]), None, "'label_values' must be a list of integers"),
    "label values a string": (setter("label_values", "0,1"), None, "'label_values' must be a list of integers"),
    "label values not one per class": (setter("label_values", [0, 1, 2]), None, "must list one value per class"),
    "no background first": (setter("label_values", [1, 0]), None, "must start with background 0 and increase"),
    "label value 255": (setter("label_values", [0, 255]), None, "cannot hold 255"),
    "axis 7": (setter("axis", 7), None, "header field 'axis' must be an integer from 0 to 2"),
    "axis a string": (setter("axis", "0"), None, "header field 'axis' must be an integer from 0 to 2"),
    "context 1000": (setter("input", "context", 1000), None,
                     "header field 'input.context' must be an integer from 0 to 8"),
    "NaN window": (setter("input", "window", [NAN, 0.99]), None, "header field 'input.window' must be two quantiles"),
    "reversed window": (setter("input", "window", [0.99, 0.01]), None, "'input.window' must be two quantiles"),
    "empty window": (setter("input", "window", [0.5, 0.5]), None, "'input.window' must be two quantiles"),
    "coordinates a string": (setter("input", "coordinates", "yes"), None,
                             "header field 'input.coordinates' must be true or false"),
    "in_channels other than the input spec": (setter("network", "in_channels", 7), None,
                                              "header field 'network.in_channels' is 7, but its input spec"),
    "huge widths": (setter("network", "features", [8, 16, 32, 64, 10**9]), None,
                    "header field 'network.features' must be 5 integer widths from 1 to 1024"),
    "huge class count": (setter("network", "num_classes", 10**6), None,
                         "header field 'network.num_classes' must be an integer from 2 to 254"),
    "three decoders": (setter("network", "decoders", 3), None, "header field 'network.decoders' must be an integer"),
    "unknown norm": (setter("network", "norm", "group"), None, "header field 'network.norm' must be one of batch"),
    "network a string": (setter("network", "unet"), None, "header field 'network' must be an object"),
    "network missing": (remover("network"), None, "header field 'network' is missing"),
    "NaN spacing": (setter("spacing", [1.0, NAN, 1.0]), None, "header field 'spacing' must be 3 finite numbers > 0"),
    "encoder a number": (setter("encoder", 3), None, "header field 'encoder' must be a one-line name"),
    "newer format": (setter("format_version", 99), None, "was written by a newer ContrastiveSeg"),
    "widths the tensors do not have": (setter("network", "features", [16, 16, 32, 64, 128]), None,
                                       "has shape [8, 5, 3, 3], the network its header declares needs [16, 5, 3, 3]"),
    "a second decoder the file lacks": (setter("network", "decoders", 2), None,
                                        "does not match the network its header declares: no tensor 'decoder2."),
    "int8 weights": (None, as_int8, "holds I8 values; it must be floating-point"),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_crafted_model_header_is_refused(phantom_files, capsys, case):
    f = phantom_files
    header, tensors, phrase = MODEL_CASES[case]
    model = rewrite(_model(f.folder / "model.safetensors"), header, tensors)
    line = assert_bad_input(["predict", f.image, "--model", model, "-o", f.folder / "out.nii.gz", "--device", "cpu"],
                            capsys, phrase, f.folder)
    assert str(model) in line


@pytest.mark.parametrize("raw, phrase", [
    ("[1, 2]", "has a corrupt header (not a JSON object)"),
    ('"model"', "has a corrupt header (not a JSON object)"),
    ("{not json", "has a corrupt header"),
    ('{"kind": ["model"]}', "holds a unknown, not a model"),
])
def test_model_header_that_is_no_object_is_refused(phantom_files, capsys, raw, phrase):
    f = phantom_files
    model = rewrite(_model(f.folder / "model.safetensors"), raw=raw)
    assert_bad_input(["predict", f.image, "--model", model, "-o", f.folder / "out.nii.gz", "--device", "cpu"],
                     capsys, phrase, f.folder)


def test_header_of_a_huge_network_is_refused_before_building_it(phantom_files, capsys, monkeypatch):
    """Issue 10 item 8: a small file whose header declares widths of 1024 and two decoders (1.2 GB of float32)
    was built, at 4.8 GB RSS, before load_state_dict refused it. Networks may now only be built on the meta device
    (shapes, no memory) until the tensors are found to fit."""
    from ContrastiveSegLib import model as model_module

    real = model_module.build_network

    def meta_only(config):
        if torch.empty(0).device.type != "meta":
            raise AssertionError(f"a network was allocated for {config} before its shapes were checked")
        return real(config)

    f = phantom_files
    model = rewrite(_model(f.folder / "model.safetensors"),
                    lambda h: h["network"].update(features=[1024] * 5, decoder_features=1024, decoders=2))
    monkeypatch.setattr(model_module, "build_network", meta_only)
    assert_bad_input(["predict", f.image, "--model", model, "-o", f.folder / "out.nii.gz", "--device", "cpu"],
                     capsys, "does not match the network its header declares", f.folder)


def test_valid_model_still_loads_and_keeps_its_meaning(tmp_path):
    path = _model(tmp_path / "model.safetensors", label_values=(0, 3, 70000))
    loaded = TrainedModel.load(path)
    assert loaded.label_values == (0, 3, 70000) and loaded.axis == 0 and loaded.spec.window == (0.005, 0.995)
    assert all(isinstance(v, int) for v in loaded.label_values)
    assert next(loaded.network.parameters()).device.type == "cpu"


def test_float64_weights_are_accepted(tmp_path):
    """Floating-point weights of another precision are weights; only integer ones are refused."""
    path = rewrite(_model(tmp_path / "model.safetensors"), tensors=lambda w: w.update(
        {k: v.double() for k, v in w.items() if v.is_floating_point()}))
    TrainedModel.load(path)


# ----------------------------------------------------------------------------------------------- encoders
def _encoder(folder: Path) -> Path:
    """A copy of a shipped encoder (the header ``save_encoder`` writes, real weights)."""
    return Path(shutil.copy(models_dir() / "simclr.safetensors", folder / "encoder.safetensors"))


ENCODER_CASES = {
    "input_channels a string": (setter("input_channels", "5"), None,
                                "header field 'input_channels' must be an integer >= 1"),
    "context 1000": (setter("input", "context", 1000), None, "header field 'input.context' must be an integer"),
    "input spec of other channels": (setter("input", "coordinates", False), None,
                                     "header field 'input_channels' is 5, but its input spec"),
    "NaN window": (setter("input", "window", [0.01, NAN]), None, "header field 'input.window' must be two quantiles"),
    "reversed window": (setter("input", "window", [0.9, 0.1]), None, "'input.window' must be two quantiles"),
    "widths of the wrong type": (setter("features", [8, 16, 32, 64, "128"]), None,
                                 "header field 'features' must be 5 integer widths"),
    "huge widths": (setter("features", [2048] * 5), None, "header field 'features' must be 5 integer widths"),
    "axis 7": (setter("axis", 7), None, "header field 'axis' must be an integer from 0 to 2"),
    "method params a list": (setter("method_params", [1, 2]), None, "header field 'method_params' must be an object"),
    "steps negative": (setter("steps", -1), None, "header field 'steps' must be an integer >= 0"),
    "only an input spec, of 7 channels": (
        lambda h: (h.pop("input_channels"), h["input"].update(context=2)), None,
        "takes 7 input channels, this image gives 5"),
    "int8 weights": (None, as_int8, "holds I8 values; it must be floating-point"),
    "a tensor of another shape": (None, lambda w: w.update({"stem.conv_0.conv.weight": torch.zeros(8, 5, 5, 5)}),
                                  "tensor 'stem.conv_0.conv.weight' has shape [8, 5, 5, 5], the encoder it is loaded "
                                  "into needs [8, 5, 3, 3]"),
}


@pytest.mark.parametrize("case", ENCODER_CASES)
def test_crafted_encoder_header_is_refused(phantom_files, capsys, monkeypatch, case):
    from ContrastiveSegLib import api

    def trained(*args, **kwargs):
        raise AssertionError("the encoder was accepted and fine-tuning started")

    f = phantom_files
    header, tensors, phrase = ENCODER_CASES[case]
    encoder = rewrite(_encoder(f.folder), header, tensors)
    monkeypatch.setattr(api, "train_segmentation", trained)  # refused when loaded, before any step
    line = assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--encoder", encoder,
                             *FAST], capsys, phrase, f.folder)
    assert str(encoder) in line


# ----------------------------------------------------------------------------------------------- checkpoints
def _checkpoint(path: Path) -> Path:
    """A checkpoint of a small simclr method after one AdamW step (so the optimizer holds per-parameter state)."""
    torch.manual_seed(0)
    method = get_method("simclr", features=SMALL)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    sum(p.sum() for p in method.parameters()).backward()
    optimizer.step()
    save_checkpoint(path, method, optimizer, {"step": 1, "seconds": 1.5, "seed": 0, "batch_size": 4})
    return path


def _fresh_method():
    method = get_method("simclr", features=SMALL)
    return method, torch.optim.AdamW(method.parameters(), lr=1e-3)


CHECKPOINT_HEADER_CASES = {
    "step a string": (setter("step", "3"), "header field 'step' must be an integer >= 0"),
    "NaN seconds": (setter("seconds", NAN), "header field 'seconds' must be a finite number >= 0"),
    "params a string": (setter("params", "temperature=0.1"), "header field 'params' must be an object"),
    "reversed window": (setter("input", "window", [0.9, 0.1]), "header field 'input.window' must be two quantiles"),
    "context 1000": (setter("input", "context", 1000), "header field 'input.context' must be an integer"),
    "huge widths": (setter("features", [4096] * 5), "header field 'features' must be 5 integer widths"),
    "method a number": (setter("method", 3), "header field 'method' must be a one-line name"),
    "param groups a string": (setter("optimizer", "param_groups", "adamw"),
                              "header field 'optimizer.param_groups' must be a non-empty list of objects"),
    "param indices not integers": (lambda h: h["optimizer"]["param_groups"][0].update(params=["a"]),
                                   "header field 'optimizer.param_groups[0].params' must be a list"),
    "scalar state a string": (setter("optimizer", "scalars", {"0": {"step": "many"}}),
                              "header field 'optimizer.scalars.0.step' must be a finite number or null"),
}


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unlabelled")
    write_image(np.random.default_rng(0).normal(100, 20, (12, 32, 32)).astype(np.float32), folder / "a.nii.gz")
    return folder


@pytest.mark.parametrize("case", CHECKPOINT_HEADER_CASES)
def test_crafted_checkpoint_header_is_refused_before_pretraining(unlabelled, tmp_path, capsys, case):
    edit, phrase = CHECKPOINT_HEADER_CASES[case]
    checkpoint = rewrite(_checkpoint(tmp_path / "enc.checkpoint.safetensors"), edit)
    line = assert_bad_input(["pretrain", unlabelled, "--method", "simclr", "-o", tmp_path / "enc.safetensors",
                             "--resume", checkpoint, "--features", ",".join(map(str, SMALL)), "--steps", "1",
                             "--batch-size", "2", "--patch", "32", "--device", "cpu", "--progress", "none"],
                            capsys, phrase, tmp_path)
    assert str(checkpoint) in line
    with pytest.raises(InputError, match=re.escape(phrase)):
        read_checkpoint_header(checkpoint, "simclr")


CHECKPOINT_TENSOR_CASES = {
    "learning rate a string": (lambda h: h["optimizer"]["param_groups"][0].update(lr="fast"), None,
                               "header field 'optimizer.param_groups[0].lr' is 'fast', not a value like"),
    "betas of another length": (lambda h: h["optimizer"]["param_groups"][0].update(betas=[0.9]), None,
                                "header field 'optimizer.param_groups[0].betas'"),
    "int8 weights": (None, as_int8, "holds I8 values; it must be floating-point"),
    "optimizer state of another shape": (
        None, lambda w: w.update({"optim/0/exp_avg": torch.zeros(3, 3)}), "the optimizer needs floating-point values"),
    "optimizer state for no parameter": (
        None, lambda w: w.update({"optim/999/exp_avg": torch.zeros(1)}), "names no parameter of this run's optimizer"),
    "a tensor of neither part": (None, lambda w: w.update({"extra": torch.zeros(1)}), "unexpected tensor 'extra'"),
    "a missing weight": (None, lambda w: w.pop(next(k for k in w if k.startswith("model/"))),
                         "does not match method 'simclr': no tensor 'model/"),
}


@pytest.mark.parametrize("case", CHECKPOINT_TENSOR_CASES)
def test_checkpoint_that_does_not_fit_is_refused_before_loading(tmp_path, case):
    """What only the method and optimizer of the run can tell: refused with one line by load_checkpoint, and the
    method is left as it was."""
    header, tensors, phrase = CHECKPOINT_TENSOR_CASES[case]
    checkpoint = rewrite(_checkpoint(tmp_path / "enc.checkpoint.safetensors"), header, tensors)
    method, optimizer = _fresh_method()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    with pytest.raises(InputError, match=re.escape(phrase)) as error:
        load_checkpoint(checkpoint, method, optimizer)
    assert "\n" not in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())


def test_valid_checkpoint_still_resumes(tmp_path):
    checkpoint = _checkpoint(tmp_path / "enc.checkpoint.safetensors")
    method, optimizer = _fresh_method()
    header = load_checkpoint(checkpoint, method, optimizer)
    assert header["step"] == 1 and optimizer.state_dict()["state"]


# ----------------------------------------------------------------------------------------------- one checker
def test_every_loader_uses_the_one_header_check(tmp_path):
    """The same bad field gives the same message from each reader: the check lives in one place."""
    model = rewrite(_model(tmp_path / "model.safetensors"), setter("input", "window", [0.9, 0.1]))
    with pytest.raises(InputError, match="'input.window' must be two quantiles"):
        read_weights_header(model, kind="model", what="model")
    with pytest.raises(InputError, match="'input.window' must be two quantiles"):
        TrainedModel.load(model)
    expected = r"^x: header field 'input.window' must be two quantiles .*, got \[0.9, 0.1\]$"
    with pytest.raises(InputError, match=expected):
        check_header({"kind": "encoder", "input": {"context": 1, "coordinates": True, "window": [0.9, 0.1]}}, "x")
