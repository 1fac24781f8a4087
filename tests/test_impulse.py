"""Impulse noise trained as the released SSDN code does (docs/methods.md §5b).

The annealed loss against its formula and autograd, and against a closed form: fitting one constant
to impulse-corrupted samples of a constant image through the real Trainer recovers the clean value
with the annealed schedule, and (1 − α)x + α/2 with L2. Which method uses which loss, SSDN's
impulse likelihood and posterior wired to the known or learned α, and the refusals, whose
messages may name only methods that really accept the pairing.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from n2n_core.config import DataConfig, EvalConfig, TrainConfig
from n2n_core.data.train_stream import CropStream
from n2n_core.errors import ConfigError
from n2n_core.methods import METHODS, Step, build_method, method_config
from n2n_core.methods import ssdn_math as sm
from n2n_core.methods.base import LossOutput
from n2n_core.methods.losses import annealed_exponent, annealed_l_loss, annealed_l_loss_grad
from n2n_core.methods.n2n import N2N
from n2n_core.noise import NoisyBatch, parse_style
from n2n_core.seeding import make_generator
from n2n_core.train.trainer import Trainer

IMPULSE50 = parse_style("impulse50")
INITIAL_LEVEL = math.log1p(math.exp(-4.0)) + 1e-3  # softplus(0 − 4) + 1e-3


def rngs(images_seen: int = 0, budget: int = 0) -> Step:
    return Step(noise=make_generator(10), method=make_generator(20), images_seen=images_seen,
                budget_images=budget)


def clean_batch(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return 0.1 + 0.8 * torch.rand(n, 3, size, size, generator=make_generator(seed))


# ----------------------------------------------------------------------------- the pure functions


@pytest.mark.parametrize(("seen", "budget", "expected"), [
    (0, 1000, 2.0), (250, 1000, 1.5), (500, 1000, 1.0), (600, 1000, 0.8), (750, 1000, 0.5),
    (900, 1000, 0.5), (1000, 1000, 0.5), (3, 0, 0.5), (3, None, 0.5),
])
def test_annealed_exponent_is_max_half_two_minus_two_n_over_budget(seen, budget, expected):
    assert annealed_exponent(seen, budget) == pytest.approx(expected, abs=1e-12)


def test_annealed_loss_and_its_gradient_match_the_formula_and_autograd():
    g = make_generator(0)
    pred = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)
    target[0, 0, 0, 0] = pred[0, 0, 0, 0]  # d = 0 stays finite thanks to the 1e-8
    for exponent in (2.0, 1.3, 0.5):
        by_hand = np.mean((np.abs(pred.numpy() - target.numpy()) + 1e-8) ** exponent)
        p = pred.clone().requires_grad_()
        loss = annealed_l_loss(p, target, exponent)
        assert float(loss.detach()) == pytest.approx(by_hand, rel=1e-12)
        loss.backward()
        np.testing.assert_allclose(annealed_l_loss_grad(pred, target, exponent).numpy(), p.grad.numpy(),
                                   rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------- the closed form


class Constant(nn.Module):
    """A 'network' that outputs one learned value everywhere."""

    def __init__(self):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.value.expand_as(x)


class L2N2N(N2N):
    """N2N with its loss replaced by L2: the ablation the released code warns about."""

    def loss(self, model, pair):
        return LossOutput(F.mse_loss(model(pair.inputs), pair.targets))


class Recording(N2N):
    """N2N that records the (images seen, budget, exponent) the trainer hands each step."""

    def __init__(self, config, noise):
        super().__init__(config, noise)
        self.seen: list[tuple[int, int, float]] = []

    def training_pair(self, clean, rngs):
        pair = super().training_pair(clean, rngs)
        self.seen.append((rngs.images_seen, rngs.budget_images, pair.exponent))
        return pair


def fit_constant(method, clean_value: int = 77, steps: int = 200, batch: int = 8) -> float:
    """Train a Constant through the real Trainer (its Adam and lr ramps) on impulse50 crops."""
    images = [torch.full((3, 32, 32), clean_value, dtype=torch.uint8)]
    stream = CropStream(images, patch_size=32, seed=0)
    cfg = TrainConfig(budget_images=steps * batch, batch_size=batch, patch_size=32, lr=0.01,
                      validation_images=0)
    model = Trainer(method, stream, cfg, seed=0, device=torch.device("cpu"), progress=False).fit(Constant())[0]
    return float(model.value.detach())


def test_constant_fit_with_the_annealed_loss_recovers_the_clean_value_and_l2_the_biased_mean():
    x, alpha = 77 / 255, 0.5
    annealed = fit_constant(N2N(method_config("n2n"), IMPULSE50))
    l2 = fit_constant(L2N2N(method_config("n2n"), IMPULSE50))
    # the two answers are 0.1 apart; Adam's last steps around the |d|^0.5 cusp leave ~5e-3
    assert annealed == pytest.approx(x, abs=0.01)
    assert l2 == pytest.approx((1 - alpha) * x + alpha / 2, abs=0.01)


def test_trainer_hands_each_step_images_seen_and_budget():
    method = Recording(method_config("n2n"), IMPULSE50)
    fit_constant(method, steps=10, batch=4)
    seen = method.seen
    assert [n for n, _, _ in seen] == [4 * i for i in range(10)]
    assert all(budget == 40 for _, budget, _ in seen)
    assert [e for _, _, e in seen] == pytest.approx([max(0.5, 2 - 2 * 4 * i / 40) for i in range(10)])


# ----------------------------------------------------------------------------- which loss where


def _constant_model_loss(method, pair, value=0.37):
    model = Constant()
    with torch.no_grad():
        model.value.fill_(value)
    return float(method.loss(model, pair).loss.detach()), value


@pytest.mark.parametrize("name", ["n2n", "ssdn-mu"])
def test_noisy_target_methods_use_the_annealed_loss_under_impulse_and_l2_otherwise(name):
    clean = clean_batch()
    method = build_method(method_config(name), IMPULSE50)
    pair = method.training_pair(clean, rngs(images_seen=300, budget=1000))
    assert pair.exponent == pytest.approx(1.4)
    loss, value = _constant_model_loss(method, pair)
    by_hand = np.mean((np.abs(value - pair.targets.numpy()) + 1e-8) ** 1.4)
    assert loss == pytest.approx(by_hand, rel=1e-5)

    gaussian = build_method(method_config(name), parse_style("gaussian25"))
    pair = gaussian.training_pair(clean, rngs(images_seen=300, budget=1000))
    loss, value = _constant_model_loss(gaussian, pair)
    assert loss == pytest.approx(float(((value - pair.targets) ** 2).mean()), rel=1e-5)


def test_n2c_keeps_l2_under_impulse_noise():
    method = build_method(method_config("n2c"), IMPULSE50)
    pair = method.training_pair(clean_batch(), rngs(images_seen=900, budget=1000))
    loss, value = _constant_model_loss(method, pair)
    assert loss == pytest.approx(float(((value - pair.targets) ** 2).mean()), rel=1e-5)


@pytest.mark.parametrize("network", ["strided", "scratch"])
def test_course_networks_follow_the_n2n_rule(network):
    clean = clean_batch()
    as_n2n = build_method(method_config("course", network=network, loss="l1"), IMPULSE50)
    as_n2c = build_method(method_config("course", network=network, target="n2c", loss="l1"), IMPULSE50)
    model = as_n2n.build_model(make_generator(0))
    pair = as_n2n.training_pair(clean, rngs(images_seen=100, budget=1000))
    with torch.no_grad():
        pred = as_n2n.denoise(model, NoisyBatch(pair.inputs, pair.level))
    annealed = as_n2n.loss(model, pair).loss
    assert float(annealed.detach()) == pytest.approx(float(annealed_l_loss(pred, pair.targets, 1.8)), rel=1e-5)
    clean_pair = as_n2c.training_pair(clean, rngs(images_seen=100, budget=1000))
    assert torch.equal(clean_pair.targets, clean)
    l1 = as_n2c.loss(model, clean_pair).loss
    assert float(l1) == pytest.approx(float((pred - clean).abs().mean()), rel=1e-5)
    if network == "scratch":  # the hand-written backward is the annealed loss's gradient
        annealed.backward()


# ----------------------------------------------------------------------------- SSDN


def _raw_outputs(model):
    raw = []
    model.net.register_forward_hook(lambda module, args, output: raw.append(output.detach()))
    return raw


@pytest.mark.parametrize(("sigma", "style", "covariance"), [
    ("known", "impulse50", "full"), ("known", "impulse0_100", "diagonal"),
    ("constant", "impulse50", "diagonal"), ("per_image", "impulse0_100", "full"),
])
def test_ssdn_impulse_loss_and_output_use_the_impulse_model(sigma, style, covariance):
    method = build_method(method_config("ssdn", sigma=sigma, covariance=covariance), parse_style(style))
    model = method.build_model(make_generator(0))
    raw = _raw_outputs(model)
    clean = clean_batch()
    pair = method.training_pair(clean, rngs())
    out = method.loss(model, pair)
    alpha = pair.level.double() if sigma == "known" else torch.full((2,), INITIAL_LEVEL, dtype=torch.float64)
    mu, factors = raw[0][:, :3], raw[0][:, 3:]
    sigma_x = sm.prior_covariance(factors, diagonal=covariance == "diagonal")
    want = sm.impulse_nll(pair.inputs, mu, sigma_x, alpha).mean()  # no level regulariser here
    assert float(out.loss) == pytest.approx(float(want), rel=1e-6)
    if sigma != "known":
        assert float(out.logs["estimated_level"]) == pytest.approx(INITIAL_LEVEL, rel=1e-9)
    batch = parse_style(style).sample(clean, make_generator(3))
    with torch.no_grad():
        denoised = method.denoise(model.eval(), batch)
    mu, factors = raw[-1][:, :3], raw[-1][:, 3:]
    sigma_x = sm.prior_covariance(factors, diagonal=covariance == "diagonal")
    a = batch.level.double() if sigma == "known" else alpha
    g = sm.impulse_prior_density(batch.noisy, mu, sigma_x)[:, None]
    a = a.view(-1, 1, 1, 1)
    expected = (a * mu.double() + (1 - a) * g * batch.noisy.double()) / (a + (1 - a) * g)
    torch.testing.assert_close(denoised.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "fields", "style"), [
    ("n2n", {}, "impulse50"), ("ssdn-mu", {}, "impulse0_100"), ("ssdn", {"sigma": "constant"}, "impulse50"),
])
def test_impulse_methods_decrease_their_loss_on_a_fixed_batch(name, fields, style):
    method = build_method(method_config(name, **fields), parse_style(style))
    model = method.build_model(make_generator(0))
    pair = method.training_pair(clean_batch(n=1), rngs(images_seen=900, budget=1000))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = method.loss(model, pair).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses


# ----------------------------------------------------------------------------- refusals


def test_n2v_and_cbm3d_refuse_impulse_naming_the_methods_that_model_it():
    for name in ("n2v", "cbm3d"):
        with pytest.raises(ConfigError) as err:  # configuration validation runs Method.check
            METHODS[name].check(method_config(name), IMPULSE50, TrainConfig(budget_images=8),
                                EvalConfig(), DataConfig())
        message = str(err.value)
        assert "\n" not in message and "impulse50" in message
        assert set(_named_methods(message)) - {name} == {"n2c", "n2n", "ssdn", "ssdn-mu"}, message


def _named_methods(message: str) -> list[str]:
    """Registry names in a message ('noisy' only as a method name would be, not the adjective)."""
    return [name for name, _ in _suggestions(message)]


def _suggestions(message: str) -> list[tuple[str, bool]]:
    """(method, rgb_only) for every registry name in a message; 'ssdn (RGB)' is scoped to RGB."""
    found = re.findall(r"([a-z0-9]+(?:-[a-z0-9]+)*)( \(rgb\))?", message.lower())
    return [(word, bool(scope)) for word, scope in found if word in METHODS and word != "noisy"]


def _check(name: str, fields: dict, style: str, channels: int) -> None:
    """What configuration validation asks of a method: its Method.check (raises ConfigError)."""
    METHODS[name].check(method_config(name, **fields), parse_style(style), TrainConfig(budget_images=8),
                        EvalConfig(), DataConfig(channels=channels))


def _builds(name: str, style: str, channels: int) -> bool:
    try:
        _check(name, {}, style, channels)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("style", ["gaussian25", "gaussian5_50", "poisson30", "impulse50", "impulse0_100"])
def test_every_refusal_names_only_methods_that_accept_the_pairing(style, channels):
    for name in METHODS:
        for fields in ({}, {"sigma": "constant"}, {"sigma": "per_image"}) if name == "ssdn" else ({},):
            try:
                _check(name, fields, style, channels)
            except ConfigError as err:
                message = str(err)
                assert "\n" not in message
                suggested = [(m, rgb) for m, rgb in _suggestions(message) if m != name]
                wrong = [m for m, rgb in suggested if not _builds(m, style, 3 if rgb else channels)]
                assert not wrong, f"{name} {fields} on {style}/{channels}: {message!r} names {wrong}"
