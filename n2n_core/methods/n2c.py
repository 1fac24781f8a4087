"""Noise2Clean: the supervised reference, (noisy, clean) pairs and an L2 loss (docs/methods.md §3)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F

from ..networks import UNet
from .base import LossOutput, Method, MethodConfigBase, TrainingPair


class N2CConfig(MethodConfigBase):
    name: Literal["n2c"] = "n2c"


class N2C(Method):
    """Noise2Clean: the U-Net learns noisy → clean."""

    Config = N2CConfig
    clean_targets: ClassVar[bool] = True

    def build_model(self, rng):
        return UNet(n_out=self.channels, in_channels=self.channels, rng=rng)

    def training_pair(self, clean, rngs):
        return TrainingPair(inputs=rngs.noisy(self.noise, clean).noisy, targets=clean)

    def loss(self, model, pair):
        return LossOutput(F.mse_loss(model(pair.inputs), pair.targets))

    def denoise(self, model, batch):
        return model(batch.noisy)
