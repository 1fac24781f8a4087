"""SSDN per-pixel algebra (docs/methods.md §5, §5b): prior covariance, noise variance, NLL, posterior mean.

Three families, each as the released code's `blindspot_pipeline` (NVlabs/selfsupervised-denoising,
`selfsupervised_denoising.py`) computes it: RGB Gaussian/Poisson (`nll`, `posterior_mean`), RGB
impulse (`impulse_nll`, `impulse_posterior_mean`) and greyscale Gaussian/Poisson (`mono_nll`,
`mono_posterior_mean`; the released code has no greyscale impulse model).

Pure functions, no state. Everything is computed in float64, as the reference does its 3×3 algebra;
inputs of any float dtype are cast inside and results come back float64 (callers cast back).
Layout: images and per-pixel quantities are (N, C, H, W) with the quantities on the channel axis;
covariance matrices are (N, H, W, 3, 3).

The 3×3 algebra is written out in closed form on (N, H, W) entry planes (Cholesky, forward
substitution, adjugate inverse) instead of batched torch.linalg calls: every operation is elementwise
over all pixels at once and fully differentiable, and faster than the batched linalg calls
(benchmarks/perf/README.md, "Measurements behind other choices"); both agree with a 50-digit
reference to ~1e-12, singular Σx included (tests/test_ssdn_math.py).
Symmetric matrices are read from their upper triangle only.

Why one long module: it is SSDN's algebra for three noise families on one set of closed-form 3×3
helpers, tested together against the released code; no family is used without those helpers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

NOISE_KINDS: tuple[str, ...] = ("gaussian", "poisson")  # n2n_core.noise kinds the Gaussian likelihood covers
IMPULSE_KIND = "impulse"  # covered by the impulse_* functions (RGB only, as the released code)

_F64 = torch.float64
_MIN_STD = 1e-3  # floor on a known Gaussian std and on μ in the Poisson variance, as the reference
_LEVEL_OFFSET = 4.0  # softplus(z − 4) starts the estimated level near zero for z = 0
_REGULARISER_WEIGHT = 0.1
_PRIOR_EPS = 1e-6  # εI added to Σx before inverting it (posterior mean; the whole impulse branch)
_IMPULSE_DET_FLOOR = 1e-9  # the released impulse branch floors both of its determinants here

# Upper-triangle entries (s00, s01, s02, s11, s12, s22) of symmetric 3×3 matrices, each (N, H, W).
_Sym3 = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _f64(t: Tensor) -> Tensor:
    return t.to(_F64)


def _upper(m: Tensor) -> _Sym3:
    """Upper-triangle entry planes of (..., 3, 3) symmetric matrices."""
    return (m[..., 0, 0], m[..., 0, 1], m[..., 0, 2], m[..., 1, 1], m[..., 1, 2], m[..., 2, 2])


def _add_diag(s: _Sym3, d0: Tensor, d1: Tensor, d2: Tensor) -> _Sym3:
    s00, s01, s02, s11, s12, s22 = s
    return (s00 + d0, s01, s02, s11 + d1, s12, s22 + d2)


def _cholesky_solve_terms(s: _Sym3, b0: Tensor, b1: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """(log det S, bᵀ S⁻¹ b) for SPD S = L Lᵀ by closed-form 3×3 Cholesky and forward substitution."""
    s00, s01, s02, s11, s12, s22 = s
    l00 = torch.sqrt(s00)
    l10 = s01 / l00
    l20 = s02 / l00
    l11 = torch.sqrt(s11 - l10 * l10)
    l21 = (s12 - l20 * l10) / l11
    l22 = torch.sqrt(s22 - l20 * l20 - l21 * l21)
    z0 = b0 / l00  # z = L⁻¹ b, so bᵀ S⁻¹ b = |z|²
    z1 = (b1 - l10 * z0) / l11
    z2 = (b2 - l20 * z0 - l21 * z1) / l22
    log_det = 2.0 * (torch.log(l00) + torch.log(l11) + torch.log(l22))
    return log_det, z0 * z0 + z1 * z1 + z2 * z2


def _det_and_inverse(s: _Sym3) -> tuple[Tensor, _Sym3]:
    """Determinant and inverse of symmetric 3×3 matrices by the adjugate (cofactors / determinant)."""
    s00, s01, s02, s11, s12, s22 = s
    c00 = s11 * s22 - s12 * s12
    c01 = s02 * s12 - s01 * s22
    c02 = s01 * s12 - s02 * s11
    c11 = s00 * s22 - s02 * s02
    c12 = s01 * s02 - s00 * s12
    c22 = s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    inv_det = 1.0 / det
    return det, (c00 * inv_det, c01 * inv_det, c02 * inv_det, c11 * inv_det, c12 * inv_det, c22 * inv_det)


def _inverse(s: _Sym3) -> _Sym3:
    """Inverse of symmetric 3×3 matrices by the adjugate (cofactors / determinant)."""
    return _det_and_inverse(s)[1]


def _quadratic_form(s: _Sym3, v0: Tensor, v1: Tensor, v2: Tensor) -> Tensor:
    """vᵀ S v per pixel."""
    w0, w1, w2 = _matvec(s, v0, v1, v2)
    return v0 * w0 + v1 * w1 + v2 * w2


def _matvec(s: _Sym3, v0: Tensor, v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s00, s01, s02, s11, s12, s22 = s
    return (
        s00 * v0 + s01 * v1 + s02 * v2,
        s01 * v0 + s11 * v1 + s12 * v2,
        s02 * v0 + s12 * v1 + s22 * v2,
    )


def _check_rgb(name: str, t: Tensor) -> None:
    if t.dim() != 4 or t.shape[1] != 3:
        raise ValueError(
            f"{name} must be (N, 3, H, W), got shape {tuple(t.shape)}; SSDN's 3×3 algebra is RGB only"
        )


def _check_image(name: str, t: Tensor) -> None:
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be (N, 3, H, W) or (N, 1, H, W), got shape {tuple(t.shape)}")


def _check_mono(name: str, t: Tensor) -> None:
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must be (N, 1, H, W) for greyscale SSDN, got shape {tuple(t.shape)}")


def prior_covariance(factors: Tensor, diagonal: bool) -> Tensor:
    """Prior covariance Σx per pixel from the network's factor outputs (docs/methods.md §5).

    Full: factors (N, 6, H, W) = a0..a5, U = [[a0, a1, a2], [0, a3, a4], [0, 0, a5]], Σx = U Uᵀ.
    Diagonal: factors (N, 3, H, W), Σx = diag(a0², a1², a2²).

    Returns:
        Σx as float64 (N, H, W, 3, 3), symmetric positive semi-definite. It is a permuted view of a
        (3, 3, N, H, W) block, so each entry plane Σx[..., i, j] is contiguous for the elementwise
        algebra below; `.contiguous()` gives the row-major layout if something needs it.
    """
    expected = 3 if diagonal else 6
    if factors.dim() != 4 or factors.shape[1] != expected:
        raise ValueError(
            f"{'diagonal' if diagonal else 'full'} prior covariance needs factors of shape "
            f"(N, {expected}, H, W), got {tuple(factors.shape)}; the network must output 3 means + "
            f"{expected} factors"
        )
    a = _f64(factors).unbind(1)  # each (N, H, W)
    if diagonal:
        zero = torch.zeros_like(a[0])
        planes = [a[0] * a[0], zero, zero, zero, a[1] * a[1], zero, zero, zero, a[2] * a[2]]
    else:
        a0, a1, a2, a3, a4, a5 = a
        s00 = a0 * a0 + a1 * a1 + a2 * a2
        s01 = a1 * a3 + a2 * a4
        s02 = a2 * a5
        s11 = a3 * a3 + a4 * a4
        s12 = a4 * a5
        s22 = a5 * a5
        planes = [s00, s01, s02, s01, s11, s12, s02, s12, s22]
    n, h, w = planes[0].shape
    return torch.stack(planes).view(3, 3, n, h, w).permute(2, 3, 4, 0, 1)


def softplus_level(z: Tensor | float) -> Tensor:
    """Estimated noise level s = softplus(z − 4) + 1e-3 (docs/methods.md §5); positive, ≈ 0.0191 at z = 0.

    z is the learned scalar ("constant") or the per-image spatial mean of the noise-level network
    ("per-image"); the result has z's shape, float64.
    """
    z = _f64(z) if isinstance(z, Tensor) else torch.tensor(z, dtype=_F64)
    return F.softplus(z - _LEVEL_OFFSET) + _MIN_STD


def _per_image(level: Tensor | float, mu: Tensor) -> Tensor:
    """A per-image (N,) or single (scalar / (1,)) level as float64 (N or 1, 1, 1, 1) on mu's device."""
    if isinstance(level, Tensor):
        level = _f64(level).to(mu.device)
    else:
        level = torch.tensor(level, dtype=_F64, device=mu.device)
    if level.numel() not in (1, mu.shape[0]):
        raise ValueError(
            f"noise level has {level.numel()} values for a batch of {mu.shape[0]} images; "
            "pass one value per image (N,) or a single value"
        )
    return level.reshape(-1, 1, 1, 1)


