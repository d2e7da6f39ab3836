"""BatchAugmenter: repeatable per seed; image, coordinate channels and labels move together; voxels from outside the
crop are unknown (255), never background; no-op when every probability is zero."""
from __future__ import annotations

import torch

from ContrastiveSegLib.data.augment import AugmentConfig, BatchAugmenter
from ContrastiveSegLib.data.slices import InputSpec, SliceStack
from ContrastiveSegLib.io.annotations import IGNORE

H, W = 40, 48
GEOMETRY_ONLY = AugmentConfig(affine_probability=1.0, max_rotation_deg=30.0, max_scale=0.2,
                              intensity_probability=0.0, noise_probability=0.0)


def _coordinates(n: int) -> torch.Tensor:
    """(n, 2, H, W) the (y, x) coordinate channels exactly as the 2.5D inputs carry them."""
    stack = SliceStack(torch.zeros(1, H, W).numpy(), 0, InputSpec(context=0, coordinates=True))
    return stack.inputs([0] * n)[:, 1:]


def _batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.cat([torch.randn(n, 1, H, W, generator=generator), _coordinates(n)], dim=1)
    targets = torch.randint(0, 3, (n, 1, H, W), generator=generator)
    targets[:, :, :5] = IGNORE
    return inputs, targets


def test_same_seed_same_result_other_seed_other_result():
    inputs, targets = _batch()
    a = BatchAugmenter(image_channels=1, seed=3)(inputs, targets)
    b = BatchAugmenter(image_channels=1, seed=3)(inputs, targets)
    c = BatchAugmenter(image_channels=1, seed=4)(inputs, targets)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # One augmenter draws new parameters each call.
    augmenter = BatchAugmenter(image_channels=1, seed=3)
    first, second = augmenter(inputs, targets), augmenter(inputs, targets)
    assert not torch.equal(first[0], second[0])


def test_identity_when_every_probability_is_zero():
    inputs, targets = _batch()
    config = AugmentConfig(affine_probability=0.0, intensity_probability=0.0, noise_probability=0.0)
    out, warped = BatchAugmenter(image_channels=1, seed=0, config=config)(inputs, targets)
    torch.testing.assert_close(out, inputs, rtol=1e-5, atol=1e-5)  # identity resampling: float rounding only
    assert torch.equal(warped, targets)
    assert warped.dtype == torch.int64


