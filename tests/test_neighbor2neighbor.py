"""Neighbor2Neighbor (n2n_core/methods/neighbor2neighbor.py) against independent computations.

The sub-sampler's pixels are recomputed with explicit loops over cells, its 8 neighbour pairs from
the definition (ordered 4-adjacent pairs of a 2×2 cell), the loss and its gradient by hand for a
one-parameter network f(x) = a·x (so "f(y) without gradient" is visible in dL/da), and γ's ramp
from the step's images seen. The generic contract test (test_methods_contract.py) trains it.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from n2n_core.errors import ConfigError
from n2n_core.methods import Step, build_method, method_config
from n2n_core.methods.neighbor2neighbor import (
    NEIGHBOUR_PAIRS, cell_positions, draw_cells, pad_to_multiple, subsample, unet_on)
from n2n_core.networks import UNet
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator

from method_checks import assert_in_grid, assert_refused


def gen(seed: int) -> torch.Generator:
    return make_generator(seed)


class Scale(nn.Module):
    """f(x) = a·x: one parameter, pointwise (so padding cannot change it), gradient by hand."""

    def __init__(self, a: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, x):
        return self.a * x


def method(style: str = "gaussian25", **fields):
    return build_method(method_config("ne2ne", **fields), parse_style(style))


# ----------------------------------------------------------------------------- the sub-sampler


def test_the_8_pairs_are_the_ordered_4_adjacent_pairs_of_a_cell():
    coords = {p: divmod(p, 2) for p in range(4)}  # position → (row, column) in the cell
    adjacent = {(a, b) for a, b in itertools.permutations(range(4), 2)
                if abs(coords[a][0] - coords[b][0]) + abs(coords[a][1] - coords[b][1]) == 1}
    assert set(NEIGHBOUR_PAIRS) == adjacent and len(NEIGHBOUR_PAIRS) == 8


def test_subsampled_pixels_match_explicit_loops():
    n, c, h, w = 3, 3, 8, 6
    x = torch.randn(n, c, h, w, generator=gen(0))
    cells = draw_cells(n, h, w, gen(1), "cpu")
    first, second = cell_positions(cells)
    g1, g2 = subsample(x, first), subsample(x, second)
    assert g1.shape == g2.shape == (n, c, h // 2, w // 2)
    for b, i, j in itertools.product(range(n), range(h // 2), range(w // 2)):
        p, q = NEIGHBOUR_PAIRS[int(cells[b, i, j])]
        (r1, c1), (r2, c2) = (2 * i + p // 2, 2 * j + p % 2), (2 * i + q // 2, 2 * j + q % 2)
        assert abs(r1 - r2) + abs(c1 - c2) == 1, "the two pixels must be 4-adjacent and distinct"
        assert {r1, r2} <= {2 * i, 2 * i + 1} and {c1, c2} <= {2 * j, 2 * j + 1}, "inside the cell"
        for ch in range(c):  # one choice for the three channels
            assert g1[b, ch, i, j] == x[b, ch, r1, c1]
            assert g2[b, ch, i, j] == x[b, ch, r2, c2]


def test_choices_are_uniform_over_the_8_pairs_and_come_from_the_generator():
    cells = draw_cells(4, 200, 200, gen(2), "cpu")
    counts = torch.bincount(cells.flatten(), minlength=8).double()
    total = cells.numel()  # 40,000 cells
    expected = total / 8
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30, counts  # 7 degrees of freedom: P(χ² > 30) ≈ 1e-4
    assert torch.equal(cells, draw_cells(4, 200, 200, gen(2), "cpu"))
    assert not torch.equal(cells, draw_cells(4, 200, 200, gen(3), "cpu"))


def test_odd_crops_are_refused():
    with pytest.raises(ConfigError, match="even"):
        draw_cells(1, 33, 32, gen(0), "cpu")


def test_mirror_padding_matches_numpy_symmetric_and_the_output_is_cropped_back():
    x = torch.randn(2, 3, 16, 48, generator=gen(4))
    want = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 16), (0, 16)), mode="symmetric")
    assert torch.equal(pad_to_multiple(x), torch.from_numpy(want))
    net = UNet(rng=gen(5)).eval()
    with torch.no_grad():
        out = unet_on(net, x)
        assert out.shape == x.shape
        torch.testing.assert_close(out, net(torch.from_numpy(want))[..., :16, :48], rtol=0, atol=0)


# ----------------------------------------------------------------------------- the loss


def test_loss_and_its_gradient_match_the_formula_with_f_of_y_held_constant():
    ne2ne = method()
    clean = 0.2 + 0.6 * torch.rand(2, 3, 64, 64, generator=gen(6), dtype=torch.float64)
    pair = ne2ne.training_pair(clean, Step(noise=gen(7), method=gen(8)))
    pair = dataclasses.replace(pair, gamma=1.7)  # any γ: the formula is checked, the ramp has its own test
    y, cells = pair.inputs, pair.cells
    a = 0.8
    model = Scale(a)
    out = ne2ne.loss(model, pair)
    out.loss.backward()

    # by hand: gather the two sub-images with loops, then L = mean d² + γ mean (d − a(g1 − g2))²
    n, c, h, w = y.shape
    g1, g2 = torch.empty(n, c, h // 2, w // 2, dtype=y.dtype), torch.empty(n, c, h // 2, w // 2, dtype=y.dtype)
    for b, i, j in itertools.product(range(n), range(h // 2), range(w // 2)):
        p, q = NEIGHBOUR_PAIRS[int(cells[b, i, j])]
        g1[b, :, i, j] = y[b, :, 2 * i + p // 2, 2 * j + p % 2]
        g2[b, :, i, j] = y[b, :, 2 * i + q // 2, 2 * j + q % 2]
    diff = a * g1 - g2
    expected_diff = a * g1 - a * g2  # g1(f(y)) − g2(f(y)) with f pointwise
    want = (diff**2).mean() + 1.7 * ((diff - expected_diff) ** 2).mean()
    # dL/da with f(y) constant: only f(g1 y) = a·g1 carries a
    want_grad = 2 * (diff * g1).mean() + 2 * 1.7 * ((diff - expected_diff) * g1).mean()
    assert float(out.loss.detach()) == pytest.approx(float(want), rel=1e-12)
    assert float(model.a.grad) == pytest.approx(float(want_grad), rel=1e-12)
    assert float(out.logs["gamma"]) == pytest.approx(1.7)


def test_gamma_ramps_linearly_with_the_images_trained_on():
    ne2ne = method(gamma=2.0)
    clean = torch.rand(1, 3, 32, 32, generator=gen(9))
    for seen in (0, 4, 20, 36, 40):
        step = Step(noise=gen(10), method=gen(11), images_seen=seen, budget_images=40)
        assert ne2ne.training_pair(clean, step).gamma == pytest.approx(2.0 * seen / 40)


# ----------------------------------------------------------------------------- noise styles, smoke


def test_gaussian_and_poisson_run_in_the_grid_and_impulse_is_refused_naming_methods_that_work():
    assert_in_grid("ne2ne", ("gaussian25", "gaussian5_50", "poisson30", "poisson5_50"))
    assert_refused("ne2ne", "impulse50", ("n2c", "n2n", "ssdn-mu", "ssdn (RGB)"))
