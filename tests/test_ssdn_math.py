"""SSDN per-pixel algebra (docs/methods.md §5) vs closed forms, numpy, torch.distributions, Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from n2n_core.methods.ssdn_math import (
    level_regulariser,
    nll,
    noise_variance,
    posterior_mean,
    prior_covariance,
    softplus_level,
)

N, H, W = 2, 3, 4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(seed: int, diagonal: bool = False):
    """Random y, μ (N, 3, H, W), factors and a positive σn² per pixel and channel, float64."""
    g = _gen(seed)
    mu = torch.rand(N, 3, H, W, generator=g, dtype=torch.float64)
    y = mu + 0.2 * torch.randn(N, 3, H, W, generator=g, dtype=torch.float64)
    factors = 0.2 * torch.randn(N, 3 if diagonal else 6, H, W, generator=g, dtype=torch.float64)
    noise_var = (0.02 + 0.1 * torch.rand(N, 3, H, W, generator=g, dtype=torch.float64)) ** 2
    return y, mu, factors, noise_var


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol=1e-12, atol=1e-12) -> None:
    """Same shape and values (numpy's check: torch.testing's first call costs seconds of imports)."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.detach().numpy(), expected.detach().numpy(), rtol=rtol, atol=atol)


def _pixels(t: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) → numpy (N·H·W, 3)."""
    return t.permute(0, 2, 3, 1).reshape(-1, 3).numpy()


def test_prior_covariance_full_is_u_ut_for_one_pixel():
    factors = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).view(1, 6, 1, 1)
    # U = [[1, 2, 3], [0, 4, 5], [0, 0, 6]], U Uᵀ worked out by hand.
    expected = torch.tensor([[14.0, 23.0, 18.0], [23.0, 41.0, 30.0], [18.0, 30.0, 36.0]], dtype=torch.float64)
    sigma = prior_covariance(factors, diagonal=False)
    assert sigma.shape == (1, 1, 1, 3, 3)
    assert torch.equal(sigma[0, 0, 0], expected)


def test_prior_covariance_full_matches_matmul_for_every_pixel():
    _, _, factors, _ = _batch(0)
    a = factors.permute(0, 2, 3, 1)
    u = torch.zeros(N, H, W, 3, 3, dtype=torch.float64)
    rows, cols = torch.triu_indices(3, 3)  # row-major upper triangle: a0..a5
    u[..., rows, cols] = a
    _assert_close(prior_covariance(factors, diagonal=False), u @ u.transpose(-1, -2))


def test_prior_covariance_diagonal_squares_the_factors():
    factors = torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1)
    expected = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))
    assert torch.equal(prior_covariance(factors, diagonal=True)[0, 0, 0], expected)


def test_prior_covariance_rejects_wrong_factor_count():
    with pytest.raises(ValueError, match=r"\(N, 6, H, W\)"):
        prior_covariance(torch.zeros(1, 3, 2, 2), diagonal=False)


def test_softplus_level_at_zero_is_softplus_minus_four_plus_floor():
    by_hand = math.log1p(math.exp(-4.0)) + 1e-3
    assert by_hand == pytest.approx(0.019149, abs=1e-6)
    assert softplus_level(0.0).item() == pytest.approx(by_hand, rel=1e-12)
    assert softplus_level(torch.zeros(3)).tolist() == pytest.approx([by_hand] * 3, rel=1e-12)


def test_gaussian_known_variance_floors_std_at_1e_3():
    mu = torch.zeros(2, 3, 2, 2)
    var = noise_variance("gaussian", mu, torch.tensor([0.0, 0.1]))
    assert var.shape == (2, 3, 2, 2)
    assert torch.all(var[0] == 1e-6) and torch.allclose(var[1], torch.tensor(0.01, dtype=torch.float64))


def test_gaussian_estimated_variance_is_level_squared_and_broadcasts_a_scalar():
    mu = torch.zeros(2, 3, 2, 2)
    z = torch.tensor(0.0, requires_grad=True)
    s = softplus_level(z)
    var = noise_variance("gaussian", mu, s, estimated=True)
    assert var.shape == (2, 3, 2, 2)
    assert torch.allclose(var, s.detach() ** 2)
    var.sum().backward()
    assert z.grad is not None and z.grad > 0  # the learned scalar receives a gradient


def test_poisson_variance_uses_floored_mu_over_lambda_or_times_level():
    mu = torch.tensor([-0.5, 0.0, 0.3, 0.9], dtype=torch.float64).view(1, 1, 2, 2).expand(2, 3, 2, 2)
    floored = torch.tensor([1e-3, 1e-3, 0.3, 0.9], dtype=torch.float64).view(1, 1, 2, 2)
    lam = torch.tensor([30.0, 5.0])
    known = noise_variance("poisson", mu, lam)
    _assert_close(known, (floored / lam.double().view(2, 1, 1, 1)).expand(2, 3, 2, 2))
    s = torch.tensor([0.02, 0.2])
    est = noise_variance("poisson", mu, s, estimated=True)
    _assert_close(est, (floored * s.double().view(2, 1, 1, 1)).expand(2, 3, 2, 2))


def test_noise_variance_rejects_unknown_kind_and_wrong_level_count():
    mu = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match="gaussian, poisson"):
        noise_variance("impulse", mu, 0.5)
    with pytest.raises(ValueError, match="one value per image"):
        noise_variance("gaussian", mu, torch.tensor([0.1, 0.2, 0.3]))


@pytest.mark.parametrize("diagonal", [False, True])
def test_nll_matches_multivariate_normal_log_prob_up_to_constant(diagonal):
    y, mu, factors, noise_var = _batch(1, diagonal)
    sigma_x = prior_covariance(factors, diagonal)
    ours = nll(y, mu, sigma_x, noise_var)
    sigma_y = sigma_x + torch.diag_embed(noise_var.permute(0, 2, 3, 1))
    mvn = MultivariateNormal(mu.permute(0, 2, 3, 1), covariance_matrix=sigma_y)
    reference = -mvn.log_prob(y.permute(0, 2, 3, 1)) - 1.5 * math.log(2 * math.pi)
    assert ours.shape == (N, H, W)
    _assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_nll_gradients_match_autograd_through_multivariate_normal():
    y, mu, factors, noise_var = _batch(2)

    def grads(loss_fn):
        f, m = factors.clone().requires_grad_(), mu.clone().requires_grad_()
        loss_fn(f, m).sum().backward()
        return f.grad, m.grad

    def ours(f, m):
        return nll(y, m, prior_covariance(f, diagonal=False), noise_var)

    def reference(f, m):
        sigma_y = prior_covariance(f, diagonal=False) + torch.diag_embed(noise_var.permute(0, 2, 3, 1))
        mvn = MultivariateNormal(m.permute(0, 2, 3, 1), covariance_matrix=sigma_y)
        return -mvn.log_prob(y.permute(0, 2, 3, 1))

    for a, b in zip(grads(ours), grads(reference)):
        _assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_nll_gradient_flows_through_poisson_variance_into_mu():
    y, mu, factors, _ = _batch(3)
    sigma_x = prior_covariance(factors, diagonal=False)
    lam = torch.tensor([30.0, 10.0])

    def mu_grad(detach_variance: bool) -> torch.Tensor:
        m = mu.clone().requires_grad_()
        var = noise_variance("poisson", m.detach() if detach_variance else m, lam)
        nll(y, m, sigma_x, var).sum().backward()
        return m.grad

    full, mean_path_only = mu_grad(False), mu_grad(True)
    assert torch.isfinite(full).all()
    assert (full - mean_path_only).abs().max() > 1e-3


def test_posterior_mean_diagonal_matches_per_channel_closed_form():
    y, mu, factors, noise_var = _batch(4, diagonal=True)
    factors = factors + 0.05 * factors.sign()  # keep σx² away from 0 so eps = 0 is well-posed
    sigma_x = prior_covariance(factors, diagonal=True)
    var_x = factors**2
    closed = (y * var_x + mu * noise_var) / (var_x + noise_var)
    _assert_close(posterior_mean(y, mu, sigma_x, noise_var, eps=0.0), closed, rtol=1e-10, atol=1e-12)
    # Default eps = 1e-6, per channel as scalars:
    # a = 1/(σx² + ε), b = 1/(σn² + ε), x̂ = (a·μ + b·y)/(a + b + ε).
    a, b = 1 / (var_x + 1e-6), 1 / (noise_var + 1e-6)
    scalar = (a * mu + b * y) / (a + b + 1e-6)
    _assert_close(posterior_mean(y, mu, sigma_x, noise_var), scalar, rtol=1e-10, atol=1e-12)
    # The eps convention moves x̂ by ~|y − μ|·ε/(σx² + σn²): far below one uint8 level (1/255).
    assert (scalar - closed).abs().max() < 1e-4


def _numpy_conditioning(y, mu, sigma_x, noise_var, eps):
    """x̂ = μ + Σx' (Σx' + Σn')⁻¹ (y − μ), prime = + eps·I: Gaussian conditioning, another formula."""
    eye = np.eye(3)
    out = []
    for yi, mi, sx, vn in zip(_pixels(y), _pixels(mu), sigma_x.reshape(-1, 3, 3).numpy(), _pixels(noise_var)):
        sx = sx + eps * eye
        sn = np.diag(vn) + eps * eye
        out.append(mi + sx @ np.linalg.solve(sx + sn, yi - mi))
    return np.array(out)


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_posterior_mean_full_matches_numpy_gaussian_conditioning(eps):
    y, mu, factors, noise_var = _batch(5)
    sigma_x = prior_covariance(factors, diagonal=False)
    ours = _pixels(posterior_mean(y, mu, sigma_x, noise_var, eps=eps))
    # eps = 1e-6: the reference's third eps (on Σx⁻¹ + Σn⁻¹) is absent from the numpy form;
    # it moves x̂ by ~1e-8.
    expected = _numpy_conditioning(y, mu, sigma_x, noise_var, eps)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9 if eps == 0 else 1e-7)


