"""Zero-Shot Noise2Noise (Mansour & Heckel, CVPR 2023): a small network fitted to each test image.

No training set: `denoise` fits a fresh network to the image in hand and applies it, so for the
harness the method is training-free (`trainable = False`, like cbm3d and noisy; the trainer never
sees it) and all of its cost is spent while scoring.

What is run, per image y (the authors' code is their Colab notebook, linked from the paper; it was
read from public copies of it, which agree on everything below except the iteration count):

* Two fixed down-samplings (`pair_downsample`), each a 2×2 filter at stride 2 per channel:
  D1(y) averages each 2×2 cell's anti-diagonal pair (top-right, bottom-left: filter
  [[0, ½], [½, 0]]), D2(y) its diagonal pair (top-left, bottom-right: [[½, 0], [0, ½]]). An odd
  last row or column is dropped, as a stride-2 convolution does.
* The network f (`ZSN2NNet`) predicts the noise: conv 3×3 (C → 48, C = the image's channels) +
  LeakyReLU(0.2), conv 3×3 (48 → 48) + LeakyReLU(0.2), conv 1×1 (48 → C), zero 'same' padding, PyTorch's default Conv2d
  initialisation; the denoised image is y − f(y).
* Loss (`zs_n2n_loss`), MSE = mean over all entries:
  residual ½[MSE(D1, D2 − f(D2)) + MSE(D2, D1 − f(D1))] plus consistency
  ½[MSE(D1 − f(D1), D1(y − f(y))) + MSE(D2 − f(D2), D2(y − f(y)))], both weighted 1.
* Adam (PyTorch defaults: β = (0.9, 0.999), ε = 1e-8) at lr 1e-3, full-batch (the one image) for
  `iterations` steps; lr × 0.5 every `lr_step` steps (StepLR). Defaults 2000 and 1500: the
  notebook's values in its verbatim exports (header linking the Colab); other copies quote
  3000 iterations with halving every 1000, which `method.iterations=3000
  method.lr_step=1000` reproduces.
* Output: y − f(y) clamped to [0, 1], as the notebook's `denoise` (the uint8 scoring clips
  anyway, so the clamp changes no PSNR).

Choices of ours (the notebook is silent or differs):

* The image is fitted as it is: `denoise_many` crops each evaluation input back to its original
  height × width first, so the network never sees the evaluator's reflect padding (docs/methods.md
  §8); `denoise` on a batch fits every image of the batch separately, whole.
* The harness's noise is never clipped (docs/methods.md §1). The notebook's Gaussian demo clips the
  noisy image to [0, 1] before denoising; its published numbers are for that clipped noise.
* Determinism: each fit starts from the same weights, drawn on the CPU from
  derive_seed(method.seed, "zs-n2n-init") and moved to the device; the fit itself is
  deterministic full-batch Adam, so the same input on the same device gives the same output
  (the notebook draws from torch's global generator).
* Cost: every fit's wall-clock seconds are kept; `take_eval_logs()` returns
  {"seconds_per_image", "images", "iterations", "final_loss"} for the fits since its last
  call, for the runner to log with the scores (the paper's selling point is this cost).

Noise: Gaussian and Poisson (the paper evaluates both); impulse noise is refused, since both views'
noise must be zero-mean around the same image for the MSE targets to be unbiased.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..noise import NoiseModel, NoisyBatch
from ..seeding import derive_seed, make_generator
from .base import Method, MethodConfigBase, refuse_impulse

LRELU_SLOPE = 0.2  # the notebook's LeakyReLU slope (not §3's 0.1)


class ZSN2NConfig(MethodConfigBase):
    name: Literal["zs-n2n"] = "zs-n2n"
    iterations: int = Field(2000, ge=1)
    """Adam steps per image (the notebook: 2000; some copies of it: 3000)."""
    lr: float = Field(1e-3, gt=0, le=10.0, allow_inf_nan=False)
    """Adam's initial learning rate; finite and at most 10, as train.lr (n2n_core.config.MAX_LR,
    not imported: config imports the methods): lr=inf made every weight NaN, silently scored."""
    lr_step: int = Field(1500, ge=1)
    """The learning rate is multiplied by lr_gamma every lr_step steps (the notebook: 1500)."""
    lr_gamma: float = Field(0.5, gt=0, le=1)
    width: int = Field(48, ge=1)
    """Channels of the two 3×3 convolutions (the notebook's chan_embed)."""
    seed: int = 0
    """Seed of the initial weights, the same for every image."""


def pair_downsample(y: Tensor) -> tuple[Tensor, Tensor]:
    """(D1(y), D2(y)) of (N, C, H, W): per 2×2 cell, the mean of its anti-diagonal pair
    (top-right, bottom-left) and of its diagonal pair (top-left, bottom-right); (N, C, H//2, W//2)."""
    h, w = y.shape[-2] // 2 * 2, y.shape[-1] // 2 * 2
    y = y[..., :h, :w]
    anti = (y[..., 0::2, 1::2] + y[..., 1::2, 0::2]) / 2
    diag = (y[..., 0::2, 0::2] + y[..., 1::2, 1::2]) / 2
    return anti, diag


class ZSN2NNet(nn.Module):
    """The notebook's network: f(y) estimates the noise of y; the denoised image is y − f(y)."""

    def __init__(self, channels: int = 3, width: int = 48, rng: torch.Generator | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, channels, 1)
        for conv in (self.conv1, self.conv2, self.conv3):
            default_conv_init_(conv, rng)

    def forward(self, y: Tensor) -> Tensor:
        h = F.leaky_relu(self.conv1(y), LRELU_SLOPE)
        h = F.leaky_relu(self.conv2(h), LRELU_SLOPE)
        return self.conv3(h)


def default_conv_init_(conv: nn.Conv2d, rng: torch.Generator | None) -> None:
    """PyTorch's own Conv2d initialisation (reset_parameters), drawn from `rng`: weights
    kaiming_uniform(a=√5), i.e. U(±1/√fan_in), bias U(±1/√fan_in)."""
    bound = 1.0 / math.sqrt(conv.weight[0].numel())
    with torch.no_grad():
        nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=rng)
        conv.bias.uniform_(-bound, bound, generator=rng)


