"""Learning-rate schedule of docs/methods.md §2: sin² ramp-up, flat, cos⁴ ramp-down; in images seen."""

from __future__ import annotations

import math


def lr_at(images_seen: int, budget_images: int, base_lr: float,
          ramp_up: float = 0.1, ramp_down: float = 0.3) -> float:
    """Learning rate after `images_seen` of `budget_images` images.

    ramp-up over the first `ramp_up`·N images:  lr·sin²(π t / 2),  t = n / (ramp_up·N);
    ramp-down over the last `ramp_down`·N:      lr·cos⁴(π t / 2),  t = (n − (1 − ramp_down)·N) / (ramp_down·N);
    flat in between; exactly 0 at n = 0 and at n = N (when the ramps are non-zero).
    """
    n, total = float(images_seen), float(budget_images)
    factor = 1.0
    if ramp_up > 0 and n < ramp_up * total:
        factor *= math.sin(0.5 * math.pi * n / (ramp_up * total)) ** 2
    start_down = (1.0 - ramp_down) * total
    if ramp_down > 0 and n > start_down:
        t = min(1.0, (n - start_down) / (ramp_down * total))
        factor *= math.cos(0.5 * math.pi * t) ** 4
    if ramp_down > 0 and n >= total:
        return 0.0
    return base_lr * factor


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """Decay of the weights' moving average at update `step` (0-based).

    With warmup, min(decay, (1 + step) / (10 + step)), TensorFlow's ExponentialMovingAverage
    rule with num_updates: the first updates average quickly, so a short run is not dominated by
    the random initial weights (with a fixed 0.999, 500 steps leave them a weight of
    0.999^500 ≈ 0.61). From step 8,990 on the two agree for decay 0.999, so long runs are unchanged
    but for the faded first steps.
    """
    return min(decay, (1 + step) / (10 + step)) if warmup else decay
