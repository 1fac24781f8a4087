"""Recorrupted-to-Recorrupted (Pang et al., CVPR 2021): a noisy pair made from one noisy image.

For Gaussian noise y = x + n, n ~ N(0, σ²I), with σ known, draw z ~ N(0, σ²I) and D = α·I:

    input  ŷ = y + Dᵀz = y + α·z,        target  ỹ = y − D⁻¹z = y − z/α.

The input's noise n + α·z has variance (1 + α²)σ², the target's n − z/α has (1 + 1/α²)σ², and
their covariance is σ² − σ² = 0: jointly Gaussian, hence independent, so ‖f(ŷ) − ỹ‖² trains f as
Noise2Noise would. The result averages K recorrupted passes: x̂ = (1/K) Σₖ f(y + α·zₖ).

Where the paper is silent, the authors' released code decides
(PangTongyao/Recorrupted-to-Recorrupted-Unsupervised-Deep-Learning-for-Image-Denoising,
`train_AWGN.py` and `test_AWGN.py`):

* α = 0.5 (`--alpha` default, the paper's AWGN setting); z is drawn fresh at every step.
* Inference: K = 50 recorruptions (`aver_num = 50`), each y + α·σ·z with a fresh z, outputs
  averaged. The contract hands `denoise` no generator, so the K draws come from a generator
  seeded with the fixed `INFERENCE_SEED` at every call: the same image always gets the same
  score, and every method still sees the evaluator's noisy inputs.
* σ is the true level of each image (`NoisyBatch.level`; for gaussian5_50 the level drawn for
  that image), in training and at inference.

The project's choices, not the authors': the project's U-Net with its direct output (the authors
train a residual DnCNN, output = input − DnCNN(input)); a mean squared error (the code: sum / 2N,
a constant factor that Adam all but ignores); the project's Adam, schedule and fresh noise per
minibatch (the code trains on noisy patches drawn once). Gaussian noise only: the paper's
recorruption needs a Gaussian noise model of known covariance.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..errors import NoiseNotSupported
from ..networks import UNet
from ..seeding import derive_seed, make_generator
from .base import IMPULSE_MODELS, LossOutput, Method, MethodConfigBase, TrainingPair

INFERENCE_SEED = derive_seed("r2r", "inference")


class R2RConfig(MethodConfigBase):
    name: Literal["r2r"] = "r2r"
    alpha: float = Field(0.5, gt=0)
    """D = α·I: input y + α·z, target y − z/α (paper and code: 0.5)."""
    inference_samples: int = Field(50, ge=1)
    """Recorrupted passes averaged at inference (code: 50)."""


def recorrupt(noisy: Tensor, sigma: Tensor, alpha: float, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """(y + α·σ·ε, y − σ·ε/α) with one ε ~ N(0, 1) per entry; σ per image, shape (N,)."""
    eps = torch.randn(noisy.shape, generator=rng, device=noisy.device, dtype=noisy.dtype)
    z = sigma.to(noisy.dtype).view(-1, 1, 1, 1) * eps
    return noisy + alpha * z, noisy - z / alpha


def recorrupted_noise_moments(sigma: float, alpha: float) -> tuple[float, float, float]:
    """(input noise variance, target noise variance, their covariance) per entry, from the paper."""
    return (1 + alpha**2) * sigma**2, (1 + 1 / alpha**2) * sigma**2, 0.0


class R2R(Method):
    """The U-Net learns one recorruption of y from another; it denoises by averaging K passes."""

    Config = R2RConfig

    @classmethod
    def check(cls, config, noise, train, evaluation, data):
        if noise.kind != "gaussian":
            others = (IMPULSE_MODELS if noise.kind == "impulse"
                      else "n2n, n2v, ssdn, ne2ne or n2self")
            raise NoiseNotSupported(
                f"r2r cannot model {noise.style}: it recorrupts with Gaussian noise of known σ, so "
                f"it runs gaussian* styles only; for {noise.kind} noise use {others}"
            )

    def build_model(self, rng):
        return UNet(n_out=self.channels, in_channels=self.channels, rng=rng)

    def training_pair(self, clean, step):
        drawn = step.noisy(self.noise, clean)
        # the recorruption is the method's own randomness: fresh at every step, fixed noise or not
        inputs, targets = recorrupt(drawn.noisy, drawn.level, self.config.alpha, step.noise)
        return TrainingPair(inputs=inputs, targets=targets, level=drawn.level)

    def loss(self, model, pair):
        return LossOutput(F.mse_loss(model(pair.inputs), pair.targets))

    def denoise(self, model, batch):
        noisy, alpha = batch.noisy, self.config.alpha
        rng = make_generator(INFERENCE_SEED, noisy.device)
        sigma = batch.level.to(noisy.device, noisy.dtype).view(-1, 1, 1, 1)
        total = torch.zeros_like(noisy)
        for _ in range(self.config.inference_samples):
            eps = torch.randn(noisy.shape, generator=rng, device=noisy.device, dtype=noisy.dtype)
            total = total + model(noisy + alpha * sigma * eps)
        return total / self.config.inference_samples