def test_posterior_mean_full_matches_monte_carlo_importance_estimate():
    rng = np.random.default_rng(0)
    mu = np.array([0.4, 0.5, 0.6])
    factors = torch.tensor([0.15, 0.05, -0.04, 0.12, 0.06, 0.1], dtype=torch.float64).view(1, 6, 1, 1)
    sigma_x = prior_covariance(factors, diagonal=False)
    noise_var = np.array([0.1, 0.12, 0.08]) ** 2
    y = np.array([0.55, 0.35, 0.7])
    # E[x | y] under prior N(μ, Σx), likelihood N(y; x, Σn): prior samples weighted by the likelihood.
    x = rng.multivariate_normal(mu, sigma_x[0, 0, 0].numpy(), size=400_000)
    log_w = -0.5 * (((y - x) ** 2) / noise_var).sum(axis=1)
    w = np.exp(log_w - log_w.max())
    mc = (w[:, None] * x).sum(axis=0) / w.sum()
    as_image = lambda v: torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1)  # noqa: E731
    ours = posterior_mean(as_image(y), as_image(mu), sigma_x, as_image(noise_var))[0, :, 0, 0].numpy()
    np.testing.assert_allclose(ours, mc, atol=3e-3)


def test_level_regulariser_is_a_tenth_of_the_channel_mean_std():
    std = torch.tensor([0.1, 0.2, 0.6]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    reg = level_regulariser(std)
    assert reg.shape == (2, 2, 2)
    _assert_close(reg, torch.full((2, 2, 2), 0.1 * 0.3, dtype=torch.float64), rtol=1e-6)


def test_float32_inputs_give_float64_results():
    y, mu, factors, noise_var = (t.float() for t in _batch(6))
    sigma_x = prior_covariance(factors, diagonal=False)
    var = noise_variance("poisson", mu, torch.tensor([30.0, 10.0], dtype=torch.float32))
    results = [
        sigma_x,
        prior_covariance(factors[:, :3], diagonal=True),
        softplus_level(torch.zeros(2, dtype=torch.float32)),
        var,
        noise_variance("gaussian", mu, torch.tensor([0.1, 0.2], dtype=torch.float32)),
        nll(y, mu, sigma_x.float(), noise_var),
        posterior_mean(y, mu, sigma_x.float(), noise_var),
        level_regulariser(var.float().sqrt()),
    ]
    assert all(r.dtype == torch.float64 for r in results)


# ----------------------------------------------------------------------------- impulse noise (§5b)

from n2n_core.methods.ssdn_math import (  # noqa: E402
    impulse_nll,
    impulse_posterior_mean,
    impulse_prior_density,
)
from n2n_core.noise import add_impulse  # noqa: E402

EPS = 1e-6
J = np.ones((3, 3))


def _numpy_impulse_nll(y, mu, sigma_x, alpha):
    """(y − μy)ᵀ Σy⁻¹ (y − μy) + log max(det Σy, 1e-9), pixel by pixel with numpy.linalg."""
    out = []
    for yi, mi, sx in zip(_pixels(y), _pixels(mu), sigma_x.reshape(-1, 3, 3).numpy()):
        s = sx + EPS * np.eye(3)
        mu_y = alpha / 2 + (1 - alpha) * mi
        sigma_y = alpha * (J / 4 + np.eye(3) / 12) + (1 - alpha) * (s + np.outer(mi, mi)) - np.outer(mu_y, mu_y)
        d = yi - mu_y
        out.append(d @ np.linalg.solve(sigma_y, d) + np.log(max(np.linalg.det(sigma_y), 1e-9)))
    return np.array(out)


def test_uniform_replacement_second_moment_is_quarter_j_plus_identity_over_12():
    # the constant the impulse likelihood is built on: E[u uᵀ] for u ~ U(0, 1)³
    u = np.random.default_rng(1).random((2_000_000, 3))
    np.testing.assert_allclose(u.T @ u / len(u), J / 4 + np.eye(3) / 12, atol=2e-3)


@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.9])
def test_impulse_nll_matches_numpy_linalg(alpha):
    y, mu, factors, _ = _batch(7)
    y = y.clamp(0, 1)
    sigma_x = prior_covariance(factors, diagonal=False)
    ours = impulse_nll(y, mu, sigma_x, alpha)
    assert ours.shape == (N, H, W)
    np.testing.assert_allclose(ours.reshape(-1).numpy(), _numpy_impulse_nll(y, mu, sigma_x, alpha),
                               rtol=1e-9, atol=1e-9)


