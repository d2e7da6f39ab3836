"""Self-paced weighting (Peng et al. NeurIPS 2021): weights, gamma schedule, multi-label loss, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ContrastiveSegLib.losses.contrastive import contrastive_pair_losses, label_positive_mask, masked_contrastive_loss
from ContrastiveSegLib.losses.selfpaced import (
    GammaSchedule,
    MetaLabelTerm,
    SelfPacedContrastiveLoss,
    self_paced_weights,
)

torch.set_num_threads(1)


def setup(seed=0, m=12):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(m, 5, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (m,), generator=g)
    return z, labels, label_positive_mask(labels)


def test_hand_computed_weights():
    losses = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 4.0], [5.0, 0.5, 0.0]])
    positive = torch.tensor([[False, True, True], [True, False, True], [True, True, False]])
    hard = self_paced_weights(losses, positive, gamma=2.0, mode="hard")
    assert hard.tolist() == [[0, 1, 0], [1, 0, 0], [0, 1, 0]]  # l <= gamma, diagonal never a positive
    linear = self_paced_weights(losses, positive, gamma=4.0, mode="linear")
    assert torch.allclose(linear, torch.tensor([[0, 0.75, 0.25], [0.5, 0, 0], [0, 0.875, 0]]))
    soft = self_paced_weights(losses, positive, gamma=4.0, mode="soft")
    assert torch.equal(soft, linear)
    normalised = self_paced_weights(losses, positive, gamma=4.0, mode="linear", normalize=True)
    mean = (0.75 + 0.25 + 0.5 + 0.875) / 6  # over the 6 positives, zeros included
    assert torch.allclose(normalised, linear / mean)


@pytest.mark.parametrize("gamma", [0.5, 2.5, 4.0, 100.0])
def test_weights_range_and_hard_is_binary(gamma):
    z, _, positive = setup(1)
    pairs = contrastive_pair_losses(z, 0.1)
    linear = self_paced_weights(pairs, positive, gamma, "linear")
    hard = self_paced_weights(pairs, positive, gamma, "hard")
    assert linear.min() >= 0 and linear.max() <= 1
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard[~positive], torch.zeros_like(hard[~positive]))
    assert torch.equal(hard.bool(), positive & (pairs <= gamma))
    assert not linear.requires_grad


def test_gamma_schedule_endpoints_and_shape():
    schedule = GammaSchedule(begin=5.0, end=60.0, total=100)
    assert schedule(0) == 5.0
    assert schedule(100) == 60.0
    assert schedule(25) == pytest.approx(5.0 + 55.0 * 0.5)  # sqrt(1/4)
    assert schedule(-3) == 5.0 and schedule(1e6) == 60.0  # clipped
    with pytest.raises(ValueError, match="total"):
        GammaSchedule(1.0, 2.0, 0)
    with pytest.raises(ValueError, match="gamma begin"):
        GammaSchedule(0.0, 2.0, 10)


def test_loss_is_weighted_sum_of_core_losses_with_fixed_weights():
    z, partition, _ = setup(2)
    volume = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])
    terms = [MetaLabelTerm("partition", 1.0, 3.0, 60.0), MetaLabelTerm("volume", 0.1, 2.0, 50.0)]
    loss_fn = SelfPacedContrastiveLoss(terms, mode="linear", temperature=0.1)
    assert loss_fn.set_progress(4, 16) == pytest.approx({"partition": 3.0 + 57.0 * 0.5, "volume": 2.0 + 48.0 * 0.5})
    out = loss_fn(z, {"partition": partition, "volume": volume})
    pairs = contrastive_pair_losses(z, 0.1)
    expected = 0.0
    for term, lab in ((terms[0], partition), (terms[1], volume)):
        pos = label_positive_mask(lab)
        w = self_paced_weights(pairs, pos, loss_fn.gammas[term.name], "linear")
        expected += term.weight * masked_contrastive_loss(z, pos, weights=w, temperature=0.1).item()
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.terms["volume_gamma"].item() == pytest.approx(26.0)
    assert 0 < out.terms["partition_weight"].item() <= 1


def test_gradient_treats_weights_as_constants():
    z, labels, positive = setup(3)
    z1 = z.clone().requires_grad_()
    loss_fn = SelfPacedContrastiveLoss([MetaLabelTerm("k", 1.0, 3.0, 3.0)], mode="linear", temperature=0.2)
    loss_fn(z1, {"k": labels}).loss.backward()
    w = self_paced_weights(contrastive_pair_losses(z, 0.2), positive, 3.0, "linear")
    z2 = z.clone().requires_grad_()
    masked_contrastive_loss(z2, positive, weights=w, temperature=0.2).backward()
    assert torch.allclose(z1.grad, z2.grad, rtol=1e-12, atol=1e-14)


def test_hard_mode_admits_only_easy_pairs_and_huge_gamma_is_supcon():
    z, labels, positive = setup(4)
    pairs = contrastive_pair_losses(z, 0.1)
    # gamma above every pair loss: all weights 1, the plain SupCon loss.
    big = SelfPacedContrastiveLoss([MetaLabelTerm("k", 1.0, 1e6, 1e6)], mode="hard", temperature=0.1)
    supcon = masked_contrastive_loss(z, positive, temperature=0.1)
    assert big(z, {"k": labels}).loss.item() == pytest.approx(supcon.item())
    # gamma below every pair loss: nothing admitted, loss exactly 0.
    tiny = SelfPacedContrastiveLoss([MetaLabelTerm("k", 1.0, 1e-3, 1e-3)], mode="hard", temperature=0.1)
    assert float(pairs[positive].min()) > 1e-3
    assert tiny(z, {"k": labels}).loss.item() == 0.0


def test_initial_pair_loss_is_log_m_minus_1_so_default_gamma_admits_pairs():
    # At initialisation the embeddings are nearly identical: l_ij = log(M - 1) < default gamma_begin (5).
    m = 60
    z = F.normalize(torch.ones(m, 4, dtype=torch.float64), dim=1)
    labels = torch.arange(m) % 6
    out = SelfPacedContrastiveLoss([MetaLabelTerm("k")], mode="linear")(z, {"k": labels})
    assert out.terms["k_weight"].item() == pytest.approx(1 - math.log(m - 1) / 5.0)


def test_errors_name_the_bad_input():
    z, labels, _ = setup(5)
    loss_fn = SelfPacedContrastiveLoss([MetaLabelTerm("partition")])
    with pytest.raises(ValueError, match="partition"):
        loss_fn(z, {"volume": labels})
    with pytest.raises(ValueError, match="'partition' must have shape"):
        loss_fn(z, {"partition": labels[:3]})
    with pytest.raises(ValueError, match="mode"):
        SelfPacedContrastiveLoss([MetaLabelTerm("a")], mode="exp")
    with pytest.raises(ValueError, match="unique"):
        SelfPacedContrastiveLoss([MetaLabelTerm("a"), MetaLabelTerm("a")])
    with pytest.raises(ValueError, match="gamma"):
        self_paced_weights(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool), gamma=0.0)
    with pytest.raises(ValueError, match="weight of meta-label 'a'"):
        MetaLabelTerm("a", weight=-1.0)
