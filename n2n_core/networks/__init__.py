"""Denoising networks: the U-Net of docs/methods.md §3 and the blind-spot U-Net of §4."""

from .blindspot import BlindSpotUNet
from .unet import UNet

__all__ = ["BlindSpotUNet", "UNet"]