def test_impulse_nll_floors_the_determinant_at_1e_9_inside_the_log_only():
    # α = 0 and Σx = 0: Σy = εI, det 1e-18 → log(1e-9) is used, the quadratic form keeps 1/ε
    y, mu, _, _ = _batch(8)
    sigma_x = torch.zeros(N, H, W, 3, 3, dtype=torch.float64)
    ours = impulse_nll(y, mu, sigma_x, 0.0)
    expected = ((y - mu) ** 2).sum(dim=1) / EPS + math.log(1e-9)
    _assert_close(ours, expected, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(ours.reshape(-1).numpy(), _numpy_impulse_nll(y, mu, sigma_x, 0.0), rtol=1e-9)


def test_impulse_nll_uses_a_per_image_alpha():
    y, mu, factors, _ = _batch(9, diagonal=True)
    sigma_x = prior_covariance(factors, diagonal=True)
    both = impulse_nll(y, mu, sigma_x, torch.tensor([0.2, 0.7], dtype=torch.float64))
    for i, a in enumerate([0.2, 0.7]):
        _assert_close(both[i], impulse_nll(y[i:i + 1], mu[i:i + 1], sigma_x[i:i + 1], a)[0])


def test_impulse_nll_gradients_match_autograd_through_torch_linalg():
    y, mu, factors, _ = _batch(10)

    def reference(f, m, a):
        s = prior_covariance(f, diagonal=False) + EPS * torch.eye(3, dtype=torch.float64)
        mm = m.permute(0, 2, 3, 1)
        mu_y = a / 2 + (1 - a) * mm
        eye, ones = torch.eye(3, dtype=torch.float64), torch.ones(3, 3, dtype=torch.float64)
        sigma_y = (a * (ones / 4 + eye / 12) + (1 - a) * (s + mm[..., :, None] * mm[..., None, :])
                   - mu_y[..., :, None] * mu_y[..., None, :])
        d = (y.permute(0, 2, 3, 1) - mu_y)[..., None]
        quad = (d.transpose(-1, -2) @ torch.linalg.solve(sigma_y, d))[..., 0, 0]
        return quad + torch.log(torch.linalg.det(sigma_y).clamp(min=1e-9))

    def ours(f, m, a):
        return impulse_nll(y, m, prior_covariance(f, diagonal=False), a)

    def grads(fn):
        f, m = factors.clone().requires_grad_(), mu.clone().requires_grad_()
        a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)  # a learned α gets a gradient
        fn(f, m, a).sum().backward()
        return f.grad, m.grad, a.grad

    for got, want in zip(grads(ours), grads(reference)):
        _assert_close(got, want, rtol=1e-8, atol=1e-9)


