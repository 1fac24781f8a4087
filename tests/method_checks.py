"""Checks shared by the tests of single methods (ne2ne, n2self, r2r): smoke training, refusals, grid."""

from __future__ import annotations

import math

import torch

from benchmarks.grid import expand
from n2n_core.errors import ConfigError
from n2n_core.methods import Method, Rngs, build_method, method_config
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator


def fixed_batch_losses(method: Method, size: int, steps: int = 6, seed: int = 0) -> tuple[list[float], torch.nn.Module]:
    """Losses of `steps` Adam steps (lr 1e-3) on one fixed pair of 2 crops of size², and the model."""
    model = method.build_model(make_generator(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    clean = 0.1 + 0.8 * torch.rand(2, 3, size, size, generator=make_generator(seed + 1))
    pair = method.training_pair(clean, Rngs(noise=make_generator(seed + 2), method=make_generator(seed + 3)))
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = method.loss(model, pair).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, model


def assert_trains_and_denoises(method: Method, size: int, style: str = "gaussian25") -> None:
    """The loss is finite and falls on a fixed batch; `denoise` keeps a non-square input's shape."""
    losses, model = fixed_batch_losses(method, size)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    batch = parse_style(style).sample(torch.rand(1, 3, 64, 96, generator=make_generator(7)), make_generator(8))
    with torch.no_grad():
        out = method.denoise(model.eval(), batch)
    assert out.shape == batch.noisy.shape and torch.isfinite(out).all()


def assert_refused(name: str, style: str, must_name: tuple[str, ...]) -> str:
    """Building `name` for `style` fails with one line naming the style and `must_name`; the grid
    then lists the variant `name` as not applicable with that line. Returns the message."""
    try:
        build_method(method_config(name), parse_style(style))
    except ConfigError as err:
        message = str(err)
    else:
        raise AssertionError(f"{name} accepted {style}")
    assert "\n" not in message and style in message, message
    assert all(other in message for other in must_name), message
    jobs, left_out = expand(style, "quick", [name])
    assert jobs == [] and left_out == {name: message}
    return message


def assert_in_grid(name: str, styles: tuple[str, ...]) -> None:
    """The grid makes one job of variant `name` for each style."""
    for style in styles:
        jobs, left_out = expand(style, "quick", [name])
        assert [job.variant for job in jobs] == [name] and not left_out, (style, left_out)