def gaussian_noise_variance(mu: Tensor, level: Tensor | float, estimated: bool = False) -> Tensor:
    """Gaussian σn² per pixel and channel (docs/methods.md §5).

    Known (level = true std s per image): σn² = max(s, 1e-3)².
    Estimated (level = softplus_level output s): σn² = s².
    mu (N, C, H, W), C = 3 or 1, only sets the shape. Returns float64 (N, C, H, W) (a broadcast view).
    """
    _check_image("mu", mu)
    s = _per_image(level, mu)
    if not estimated:
        s = torch.clamp(s, min=_MIN_STD)
    return (s * s).expand(mu.shape[0], *mu.shape[1:])


def poisson_noise_variance(mu: Tensor, level: Tensor | float, estimated: bool = False) -> Tensor:
    """Poisson-as-Gaussian σn² per pixel and channel from the prior mean μ (docs/methods.md §5).

    Known (level = λ per image): σn² = max(μ, 1e-3) / λ.
    Estimated (level = softplus_level output s, an estimate of 1/λ): σn² = max(μ, 1e-3) · s.
    Uses the network's μ, not y; gradients flow through μ (zero where μ < 1e-3, as the reference).
    mu is (N, C, H, W), C = 3 or 1; returns float64 of the same shape.
    """
    _check_image("mu", mu)
    level = _per_image(level, mu)
    floor_mu = torch.clamp(_f64(mu), min=_MIN_STD)
    return floor_mu * level if estimated else floor_mu / level


