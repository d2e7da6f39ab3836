"""A fine-tuned segmentation model: the network plus everything needed to use it on the next scan."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.networks import NetworkConfig, SegmentationNet, build_network
from ContrastiveSegLib.options import RANDOM_INIT
from ContrastiveSegLib.zoo.weights import check_tensors, read_tensors, read_weights_header, save_weights


@dataclass
class TrainedModel:
    """A segmentation network with its meaning.

    Attributes:
        network: the fine-tuned network (class ``c`` stands for ``label_values[c]``).
        label_values: the user's label values, background (0) first.
        axis: the annotation axis of the (z, y, x) array the model was trained along.
        spec: how slices become input channels.
        spacing: voxel size (x, y, z) of the training scan, for a warning when the next scan differs a lot.
        encoder: name of the encoder fine-tuning started from (:data:`~ContrastiveSegLib.options.RANDOM_INIT` for random initialisation).
    """

    network: SegmentationNet
    label_values: tuple[int, ...]
    axis: int
    spec: InputSpec
    spacing: tuple[float, float, float]
    encoder: str = RANDOM_INIT

    def header(self) -> dict:
        config = self.network.config
        return {
            "kind": "model",
            "network": {"in_channels": config.in_channels, "num_classes": config.num_classes,
                        "features": list(config.features), "decoder_features": config.decoder_features,
                        "norm": config.norm, "decoders": config.decoders},
            "input": self.spec.to_dict(),
            "label_values": list(self.label_values),
            "axis": self.axis,
            "spacing": list(self.spacing),
            "encoder": self.encoder,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as safetensors with a JSON header (atomic)."""
        save_weights(path, self.network.state_dict(), self.header())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainedModel":
        """Read a model written by :meth:`save`; InputError (one line) when the file is not a usable model.

        The header is checked field by field and the network it declares is compared, shape by shape, with the
        tensors in the file before the network is built: a crafted header cannot make this allocate more than
        the file holds.
        """
        header, found = read_weights_header(path, kind="model", what="model")
        net = header["network"]  # every field below was checked by read_weights_header
        config = NetworkConfig(in_channels=net["in_channels"], num_classes=net["num_classes"],
                               features=tuple(net["features"]), decoder_features=net["decoder_features"],
                               norm=net.get("norm", "batch"), decoders=net.get("decoders", 1))
        spec = InputSpec.from_dict(header["input"])
        with torch.device("meta"):  # shapes and dtypes only, no memory
            expected = build_network(config).state_dict()
        check_tensors(f"model {path}", found, expected)
        tensors = read_tensors(path, what="model")
        network = build_network(config)
        try:
            network.load_state_dict(tensors, strict=True)
        except RuntimeError as error:  # not expected after check_tensors; still the user's file, still one line
            raise InputError(f"model {path} does not match this version's network "
                             f"({str(error).splitlines()[0][:120]})") from None
        return cls(network, tuple(header["label_values"]), header["axis"], spec,
                   tuple(float(v) for v in header["spacing"]), header.get("encoder", RANDOM_INIT))


def load_encoder_into(network: SegmentationNet, path: str | os.PathLike, spec: InputSpec) -> None:
    """Copy a pretrained encoder's weights into ``network.encoder``; InputError when its architecture or input
    channels do not match."""
    load_encoder_weights(network.encoder, path, spec)


def load_encoder_weights(encoder, path: str | os.PathLike, spec: InputSpec) -> None:
    """Copy the encoder file ``path`` into ``encoder`` (an :class:`~ContrastiveSegLib.networks.unet.Encoder`, of a
    segmentation network or of a pretraining method); InputError when its header is unusable or its input
    channels, widths or weights do not match. The tensors' shapes are compared before any tensor is read."""
    header, found = read_weights_header(path, kind="encoder", what="encoder")
    expected_channels = encoder.in_channels
    # Checked by read_weights_header: integers and lists of 5 widths where present.
    network = header.get("network", {})
    channels = header.get("input_channels", network.get("in_channels"))
    if channels is None and "input" in header:
        channels = InputSpec.from_dict(header["input"]).in_channels
    if channels is not None and channels != expected_channels:
        raise InputError(f"encoder {path} takes {channels} input channels, this image gives {expected_channels} "
                         f"({spec.to_dict()})")
    features = header.get("features", network.get("features"))
    if features is not None and tuple(features) != tuple(encoder.features):
        raise InputError(f"encoder {path} has widths {tuple(features)}, the network expects "
                         f"{tuple(encoder.features)}")
    check_tensors(f"encoder {path}", found, encoder.state_dict(), against="the encoder it is loaded into")
    tensors = read_tensors(path, what="encoder")
    try:
        encoder.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise InputError(f"encoder {path} is of another architecture ({str(error).splitlines()[0][:120]})") from None
