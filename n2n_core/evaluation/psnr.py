"""PSNR conventions: `psnr_uint8` (the protocol's, docs/methods.md §8) and `psnr_float` (for contrast)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

CONVENTION_UINT8 = "uint8"  # quantise both images as clip(floor(255·v + 0.5), 0, 255), then PSNR
CONVENTION_FLOAT = "float"  # PSNR on unquantised floats in [0, 1]; not comparable with uint8


def quantize_uint8(image: Tensor) -> Tensor:
    """[0, 1] float → uint8 as clip(floor(255·v + 0.5), 0, 255)."""
    return torch.clamp(torch.floor(image.to(torch.float64) * 255.0 + 0.5), 0, 255).to(torch.uint8)


def psnr_uint8(output: Tensor, clean: Tensor) -> float:
    """PSNR in dB of one image after quantising both to uint8; MSE over all pixels and channels.

    `clean` may already be uint8. Returns inf for identical images.
    """
    a = quantize_uint8(output) if output.dtype != torch.uint8 else output
    b = quantize_uint8(clean) if clean.dtype != torch.uint8 else clean
    mse = torch.mean((a.to(torch.float64) - b.to(torch.float64)) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def psnr_float(output: Tensor, clean: Tensor) -> float:
    """PSNR in dB on unquantised floats (peak 1); given only to show how far it drifts."""
    mse = torch.mean((output.to(torch.float64) - clean.to(torch.float64)) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)
