"""SSDN (Laine et al. 2019): blind-spot network + Gaussian prior, posterior-mean output (§4–§5).

`ssdn` learns the prior mean μ and covariance Σx of each pixel from its surroundings, trains on
the likelihood of the noisy pixel under Σy = Σx + Σn, and outputs the posterior mean. The noise
level is known (true level per image), one learned scalar ("constant"), or the output of a
separate noise-level U-Net averaged over the image ("per_image"). `ssdn-mu` is the μ-only
ablation: the blind-spot network trained by L2 against its own noisy input.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..errors import NoiseNotSupported
from ..networks import BlindSpotUNet, UNet
from ..noise import NoiseModel, NoisyBatch
from . import ssdn_math as sm
from .base import LossOutput, Method, MethodConfigBase, TrainingPair


class SSDNConfig(MethodConfigBase):
    name: Literal["ssdn"] = "ssdn"
    sigma: Literal["known", "constant", "per_image"] = "known"
    """Noise level: the true level, one learned scalar, or a per-image noise-level network."""
    covariance: Literal["full", "diagonal"] = "full"
    """Prior covariance per pixel: full 3×3 (U Uᵀ) or diagonal."""


class SSDNModel(nn.Module):
    """Every trainable part of SSDN in one module: blind-spot net and the noise-level estimator."""

    def __init__(self, n_out: int, sigma: str, rng: torch.Generator):
        super().__init__()
        self.net = BlindSpotUNet(n_out=n_out, rng=rng)
        self.level_net = UNet(n_out=1, zero_init_last=True, rng=rng) if sigma == "per_image" else None
        self.level_z = nn.Parameter(torch.zeros(())) if sigma == "constant" else None

    def forward(self, noisy: Tensor) -> Tensor:
        return self.net(noisy)

    def estimated_level(self, noisy: Tensor) -> Tensor:
        """s = softplus(z − 4) + 1e-3, z a learned scalar or the noise-level net's spatial mean."""
        if self.level_z is not None:
            return sm.softplus_level(self.level_z).reshape(1)
        z = self.level_net(noisy).mean(dim=(1, 2, 3))  # (N,)
        return sm.softplus_level(z)


class SSDN(Method):
    Config = SSDNConfig
    amp_safe: ClassVar[bool] = False  # the 3×3 posterior algebra stays float64
    blind_spot: ClassVar[bool] = True

    @classmethod
    def check(cls, config, noise, train, evaluation):
        if noise.kind not in sm.NOISE_KINDS:
            raise NoiseNotSupported(
                f"ssdn models Gaussian and Poisson noise only, not {noise.style}; "
                "pick a gaussian* or poisson* style, or use ssdn-mu / n2v for impulse noise"
            )
        if config.sigma == "constant" and noise.variable:
            raise NoiseNotSupported(
                f"ssdn with sigma=constant needs a fixed-level style, but {noise.style} draws a "
                "level per image; use method.sigma=per_image (or known)"
            )

    @property
    def n_factors(self) -> int:
        return 6 if self.config.covariance == "full" else 3

    def build_model(self, rng):
        return SSDNModel(3 + self.n_factors, self.config.sigma, rng)

    def training_pair(self, clean, rngs):
        drawn = self.noise.sample(clean, rngs.noise)
        return TrainingPair(inputs=drawn.noisy, targets=drawn.noisy, level=drawn.level)

    def _prior_and_noise(self, model: SSDNModel, noisy: Tensor, level: Tensor,
                         estimate: Tensor | None = None):
        out = model(noisy)
        mu, factors = out[:, :3], out[:, 3:]
        sigma_x = sm.prior_covariance(factors, diagonal=self.config.covariance == "diagonal")
        estimated = self.config.sigma != "known"
        if estimated:  # from the whole image when the evaluator tiles it (image_estimate)
            level = model.estimated_level(noisy) if estimate is None else estimate
        noise_var = sm.noise_variance(self.noise.kind, mu, level, estimated=estimated)
        return mu, sigma_x, noise_var, level

    def image_estimate(self, model, batch: NoisyBatch):
        """The estimated level of each whole padded image (released code: mean of the level net's
        output over the image), so that every tile of it uses the same value."""
        if self.config.sigma == "known":
            return None
        return model.estimated_level(batch.noisy).expand(batch.noisy.shape[0])

    def loss(self, model, pair: TrainingPair) -> LossOutput:
        y = pair.inputs
        mu, sigma_x, noise_var, level = self._prior_and_noise(model, y, pair.level)
        per_pixel = sm.nll(y, mu, sigma_x, noise_var)
        logs = {}
        if self.config.sigma != "known":
            per_pixel = per_pixel - sm.level_regulariser(noise_var.sqrt())
            logs["estimated_level"] = level.detach().mean()
        return LossOutput(per_pixel.mean().to(y.dtype), logs)

    def denoise(self, model, batch: NoisyBatch) -> Tensor:
        y = batch.noisy
        mu, sigma_x, noise_var, _ = self._prior_and_noise(model, y, batch.level, batch.estimate)
        return sm.posterior_mean(y, mu, sigma_x, noise_var).to(y.dtype)


class SSDNMuConfig(MethodConfigBase):
    name: Literal["ssdn-mu"] = "ssdn-mu"


class SSDNMu(Method):
    """μ-only: blind-spot network with 3 outputs, plain L2 against its own noisy input; no posterior."""

    Config = SSDNMuConfig

    blind_spot: ClassVar[bool] = True

    def build_model(self, rng):
        return BlindSpotUNet(n_out=3, rng=rng)

    def training_pair(self, clean, rngs):
        noisy = self.noise.sample(clean, rngs.noise).noisy
        return TrainingPair(inputs=noisy, targets=noisy)

    def loss(self, model, pair):
        return LossOutput(F.mse_loss(model(pair.inputs), pair.targets))

    def denoise(self, model, batch):
        return model(batch.noisy)
