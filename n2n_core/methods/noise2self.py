"""Noise2Self (Batson & Royer, ICML 2019): a J-invariant U-Net trained by grid masking.

At every step one pixel grid J (every `grid_width`-th row and column, at a phase that moves on by
one each step) is masked: the U-Net sees the noisy crop with the pixels of J replaced by an
average of their 8 neighbours (none of which is in J), and the loss compares its output with the
noisy crop on J only. The network input therefore does not depend on the noisy values in J, so the
loss on J is a self-supervised estimate of the denoising error (J-invariance).

Where the paper is silent, the authors' released code decides (czbiohub-sf/noise2self, `mask.py`:
`Masker`, `pixel_grid_mask`, `interpolate_mask`; the training loops of the notebooks
`Intro to Neural Nets.ipynb` and `Single-Shot Denoising.ipynb`):

* Grid width 4 and mode 'interpolate' (both notebooks: `Masker(width=4, mode='interpolate')`;
  the class's own defaults are width 3 and mode 'zero'). `grid_width` is an option.
* Phase at step i: row phase i mod w, column phase (i div w) mod w (`Masker.mask(X, i)`), so the
  w² grids are visited in turn; i is the training loop's batch index, here `Step.index`. One grid
  for every image and channel of the batch.
* Interpolation: the kernel [[0.5, 1, 0.5], [1, 0, 1], [0.5, 1, 0.5]] / 6 with zero padding (a
  masked pixel on the border averages in zeros, as in the code); the code convolves a
  one-channel image, here each colour channel is filtered on its own.
* Loss: MSE between output·mask and noisy·mask averaged over all entries (`MSELoss()(out*mask,
  noisy*mask)`), i.e. the masked mean divided by w²; under Adam the scale hardly matters.
* Inference: one pass f(y) on the whole image (`inference = "single_pass"`, the notebooks'
  `simple_output`); `inference = "j_invariant"` is `Masker.infer_full_image`: w² passes, each
  pixel taken from the pass in which it was masked.

The project's choices: its U-Net, Adam, schedule and fresh noise per minibatch (docs/methods.md §1–§3).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..networks import UNet
from .base import LossOutput, Method, MethodConfigBase, TrainingPair, refuse_impulse

# Weights of the 8 neighbours (centre 0), normalised to sum 1: the authors' interpolation kernel.
_RING = torch.tensor([[0.5, 1.0, 0.5], [1.0, 0.0, 1.0], [0.5, 1.0, 0.5]], dtype=torch.float64)
RING_KERNEL = _RING / _RING.sum()


class Noise2SelfConfig(MethodConfigBase):
    name: Literal["n2self"] = "n2self"
    grid_width: int = Field(4, ge=2)
    """Spacing of the masked grid in rows and columns (authors' notebooks: 4); ≥ 2 keeps every
    neighbour of a masked pixel unmasked."""
    inference: Literal["single_pass", "j_invariant"] = "single_pass"
    """f(y) on the whole image, or the w²-pass J-invariant reconstruction (Masker.infer_full_image)."""


def grid_phase(step: int, width: int) -> tuple[int, int]:
    """(row phase, column phase) of the grid masked at `step`: (step mod w, (step div w) mod w)."""
    return step % width, (step // width) % width


def grid_mask(height: int, width: int, grid_width: int, phase: tuple[int, int],
              device=None, dtype=torch.float32) -> Tensor:
    """(1, 1, H, W): 1 where row ≡ phase[0] and column ≡ phase[1] (mod grid_width), else 0."""
    rows = torch.arange(height, device=device) % grid_width == phase[0]
    cols = torch.arange(width, device=device) % grid_width == phase[1]
    return (rows[:, None] & cols[None, :]).to(dtype)[None, None]


def interpolate_masked(noisy: Tensor, mask: Tensor) -> Tensor:
    """`noisy` with the masked pixels replaced by the kernel-weighted mean of their 8 neighbours."""
    channels = noisy.shape[1]
    kernel = RING_KERNEL.to(noisy.device, noisy.dtype).expand(channels, 1, 3, 3)
    neighbours = F.conv2d(noisy, kernel, padding=1, groups=channels)
    return neighbours * mask + noisy * (1 - mask)


def masked_loss(output: Tensor, noisy: Tensor, mask: Tensor) -> Tensor:
    """mean over all entries of ((output − noisy)·mask)², the authors' MSELoss(out·m, y·m)."""
    return ((output - noisy) * mask).square().mean()


class Noise2Self(Method):
    """The U-Net sees the grid-masked crop; its loss is taken on the masked grid only."""

    Config = Noise2SelfConfig

    @classmethod
    def check(cls, config, noise, train, evaluation, data):
        refuse_impulse("n2self", noise, "its paper does not run impulse noise, and its L2 target, the noisy "
                       "input, has mean (1-α)x + α/2 there (docs/methods.md §5b)")

    def build_model(self, rng):
        return UNet(n_out=self.channels, in_channels=self.channels, rng=rng)

    def training_pair(self, clean, step):
        noisy = step.noisy(self.noise, clean).noisy
        phase = grid_phase(step.index, self.config.grid_width)
        mask = grid_mask(*noisy.shape[-2:], self.config.grid_width, phase, noisy.device, noisy.dtype)
        mask = mask.expand_as(noisy)  # a view: batch first, so a torchrun job can split it
        return TrainingPair(inputs=interpolate_masked(noisy, mask), targets=noisy, mask=mask)

    def loss(self, model, pair):
        return LossOutput(masked_loss(model(pair.inputs), pair.targets, pair.mask))

    def denoise(self, model, batch):
        noisy = batch.noisy
        if self.config.inference == "single_pass":
            return model(noisy)
        width = self.config.grid_width
        out = torch.zeros_like(noisy)
        for step in range(width * width):  # every pixel lies in exactly one of the w² grids
            mask = grid_mask(*noisy.shape[-2:], width, grid_phase(step, width), noisy.device, noisy.dtype)
            out = out + model(interpolate_masked(noisy, mask)) * mask
        return out
