"""PSNR conventions (docs/methods.md section 8) against skimage.metrics and hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from n2n_core.evaluation.psnr import psnr_float, psnr_uint8, quantize_uint8


def np_quantize(v: np.ndarray) -> np.ndarray:
    """The protocol's rule written independently in numpy: clip(floor(255·v + 0.5), 0, 255)."""
    return np.clip(np.floor(np.asarray(v, dtype=np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)


def skimage_psnr(a, b, data_range):
    with warnings.catch_warnings():  # skimage warns (divide by zero) for identical images
        warnings.simplefilter("ignore")
        return peak_signal_noise_ratio(a, b, data_range=data_range)


# ----------------------------------------------------------------------------- quantisation


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, 0),
        (1.0, 255),
        (-0.3, 0),  # clipped below
        (-1e-9, 0),
        (1.7, 255),  # clipped above
        (0.5 / 255, 1),  # half rounds up (round-half-even would give 0)
        (2.5 / 255, 3),  # half rounds up (round-half-even would give 2)
        (0.49 / 255, 0),
        (127.5 / 255, 128),
        (127.4999 / 255, 127),
        (254.5 / 255, 255),
        (254.49 / 255, 254),
        (255.49 / 255, 255),
        (0.5, 128),  # 127.5 rounds up
        (100 / 255, 100),  # values on the grid come back unchanged
    ],
)
def test_quantize_rule_on_hand_values(value, expected):
    out = quantize_uint8(torch.tensor([value], dtype=torch.float64))
    assert out.dtype == torch.uint8
    assert int(out[0]) == expected


def test_quantize_matches_independent_rule_on_random_values():
    v = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.4 - 0.2
    assert np.array_equal(quantize_uint8(v).numpy(), np_quantize(v.numpy()))
    v32 = v.float()  # float32 inputs are quantised from their exact value too
    assert np.array_equal(quantize_uint8(v32).numpy(), np_quantize(v32.numpy()))


def test_quantize_round_trips_the_uint8_grid():
    k = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(quantize_uint8(k.to(torch.float32) / 255.0), k)


# ----------------------------------------------------------------------------- psnr_uint8


@pytest.mark.parametrize("seed", range(5))
def test_psnr_uint8_matches_skimage_on_quantised_images(seed):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 256, (3, 37, 41), generator=g, dtype=torch.uint8)
    sigma = [0.01, 0.05, 0.1, 0.3, 0.6][seed]
    output = clean.double() / 255 + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    if sigma >= 0.1:  # precondition: these cases really exercise clipping on both sides
        assert (output < 0).any() and (output > 1).any()
    expected = skimage_psnr(np_quantize(clean.numpy() / 255.0), np_quantize(output.numpy()), 255)
    assert psnr_uint8(output, clean) == pytest.approx(expected, rel=1e-12)  # clean given as uint8
    assert psnr_uint8(output, clean.double() / 255) == pytest.approx(expected, rel=1e-12)  # or float
    assert psnr_uint8(output.float(), clean) == pytest.approx(
        skimage_psnr(clean.numpy(), np_quantize(output.float().numpy()), 255), rel=1e-12
    )


def test_psnr_uint8_is_symmetric_and_ignores_out_of_range_beyond_clipping():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(3, 16, 16, generator=g, dtype=torch.float64)
    b = torch.rand(3, 16, 16, generator=g, dtype=torch.float64)
    assert psnr_uint8(a, b) == pytest.approx(psnr_uint8(b, a), rel=1e-15)
    # values below 0 and above 1 clip to 0 and 255: pushing them further changes nothing
    c = a.clone()
    c[0, :4] = -0.5
    c[1, :4] = 1.5
    d = c.clone()
    d[0, :4] = -7.0
    d[1, :4] = 9.0
    assert psnr_uint8(c, b) == psnr_uint8(d, b)
    expected = skimage_psnr(np_quantize(b.numpy()), np_quantize(c.numpy()), 255)
    assert psnr_uint8(c, b) == pytest.approx(expected)


def test_psnr_uint8_edge_cases_by_hand():
    black = torch.zeros(3, 4, 4)
    white = torch.ones(3, 4, 4)
    assert psnr_uint8(black, white) == pytest.approx(0.0, abs=1e-12)  # MSE = 255²
    assert psnr_uint8(black, black) == math.inf
    assert psnr_uint8(black - 0.2, black) == math.inf  # clips to the same uint8 image
    # a difference smaller than half a level disappears in quantisation
    assert psnr_uint8(black + 0.49 / 255, black) == math.inf
    # one level off on one of 48 values: MSE = 1/48
    one = black.clone()
    one[0, 0, 0] = 1 / 255
    assert psnr_uint8(one, black) == pytest.approx(10 * math.log10(255**2 * 48), rel=1e-12)
    # a uniform error of 10 levels: PSNR = 20·log10(255/10)
    assert psnr_uint8(black + 10 / 255, black) == pytest.approx(20 * math.log10(25.5), rel=1e-12)
    # uint8 against uint8, no quantisation involved
    a = torch.tensor([[[0, 10], [20, 30]]], dtype=torch.uint8)
    b = torch.tensor([[[2, 10], [20, 26]]], dtype=torch.uint8)
    assert psnr_uint8(a, b) == pytest.approx(10 * math.log10(255**2 / ((4 + 16) / 4)), rel=1e-12)
    assert psnr_uint8(a, b) == pytest.approx(skimage_psnr(a.numpy(), b.numpy(), 255), rel=1e-12)


def test_psnr_uint8_differs_from_float_psnr():
    # the two conventions must not be confused (docs/methods.md §8): quantisation changes the number
    clean = torch.full((3, 32, 32), 100 / 255, dtype=torch.float64)
    output = clean + 0.3 / 255  # below half a level: float PSNR finite, uint8 PSNR infinite
    assert math.isfinite(psnr_float(output, clean)) and psnr_uint8(output, clean) == math.inf


# ----------------------------------------------------------------------------- psnr_float


@pytest.mark.parametrize("seed", range(4))
def test_psnr_float_matches_skimage_with_unit_range(seed):
    g = torch.Generator().manual_seed(100 + seed)
    clean = torch.rand(3, 29, 31, generator=g, dtype=torch.float64)
    sigma = [0.005, 0.04, 0.2, 0.5][seed]
    output = clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    expected = skimage_psnr(clean.numpy(), output.numpy(), 1.0)
    assert psnr_float(output, clean) == pytest.approx(expected, rel=1e-12)
    c32, o32 = clean.float(), output.float()
    expected32 = skimage_psnr(c32.numpy().astype(np.float64), o32.numpy().astype(np.float64), 1.0)
    assert psnr_float(o32, c32) == pytest.approx(expected32, rel=1e-9)


def test_psnr_float_by_hand():
    x = torch.zeros(3, 2, 2)
    assert psnr_float(x + 0.1, x) == pytest.approx(20.0, rel=1e-6)  # 10·log10(1 / 0.01)
    assert psnr_float(x, x) == math.inf
    assert psnr_float(x + 2.0, x) == pytest.approx(10 * math.log10(1 / 4), rel=1e-12)  # no clipping
