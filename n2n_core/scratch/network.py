"""The course's from-scratch networks (docs/methods.md section 10) and their torch.nn twins.

``course_network`` (reports A, C, E)::

    Conv(3→C, k3, s2, p1), ReLU, Conv(C→C, k3, s2, p1), ReLU,
    Upsampling(C→C) = nearest ×2 then Conv(k3, p1), ReLU, Upsampling(C→3), Sigmoid

``tconv_network`` (report E's version, "transposed convolutions for upsampling")::

    Conv(3→C, k3, s2, p1), ReLU, Conv(C→C, k3, s2, p1), ReLU,
    ConvTranspose(C→C, k3, s2, p1, output_padding 1), ReLU, ConvTranspose(C→3, same), Sigmoid

with C = 24 (report C) or 48. The report does not give the transposed convolutions' kernel; k3,
stride 2, padding 1 and output padding 1 mirror the strided convolutions (each exactly doubles
the side, 8² → 16² → 32²). Each network and its twin name their parameters alike ("0.weight",
"2.bias", "4.1.weight" or "4.weight", ...), so :func:`copy_weights` is a state-dict copy in
either direction. The twins are, by definition, built from ``torch.nn``; it is imported inside
:func:`_torch_twin` only, so the scratch framework itself never touches ``torch.nn``.
"""

from __future__ import annotations

import torch

from n2n_core.scratch.layers import Conv2d, ConvTranspose2d, ReLU, Sequential, Sigmoid, Upsampling


def _generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(0)
    return generator


def _encoder(channels: int, kw: dict) -> list:
    return [Conv2d(3, channels, 3, stride=2, padding=1, **kw), ReLU(),
            Conv2d(channels, channels, 3, stride=2, padding=1, **kw), ReLU()]


def _finish(net: Sequential, input_grad: bool) -> Sequential:
    # A training step never needs the gradient with respect to the network's input (autograd skips
    # it too for an input that needs no grad): input_grad=False lets the first layer skip the fold.
    net[0].need_input_grad = bool(input_grad)
    return net


def course_network(channels: int = 24, generator: torch.Generator | None = None, *,
                   dtype: torch.dtype = torch.float32, device=None, input_grad: bool = True) -> Sequential:
    """The from-scratch course network (nearest upsampling), initialised from ``generator``."""
    channels = _positive(channels)
    kw = {"generator": _generator(generator), "dtype": dtype, "device": device}
    return _finish(Sequential(
        *_encoder(channels, kw),
        Upsampling(channels, channels, scale=2, kernel_size=3, padding=1, **kw), ReLU(),
        Upsampling(channels, 3, scale=2, kernel_size=3, padding=1, **kw), Sigmoid(),
    ), input_grad)


def tconv_network(channels: int = 24, generator: torch.Generator | None = None, *,
                  dtype: torch.dtype = torch.float32, device=None, input_grad: bool = True) -> Sequential:
    """Report E's from-scratch network: transposed-convolution upsampling, from ``generator``."""
    channels = _positive(channels)
    kw = {"generator": _generator(generator), "dtype": dtype, "device": device}
    return _finish(Sequential(
        *_encoder(channels, kw),
        ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1, **kw), ReLU(),
        ConvTranspose2d(channels, 3, 3, stride=2, padding=1, output_padding=1, **kw), Sigmoid(),
    ), input_grad)


def course_network_torch(channels: int = 24, generator: torch.Generator | None = None):
    """``course_network`` in torch.nn (autograd), with that network's weights from ``generator``."""
    return copy_weights(course_network(channels, generator), _torch_twin(_positive(channels), "nearest"))


def tconv_network_torch(channels: int = 24, generator: torch.Generator | None = None):
    """``tconv_network`` in torch.nn (autograd), with that network's weights from ``generator``."""
    return copy_weights(tconv_network(channels, generator), _torch_twin(_positive(channels), "transposed"))


def _torch_twin(channels: int, upsampling: str):
    """The same layers in torch.nn; building them leaves torch's global random state untouched."""
    from torch import nn  # noqa: PLC0415 - the twins only; the framework never imports torch.nn

    def up(c_in: int, c_out: int) -> nn.Module:
        if upsampling == "transposed":
            return nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1))

    with torch.random.fork_rng(devices=[]):
        return nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            up(channels, channels), nn.ReLU(), up(channels, 3), nn.Sigmoid(),
        )


def _positive(channels: int) -> int:
    channels = int(channels)
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    return channels


def copy_weights(source, destination):
    """Copy every parameter from ``source`` to ``destination`` (scratch ↔ torch.nn, either way).

    Both must have the same state-dict keys and shapes; values are converted to the destination's
    dtype and device. Returns ``destination``.
    """
    state = {name: tensor.detach() for name, tensor in source.state_dict().items()}
    with torch.no_grad():
        destination.load_state_dict(state, strict=True)
    return destination
