"""SSDN's own checks: loss and posterior against torch.distributions / torch.linalg, the level.

The generic contract (tests/test_methods_contract.py) runs SSDN like every other method; here its
likelihood and output are compared with an independent float64 computation of docs/methods.md §5.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from benchmarks.compose import compose_config
from n2n_core.errors import ConfigError
from n2n_core.methods import Step, build_method, method_config
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator
from pydantic import ValidationError

INITIAL_LEVEL = math.log1p(math.exp(-4.0)) + 1e-3  # softplus(0 − 4) + 1e-3


def rngs(noise_seed: int = 10, method_seed: int = 20) -> Step:
    return Step(noise=make_generator(noise_seed), method=make_generator(method_seed))


def clean_batch(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    # kept away from 0 so Poisson inputs are not mostly zeros
    return 0.1 + 0.8 * torch.rand(n, 3, size, size, generator=make_generator(seed))


def make(config, style: str = "gaussian25"):
    method = build_method(config, parse_style(style))
    return method, method.build_model(make_generator(0))


def _reference_ssdn(config, style, raw, y, true_level):
    """Loss and posterior mean of docs/methods.md §5 with torch.distributions / torch.linalg, float64.

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



SSDN_CASES = [
    pytest.param(method_config("ssdn", sigma=s, covariance=c), style, id=f"{s}-{c}-{style}")
    for s, c in itertools.product(("known", "constant", "per_image"), ("full", "diagonal"))
    for style in ("gaussian25", "poisson30")
]


@pytest.mark.parametrize(("config", "style"), SSDN_CASES)
def test_ssdn_loss_and_posterior_match_an_independent_computation(config, style):
    method, model = make(config, style)
    clean = clean_batch()
    pair = method.training_pair(clean, rngs())
    raw = []
    model.net.register_forward_hook(lambda module, args, output: raw.append(output.detach()))
    out = method.loss(model, pair)
    batch = parse_style(style).sample(clean, make_generator(3))
    with torch.no_grad():
        denoised = method.denoise(model.eval(), batch)
    want_loss, _ = _reference_ssdn(config, style, raw[0], pair.inputs, pair.level)
    # float32 result of float64 algebra: 1e-6 relative still sees the 0.1·σn regulariser (~1e-5 here)
    assert float(out.loss.detach()) == pytest.approx(float(want_loss), rel=1e-6)
    _, want_x = _reference_ssdn(config, style, raw[-1], batch.noisy, batch.level)
    torch.testing.assert_close(denoised.double(), want_x, rtol=1e-4, atol=1e-5)
    if config.sigma != "known":
        assert float(out.logs["estimated_level"]) == pytest.approx(INITIAL_LEVEL, rel=1e-9)


def test_ssdn_noise_level_net_gets_gradient_only_in_its_zeroed_last_layer_at_init():
    method, model = make(method_config("ssdn", sigma="per_image"))
    method.loss(model, method.training_pair(clean_batch(), rngs())).loss.backward()
    last = {f"level_net.{n}" for n, _ in list(model.level_net.named_parameters())[-2:]}
    for name, p in model.named_parameters():
        if name.startswith("level_net.") and name not in last:
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, f"gradient of {name} is identically zero"


def test_ssdn_tiles_share_the_level_estimated_on_the_whole_image():
    """Per-image σ stays per image when scored in tiles (docs/methods.md §4): every tile gets the
    whole padded image's estimate, which is the level net's mean over the whole image."""
    from benchmarks.scoring import make_denoiser
    from n2n_core.evaluation.protocol import EvalInput

    cfg = compose_config("smoke", "ssdn-per-image", "gaussian5_50", ["train.patch_size=32"])
    method = build_method(cfg.method, parse_style(cfg.noise))
    model = method.build_model(make_generator(0)).eval()
    with torch.no_grad():  # a non-zero last layer, so the estimate depends on what the net sees
        list(model.level_net.parameters())[-2].normal_(0, 0.5, generator=make_generator(4))
    noisy = parse_style("gaussian5_50").sample(clean_batch(n=1, size=96), make_generator(5))
    used = []
    real = method.denoise
    method.denoise = lambda m, b: used.append(b.estimate.clone()) or real(m, b)
    make_denoiser(method, model, torch.device("cpu"), cfg)([EvalInput("a", 0, noisy, 96, 96)])
    whole = model.estimated_level(noisy.noisy)
    tiles = torch.cat(used)
    assert len(tiles) == 25 and torch.equal(tiles, whole.expand(len(tiles)))  # 5×5 tiles of 32 at stride 16
    per_tile = torch.stack([model.estimated_level(noisy.noisy[:, :, :32, :32])[0],
                            model.estimated_level(noisy.noisy[:, :, -32:, -32:])[0]])
    assert not torch.allclose(per_tile, whole.expand(2)), "the test must see tiles that differ"


def test_scoring_tiles_step_by_the_configured_fraction_of_the_crop():
    """eval.blindspot_stride=0.75 with 32² crops: tiles 24 px apart (0, 24, 48, 64 on a 96² image),
    the output stitched as denoise_tiled does at that stride, one tile per call."""
    from benchmarks.scoring import make_denoiser
    from n2n_core.evaluation.protocol import EvalInput
    from n2n_core.evaluation.tiling import denoise_tiled

    cfg = compose_config("smoke", "ssdn-known", "gaussian25", ["train.patch_size=32", "eval.blindspot_stride=0.75"])
    method = build_method(cfg.method, parse_style(cfg.noise))
    model = method.build_model(make_generator(0)).eval()
    noisy = parse_style("gaussian25").sample(clean_batch(n=1, size=96), make_generator(5))
    seen = []
    real = method.denoise
    method.denoise = lambda m, b: seen.append(len(b.noisy)) or real(m, b)
    out = make_denoiser(method, model, torch.device("cpu"), cfg)([EvalInput("a", 0, noisy, 96, 96)])[0]
    assert sum(seen) == 16, "4 × 4 tiles at stride 24"
    method.denoise = real
    with torch.inference_mode():
        want = denoise_tiled(lambda b: real(model, b), noisy, 32, stride=24, tiles_per_call=1)
    assert torch.allclose(out, want.float(), atol=1e-5)


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
    with pytest.raises((ConfigError, ValidationError), match="per_image") as err:
        compose_config("smoke", "ssdn-constant", "gaussian5_50")
    assert "gaussian5_50" in str(err.value)
