"""``segment --adapt METHOD`` (pretraining on the scan at hand) and ``--consistency bidirectional`` (IDEAL's two
decoders that label the unannotated slices for each other): the pieces against hand-computed values, the network
and file round trip, and the command line on the small phantom of conftest."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import dice
from ContrastiveSegLib import api
from ContrastiveSegLib.data.sampler import UnannotatedSliceSampler
from ContrastiveSegLib.data.slices import InputSpec, SliceStack
from ContrastiveSegLib.data.unlabelled import ArrayVolume
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.model import TrainedModel
from ContrastiveSegLib.networks import Encoder, NetworkConfig, build_network
from ContrastiveSegLib.training.finetune import (FinetuneConfig, _unannotated_logits, consistency_loss,
                                                 consistency_ramp)
from ContrastiveSegLib.training.pretrain import PretrainConfig, pretrain_encoder
from ContrastiveSegLib.zoo.weights import save_weights
from test_cli_errors import assert_bad_input

QUICK = {"steps": 3, "batch_size": 2, "preset": "fast", "device": "cpu"}


# ----------------------------------------------------------------------------------------------- consistency parts
def test_consistency_ramp_is_a_sigmoid_ramp_to_the_weight():
    config = FinetuneConfig(steps=100, consistency_weight=0.5, consistency_rampup=0.4)
    assert consistency_ramp(0, config) == pytest.approx(0.5 * math.exp(-5.0))
    assert consistency_ramp(20, config) == pytest.approx(0.5 * math.exp(-5.0 * 0.25))
    assert consistency_ramp(40, config) == pytest.approx(0.5)
    assert consistency_ramp(99, config) == pytest.approx(0.5)
    assert consistency_ramp(0, FinetuneConfig(steps=10, consistency_rampup=0.0)) == pytest.approx(0.5)


def test_consistency_loss_is_cross_entropy_on_each_others_argmax():
    # One pixel, two classes. First decoder: logits (2, 0) -> argmax 0; second: (0, 1) -> argmax 1.
    first = torch.tensor([2.0, 0.0]).view(1, 2, 1, 1)
    second = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    # CE(first, 1) = log(1 + e^2) - 0 ... = -log(e^0 / (e^2 + e^0)); CE(second, 0) = -log(e^0 / (e^0 + e^1)).
    expected = math.log(math.exp(2) + 1) + math.log(1 + math.e)
    assert float(consistency_loss([first, second])) == pytest.approx(expected)
    # The pseudo-labels carry no gradient: only the logits being supervised do.
    a, b = first.clone().requires_grad_(), second.clone().requires_grad_()
    consistency_loss([a, b]).backward()
    softmax_a = torch.softmax(a.detach().view(2), 0)
    np.testing.assert_allclose(a.grad.view(2).numpy(), (softmax_a - torch.tensor([0.0, 1.0])).numpy(), atol=1e-6)


def test_unannotated_sampler_never_returns_an_annotated_slice():
    volume = np.repeat(np.arange(12, dtype=np.float32)[:, None, None], 32, 1).repeat(32, 2)  # slice i holds i
    stack = SliceStack(volume, 0, InputSpec(context=0, coordinates=False))
    sampler = UnannotatedSliceSampler(stack, [2, 5, 9], patch=16, divisor=16, seed=3)
    crops = sampler.batch(200)
    assert crops.shape == (200, 1, 16, 16)
    seen = set(np.unique(crops.numpy()).astype(int))
    assert seen <= set(range(12)) - {2, 5, 9}
    assert len(seen) >= 8  # all nine other slices are drawn, not one
    with pytest.raises(ValueError, match="every slice is annotated"):
        UnannotatedSliceSampler(stack, range(12), patch=16, divisor=16)


def test_two_decoder_network_averages_its_decoders_and_round_trips(tmp_path):
    torch.manual_seed(0)
    network = build_network(NetworkConfig(in_channels=5, num_classes=3, decoders=2)).eval()
    x = torch.randn(2, 5, 32, 32)
    first, second = network.forward_decoders(x)
    assert not torch.allclose(first, second)  # two independently initialised decoders
    torch.testing.assert_close(network(x), 0.5 * (first + second))
    model = TrainedModel(network, (0, 1, 2), 0, InputSpec(), (1.0, 1.0, 1.0))
    model.save(tmp_path / "dual.safetensors")
    loaded = TrainedModel.load(tmp_path / "dual.safetensors")
    assert loaded.network.config.decoders == 2
    torch.testing.assert_close(loaded.network.eval()(x), network(x))
    with pytest.raises(ValueError, match="decoders must be 1 or 2"):
        NetworkConfig(in_channels=5, num_classes=2, decoders=3)


@pytest.mark.slow
def test_bidirectional_finetuning_trains_both_decoders_and_segments(phantom):
    torch.manual_seed(0)
    model = api.finetune(phantom.image, phantom.sparse, consistency="bidirectional", encoder="random", **QUICK)
    fresh = build_network(model.network.config)
    # Both decoders moved away from their initial weights: each got gradients from its own supervised loss and
    # from the other's pseudo-labels.
    for name in ("decoder", "decoder2"):
        trained = getattr(model.network, name).head.weight
        assert not torch.allclose(trained, getattr(fresh, name).head.weight)
    result = api.segment(phantom.image, phantom.sparse, consistency="bidirectional", seed=0, encoder="random",
                         **{**QUICK, "steps": 60, "batch_size": 4})
    assert result.model.network.config.decoders == 2
    # Measured (60 steps of batch 4, seeds 0-2): mean Dice 0.98, 0.97, 0.99; plain fine-tuning 0.98, 0.97, 0.98.
    assert np.mean([dice(result.labels, phantom.reference, v) for v in (1, 2)]) > 0.90


def test_unannotated_pass_leaves_the_running_statistics_alone():
    torch.manual_seed(0)
    network = build_network(NetworkConfig(in_channels=5, num_classes=2, decoders=2)).train()
    norm = network.encoder.stem.conv_0.adn.N
    before = norm.running_mean.clone()
    logits = _unannotated_logits(network, torch.randn(3, 5, 32, 32) * 5 + 2, None, torch.device("cpu"))
    assert len(logits) == 2 and logits[0].shape == (3, 2, 32, 32)
    torch.testing.assert_close(norm.running_mean, before)
    assert norm.momentum == 0.1  # restored
    network(torch.randn(3, 5, 32, 32) * 5 + 2)  # an ordinary training pass does update them
    assert not torch.allclose(norm.running_mean, before)


# ----------------------------------------------------------------------------------------------- adaptation
def test_pretraining_from_an_encoder_file_starts_from_its_weights(tmp_path):
    torch.manual_seed(5)
    start = Encoder(in_channels=5)
    save_weights(tmp_path / "start.safetensors", start.state_dict(), {"kind": "encoder", "input_channels": 5,
                                                                    "features": [8, 16, 32, 64, 128]})
    volume = ArrayVolume(np.random.default_rng(0).normal(size=(8, 32, 32)).astype(np.float32))
    job = pretrain_encoder([volume], "simclr", None, PretrainConfig(steps=0), patch=32, device="cpu",
                           init_encoder=tmp_path / "start.safetensors")
    for key, value in start.state_dict().items():
        torch.testing.assert_close(job.method.encoder_state_dict()[key], value)


def test_adapt_changes_the_encoder_before_finetuning(phantom):
    plain = api.finetune(phantom.image, phantom.sparse, seed=0, encoder="random", **{**QUICK, "steps": 1})
    adapted = api.finetune(phantom.image, phantom.sparse, seed=0, encoder="random", adapt="mixcl", adapt_steps=2,
                           **{**QUICK, "steps": 1})
    assert adapted.encoder == "random+adapt:mixcl"
    assert not torch.allclose(plain.network.encoder.stem.conv_0.conv.weight,
                              adapted.network.encoder.stem.conv_0.conv.weight)


@pytest.mark.parametrize("kwargs, phrase", [
    ({"adapt": "byol"}, "unknown method 'byol'"),
    ({"adapt": "simclr", "adapt_steps": 0}, "adapt steps must be >= 1"),
    ({"consistency": "mutual"}, "unknown consistency 'mutual'"),
])
def test_bad_adapt_and_consistency_arguments(phantom, kwargs, phrase):
    with pytest.raises(InputError, match=phrase):
        api.finetune(phantom.image, phantom.sparse, **QUICK, **kwargs)


def test_adapt_refuses_a_refinement(phantom):
    model = api.finetune(phantom.image, phantom.sparse, **{**QUICK, "steps": 1})
    with pytest.raises(InputError, match="not to a refinement"):
        api.finetune(phantom.image, phantom.sparse, init_model=model, adapt="simclr", **QUICK)


def test_cli_unknown_adapt_method_is_one_line(phantom_files, capsys):
    f = phantom_files
    line = assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--adapt", "simclrr",
                             "--steps", "2", "--device", "cpu"], capsys, "unknown method 'simclrr'", f.folder)
    assert "did you mean 'simclr'" in line
