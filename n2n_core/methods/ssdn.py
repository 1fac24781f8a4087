"""SSDN (Laine et al. 2019): blind-spot network + Gaussian prior, posterior-mean output (§4–§5b).

`ssdn` learns the prior mean μ and covariance Σx of each pixel from its surroundings, trains on
the likelihood of the noisy pixel, and outputs the posterior mean. Gaussian and Poisson noise use
Σy = Σx + Σn (§5); impulse noise uses the mixture's mean and covariance and its own posterior mean
(§5b). The noise level (σ, λ or the impulse probability α) is known (true level per image), one
learned scalar ("constant"; the released code's "global"), or the output of a separate noise-level
U-Net averaged over the image ("per_image"). On greyscale data (data.channels=1) the prior is one
variance σx² = a² and the algebra is scalar (ssdn_math.mono_*); the released code has no greyscale
impulse model, so that pairing is refused. `ssdn-mu` is the μ-only ablation: the blind-spot network
trained against its own noisy input (L2, or the annealed loss under impulse noise, see n2n.py).
All formulas follow `blindspot_pipeline` / `simple_pipeline` of the released
`selfsupervised_denoising.py` (NVlabs/selfsupervised-denoising).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..errors import NoiseNotSupported
from ..networks import BlindSpotUNet, UNet
from ..noise import NoiseModel, NoisyBatch
from . import ssdn_math as sm
from .base import LossOutput, Method, MethodConfigBase, TrainingPair
from .n2n import NoisyTargetPair, noisy_target_loss, step_exponent


class SSDNConfig(MethodConfigBase):
    name: Literal["ssdn"] = "ssdn"
    sigma: Literal["known", "constant", "per_image"] = "known"
    """Noise level (σ, λ or impulse α): the true level, one learned scalar, or a per-image
    noise-level network (the released code's known / global / per_image)."""
    covariance: Literal["full", "diagonal"] = "full"
    """Prior covariance per pixel: full 3×3 (U Uᵀ) or diagonal; one variance on greyscale either way."""


class SSDNModel(nn.Module):
    """Every trainable part of SSDN in one module: blind-spot net and the noise-level estimator."""

    def __init__(self, n_out: int, sigma: str, rng: torch.Generator, in_channels: int = 3):
        super().__init__()
        self.net = BlindSpotUNet(n_out=n_out, in_channels=in_channels, rng=rng)
        self.level_net = (UNet(n_out=1, zero_init_last=True, in_channels=in_channels, rng=rng)
                          if sigma == "per_image" else None)
        self.level_z = nn.Parameter(torch.zeros(())) if sigma == "constant" else None

    def forward(self, noisy: Tensor) -> Tensor:
        return self.net(noisy)

    def estimated_level(self, noisy: Tensor) -> Tensor:
        """s = softplus(z − 4) + 1e-3, z a learned scalar or the noise-level net's spatial mean.

        s stands for σ (Gaussian), 1/λ (Poisson) or α (impulse), as in the released code.
        """
        if self.level_z is not None:
            return sm.softplus_level(self.level_z).reshape(1)
        z = self.level_net(noisy).mean(dim=(1, 2, 3))  # (N,)
        return sm.softplus_level(z)


class SSDN(Method):
    Config = SSDNConfig
    amp_safe: ClassVar[bool] = False  # the 3×3 posterior algebra stays float64
    blind_spot: ClassVar[bool] = True

    @classmethod
    def check(cls, config, noise, train, evaluation, data):
        if noise.kind not in (*sm.NOISE_KINDS, sm.IMPULSE_KIND):
            raise NoiseNotSupported(
                f"ssdn models Gaussian, Poisson and impulse noise only, not {noise.style}; "
                "pick a gaussian*, poisson* or impulse* style"
            )
        if config.sigma == "constant" and noise.variable:
            raise NoiseNotSupported(
                f"ssdn with sigma=constant needs a fixed-level style, but {noise.style} draws a "
                "level per image; use method.sigma=per_image (or known)"
            )
        if data.channels == 1 and noise.kind == sm.IMPULSE_KIND:
            raise NoiseNotSupported(
                f"ssdn has no greyscale model of {noise.style} (the released code raises "
                "NotImplementedError there); use data.channels=3, or n2c, n2n or ssdn-mu on greyscale"
            )

    @property
    def n_factors(self) -> int:
        """Prior factors per pixel: 6 (full 3×3 U) or 3 (diagonal); 1 (σx = a) on greyscale."""
        if self.channels == 1:
            return 1
        return 6 if self.config.covariance == "full" else 3

    def build_model(self, rng):
        return SSDNModel(self.channels + self.n_factors, self.config.sigma, rng, self.channels)

    def training_pair(self, clean, rngs):
        drawn = rngs.noisy(self.noise, clean)
        return TrainingPair(inputs=drawn.noisy, targets=drawn.noisy, level=drawn.level)

    def _prior(self, model: SSDNModel, noisy: Tensor, level: Tensor, estimate: Tensor | None = None):
        """μ, the prior (Σx (N, H, W, 3, 3), or σx² (N, 1, H, W) on greyscale) and the level used:
        the true one, or the estimate (from the whole image when the evaluator tiles it)."""
        out = model(noisy)
        c = self.channels
        mu, factors = out[:, :c], out[:, c:]
        if c == 1:
            prior = sm.mono_prior_variance(factors)
        else:
            prior = sm.prior_covariance(factors, diagonal=self.config.covariance == "diagonal")
        if self.config.sigma != "known":
            level = model.estimated_level(noisy) if estimate is None else estimate
        return mu, prior, level

    def _noise_variance(self, mu: Tensor, level: Tensor) -> Tensor:
        return sm.noise_variance(self.noise.kind, mu, level, estimated=self.config.sigma != "known")

    def image_estimate(self, model, batch: NoisyBatch):
        """The estimated level of each whole padded image (released code: mean of the level net's
        output over the image), so that every tile of it uses the same value."""
        if self.config.sigma == "known":
            return None
        return model.estimated_level(batch.noisy).expand(batch.noisy.shape[0])

    def loss(self, model, pair: TrainingPair) -> LossOutput:
        y = pair.inputs
        mu, prior, level = self._prior(model, y, pair.level)
        estimated = self.config.sigma != "known"
        if self.noise.kind == sm.IMPULSE_KIND:
            per_pixel = sm.impulse_nll(y, mu, prior, level)  # no level regulariser in this branch
        else:
            noise_var = self._noise_variance(mu, level)
            per_pixel = (sm.mono_nll if self.channels == 1 else sm.nll)(y, mu, prior, noise_var)
            if estimated:
                per_pixel = per_pixel - sm.level_regulariser(noise_var.sqrt())
        logs = {"estimated_level": level.detach().mean()} if estimated else {}
        return LossOutput(per_pixel.mean().to(y.dtype), logs)

    def denoise(self, model, batch: NoisyBatch) -> Tensor:
        y = batch.noisy
        mu, prior, level = self._prior(model, y, batch.level, batch.estimate)
        if self.noise.kind == sm.IMPULSE_KIND:
            return sm.impulse_posterior_mean(y, mu, prior, level).to(y.dtype)
        noise_var = self._noise_variance(mu, level)
        posterior = sm.mono_posterior_mean if self.channels == 1 else sm.posterior_mean
        return posterior(y, mu, prior, noise_var).to(y.dtype)


class SSDNMuConfig(MethodConfigBase):
    name: Literal["ssdn-mu"] = "ssdn-mu"


class SSDNMu(Method):
    """μ-only: blind-spot network with C outputs trained against its own noisy input; no posterior.

    The loss is L2, or the annealed loss under impulse noise (n2n.noisy_target_loss), as the
    released `simple_pipeline` with `blindspot=True, noisy_targets=True`.
    """

    Config = SSDNMuConfig

    blind_spot: ClassVar[bool] = True

    def build_model(self, rng):
        return BlindSpotUNet(n_out=self.channels, in_channels=self.channels, rng=rng)

    def training_pair(self, clean, rngs):
        noisy = rngs.noisy(self.noise, clean).noisy
        return NoisyTargetPair(inputs=noisy, targets=noisy, exponent=step_exponent(rngs))

    def loss(self, model, pair):
        return LossOutput(noisy_target_loss(self.noise, model(pair.inputs), pair.targets, pair.exponent))

    def denoise(self, model, batch):
        return model(batch.noisy)