def test_impulse_nll_is_the_gaussian_fit_to_monte_carlo_impulse_samples():
    # μy and Σy are the mean and covariance of y = impulse(x), x ~ N(μ, Σx): sample both with the
    # project's own noise model and evaluate the same quadratic + log det with the sample moments
    rng = np.random.default_rng(2)
    mu = np.array([0.3, 0.5, 0.7])
    factors = torch.tensor([0.12, 0.03, -0.02, 0.1, 0.04, 0.08], dtype=torch.float64).view(1, 6, 1, 1)
    sigma_x = prior_covariance(factors, diagonal=False)
    x = rng.multivariate_normal(mu, sigma_x[0, 0, 0].numpy() + EPS * np.eye(3), size=1_000_000)
    clean = torch.from_numpy(x.T.copy()).view(1, 3, 1000, 1000)
    noisy = add_impulse(clean, torch.tensor([0.4]), torch.Generator().manual_seed(3))
    samples = noisy.view(3, -1).numpy().T
    m, c = samples.mean(axis=0), np.cov(samples.T)
    y0 = np.array([0.45, 0.4, 0.8])
    d = y0 - m
    mc = d @ np.linalg.solve(c, d) + np.log(np.linalg.det(c))
    as_image = lambda v: torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1)  # noqa: E731
    ours = float(impulse_nll(as_image(y0), as_image(mu), sigma_x, 0.4))
    assert ours == pytest.approx(mc, abs=0.03)


