"""One fine-tuning loop whose variants are plug-ins (issue 16): the supervised objective, IDEAL's bidirectional
consistency, and a self-training round (the same objective over pseudo-labels). A combination that cannot train
is refused in one line before any step; the ones the pipeline makes train end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ContrastiveSegLib import api, experimental
from ContrastiveSegLib.data.augment import BatchAugmenter
from ContrastiveSegLib.data.case import DEFAULT_SPEC
from ContrastiveSegLib.data.sampler import AnnotatedSliceSampler, UnannotatedSliceSampler
from ContrastiveSegLib.data.slices import SliceStack
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.annotations import IGNORE
from ContrastiveSegLib.networks import NetworkConfig, build_network
from ContrastiveSegLib.training import finetune as finetune_module
from ContrastiveSegLib.training.finetune import (BidirectionalConsistency, FinetuneConfig, SupervisedObjective,
                                                 train_segmentation)

QUICK = {"steps": 2, "batch_size": 2, "preset": "fast", "device": "cpu"}
CONFIG = FinetuneConfig(steps=2, batch_size=2, patch=32)


def _plugins(phantom, *kinds):
    """Plug-ins of the given kinds on the phantom's slices along z (painted: ``phantom.slices``)."""
    stack = SliceStack(phantom.image, 0, DEFAULT_SPEC)
    targets = np.full(phantom.reference.shape, IGNORE, np.uint8)
    for s in phantom.slices:
        targets[s] = phantom.reference[s]
    sampler = AnnotatedSliceSampler(stack, targets, list(phantom.slices), 32, divisor=16, seed=0)
    augmenter = BatchAugmenter(image_channels=2 * DEFAULT_SPEC.context + 1, seed=0)
    made = {SupervisedObjective: lambda: SupervisedObjective(sampler, augmenter),
            BidirectionalConsistency: lambda: BidirectionalConsistency(
                UnannotatedSliceSampler(stack, phantom.slices, 32, divisor=16, seed=0), augmenter)}
    return [made[kind]() for kind in kinds]


def _network(decoders: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(NetworkConfig(in_channels=DEFAULT_SPEC.in_channels, num_classes=3, decoders=decoders))


@pytest.mark.parametrize("decoders, kinds, phrase", [
    (1, (SupervisedObjective, BidirectionalConsistency),
     r"^bidirectional consistency needs a network with two decoders; this one has one$"),
    (2, (SupervisedObjective,), r"^a network with two decoders trains with bidirectional consistency; none was given$"),
    (2, (BidirectionalConsistency,), r"^fine-tuning takes one supervised objective, first among its plug-ins"),
    (2, (BidirectionalConsistency, SupervisedObjective), r"^fine-tuning takes one supervised objective, first"),
    (1, (SupervisedObjective, SupervisedObjective), r"^fine-tuning takes one supervised objective"),
    (2, (SupervisedObjective, BidirectionalConsistency, BidirectionalConsistency),
     r"^each fine-tuning plug-in may come once"),
])
def test_a_combination_that_cannot_train_is_refused_before_any_step(phantom, monkeypatch, decoders, kinds, phrase):
    steps: list[int] = []
    monkeypatch.setattr(finetune_module, "_training_step", lambda *args, **kwargs: steps.append(1) or 0.0)
    network = _network(decoders)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(InputError, match=phrase):
        train_segmentation(network, _plugins(phantom, *kinds), CONFIG, torch.device("cpu"))
    assert steps == []  # refused up front
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key])


def test_the_pipeline_refuses_consistency_on_a_one_decoder_refinement_before_training(phantom, monkeypatch):
    # Through the API the refinement keeps its model's decoders and refuses --consistency (plan_training); a
    # direct call of the loop with a mismatched network is refused by the loop itself (above).
    model = api.finetune(phantom.image, phantom.sparse, **{**QUICK, "steps": 1})
    called: list[int] = []
    monkeypatch.setattr(api, "train_segmentation", lambda *args, **kwargs: called.append(1))
    with pytest.raises(InputError, match="refin"):
        api.segment(phantom.image, phantom.sparse, init_model=model, consistency="bidirectional", **QUICK)
    assert called == []


def test_both_plugins_train_both_decoders(phantom):
    network = _network(2)
    fresh = {name: getattr(network, name).head.weight.detach().clone() for name in ("decoder", "decoder2")}
    losses = train_segmentation(network, _plugins(phantom, SupervisedObjective, BidirectionalConsistency), CONFIG,
                                torch.device("cpu"))
    assert len(losses) == 2 and all(np.isfinite(losses))
    for name, weight in fresh.items():
        assert not torch.allclose(getattr(network, name).head.weight, weight)


def test_bidirectional_self_training_runs_the_same_loop_with_pseudo_labels(phantom, monkeypatch):
    # Bidirectional + self-training end to end (2 steps each): both stages go through train_segmentation with the
    # same plug-in kinds; the self-training round's supervised objective samples pseudo-labelled unpainted slices.
    stages: list[tuple] = []
    original = finetune_module.train_segmentation

    def spy(model, plugins, config, device, **kwargs):
        sampler = plugins[0].sampler
        stages.append(([type(p) for p in plugins], config.steps, len(sampler.slice_indices)))
        return original(model, plugins, config, device, **kwargs)

    monkeypatch.setattr(api, "train_segmentation", spy)
    result = experimental.segment(phantom.image, phantom.sparse, consistency="bidirectional", self_train=2,
                                  **QUICK)
    kinds = [SupervisedObjective, BidirectionalConsistency]
    painted = len(phantom.slices)
    assert [s[:2] for s in stages] == [(kinds, 2), (kinds, 2)]
    assert stages[0][2] == painted and stages[1][2] > painted  # pseudo-labelled slices joined the painted ones
    assert result.model.network.config.decoders == 2
    assert result.labels.shape == phantom.image.shape
    for s in phantom.slices:
        np.testing.assert_array_equal(result.labels[s], phantom.sparse[s])


def test_self_training_targets_keep_the_painting_and_add_only_confident_unpainted_voxels(phantom):
    model = api.finetune(phantom.image, phantom.sparse, **{**QUICK, "steps": 4})
    case = api.training_case(phantom.image, api.read_annotation(phantom.image, phantom.sparse, 0), (1, 1, 1))
    pseudo, slices = api.self_training_targets(model, case, torch.device("cpu"))
    np.testing.assert_array_equal(pseudo[list(phantom.slices)], case.targets[list(phantom.slices)])
    added = sorted(set(slices.tolist()) - set(phantom.slices))
    assert added and all((case.targets[s] == IGNORE).all() for s in added)
    untouched = sorted(set(range(len(pseudo))) - set(slices.tolist()))
    assert (pseudo[untouched] == IGNORE).all()
