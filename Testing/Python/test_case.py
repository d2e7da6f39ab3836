"""The prepared case: one scan is checked, decoded and normalised once per run, and every stage uses that one."""
from __future__ import annotations

import numpy as np
import pytest

from ContrastiveSegLib import api, experimental
from ContrastiveSegLib.data import case as case_module
from ContrastiveSegLib.data.case import PreparedCase, read_annotation, spec_for
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.annotations import IGNORE


def _scan():
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 100.0, size=(10, 24, 20)).astype(np.float32)
    image[2:7, 2:17, 4:10] = rng.normal(50.0, 1.0, size=(5, 15, 6))  # the structure: a narrow band of intensities
    labels = np.full(image.shape, IGNORE, np.uint8)
    labels[:, 3, :] = 0  # slice 3 along axis 1 painted: background with one square of label 5
    labels[2:6, 3, 4:9] = 5
    labels[:, 15, :] = 0
    labels[3:7, 15, 6:10] = 5
    return image, labels


def test_case_slices_along_the_painted_axis_and_keeps_targets_slice_first():
    image, labels = _scan()
    annotation = read_annotation(image, labels)
    case = PreparedCase.build(image, annotation, (0.5, 0.7, 2.0), spec_for(image, annotation))
    assert case.axis == annotation.axis == 1
    assert case.stack.slices.shape == (24, 10, 20)
    assert case.targets.shape == (24, 10, 20)
    assert (case.targets[3, 2:6, 4:9] == 1).all() and case.targets[3, 0, 0] == 0
    assert (case.targets[4] == IGNORE).all()
    assert case.spacing == (0.5, 0.7, 2.0)
    # The window is fitted to the painted structure, not the scan's 0.5-99.5 % default.
    assert case.spec.window != case_module.DEFAULT_SPEC.window


def test_case_without_annotation_needs_an_axis():
    image, _ = _scan()
    with pytest.raises(ValueError):
        PreparedCase.build(image, None, (1, 1, 1), case_module.DEFAULT_SPEC)
    case = PreparedCase.build(image, None, (1, 1, 1), case_module.DEFAULT_SPEC, axis=2)
    assert case.targets is None and case.stack.slices.shape == (20, 10, 24)


def test_labels_of_another_shape_are_refused_in_one_line():
    image, labels = _scan()
    with pytest.raises(InputError, match="do not match the image's shape"):
        read_annotation(image, labels[:, :, :5])


def test_segment_normalises_the_scan_once_for_all_stages(monkeypatch):
    calls = []
    original = case_module.normalise_intensity

    def counting(array, window):
        calls.append(window)
        return original(array, window)

    monkeypatch.setattr(case_module, "normalise_intensity", counting)
    image, labels = _scan()
    result = experimental.segment(image, labels, (1, 1, 1), steps=2, batch_size=2, self_train=1, device="cpu")
    assert len(calls) == 1
    assert result.model.spec.window == calls[0]
    assert set(result.seconds) == {"prepare", "finetune", "self-train", "predict"}
