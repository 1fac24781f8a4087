"""Recorrupted-to-Recorrupted (n2n_core/methods/r2r.py) against simulation and independent sums.

The input and target noise of the training pair are measured on many pixels: variances
(1 + α²)σ² and (1 + 1/α²)σ², correlation 0 (the paper's derivation). The inference average is
checked with a network that records what it is fed. The generic contract test trains it.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from n2n_core.methods import Step, build_method, method_config
from n2n_core.methods.r2r import recorrupted_noise_moments
from n2n_core.noise import NoisyBatch, parse_style
from n2n_core.seeding import make_generator

from method_checks import assert_in_grid, assert_refused


def gen(seed: int) -> torch.Generator:
    return make_generator(seed)


def method(style: str = "gaussian25", **fields):
    return build_method(method_config("r2r", **fields), parse_style(style))


class Recorder(nn.Module):
    """The identity, keeping a copy of every input it is given."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return x


# ----------------------------------------------------------------------------- the training pair


@pytest.mark.parametrize("alpha", [0.5, 1.0, 0.3])
def test_input_and_target_noise_are_uncorrelated_with_the_papers_variances(alpha):
    sigma = 25 / 255
    r2r = method(alpha=alpha)
    clean = 0.2 + 0.6 * torch.rand(8, 3, 64, 64, generator=gen(0), dtype=torch.float64)
    pair = r2r.training_pair(clean, Step(noise=gen(1), method=gen(2)))
    a, b = (pair.inputs - clean).flatten(), (pair.targets - clean).flatten()  # 98,304 entries
    var_in, var_target, cov = recorrupted_noise_moments(sigma, alpha)
    assert var_in == pytest.approx((1 + alpha**2) * sigma**2) and cov == 0.0
    n = a.numel()
    # a sample variance of n Gaussian values has relative standard error √(2/n) ≈ 0.0045
    assert float(a.var()) == pytest.approx(var_in, rel=5 * math.sqrt(2 / n))
    assert float(b.var()) == pytest.approx(var_target, rel=5 * math.sqrt(2 / n))
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert abs(r) < 5 / math.sqrt(n), r  # correlation 0: standard error 1/√n
    # the first draw is the step's noisy image, shared with every other method at this step
    noisy = parse_style("gaussian25").sample(clean, gen(1)).noisy
    torch.testing.assert_close((alpha * pair.targets + pair.inputs / alpha) / (alpha + 1 / alpha), noisy)


def test_variable_styles_recorrupt_each_image_at_its_own_level():
    r2r = method("gaussian5_50")
    clean = torch.full((6, 3, 64, 64), 0.5, dtype=torch.float64)
    pair = r2r.training_pair(clean, Step(noise=gen(3), method=gen(4)))
    sigma = pair.level.double()
    got = (pair.targets - pair.inputs).flatten(1).std(dim=1)  # (1/α + α)·σ·ε: std 2.5σ at α = 0.5
    torch.testing.assert_close(got, 2.5 * sigma, rtol=0.05, atol=0)
    assert float(sigma.max() / sigma.min()) > 1.2  # the images really have different levels


# ----------------------------------------------------------------------------- inference


def test_inference_averages_k_recorrupted_passes_at_the_known_level():
    r2r = method(alpha=0.5, inference_samples=40)
    sigma = torch.tensor([10 / 255, 40 / 255])
    noisy = torch.rand(2, 3, 64, 64, generator=gen(5))
    net = Recorder()
    out = r2r.denoise(net, NoisyBatch(noisy, sigma))
    assert len(net.seen) == 40
    torch.testing.assert_close(out, torch.stack(net.seen).mean(dim=0), rtol=1e-6, atol=1e-7)
    for image in range(2):
        deviations = torch.stack([x[image] - noisy[image] for x in net.seen])
        assert float(deviations.std()) == pytest.approx(0.5 * float(sigma[image]), rel=0.02)
    # the identity's average is y + ασ·mean(ε): its spread shrinks by √K
    spread = (out - noisy).flatten(1).std(dim=1)
    torch.testing.assert_close(spread, 0.5 * sigma / math.sqrt(40), rtol=0.05, atol=0)
    assert not torch.equal(net.seen[0], net.seen[1]), "every pass needs its own recorruption"
    again = r2r.denoise(Recorder(), NoisyBatch(noisy, sigma))
    assert torch.equal(out, again), "the same image must always get the same output"


# ----------------------------------------------------------------------------- noise styles, smoke


def test_gaussian_styles_run_in_the_grid_and_the_others_are_refused_naming_methods_that_work():
    assert_in_grid("r2r", ("gaussian25", "gaussian5_50"))
    for style in ("poisson30", "poisson5_50"):
        assert "gaussian" in assert_refused("r2r", style, ("n2n", "ssdn", "ne2ne", "n2self"))
    assert_refused("r2r", "impulse50", ("n2c", "n2n", "ssdn-mu", "ssdn (RGB)"))
