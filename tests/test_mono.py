"""Greyscale runs (the paper's "mono", eval ids 00180–00193): data.channels=1 end to end.

The conversion against numpy (the released code's `set_color_channels`), the scalar SSDN algebra
against its formulas and torch.distributions, one-channel networks and PSNR, the refusals, and a
tiny n2c and SSDN run through the real training and evaluation code on synthetic images.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torch.distributions import Normal

from benchmarks import artefacts, compose, training
from n2n_core.config import ExperimentConfig
from n2n_core.data.images import set_channels
from n2n_core.data.sets import resolve_set
from n2n_core.errors import ConfigError
from n2n_core.evaluation.psnr import psnr_uint8
from n2n_core.methods import build_method, method_config
from n2n_core.methods import ssdn_math as sm
from n2n_core.networks import BlindSpotUNet, UNet
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator

from conftest import save_png, synthetic_uint8

INITIAL_LEVEL = math.log1p(math.exp(-4.0)) + 1e-3


def _numpy_grey(rgb_hwc: np.ndarray) -> np.ndarray:
    """set_color_channels by hand: channel mean, rounded back to uint8, as (1, H, W)."""
    return np.round(rgb_hwc.astype(np.float64).mean(axis=2))[None].astype(np.uint8)


# ----------------------------------------------------------------------------- conversion


def test_set_channels_matches_numpy_mean_rounding_and_repeats_one_channel():
    rgb = synthetic_uint8(1, 7, 9, seed=3)[0]
    chw = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    grey = set_channels(chw, 1)
    assert grey.dtype == torch.uint8 and grey.shape == (1, 7, 9)
    np.testing.assert_array_equal(grey.numpy(), _numpy_grey(rgb))
    assert set_channels(chw, 3) is chw  # already the asked count: unchanged
    assert torch.equal(set_channels(grey, 3), grey.repeat(3, 1, 1))
    as_float = chw.double() / 255
    np.testing.assert_allclose(set_channels(as_float, 1).numpy(), (rgb / 255).mean(axis=2)[None], rtol=1e-12)
    with pytest.raises(ValueError, match="1 or 3"):
        set_channels(torch.zeros(4, 2, 2, dtype=torch.uint8), 1)


def test_folder_set_loads_greyscale_images_converted_like_numpy(tmp_path):
    arrays = synthetic_uint8(2, 12, 20, seed=5)
    for i, a in enumerate(arrays):
        save_png(tmp_path / f"img{i}.png", a)
    save_png(tmp_path / "zgrey.png", synthetic_uint8(1, 8, 8, seed=9, channels=1)[0])  # sorted last
    grey_set = resolve_set(f"folder:{tmp_path}", tmp_path, channels=1)
    loaded = grey_set.load()
    for a, image in zip(arrays, loaded):
        np.testing.assert_array_equal(image.numpy(), _numpy_grey(a))
    # a one-channel file stays its own values when one channel is asked, and is repeated for RGB
    grey_file = np.asarray(Image.open(tmp_path / "zgrey.png"))
    np.testing.assert_array_equal(loaded[2][0].numpy(), grey_file)
    rgb = resolve_set(f"folder:{tmp_path}", tmp_path).load()[2]
    assert rgb.shape == (3, 8, 8) and all(np.array_equal(rgb[c].numpy(), grey_file) for c in range(3))


def test_registered_set_in_greyscale(data_dir):
    image = resolve_set("kodak24", data_dir, channels=1).load()[0]
    rgb = np.asarray(Image.open(resolve_set("kodak24", data_dir).paths[0]).convert("RGB"))
    assert image.shape == (1, *rgb.shape[:2])
    np.testing.assert_array_equal(image.numpy(), _numpy_grey(rgb))


def test_course32_pairs_refuse_greyscale(tmp_path):
    with pytest.raises(ConfigError, match="data.channels=1"):
        resolve_set(f"course32:{tmp_path}", tmp_path, channels=1)


def test_psnr_uint8_on_one_channel_images_matches_numpy():
    g = make_generator(0)
    clean = torch.randint(0, 256, (1, 16, 12), generator=g, dtype=torch.uint8)
    out = clean.double() / 255 + 0.03 * torch.randn(1, 16, 12, generator=g, dtype=torch.float64)
    quantised = np.clip(np.floor(out.numpy() * 255 + 0.5), 0, 255)
    mse = np.mean((quantised - clean.numpy().astype(np.float64)) ** 2)
    assert psnr_uint8(out, clean) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)


# ----------------------------------------------------------------------------- configuration


def test_data_channels_is_set_validated_and_part_of_the_run_identity():
    rgb = compose.compose_config("smoke", "n2c", "gaussian25")
    mono = compose.compose_config("smoke", "n2c", "gaussian25", ["data.channels=1"])
    assert rgb.data.channels == 3 and mono.data.channels == 1
    assert json.loads(mono.canonical_json())["data"] == {"channels": 1}
    assert mono.config_hash() != rgb.config_hash()
    assert ExperimentConfig.model_validate_json(mono.canonical_json()) == mono
    with pytest.raises(ValidationError):
        compose.compose_config("smoke", "n2c", "gaussian25", ["data.channels=2"])


@pytest.mark.parametrize(("variant", "noise", "hint"), [
    ("cbm3d", "gaussian25", "bm3d_rgb"),
    ("course-strided", "gaussian25", "RGB images only"),
    ("ssdn-known", "impulse50", "NotImplementedError"),
])
def test_methods_without_a_greyscale_model_refuse_it_in_one_line(variant, noise, hint):
    with pytest.raises((ConfigError, ValidationError)) as err:
        compose.compose_config("smoke", variant, noise, ["data.channels=1"])
    message = str(err.value.errors()[0]["ctx"]["error"]) if isinstance(err.value, ValidationError) else str(err.value)
    assert hint in message and "\n" not in message and "data.channels" in message


# ----------------------------------------------------------------------------- networks


def test_one_channel_networks_concatenate_a_one_channel_image_and_keep_the_blind_spot():
    unet = UNet(n_out=1, in_channels=1, rng=make_generator(0))
    assert unet.body.decoder[-1][0].in_channels == 96 + 1
    assert unet(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="1-channel"):
        unet(torch.rand(1, 3, 32, 32))
    blind = BlindSpotUNet(n_out=2, in_channels=1, rng=make_generator(0))
    assert blind.body.decoder[-1][0].in_channels == 96 + 1
    x = torch.rand(1, 1, 32, 32, requires_grad=True)
    out = blind(x)
    assert out.shape == (1, 2, 32, 32)
    out[0, :, 13, 17].sum().backward()
    assert x.grad[0, 0, 13, 17] == 0 and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["n2c", "n2n", "n2v", "ssdn-mu"])
def test_plain_methods_output_one_channel(name):
    method = build_method(method_config(name), parse_style("gaussian25"), channels=1)
    model = method.build_model(make_generator(0))
    clean = torch.rand(1, 1, 32, 32, generator=make_generator(1))
    pair = method.training_pair(clean, _rngs())
    loss = method.loss(model, pair).loss
    assert loss.dim() == 0 and torch.isfinite(loss)
    with torch.no_grad():
        out = method.denoise(model, parse_style("gaussian25").sample(clean, make_generator(2)))
    assert out.shape == (1, 1, 32, 32)


def _rngs():
    from n2n_core.methods import Step

    return Step(noise=make_generator(10), method=make_generator(20))


# ----------------------------------------------------------------------------- SSDN algebra


def _mono_batch(seed: int):
    g = make_generator(seed)
    mu = torch.rand(2, 1, 3, 4, generator=g, dtype=torch.float64)
    y = mu + 0.2 * torch.randn(2, 1, 3, 4, generator=g, dtype=torch.float64)
    factor = 0.2 * torch.randn(2, 1, 3, 4, generator=g, dtype=torch.float64)
    noise_var = (0.02 + 0.1 * torch.rand(2, 1, 3, 4, generator=g, dtype=torch.float64)) ** 2
    return y, mu, factor, noise_var


def test_mono_loss_is_twice_the_gaussian_nll_minus_log_two_pi():
    y, mu, factor, noise_var = _mono_batch(0)
    var_x = sm.mono_prior_variance(factor)
    np.testing.assert_allclose(var_x.numpy(), factor.numpy() ** 2, rtol=1e-15)
    ours = sm.mono_nll(y, mu, var_x, noise_var)
    assert ours.shape == (2, 3, 4)
    sigma_y = var_x + noise_var
    by_hand = ((y - mu) ** 2 / sigma_y + torch.log(sigma_y))[:, 0]
    np.testing.assert_allclose(ours.numpy(), by_hand.numpy(), rtol=1e-12)
    # no ½: (y − μ)²/σy + log σy = −2 log N(y; μ, σy) − log 2π
    nll = -Normal(mu, sigma_y.sqrt()).log_prob(y)[:, 0]
    np.testing.assert_allclose(ours.numpy(), (2 * nll - math.log(2 * math.pi)).numpy(), rtol=1e-10, atol=1e-12)


def test_mono_posterior_mean_is_scalar_gaussian_conditioning():
    y, mu, factor, noise_var = _mono_batch(1)
    var_x = sm.mono_prior_variance(factor)
    conditioned = mu + var_x / (var_x + noise_var) * (y - mu)  # another form of the same answer
    np.testing.assert_allclose(sm.mono_posterior_mean(y, mu, var_x, noise_var).numpy(), conditioned.numpy(),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("sigma", "style", "covariance"), [
    ("known", "gaussian25", "full"), ("known", "poisson30", "diagonal"),
    ("constant", "gaussian25", "diagonal"), ("per_image", "poisson5_50", "full"),
])
def test_mono_ssdn_loss_and_output_follow_the_released_scalar_formulas(sigma, style, covariance):
    method = build_method(method_config("ssdn", sigma=sigma, covariance=covariance), parse_style(style),
                          channels=1)
    model = method.build_model(make_generator(0))
    assert model.net.head[-1].out_channels == 2  # one mean, one factor: full and diagonal alike
    raw = []
    model.net.register_forward_hook(lambda module, args, output: raw.append(output.detach().double()))
    clean = 0.1 + 0.8 * torch.rand(2, 1, 32, 32, generator=make_generator(1))
    pair = method.training_pair(clean, _rngs())
    out = method.loss(model, pair)

    def reference(y, level):
        mu, var_x = raw[-1][:, :1], raw[-1][:, 1:] ** 2
        estimated = sigma != "known"
        s = torch.full((2,), INITIAL_LEVEL, dtype=torch.float64) if estimated else level.double()
        s = s.view(-1, 1, 1, 1)
        if style.startswith("gaussian"):
            noise_var = (s if estimated else s.clamp(min=1e-3)) ** 2 * torch.ones_like(mu)
        else:
            noise_var = mu.clamp(min=1e-3) * s if estimated else mu.clamp(min=1e-3) / s
        y = y.double()
        sigma_y = var_x + noise_var
        loss = (y - mu) ** 2 / sigma_y + torch.log(sigma_y)
        if estimated:
            loss = loss - 0.1 * noise_var.sqrt()
        return loss.mean(), (y * var_x + mu * noise_var) / (var_x + noise_var)

    want_loss, _ = reference(pair.inputs, pair.level)
    assert float(out.loss.detach()) == pytest.approx(float(want_loss), rel=1e-6)
    batch = parse_style(style).sample(clean, make_generator(3))
    with torch.no_grad():
        denoised = method.denoise(model.eval(), batch)
    _, want_x = reference(batch.noisy, batch.level)
    assert denoised.shape == (2, 1, 32, 32)
    torch.testing.assert_close(denoised.double(), want_x, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def grey_folder(tmp_path):
    for i, a in enumerate(synthetic_uint8(3, 70, 80, seed=11)):
        save_png(tmp_path / "images" / f"img{i}.png", a)
    return tmp_path / "images"


@pytest.mark.parametrize("variant", ["n2c", "ssdn-known"])
def test_mono_run_trains_and_scores_end_to_end(variant, grey_folder, tmp_path):
    folder = f"folder:{grey_folder}"
    cfg = compose.compose_config("smoke", variant, "gaussian25", [
        "data.channels=1", f"train.train_set={folder}", f"train.validation_set={folder}",
        f"eval.sets=['{folder}']", "train.budget_images=4", "train.batch_size=2", "train.patch_size=32",
        "train.checkpoint_every_images=4", "train.validate_every_images=4", "train.validation_images=1",
        "eval.center_crop=32", "eval.max_images=1",
    ])
    out = tmp_path / "run"
    result = training.train(cfg, out, data_dir=tmp_path, progress=False)
    assert result.images_seen == 4
    assert json.loads((out / "config.json").read_text())["data"] == {"channels": 1}
    first_conv = result.model.body.encoder[0] if variant == "n2c" else result.model.net.body.encoder[0]
    assert first_conv.in_channels == 1
    scores = artefacts.score_all(result, out, tmp_path, progress=False)
    (score,) = scores.values()
    assert score.n_evaluations == 1 and math.isfinite(score.psnr_mean)
    with Image.open(next(out.glob("crop-*-denoised.png"))) as crop:
        assert crop.mode == "L"