def test_impulse_prior_density_is_the_normal_density_with_floored_determinant():
    y, mu, factors, _ = _batch(11)
    sigma_x = prior_covariance(factors, diagonal=False)
    s = sigma_x + EPS * torch.eye(3, dtype=torch.float64)
    want = MultivariateNormal(mu.permute(0, 2, 3, 1), covariance_matrix=s).log_prob(y.permute(0, 2, 3, 1)).exp()
    _assert_close(impulse_prior_density(y, mu, sigma_x), want, rtol=1e-9, atol=0)
    # a singular Σx: det(εI) = 1e-18 < 1e-9 → the normaliser uses 1e-9, the exponent keeps 1/ε
    zero = torch.zeros_like(sigma_x)
    near = mu + 1e-3 * torch.randn(mu.shape, generator=_gen(12), dtype=torch.float64)
    q = ((near - mu) ** 2).sum(dim=1) / EPS
    floored = torch.exp(-0.5 * q) / math.sqrt((2 * math.pi) ** 3 * 1e-9)
    _assert_close(impulse_prior_density(near, mu, zero), floored, rtol=1e-9, atol=0)


def _orthogonality_z(x: torch.Tensor, y: torch.Tensor, estimate: torch.Tensor) -> float:
    """Largest |z| of E[(x − f(y))·φ(y)] = 0 over test functions φ, from (3, M) samples.

    f(y) = E[x | y] exactly when the residual is orthogonal to every function of y (the defining
    property of a conditional mean), so each sample average must be within noise of 0; z is it
    divided by its standard error.
    """
    residual = x - estimate
    phis = [torch.ones_like(y[0])] + [y[c] - 0.5 for c in range(3)]
    for centre in ([0.4, 0.5, 0.6], [0.5, 0.4, 0.7], [0.3, 0.55, 0.5]):  # local bumps in y
        dist2 = ((y - torch.tensor(centre, dtype=torch.float64)[:, None]) ** 2).sum(dim=0)
        phis.append(torch.exp(-dist2 / (2 * 0.1**2)))
    worst = 0.0
    for phi in phis:
        moment = residual * phi
        z = moment.mean(dim=1) / (moment.std(dim=1) / math.sqrt(moment.shape[1]))
        worst = max(worst, float(z.abs().max()))
    return worst


