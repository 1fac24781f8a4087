"""Tests for the U-Net (docs/methods.md §3) and the blind-spot U-Net (§4): shapes, init, blind spot."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from n2n_core.networks import BlindSpotUNet, UNet

SIZE = 64  # the blind-spot autograd tests: big enough for 2-row deepest levels


def _seeded(cls, *args, seed: int = 0, dtype=torch.float32, **kwargs):
    net = cls(*args, rng=torch.Generator().manual_seed(seed), **kwargs)
    return net.to(dtype)


def _image(size: int = 32, n: int = 1, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- an independent, literal reading of docs/methods.md §3/§4 (pad, convolve same, crop) -------------


def _literal_body(body, x, conv3x3, pool):
    """The §3 table written out layer by layer, with the given conv and pool."""
    act = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
    conv = body.encoder  # conv0 .. conv6
    h = act(conv3x3(conv[1], act(conv3x3(conv[0], x))))
    skips = [x, pool(h)]  # the image, skip1
    for layer in conv[2:5]:  # conv2..conv4 → skip2..skip4
        skips.append(pool(act(conv3x3(layer, skips[-1]))))
    h = act(conv3x3(conv[6], pool(act(conv3x3(conv[5], skips[-1])))))  # conv5, pool, conv6
    for conv_a, conv_b in body.decoder:  # levels 5..1 take skip4 .. skip1, then the image
        h = torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skips.pop()], dim=1)
        h = act(conv3x3(conv_b, act(conv3x3(conv_a, h))))
    return h


def _same(conv, h):
    return F.conv2d(h, conv.weight, conv.bias, padding=1)


def _shift_down(h):
    """Pad one zero row on top, drop the last row."""
    return F.pad(h, (0, 0, 1, 0))[:, :, :-1]


def _upward(conv, h):
    """Pad one zero row on top, convolve 'same', drop the last row (§4 step 2)."""
    return F.conv2d(F.pad(h, (0, 0, 1, 0)), conv.weight, conv.bias, padding=1)[:, :, :-1]


def _literal_unet(net, x):
    return net.head(_literal_body(net.body, x, _same, lambda h: F.max_pool2d(h, 2)))


def _literal_blindspot(net, x):
    views = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    h = _literal_body(net.body, views, _upward, lambda t: F.max_pool2d(_shift_down(t), 2))
    h = _shift_down(h).chunk(4)
    return net.head(torch.cat([torch.rot90(v, -k, dims=(2, 3)) for k, v in enumerate(h)], dim=1))


@pytest.mark.parametrize(
    ("cls", "literal"), [(UNet, _literal_unet), (BlindSpotUNet, _literal_blindspot)]
)
def test_network_matches_literal_reading_of_methods(cls, literal):
    net = _seeded(cls)
    x = _image(SIZE, n=2 if cls is UNet else 1)
    with torch.no_grad():
        expected = literal(net, x)
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max())


# --- shapes, parameter count, input checks -------------------------------------------------------


@pytest.mark.parametrize("cls", [UNet, BlindSpotUNet])
@pytest.mark.parametrize(("n_out", "in_channels"), [(9, 3), (1, 1)])
def test_output_shape_is_input_size_with_n_out_channels(cls, n_out, in_channels):
    net = _seeded(cls, n_out=n_out, in_channels=in_channels)
    x = torch.rand(2, in_channels, 32, 32)
    with torch.no_grad():
        assert net(x).shape == (2, n_out, 32, 32)


def test_unet_accepts_non_square_multiples_of_32():
    with torch.no_grad():
        assert _seeded(UNet)(torch.rand(1, 3, 32, 64)).shape == (1, 3, 32, 64)


def _conv(c_in, c_out, k=3):
    return c_in * c_out * k * k + c_out


def test_parameter_counts_follow_the_channel_table():
    encoder = _conv(3, 48) + 6 * _conv(48, 48)
    decoder = (_conv(96, 96) + _conv(96, 96) + 3 * (_conv(144, 96) + _conv(96, 96))
               + _conv(99, 96) + _conv(96, 96))
    unet_head = 2 * _conv(96, 96, 1) + _conv(96, 3, 1)
    blind_head = _conv(384, 384, 1) + _conv(384, 96, 1) + _conv(96, 3, 1)
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(_seeded(UNet)) == encoder + decoder + unet_head
    assert count(_seeded(BlindSpotUNet)) == encoder + decoder + blind_head


@pytest.mark.parametrize("cls", [UNet, BlindSpotUNet])
@pytest.mark.parametrize("shape", [(1, 3, 48, 64), (1, 3, 64, 40), (3, 64, 64)])
def test_bad_input_shape_raises_value_error(cls, shape):
    with pytest.raises(ValueError, match=r"multiples of 32|\(N, C, H, W\)"):
        _seeded(cls)(torch.rand(shape))


def test_blindspot_rejects_non_square_input():
    with pytest.raises(ValueError, match="square"):
        _seeded(BlindSpotUNet)(torch.rand(1, 3, 32, 64))


# --- He init ------------------------------------------------------------------------------------


def test_he_init_std_is_gain_over_sqrt_fan_in():
    net = _seeded(UNet, n_out=64)
    conv1a = net.body.decoder[-1][0]  # 99·9 = 891 fan-in, 85 536 weights
    assert conv1a.weight.std().item() == pytest.approx(math.sqrt(2 / 891), rel=0.02)
    assert abs(conv1a.weight.mean().item()) < 0.02 * math.sqrt(2 / 891)
    last = net.head[-1]  # gain 1: std 1/√96, not √2/√96
    assert last.weight.std().item() == pytest.approx(1 / math.sqrt(96), rel=0.05)
    assert all(torch.all(m.bias == 0) for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_blindspot_head_uses_he_init_with_gain_one_last():
    net = _seeded(BlindSpotUNet, n_out=64)
    assert net.head[0].weight.std().item() == pytest.approx(math.sqrt(2 / 384), rel=0.02)
    assert net.head[-1].weight.std().item() == pytest.approx(1 / math.sqrt(96), rel=0.05)


@pytest.mark.parametrize("cls", [UNet, BlindSpotUNet])
def test_zero_init_last_gives_exactly_zero_output(cls):
    net = _seeded(cls, n_out=1, zero_init_last=True)
    with torch.no_grad():
        assert torch.count_nonzero(net(_image())) == 0
    assert net.head[0].weight.abs().sum() > 0  # only the last layer is zeroed


def test_init_draws_only_from_the_given_generator():
    before = torch.get_rng_state()
    first, second = _seeded(UNet, seed=5), _seeded(UNet, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(first.head[0].weight, _seeded(UNet, seed=6).head[0].weight)


# --- the blind spot -----------------------------------------------------------------------------


def _neighbours(i, j, size):
    cand = [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
    return [(a, b) for a, b in cand if 0 <= a < size and 0 <= b < size]


def test_blindspot_output_ignores_centre_pixel():
    net = _seeded(BlindSpotUNet, dtype=torch.float64)
    x = _image(SIZE, dtype=torch.float64).requires_grad_(True)
    out = net(x)
    for i, j in [(0, 0), (29, 17), (63, 41)]:  # corner, interior, bottom edge
        (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
        assert torch.all(grad[0, :, i, j] == 0), f"output at {(i, j)} sees its own input"
        for a, b in _neighbours(i, j, SIZE):
            assert torch.all(grad[0, :, a, b] != 0), f"output at {(i, j)} ignores {(a, b)}"


def test_unet_output_depends_on_centre_pixel():
    # the same check must fail for a network without a blind spot
    net = _seeded(UNet, dtype=torch.float64)
    x = _image(SIZE, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x)[0, :, 29, 17].sum(), x)
    assert torch.all(grad[0, :, 29, 17] != 0)


def _strict_half_plane(k, i, j, size):
    """Pixels strictly above (i, j) in the frame of torch.rot90(·, k), and the one right above."""
    rotated = torch.rot90(torch.arange(size * size).view(size, size), k, dims=(0, 1))
    row, col = (rotated == i * size + j).nonzero()[0].tolist()
    allowed = torch.zeros(size * size, dtype=torch.bool)
    allowed[rotated[:row].flatten()] = True
    above = divmod(rotated[row - 1, col].item(), size)
    return allowed.view(size, size), above


def test_each_feature_block_sees_its_own_strict_half_plane():
    size, (i, j) = 32, (13, 20)
    net = _seeded(BlindSpotUNet, dtype=torch.float64)
    x = _image(size, dtype=torch.float64).requires_grad_(True)
    features = net.features(x)  # (1, 384, S, S)
    for k in range(4):
        block = features[0, 96 * k:96 * (k + 1), i, j].sum()
        (grad,) = torch.autograd.grad(block, x, retain_graph=True)
        seen = grad[0].abs().sum(0) != 0  # (S, S)
        allowed, above = _strict_half_plane(k, i, j, size)
        assert not torch.any(seen & ~allowed), f"view {k} sees outside its half-plane"
        assert seen[above], f"view {k} ignores {above}, right above {(i, j)} in its frame"


def test_rotating_input_cycles_feature_blocks():
    # features(rot90(x)) block k == rot90(features(x) block k+1): exact bookkeeping of the views
    net = _seeded(BlindSpotUNet)
    x = _image(32)
    with torch.no_grad():
        plain = net.features(x).chunk(4, dim=1)
        turned = net.features(torch.rot90(x, 1, dims=(2, 3))).chunk(4, dim=1)
    for k in range(4):
        expected = torch.rot90(plain[(k + 1) % 4], 1, dims=(2, 3))
        torch.testing.assert_close(turned[k], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [UNet, BlindSpotUNet])
def test_channels_last_input_gives_same_output_and_layout(cls):
    net = _seeded(cls)
    x = _image()
    with torch.no_grad():
        expected = net(x)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