def noise_variance(kind: str, mu: Tensor, level: Tensor | float, estimated: bool = False) -> Tensor:
    """σn² (N, C, H, W) float64 for `kind` "gaussian" or "poisson"; see the two functions it calls.

    Released code: `blindspot_pipeline` in selfsupervised_denoising.py ("Distill noise parameters"),
    the same for 1 and 3 channels.
    """
    if kind == "gaussian":
        return gaussian_noise_variance(mu, level, estimated)
    if kind == "poisson":
        return poisson_noise_variance(mu, level, estimated)
    raise ConfigError(
        f"unknown noise kind {kind!r} for SSDN's Gaussian likelihood; "
        f"expected one of: {', '.join(NOISE_KINDS)}"
    )


def nll(y: Tensor, mu: Tensor, sigma_x: Tensor, noise_var: Tensor) -> Tensor:
    """Per-pixel SSDN loss ½ log det Σy + ½ (y − μ)ᵀ Σy⁻¹ (y − μ), Σy = Σx + diag(σn²) (docs/methods.md §5).

    This is −log N(y; μ, Σy) *without* the constant 1.5·log 2π. Computed by a closed-form Cholesky
    of Σy (SPD since σn² > 0), which is differentiable and avoids the reference's det/inverse pair.

    Args:
        y, mu: (N, 3, H, W) noisy input and prior mean.
        sigma_x: (N, H, W, 3, 3) prior covariance from `prior_covariance`.
        noise_var: σn², broadcastable to (N, 3, H, W), from `noise_variance`.

    Returns:
        float64 (N, H, W); average it over pixels and batch for the training loss.
    """
    _check_rgb("y", y)
    y, mu = _f64(y), _f64(mu)
    v = torch.broadcast_to(_f64(noise_var), y.shape).unbind(1)
    sigma_y = _add_diag(_upper(_f64(sigma_x)), *v)
    d = (y - mu).unbind(1)
    log_det, quad = _cholesky_solve_terms(sigma_y, *d)
    return 0.5 * log_det + 0.5 * quad


