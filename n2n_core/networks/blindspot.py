"""The blind-spot U-Net of docs/methods.md §4 (SSDN, SSDN μ-only): four rotated, upward-looking views.

Each view runs the §3 body with every 3×3 conv and every pool looking only at its own row and the
rows above; a final one-row shift makes each pixel see strictly the rows above it. Undoing the
rotations turns the four half-planes into up/left/down/right, whose union is every pixel but the
centre, so the output at a pixel does not depend on the input at that pixel.

Implementation: the spec's "pad a zero row on top, convolve same, drop the last row" is done as a
pad of 2 zero rows on top and a convolution that pads only the columns (padding (0, 1)): the same
numbers, one copy instead of pad + crop, and no wasted row. Padding the columns in the copy too and
convolving 'valid' is slower, and so is conv padding (2, 1) with 2 junk rows carried at the bottom
(oneDNN's backward takes a slow path for padding ≥ 2 on a 3×3 kernel); benchmarks/perf/README.md,
"What changed", item 4.

Layout: channels_last throughout, like the U-Net (unet.py). The rotations are autograd Functions
whose backward is the inverse rearrangement (see `_StackRotations`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import skip_init

from .unet import (
    CHANNELS_LAST, DEC_CH, UNetBody, caller_layout, check_image_batch, init_network_, make_head,
)

N_VIEWS = 4  # rotations by 0°, 90°, 180°, 270°


class UpwardConv2d(nn.Conv2d):
    """3×3 conv whose output row i sees input rows i-2, i-1, i only (docs/methods.md §4 step 2)."""

    def __init__(self, in_ch: int, out_ch: int, device=None, dtype=None):
        super().__init__(in_ch, out_ch, 3, padding=(0, 1), device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        # = conv_same(pad_top_1(x))[..., :-1, :], with one copy instead of two
        return super().forward(F.pad(x, (0, 0, 2, 0)))


def upward_conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    """An `UpwardConv2d` left uninitialised (`init_network_` fills it)."""
    return skip_init(UpwardConv2d, in_ch, out_ch)


def shift_down(x: Tensor) -> Tensor:
    """Rows one down: a zero row on top, the last row dropped; one pad, negative at the end."""
    return F.pad(x, (0, 0, 1, -1))


def upward_max_pool2x2(x: Tensor) -> Tensor:
    """2×2 max-pool after a one-row downward shift: coarse row j sees rows ≤ 2j (§4 step 3)."""
    return F.max_pool2d(shift_down(x), 2)


def _empty_like_layout(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An empty tensor of `shape` in like's dtype, device and (channels_last or not) layout."""
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=caller_layout(like))


def _rot(x: Tensor, k: int) -> Tensor:
    """x rotated by k·90°; k = 0 is x itself (torch.rot90 would clone it into NCHW)."""
    return x if k % N_VIEWS == 0 else torch.rot90(x, k, dims=(2, 3))


class _StackRotations(torch.autograd.Function):
    """(N, C, S, S) → (4N, C, S, S), batch block k = x rotated by k·90°.

    Written as a Function so that the backward is the plain inverse (a sum of the blocks rotated
    back), in the layout of the forward. Built from autograd's pieces, the backward of the blocks'
    copies made a full-size zero gradient per block and left the result in NCHW, so every later
    LeakyReLU backward mixed layouts: 0.74 s of such backward in an SSDN step at 128² on CPU,
    against ~0.13 s now.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        n = x.shape[0]
        out = _empty_like_layout((N_VIEWS * n, *x.shape[1:]), x)
        for k in range(N_VIEWS):
            out[k * n:(k + 1) * n].copy_(_rot(x, k))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        blocks = grad.chunk(N_VIEWS)
        total = blocks[0].clone(memory_format=caller_layout(grad))
        for k in range(1, N_VIEWS):
            total += _rot(blocks[k], -k)
        return total


class _UnstackRotations(torch.autograd.Function):
    """(4N, C, S, S) → (N, 4C, S, S), channel block k = batch block k rotated by -k·90°.

    The inverse of `_StackRotations`' layout; its backward is the opposite move (see there why
    it is written out).
    """

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        n, c = h.shape[0] // N_VIEWS, h.shape[1]
        out = _empty_like_layout((n, N_VIEWS * c, *h.shape[2:]), h)
        for k in range(N_VIEWS):
            out[:, k * c:(k + 1) * c].copy_(_rot(h[k * n:(k + 1) * n], -k))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        n, c = grad.shape[0], grad.shape[1] // N_VIEWS
        out = _empty_like_layout((N_VIEWS * n, c, *grad.shape[2:]), grad)
        for k in range(N_VIEWS):
            out[k * n:(k + 1) * n].copy_(_rot(grad[:, k * c:(k + 1) * c], k))
        return out


def stack_rotations(x: Tensor) -> Tensor:
    """(N, C, S, S) → (4N, C, S, S): x rotated by k·90° (torch.rot90) in batch block k."""
    return _StackRotations.apply(x)


def unstack_rotations(h: Tensor) -> Tensor:
    """(4N, C, S, S) → (N, 4C, S, S): batch block k, rotated by -k·90°, into channel block k."""
    return _UnstackRotations.apply(h)


class BlindSpotUNet(nn.Module):
    """The blind-spot net of docs/methods.md §4: (N, in_channels, S, S) → (N, n_out, S, S), 32 | S.

    Args:
        n_out: output channels (C for μ-only, 9 for SSDN full covariance, 2 for greyscale SSDN).
        in_channels: image channels C (3 RGB, 1 greyscale), also the width of the image skip that
            the last decoder stage concatenates (96 + C).
        zero_init_last: zero the last layer's weights and bias.
        rng: generator for the He-normal init; None uses torch's default generator.
    """

    def __init__(
        self,
        n_out: int = 3,
        in_channels: int = 3,
        zero_init_last: bool = False,
        *,
        rng: torch.Generator | None = None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.body = UNetBody(in_channels, upward_conv3x3, upward_max_pool2x2)
        self.head = make_head([N_VIEWS * DEC_CH, N_VIEWS * DEC_CH, DEC_CH], n_out)
        init_network_(self, self.head[-1], zero_init_last, rng)
        self.to(memory_format=CHANNELS_LAST)  # NHWC throughout, as the U-Net (unet.py)

    def features(self, x: Tensor) -> Tensor:
        """The head's input, (N, 384, S, S); channel block k is from the view rotated by k·90°."""
        check_image_batch(x, "BlindSpotUNet", self.in_channels)
        size = x.shape[-1]
        if x.shape[-2] != size:
            raise ValueError(
                f"BlindSpotUNet needs square inputs (it stacks 90° rotations along the batch), "
                f"got {x.shape[-2]}×{size}; crop to a square or denoise in square tiles"
            )
        views = self.body(stack_rotations(x.contiguous(memory_format=CHANNELS_LAST)))
        # views: (4N, 96, S, S), row i sees rows ≤ i
        return unstack_rotations(shift_down(views))  # row i now sees rows < i only (§4 step 4)

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(self.features(x))
        return out.contiguous(memory_format=caller_layout(x))  # (N, n_out, S, S)
