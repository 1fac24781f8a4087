"""The `noisy` reference: returns its input, the floor row of every table."""

from __future__ import annotations

from typing import ClassVar, Literal

from ..noise import NoisyBatch
from .base import Method, MethodConfigBase


class NoisyConfig(MethodConfigBase):
    name: Literal["noisy"] = "noisy"


class Noisy(Method):
    """Identity denoiser: scores the noisy input itself."""

    Config = NoisyConfig
    trainable: ClassVar[bool] = False

    def build_model(self, rng=None) -> None:
        return None

    def denoise(self, model, batch: NoisyBatch):
        return batch.noisy
