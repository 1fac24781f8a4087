"""CBM3D (docs/methods.md §7): Anscombe pair, bm3d on tiny images, pool identity, cache, crop, refusals.

bm3d costs a few seconds per call even on 64×64 images (a fixed cost inside bm4d), so the real
calls are shared through one module-scoped fixture; the crop and cache tests use spies.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError

pytest.importorskip("bm3d")

from n2n_core.errors import ConfigError, N2NError  # noqa: E402
from n2n_core.evaluation.protocol import EvalInput  # noqa: E402
from n2n_core.evaluation.psnr import psnr_uint8  # noqa: E402
from n2n_core.methods import build_method, method_config  # noqa: E402
from n2n_core.methods import cbm3d as cb  # noqa: E402
from n2n_core.noise import NoisyBatch, parse_style  # noqa: E402

SIZE = 64


def smooth_image(size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """A (3, S, S) image in [0.1, 0.9] with edges and smooth gradients: easy for BM3D to beat noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.5 + 0.3 * torch.sin(4 * xx), 0.3 + 0.4 * yy, 0.5 + 0.2 * torch.cos(3 * (xx + yy))])
    box = ((xx > 0.3) & (xx < 0.7) & (yy > 0.2) & (yy < 0.6)).float()
    return (base * (1 - 0.4 * box) + 0.05 * torch.rand((3, 1, 1), generator=g)).clamp(0.1, 0.9)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    return (img * 255 + 0.5).floor().clamp(0, 255).to(torch.uint8)


def make_inputs(style: str, n: int, height: int = SIZE, width: int = SIZE):
    """EvalInputs padded to SIZE×SIZE (reflect) with seeded noise, plus their clean uint8 crops."""
    noise = parse_style(style)
    items, cleans = [], []
    for k in range(n):
        clean = smooth_image(seed=k)[:, :height, :width]
        padded = torch.nn.functional.pad(clean[None], (0, SIZE - width, 0, SIZE - height), mode="reflect")
        noisy = noise.sample(padded, torch.Generator().manual_seed(100 + k))
        items.append(EvalInput(f"img{k}", 0, noisy, height, width))
        cleans.append(to_uint8(clean))
    return items, cleans


def cbm3d(style: str = "gaussian25", **fields):
    return build_method(method_config("cbm3d", **fields), parse_style(style))


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory):
    """Two Gaussian inputs through a serial (in-process) pool of one, with a cache folder."""
    cache = tmp_path_factory.mktemp("cbm3d-cache")
    items, cleans = make_inputs("gaussian25", 2)
    outputs = cbm3d(workers=1, cache_dir=str(cache)).denoise_many(None, items, torch.device("cpu"))
    return items, cleans, outputs, cache


# --- Anscombe ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [10.0, 30.0, 100.0])
def test_anscombe_stabilises_variance(rate):
    z = np.random.default_rng(int(rate)).poisson(rate, size=200_000)
    assert np.var(cb.anscombe(z)) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("rate", [1.0, 2.0, 5.0, 10.0, 30.0, 100.0])
def test_exact_unbiased_inverse_recovers_rate(rate):
    from scipy import stats

    k = np.arange(0, int(stats.poisson.ppf(1 - 1e-14, rate)) + 2)
    expected_f = math.fsum(stats.poisson.pmf(k, rate) * 2.0 * np.sqrt(k + 3 / 8))  # E[f(z)] by summation
    assert float(cb.inverse_anscombe_unbiased(expected_f)) == pytest.approx(rate, rel=0.01)
    if rate <= 2:  # the algebraic inverse is what the exact one corrects
        assert abs((expected_f / 2) ** 2 - 3 / 8 - rate) > 0.05 * rate


def test_inverse_is_zero_at_and_below_a_zero_count():
    d = np.array([0.0, 0.5, 1.0, cb.ANSCOMBE_ZERO])
    assert np.array_equal(cb.inverse_anscombe_unbiased(d), np.zeros(4))
    assert float(cb.inverse_anscombe_unbiased(cb.ANSCOMBE_ZERO + 1e-3)) >= 0


# --- bm3d on tiny images -------------------------------------------------------------------------


def test_gaussian_output_beats_noisy(gaussian_run):
    items, cleans, outputs, _ = gaussian_run
    for item, clean, out in zip(items, cleans, outputs):
        assert out.shape == (3, item.height, item.width) and out.dtype == torch.float32
        noisy = item.noisy.noisy[0, :, : item.height, : item.width]
        assert psnr_uint8(out, clean) > psnr_uint8(noisy, clean) + 3


def test_poisson_output_beats_noisy():
    items, cleans = make_inputs("poisson30", 1)
    out = cbm3d("poisson30", workers=1).denoise_many(None, items, torch.device("cpu"))[0]
    noisy = items[0].noisy.noisy[0]
    assert psnr_uint8(out, cleans[0]) > psnr_uint8(noisy, cleans[0]) + 3


@pytest.mark.parametrize("kind, level", [("gaussian", 25 / 255), ("poisson", 30.0)])
def test_a_grey_picture_in_three_equal_channels_is_denoised_not_nan(kind, level):
    """bm3d_rgb returns NaN for it (its colour transform divides by the zero chroma range); the
    single-channel bm3d path gives a finite grey result that beats the noisy input."""
    clean = smooth_image(32)[0].double().numpy()
    generator = np.random.default_rng(6)
    grey = clean + generator.normal(0, level, clean.shape) if kind == "gaussian" else generator.poisson(level * clean) / level
    out = cb.denoise_array(np.repeat(grey[..., None], 3, axis=2), kind, level)
    assert out.shape == (32, 32, 3) and np.isfinite(out).all()
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    mse = lambda a: float(np.mean((a - clean) ** 2))  # noqa: E731
    assert mse(out[..., 0]) < mse(grey) / 2  # 3 dB better than the input, at least


