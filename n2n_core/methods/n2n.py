"""Noise2Noise (Lehtinen et al. 2018): the target is a second, independent noisy draw (docs/methods.md §1).

Loss: L2, except under impulse noise, where the mean of a noisy target is (1 − α)x + α/2 and L2
would learn that washed-out image; there every network trained on noisy targets (N2N, SSDN μ-only,
the course networks as N2N) uses the annealed loss of losses.py, as the released SSDN code's
`simple_pipeline` does (docs/methods.md §5b). N2C keeps L2 (its target is clean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor

from ..noise import NoiseModel
from .base import LossOutput, MethodConfigBase, Step, TrainingPair
from .losses import EXPONENT_FLOOR, annealed_exponent, annealed_l_loss
from .n2c import N2C


class N2NConfig(MethodConfigBase):
    name: Literal["n2n"] = "n2n"


@dataclass(frozen=True)
class NoisyTargetPair(TrainingPair):
    """A pair with a noisy target, carrying its step's annealed exponent L (used under impulse noise)."""

    exponent: float = EXPONENT_FLOOR


def step_exponent(rngs: Step) -> float:
    """The annealed exponent of the step `rngs` belongs to (losses.annealed_exponent)."""
    return annealed_exponent(rngs.images_seen, rngs.budget_images)


def noisy_target_loss(noise: NoiseModel, pred: Tensor, target: Tensor, exponent: float) -> Tensor:
    """L2 against a noisy target, or under impulse noise mean((|pred − target| + 1e-8)^L)."""
    if noise.kind == "impulse":
        return annealed_l_loss(pred, target, exponent)
    return F.mse_loss(pred, target)


class N2N(N2C):
    """Same network and output as N2C; the pair differs, and so does the loss under impulse noise."""

    Config = N2NConfig
    clean_targets: ClassVar[bool] = False
    noisy_draws: ClassVar[int] = 2

    def training_pair(self, clean, rngs):
        first = rngs.noisy(self.noise, clean)
        second = rngs.noisy(self.noise, clean)  # variable styles draw their own level (§1)
        return NoisyTargetPair(inputs=first.noisy, targets=second.noisy, exponent=step_exponent(rngs))

    def loss(self, model, pair):
        return LossOutput(noisy_target_loss(self.noise, model(pair.inputs), pair.targets, pair.exponent))
