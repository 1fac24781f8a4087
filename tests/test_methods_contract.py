"""Every registered method honours the Method contract, and each one builds the pair its paper says.

The variant list is generated from the registry: every `Literal` field of a method's config is
expanded (SSDN: sigma × covariance), so a new method or option is tested before anyone writes a
test for it. Pairs are checked against an independent draw of the same noise, N2V's loss against
a masked MSE by hand, and SSDN's loss and output against torch.distributions / torch.linalg.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal, get_args, get_origin

import pytest
import torch
from torch.distributions import MultivariateNormal

from n2n_core.errors import ConfigError
from n2n_core.methods import METHODS, Rngs, build_method, method_config
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator


def config_variants():
    """(id, config) for every method and every combination of its Literal-typed options.

    Training-free methods (CBM3D's profiles and colour spaces) keep their default options: the
    contract below has nothing to train for them.
    """
    out = []
    for name, (config_cls, method_cls) in METHODS.items():
        choices = {
            field: get_args(info.annotation)
            for field, info in config_cls.model_fields.items()
            if field != "name" and get_origin(info.annotation) is Literal and method_cls.trainable
        }
        for combo in itertools.product(*choices.values()):
            fields = dict(zip(choices, combo))
            label = "-".join([name, *map(str, combo)])
            out.append((label, method_config(name, **fields)))
    return out


VARIANTS = config_variants()
CASES = [
    pytest.param(config, style, id=f"{label}-{style}")
    for label, config in VARIANTS
    if METHODS[config.name][1].trainable  # training-free methods (noisy, cbm3d) have their own tests
    for style in (["gaussian25", "poisson30"] if config.name.startswith("ssdn") else ["gaussian25"])
]
INITIAL_LEVEL = math.log1p(math.exp(-4.0)) + 1e-3  # softplus(0 − 4) + 1e-3


def rngs(noise_seed: int = 10, method_seed: int = 20) -> Rngs:
    return Rngs(noise=make_generator(noise_seed), method=make_generator(method_seed))


def clean_batch(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    # kept away from 0 so Poisson inputs are not mostly zeros
    return 0.1 + 0.8 * torch.rand(n, 3, size, size, generator=make_generator(seed))


def make(config, style: str = "gaussian25"):
    method = build_method(config, parse_style(style))
    return method, method.build_model(make_generator(0))


def _reference_ssdn(config, style, raw, y, true_level):
    """Loss and posterior mean of METHODS.md §5 with torch.distributions / torch.linalg, float64.

    `raw` is the blind-spot network's output on `y`; the estimated level is its initial value.
    """
    out = raw.double()
    mu, f = out[:, :3], out[:, 3:]
    n, _, h, w = y.shape
    zero = torch.zeros_like(f[:, 0])
    if config.covariance == "full":
        u = torch.stack([f[:, 0], f[:, 1], f[:, 2], zero, f[:, 3], f[:, 4], zero, zero, f[:, 5]], -1)
        u = u.view(n, h, w, 3, 3)
        sigma_x = u @ u.transpose(-1, -2)
    else:
        sigma_x = torch.diag_embed(f.permute(0, 2, 3, 1) ** 2)
    estimated = config.sigma != "known"
    if estimated:
        s = torch.full((n,), INITIAL_LEVEL, dtype=torch.float64)  # z = 0 at init
    else:
        s = true_level.double()
    s = s.view(-1, 1, 1, 1)
    if style.startswith("gaussian"):
        noise_var = (s if estimated else s.clamp(min=1e-3)) ** 2 * torch.ones_like(mu)
    else:
        noise_var = mu.clamp(min=1e-3) * s if estimated else mu.clamp(min=1e-3) / s
    sigma_n = torch.diag_embed(noise_var.permute(0, 2, 3, 1))
    yy, mm = y.double().permute(0, 2, 3, 1), mu.permute(0, 2, 3, 1)
    nll = -MultivariateNormal(mm, covariance_matrix=sigma_x + sigma_n).log_prob(yy) - 1.5 * math.log(2 * math.pi)
    if estimated:
        nll = nll - 0.1 * noise_var.sqrt().mean(dim=1)
    eye = torch.eye(3, dtype=torch.float64)
    a = torch.linalg.inv(sigma_x + 1e-6 * eye)
    b = torch.linalg.inv(sigma_n + 1e-6 * eye)
    x_hat = torch.linalg.solve(a + b + 1e-6 * eye, (a @ mm[..., None] + b @ yy[..., None]))[..., 0]
    return nll.mean(), x_hat.permute(0, 3, 1, 2)


def test_registry_variants_cover_the_documented_ones():
    labels = {label for label, _ in VARIANTS}
    expected = {f"ssdn-{s}-{c}" for s in ("known", "constant", "per_image") for c in ("full", "diagonal")}
    assert expected | {"n2c", "n2n", "n2v", "ssdn-mu", "noisy"} <= labels


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize(("config", "style"), CASES)
def test_method_contract(config, style):
    method, model = make(config, style)
    clean = clean_batch()
    pair = method.training_pair(clean, rngs())
    assert pair.inputs.shape == clean.shape and pair.targets.shape == clean.shape

    is_ssdn = config.name == "ssdn"
    if is_ssdn:  # keep the network's raw outputs for the independent likelihood / posterior below
        raw = []
        model.net.register_forward_hook(lambda module, args, output: raw.append(output.detach()))
    out = method.loss(model, pair)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss), f"loss {out.loss}"
    out.loss.backward()

    named = dict(model.named_parameters())
    level_net_last = set()
    if getattr(model, "level_net", None) is not None:
        # the noise-level net's last layer is zero at init, so only it can get a gradient now
        level_net_last = {f"level_net.{n}" for n, _ in list(model.level_net.named_parameters())[-2:]}
    for name, p in named.items():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), name
        if name.startswith("level_net.") and name not in level_net_last:
            continue
        assert p.grad.abs().sum() > 0, f"gradient of {name} is identically zero"

    batch = parse_style(style).sample(clean, make_generator(3))
    with torch.no_grad():
        denoised = method.denoise(model.eval(), batch)
    assert denoised.shape == clean.shape and torch.isfinite(denoised).all()

    if is_ssdn:
        want_loss, _ = _reference_ssdn(config, style, raw[0], pair.inputs, pair.level)
        # float32 result of float64 algebra: 1e-6 relative still sees the 0.1·σn regulariser (~1e-5 here)
        assert float(out.loss.detach()) == pytest.approx(float(want_loss), rel=1e-6)
        _, want_x = _reference_ssdn(config, style, raw[-1], batch.noisy, batch.level)
        torch.testing.assert_close(denoised.double(), want_x, rtol=1e-4, atol=1e-5)
        if config.sigma != "known":
            assert float(out.logs["estimated_level"]) == pytest.approx(INITIAL_LEVEL, rel=1e-9)


@pytest.mark.parametrize("config", [c for _, c in VARIANTS if not METHODS[c.name][1].trainable],
                         ids=lambda c: c.name)
def test_training_free_methods_build_no_model(config):
    # their denoise is exercised by their own tests (test_cbm3d.py) and by the evaluator's
    _, model = make(config)
    assert model is None


# ----------------------------------------------------------------------------- training pairs


def test_every_method_sees_the_same_noisy_input_at_a_step():
    clean = clean_batch()
    noise = parse_style("gaussian25")
    independent = noise.sample(clean, make_generator(10)).noisy  # the first draw from the step's generator
    seen = {}
    for name in ("n2c", "n2n", "ssdn", "ssdn-mu"):
        method = build_method(method_config(name), noise)
        seen[name] = method.training_pair(clean, rngs()).inputs
    seen["n2v-target"] = build_method(method_config("n2v"), noise).training_pair(clean, rngs()).targets
    for name, noisy in seen.items():
        assert torch.equal(noisy, independent), name


def test_n2c_target_is_the_clean_crop():
    method, model = make(method_config("n2c"))
    clean = clean_batch()
    pair = method.training_pair(clean, rngs())
    assert torch.equal(pair.targets, clean)
    assert not torch.equal(pair.inputs, clean)
    with torch.no_grad():
        by_hand = ((model(pair.inputs) - clean) ** 2).mean()
        assert method.loss(model, pair).loss == pytest.approx(float(by_hand), rel=1e-6)


def test_n2n_target_is_a_second_independent_draw_of_the_same_clean():
    sigma = 25 / 255
    method, _ = make(method_config("n2n"))
    clean = clean_batch(n=4)
    pair = method.training_pair(clean, rngs())
    a, b = (pair.inputs - clean).flatten(), (pair.targets - clean).flatten()
    assert not torch.equal(pair.inputs, pair.targets)
    # same clean underneath: each residual is pure σ-noise (a different clean would blow this up)
    assert float(a.std()) == pytest.approx(sigma, rel=0.05)
    assert float(b.std()) == pytest.approx(sigma, rel=0.05)
    # independent: correlation ~ N(0, 1/√n), n = 12288 → |r| < 0.04 is > 4 standard deviations
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert abs(r) < 0.04


def test_n2n_target_draws_its_own_level_for_variable_styles():
    method, _ = make(method_config("n2n"), "gaussian5_50")
    clean = clean_batch(n=4)
    pair = method.training_pair(clean, rngs())
    std_in = (pair.inputs - clean).flatten(1).std(dim=1)
    std_tg = (pair.targets - clean).flatten(1).std(dim=1)
    # within one draw σ is per image (5..50)/255; the two draws must not share it
    assert ((std_in / std_tg - 1).abs() > 0.1).any(), (std_in, std_tg)
    assert ((std_in * 255 > 4) & (std_in * 255 < 52)).all()


def test_n2v_target_is_the_noisy_input_and_only_masked_entries_change():
    config = method_config("n2v", mask_percent=1.5, radius=5, allow_center=True)
    method, model = make(config)
    clean = clean_batch()
    pair = method.training_pair(clean, rngs())
    noisy = parse_style("gaussian25").sample(clean, make_generator(10)).noisy
    assert torch.equal(pair.targets, noisy), "N2V's target is the same noisy input, not a second draw"
    mask = pair.mask
    assert mask.shape == clean.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    changed = pair.inputs != pair.targets
    assert not (changed & (mask == 0)).any(), "an unmasked entry was modified"
    # box side round(√(100/1.5)) = 8 → 4×4 boxes per 32² channel, one masked entry each
    assert int(mask.sum()) == 2 * 3 * 16
    assert changed.sum() > 0.5 * mask.sum()  # replacements mostly differ (the centre may be picked)
    with torch.no_grad():
        pred = model(pair.inputs)
        by_hand = ((pred - noisy) ** 2)[mask.bool()].mean()
        assert float(method.loss(model, pair).loss) == pytest.approx(float(by_hand), rel=1e-6)


# ----------------------------------------------------------------------------- SSDN


@pytest.mark.parametrize("style", ["gaussian25", "poisson30"])
def test_ssdn_known_uses_the_true_level(style):
    method, model = make(method_config("ssdn", sigma="known"), style)
    clean = clean_batch(n=1)
    pair = method.training_pair(clean, rngs())
    true = 25 / 255 if style == "gaussian25" else 30.0
    assert torch.allclose(pair.level.double(), torch.full((1,), true, dtype=torch.float64))
    with torch.no_grad():
        loss = float(method.loss(model, pair).loss)
        wrong = type(pair)(pair.inputs, pair.targets, pair.mask, pair.level * 2)
        assert float(method.loss(model, wrong).loss) != pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize("sigma", ["constant", "per_image"])
def test_ssdn_estimated_level_ignores_the_true_level_and_starts_at_softplus_minus_4(sigma):
    method, model = make(method_config("ssdn", sigma=sigma))
    clean = clean_batch(n=1)
    pair = method.training_pair(clean, rngs())
    with torch.no_grad():
        out = method.loss(model, pair)
        other = type(pair)(pair.inputs, pair.targets, pair.mask, pair.level * 2)
        assert float(method.loss(model, other).loss) == float(out.loss)
        level = model.estimated_level(pair.inputs)
    assert torch.allclose(level.double(), torch.tensor(INITIAL_LEVEL, dtype=torch.float64), rtol=1e-12)
    assert float(out.logs["estimated_level"]) == pytest.approx(INITIAL_LEVEL, rel=1e-9)
    if sigma == "per_image":
        last = list(model.level_net.parameters())[-2:]
        assert all(torch.count_nonzero(p) == 0 for p in last), "noise-level net's last layer must start at zero"


# ----------------------------------------------------------------------------- refusals


def test_ssdn_constant_level_refuses_variable_styles_and_suggests_per_image():
    with pytest.raises(ConfigError, match="per_image") as err:
        build_method(method_config("ssdn", sigma="constant"), parse_style("gaussian5_50"))
    assert "gaussian5_50" in str(err.value)


@pytest.mark.parametrize(("name", "fields", "style"), [
    ("ssdn-mu", {}, "impulse50"),
    ("n2n", {}, "impulse0_100"),
    ("ssdn", {}, "impulse50"),
    ("ssdn", {"sigma": "constant"}, "impulse50"),
    ("ssdn", {"sigma": "per_image", "covariance": "diagonal"}, "impulse0_100"),
    ("ssdn", {"sigma": "per_image"}, "gaussian5_50"),
    ("ssdn", {"sigma": "per_image"}, "poisson5_50"),
    ("ssdn", {"sigma": "constant"}, "poisson30"),
])
def test_supported_pairings_are_accepted(name, fields, style):
    build_method(method_config(name, **fields), parse_style(style))
