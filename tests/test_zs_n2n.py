"""Zero-Shot Noise2Noise: the down-samplers and losses against loops and hand computation, the
network against its description, per-image fitting (loss falls, shape, determinism, cost), and a run
through the evaluator and the harness's denoiser with no special case.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import save_png
from n2n_core.data.sets import ImageSet
from n2n_core.config import DataConfig, EvalConfig, TrainConfig
from n2n_core.errors import NoiseNotSupported
from n2n_core.evaluation.protocol import EvalInput, Evaluator
from n2n_core.methods import METHODS, build_method, method_config
from n2n_core.methods.zs_n2n import ZSN2NNet, pair_downsample, zs_n2n_loss
from n2n_core.noise import NoisyBatch, parse_style
from n2n_core.seeding import make_generator

FEW = 12  # iterations: the paper's 2000 are for the runner, not the tests


def zs(style: str = "gaussian25", **fields):
    return build_method(method_config("zs-n2n", **{"iterations": FEW, **fields}), parse_style(style))


def downsample_by_loops(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 2×2 cell (rows 2i, 2i+1; columns 2j, 2j+1): mean of the anti-diagonal pair (top-right,
    bottom-left) and of the diagonal pair (top-left, bottom-right)."""
    n, c, h, w = y.shape
    anti, diag = np.zeros((n, c, h // 2, w // 2)), np.zeros((n, c, h // 2, w // 2))
    for i in range(h // 2):
        for j in range(w // 2):
            anti[:, :, i, j] = (y[:, :, 2 * i, 2 * j + 1] + y[:, :, 2 * i + 1, 2 * j]) / 2
            diag[:, :, i, j] = (y[:, :, 2 * i, 2 * j] + y[:, :, 2 * i + 1, 2 * j + 1]) / 2
    return anti, diag


def noisy_image(size=32, seed=0, style="gaussian25"):
    clean = F.avg_pool2d(torch.rand(1, 3, size + 4, size + 4, generator=make_generator(seed)), 5, 1)
    return parse_style(style).sample(clean, make_generator(seed + 1))


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 3, 7, 9)])  # odd sides drop the last row/column
def test_pair_downsample_matches_explicit_loops(shape):
    y = torch.randn(*shape, generator=make_generator(0), dtype=torch.float64)
    d1, d2 = pair_downsample(y)
    want1, want2 = downsample_by_loops(y.numpy())
    np.testing.assert_allclose(d1.numpy(), want1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(d2.numpy(), want2, rtol=0, atol=1e-15)


def test_pair_downsample_equals_the_notebooks_two_strided_filters():
    y = torch.rand(1, 3, 10, 12, generator=make_generator(1), dtype=torch.float64)
    filters = {"anti": [[0, 0.5], [0.5, 0]], "diag": [[0.5, 0], [0, 0.5]]}
    convolved = [F.conv2d(y, torch.tensor(f, dtype=y.dtype).expand(3, 1, 2, 2), stride=2, groups=3)
                 for f in filters.values()]
    for got, want in zip(pair_downsample(y), convolved):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


def test_losses_equal_a_hand_computation():
    y = torch.rand(1, 3, 6, 8, generator=make_generator(2), dtype=torch.float64)
    f = lambda t: 0.3 * t**2 - 0.1  # noqa: E731  any map stands in for the network
    residual, consistency = zs_n2n_loss(f, y)
    a = y.numpy()
    d1, d2 = downsample_by_loops(a)
    g = lambda t: 0.3 * t**2 - 0.1  # noqa: E731
    den1, den2 = d1 - g(d1), d2 - g(d2)
    full1, full2 = downsample_by_loops(a - g(a))
    mean_sq = lambda u, v: float(np.mean((u - v) ** 2))  # noqa: E731
    assert float(residual) == pytest.approx((mean_sq(d1, den2) + mean_sq(d2, den1)) / 2, rel=1e-12)
    assert float(consistency) == pytest.approx((mean_sq(den1, full1) + mean_sq(den2, full2)) / 2, rel=1e-12)


def test_network_is_the_notebooks_three_convolutions():
    net = ZSN2NNet(3, 48, make_generator(0)).double()
    assert sum(p.numel() for p in net.parameters()) == (3 * 48 * 9 + 48) + (48 * 48 * 9 + 48) + (48 * 3 + 3)
    for conv in (net.conv1, net.conv2, net.conv3):  # PyTorch's default init: U(±1/√fan_in)
        bound = 1 / math.sqrt(conv.weight[0].numel())
        assert conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound
        assert conv.weight.abs().max() > 0.9 * bound
    y = torch.rand(1, 3, 9, 11, generator=make_generator(3), dtype=torch.float64)
    act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    h = act(F.conv2d(y, net.conv1.weight, net.conv1.bias, padding=1))
    h = act(F.conv2d(h, net.conv2.weight, net.conv2.bias, padding=1))
    with torch.no_grad():
        torch.testing.assert_close(net(y), F.conv2d(h, net.conv3.weight, net.conv3.bias))


# --- fitting ----------------------------------------------------------------------------------------


def test_fitting_lowers_the_loss_and_returns_the_input_shape():
    method = zs(iterations=30)
    batch = noisy_image(size=24)
    out = method.denoise(None, batch)
    assert out.shape == batch.noisy.shape and out.dtype == batch.noisy.dtype
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    (fit,) = method.fits
    assert fit.iterations == 30 and fit.final_loss < 0.8 * fit.first_loss, fit
    assert fit.seconds > 0


def test_the_channels_last_fit_equals_the_plain_nchw_one():
    # the layout is a speed choice: the fit in NCHW (the notebook's layout) gives the same image
    y = noisy_image(size=32, seed=3).noisy
    method = zs(iterations=20)
    nhwc, _ = method.fit_and_apply(y)
    nchw, _ = method.fit_and_apply(y, memory_format=torch.contiguous_format)
    assert nhwc.is_contiguous() and torch.allclose(nhwc, nchw, atol=1e-5)


def test_same_input_gives_the_same_output_and_each_image_is_fitted_alone():
    first = noisy_image(seed=4)
    second = noisy_image(seed=8)
    batch = NoisyBatch(torch.cat([first.noisy, second.noisy]), torch.cat([first.level, second.level]))
    one = zs().denoise(None, batch)
    again = zs()
    assert torch.equal(again.denoise(None, batch), one)
    assert torch.equal(again.denoise(None, first), one[:1])  # a batch is N separate fits
    assert not torch.equal(one[0], one[1])
    assert not torch.equal(zs(seed=1).denoise(None, first), one[:1])  # method.seed sets the start


def test_denoise_works_inside_inference_mode():
    # the base class scores under torch.inference_mode; fitting must still get gradients
    batch = noisy_image(size=16)
    with torch.inference_mode():
        noisy = batch.noisy.clone()
        out = zs().denoise(None, NoisyBatch(noisy, batch.level))
    assert torch.equal(out, zs().denoise(None, batch))


def test_cost_logs_summarise_the_fits_since_the_last_call():
    method = zs()
    assert method.take_eval_logs() == {}
    method.denoise(None, noisy_image(size=16))
    method.denoise(None, noisy_image(size=16, seed=3))
    seconds = [f.seconds for f in method.fits]
    logs = method.take_eval_logs()
    assert logs["images"] == 2 and logs["iterations"] == FEW
    assert logs["seconds_per_image"] == pytest.approx(sum(seconds) / 2)
    assert method.take_eval_logs() == {}


# --- the harness ------------------------------------------------------------------------------------


def check(name: str, style: str, channels: int = 3) -> None:
    METHODS[name].check(method_config(name), parse_style(style), TrainConfig(budget_images=8),
                        EvalConfig(), DataConfig(channels=channels))


def test_training_free_and_refuses_impulse_in_one_line():
    assert METHODS["zs-n2n"].trainable is False
    assert zs().build_model(make_generator(0)) is None
    for style in ("gaussian25", "poisson30", "gaussian5_50", "poisson5_50"):
        check("zs-n2n", style)
    check("zs-n2n", "gaussian25", channels=1)
    with pytest.raises(NoiseNotSupported) as err:
        check("zs-n2n", "impulse50")
    message = str(err.value)
    assert "\n" not in message and "impulse50" in message
    for name in ("n2c", "n2n", "ssdn-mu", "ssdn"):
        assert name in message
        check(name, "impulse50")  # each one named accepts the pairing (ssdn on RGB)


def test_paper_defaults():
    cfg = method_config("zs-n2n")
    assert (cfg.iterations, cfg.lr, cfg.lr_step, cfg.lr_gamma, cfg.width) == (2000, 1e-3, 1500, 0.5, 48)


def test_denoise_many_fits_the_image_without_the_evaluators_padding():
    clean = torch.rand(1, 3, 32, 32, generator=make_generator(5))
    noisy = parse_style("gaussian25").sample(clean, make_generator(6))
    item = EvalInput("img", 0, noisy, 20, 28)
    method = zs()
    (out,) = method.denoise_many(None, [item], torch.device("cpu"))
    assert out.shape == (1, 3, 20, 28)
    crop = NoisyBatch(noisy.noisy[..., :20, :28], noisy.level)
    assert torch.equal(out, zs().denoise(None, crop))


def test_scored_through_the_evaluator_and_the_harness_denoiser(tmp_path):
    from benchmarks.compose import compose_config
    from benchmarks.scoring import make_denoiser

    pixels = np.random.default_rng(0).integers(60, 200, (20, 28, 3), dtype=np.uint8)
    image_set = ImageSet("tiny", (save_png(tmp_path / "a.png", pixels),), (None,))
    cfg = compose_config("smoke", "zs-n2n", "gaussian25", [f"method.iterations={FEW}"])
    method = build_method(cfg.method, parse_style("gaussian25"))
    seen = []
    fit = method.fit_and_apply
    method.fit_and_apply = lambda y: seen.append(tuple(y.shape)) or fit(y)
    result = Evaluator(image_set, parse_style("gaussian25")).run(
        make_denoiser(method, None, torch.device("cpu"), cfg))
    assert seen == [(1, 3, 20, 28)]  # the image itself, not its 32² padded copy
    assert math.isfinite(result.psnr_mean) and result.n_evaluations == 1
    assert method.take_eval_logs()["images"] == 1


def test_greyscale_images_are_fitted_with_a_one_channel_network():
    clean = torch.rand(1, 1, 16, 16, generator=make_generator(11))
    batch = parse_style("gaussian25").sample(clean, make_generator(12))
    method = build_method(method_config("zs-n2n", iterations=FEW), parse_style("gaussian25"), channels=1)
    assert method.denoise(None, batch).shape == (1, 1, 16, 16)


def test_the_runner_fits_each_scored_image_once_and_times_the_scoring(tmp_path):
    # the example crop reuses the first scored output: a method that fits per image is not fitted
    # again for it; the scoring's wall time is kept for the table's caption
    import time

    from benchmarks import artefacts
    from benchmarks.compose import compose_config
    from benchmarks.training import TrainResult

    for i in range(2):
        pixels = np.random.default_rng(i).integers(60, 200, (24, 24, 3), dtype=np.uint8)
        save_png(tmp_path / "set" / f"{i}.png", pixels)
    cfg = compose_config("smoke", "zs-n2n", "gaussian25", [f"method.iterations={FEW}",
                         f'eval.sets=["folder:{tmp_path / "set"}"]', "eval.max_images=2"])
    method = build_method(cfg.method, parse_style("gaussian25"))
    fits = []
    fit = method.fit_and_apply
    method.fit_and_apply = lambda y: fits.append(1) or fit(y)
    out = tmp_path / "run"
    out.mkdir()
    started = time.perf_counter()
    logs = {}
    scores = artefacts.score_all(TrainResult(None, 0, 0, 0.0, None, method, cfg), out, tmp_path, progress=False,
                                 method_logs=logs)
    elapsed = time.perf_counter() - started
    (score,) = scores.values()
    assert len(fits) == score.n_evaluations == 2
    assert 0 < score.seconds <= elapsed
    (label,) = scores
    assert logs[label]["images"] == 2 and 0 < logs[label]["seconds_per_image"] <= score.seconds
    assert (out / f"crop-{next(iter(scores))}-denoised.png").exists()
