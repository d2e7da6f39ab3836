"""MixCL label consistency: class-balanced pixel sampling, SupCon closed forms, unlabelled pixels, errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ContrastiveSegLib.losses.label_consistency import LabelConsistencyLoss, sample_labelled_pixels

torch.set_num_threads(1)


def labels_3_classes():
    labels = torch.full((2, 6, 6), 255, dtype=torch.long)
    labels[0, :4] = 0  # 24 background pixels
    labels[0, 4, :3] = 1  # 3 pixels of class 1
    labels[1, :2, :] = 2  # 12 pixels of class 2
    return labels


def test_sampling_is_balanced_and_skips_unlabelled():
    labels = labels_3_classes()
    image, index, cls = sample_labelled_pixels(labels, 5, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(cls).tolist() == [5, 3, 5]  # class 1 has only 3 labelled pixels
    assert torch.equal(labels.flatten(1)[image, index], cls)
    assert len(set(zip(image.tolist(), index.tolist()))) == 13  # without replacement


def test_orthogonal_classes_closed_form():
    # Every pixel of class c carries e_c: K - 1 positives at s = 1, (C - 1) K negatives at s = 0.
    labels = labels_3_classes()
    labels[labels == 1] = 255  # keep classes 0 and 2, each with >= 8 pixels
    codes = torch.eye(3, dtype=torch.float64)
    features = codes[labels.clamp(max=2)].permute(0, 3, 1, 2)
    tau, k = 0.2, 8
    loss = LabelConsistencyLoss(temperature=tau, pixels_per_class=k)(features, labels)
    # l = -log(e^(1/tau) / ((K - 1) e^(1/tau) + K)) for every positive pair (C = 2 classes).
    assert loss.item() == pytest.approx(math.log(k - 1 + k * math.exp(-1 / tau)), rel=1e-12)


def test_identical_features_give_log_m_minus_1():
    labels = labels_3_classes()
    features = torch.ones(2, 4, 6, 6, dtype=torch.float64)
    loss = LabelConsistencyLoss(pixels_per_class=4)(features, labels)
    assert loss.item() == pytest.approx(math.log(4 + 3 + 4 - 1))


def test_no_labels_or_single_pixel_gives_attached_zero():
    f = torch.randn(1, 3, 4, 4, requires_grad=True)
    none = torch.full((1, 4, 4), 255)
    assert LabelConsistencyLoss()(f, none).item() == 0.0
    one = none.clone()
    one[0, 1, 1] = 1
    loss = LabelConsistencyLoss()(f, one)
    assert loss.item() == 0.0 and loss.requires_grad


def test_labels_at_input_resolution_are_resized_and_gradients_flow():
    labels = labels_3_classes().repeat_interleave(2, 1).repeat_interleave(2, 2)  # (2, 12, 12)
    f = F.normalize(torch.randn(2, 4, 6, 6, dtype=torch.float64), dim=1).requires_grad_()
    loss = LabelConsistencyLoss(pixels_per_class=6)(f, labels, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and f.grad.abs().sum() > 0


def test_errors():
    f = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="labels must have shape"):
        LabelConsistencyLoss()(f, torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        LabelConsistencyLoss()(f, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="features must be"):
        LabelConsistencyLoss()(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="pixels_per_class"):
        LabelConsistencyLoss(pixels_per_class=1)
