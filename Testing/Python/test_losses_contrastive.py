"""The shared contrastive core: closed forms, a NumPy brute force, gradients, masks and argument checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ContrastiveSegLib.losses.contrastive import (
    MaskedContrastiveLoss,
    block_ignore_mask,
    contrastive_pair_losses,
    identity_positive_mask,
    instance_ids,
    label_positive_mask,
    masked_contrastive_loss,
    nt_xent_loss,
    same_group_ignore_mask,
)

torch.set_num_threads(1)


def brute_force(z, positive, ignore, weights, tau):
    """The loss of methods.md written as plain loops over anchors and pairs (float64)."""
    z = np.asarray(z, dtype=np.float64)
    m = z.shape[0]
    s = z @ z.T
    per_anchor = []
    for i in range(m):
        denominator = [a for a in range(m) if a != i and not ignore[i, a]]
        positives = [j for j in range(m) if positive[i, j]]
        if not positives:
            continue
        norm = sum(math.exp(s[i, a] / tau) for a in denominator)
        pair = [-math.log(math.exp(s[i, j] / tau) / norm) for j in positives]
        w = [1.0 if weights is None else weights[i, j] for j in positives]
        per_anchor.append(sum(wj * lj for wj, lj in zip(w, pair)) / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def random_unit(m, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(m, d, generator=g, dtype=dtype), dim=1)


# ------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("n,tau", [(1, 0.1), (2, 0.5), (4, 0.07), (8, 1.0)])
def test_identical_embeddings_give_log_2n_minus_1(n, tau):
    z = F.normalize(torch.ones(2 * n, 5, dtype=torch.float64), dim=1)
    loss = masked_contrastive_loss(z, identity_positive_mask(n), temperature=tau)
    assert loss.item() == pytest.approx(math.log(2 * n - 1), abs=1e-12)


@pytest.mark.parametrize("n,tau", [(2, 0.1), (3, 0.5), (5, 1.0)])
def test_orthogonal_images_identical_views(n, tau):
    # Image k is the unit vector e_k in both views: s = 1 with its positive, 0 with the 2(N - 1) others.
    eye = torch.eye(n, dtype=torch.float64)
    z = torch.cat([eye, eye])
    expected = math.log(1 + 2 * (n - 1) * math.exp(-1 / tau))
    assert nt_xent_loss(eye, eye, tau).item() == pytest.approx(expected, rel=1e-12)
    loss = masked_contrastive_loss(z, identity_positive_mask(n), temperature=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_all_pairwise_orthogonal_gives_log_2n_minus_1():
    z = torch.eye(6, dtype=torch.float64)  # 3 images x 2 views, every pair orthogonal: s = 0 everywhere
    assert masked_contrastive_loss(z, identity_positive_mask(3), temperature=0.3).item() == pytest.approx(math.log(5))


def test_ignore_shrinks_denominator_exactly():
    # Identical embeddings; G^D- with 3 partitions x 2 volumes x 2 views: each anchor ignores the 2 views
    # of the same-partition slice of the other volume, so the denominator holds 11 - 2 = 9 terms.
    partitions = torch.tensor([0, 1, 2, 0, 1, 2]).repeat(2)
    positive = identity_positive_mask(6)
    ignore = same_group_ignore_mask(partitions, positive)
    assert ignore.sum(dim=1).tolist() == [2] * 12
    z = F.normalize(torch.ones(12, 3, dtype=torch.float64), dim=1)
    loss = masked_contrastive_loss(z, positive, ignore, temperature=0.1)
    assert loss.item() == pytest.approx(math.log(9))


def test_constant_weights_scale_the_loss():
    z = random_unit(8, 4, 0)
    positive = identity_positive_mask(4)
    base = masked_contrastive_loss(z, positive, temperature=0.2)
    quarter = torch.full((8, 8), 0.25, dtype=torch.float64)
    scaled = masked_contrastive_loss(z, positive, weights=quarter, temperature=0.2)
    assert scaled.item() == pytest.approx(0.25 * base.item(), rel=1e-12)


def test_supcon_identical_embeddings():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # sample 5 has no positive: left out of the mean
    z = F.normalize(torch.ones(6, 2, dtype=torch.float64), dim=1)
    per_anchor = masked_contrastive_loss(z, label_positive_mask(labels), temperature=0.1, reduction="none")
    assert per_anchor.tolist() == pytest.approx([math.log(5)] * 5 + [0.0])
    assert masked_contrastive_loss(z, label_positive_mask(labels), temperature=0.1).item() == pytest.approx(math.log(5))
    total = masked_contrastive_loss(z, label_positive_mask(labels), temperature=0.1, reduction="sum")
    assert total.item() == pytest.approx(5 * math.log(5))


# -------------------------------------------------------------------------------------------- brute force
@pytest.mark.parametrize("seed", range(4))
def test_matches_numpy_brute_force_with_ignore_and_weights(seed):
    g = torch.Generator().manual_seed(100 + seed)
    m, tau = 10, [0.07, 0.1, 0.5, 1.0][seed]
    z = random_unit(m, 6, seed)
    labels = torch.randint(0, 3, (m,), generator=g)
    positive = label_positive_mask(labels)
    ignore = (torch.rand(m, m, generator=g) < 0.3) & ~positive
    ignore.fill_diagonal_(False)
    weights = torch.rand(m, m, generator=g, dtype=torch.float64)
    loss, pairs = masked_contrastive_loss(z, positive, ignore, weights, tau, return_pair_losses=True)
    expected = brute_force(z.numpy(), positive.numpy(), ignore.numpy(), weights.numpy(), tau)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    # The pair losses before reduction, entry by entry, and 0 outside the denominator sets.
    s = (z @ z.T).numpy() / tau
    for i in range(m):
        d = [a for a in range(m) if a != i and not ignore[i, a]]
        lse = np.log(np.exp(s[i, d]).sum())
        for j in range(m):
            want = lse - s[i, j] if j in d else 0.0
            assert pairs[i, j].item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_module_equals_function_and_repr():
    z = random_unit(6, 3, 1)
    pos = identity_positive_mask(3)
    module = MaskedContrastiveLoss(temperature=0.2)
    assert module(z, pos).item() == masked_contrastive_loss(z, pos, temperature=0.2).item()
    assert "temperature=0.2" in repr(module)


# ------------------------------------------------------------------------------------ stability, gradients
def test_small_temperature_is_stable_and_half_inputs_work():
    # s / tau up to 200: exp overflows float32 (and float16) unless the log-sum-exp is stabilised.
    z = random_unit(8, 4, 2)
    pos = identity_positive_mask(4)
    ref = brute_force(z.numpy(), pos.numpy(), np.zeros((8, 8), bool), None, 0.005)
    loss32 = masked_contrastive_loss(z.float(), pos, temperature=0.005)
    assert torch.isfinite(loss32) and loss32.item() == pytest.approx(ref, rel=1e-4)
    loss16 = masked_contrastive_loss(z.half(), pos, temperature=0.005)
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    positive = label_positive_mask(labels)
    ignore = torch.zeros(6, 6, dtype=torch.bool)
    ignore[0, 4] = ignore[4, 0] = ignore[2, 5] = True
    weights = torch.rand(6, 6, dtype=torch.float64, generator=g)

    def f(x):
        return masked_contrastive_loss(F.normalize(x, dim=1), positive, ignore, weights, temperature=0.3)

    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-6)


def test_no_positive_anywhere_gives_attached_zero_and_finite_grads():
    z = random_unit(4, 3, 4).requires_grad_()
    loss = masked_contrastive_loss(z, torch.zeros(4, 4, dtype=torch.bool), temperature=0.1)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_anchor_with_empty_denominator_has_no_nan_gradient():
    z = random_unit(4, 3, 5).requires_grad_()
    positive = torch.zeros(4, 4, dtype=torch.bool)
    positive[0, 1] = positive[1, 0] = True
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[3, :3] = True  # anchor 3 sees nobody
    loss = masked_contrastive_loss(z, positive, ignore, temperature=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    pairs = contrastive_pair_losses(z.detach(), 0.1, ignore)
    assert torch.equal(pairs[3], torch.zeros(4, dtype=pairs.dtype))


# ------------------------------------------------------------------------------------------------- masks
def test_identity_mask_layout():
    mask = identity_positive_mask(3, 2)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for n in range(3):
        expected[n, n + 3] = expected[n + 3, n] = True
    assert torch.equal(mask, expected)
    assert instance_ids(2, 3).tolist() == [0, 1, 0, 1, 0, 1]
    assert identity_positive_mask(2, 3).sum(dim=1).tolist() == [2] * 6


def test_label_mask_unknown_labels_and_block_mask():
    mask = label_positive_mask(torch.tensor([1, 1, -1, -1, 2]))
    assert mask.nonzero().tolist() == [[0, 1], [1, 0]]
    block = block_ignore_mask(torch.tensor([0, 0, 1]))
    assert block.tolist() == [[False, False, True], [False, False, True], [True, True, False]]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(z=torch.ones(4)), "z must have shape"),
        (dict(positive_mask=torch.zeros(3, 3, dtype=torch.bool)), "positive_mask must have shape"),
        (dict(ignore_mask=torch.zeros(4, 5, dtype=torch.bool)), "ignore_mask must have shape"),
        (dict(weights=torch.ones(2, 2)), "weights must have shape"),
        (dict(weights=-torch.ones(4, 4)), "weights must be >= 0"),
        (dict(positive_mask=torch.eye(4, dtype=torch.bool)), "diagonal"),
        (dict(ignore_mask=identity_positive_mask(2)), "overlap"),
        (dict(temperature=0.0), "temperature"),
        (dict(reduction="max"), "reduction"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    args = dict(z=random_unit(4, 3, 0, torch.float32), positive_mask=identity_positive_mask(2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        masked_contrastive_loss(**args)


def test_label_and_view_errors():
    with pytest.raises(ValueError, match="integers"):
        label_positive_mask(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        label_positive_mask(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.ones(2, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="temperature"):
        MaskedContrastiveLoss(temperature=-1)
