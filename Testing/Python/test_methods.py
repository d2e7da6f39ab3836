"""Pretraining methods and their views: one step of each method, batch-key checks, the registry, view geometry."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ContrastiveSegLib.data.geometry import warp_ids
from ContrastiveSegLib.data.views import TwoViews, ViewConfig, align_to_first
from ContrastiveSegLib.io.annotations import IGNORE
from ContrastiveSegLib.methods import METHODS, get_method, method_parameters
from ContrastiveSegLib.methods.selfpaced import partition_labels

torch.set_num_threads(1)
FEATURES = (8, 8, 16, 16, 32)


def smooth_images(b: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(b, 5, size, size): 3 smooth intensity channels + 2 coordinate channels."""
    g = torch.Generator().manual_seed(seed)
    intensity = F.interpolate(torch.randn(b, 3, 6, 6, generator=g), size=(size, size), mode="bicubic",
                              align_corners=False)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.cat([intensity, torch.stack([ys, xs])[None].expand(b, -1, -1, -1)], dim=1)


def stream_batch(b: int = 4, size: int = 32) -> dict[str, torch.Tensor]:
    """What SliceStream.batch gives: 2 volumes x 2 slices, 8 x 8 block superpixels, 2 labelled classes."""
    blocks = (torch.arange(size)[:, None] // 8) * (size // 8) + torch.arange(size)[None, :] // 8
    labels = torch.full((b, size, size), IGNORE, dtype=torch.int64)
    labels[:, 4:28, 4:28] = 0
    labels[:, 10:20, 10:20] = 1
    return {"image": smooth_images(b, size), "position": torch.tensor([0.1, 0.6, 0.3, 0.9])[:b],
            "volume": torch.tensor([0, 0, 1, 1])[:b], "tag": torch.tensor([-1, -1, 0, 0])[:b],
            "superpixels": blocks.expand(b, -1, -1).clone(), "labels": labels}


@pytest.fixture(scope="module")
def views_batch() -> dict[str, torch.Tensor]:
    return TwoViews(image_channels=3, seed=0)(stream_batch())


@pytest.mark.parametrize("name", list(METHODS))
def test_one_step_gives_finite_loss_and_gradients_everywhere(name, views_batch):
    torch.manual_seed(0)
    method = get_method(name, features=FEATURES)
    output = method(views_batch)
    assert output.loss.ndim == 0 and math.isfinite(output.loss.item())
    assert all(not t.requires_grad and math.isfinite(float(t)) for t in output.terms.values())
    output.loss.backward()
    for key, parameter in method.named_parameters():
        assert parameter.grad is not None, f"{name}: no gradient for {key}"
        assert torch.isfinite(parameter.grad).all(), f"{name}: non-finite gradient for {key}"
    encoder_grad = sum(float(p.grad.abs().sum()) for p in method.encoder.parameters())
    if method.trains:
        assert output.loss.item() > 0 and encoder_grad > 0  # the loss really reaches the encoder
    else:
        assert output.loss.item() == 0.0 and encoder_grad == 0.0


@pytest.mark.parametrize("name", [n for n in METHODS if n != "random"])
def test_one_step_under_bf16_autocast(name, views_batch):
    # The CUDA path runs under bf16 autocast; CPU autocast exercises the same dtype mixing (bf16 features, float32
    # grids and contrastive logits) without a GPU.
    torch.manual_seed(0)
    method = get_method(name, features=FEATURES)
    reference = method(views_batch).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = method(views_batch)
    assert output.loss.dtype == torch.float32
    assert output.loss.item() == pytest.approx(reference, rel=0.1)
    output.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters())


def test_terms_of_each_method(views_batch):
    torch.manual_seed(0)
    terms = {name: get_method(name, features=FEATURES)(views_batch).terms for name in METHODS}
    assert set(terms["lrc"]) == {"identity", "region"}
    assert set(terms["mixcl"]) == {"identity", "label", "reconstruction"}
    # Two labelled classes in the batch: MixCL's label term is active (not the "no label" exact zero).
    assert terms["mixcl"]["label"] > 0
    assert 0 < terms["ideal"]["overlap"] <= 1
    # The self-paced terms start at gamma_begin; batch of 4 crops -> M = 8 embeddings.
    assert terms["selfpaced"]["partition_gamma"] == pytest.approx(5.0)
    assert terms["selfpaced"]["volume_gamma"] == pytest.approx(3.5)
    assert 0 <= terms["selfpaced"]["partition_weight"] <= 1


@pytest.mark.parametrize("name", [n for n in METHODS if METHODS[n].required_keys])
def test_missing_batch_key_is_named(name, views_batch):
    method = get_method(name, features=FEATURES)
    for key in method.required_keys:
        batch = {k: v for k, v in views_batch.items() if k != key}
        with pytest.raises(ValueError, match=f"'{key}'"):
            method(batch)


def test_unknown_method_lists_known_names_and_the_nearest():
    with pytest.raises(ValueError) as error:
        get_method("simclrr")
    message = str(error.value)
    assert all(name in message for name in METHODS)
    assert "did you mean 'simclr'" in message


