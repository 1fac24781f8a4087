"""How far training has got, read from the optimizer the trainer steps (an interim hook).

Neighbor2Neighbor ramps the weight of its regulariser over training and Noise2Self moves its mask's
phase on at every step, but the Method contract tells neither `training_pair(clean, rngs)` nor
`loss(model, pair)` which step it is. A `SteppedMethod` holds a `StepClock`, builds the trainer's Adam
through the declared `make_optimizer` hook and keeps it; `steps_taken()` then reads how many
updates Adam has applied (its per-parameter `step` count). That count is saved with every
checkpoint and restored on resume, and is the same on every rank of a torchrun job, so a resumed
run sees the steps an uninterrupted one saw. A step skipped for a non-finite gradient is not
counted (Adam never applied it). Without `make_optimizer` (a method used outside the trainer) the
clock reads 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ..noise import NoiseModel
from .base import Method, MethodConfigBase


class StepClock:
    """Optimizer updates applied so far, and that count as a fraction of the image budget."""

    def __init__(self) -> None:
        self._optimizer: torch.optim.Optimizer | None = None
        self._images_per_step = 0
        self._budget_images = 0

    def make_optimizer(self, model: nn.Module, train_cfg) -> torch.optim.Optimizer:
        """The trainer's own Adam (METHODS.md §2), kept so its step count can be read."""
        from ..train.trainer import make_optimizer as paper_adam  # the trainer imports methods

        self._optimizer = paper_adam(model, train_cfg)
        self._images_per_step = train_cfg.batch_size
        self._budget_images = train_cfg.budget_images
        return self._optimizer

    def steps_taken(self) -> int:
        """Updates applied before the current step: 0 at the first step, and with no optimizer."""
        if self._optimizer is None:
            return 0
        for group in self._optimizer.param_groups:
            for param in group["params"]:
                step = self._optimizer.state.get(param, {}).get("step")
                if step is not None:
                    return int(step)
        return 0

    def progress(self) -> float:
        """Images trained on / budget, in [0, 1] (0 without an optimizer)."""
        if not self._budget_images:
            return 0.0
        return min(1.0, self.steps_taken() * self._images_per_step / self._budget_images)


class SteppedMethod(Method):
    """A Method whose training depends on the step: `self.clock` tells it, fed by make_optimizer."""

    def __init__(self, config: MethodConfigBase, noise: NoiseModel):
        super().__init__(config, noise)
        self.clock = StepClock()

    def make_optimizer(self, model: nn.Module, train_cfg) -> torch.optim.Optimizer:
        return self.clock.make_optimizer(model, train_cfg)
