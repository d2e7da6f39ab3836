"""CPU bf16: when the library turns it on, what a forward pass then computes in, and that what comes out of the
prediction stays float32 and agrees with a float32 run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PHANTOM_SPACING

from ContrastiveSegLib import device as device_module
from ContrastiveSegLib.device import CPU_BF16_VARIABLE, autocast_context, cpu_bf16_enabled, cpu_has_native_bf16

CPU = torch.device("cpu")


def _cpuinfo(tmp_path, name: str, flags: str) -> str:
    path = tmp_path / name
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    return str(path)


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx2 avx512f avx512bw avx512_bf16 avx512_vnni", True),
    ("fpu avx512f amx_tile amx_bf16 amx_int8", True),
    ("fpu sse avx2 avx512f avx512bw avx512vl", False),  # AVX-512 alone: oneDNN would emulate bf16
    ("fpu sse avx2 xavx512_bf16", False),  # a flag is a whole word
])
def test_native_bf16_is_read_from_the_first_flags_line(tmp_path, flags, native):
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "cpuinfo", flags)) is native


def test_no_cpuinfo_means_float32(tmp_path):
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is False


@pytest.mark.parametrize("variable, native, expected", [
    ("0", True, False), ("1", False, True), ("", True, True), ("", False, False), ("yes", False, False),
])
def test_the_variable_overrides_the_cpu(monkeypatch, variable, native, expected):
    monkeypatch.setenv(CPU_BF16_VARIABLE, variable)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    assert cpu_bf16_enabled() is expected


@pytest.mark.parametrize("variable, dtype", [("1", torch.bfloat16), ("0", torch.float32)])
def test_a_cpu_convolution_runs_in_the_chosen_precision(monkeypatch, variable, dtype):
    monkeypatch.setenv(CPU_BF16_VARIABLE, variable)
    conv = torch.nn.Conv2d(2, 3, 3)
    with autocast_context(CPU):
        assert conv(torch.randn(1, 2, 8, 8)).dtype == dtype


def test_bf16_prediction_is_float32_and_agrees_with_float32(monkeypatch, phantom):
    """A network trained to separate the phantom's classes predicts the same labels in both precisions on all but
    a thin rim (bf16 keeps 8 bits of mantissa: only near-ties can flip), and its probabilities come back as float32
    summing to 1."""
    from ContrastiveSegLib import api
    from ContrastiveSegLib.data.case import PreparedCase
    from ContrastiveSegLib.inference.predict import predict_volume

    image, labels = phantom.image, phantom.sparse
    monkeypatch.setenv(CPU_BF16_VARIABLE, "0")
    model = api.finetune(image, labels, PHANTOM_SPACING, seed=0, device="cpu", preset="fast", steps=40)
    case = PreparedCase.build(image, api.read_annotation(image, labels, model.axis, model.label_values), PHANTOM_SPACING,
                              model.spec, axis=model.axis)
    results = {}
    for variable in ("0", "1"):
        monkeypatch.setenv(CPU_BF16_VARIABLE, variable)
        results[variable] = predict_volume(model.network, case.stack, CPU, divisor=model.network.config.divisor,
                                           keep_probabilities=True)
    (classes32, probs32), (classes16, probs16) = results["0"], results["1"]
    assert probs16.dtype == np.float32
    np.testing.assert_allclose(probs16.sum(0), 1.0, atol=1e-5)
    assert np.mean(classes16 == classes32) > 0.995
    assert np.abs(probs16 - probs32).max() < 0.2