def test_unknown_parameter_lists_the_method_parameters():
    with pytest.raises(ValueError, match="no parameter temprature .*temperature"):
        get_method("simclr", features=FEATURES, temprature=0.2)
    assert method_parameters("simclr") == {"temperature": 0.1, "hidden_channels": 256, "out_channels": 128}
    assert get_method("simclr", features=FEATURES, temperature=0.2).params["temperature"] == 0.2


def test_encoder_state_dict_is_the_encoder_and_nothing_else():
    method = get_method("lrc", features=FEATURES)
    state = method.encoder_state_dict()
    assert set(state) == set(method.encoder.state_dict())
    assert not any(k.startswith(("global_head", "pyramid", "dense_head")) for k in state)


def test_partition_labels_hand_computed():
    position = torch.tensor([0.0, 0.24, 0.25, 0.5, 0.99, 1.0])
    assert partition_labels(position, 4).tolist() == [0, 0, 1, 2, 3, 3]
    assert partition_labels(position, 1).tolist() == [0] * 6


def test_selfpaced_gamma_follows_the_schedule():
    method = get_method("selfpaced", features=FEATURES, partition_gamma=(4.0, 40.0))
    gammas = method.loss.gammas
    method.on_epoch_start(0, 100)
    assert gammas["partition"] == pytest.approx(4.0)
    method.on_epoch_start(25, 100)
    assert gammas["partition"] == pytest.approx(4.0 + 36.0 * 0.5)  # sqrt(1/4) of the way
    method.on_epoch_start(100, 100)
    assert gammas["partition"] == pytest.approx(40.0)
    assert gammas["volume"] == pytest.approx(50.0)


def test_selfpaced_zero_weight_drops_the_term(views_batch):
    method = get_method("selfpaced", features=FEATURES, volume_weight=0.0, tag_weight=0.0)
    assert set(method(views_batch).terms) == {"partition", "partition_weight", "partition_gamma"}
    with pytest.raises(ValueError, match="every meta-label weight is 0"):
        get_method("selfpaced", features=FEATURES, partition_weight=0, volume_weight=0, tag_weight=0)


# ----------------------------------------------------------------------------------------------- views
NO_INTENSITY = ViewConfig(contrast=(1.0, 1.0), brightness=0.0, noise_probability=0.0)


def test_aligned_second_view_matches_the_first():
    batch = {"image": smooth_images(4, 64, seed=3)}
    views = TwoViews(3, NO_INTENSITY, seed=1)(batch)
    for pool in (1, 2):  # full resolution and a stride-2 "feature map"
        f1, f2 = F.avg_pool2d(views["view1"], pool), F.avg_pool2d(views["view2"], pool)
        aligned, valid = align_to_first(f2, views["theta1"], views["theta2"])
        error = (aligned - f1).abs().permute(0, 2, 3, 1)[valid]
        assert valid.float().mean() > 0.5
        assert error.mean() < 0.03 * pool and torch.quantile(error.flatten(), 0.95) < 0.1 * pool
        unaligned = (f2 - f1).abs().permute(0, 2, 3, 1)[valid]
        assert unaligned.mean() > 5 * error.mean()  # the views really differ spatially


def test_superpixel_ids_follow_their_tissue():
    batch = stream_batch()
    views = TwoViews(3, seed=2)(batch)
    size = batch["image"].shape[-1]
    for v in (1, 2):
        # The crop point each output pixel shows, in pixels: (grid + 1) * size / 2 - 0.5 (align_corners=False).
        grid = F.affine_grid(views[f"theta{v}"], [4, 1, size, size], align_corners=False)
        pixel = ((grid + 1) * size / 2 - 0.5).round().long().clamp(0, size - 1)
        expected = batch["superpixels"][0][pixel[..., 1], pixel[..., 0]]
        inside = views[f"valid{v}"]
        agree = (views[f"superpixels{v}"] == expected)[inside].float().mean()
        assert agree > 0.97  # rounding differs from nearest sampling only on pixel-boundary ties
        assert (views[f"superpixels{v}"][~inside] >= -1).all()
    assert set(views["labels1"].unique().tolist()) <= {0, 1, IGNORE}


def test_intensity_only_views_and_hand_computed_jitter():
    batch = {"image": smooth_images(2, 32)}
    config = ViewConfig(spatial=False, contrast=(2.0, 2.0), brightness=0.0, noise_probability=0.0)
    views = TwoViews(3, config)(batch)
    assert torch.equal(views["theta1"], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, -1, -1))
    torch.testing.assert_close(views["clean1"], batch["image"][:, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(views["view1"][:, :3], 2 * batch["image"][:, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(views["view1"][:, 3:], batch["image"][:, 3:], atol=1e-5, rtol=0)  # coordinates kept


def test_warp_ids_marks_outside():
    ids = torch.arange(16).reshape(1, 4, 4)
    shift = torch.tensor([[[1.0, 0, 1.0], [0, 1.0, 0]]])  # sample one half-width to the right
    out = warp_ids(ids, shift, outside=IGNORE)
    assert out[0, :, :2].tolist() == ids[0, :, 2:].tolist()
    assert (out[0, :, 2:] == IGNORE).all()


def test_views_are_repeatable_with_a_seed():
    batch = {"image": smooth_images(2, 32)}
    a, b = TwoViews(3, seed=5)(batch), TwoViews(3, seed=5)(batch)
    assert torch.equal(a["view2"], b["view2"]) and torch.equal(a["theta1"], b["theta1"])
