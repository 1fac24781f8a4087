"""Noise2Void (Krull et al. 2019): stratified masking of the noisy input, L2 on masked pixels (§6).

Defaults follow the original N2V configuration (n2v_perc_pix = 1.5, the 'uniform_withCP'
manipulator, which may pick the centre pixel itself, neighbourhood radius 5). Other releases used
0.198 % or 0.2 % without the centre; set `mask_percent` / `allow_center` to reproduce them. Every
value is recorded with the run. The SSDN paper's N2V baseline evaluated an EMA of the weights:
`configs/methods/n2v.toml` turns `train.ema_decay` on for that reason, warmed up by default
(`method.ema_warmup`, see N2VConfig). Impulse noise is refused (see N2V.check).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..train.schedule import ema_decay_at
from .base import LossOutput, MethodConfigBase, TrainingPair, refuse_impulse
from .n2c import N2C
from .n2v_masking import masked_mse, n2v_mask


class N2VConfig(MethodConfigBase):
    name: Literal["n2v"] = "n2v"
    mask_percent: float = Field(1.5, gt=0, le=100)
    """Percentage of pixels masked per channel (one per stratified box of side round(√(100/p)))."""
    radius: int = Field(5, ge=1)
    """Replacement values come from the (2r+1)² window around the masked pixel."""
    allow_center: bool = True
    """Whether the replacement may be the masked pixel itself (original N2V: yes)."""
    ema_warmup: bool = True
    """Warm the weights' moving average up (schedule.ema_decay_at): decay min(d, (1+t)/(10+t)).
    Ours, not the papers' (they are silent; at their 500k steps it changes nothing visible): without
    it a short budget scores an average still dominated by the random initial weights."""



class N2V(N2C):
    """The U-Net sees the masked input; its target is that same noisy input (not a second draw)."""

    Config = N2VConfig
    clean_targets: ClassVar[bool] = False  # N2C's network, not its clean targets

    @classmethod
    def check(cls, config, noise, train, evaluation, data):
        # its L2 target, the noisy input itself, has mean (1 − α)x + α/2 under impulse noise
        # (docs/methods.md §5b), and the paper has no N2V impulse cell
        refuse_impulse("n2v", noise, "its L2 loss on noisy pixels learns the biased mean of impulse noise")

    def training_pair(self, clean, rngs):
        noisy = rngs.noisy(self.noise, clean).noisy
        inputs, mask = n2v_mask(noisy, rngs.method, self.config.mask_percent,
                                self.config.radius, self.config.allow_center)
        return TrainingPair(inputs=inputs, targets=noisy, mask=mask)

    def ema_decay(self, decay, step):
        return ema_decay_at(step, decay, self.config.ema_warmup)

    def loss(self, model, pair):
        return LossOutput(masked_mse(model(pair.inputs), pair.targets, pair.mask))