def posterior_mean(y: Tensor, mu: Tensor, sigma_x: Tensor, noise_var: Tensor, eps: float = 1e-6) -> Tensor:
    """Denoised output x̂ = (Σx⁻¹ + Σn⁻¹)⁻¹ (Σx⁻¹ μ + Σn⁻¹ y), Σn = diag(σn²) (docs/methods.md §5).

    As in the reference, eps is added to the diagonal before each of the three inversions:
    A = (Σx + εI)⁻¹, B = (Σn + εI)⁻¹, x̂ = (A + B + εI)⁻¹ (A μ + B y). B is diagonal, so it is
    inverted elementwise (same arithmetic). Per channel with diagonal Σx and eps = 0 this is
    x̂ = (y·σx² + μ·σn²)/(σx² + σn²). eps = 0 needs Σx non-singular.

    Args:
        y, mu: (N, 3, H, W); sigma_x: (N, H, W, 3, 3); noise_var: σn² broadcastable to (N, 3, H, W).

    Returns:
        float64 (N, 3, H, W).
    """
    _check_rgb("y", y)
    y, mu = _f64(y), _f64(mu)
    b = (1.0 / (torch.broadcast_to(_f64(noise_var), y.shape) + eps)).unbind(1)  # diagonal of B
    a = _inverse(_add_diag(_upper(_f64(sigma_x)), eps, eps, eps))
    rhs = _matvec(a, *mu.unbind(1))
    rhs = [r + bi * yi for r, bi, yi in zip(rhs, b, y.unbind(1))]
    c = _inverse(_add_diag(a, b[0] + eps, b[1] + eps, b[2] + eps))
    return torch.stack(_matvec(c, *rhs), dim=1)


def level_regulariser(noise_std: Tensor) -> Tensor:
    """0.1 · mean over channels of σn: subtracted from `nll` when the level is estimated (docs/methods.md §5).

    Keeps the estimated level from collapsing. Pass σn = noise_variance(...).sqrt(), (N, C, H, W);
    returns float64 per pixel (N, H, W), to be subtracted from `nll` (or `mono_nll`) before
    averaging. With one channel this is 0.1·σn itself, as the released code's mono branch.
    """
    return _REGULARISER_WEIGHT * _f64(noise_std).mean(dim=1)


# ----------------------------------------------------------------------------- impulse noise (RGB)


def _impulse_alpha(alpha: Tensor | float, mu: Tensor) -> Tensor:
    """α per image as float64 (N or 1, 1, 1), to broadcast against (N, H, W) entry planes."""
    return _per_image(alpha, mu)[:, 0]


def impulse_prior_density(y: Tensor, mu: Tensor, sigma_x: Tensor, eps: float = _PRIOR_EPS) -> Tensor:
    """g = N(y; μ, Σx + εI): the prior density at the noisy value, its determinant floored at 1e-9.

    g = exp(−½ (y − μ)ᵀ Σ⁻¹ (y − μ)) / sqrt((2π)³ · max(det Σ, 1e-9)), Σ = Σx + εI (docs/methods.md §5b).
    Released code: `blindspot_pipeline`, `noise_style == 'impulse'` branch (the inverse is of the
    unfloored Σ; only the normaliser's determinant is floored).

    Args:
        y, mu: (N, 3, H, W); sigma_x: (N, H, W, 3, 3) from `prior_covariance`.

    Returns:
        float64 (N, H, W).
    """
    _check_rgb("y", y)
    y, mu = _f64(y), _f64(mu)
    det, inv = _det_and_inverse(_add_diag(_upper(_f64(sigma_x)), eps, eps, eps))
    quad = _quadratic_form(inv, *(y - mu).unbind(1))
    det = torch.clamp(det, min=_IMPULSE_DET_FLOOR)
    return torch.exp(-0.5 * quad) / torch.sqrt((2.0 * torch.pi) ** 3 * det)


def impulse_posterior_mean(y: Tensor, mu: Tensor, sigma_x: Tensor, alpha: Tensor | float,
                           eps: float = _PRIOR_EPS) -> Tensor:
    """x̂ = (α·μ + (1 − α)·g·y) / (α + (1 − α)·g), g = impulse_prior_density(y, μ, Σx) (§5b).

    A pixel is kept with probability 1 − α (then x = y: weight (1 − α)·g, the prior density at y)
    or replaced by a U(0, 1)³ value, whose density 1 says nothing about x (weight α, mean μ).
    Released code: `blindspot_pipeline`, impulse branch ("Posterior mean estimate").

    Args:
        y, mu: (N, 3, H, W); sigma_x: (N, H, W, 3, 3); alpha: the replacement probability, per image
            (N,) or one value (known: the true α; estimated: `softplus_level` output).

    Returns:
        float64 (N, 3, H, W).
    """
    g = impulse_prior_density(y, mu, sigma_x, eps)[:, None]  # (N, 1, H, W)
    a = _per_image(alpha, mu)
    kept = (1.0 - a) * g
    return (a * _f64(mu) + kept * _f64(y)) / (a + kept)


