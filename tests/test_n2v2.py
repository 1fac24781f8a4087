"""N2V2: MaxBlurPool against explicit loops, the median replacement against np.median by loops,
the network's wiring against a literal reading, the default U-Net unchanged, refusals, a short fit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from n2n_core.config import DataConfig, EvalConfig, TrainConfig
from n2n_core.errors import ConfigError, NoiseNotSupported
from n2n_core.methods import METHODS, Step, build_method, method_config
from n2n_core.methods.n2v_masking import n2v_mask, n2v_median_mask
from n2n_core.networks import UNet
from n2n_core.networks.unet import max_blur_pool2x2
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator

KERNEL = np.outer([1, 2, 1], [1, 2, 1]) / 16.0


def blur_pool_by_loops(x: np.ndarray) -> np.ndarray:
    """juglab/n2v MaxBlurPool2D written out: 2×2 max at stride 1 ('SAME': the window is cut at the
    bottom/right border), then the [1,2,1]⊗[1,2,1]/16 blur at stride 2 ('SAME': zeros after)."""
    n, c, h, w = x.shape
    m = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            m[:, :, i, j] = x[:, :, i:i + 2, j:j + 2].max(axis=(2, 3))
    out = np.zeros((n, c, h // 2, w // 2))
    for i in range(h // 2):
        for j in range(w // 2):
            for a in range(3):
                for b in range(3):
                    r, s = 2 * i + a, 2 * j + b
                    if r < h and s < w:
                        out[:, :, i, j] += KERNEL[a, b] * m[:, :, r, s]
    return out


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_blur_pool_matches_explicit_loops(layout):
    x = torch.randn(2, 3, 8, 10, generator=make_generator(0), dtype=torch.float64)
    got = max_blur_pool2x2(x.contiguous(memory_format=layout))
    assert got.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(got.numpy(), blur_pool_by_loops(x.numpy()), rtol=0, atol=1e-12)


def test_blur_pool_of_a_constant_is_the_constant_inside_and_dimmed_at_the_far_border():
    # the code's zero padding after the last row/column: the bottom/right outputs lose a quarter
    out = max_blur_pool2x2(torch.ones(1, 1, 8, 8, dtype=torch.float64))[0, 0]
    assert torch.all(out[:-1, :-1] == 1)
    assert torch.all(out[-1, :-1] == 0.75) and torch.all(out[:-1, -1] == 0.75) and out[-1, -1] == 0.75**2


# --- the median replacement ------------------------------------------------------------------------


def test_median_replacement_equals_numpy_median_without_centre_by_loops():
    n, c, h, w, r = 2, 3, 23, 19, 5  # not multiples of the box: partial boxes and cut windows
    noisy = torch.randn(n, c, h, w, generator=make_generator(1), dtype=torch.float64)
    before = noisy.clone()
    inputs, mask = n2v_median_mask(noisy, make_generator(2), percent=6.25, radius=r)
    assert torch.equal(noisy, before)
    original = noisy.numpy()
    positions = mask.nonzero().tolist()
    assert len(positions) > 20
    for i, ch, y, x in positions:
        values = [original[i, ch, yy, xx]
                  for yy in range(max(0, y - r), min(h, y + r + 1))
                  for xx in range(max(0, x - r), min(w, x + r + 1))
                  if (yy, xx) != (y, x)]
        assert inputs[i, ch, y, x].item() == pytest.approx(float(np.median(values)), abs=1e-12)
    assert torch.equal(inputs[mask == 0], noisy[mask == 0])


def test_median_uses_the_same_positions_as_n2v():
    noisy = torch.rand(3, 3, 40, 40, generator=make_generator(3))
    _, mask_median = n2v_median_mask(noisy, make_generator(4), percent=1.5, radius=5)
    _, mask_n2v = n2v_mask(noisy, make_generator(4), percent=1.5, radius=5)
    assert torch.equal(mask_median, mask_n2v)


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values():
    # a 3×3 window (r = 1) in the corner keeps 3 neighbours; in an edge, 5; inside, 8 (even)
    noisy = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3) ** 2
    inputs, mask = n2v_median_mask(noisy, make_generator(0), percent=100, radius=1)
    assert mask.all()
    assert inputs[0, 0, 1, 1] == (9 + 25) / 2  # neighbours 0,1,4,9,25,36,49,64 → (9 + 25) / 2
    assert inputs[0, 0, 0, 0] == 9  # neighbours 1, 9, 16


def test_median_refuses_an_empty_window():
    with pytest.raises(ConfigError, match="radius"):
        n2v_median_mask(torch.rand(1, 1, 8, 8), make_generator(0), radius=0)


# --- the network -------------------------------------------------------------------------------------


def _literal_n2v2(net, x):
    """docs/methods.md §3's table with every pool replaced by the loop-checked blur pool and conv1a
    reading the upsampled features alone."""
    act = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
    conv = lambda layer, t: F.conv2d(t, layer.weight, layer.bias, padding=1)  # noqa: E731
    pool = max_blur_pool2x2
    enc = net.body.encoder
    h = act(conv(enc[1], act(conv(enc[0], x))))
    skips = [pool(h)]
    for layer in enc[2:5]:
        skips.append(pool(act(conv(layer, skips[-1]))))
    h = act(conv(enc[6], pool(act(conv(enc[5], skips[-1])))))
    for level, (conv_a, conv_b) in enumerate(net.body.decoder):
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        if level < 4:
            h = torch.cat([h, skips.pop()], dim=1)
        h = act(conv(conv_b, act(conv(conv_a, h))))
    return net.head(h)


def test_n2v2_network_matches_its_literal_reading():
    net = UNet(rng=make_generator(0), pool="blur", top_skip=False)
    assert net.body.decoder[-1][0].in_channels == 96  # no image concatenated before conv1a
    x = torch.rand(2, 3, 64, 64, generator=make_generator(1))
    with torch.no_grad():
        expected = _literal_n2v2(net, x)
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max())


def test_default_unet_is_unchanged_by_the_new_options():
    plain, explicit = UNet(rng=make_generator(5)), UNet(rng=make_generator(5), pool="max", top_skip=True)
    shapes = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in explicit.state_dict().items()}
    assert shapes["body.decoder.4.0.weight"] == (96, 99, 3, 3)  # docs/methods.md §3: 96 + the image
    n2v2 = UNet(rng=make_generator(5), pool="blur", top_skip=False).state_dict()
    assert n2v2.keys() == plain.state_dict().keys()
    assert tuple(n2v2["body.decoder.4.0.weight"].shape) == (96, 96, 3, 3)
    x = torch.rand(1, 3, 32, 32, generator=make_generator(6))
    with torch.no_grad():
        assert torch.equal(plain(x), explicit(x))


def test_unknown_pool_is_refused():
    with pytest.raises(ValueError, match="pool"):
        UNet(pool="average")


# --- the method ----------------------------------------------------------------------------------------


def test_n2v2_pair_is_the_median_masked_noisy_input_and_its_model_is_the_n2v2_unet():
    method = build_method(method_config("n2v2"), parse_style("gaussian25"))
    model = method.build_model(make_generator(0))
    assert model.body.pool is max_blur_pool2x2 and not model.body.top_skip
    clean = torch.rand(2, 3, 32, 32, generator=make_generator(7))
    pair = method.training_pair(clean, Step(noise=make_generator(10), method=make_generator(20)))
    noisy = parse_style("gaussian25").sample(clean, make_generator(10)).noisy
    assert torch.equal(pair.targets, noisy)
    want, want_mask = n2v_median_mask(noisy, make_generator(20), percent=1.5, radius=5)
    assert torch.equal(pair.inputs, want) and torch.equal(pair.mask, want_mask)


def check(name: str, style: str, channels: int = 3) -> None:
    METHODS[name].check(method_config(name), parse_style(style), TrainConfig(budget_images=8),
                        EvalConfig(), DataConfig(channels=channels))


def test_n2v2_refuses_impulse_noise_in_one_line_naming_methods_that_work():
    with pytest.raises(NoiseNotSupported) as err:
        check("n2v2", "impulse50")
    message = str(err.value)
    assert "\n" not in message and "impulse50" in message
    for name in ("n2c", "n2n", "ssdn-mu", "ssdn"):
        assert name in message
        check(name, "impulse50")  # each one named accepts the pairing (ssdn on RGB)
    for style in ("gaussian25", "poisson30", "gaussian5_50"):
        check("n2v2", style)
    check("n2v2", "gaussian25", channels=1)


def test_a_few_adam_steps_lower_the_n2v2_loss_on_a_fixed_batch():
    method = build_method(method_config("n2v2", mask_percent=6.25), parse_style("gaussian25"))
    model = method.build_model(make_generator(0))
    clean = F.avg_pool2d(torch.rand(2, 3, 36, 36, generator=make_generator(8)), 5, 1)  # smooth 32²
    pair = method.training_pair(clean, Step(noise=make_generator(1), method=make_generator(2)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(6):
        loss = method.loss(model, pair).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_n2v2_on_greyscale_images_builds_a_one_channel_network():
    method = build_method(method_config("n2v2"), parse_style("gaussian25"), channels=1)
    model = method.build_model(make_generator(0))
    x = torch.rand(1, 1, 32, 32, generator=make_generator(9))
    with torch.no_grad():
        assert method.denoise(model, parse_style("gaussian25").sample(x, make_generator(1))).shape == x.shape