def zs_n2n_loss(net: nn.Module, y: Tensor) -> tuple[Tensor, Tensor]:
    """(residual loss, consistency loss) of the paper for the noisy image(s) y."""
    d1, d2 = pair_downsample(y)
    den1, den2 = d1 - net(d1), d2 - net(d2)
    residual = (F.mse_loss(den2, d1) + F.mse_loss(den1, d2)) / 2
    full1, full2 = pair_downsample(y - net(y))
    consistency = (F.mse_loss(den1, full1) + F.mse_loss(den2, full2)) / 2
    return residual, consistency


@dataclass(frozen=True)
class Fit:
    """What fitting one image cost and reached."""

    seconds: float
    iterations: int
    first_loss: float
    final_loss: float


class ZSN2N(Method):
    """Fits a fresh ZSN2NNet to every image it denoises (no training set, nothing to train)."""

    Config = ZSN2NConfig
    trainable: ClassVar[bool] = False
    config: ZSN2NConfig

    @classmethod
    def check(cls, config, noise, train, evaluation, data):
        refuse_impulse("zs-n2n", noise, "its two down-sampled views are MSE targets for each other, which "
                       "needs zero-mean noise (its paper evaluates Gaussian and Poisson)")

    def __init__(self, config: ZSN2NConfig, noise: NoiseModel, channels: int = 3):
        super().__init__(config, noise, channels)
        self.fits: list[Fit] = []

    def build_model(self, rng=None) -> None:
        return None

    def fresh_network(self, channels: int, device: torch.device) -> ZSN2NNet:
        rng = make_generator(derive_seed(self.config.seed, "zs-n2n-init"))
        return ZSN2NNet(channels, self.config.width, rng).to(device)

    def fit_and_apply(self, y: Tensor, memory_format: torch.memory_format = torch.channels_last
                      ) -> tuple[Tensor, Fit]:
        """Fit a fresh network to one noisy image y (1, C, H, W); return y − f(y) in [0, 1] and the Fit.

        The fit runs in channels_last (NHWC), as the project's other networks do: on a CPU oneDNN
        convolutions reorder NCHW tensors at every call (benchmarks/perf/bench_zs_n2n.py compares
        the two layouts); the same numbers up to float rounding."""
        cfg = self.config
        start = time.perf_counter()
        net = self.fresh_network(y.shape[1], y.device).to(memory_format=memory_format)
        y = y.contiguous(memory_format=memory_format)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        first = None
        for _ in range(cfg.iterations):
            loss = sum(zs_n2n_loss(net, y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if first is None:
                first = loss.detach()
        with torch.no_grad():
            out = (y - net(y)).clamp(0, 1).contiguous()
            final = float(sum(zs_n2n_loss(net, y)))  # a host read: the device has finished both
        return out, Fit(time.perf_counter() - start, cfg.iterations, float(first), final)

    def denoise(self, model, batch: NoisyBatch) -> Tensor:
        """Fit and apply a network per image of the batch: (N, C, H, W) → (N, C, H, W) in [0, 1]."""
        outputs = []
        with torch.inference_mode(False), torch.enable_grad():
            for image in batch.noisy:
                y = image[None].detach().clone().float()  # a normal tensor even if made in inference mode
                out, record = self.fit_and_apply(y)
                self.fits.append(record)
                outputs.append(out)
        return torch.cat(outputs).to(batch.noisy.dtype)

    def denoise_many(self, model, inputs: Sequence, device: torch.device) -> list[Tensor]:
        """Each evaluation input cropped back to its own height × width, then fitted and denoised."""
        outputs = []
        for item in inputs:
            h, w = int(item.height), int(item.width)
            crop = NoisyBatch(item.noisy.noisy[..., :h, :w].to(device), item.noisy.level)
            outputs.append(self.denoise(None, crop).float().cpu())
        return outputs

    def take_eval_logs(self) -> dict[str, float]:
        """Summary of the fits since the last call (then forgotten): mean seconds per image, images,
        iterations per image and the mean final loss; {} when nothing was fitted."""
        fits, self.fits = self.fits, []
        if not fits:
            return {}
        return {
            "seconds_per_image": math.fsum(f.seconds for f in fits) / len(fits),
            "images": float(len(fits)),
            "iterations": float(self.config.iterations),
            "final_loss": math.fsum(f.final_loss for f in fits) / len(fits),
        }