def test_impulse_posterior_mean_is_the_conditional_mean_of_monte_carlo_pairs():
    # joint samples: x from the prior N(μ, Σx + εI) (narrow enough to stay inside the unit cube,
    # where a replacement has density 1), y = impulse(x) with the project's own noise model
    alpha, side = 0.5, 1000
    mu = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64)
    factors = torch.tensor([0.075, 0.025, -0.02, 0.06, 0.03, 0.05], dtype=torch.float64).view(1, 6, 1, 1)
    sigma_x = prior_covariance(factors, diagonal=False)  # (1, 1, 1, 3, 3): one prior for every pixel
    gen = torch.Generator().manual_seed(0)
    chol = torch.linalg.cholesky(sigma_x[0, 0, 0] + EPS * torch.eye(3, dtype=torch.float64))
    x = mu + torch.randn(side * side, 3, generator=gen, dtype=torch.float64) @ chol.T
    clean = x.T.reshape(1, 3, side, side).contiguous()
    noisy = add_impulse(clean, torch.tensor([alpha]), gen)
    mu_image = mu.view(1, 3, 1, 1).expand(1, 3, side, side)

    def worst_z(a: float) -> float:
        estimate = impulse_posterior_mean(noisy, mu_image, sigma_x, a)
        return _orthogonality_z(clean.view(3, -1), noisy.view(3, -1), estimate.view(3, -1))

    assert worst_z(alpha) < 4.0
    # the test has power: a mixture weight off by 0.15 either way is clearly not the conditional mean
    assert worst_z(alpha - 0.15) > 8.0 and worst_z(alpha + 0.15) > 8.0


def test_impulse_posterior_mean_closed_form_and_limits():
    y, mu, factors, _ = _batch(13)
    sigma_x = prior_covariance(factors, diagonal=False)
    g = impulse_prior_density(y, mu, sigma_x)[:, None]
    a = torch.tensor([0.25, 0.8], dtype=torch.float64).view(2, 1, 1, 1)
    expected = (a * mu + (1 - a) * g * y) / (a + (1 - a) * g)
    _assert_close(impulse_posterior_mean(y, mu, sigma_x, torch.tensor([0.25, 0.8], dtype=torch.float64)), expected)
    # almost nothing replaced: keep y (where the prior density at y is not ~0: near μ, std 0.1)
    near = mu + 0.01 * torch.randn(mu.shape, generator=_gen(14), dtype=torch.float64)
    wide = 0.01 * torch.eye(3, dtype=torch.float64).expand(N, H, W, 3, 3)
    _assert_close(impulse_posterior_mean(near, mu, wide, 1e-12), near, rtol=0, atol=1e-9)
    _assert_close(impulse_posterior_mean(y, mu, sigma_x, 1.0), mu)  # everything replaced: the prior
