"""Neighbor2Neighbor (Huang et al., CVPR 2021): train on two neighbour sub-samplings of one noisy image.

A random neighbour sub-sampler G = (g1, g2) splits the noisy crop y into 2×2 cells and takes two
4-adjacent pixels of each cell, one for each half-size sub-image. The project's U-Net f learns
g1(y) → g2(y) under

    L = ‖f(g1(y)) − g2(y)‖² + γ·‖f(g1(y)) − g2(y) − (g1(f(y)) − g2(f(y)))‖²,

f(y) computed without gradient; the result is f(y) on the whole image.

Where the paper is silent, the authors' released code decides (TaoHuang2018/Neighbor2Neighbor,
`train.py`: `generate_mask_pair`, `generate_subimages` and the training loop):

* Sub-sampler: per 2×2 cell (positions 0 1 / 2 3) one of the 8 ordered pairs of horizontally or
  vertically adjacent positions, uniformly ([[0,1],[0,2],[1,3],[2,3],[1,0],[2,0],[3,1],[3,2]]; never
  a diagonal pair, never the same pixel twice), drawn independently per image and cell and shared
  by the channels; drawn from `step.method`.
* γ: the code sets γ = epoch / n_epoch · increase_ratio (increase_ratio 2, the README's and the
  training script's value; epochs 1..100), a linear ramp to 2. The harness counts its budget in
  images and has no epochs, so γ = gamma · (images trained on / budget) (`Step.progress`),
  continuous, from 0 to `gamma`; the pair carries its step's γ to the loss.
* Both terms are means over the sub-image's entries (torch.mean), weights Lambda1 = Lambda2 = 1.
* f(y) for the regulariser is the network in training mode under no_grad, as in the code.

The project's choices (docs/methods.md §2–§3), not the authors': the project's U-Net (the authors' has
the same five pools but LeakyReLU 0.2, transposed-convolution upsampling and init scale 0.1), the
project's Adam (β2 = 0.99; the code: PyTorch's default 0.999) and sin²/cos⁴ schedule (the code:
lr 3e-4 halved every 20 of its 100 epochs), fresh noise per minibatch (as the code). Sub-images
whose side is not a multiple of 32 (crops that are not multiples of 64, e.g. 32² smoke crops) are
mirror-padded at bottom/right to the U-Net's multiple of 32 and the output cropped back, so the
loss sees only real pixels; the quick (64²) and paper (256²) crops need no padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..errors import ConfigError
from ..networks import UNet
from ..networks.unet import SIZE_MULTIPLE
from .base import LossOutput, Method, MethodConfigBase, TrainingPair, refuse_impulse

# The 8 ordered pairs (first, second) of 4-adjacent positions in a 2×2 cell whose positions are
# numbered 0 1 / 2 3 (row-major), in the authors' order.
NEIGHBOUR_PAIRS = ((0, 1), (0, 2), (1, 3), (2, 3), (1, 0), (2, 0), (3, 1), (3, 2))


class Neighbor2NeighborConfig(MethodConfigBase):
    name: Literal["ne2ne"] = "ne2ne"
    gamma: float = Field(2.0, ge=0)
    """Final weight of the regulariser; γ ramps linearly from 0 to it over the budget (authors: 2)."""


@dataclass(frozen=True)
class Neighbor2NeighborPair(TrainingPair):
    """inputs = targets = the noisy crop y; `cells` (N, H/2, W/2): index into NEIGHBOUR_PAIRS;
    `gamma`: the regulariser's weight at this pair's step."""

    cells: Tensor | None = None
    gamma: float = 0.0


def draw_cells(n: int, height: int, width: int, rng: torch.Generator, device) -> Tensor:
    """One uniform choice among NEIGHBOUR_PAIRS per image and 2×2 cell: (n, H/2, W/2) int64."""
    if height % 2 or width % 2:
        raise ConfigError(
            f"ne2ne sub-samples 2×2 cells, so crop sides must be even, got {height}×{width}; "
            "use a train.patch_size that is a multiple of 32"
        )
    return torch.randint(0, len(NEIGHBOUR_PAIRS), (n, height // 2, width // 2), generator=rng, device=device)


def cell_positions(cells: Tensor) -> tuple[Tensor, Tensor]:
    """Positions (0..3) in each cell of g1's and of g2's pixel, each shaped like `cells`."""
    table = torch.tensor(NEIGHBOUR_PAIRS, dtype=torch.int64, device=cells.device)
    chosen = table[cells]  # (..., 2)
    return chosen[..., 0], chosen[..., 1]


def subsample(x: Tensor, positions: Tensor) -> Tensor:
    """(N, C, H, W) → (N, C, H/2, W/2): from every 2×2 cell the pixel at `positions` (N, H/2, W/2)."""
    n, c, h, w = x.shape
    cells = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    index = positions[:, None, :, :, None].expand(n, c, h // 2, w // 2, 1)
    return cells.gather(-1, index).squeeze(-1)


def regularised_loss(output: Tensor, target: Tensor, full_first: Tensor, full_second: Tensor,
                     gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """(L_rec + γ·L_reg, L_rec, L_reg) with diff = f(g1 y) − g2 y, L_rec = mean diff²,
    L_reg = mean (diff − (g1 f(y) − g2 f(y)))²."""
    diff = output - target
    reconstruction = diff.square().mean()
    regulariser = (diff - (full_first - full_second)).square().mean()
    return reconstruction + gamma * regulariser, reconstruction, regulariser


def pad_to_multiple(x: Tensor, multiple: int = SIZE_MULTIPLE) -> Tensor:
    """Mirror (edge-including) pad at bottom/right up to a multiple; pads up to the side itself."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h:
        x = torch.cat([x, x.flip(-2)[..., :pad_h, :]], dim=-2)
    if pad_w:
        x = torch.cat([x, x.flip(-1)[..., :pad_w]], dim=-1)
    return x