def impulse_nll(y: Tensor, mu: Tensor, sigma_x: Tensor, alpha: Tensor | float,
                eps: float = _PRIOR_EPS) -> Tensor:
    """Per-pixel impulse loss (y − μy)ᵀ Σy⁻¹ (y − μy) + log max(det Σy, 1e-9) (docs/methods.md §5b).

    The noisy pixel's mean and covariance under the model, Σ = Σx + εI, J the 3×3 matrix of ones
    (a uniform replacement u has E[u uᵀ] = ¼J + I/12):
        μy = α/2 + (1 − α)·μ
        Σy = α·(¼J + I/12) + (1 − α)·(Σ + μμᵀ) − μy μyᵀ.
    As the released code (`blindspot_pipeline`, impulse branch, "Training loss with the modified
    stats"): no ½ on either term, the determinant floored at 1e-9 inside the log only, and no
    level regulariser even when α is estimated. α is not clipped to [0, 1] (nor is it there).

    Args:
        y, mu: (N, 3, H, W); sigma_x: (N, H, W, 3, 3); alpha: per image (N,) or one value.

    Returns:
        float64 (N, H, W); average it over pixels and batch for the training loss.
    """
    _check_rgb("y", y)
    y, mu = _f64(y), _f64(mu)
    a = _impulse_alpha(alpha, mu)
    s00, s01, s02, s11, s12, s22 = _add_diag(_upper(_f64(sigma_x)), eps, eps, eps)
    m0, m1, m2 = mu.unbind(1)
    my0, my1, my2 = (0.5 * a + (1.0 - a) * m for m in (m0, m1, m2))
    quarter, diag = 0.25 * a, 0.25 * a + a / 12.0  # α·(¼J + I/12): off-diagonal, diagonal entries
    keep = 1.0 - a
    sigma_y = (
        diag + keep * (s00 + m0 * m0) - my0 * my0,
        quarter + keep * (s01 + m0 * m1) - my0 * my1,
        quarter + keep * (s02 + m0 * m2) - my0 * my2,
        diag + keep * (s11 + m1 * m1) - my1 * my1,
        quarter + keep * (s12 + m1 * m2) - my1 * my2,
        diag + keep * (s22 + m2 * m2) - my2 * my2,
    )
    det, inv = _det_and_inverse(sigma_y)
    y0, y1, y2 = y.unbind(1)
    quad = _quadratic_form(inv, y0 - my0, y1 - my1, y2 - my2)
    return quad + torch.log(torch.clamp(det, min=_IMPULSE_DET_FLOOR))


# ----------------------------------------------------------------------------- greyscale (one channel)


def mono_prior_variance(factor: Tensor) -> Tensor:
    """σx² = a² per pixel from the network's one factor output (N, 1, H, W); float64 (N, 1, H, W).

    With one channel the full and the diagonal covariance are the same thing. Released code:
    `blindspot_pipeline`, `num_channels == 1` (`sigma_x = A_c ** 2`).
    """
    _check_mono("factor", factor)
    return _f64(factor) ** 2


def mono_nll(y: Tensor, mu: Tensor, var_x: Tensor, noise_var: Tensor) -> Tensor:
    """Per-pixel greyscale loss (y − μ)²/σy + log σy, σy = σx² + σn² (no ½, as the released code).

    Released code: `blindspot_pipeline`, gauss/poisson branch with `num_channels == 1`; subtract
    `level_regulariser(σn)` (= 0.1·σn) when the level is estimated, as the code does.

    Args:
        y, mu, var_x: (N, 1, H, W); noise_var: σn² broadcastable to (N, 1, H, W).

    Returns:
        float64 (N, H, W).
    """
    _check_mono("y", y)
    sigma_y = _f64(var_x) + _f64(noise_var)
    per_pixel = (_f64(y) - _f64(mu)) ** 2 / sigma_y + torch.log(sigma_y)
    return per_pixel[:, 0]


def mono_posterior_mean(y: Tensor, mu: Tensor, var_x: Tensor, noise_var: Tensor) -> Tensor:
    """x̂ = (y·σx² + μ·σn²) / (σx² + σn²) per pixel (no ε: σn² ≥ 1e-6 keeps it defined).

    Released code: `blindspot_pipeline`, `num_channels == 1` (`pme_out`). Shapes as `mono_nll`;
    returns float64 (N, 1, H, W).
    """
    _check_mono("y", y)
    var_x, noise_var = _f64(var_x), _f64(noise_var)
    return (_f64(y) * var_x + _f64(mu) * noise_var) / (var_x + noise_var)
