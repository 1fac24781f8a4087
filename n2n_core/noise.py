"""Noise models of docs/methods.md §1: Gaussian, Poisson and impulse, fixed or drawn per image.

Every model is a frozen dataclass whose `sample(clean, rng)` returns the noisy batch *and* the level
it drew for each image. Nothing here clips, quantises or touches global random state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch
from torch import Tensor

from .errors import ConfigError

NoiseKind = Literal["gaussian", "poisson", "impulse"]


@dataclass(frozen=True)
class NoisyBatch:
    """A noisy batch, the per-image noise level that produced it, and what a method estimated
    once per whole image for every tile of it to share (Method.image_estimate; None: nothing)."""

    noisy: Tensor  # (N, C, H, W), never clipped, never quantised
    level: Tensor  # (N,) std in [0, 1] units (Gaussian), λ (Poisson) or replacement probability
    estimate: Tensor | None = None  # (N,) e.g. SSDN's per-image noise level, from the whole image

    def __iter__(self):  # allows `noisy, level = model.sample(...)`
        return iter((self.noisy, self.level))

    def to(self, device: torch.device | str) -> "NoisyBatch":
        estimate = None if self.estimate is None else self.estimate.to(device)
        return NoisyBatch(self.noisy.to(device), self.level.to(device), estimate)


class NoiseModel(Protocol):
    kind: ClassVar[NoiseKind]

    @property
    def style(self) -> str: ...

    @property
    def variable(self) -> bool: ...

    def sample(self, clean: Tensor, rng: torch.Generator) -> NoisyBatch: ...


def uniform_per_image(n: int, low: float, high: float, rng: torch.Generator, device) -> Tensor:
    """n values drawn from U(low, high) (all equal to low when low == high); float32, shape (n,)."""
    u = torch.rand(n, generator=rng, device=device)
    return low + (high - low) * u


def add_gaussian(clean: Tensor, sigma: Tensor, rng: torch.Generator) -> Tensor:
    """y = x + σ[n]·ε, ε ~ N(0, 1) i.i.d. per pixel and channel."""
    eps = torch.randn(clean.shape, generator=rng, device=clean.device, dtype=clean.dtype)
    return clean + sigma.to(clean.dtype).view(-1, 1, 1, 1) * eps


def add_poisson(clean: Tensor, lam: Tensor, rng: torch.Generator) -> Tensor:
    """y = Poisson(λ[n]·x) / λ[n] per pixel and channel (not (λx + Poisson(1))/λ: docs/methods.md §1)."""
    lam = lam.to(clean.dtype).view(-1, 1, 1, 1)
    return torch.poisson(lam * clean, generator=rng) / lam


def add_impulse(clean: Tensor, prob: Tensor, rng: torch.Generator) -> Tensor:
    """Replace a pixel (all 3 channels at once) with probability p[n] by independent U(0, 1) values."""
    n, c, h, w = clean.shape
    hit = torch.rand((n, 1, h, w), generator=rng, device=clean.device) < prob.view(-1, 1, 1, 1)
    replacement = torch.rand(clean.shape, generator=rng, device=clean.device, dtype=clean.dtype)
    return torch.where(hit, replacement, clean)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class _RangeNoise:
    """A noise family with a level drawn uniformly from [low, high] once per image."""

    low: float
    high: float
    prefix: ClassVar[str]
    scale: ClassVar[float]  # style number × scale = level in the model's own units

    @property
    def variable(self) -> bool:
        return self.high != self.low

    @property
    def style(self) -> str:
        lo, hi = self.low / self.scale, self.high / self.scale
        return f"{self.prefix}{_fmt(lo)}" + (f"_{_fmt(hi)}" if self.variable else "")

    def draw_level(self, n: int, rng: torch.Generator, device) -> Tensor:
        return uniform_per_image(n, self.low, self.high, rng, device)


@dataclass(frozen=True)
class GaussianNoise(_RangeNoise):
    """y = x + s·N(0, 1); s ~ U(low, high) per image, in [0, 1] units (gaussian25: s = 25/255)."""

    kind: ClassVar[NoiseKind] = "gaussian"
    prefix: ClassVar[str] = "gaussian"
    scale: ClassVar[float] = 1 / 255

    def sample(self, clean: Tensor, rng: torch.Generator) -> NoisyBatch:
        sigma = self.draw_level(len(clean), rng, clean.device)
        return NoisyBatch(add_gaussian(clean, sigma, rng), sigma)


@dataclass(frozen=True)
class PoissonNoise(_RangeNoise):
    """y = Poisson(λ·x)/λ; λ ~ U(low, high) per image (poisson30: λ = 30). Variance x/λ."""

    kind: ClassVar[NoiseKind] = "poisson"
    prefix: ClassVar[str] = "poisson"
    scale: ClassVar[float] = 1.0

    def sample(self, clean: Tensor, rng: torch.Generator) -> NoisyBatch:
        lam = self.draw_level(len(clean), rng, clean.device)
        return NoisyBatch(add_poisson(clean, lam, rng), lam)


@dataclass(frozen=True)
class ImpulseNoise(_RangeNoise):
    """Pixel replaced by U(0,1)³ with probability p ~ U(low, high) per image (impulse50: p = 0.5)."""

    kind: ClassVar[NoiseKind] = "impulse"
    prefix: ClassVar[str] = "impulse"
    scale: ClassVar[float] = 1 / 100

    def sample(self, clean: Tensor, rng: torch.Generator) -> NoisyBatch:
        prob = self.draw_level(len(clean), rng, clean.device)
        return NoisyBatch(add_impulse(clean, prob, rng), prob)


FAMILIES: dict[str, type[_RangeNoise]] = {
    "gaussian": GaussianNoise,
    "gauss": GaussianNoise,  # the original code's spelling
    "poisson": PoissonNoise,
    "impulse": ImpulseNoise,
}
STYLE_FORMS = (
    "gaussian25, gaussian5_50, poisson30, poisson5_50, impulse50, impulse0_100, "
    "or the general forms gaussianA, gaussianA_B, poissonA, poissonA_B, impulseA, impulseA_B "
    "(A < B; Gaussian in 0-255 units, Poisson λ, impulse percent; 'gauss' accepted for 'gaussian')"
)
_STYLE_RE = re.compile(r"^(gaussian|gauss|poisson|impulse)(\d+(?:\.\d+)?)(?:_(\d+(?:\.\d+)?))?$")


def parse_style(name: str) -> _RangeNoise:
    """Return the frozen noise model for a style string such as 'gaussian25' or 'poisson5_50'."""
    match = _STYLE_RE.match(str(name).strip().lower())
    if match is None:
        raise ConfigError(f"unknown noise style {name!r}; expected one of: {STYLE_FORMS}")
    family, a, b = match.group(1), float(match.group(2)), match.group(3)
    hi = float(b) if b is not None else a
    if b is not None and not a < hi:
        raise ConfigError(f"noise style {name!r}: the range {match.group(2)}_{b} must have A < B")
    if family == "poisson" and a <= 0:
        raise ConfigError(f"noise style {name!r}: Poisson λ must be > 0, e.g. poisson30")
    if family == "impulse" and hi > 100:
        raise ConfigError(f"noise style {name!r}: impulse probability is a percentage ≤ 100")
    cls = FAMILIES[family]
    return cls(a * cls.scale, hi * cls.scale)


def canonical_style(name: str) -> str:
    """'gauss25' → 'gaussian25' for a run's configuration; raises ConfigError for unknown styles and
    for a level of zero (no noise: every method would score an infinite PSNR on its own input).
    The noise models themselves accept a zero level (parse_style), which tests use for clean inputs."""
    model = parse_style(name)
    if not model.variable and model.low == 0 and model.kind != "poisson":
        prefix = FAMILIES[model.kind].prefix
        raise ConfigError(f"noise style {name!r} has a level of zero (no noise); use a level > 0, "
                          f"e.g. {prefix}25, or a range from 0 such as {prefix}0_50")
    return model.style
