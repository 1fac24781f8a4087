"""Learning-rate schedule (docs/methods.md §2): sin² ramp-up over 10 %, flat, cos⁴ ramp-down over 30 %.

Expected values are worked out by hand from half-angle identities, not from the code:
sin²(π/4) = 1/2, cos⁴(π/4) = 1/4, sin²(π/8) = (1 − √2/2)/2, cos⁴(3π/8) = ((1 − √2/2)/2)².
"""

from __future__ import annotations

import math

import pytest

from n2n_core.train.schedule import ema_decay_at, lr_at

LR = 3e-4
N = 2_000_000  # the paper's budget in images


def test_exactly_zero_at_start_and_end():
    assert lr_at(0, N, LR) == 0.0
    assert lr_at(N, N, LR) == 0.0
    assert lr_at(0, 16, LR) == 0.0
    assert lr_at(16, 16, LR) == 0.0


@pytest.mark.parametrize("n", [N // 10, N // 10 + 1, N // 2, 7 * N // 10])
def test_flat_between_the_ramps(n):
    assert lr_at(n, N, LR) == pytest.approx(LR, rel=1e-12)


@pytest.mark.parametrize(
    ("fraction", "factor"),
    [
        (0.05, 0.5),  # ramp-up midpoint: sin²(π/4)
        (0.025, (1 - math.sqrt(2) / 2) / 2),  # a quarter into the ramp-up: sin²(π/8)
        (0.85, 0.25),  # ramp-down midpoint: cos⁴(π/4)
        (0.925, ((1 - math.sqrt(2) / 2) / 2) ** 2),  # three quarters into it: cos⁴(3π/8)
    ],
)
def test_mid_ramp_values_match_closed_form(fraction, factor):
    n = round(fraction * N)
    assert lr_at(n, N, LR) == pytest.approx(LR * factor, rel=1e-9)


def test_ramps_are_configurable():
    # ramp_up 0.2 over N = 1000: n = 100 is the midpoint, sin²(π/4) = 1/2
    assert lr_at(100, 1000, 1.0, ramp_up=0.2, ramp_down=0.3) == pytest.approx(0.5)
    # ramp_down 0.5: starts at 500; n = 750 is its midpoint, cos⁴(π/4) = 1/4
    assert lr_at(750, 1000, 1.0, ramp_up=0.1, ramp_down=0.5) == pytest.approx(0.25)
    # without ramps the rate is flat from the first image
    assert lr_at(0, 1000, 1.0, ramp_up=0.0, ramp_down=0.0) == 1.0


def test_monotone_up_flat_then_down():
    total = 1000
    values = [lr_at(n, total, LR) for n in range(total + 1)]
    up, flat, down = values[: 101], values[100:701], values[700:]
    assert all(a < b for a, b in zip(up, up[1:])), "ramp-up must increase strictly"
    assert all(v == pytest.approx(LR, rel=1e-12) for v in flat)
    assert all(a > b for a, b in zip(down, down[1:])), "ramp-down must decrease strictly"
    assert max(values) <= LR * (1 + 1e-12)
    assert min(values) == 0.0


def test_ema_warmup_by_hand():
    assert ema_decay_at(0, 0.999, warmup=True) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay_at(90, 0.999, warmup=True) == pytest.approx(0.91)  # 91 / 100
    assert ema_decay_at(8990, 0.999, warmup=True) == pytest.approx(0.999)  # 8991 / 9000: caught up
    assert ema_decay_at(10**6, 0.999, warmup=True) == 0.999  # never above the configured decay
    assert ema_decay_at(0, 0.999, warmup=False) == 0.999


def test_n2v_warms_its_average_up_unless_told_not_to():
    from n2n_core.methods import build_method, method_config
    from n2n_core.noise import parse_style

    noise = parse_style("gaussian25")
    warmed = build_method(method_config("n2v"), noise)
    plain = build_method(method_config("n2v", ema_warmup=False), noise)
    assert warmed.ema_decay(0.999, 0) == pytest.approx(0.1) and plain.ema_decay(0.999, 0) == 0.999