def test_pool_of_two_matches_serial(gaussian_run):
    items, _, serial, _ = gaussian_run
    pooled = cbm3d(workers=2).denoise_many(None, items, torch.device("cpu"))  # no cache: real run
    for a, b in zip(serial, pooled, strict=True):
        assert torch.equal(a, b)


def test_cache_returns_stored_result_without_bm3d(gaussian_run, monkeypatch):
    items, _, first, cache = gaussian_run
    assert len(list(cache.glob("*.npy"))) == len(items)
    assert not list(cache.glob("*.tmp"))

    def refuse(*args, **kwargs):
        raise AssertionError("bm3d ran although the result was cached")

    monkeypatch.setattr(sys.modules["bm3d"], "bm3d_rgb", refuse)
    again = cbm3d(workers=1, cache_dir=str(cache)).denoise_many(None, items, torch.device("cpu"))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="although"):  # other options: another key, bm3d runs
        cbm3d(workers=1, cache_dir=str(cache), profile="lc").denoise_many(None, items[:1], torch.device("cpu"))


def test_bm3d_sees_only_the_crop_and_sigma(monkeypatch):
    seen = []

    def spy(z, sigma, profile="np", colorspace="opp"):
        seen.append((z.shape, sigma, profile.num_threads, colorspace))
        return z

    monkeypatch.setattr(sys.modules["bm3d"], "bm3d_rgb", spy)
    items, _ = make_inputs("gaussian25", 1, height=40, width=56)
    out = cbm3d(workers=1, colour_space="YCbCr").denoise_many(None, items, torch.device("cpu"))
    assert seen == [((40, 56, 3), pytest.approx(25 / 255), 1, "YCbCr")]
    assert out[0].shape == (3, 40, 56)
    assert torch.equal(out[0], items[0].noisy.noisy[0, :, :40, :56])  # identity spy: crop, not padding


def test_denoise_whole_batch(monkeypatch):
    monkeypatch.setattr(sys.modules["bm3d"], "bm3d_rgb", lambda z, sigma, **kw: z * 0 + sigma)
    batch = NoisyBatch(torch.rand(2, 3, 32, 32), torch.tensor([0.1, 0.2]))
    out = cbm3d().denoise(None, batch)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([0.1, 0.2]))  # per-image σ


# --- configuration ---------------------------------------------------------------------------------


def test_impulse_refused_at_configuration():
    from benchmarks.compose import compose_config

    with pytest.raises(ValidationError, match="cannot model impulse50"):
        compose_config("evaluate", "cbm3d", "impulse50")


def test_missing_bm3d_gives_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)
    with pytest.raises(N2NError, match=r"pip install bm3d==4\.0\.3") as info:
        cbm3d()
    assert "\n" not in str(info.value)


def test_config_defaults_and_hash():
    from benchmarks.compose import compose_config

    cfg = compose_config("evaluate", "cbm3d", "gaussian25")
    assert cfg.model_dump()["method"] == {"name": "cbm3d", "profile": "np", "colour_space": "opp"}
    busy = compose_config("evaluate", "cbm3d", "gaussian25", overrides=["method.workers=3", "method.cache_dir='x'"])
    assert busy.method.workers == 3 and busy.config_hash() == cfg.config_hash()
    other = compose_config("evaluate", "cbm3d", "gaussian25", overrides=["method.profile='refilter'"])
    assert other.config_hash() != cfg.config_hash()


def test_pool_plan_never_oversubscribes():
    assert cb.pool_plan(None, 24, cores=2) == (2, 1)
    assert cb.pool_plan(None, 1, cores=16) == (1, 16)
    assert cb.pool_plan(4, 24, cores=16) == (4, 4)
    for workers in (None, 1, 3, 8):
        for jobs in (1, 5, 64):
            p, t = cb.pool_plan(workers, jobs, cores=8)
            assert p <= jobs and p * t <= max(8, p)


def test_grid_gives_cbm3d_a_cache_without_changing_its_hash(tmp_path):
    from benchmarks.compose import compose_config
    from n2n_core.methods import METHODS

    def with_result_cache(cfg, root):  # what jobs.run_job does through the Method.with_cache_dir hook
        method = METHODS[cfg.method.name].with_cache_dir(cfg.method, str(root / f"{cfg.method.name}-cache"))
        return cfg if method is cfg.method else cfg.model_copy(update={"method": method})

    cfg = compose_config("smoke", "cbm3d", "gaussian25")
    cached = with_result_cache(cfg, tmp_path)
    assert cached.method.cache_dir == str(tmp_path / "cbm3d-cache")
    assert cached.config_hash() == cfg.config_hash()
    mine = cfg.model_copy(update={"method": cfg.method.model_copy(update={"cache_dir": "elsewhere"})})
    assert with_result_cache(mine, tmp_path).method.cache_dir == "elsewhere"  # the user's choice wins
    n2c = compose_config("smoke", "n2c", "gaussian25")
    assert with_result_cache(n2c, tmp_path) is n2c  # methods without a cache are left alone
