"""Noise models (docs/methods.md section 1): moments against the formulas, levels, seeds, parsing.

Expected levels are written here from the style table (Gaussian in 0-255 units / 255, Poisson λ,
impulse percent / 100), and every statistic is recomputed from the samples with torch/scipy, with
tolerances of about five standard errors (all draws are seeded, so nothing is flaky).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from scipy import stats

from n2n_core.errors import ConfigError
from n2n_core.noise import (
    STYLE_FORMS,
    GaussianNoise,
    ImpulseNoise,
    PoissonNoise,
    canonical_style,
    parse_style,
)

# style → (class, low, high) in the model's units, written from docs/methods.md §1 by hand
STYLES = {
    "gaussian25": (GaussianNoise, 25 / 255, 25 / 255),
    "gaussian5_50": (GaussianNoise, 5 / 255, 50 / 255),
    "gaussian10_20": (GaussianNoise, 10 / 255, 20 / 255),
    "poisson30": (PoissonNoise, 30.0, 30.0),
    "poisson5_50": (PoissonNoise, 5.0, 50.0),
    "poisson12": (PoissonNoise, 12.0, 12.0),
    "impulse50": (ImpulseNoise, 0.5, 0.5),
    "impulse0_100": (ImpulseNoise, 0.0, 1.0),
    "impulse20_30": (ImpulseNoise, 0.2, 0.3),
}
GAUSSIAN = [s for s, v in STYLES.items() if v[0] is GaussianNoise]
POISSON = [s for s, v in STYLES.items() if v[0] is PoissonNoise]
IMPULSE = [s for s, v in STYLES.items() if v[0] is ImpulseNoise]
VARIABLE = [s for s, v in STYLES.items() if v[1] != v[2]]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clean_batch(n: int, h: int = 32, w: int = 32, seed: int = 123) -> torch.Tensor:
    """Random clean images on the uint8 grid, x = k / 255 (as the data loader makes them)."""
    k = torch.randint(0, 256, (n, 3, h, w), generator=gen(seed))
    return k.to(torch.float32) / 255.0


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("style", list(STYLES))
def test_parse_style_levels_kind_and_name(style):
    cls, low, high = STYLES[style]
    model = parse_style(style)
    assert type(model) is cls
    assert model.low == pytest.approx(low, rel=1e-12, abs=1e-15)
    assert model.high == pytest.approx(high, rel=1e-12, abs=1e-15)
    assert model.variable == (low != high)
    assert model.kind == cls.__name__.removesuffix("Noise").lower()
    assert model.style == style
    assert canonical_style(style) == style


def test_models_are_frozen():
    model = parse_style("gaussian25")
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.low = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(("alias", "canonical"), [("gauss25", "gaussian25"), ("gauss5_50", "gaussian5_50")])
def test_gauss_spelling_is_an_alias(alias, canonical):
    assert parse_style(alias) == parse_style(canonical)
    assert canonical_style(alias) == canonical
    clean = clean_batch(2, 8, 8)
    a, b = parse_style(alias).sample(clean, gen(5)), parse_style(canonical).sample(clean, gen(5))
    assert torch.equal(a.noisy, b.noisy) and torch.equal(a.level, b.level)


@pytest.mark.parametrize("bad", ["gaus25", "gaussian", "speckle10", "poisson-3", "25", "", "gaussian25x"])
def test_unknown_style_raises_config_error_listing_valid_forms(bad):
    with pytest.raises(ConfigError) as info:
        parse_style(bad)
    message = str(info.value)
    assert repr(bad) in message
    for form in ("gaussian25", "gaussian5_50", "poisson30", "poisson5_50", "impulse50", "impulse0_100"):
        assert form in message
    assert STYLE_FORMS in message
    assert isinstance(info.value, ValueError)  # ConfigError is also a ValueError


@pytest.mark.parametrize("bad", ["gaussian50_5", "gaussian25_25", "poisson0", "poisson0_10", "poisson50_5",
                                 "impulse101", "impulse50_150", "impulse60_40"])
def test_bad_ranges_rejected(bad):
    with pytest.raises(ConfigError):
        parse_style(bad)


# ----------------------------------------------------------------------------- common contract


@pytest.mark.parametrize("style", list(STYLES))
def test_sample_shape_dtype_and_unpacking(style):
    clean = clean_batch(3, 8, 12)
    batch = parse_style(style).sample(clean, gen(0))
    noisy, level = batch  # NoisyBatch unpacks as a pair
    assert noisy is batch.noisy and level is batch.level
    assert noisy.shape == clean.shape and noisy.dtype == clean.dtype
    assert level.shape == (3,)


@pytest.mark.parametrize("style", list(STYLES))
def test_same_seed_same_draw_different_seed_different_draw(style):
    model = parse_style(style)
    clean = clean_batch(4, 16, 16)
    a, b, c = model.sample(clean, gen(7)), model.sample(clean, gen(7)), model.sample(clean, gen(8))
    assert torch.equal(a.noisy, b.noisy) and torch.equal(a.level, b.level)
    assert not torch.equal(a.noisy, c.noisy)
    if model.variable:
        assert not torch.equal(a.level, c.level)


@pytest.mark.parametrize("style", list(STYLES))
def test_sample_leaves_global_rng_untouched(style):
    clean = clean_batch(2, 8, 8)
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    parse_style(style).sample(clean, gen(0))
    assert torch.equal(before, torch.random.get_rng_state())
    # and the global state does not leak into the draw
    torch.manual_seed(99)
    again = parse_style(style).sample(clean, gen(0))
    torch.manual_seed(1234)
    assert torch.equal(again.noisy, parse_style(style).sample(clean, gen(0)).noisy)


@pytest.mark.parametrize("style", list(STYLES))
def test_sample_does_not_modify_clean(style):
    clean = clean_batch(2, 8, 8)
    copy = clean.clone()
    parse_style(style).sample(clean, gen(0))
    assert torch.equal(clean, copy)


@pytest.mark.parametrize("style", list(STYLES))
def test_level_within_range_and_fixed_for_fixed_styles(style):
    _, low, high = STYLES[style]
    level = parse_style(style).sample(clean_batch(200, 1, 1), gen(3)).level.double()
    tol = 1e-6 * max(1.0, high)  # levels are float32
    assert (level >= low - tol).all() and (level <= high + tol).all()
    if low == high:
        assert torch.allclose(level, torch.full_like(level, low), rtol=1e-6, atol=0)


@pytest.mark.parametrize("style", VARIABLE)
def test_variable_level_is_uniform_per_image(style):
    _, low, high = STYLES[style]
    level = parse_style(style).sample(clean_batch(4000, 1, 1), gen(11)).level.double().numpy()
    assert stats.kstest(level, stats.uniform(loc=low, scale=high - low).cdf).pvalue > 1e-3
    assert len(set(level.tolist())) > 3900  # continuous, drawn per image


# ----------------------------------------------------------------------------- Gaussian


@pytest.mark.parametrize("style", GAUSSIAN)
def test_gaussian_residual_is_level_times_standard_normal(style):
    clean = clean_batch(64)
    noisy, level = parse_style(style).sample(clean, gen(1))
    z = ((noisy.double() - clean.double()) / level.double().view(-1, 1, 1, 1))  # should be N(0, 1)
    per_pixel = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(per_pixel)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / per_pixel)
    # per image: variance of the residual is level², using the level sample() returned
    per_image_var = (noisy.double() - clean.double()).flatten(1).var(dim=1)
    n_image = z[0].numel()
    rel = per_image_var / level.double() ** 2
    assert ((rel - 1).abs() < 5 * math.sqrt(2 / n_image)).all()
    # independent across pixels and channels: neighbouring residuals are uncorrelated
    corr_x = (z[..., 1:] * z[..., :-1]).mean().item()
    corr_c = (z[:, 1:] * z[:, :-1]).mean().item()
    assert abs(corr_x) < 5 / math.sqrt(per_pixel) and abs(corr_c) < 5 / math.sqrt(per_pixel)
    assert stats.kstest(z.flatten().numpy()[:20000], "norm").pvalue > 1e-3


def test_gaussian_is_not_clipped_nor_quantised():
    clean = torch.zeros(2, 3, 32, 32)
    clean[1] = 1.0  # a black and a white image
    noisy = parse_style("gaussian50").sample(clean, gen(2)).noisy
    assert (noisy[0] < 0).float().mean() > 0.4  # about half of the black image goes negative
    assert (noisy[1] > 1).float().mean() > 0.4
    on_grid = torch.isclose(noisy * 255, torch.round(noisy * 255), atol=1e-4)
    assert on_grid.float().mean() < 0.01


def test_gaussian_zero_sigma_returns_clean_exactly():
    clean = clean_batch(2, 8, 8)
    noisy, level = parse_style("gaussian0").sample(clean, gen(0))
    assert torch.equal(noisy, clean)
    assert torch.equal(level, torch.zeros(2))


# ----------------------------------------------------------------------------- Poisson


def _poisson_clean(n: int) -> torch.Tensor:
    """Each image holds three constant thirds, x = 0.1, 0.5, 0.9 (rows 0-9, 10-19, 20-29)."""
    clean = torch.empty(n, 3, 30, 30)
    for i, x in enumerate((0.1, 0.5, 0.9)):
        clean[:, :, 10 * i : 10 * (i + 1)] = x
    return clean


@pytest.mark.parametrize("style", POISSON)
def test_poisson_counts_mean_and_variance(style):
    n = 64
    clean = _poisson_clean(n)
    noisy, lam = parse_style(style).sample(clean, gen(4))
    lam64 = lam.double().view(-1, 1, 1, 1)
    counts = noisy.double() * lam64
    # y·λ is an integer count: y = Poisson(λx)/λ, with the λ that sample() returned
    assert torch.allclose(counts, counts.round(), atol=1e-3 * max(1.0, float(lam.max())))
    assert (noisy >= 0).all()
    for i, x in enumerate((0.1, 0.5, 0.9)):
        y = noisy[:, :, 10 * i : 10 * (i + 1)].double().flatten(1)  # (n, 300)
        m = y.shape[1]
        # per image: E[y] = x and Var[y] = x / λ
        expected_var = x / lam.double()
        assert ((y.mean(1) - x).abs() < 5 * (expected_var / m).sqrt()).all()
        # the sample variance of a Poisson/λ has relative SE ≈ sqrt(2/m + 1/(λ x m))
        rel_se = (2 / m + 1 / (lam.double() * x * m)).sqrt()
        assert ((y.var(1) / expected_var - 1).abs() < 5 * rel_se).all()
        # pooled: unbiased everywhere (the (λx + Poisson(1))/λ bug would add 1/λ)
        pooled_se = math.sqrt(float((expected_var / m).sum())) / n
        assert abs(y.mean().item() - x) < 5 * pooled_se


def test_poisson_zero_image_stays_exactly_zero():
    # Poisson(λ·0) = 0; the known bug (λx + Poisson(1))/λ would give positive values
    noisy, lam = parse_style("poisson5_50").sample(torch.zeros(8, 3, 16, 16), gen(0))
    assert torch.equal(noisy, torch.zeros_like(noisy))
    assert (lam >= 5).all()


def test_poisson_counts_follow_poisson_pmf():
    lam = 30.0
    clean = torch.full((16, 3, 32, 32), 0.2)  # λx = 6
    noisy, level = parse_style("poisson30").sample(clean, gen(9))
    counts = (noisy.double() * level.double().view(-1, 1, 1, 1)).round().long().flatten()
    observed = torch.bincount(counts, minlength=30)[:16].double().numpy()
    expected = stats.poisson(lam * 0.2).pmf(range(16)) * counts.numel()
    keep = expected > 20
    chi2 = (((observed - expected) ** 2) / expected)[keep].sum()
    assert stats.chi2(keep.sum() - 1).sf(chi2) > 1e-3


# ----------------------------------------------------------------------------- impulse


@pytest.mark.parametrize("style", IMPULSE)
def test_impulse_replacement_rate_shared_channels_and_uniform_values(style):
    n = 64
    clean = torch.full((n, 3, 32, 32), 0.25)
    clean[:, 1] = 0.75  # channels differ, so a replaced channel is visible
    noisy, prob = parse_style(style).sample(clean, gen(6))
    replaced = noisy != clean  # (n, 3, H, W); U(0,1) hits 0.25/0.75 exactly with probability ~2^-24
    # the decision is shared by the three channels of a pixel
    assert torch.equal(replaced[:, 0], replaced[:, 1]) and torch.equal(replaced[:, 0], replaced[:, 2])
    hit = replaced[:, 0].flatten(1).double()  # (n, H·W)
    m = hit.shape[1]
    p = prob.double()
    se = (p * (1 - p) / m).sqrt().clamp_min(1e-12)
    assert ((hit.mean(1) - p).abs() <= 5 * se + 1e-12).all()
    # unreplaced pixels are exact
    keep = ~replaced
    assert torch.equal(noisy[keep], clean[keep])
    # replaced values are independent U(0, 1) per channel: mean 1/2, variance 1/12
    values = noisy.permute(0, 2, 3, 1)[replaced[:, 0]].double()  # (k, 3)
    k = values.shape[0]
    assert abs(values.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / values.numel())
    assert abs(values.var().item() - 1 / 12) < 5 * math.sqrt(1 / 180 / values.numel())
    assert stats.kstest(values[:, 0].numpy(), "uniform").pvalue > 1e-3
    corr = torch.corrcoef(values.T)
    assert (corr - torch.eye(3, dtype=corr.dtype)).abs().max() < 5 / math.sqrt(k)
    assert ((values >= 0) & (values < 1)).all()


def test_impulse_extremes():
    clean = clean_batch(2, 16, 16)
    assert torch.equal(parse_style("impulse0").sample(clean, gen(0)).noisy, clean)
    everything = parse_style("impulse100").sample(clean, gen(0)).noisy
    assert (everything != clean).float().mean() > 0.99
