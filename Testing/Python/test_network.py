"""The 2D U-Net: shapes, encoder strides and widths, gradient flow to every parameter, config checks."""
from __future__ import annotations

import pytest
import torch

from ContrastiveSegLib.networks import Encoder, NetworkConfig, SegmentationNet, build_network


# Instance norm needs more than one voxel per map, so the 1x1 bottleneck of a 16 x 16 slice is batch-norm only.
@pytest.mark.parametrize("norm, height, width", [("batch", 32, 48), ("instance", 32, 48), ("batch", 16, 16)])
def test_logits_have_input_size_and_class_channels(norm, height, width):
    net = build_network(NetworkConfig(in_channels=5, num_classes=4, norm=norm))
    assert isinstance(net, SegmentationNet)
    out = net(torch.randn(2, 5, height, width))
    assert out.shape == (2, 4, height, width)
    assert torch.isfinite(out).all()


def test_encoder_maps_strides_and_widths():
    features = (4, 8, 12, 16, 20)
    encoder = Encoder(in_channels=3, features=features)
    maps = encoder(torch.randn(2, 3, 64, 32))
    assert [tuple(m.shape) for m in maps] == [(2, f, 64 // 2**i, 32 // 2**i) for i, f in enumerate(features)]


def test_network_uses_its_config():
    config = NetworkConfig(in_channels=3, num_classes=2, features=(4, 8, 12, 16, 20), decoder_features=6)
    net = build_network(config)
    assert net.config is config and config.divisor == 16
    assert net.encoder.features == (4, 8, 12, 16, 20) and net.encoder.in_channels == 3
    assert net.decoder.head.in_channels == 6 and net.decoder.head.out_channels == 2
    # The encoder is a separate module: its weights load on their own into a fresh network.
    other = build_network(config)
    other.encoder.load_state_dict(net.encoder.state_dict(), strict=True)
    for a, b in zip(net.encoder.state_dict().values(), other.encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = build_network(NetworkConfig(in_channels=5, num_classes=3, features=(4, 8, 8, 8, 8), decoder_features=4))
    logits = net(torch.randn(2, 5, 32, 32))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, 32, 32))).backward()
    names = [name for name, _ in net.named_parameters()]
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("decoder.") for n in names)
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert float(parameter.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("kwargs, phrase", [
    ({"in_channels": 0, "num_classes": 2}, "in_channels >= 1"),
    ({"in_channels": 3, "num_classes": 1}, "num_classes >= 2"),
    ({"in_channels": 3, "num_classes": 2, "features": (8, 16, 32, 64)}, "5 widths"),
    ({"in_channels": 3, "num_classes": 2, "norm": "group"}, "norm must be one of"),
])
def test_config_validation_names_the_bad_value(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        NetworkConfig(**kwargs)


def test_the_decoder_without_monai_padding_equals_it_and_sizes_off_the_grid_are_refused():
    """The decoder skips MONAI's replicate pad (sizes always match on the divisor grid): the same logits as with it,
    and an input off the grid is one clear error instead of a shape mismatch deep in the decoder."""
    torch.manual_seed(0)
    net = build_network(NetworkConfig(in_channels=3, num_classes=2)).eval()
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        fast = net(x)
        for up in net.decoder.ups:
            up.is_pad = True
        padded = net(x)
    assert torch.equal(fast, padded)
    with pytest.raises(ValueError, match=r"multiples of 16, got \(40, 32\)"):
        net(torch.randn(1, 3, 40, 32))
