"""Noise2Noise (Lehtinen et al. 2018): the target is a second, independent noisy draw (METHODS.md §1)."""

from __future__ import annotations

from typing import Literal

from .base import Method, MethodConfigBase, TrainingPair
from .n2c import N2C


class N2NConfig(MethodConfigBase):
    name: Literal["n2n"] = "n2n"


class N2N(N2C):
    """Same network, loss and output as N2C; only the training pair differs."""

    Config = N2NConfig

    def training_pair(self, clean, rngs):
        first = self.noise.sample(clean, rngs.noise)
        second = self.noise.sample(clean, rngs.noise)  # variable styles draw their own level (§1)
        return TrainingPair(inputs=first.noisy, targets=second.noisy)
