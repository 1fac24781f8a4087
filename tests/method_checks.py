"""Checks shared by the tests of single methods (ne2ne, n2self, r2r): refusals and the grid."""

from __future__ import annotations

from benchmarks.grid import expand
from n2n_core.config import DataConfig, EvalConfig, TrainConfig
from n2n_core.errors import NoiseNotSupported
from n2n_core.methods import method_class, method_config
from n2n_core.noise import parse_style


def assert_refused(name: str, style: str, must_name: tuple[str, ...]) -> str:
    """`name`'s check refuses `style` (NoiseNotSupported) in one line naming the style and
    `must_name`; the grid then lists the variant `name` as not applicable. Returns the message."""
    train = TrainConfig(budget_images=8, patch_size=64)
    try:
        method_class(name).check(method_config(name), parse_style(style), train, EvalConfig(), DataConfig())
    except NoiseNotSupported as err:
        message = str(err)
    else:
        raise AssertionError(f"{name} accepted {style}")
    assert "\n" not in message and style in message, message
    assert all(other in message for other in must_name), message
    jobs, left_out = expand(style, "quick", [name])
    assert jobs == [] and message in left_out[name]
    return message


def assert_in_grid(name: str, styles: tuple[str, ...]) -> None:
    """The grid makes one job of variant `name` for each style."""
    for style in styles:
        jobs, left_out = expand(style, "quick", [name])
        assert [job.variant for job in jobs] == [name] and not left_out, (style, left_out)
