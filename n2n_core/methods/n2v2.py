"""N2V2 (Höck et al., ECCV Workshops 2022): Noise2Void with a median replacement and a tweaked U-Net.

Two changes to N2V (n2v.py), both as the authors' code defines them (juglab/n2v, the TensorFlow
code the paper was run with, whose README lists the N2V2 settings `blurpool=True`,
`skip_skipone=True`, `n2v_manipulator="median"`, `unet_residual=False`):

* Replacement: each masked entry becomes the median of its (2r+1)² window without the centre,
  r = 5 (`n2v_neighborhood_radius`), window cropped at the border, np.median semantics (the mean
  of the two middle values for an even count): `n2v_masking.n2v_median_mask`, after
  `n2v/utils/n2v_utils.py` `pm_median`. The masked positions are N2V's stratified grid, with the
  project's N2V percentage (1.5 %, the original N2V configuration; the N2V2 README does not
  change `n2v_perc_pix`).
* Network: the U-Net of docs/methods.md §3 with every 2×2 max-pool replaced by MaxBlurPool
  (`networks.unet.max_blur_pool2x2`, `n2v/nets/blurpool.py`) and without the top-level skip
  connection. Mapping: N2V's U-Net (`n2v/nets/unet_blocks.py`, `skip_skipone`) drops the skip
  taken at full resolution, before the first pool; in §3's network the only full-resolution
  skip is the input image concatenated before conv1a, so that concatenation goes (conv1a reads
  96 channels). CAREamics (`models/unet/unet.py`) drops the same, last decoder level's skip.
  The network is not residual (§3's never is). Channel widths stay §3's: `skip_skipone` also
  re-sizes N2V's own decoder convs, which have no counterpart here.

Everything else is the project's N2V: target = the same noisy input, L2 on the masked entries,
and the configuration file trains and scores it exactly like `n2v` (EMA of the weights, decay
0.999 with the warm-up, see n2v.py), so the n2v → n2v2 difference in a table is N2V2's two changes.
Impulse noise is refused, as for N2V's paper: an L2 target under impulse noise has mean
(1 − α)x + α/2 (docs/methods.md §5b).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..networks import UNet
from .base import MethodConfigBase, TrainingPair, refuse_impulse
from .n2v import N2V
from .n2v_masking import n2v_median_mask


class N2V2Config(MethodConfigBase):
    name: Literal["n2v2"] = "n2v2"
    mask_percent: float = Field(1.5, gt=0, le=100)
    """Percentage of pixels masked per channel (one per stratified box of side round(√(100/p)))."""
    radius: int = Field(5, ge=1)
    """The median is taken over the (2r+1)² window around the masked pixel, centre excluded."""
    ema_warmup: bool = True
    """Warm the weights' moving average up, as N2V does here (n2v.py, schedule.ema_decay_at)."""


class N2V2(N2V):
    """N2V with the median replacement and the blur-pool U-Net without its top-level skip."""

    Config = N2V2Config

    @classmethod
    def check(cls, config, noise, train, evaluation, data):
        refuse_impulse("n2v2", noise, "its L2 target, the noisy input itself, has mean (1-α)x + α/2 under "
                       "impulse noise (docs/methods.md §5b)")

    def build_model(self, rng):
        return UNet(n_out=self.channels, in_channels=self.channels, rng=rng, pool="blur", top_skip=False)

    def training_pair(self, clean, step):
        noisy = step.noisy(self.noise, clean).noisy
        inputs, mask = n2v_median_mask(noisy, step.method, self.config.mask_percent, self.config.radius)
        return TrainingPair(inputs=inputs, targets=noisy, mask=mask)
