"""Networks built from MONAI blocks: a 2D U-Net whose encoder is a separate, swappable module."""
from ContrastiveSegLib.networks.unet import Decoder, Encoder, NetworkConfig, SegmentationNet, build_network

__all__ = ["Encoder", "Decoder", "SegmentationNet", "NetworkConfig", "build_network"]
