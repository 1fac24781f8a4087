"""The annealed loss that trains on impulse-corrupted targets (docs/methods.md §5b): pure functions.

Why not L2: an impulse-corrupted target y equals the clean x with probability 1 − α and a U(0, 1)
value otherwise, so E[y] = (1 − α)·x + α/2 and an L2-trained network learns that washed-out image.
The released SSDN code (NVlabs/selfsupervised-denoising, `selfsupervised_denoising.py`) trains every
network with a noisy target under impulse noise (`simple_pipeline` with `noisy_targets`: N2N and the
blind-spot μ-only network) with the loss (|f(x) − target| + 1e-8)^L instead, L annealed from 2
(the mean) to 0.5 (a mode-seeking exponent: the kept pixels, all equal to x, win over the uniform
replacements) by the `L_exponent` of its `train` loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

EXPONENT_START = 2.0  # L at the first image
EXPONENT_FLOOR = 0.5  # L after 75 % of the budget, and whenever nothing is being trained
LOSS_EPS = 1e-8  # keeps |d|^L differentiable at d = 0 for L < 1


def annealed_exponent(images_seen: int, budget: int | None) -> float:
    """L = max(0.5, 2 − 2·n/N) with n = images seen before the step and N = the budget in images.

    Released code: `train` in selfsupervised_denoising.py (`L_exponent`), where n counts images
    fed before the step. L falls linearly from 2 to 0.5 over the first 75 % of the budget and stays
    there; with no budget (0 or None: evaluating, not training) it is 0.5, as the code's eval mode.
    """
    if not budget:
        return EXPONENT_FLOOR
    return max(EXPONENT_FLOOR, EXPONENT_START - EXPONENT_START * images_seen / budget)


def annealed_l_loss(pred: Tensor, target: Tensor, exponent: float) -> Tensor:
    """mean((|pred − target| + 1e-8) ** L) over every element: a scalar, differentiable in pred.

    Released code: `simple_pipeline` in selfsupervised_denoising.py, the branch
    `noise_style == 'impulse' and noisy_targets`. Computed in float32 at least (the difference of
    two bfloat16 values under autocast would swallow the 1e-8).
    """
    dtype = torch.promote_types(pred.dtype, torch.float32)
    diff = pred.to(dtype) - target.to(dtype)
    return (diff.abs() + LOSS_EPS).pow(exponent).mean()


def annealed_l_loss_grad(pred: Tensor, target: Tensor, exponent: float) -> Tensor:
    """d annealed_l_loss / d pred = L·(|d| + 1e-8)^(L−1)·sign(d) / numel, d = pred − target.

    For networks that run their own backward pass (the course's scratch network); sign(0) = 0,
    the subgradient autograd also takes for |d| at 0.
    """
    diff = pred - target
    return exponent * (diff.abs() + LOSS_EPS).pow(exponent - 1.0) * diff.sign() / diff.numel()
