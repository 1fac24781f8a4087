"""The course network of METHODS.md section 10 in the scratch framework, and its torch.nn twin.

    Conv(3→C, k3, s2, p1), ReLU, Conv(C→C, k3, s2, p1), ReLU,
    Upsampling(C→C) = nearest ×2 then Conv(k3, p1), ReLU, Upsampling(C→3), Sigmoid

with C = 24 (report C) or 48. Both versions name their parameters alike ("0.weight", "2.bias",
"4.1.weight", "6.1.bias", ...), so :func:`copy_weights` is a state-dict copy in either direction.

The twin is, by definition, built from ``torch.nn``; it is only imported inside
:func:`course_network_torch`, so the scratch framework itself never touches ``torch.nn``.
"""

from __future__ import annotations

import torch

from n2n_core.scratch.layers import Conv2d, ReLU, Sequential, Sigmoid, Upsampling


def course_network(
    channels: int = 24,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
    fused_upsampling: bool = True,
    backend: str = "strided",
    input_grad: bool = True,
) -> Sequential:
    """The from-scratch course network, initialised from ``generator`` (a fresh seed-0 one if None).

    ``fused_upsampling`` chooses how each Upsampling computes nearest ×2 + conv (see
    :class:`~n2n_core.scratch.layers.Upsampling`; the same map either way) and ``backend`` how
    convolutions build their columns (see :mod:`~n2n_core.scratch.functional`: "strided" or
    "unfold", the same numbers either way). ``input_grad=False`` makes the first convolution
    skip the gradient with respect to the network's input (``backward`` then returns None): a
    training step never needs it, and autograd skips it too for an input that needs no grad.
    """
    channels = int(channels)
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(0)
    kw = {"generator": generator, "dtype": dtype, "device": device, "backend": backend}
    net = Sequential(
        Conv2d(3, channels, 3, stride=2, padding=1, **kw),
        ReLU(),
        Conv2d(channels, channels, 3, stride=2, padding=1, **kw),
        ReLU(),
        Upsampling(channels, channels, scale=2, kernel_size=3, padding=1, fused=fused_upsampling, **kw),
        ReLU(),
        Upsampling(channels, 3, scale=2, kernel_size=3, padding=1, fused=fused_upsampling, **kw),
        Sigmoid(),
    )
    net[0].need_input_grad = bool(input_grad)
    return net


def course_network_torch(channels: int = 24, generator: torch.Generator | None = None):
    """The same network in torch.nn (autograd), for comparisons.

    Its weights are those of ``course_network(channels, generator)`` (the same uniform init from
    the same generator), and building it leaves torch's global random state untouched.
    """
    from torch import nn  # noqa: PLC0415 - the twin only; the framework never imports torch.nn

    channels = int(channels)
    with torch.random.fork_rng(devices=[]):
        twin = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1)
            ),
            nn.ReLU(),
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, 3, 3, padding=1)),
            nn.Sigmoid(),
        )
    return copy_weights(course_network(channels, generator), twin)


def copy_weights(source, destination):
    """Copy every parameter from ``source`` to ``destination`` (scratch ↔ torch.nn, either way).

    Both must have the same state-dict keys and shapes; values are converted to the destination's
    dtype and device. Returns ``destination``.
    """
    state = {name: tensor.detach() for name, tensor in source.state_dict().items()}
    with torch.no_grad():
        destination.load_state_dict(state, strict=True)
    return destination
