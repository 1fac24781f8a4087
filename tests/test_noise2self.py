"""Noise2Self (n2n_core/methods/noise2self.py) against independent computations.

The grid and the interpolation are recomputed with explicit loops (the authors' pixel_grid_mask
and interpolate_mask written out per pixel), J-invariance is checked on a real U-Net both by
changing the masked values and with autograd, the phase sequence against the authors'
`Masker.mask(X, i)` rule at the trainer's step index, and the J-invariant inference per pixel.
The generic contract test (test_methods_contract.py) trains it.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from n2n_core.methods import Step, build_method, method_config
from n2n_core.methods.noise2self import grid_mask, grid_phase, interpolate_masked, masked_loss
from n2n_core.networks import UNet
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator

from method_checks import assert_in_grid, assert_refused

RING = {(-1, -1): 0.5, (-1, 0): 1.0, (-1, 1): 0.5, (0, -1): 1.0, (0, 1): 1.0, (1, -1): 0.5, (1, 0): 1.0, (1, 1): 0.5}


def gen(seed: int) -> torch.Generator:
    return make_generator(seed)


def method(style: str = "gaussian25", **fields):
    return build_method(method_config("n2self", **fields), parse_style(style))


def loop_mask(h: int, w: int, width: int, row_phase: int, col_phase: int) -> torch.Tensor:
    return torch.tensor([[float(i % width == row_phase and j % width == col_phase) for j in range(w)]
                         for i in range(h)])


# ----------------------------------------------------------------------------- the masker


@pytest.mark.parametrize(("width", "phase"), [(4, (0, 0)), (4, (3, 1)), (3, (2, 0)), (2, (1, 1))])
def test_grid_mask_matches_explicit_loops(width, phase):
    mask = grid_mask(11, 9, width, phase)
    assert mask.shape == (1, 1, 11, 9)
    assert torch.equal(mask[0, 0], loop_mask(11, 9, width, *phase))


@pytest.mark.parametrize("width", [2, 3, 4])
def test_phase_cycles_as_the_authors_masker_and_the_grids_tile_the_image(width):
    # Masker.mask(X, i): phasex = i % w picks the rows, phasey = (i // w) % w the columns
    seen = [grid_phase(i, width) for i in range(2 * width * width)]
    assert seen == [(i % width, (i // width) % width) for i in range(2 * width * width)]
    cover = sum(grid_mask(12, 12, width, p) for p in seen[: width * width])
    assert torch.equal(cover, torch.ones(1, 1, 12, 12)), "w² consecutive grids cover each pixel once"
    assert seen[width * width:] == seen[: width * width], "period w²"


def test_interpolation_matches_explicit_loops_with_zero_padding():
    noisy = torch.rand(2, 3, 9, 10, generator=gen(0), dtype=torch.float64)
    mask = grid_mask(9, 10, 3, (0, 2), dtype=torch.float64)
    out = interpolate_masked(noisy, mask)
    for b, c, i, j in itertools.product(range(2), range(3), range(9), range(10)):
        if mask[0, 0, i, j]:
            total = sum(weight * float(noisy[b, c, i + di, j + dj]) for (di, dj), weight in RING.items()
                        if 0 <= i + di < 9 and 0 <= j + dj < 10)
            assert float(out[b, c, i, j]) == pytest.approx(total / 6.0, rel=1e-12)
        else:
            assert out[b, c, i, j] == noisy[b, c, i, j]


def test_masked_input_and_the_output_on_the_mask_do_not_depend_on_the_masked_values():
    n2self = method()
    clean = 0.1 + 0.8 * torch.rand(2, 3, 32, 32, generator=gen(1))
    pair = n2self.training_pair(clean, Step(noise=gen(2), method=gen(3)))
    mask = pair.mask
    changed = torch.where(mask.bool(), torch.rand(pair.targets.shape, generator=gen(4)), pair.targets)
    assert (changed != pair.targets)[mask.bool()].all()
    again = interpolate_masked(changed, mask)
    assert torch.equal(again, pair.inputs), "the network input changed with the masked values"
    net = UNet(rng=gen(5)).eval()
    with torch.no_grad():
        assert torch.equal(net(again) * mask, net(pair.inputs) * mask)
    # with autograd: the prediction on J has no derivative with respect to the noisy values on J
    noisy = pair.targets.clone().requires_grad_(True)
    (net(interpolate_masked(noisy, mask)) * mask).sum().backward()
    assert torch.count_nonzero(noisy.grad[mask.bool()]) == 0
    assert torch.count_nonzero(noisy.grad[~mask.bool()]) > 0


def test_loss_is_the_masked_squared_error_averaged_over_all_entries():
    output = torch.rand(2, 3, 8, 8, generator=gen(6), dtype=torch.float64)
    noisy = torch.rand(2, 3, 8, 8, generator=gen(7), dtype=torch.float64)
    mask = grid_mask(8, 8, 4, (1, 2), dtype=torch.float64).expand_as(noisy)
    by_hand = sum(float(output[b, c, i, j] - noisy[b, c, i, j]) ** 2
                  for b, c, i, j in itertools.product(range(2), range(3), range(8), range(8))
                  if i % 4 == 1 and j % 4 == 2) / noisy.numel()
    assert float(masked_loss(output, noisy, mask)) == pytest.approx(by_hand, rel=1e-12)


def test_training_pairs_follow_the_phase_sequence_of_the_step_index():
    n2self = method(grid_width=3)
    clean = torch.rand(1, 3, 32, 32, generator=gen(9))
    for index in range(10):
        pair = n2self.training_pair(clean, Step(noise=gen(10), method=gen(11), index=index))
        row, col = index % 3, (index // 3) % 3
        assert torch.equal(pair.mask[0, 0], loop_mask(32, 32, 3, row, col)), index
        assert torch.equal(pair.targets, parse_style("gaussian25").sample(clean, gen(10)).noisy)


def test_j_invariant_inference_takes_each_pixel_from_the_pass_that_masked_it():
    n2self = method(grid_width=2, inference="j_invariant")
    net = UNet(rng=gen(12)).eval()
    batch = parse_style("gaussian25").sample(torch.rand(1, 3, 32, 32, generator=gen(13)), gen(14))
    with torch.no_grad():
        out = n2self.denoise(net, batch)
        passes = {(r, c): net(interpolate_masked(batch.noisy, loop_mask(32, 32, 2, r, c)[None, None]))
                  for r in range(2) for c in range(2)}
    for i, j in itertools.product(range(32), range(32)):
        torch.testing.assert_close(out[0, :, i, j], passes[(i % 2, j % 2)][0, :, i, j], rtol=0, atol=0)


# ----------------------------------------------------------------------------- noise styles, smoke


def test_gaussian_and_poisson_run_in_the_grid_and_impulse_is_refused_naming_methods_that_work():
    assert_in_grid("n2self", ("gaussian25", "gaussian5_50", "poisson30", "poisson5_50"))
    assert_refused("n2self", "impulse0_100", ("n2c", "n2n", "ssdn-mu", "ssdn (RGB)"))


def test_grid_width_one_is_refused():
    with pytest.raises(ValueError):  # every pixel masked: no unmasked neighbour to interpolate from
        method_config("n2self", grid_width=1)
