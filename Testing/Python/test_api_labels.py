"""The API's label handling: a saved model decodes a new scan's labels against its own label values, label values
beyond 16 bits survive, and a label map painted in several planes is segmented along its main plane."""
from __future__ import annotations

import numpy as np

from ContrastiveSegLib import api
from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.model import TrainedModel
from ContrastiveSegLib.networks import NetworkConfig, build_network


def _untrained_model(label_values, axis=0) -> TrainedModel:
    spec = InputSpec()
    network = build_network(NetworkConfig(in_channels=spec.in_channels, num_classes=len(label_values)))
    return TrainedModel(network.eval(), tuple(label_values), axis, spec, (1.0, 1.0, 1.0))


def test_predict_pastes_label_values_not_class_indices():
    # Issue 9, bug 1: trained on 3 and 7, given a scan where only 7 is painted, the painted voxels must come back 7.
    model = _untrained_model((0, 3, 7))
    image = np.random.default_rng(0).normal(size=(8, 32, 32)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[4, 10:20, 10:20] = 7
    result = api.predict(model, image, labels=labels, device="cpu")
    assert (result.labels[4, 10:20, 10:20] == 7).all()
    assert set(np.unique(result.labels[4])) <= {0, 7}


def test_label_values_above_16_bits_are_kept():
    model = _untrained_model((0, 70000))
    image = np.random.default_rng(1).normal(size=(8, 32, 32)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint32)
    labels[4, 8:16, 8:16] = 70000
    result = api.predict(model, image, labels=labels, device="cpu")
    assert result.labels.dtype == np.uint32
    assert (result.labels[4, 8:16, 8:16] == 70000).all()
    assert api.label_lookup((0, 255)).dtype == np.uint8 and api.label_lookup((0, 256)).dtype == np.uint16


def test_several_plane_painting_segments_as_well_as_one_plane(phantom):
    """2 axial + 1 coronal painted slices against 3 axial ones, same budget: every painted voxel comes back as
    painted, and the whole volume is segmented about as well."""
    from conftest import dice

    reference = phantom.reference
    axial = np.zeros_like(reference)
    for z in phantom.slices:
        axial[z] = reference[z]
    mixed = np.zeros_like(reference)
    for z in (phantom.slices[0], phantom.slices[-1]):
        mixed[z] = reference[z]
    row = reference.shape[1] // 2
    mixed[:, row] = reference[:, row]
    results = {}
    for name, labels in (("axial", axial), ("mixed", mixed)):
        result = api.segment(phantom.image, labels, (0.9, 0.9, 2.5), preset="fast", steps=60, device="cpu",
                             encoder="random")
        painted = np.zeros(reference.shape, bool)
        painted[list(phantom.slices[:1]) + list(phantom.slices[-1:])] = True
        if name == "mixed":
            painted[:, row] = True
            assert result.axis == 0
        assert (result.labels[painted] == reference[painted]).all()
        results[name] = np.mean([dice(result.labels, reference, v) for v in (1, 2)])
    assert results["mixed"] > 0.85
    assert results["mixed"] >= results["axial"] - 0.05
