"""Noise2Void masking (docs/methods.md section 6): checked against independent recomputations.

The input is mostly arange(...) (distinct, exactly representable values), so every replaced value
names the flat index of the pixel it came from, and the source position can be recovered.
"""

from __future__ import annotations

import math

import pytest
import torch

from n2n_core.errors import ConfigError
from n2n_core.methods.n2v_masking import masked_mse, n2v_box_size, n2v_mask


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def arange_input(n: int, c: int, h: int, w: int, device: str = "cpu") -> torch.Tensor:
    return torch.arange(n * c * h * w, dtype=torch.float64, device=device).view(n, c, h, w)


def sources(noisy: torch.Tensor, inputs: torch.Tensor, mask: torch.Tensor):
    """For every masked entry of an arange input: (n, c, y, x) of the entry and of its source."""
    n, c, h, w = noisy.shape
    where = mask.nonzero(as_tuple=False)
    src = inputs[mask.bool()].long()
    replaced = inputs[mask.bool()]
    assert torch.equal(replaced, src.to(inputs.dtype)), "replacement is not an input value"
    assert ((src >= 0) & (src < noisy.numel())).all()
    sx = src % w
    sy = (src // w) % h
    sc = (src // (w * h)) % c
    sn = src // (w * h * c)
    return where, torch.stack([sn, sc, sy, sx], dim=1)


# ----------------------------------------------------------------------------- box geometry


def test_box_size_formula():
    assert n2v_box_size(0.2) == 22  # sqrt(500) = 22.36
    assert n2v_box_size(1.5) == 8  # sqrt(66.7) = 8.16
    assert n2v_box_size(0.198) == 22
    assert n2v_box_size(6.25) == 4
    assert n2v_box_size(100) == 1
    for bad in (0, -1, 101, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            n2v_box_size(bad)


def test_one_position_per_full_box_per_channel_and_image():
    n, c, h, w = 12, 3, 70, 53  # b = 22: full boxes 3 x 2, partial boxes on the right and bottom
    b = n2v_box_size(0.2)
    _, mask = n2v_mask(torch.rand(n, c, h, w, generator=gen(100)), gen(0), percent=0.2)
    assert mask.shape == (n, c, h, w) and mask.is_floating_point()
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    nby, nbx = math.ceil(h / b), math.ceil(w / b)
    padded = torch.zeros(n, c, nby * b, nbx * b)
    padded[:, :, :h, :w] = mask
    counts = padded.view(n, c, nby, b, nbx, b).sum(dim=(3, 5))  # (n, c, nby, nbx)
    full_y, full_x = h // b, w // b
    assert (counts[:, :, :full_y, :full_x] == 1).all(), "full box without exactly one position"
    assert counts.max() <= 1, "partial box with more than one position"
    assert counts.sum() == mask.sum()

def test_partial_boxes_are_not_oversampled():
    # Documented choice: offsets are drawn in the whole b x b box and dropped outside the image,
    # so every pixel (border rows included) is masked with probability exactly 1 / b^2.
    n, c, h, w = 3000, 1, 10, 10  # b = 4: boxes 4, 4, 2 along each axis
    _, mask = n2v_mask(torch.zeros(n, c, h, w), gen(7), percent=6.25, radius=1)
    rate = mask.mean(dim=(0, 1))  # per pixel, over 3000 draws; expectation 1/16
    se = math.sqrt((1 / 16) * (15 / 16) / n)
    assert (rate - 1 / 16).abs().max() < 6 * se
    # the last two rows/columns (partial boxes) have the same rate as the rest
    assert abs(rate[8:, :].mean() - 1 / 16) < 4 * se
    assert abs(rate[:, 8:].mean() - 1 / 16) < 4 * se


def test_masked_fraction_matches_percent():
    percent = 0.2
    b = n2v_box_size(percent)
    _, mask = n2v_mask(torch.zeros(4, 3, 256, 256), gen(3), percent=percent)
    frac = mask.mean().item()
    # within the rounding of b: between 1 / (s + 0.5)^2 and 1 / (s - 0.5)^2, s = sqrt(100 / p)
    s = math.sqrt(100 / percent)
    assert 1 / (s + 0.5) ** 2 < frac < 1 / (s - 0.5) ** 2
    assert abs(frac - percent / 100) < 0.1 * percent / 100
    # and close to the exact expectation 1/b^2 (256 = 11*22 + 14: partial boxes drop some)
    assert abs(frac - 1 / b**2) < 0.05 / b**2


# ----------------------------------------------------------------------------- independence


def test_channels_have_independent_masks():
    n, c, h, w = 32, 3, 64, 64  # b = 4, rate 1/16 per channel
    _, mask = n2v_mask(torch.zeros(n, c, h, w), gen(11), percent=6.25, radius=2)
    for i in range(n):
        assert not torch.equal(mask[i, 0], mask[i, 1])
        assert not torch.equal(mask[i, 1], mask[i, 2])
    m = mask.bool()
    total = n * h * w
    for a, bb in ((0, 1), (0, 2), (1, 2)):
        pa, pb = m[:, a].float().mean().item(), m[:, bb].float().mean().item()
        both = (m[:, a] & m[:, bb]).sum().item()
        expected = pa * pb * total
        assert abs(both - expected) < 5 * math.sqrt(expected), (a, bb, both, expected)
    # images too: different images of one batch get different masks
    assert not torch.equal(mask[0], mask[1])


# ----------------------------------------------------------------------------- replacement


@pytest.mark.parametrize("allow_center", [False, True])
def test_replacement_comes_from_window_same_channel(allow_center):
    n, c, h, w, r = 8, 3, 40, 37, 5
    noisy = arange_input(n, c, h, w)
    inputs, mask = n2v_mask(noisy, gen(5), percent=6.25, radius=r, allow_center=allow_center)
    where, src = sources(noisy, inputs, mask)
    assert len(where) > 0
    assert torch.equal(src[:, 0], where[:, 0]), "source from another image"
    assert torch.equal(src[:, 1], where[:, 1]), "source from another channel"
    dy = src[:, 2] - where[:, 2]
    dx = src[:, 3] - where[:, 3]
    assert dy.abs().max() <= r and dx.abs().max() <= r
    assert ((src[:, 2] >= 0) & (src[:, 2] < h) & (src[:, 3] >= 0) & (src[:, 3] < w)).all()
    if not allow_center:
        assert not ((dy == 0) & (dx == 0)).any(), "centre used with allow_center=False"


def test_unmasked_entries_unchanged_and_input_untouched():
    noisy = torch.randn(4, 3, 50, 50, generator=gen(1))
    before = noisy.clone()
    inputs, mask = n2v_mask(noisy, gen(2), percent=1.5)
    assert torch.equal(noisy, before), "n2v_mask modified its argument"
    assert torch.equal(inputs[mask == 0], noisy[mask == 0])
    assert inputs.shape == noisy.shape and inputs.dtype == noisy.dtype
    assert inputs.data_ptr() != noisy.data_ptr()


def test_sources_read_from_original_values():
    # percent = 100 masks every pixel; every replacement must still be an original neighbour value.
    noisy = arange_input(2, 2, 9, 9)
    inputs, mask = n2v_mask(noisy, gen(9), percent=100, radius=1)
    assert mask.all()
    where, src = sources(noisy, inputs, mask)
    d = (src[:, 2:] - where[:, 2:]).abs()
    assert d.max() <= 1 and (d.sum(dim=1) > 0).all()


def test_center_rate_when_allowed():
    n, c, h, w, r = 32, 3, 64, 64, 5
    noisy = arange_input(n, c, h, w)
    inputs, mask = n2v_mask(noisy, gen(21), percent=6.25, radius=r, allow_center=True)
    where, src = sources(noisy, inputs, mask)
    interior = (
        (where[:, 2] >= r) & (where[:, 2] < h - r) & (where[:, 3] >= r) & (where[:, 3] < w - r)
    )
    centre = (src[:, 2] == where[:, 2]) & (src[:, 3] == where[:, 3])
    k = interior.sum().item()
    hits = (centre & interior).sum().item()
    p = 1 / (2 * r + 1) ** 2
    assert abs(hits - k * p) < 5 * math.sqrt(k * p * (1 - p)), (hits, k * p)


def _chi_square(counts: torch.Tensor) -> float:
    counts = counts.double()
    expected = counts.sum() / counts.numel()
    return ((counts - expected) ** 2 / expected).sum().item()


@pytest.mark.parametrize("allow_center", [False, True])
def test_sources_uniform_over_interior_window(allow_center):
    n, c, h, w, r = 32, 3, 64, 64, 5
    noisy = arange_input(n, c, h, w)
    inputs, mask = n2v_mask(noisy, gen(31), percent=6.25, radius=r, allow_center=allow_center)
    where, src = sources(noisy, inputs, mask)
    interior = (
        (where[:, 2] >= r) & (where[:, 2] < h - r) & (where[:, 3] >= r) & (where[:, 3] < w - r)
    )
    dy = (src[:, 2] - where[:, 2])[interior] + r
    dx = (src[:, 3] - where[:, 3])[interior] + r
    side = 2 * r + 1
    counts = torch.bincount(dy * side + dx, minlength=side * side)
    centre = r * side + r
    if not allow_center:
        assert counts[centre] == 0
        counts = torch.cat([counts[:centre], counts[centre + 1 :]])
    dof = counts.numel() - 1
    # loose: chi-square with dof ~ 120 has sd ~ 15.5; reject only far tails
    assert _chi_square(counts) < dof + 6 * math.sqrt(2 * dof), _chi_square(counts)
    assert counts.min() > 0


@pytest.mark.parametrize("allow_center", [False, True])
def test_sources_uniform_over_cropped_window_at_corner(allow_center):
    # 4 x 4 image, r = 5: the cropped window of the corner pixel (0, 0) is the whole image.
    n, h, w = 2000, 4, 4
    noisy = arange_input(n, 1, h, w)
    inputs, mask = n2v_mask(noisy, gen(41), percent=100, radius=5, allow_center=allow_center)
    assert mask.all()
    src = inputs[:, 0, 0, 0].long() % (h * w)  # flat position within the image
    counts = torch.bincount(src, minlength=h * w)
    if not allow_center:
        assert counts[0] == 0
        counts = counts[1:]
    dof = counts.numel() - 1
    assert _chi_square(counts) < dof + 6 * math.sqrt(2 * dof), counts
    # and a border (non-corner) pixel with r = 1: window 3 x 2 cropped at the top edge
    inputs, _ = n2v_mask(noisy, gen(42), percent=100, radius=1, allow_center=allow_center)
    src = inputs[:, 0, 0, 1].long() % (h * w)
    allowed = {0, 1, 2, 4, 5, 6} - ({1} if not allow_center else set())
    assert set(src.unique().tolist()) == allowed
    counts = torch.bincount(src, minlength=h * w)[sorted(allowed)]
    assert _chi_square(counts) < (len(allowed) - 1) + 6 * math.sqrt(2 * (len(allowed) - 1))


# ----------------------------------------------------------------------------- determinism


def test_seed_determinism_and_no_global_rng():
    noisy = torch.rand(2, 3, 64, 64, generator=gen(0))
    state = torch.get_rng_state()
    a_in, a_mask = n2v_mask(noisy, gen(123))
    b_in, b_mask = n2v_mask(noisy, gen(123))
    c_in, c_mask = n2v_mask(noisy, gen(124))
    assert torch.equal(torch.get_rng_state(), state), "global RNG was used"
    assert torch.equal(a_in, b_in) and torch.equal(a_mask, b_mask)
    assert not torch.equal(a_mask, c_mask)
    # the generator advances: a second call with the same generator differs
    g = gen(5)
    _, m1 = n2v_mask(noisy, g)
    _, m2 = n2v_mask(noisy, g)
    assert not torch.equal(m1, m2)


def test_invalid_arguments():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ConfigError):
        n2v_mask(x, gen(0), percent=0)
    with pytest.raises(ConfigError):
        n2v_mask(x, gen(0), radius=0, allow_center=False)
    with pytest.raises(ConfigError):
        n2v_mask(x, gen(0), radius=-1, allow_center=True)
    with pytest.raises(ConfigError):
        n2v_mask(torch.zeros(8, 8), gen(0))
    with pytest.raises(ConfigError):
        n2v_mask(x, None)  # type: ignore[arg-type]
    # radius 0 with the centre allowed: the value is left as it is, but the loss is still taken
    inputs, mask = n2v_mask(x + 1, gen(0), percent=100, radius=0, allow_center=True)
    assert mask.all() and torch.equal(inputs, x + 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_properties():
    noisy = arange_input(4, 3, 64, 64, device="cuda")
    inputs, mask = n2v_mask(noisy, gen(1, "cuda"), percent=6.25, radius=5)
    assert inputs.is_cuda and mask.is_cuda
    where, src = sources(noisy.cpu(), inputs.cpu(), mask.cpu())
    assert torch.equal(src[:, :2], where[:, :2])
    d = src[:, 2:] - where[:, 2:]
    assert d.abs().max() <= 5 and (d.abs().sum(dim=1) > 0).all()
    again, mask2 = n2v_mask(noisy, gen(1, "cuda"), percent=6.25, radius=5)
    assert torch.equal(again, inputs) and torch.equal(mask2, mask)
    with pytest.raises(ConfigError):
        n2v_mask(noisy, gen(1, "cpu"))


# ----------------------------------------------------------------------------- loss


def test_masked_mse_manual():
    g = gen(8)
    pred = torch.randn(2, 3, 5, 6, generator=g, requires_grad=True)
    target = torch.randn(2, 3, 5, 6, generator=g)
    mask = (torch.rand(2, 3, 5, 6, generator=g) < 0.3).float()
    loss = masked_mse(pred, target, mask)
    sel = mask.bool()
    pairs = zip(pred.detach()[sel].tolist(), target[sel].tolist())
    manual = sum((float(p) - float(t)) ** 2 for p, t in pairs) / int(sel.sum())
    assert loss.item() == pytest.approx(manual, rel=1e-6)
    loss.backward()
    assert torch.equal(pred.grad[~sel], torch.zeros_like(pred.grad[~sel]))
    assert torch.allclose(pred.grad[sel], 2 * (pred.detach() - target)[sel] / sel.sum())


def test_masked_mse_empty_mask_is_zero_not_nan():
    pred = torch.randn(1, 1, 4, 4, requires_grad=True)
    loss = masked_mse(pred, torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad == 0).all()
    with pytest.raises(ConfigError):
        masked_mse(pred, torch.zeros(1, 1, 4, 5), torch.zeros(1, 1, 4, 4))


def test_end_to_end_with_n2v_mask():
    noisy = torch.rand(2, 3, 32, 32, generator=gen(0))
    inputs, mask = n2v_mask(noisy, gen(1), percent=1.5)
    pred = inputs  # identity "network": loss = mean over masked of (replacement - original)^2
    manual = ((inputs - noisy)[mask.bool()] ** 2).mean()
    assert masked_mse(pred, noisy, mask).item() == pytest.approx(manual.item(), rel=1e-6)