def _interior(valid: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood was sampled entirely from inside the crop."""
    return -torch.nn.functional.max_pool2d(-valid, 3, stride=1, padding=1) > 0.999


def test_coordinate_channels_move_with_the_image():
    n = 8
    coords = _coordinates(n)
    # The image is a linear function of position; bilinear resampling keeps it exactly linear, so after the warp each
    # pixel's intensity must still equal the same function of the coordinates it carries.
    image = 0.7 * coords[:, :1] - 1.9 * coords[:, 1:] + 0.25
    ones = torch.ones(n, 1, H, W)  # a "coordinate-like" channel that shows where the warp read inside the crop
    inputs = torch.cat([image, coords, ones], dim=1)
    targets = torch.zeros(n, 1, H, W, dtype=torch.long)
    out, warped = BatchAugmenter(image_channels=1, seed=1, config=GEOMETRY_ONLY)(inputs, targets)
    inside = _interior(out[:, 3:4])
    assert inside.float().mean() > 0.3
    expected = 0.7 * out[:, 1:2] - 1.9 * out[:, 2:3] + 0.25
    torch.testing.assert_close(out[:, :1][inside], expected[inside], rtol=0, atol=1e-4)
    # The warp really moved things: coordinates differ from the unwarped ones by more than a pixel somewhere.
    assert (out[:, 1:3] - coords).abs().amax(dim=(1, 2, 3)).min() > 2 / (W - 1)


def test_a_marked_pixel_keeps_its_coordinates_and_its_label():
    n = 8
    coords = _coordinates(n)
    y0, x0 = 14, 30
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    blob = torch.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * 1.5**2)).expand(n, 1, H, W)
    targets = torch.zeros(n, 1, H, W, dtype=torch.long)
    targets[:, :, y0 - 3:y0 + 4, x0 - 3:x0 + 4] = 2
    out, warped = BatchAugmenter(image_channels=1, seed=2, config=GEOMETRY_ONLY)(torch.cat([blob, coords], 1),
                                                                                  targets)
    weights = out[:, 0].clamp(min=0)
    weights = weights / weights.sum(dim=(1, 2), keepdim=True)
    # Coordinates carried by the marker after the warp = the marker's coordinates before it.
    carried_y = (weights * out[:, 1]).sum(dim=(1, 2))
    carried_x = (weights * out[:, 2]).sum(dim=(1, 2))
    pixel = 2 / (W - 1)
    torch.testing.assert_close(carried_y, coords[0, 0, y0, x0].expand(n), rtol=0, atol=pixel)
    torch.testing.assert_close(carried_x, coords[0, 1, y0, x0].expand(n), rtol=0, atol=pixel)
    # The labelled square went where the marker went: the warped centroid of the label = the warped marker position.
    for i in range(n):
        ys, xs = torch.nonzero(warped[i, 0] == 2, as_tuple=True)
        centre_y = float((weights[i] * yy).sum())
        centre_x = float((weights[i] * xx).sum())
        assert abs(ys.float().mean() - centre_y) < 1.0 and abs(xs.float().mean() - centre_x) < 1.0
        # and every warped label-2 pixel carries coordinates from inside the original square (plus one pixel)
        cy, cx = out[i, 1][warped[i, 0] == 2], out[i, 2][warped[i, 0] == 2]
        assert (cy >= coords[0, 0, y0 - 4, 0]).all() and (cy <= coords[0, 0, y0 + 4, 0]).all()
        assert (cx >= coords[0, 1, 0, x0 - 4]).all() and (cx <= coords[0, 1, 0, x0 + 4]).all()


def test_labels_from_outside_the_crop_become_ignore_never_background():
    n = 16
    ones = torch.ones(n, 1, H, W)
    inputs = torch.cat([torch.zeros(n, 1, H, W), ones], dim=1)  # channel 1 marks the inside of the crop
    targets = torch.zeros(n, 1, H, W, dtype=torch.long)  # all background
    config = AugmentConfig(affine_probability=1.0, max_rotation_deg=40.0, max_scale=0.3)
    out, warped = BatchAugmenter(image_channels=1, seed=0, config=config)(inputs, targets)
    assert set(torch.unique(warped).tolist()) == {0, IGNORE}
    inside = out[:, 1:2]
    assert (warped[inside > 0.999] == 0).all()  # read entirely from inside: background stays background
    assert (warped[inside < 0.001] == IGNORE).all()  # read entirely from outside: unknown, not background
    assert int((inside < 0.001).sum()) > 0.02 * inside.numel()  # the warp did read from outside


def test_intensity_jitter_touches_image_channels_only():
    inputs, targets = _batch(n=32)
    config = AugmentConfig(affine_probability=0.0, intensity_probability=1.0, noise_probability=1.0)
    out, warped = BatchAugmenter(image_channels=1, seed=0, config=config)(inputs, targets)
    torch.testing.assert_close(out[:, 1:], inputs[:, 1:], rtol=0, atol=1e-5)
    assert torch.equal(warped, targets)
    assert (out[:, :1] - inputs[:, :1]).abs().mean() > 0.01


def test_shared_warp_geometry_flip_shift_and_outside_ids():
    """data/geometry's convention: theta maps output (x, y) to source (x, y); ids read from outside get ``outside``."""
    from ContrastiveSegLib.data.geometry import affine_theta, warp, warp_ids

    image = torch.arange(H * W, dtype=torch.float32).reshape(1, 1, H, W)
    zero, one = torch.zeros(1), torch.ones(1)
    flipped, valid = warp(image, affine_theta(zero, one, one, flip=-one))
    torch.testing.assert_close(flipped, image.flip(-1), rtol=0, atol=1e-3)  # bilinear at pixel centres
    assert valid.all()
    # Source x = output x + 4 pixels (normalised: 2 / W per pixel): the map moves 4 pixels left.
    shift = torch.tensor([[4 * 2 / W, 0.0]])
    moved, valid = warp(image, affine_theta(zero, one, one, shift=shift), mode="nearest", padding_mode="zeros")
    assert torch.equal(moved[..., :W - 4], image[..., 4:]) and not valid[0, :, W - 4:].any()
    ids = torch.randint(0, 5, (1, H, W))
    out = warp_ids(ids, affine_theta(zero, one, one, shift=shift), outside=-7)
    assert torch.equal(out[:, :, :W - 4], ids[:, :, 4:]) and (out[:, :, W - 4:] == -7).all()


def test_padding_keeps_the_origin_and_reaches_the_divisor():
    from ContrastiveSegLib.data.slices import coordinate_channels, coordinate_window, pad_end, pad_to_divisor

    x = torch.randn(2, 3, 17, 30)
    padded = pad_to_divisor(x, 16)
    assert padded.shape == (2, 3, 32, 32) and torch.equal(padded[..., :17, :30], x)
    assert torch.equal(padded[..., 17:, :30], x[..., 16:17, :].expand(-1, -1, 15, -1))  # last row repeated
    assert pad_to_divisor(padded, 16) is padded  # already divisible: untouched
    labels = torch.zeros(17, 30, dtype=torch.int64)
    out = pad_end(labels, 32, 16, value=IGNORE)
    assert out.shape == (32, 30) and out.dtype == torch.int64 and (out[17:] == IGNORE).all() and (out[:17] == 0).all()
    # The stream's crop coordinates are the slice's coordinate channels, continued beyond the slice.
    window = coordinate_window(17, 30, 0, 0, 32)
    torch.testing.assert_close(window[:, :17, :30], coordinate_channels(17, 30)[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(window[0, 31, 0], torch.tensor(1.0 + 15 * 2 / 16))
