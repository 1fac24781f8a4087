"""The Method contract: how a denoiser builds its network, its training pair, its loss and its output.

The trainer and the evaluator only ever talk to this interface; nothing outside `methods/`
branches on a method's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from ..noise import NoiseModel, NoisyBatch


class MethodConfigBase(BaseModel):
    """Base of every method's configuration: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check_noise(self, noise: NoiseModel) -> None:
        """Raise ConfigError when this method cannot model `noise` (checked at configuration time)."""

    def check_channels(self, channels: int, noise: NoiseModel) -> None:
        """Raise ConfigError when this method cannot run on `channels`-channel images (data.channels)
        under `noise` (checked at configuration time); the default runs on 1 and 3 alike."""


@dataclass(frozen=True)
class Rngs:
    """Generators made fresh for every step from (run seed, purpose, step)."""

    noise: torch.Generator  # every noise draw, so all methods see the same noisy crops at a step
    method: torch.Generator  # masks and any other method-side randomness
    images_seen: int = 0  # n: images the run had seen before this step (the trainer fills it)
    budget_images: int = 0  # N: the run's budget in images; 0 when nothing is being trained
    # (n, N) drive schedules inside a method, e.g. the annealed exponent of methods/losses.py


@dataclass(frozen=True)
class TrainingPair:
    inputs: Tensor  # what the network sees, (N, C, P, P), C = data.channels
    targets: Tensor  # what the loss compares against
    mask: Tensor | None = None  # N2V: 1 where the loss is taken
    level: Tensor | None = None  # per-image noise level, for known-level variants


@dataclass(frozen=True)
class LossOutput:
    loss: Tensor  # scalar, differentiable
    logs: Mapping[str, Tensor] = field(default_factory=dict)  # detached scalars, e.g. estimated σ


class Method:
    """Base class with the defaults; subclasses override what differs.

    Optional hook: `make_optimizer(model, train_cfg)` returns the optimizer the trainer steps
    (the scratch network's own SGD); without it the trainer uses Adam (METHODS.md §2).
    `ema_decay(decay, step)` gives the decay of the weights' moving average (train.ema_decay) at
    update `step`; the default keeps it constant.
    """

    trainable: ClassVar[bool] = True
    amp_safe: ClassVar[bool] = True  # False where float64 math must not be autocast
    blind_spot: ClassVar[bool] = False  # True: scored in tiles no larger than the training crop

    def __init__(self, config: MethodConfigBase, noise: NoiseModel, channels: int = 3):
        config.check_noise(noise)
        config.check_channels(channels, noise)
        self.config = config
        self.noise = noise
        self.channels = channels  # image channels (data.channels): 3 RGB, 1 greyscale

    def ema_decay(self, decay: float, step: int) -> float:
        return decay

    def build_model(self, rng: torch.Generator) -> nn.Module | None:
        """One module holding every trainable parameter, initialised from `rng`."""
        raise NotImplementedError

    def training_pair(self, clean: Tensor, rngs: Rngs) -> TrainingPair:
        raise NotImplementedError

    def loss(self, model: nn.Module, pair: TrainingPair) -> LossOutput:
        raise NotImplementedError

    def denoise(self, model: nn.Module | None, batch: NoisyBatch) -> Tensor:
        """Denoised (N, C, H, W) for a noisy batch whose sides are multiples of 32."""
        raise NotImplementedError

    def denoise_many(self, model: nn.Module | None, inputs: Sequence, device: torch.device) -> list[Tensor]:
        """Denoise evaluation inputs one by one on `device`; CBM3D overrides this to use a pool."""
        outputs = []
        with torch.inference_mode():
            for item in inputs:
                outputs.append(self.denoise(model, item.noisy.to(device)).float().cpu())
        return outputs