def unet_on(model: nn.Module, x: Tensor) -> Tensor:
    """model(x) for any side ≥ 16: padded to the U-Net's multiple of 32, output cropped back."""
    h, w = x.shape[-2:]
    return model(pad_to_multiple(x))[..., :h, :w]


class Neighbor2Neighbor(Method):
    """The U-Net learns one neighbour sub-image from the other; it denoises whole images."""

    Config = Neighbor2NeighborConfig

    @classmethod
    def check(cls, config, noise, train, evaluation, data):
        refuse_impulse("ne2ne", noise, "its paper runs Gaussian and Poisson noise, and its L2 target has mean "
                       "(1-α)x + α/2 under impulse noise (docs/methods.md §5b)")
        if train.patch_size % 2:
            raise ConfigError(f"ne2ne sub-samples 2×2 cells: train.patch_size must be even, got "
                              f"{train.patch_size}")

    def build_model(self, rng):
        return UNet(n_out=self.channels, in_channels=self.channels, rng=rng)

    def training_pair(self, clean, step):
        noisy = step.noisy(self.noise, clean).noisy
        n, _, h, w = noisy.shape
        cells = draw_cells(n, h, w, step.method, noisy.device)
        return Neighbor2NeighborPair(inputs=noisy, targets=noisy, cells=cells,
                                     gamma=self.config.gamma * step.progress)

    def loss(self, model, pair: Neighbor2NeighborPair):
        noisy = pair.inputs
        first, second = cell_positions(pair.cells)
        with torch.no_grad():
            full = model(noisy)
        output = unet_on(model, subsample(noisy, first))
        gamma = pair.gamma
        total, reconstruction, regulariser = regularised_loss(
            output, subsample(noisy, second), subsample(full, first), subsample(full, second), gamma)
        logs = {"reconstruction": reconstruction.detach(), "regulariser": regulariser.detach(),
                "gamma": torch.tensor(gamma)}
        return LossOutput(total, logs)

    def denoise(self, model, batch):
        return model(batch.noisy)
